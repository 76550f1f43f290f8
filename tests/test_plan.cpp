// Plans: parsing, the guards of `plan check` (every problem listed at once), and the CLI.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "catalog/catalog.h"
#include "common/error.h"
#include "engine/plan.h"
#include "test_util.h"

using namespace slm;
using namespace slm::engine;

namespace {
std::string plan_file(const slm::test::TempDir& t, const std::string& body) {
  std::string p = t / "plan.toml";
  slm::test::write(p, body);
  return p;
}
const std::string kHead = "name = \"p\"\nsubstrate = \"" + std::string(SLMLAB_SOURCE_DIR) + "/substrates/cpu-tiny.toml\"\n";

bool has(const std::vector<std::string>& errs, const std::string& needle) {
  for (auto& e : errs)
    if (e.find(needle) != std::string::npos) return true;
  return false;
}
}  // namespace

TEST(Plan, ValidPlanParses) {
  slm::test::TempDir t;
  auto p = load_plan(plan_file(t, kHead + R"(
description = "two phases"
[rule]
k_noise = 3.0
min_rel_delta = 0.01
correction = "holm"
max_seeds = 6
unstable_decides = false
[[phases]]
name = "one"
[[phases.experiments]]
id = "baseline"
seeds = [1, 2, 3]
notes = "attention only"
[[phases]]
name = "two"
[[phases.experiments]]
id = "again"
base = "baseline"
seeds = [4]
)"));
  EXPECT_EQ(p.name, "p");
  EXPECT_EQ(p.substrate.name, "cpu-tiny");
  EXPECT_EQ(p.phases, (std::vector<std::string>{"one", "two"}));
  ASSERT_EQ(p.experiments.size(), 2u);
  EXPECT_EQ(p.experiments[0].seeds, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(p.experiments[1].phase, "two");
  EXPECT_EQ(p.experiments[1].base, "baseline");
  EXPECT_TRUE(p.experiments[1].effective.empty());
  EXPECT_DOUBLE_EQ(p.rule.k_noise, 3.0);
  EXPECT_DOUBLE_EQ(p.rule.min_rel_delta, 0.01);
  EXPECT_EQ(p.rule.correction, "holm");
  EXPECT_EQ(p.rule.max_seeds, 6);
  EXPECT_FALSE(p.rule.unstable_decides);
  EXPECT_EQ(p.find("again"), &p.experiments[1]);
}

TEST(Plan, EveryProblemIsListedAtOnce) {
  slm::test::TempDir t;
  std::vector<std::string> errs;
  load_plan(plan_file(t, kHead + R"(
[rule]
metric = "loss"
k_noise = -1.0
[[phases]]
name = "one"
[[phases.experiments]]
id = "a"
base = "c"
seeds = [1, 1]
[[phases.experiments]]
id = "c"
base = "a"
seeds = [2]
modules = ["dsx", { name = "engramm", layers = [0, 5, 10] }]
[[phases.experiments]]
id = "a"
seeds = []
bsae = "x"
[[phases.experiments]]
id = "d"
base = "baseline"
seeds = [3]
)"),
            &errs);
  EXPECT_TRUE(has(errs, "metric 'loss' is not one of val_bpb, fim_bpb")) << ::testing::PrintToString(errs);
  EXPECT_TRUE(has(errs, "k_noise must be >= 0"));
  EXPECT_TRUE(has(errs, "seed 1 listed twice"));
  EXPECT_TRUE(has(errs, "duplicate id 'a'"));
  EXPECT_TRUE(has(errs, "needs at least one seed"));
  EXPECT_TRUE(has(errs, "unknown key 'bsae'; did you mean 'base'?"));
  EXPECT_TRUE(has(errs, "cycle"));
  EXPECT_TRUE(has(errs, "unknown module 'dsx'"));
  EXPECT_TRUE(has(errs, "unknown module 'engramm'"));
  EXPECT_TRUE(has(errs, "base 'baseline' is not an experiment of this plan"));
  // And as a single error when no list is asked for.
  try {
    load_plan(t / "plan.toml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("problems"), std::string::npos);
  }
}

TEST(Plan, MissingOrBrokenSubstrateIsReported) {
  slm::test::TempDir t;
  std::vector<std::string> errs;
  load_plan(plan_file(t, "name = \"p\"\nsubstrate = \"no-such-substrate\"\n[[phases]]\n[[phases.experiments]]\nid = \"b\"\nseeds = [1]\n"),
            &errs);
  EXPECT_TRUE(has(errs, "substrate 'no-such-substrate' not found")) << ::testing::PrintToString(errs);
  errs.clear();
  slm::test::write(t / "bad.toml", "name = \"bad\"\ntotal_batch = 1000\n");
  load_plan(plan_file(t, "name = \"p\"\nsubstrate = \"bad.toml\"\n[[phases]]\n[[phases.experiments]]\nid = \"b\"\nseeds = [1]\n"),
            &errs);
  EXPECT_TRUE(has(errs, "not a multiple of device_batch x context")) << ::testing::PrintToString(errs);
  EXPECT_THROW(load_plan(t / "missing.toml"), Error);
  slm::test::write(t / "broken.toml", "name = \n");
  EXPECT_THROW(load_plan(t / "broken.toml"), Error);
}

TEST(Catalog, UnknownModulesAndTheTable) {
  std::vector<std::string> errs;
  auto a = catalog::resolve_arg("flashmem.layers=0,1,3,heads=4", errs);
  EXPECT_EQ(a.name, "flashmem");
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("unknown module 'flashmem'"), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(catalog::table(true)).size(), catalog::modules().size());
  for (auto& m : catalog::modules()) {
    // Every parameter's default resolves and lies in its range; Tier 3 is refused in training.
    std::vector<std::string> e;
    auto r = catalog::resolve(m.name, {}, e);
    EXPECT_TRUE(e.empty()) << m.name << ": " << ::testing::PrintToString(e);
    EXPECT_EQ(r.values.size(), m.params.size()) << m.name;
    if (m.tier == catalog::Tier::Inference) {
      EXPECT_FALSE(catalog::check({r}, catalog::ModelView{}, /*training=*/true).empty()) << m.name;
    }
  }
  catalog::ModelView v;
  v.depth = 16;
  v.layer_pattern = "AAM";
  EXPECT_EQ(v.layers_of('M'), (std::vector<int64_t>{2, 5, 8, 11, 14}));
  EXPECT_EQ(v.layers_of('A'), (std::vector<int64_t>{0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15}));
}

TEST(PlanCli, CheckPrintsEveryProblemAndExitsNonZero) {
  slm::test::TempDir t;
  std::string p = plan_file(t, kHead + "[[phases]]\n[[phases.experiments]]\nid = \"x\"\nseeds = [1]\nmodules = [\"mtpp\"]\n");
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " plan check " + p);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown module 'mtpp'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nothing was run"), std::string::npos) << r.out;
  std::string ok = plan_file(t, kHead + "[[phases]]\n[[phases.experiments]]\nid = \"baseline\"\nseeds = [1, 2]\n");
  auto r2 = slm::test::run(std::string(SLMLAB_BIN) + " plan check " + ok);
  EXPECT_EQ(r2.status, 0) << r2.out;
  EXPECT_NE(r2.out.find("1 experiments, 2 runs"), std::string::npos) << r2.out;
  auto c = slm::test::run(std::string(SLMLAB_BIN) + " catalog --json");
  EXPECT_EQ(c.status, 0);
  EXPECT_TRUE(nlohmann::json::parse(c.out).is_array());
}

// The shipped plans are well-formed: the only problems allowed are modules the catalog does not
// have yet (they become runnable as the catalog grows).
TEST(Plan, ShippedPlansFailOnlyOnModulesNotYetInTheCatalog) {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(std::string(SLMLAB_SOURCE_DIR) + "/plans")) {
    if (e.path().extension() != ".toml") continue;
    ++n;
    std::vector<std::string> errs;
    auto p = load_plan(e.path().string(), &errs);
    EXPECT_FALSE(p.experiments.empty()) << e.path();
    for (auto& x : errs) {
      const bool unknown_module = x.find("unknown module") != std::string::npos;
      const bool engram_guard = e.path().filename() == "seed-phase1-engram-bug.toml";
      EXPECT_TRUE(unknown_module || engram_guard) << e.path() << ": " << x;
    }
  }
  EXPECT_GE(n, 6);
}

// The demo runs the baseline and every module that trains: a module added to the catalog joins it.
TEST(Plan, DemoPlanCoversEveryTrainableModule) {
  std::vector<std::string> errs;
  auto p = load_plan(std::string(SLMLAB_SOURCE_DIR) + "/plans/demo.toml", &errs);
  EXPECT_TRUE(errs.empty()) << ::testing::PrintToString(errs);
  ASSERT_FALSE(p.experiments.empty());
  EXPECT_TRUE(p.experiments[0].effective.empty()) << "the demo's first experiment is the baseline";
  std::set<std::string> used;
  for (auto& e : p.experiments) {
    EXPECT_GE(e.seeds.size(), 2u) << e.id << ": the demo measures its noise floor from 2 seeds";
    for (auto& m : e.effective) used.insert(m.name);
  }
  for (auto& m : catalog::modules())
    if (m.tier != catalog::Tier::Inference && !m.reads_structure) {  // structure: the demo's data is raw (plans/structure.toml)
      EXPECT_TRUE(used.count(m.name)) << m.name << " is missing from plans/demo.toml";
    }
}

// The article's Phase-1 bug: Engram on layers 0,5,10 under Mamba-3 AAM at depth 16. Refused before a
// step runs, with the rule and the corrected layer list.
TEST(Plan, SeedEngramBugIsRefusedWithTheAttentionLayers) {
  std::vector<std::string> errs;
  load_plan(std::string(SLMLAB_SOURCE_DIR) + "/plans/seed-phase1-engram-bug.toml", &errs);
  bool found = false;
  for (auto& e : errs)
    found |= e.find("engram goes on attention layers only") != std::string::npos &&
             e.find("layer 5 is Mamba") != std::string::npos &&
             e.find("attention layers are 0,1,3,4,6,7,9,10,12,13,15") != std::string::npos;
  EXPECT_TRUE(found) << ::testing::PrintToString(errs);
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " plan check " + SLMLAB_SOURCE_DIR + "/plans/seed-phase1-engram-bug.toml");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("0,1,3,4,6,7,9,10,12,13,15"), std::string::npos) << r.out;
}

// The article's phases on the article's topology (issue 20 §3): every shipped plan of the article's
// phases passes whole when checked on seed-v6e4-d16 (TP=2 x DP=2, `plan check --substrate`): every
// module it uses splits across the tensor-parallel ranks or stays whole on each (MoE, DSA, Mamba-3,
// Engram, mHC, MTP, TOP, NCP, CBP, MoD, FlexiDepth, GateSkip) and keeps its data-parallel replicas
// equal. The Engram-bug plan is refused for the Engram guard alone.
TEST(Plan, ArticlePhasesPassOnTheArticleTopology) {
  const std::string src = SLMLAB_SOURCE_DIR, seed = src + "/substrates/seed-v6e4-d16.toml";
  for (const char* name : {"phase1", "phase1-mixers", "phase2", "phase4", "phase4-infill", "phase4-routing", "phase5"}) {
    std::vector<std::string> errs;
    engine::Plan p = load_plan(src + "/plans/" + name + ".toml", &errs, seed);
    EXPECT_EQ(p.substrate.name, "seed-v6e4-d16");
    EXPECT_EQ(p.substrate.tp, 2);
    EXPECT_EQ(p.substrate.dp, 2);
    EXPECT_TRUE(errs.empty()) << name << ": " << ::testing::PrintToString(errs);
    EXPECT_FALSE(p.experiments.empty()) << name;
  }
  std::vector<std::string> errs;
  load_plan(src + "/plans/seed-phase1-engram-bug.toml", &errs);
  ASSERT_EQ(errs.size(), 1u) << ::testing::PrintToString(errs);
  EXPECT_NE(errs[0].find("engram goes on attention layers only"), std::string::npos) << errs[0];
  // The command itself, on the plans with MoE (the last module to split, issue 20 §2).
  for (const char* name : {"phase4", "phase4-routing", "phase5"}) {
    auto r = slm::test::run(std::string(SLMLAB_BIN) + " plan check " + src + "/plans/" + name + ".toml --substrate " + seed);
    EXPECT_EQ(r.status, 0) << name << ": " << r.out;
    EXPECT_NE(r.out.find("on substrate seed-v6e4-d16"), std::string::npos) << r.out;
  }
}

// The data transforms' and YaRN's rows refuse bad parameters with a message naming the fix.
TEST(Catalog, DataTransformsAndYarnRefuseBadParameters) {
  auto errors_of = [](const std::vector<std::string>& args) {
    std::vector<std::string> errs;
    std::vector<catalog::ModuleArgs> mods;
    for (auto& a : args) mods.push_back(catalog::resolve_arg(a, errs));
    if (errs.empty()) errs = catalog::check(mods, catalog::ModelView{}, /*training=*/false);
    return errs;
  };
  auto has = [](const std::vector<std::string>& errs, const std::string& needle) {
    for (auto& e : errs)
      if (e.find(needle) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(errors_of({"fim", "ifim.rate=0.3", "sri.rate=0.2"}).empty());
  auto e = errors_of({"fim.rate=0.6", "sri.rate=0.6"});
  EXPECT_TRUE(has(e, "fim + sri have rates summing to 1.2 > 1")) << ::testing::PrintToString(e);
  EXPECT_TRUE(has(errors_of({"fim.split=words"}), "split 'words' is not chars or lines"));
  EXPECT_TRUE(has(errors_of({"ifim.rate=1.5"}), "rate is outside [0, 1]"));
  EXPECT_TRUE(has(errors_of({"sri.context_lines=x"}), "expects an integer"));
  EXPECT_TRUE(has(errors_of({"yarn.beta_fast=1,beta_slow=2"}), "beta_fast (1) must exceed beta_slow (2)"));
}

// Two block wrappers on one layer are refused by the catalog, before any model is built, naming the
// layers; disjoint layers pass.
TEST(Catalog, OneBlockWrapperPerLayer) {
  catalog::ModelView v = slm::test::model_view(4, 128, 2, 64, 256);
  auto errors_of = [&](const std::vector<std::string>& args) {
    std::vector<std::string> errs;
    std::vector<catalog::ModuleArgs> mods;
    for (auto& a : args) mods.push_back(catalog::resolve_arg(a, errs));
    EXPECT_TRUE(errs.empty()) << ::testing::PrintToString(errs);
    return catalog::check(mods, v, /*training=*/true);
  };
  auto e = errors_of({"gateskip.layers=0,1", "flexidepth.layers=1,2"});
  ASSERT_EQ(e.size(), 1u) << ::testing::PrintToString(e);
  EXPECT_NE(e[0].find("modules gateskip and flexidepth both wrap layer 1;"), std::string::npos) << e[0];
  e = errors_of({"mhc", "mod"});  // mod routes layers 1 and 3 by default, mhc wraps every layer
  ASSERT_EQ(e.size(), 1u) << ::testing::PrintToString(e);
  EXPECT_NE(e[0].find("modules mhc and mod both wrap layers 1,3"), std::string::npos) << e[0];
  EXPECT_TRUE(errors_of({"gateskip.layers=0", "mod.layers=1,3", "flexidepth.layers=2"}).empty());
}

// Issue 20 §1: the modules whose state follows batch statistics (CBP's utilities, MoE's balancing
// biases, NCP's codebook, GateSkip's eval threshold) reduce them over the data-parallel ranks
// (model/dp.h; test_dist checks the replicas stay equal), so the catalog passes every trainable
// module at dp 2 as at dp 1.
TEST(Catalog, EveryTrainableModulePassesAtTwoDataParallelRanks) {
  catalog::ModelView v = slm::test::model_view(4, 128, 2, 64, 256);
  auto errors_at = [&](const std::string& arg, int64_t dp) {
    std::vector<std::string> errs;
    auto m = catalog::resolve_arg(arg, errs);
    EXPECT_TRUE(errs.empty()) << ::testing::PrintToString(errs);
    v.dp = dp;
    return catalog::check({m}, v, /*training=*/true);
  };
  for (const char* arg : {"cbp", "moe.bias_rate=0.001", "ncp", "gateskip", "moe", "gateskip.eval_skip=0", "engram",
                          "mhc", "mtp", "top", "mod", "flexidepth", "fim"})
    for (int64_t dp : {1, 2, 8})
      EXPECT_TRUE(errors_at(arg, dp).empty()) << arg << " at dp " << dp << ": " << ::testing::PrintToString(errors_at(arg, dp));
}

// Issue 18 §4: plan names and experiment ids become folders (runs/<plan>/<id>/s<seed>) and terminal
// text. Each unsafe one is refused at plan check, naming it (escaped) and the allowed set.
TEST(Plan, NamesThatArePathsOrTerminalControlAreRefused) {
  slm::test::TempDir t;
  auto exp = [](const std::string& id) { return "[[phases.experiments]]\nid = \"" + id + "\"\nseeds = [1]\n"; };
  for (const std::string& id : std::vector<std::string>{"../../..", "baseline/.", "a/b", ".hidden", "-rf", "", "x y", "\\u001b[2J", "bell\\u0007",
                         std::string(65, 'a'), "caf\\u00e9"}) {
    std::vector<std::string> errs;
    load_plan(plan_file(t, kHead + "[[phases]]\n" + exp(id)), &errs);
    EXPECT_TRUE(has(errs, "is not a safe name") || has(errs, "control characters")) << id;
    EXPECT_TRUE(id.empty() || has(errs, "[A-Za-z0-9._-]") || has(errs, "control characters")) << id;
    for (auto& e : errs)
      for (unsigned char c : e) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "raw byte " << int(c) << " in: " << e;
  }
  // The plan's own name too (runs/<plan>/...).
  std::vector<std::string> errs;
  load_plan(plan_file(t, "name = \"../x\"\nsubstrate = \"" + std::string(SLMLAB_SOURCE_DIR) +
                             "/substrates/cpu-tiny.toml\"\n[[phases]]\n" + exp("a")), &errs);
  EXPECT_TRUE(has(errs, "plan name '../x' is not a safe name")) << ::testing::PrintToString(errs);
  // Safe names pass.
  EXPECT_NO_THROW(load_plan(plan_file(t, kHead + "[[phases]]\n" + exp("p4_e01-top.v2") + exp("B_2"))));
}

// Two ids that would share one folder (or one on a case-insensitive file system) are one id.
TEST(Plan, IdsAreUniqueAfterNormalization) {
  slm::test::TempDir t;
  std::vector<std::string> errs;
  load_plan(plan_file(t, kHead + R"(
[[phases]]
[[phases.experiments]]
id = "baseline"
seeds = [1]
[[phases.experiments]]
id = "Baseline"
seeds = [1]
)"), &errs);
  EXPECT_TRUE(has(errs, "duplicate id 'Baseline' (same as 'baseline' up to case)")) << ::testing::PrintToString(errs);
}

// Issue 18 §3: a value of the wrong type anywhere in a plan is an error naming the key and the
// type it needs, never a silent default or a dropped entry.
TEST(Plan, WrongTypesAreErrorsNamingKeyAndType) {
  slm::test::TempDir t;
  struct Case {
    std::string body, needle;
  };
  const std::string one = "[[phases]]\n[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n";
  std::vector<Case> cases = {
      {"[rule]\nk_noise = \"5\"\n" + one, "'k_noise' must be a number, got a string"},
      {"[rule]\nmax_retries = 0.5\n" + one, "'max_retries' must be an integer, got a float"},
      {"[rule]\nmin_rel_delta = nan\n" + one, "'min_rel_delta' must be a number, got nan"},
      {"rule = 3\n" + one, "'rule' must be a table, got an integer"},
      {"[rule]\nallow_mixed_code = \"yes\"\n" + one, "'allow_mixed_code' must be true or false, got a string"},
      {"[rule]\ncorrection = \"bonferroni\"\n" + one, "correction 'bonferroni' is not one of none, holm"},
      {"[rule]\nmax_seeds = -1\n" + one, "max_seeds must be in [0, 64]"},
      {"[rule]\ncompare_at = \"flops\"\n" + one, "compare_at 'flops' is not one of steps"},
      {"[rule]\nmetric = \"fim\"\n" + one, "metric 'fim' is not one of val_bpb, fim_bpb, ifim_bpb"},
      {"[rule]\nmetric = \"fim_bpb\"\ncompare_at = \"compute\"\n" + one, "interpolates val_bpb curves only"},
      {"[rule]\nunstable_decides = 1\n" + one, "'unstable_decides' must be true or false, got an integer"},
      {one + "[[phases.experiments]]\nid = \"x\"\nbase = [\"baseline\"]\nseeds = [2]\n",
       "'base' must be a string, got an array"},
      {"[[phases]]\nname = \"p\"\nexperiments = [1, 2]\n", "experiments[0] must be a table"},
      {one + "[[phases.experiments]]\nid = \"y\"\nseeds = [2]\nmodules = \"engram\"\n", "'modules' must be an array"},
      {one + "[[phases.experiments]]\nid = \"z\"\nseeds = 3\n", "'seeds' must be an array"},
      {one + "[[phases.experiments]]\nid = \"w\"\nseeds = [2]\nmodules = [{ name = \"yarn\", scale = nan }]\n",
       "module parameter 'scale' must be a finite number, got nan"},
      {"[[phases]]\nname = 7\n[[phases.experiments]]\nid = \"a\"\nseeds = [1]\n", "'name' must be a string, got an integer"},
      {"description = \"\\u001b]0;pwned\\u0007\"\n" + one, "'description' holds control characters"},
  };
  for (auto& c : cases) {
    std::vector<std::string> errs;
    load_plan(plan_file(t, kHead + c.body), &errs);
    EXPECT_TRUE(has(errs, c.needle)) << c.needle << " in " << ::testing::PrintToString(errs);
    EXPECT_THROW(load_plan(plan_file(t, kHead + c.body)), Error) << c.needle;
  }
}

// The substrate file is read with the same typed reads; an empty one names no substrate.
TEST(Plan, SubstrateFilesAreTypedAndNamed) {
  slm::test::TempDir t;
  auto check = [&](const std::string& sub, const std::string& needle) {
    slm::test::write(t / "s.toml", sub);
    std::vector<std::string> errs;
    load_plan(plan_file(t, "name = \"p\"\nsubstrate = \"s.toml\"\n[[phases]]\n[[phases.experiments]]\nid = \"a\"\nseeds = [1]\n"),
              &errs);
    EXPECT_TRUE(has(errs, needle)) << needle << " in " << ::testing::PrintToString(errs);
  };
  check("", "'name' is required");
  check("name = \"s\"\ndepth = \"4\"\n", "'depth' must be an integer, got a string");
  check("name = \"s\"\nsoftcap = inf\n", "'softcap' must be a number, got inf");
  check("name = \"s\"\ndoc_mask = 1\n", "'doc_mask' must be true or false, got an integer");
  check("name = \"../s\"\n", "name must be 1 to 64 characters of [A-Za-z0-9._-]");
  check("depht = 4\n", "unknown substrate key 'depht'");  // unknown keys before the missing name
}

// Issue 21: a phase's rule names the metric it decides on; the rest of the rule stays plan-wide.
// compile_rate and the parameter-matched control keys parse and refuse bad values in one line each.
TEST(Plan, PhaseRuleNamesItsMetricAndTheRuleItsControlsAndCompileRate) {
  slm::test::TempDir t;
  auto p = load_plan(plan_file(t, kHead + R"(
[rule]
compile_rate = 16
param_share = 0.2
param_control = "widen"
param_tolerance = 0.04
[[phases]]
name = "base"
[[phases.experiments]]
id = "baseline"
seeds = [1]
[[phases]]
name = "objectives"
[phases.rule]
metric = "fim_bpb"
[[phases.experiments]]
id = "fim"
base = "baseline"
seeds = [1]
modules = ["fim"]
param_control = "deepen"
)"));
  EXPECT_EQ(p.rule.metric, "val_bpb");
  EXPECT_EQ(p.phase_metrics, (std::map<std::string, std::string>{{"objectives", "fim_bpb"}}));
  EXPECT_EQ(p.rule.compile_rate, 16);
  EXPECT_DOUBLE_EQ(p.rule.param_share, 0.2);
  EXPECT_EQ(p.rule.param_control, "widen");
  EXPECT_DOUBLE_EQ(p.rule.param_tolerance, 0.04);
  EXPECT_EQ(p.find("fim")->param_control, "deepen");
  EXPECT_EQ(p.find("baseline")->param_control, "");

  std::vector<std::string> errs;
  load_plan(plan_file(t, kHead + R"(
[rule]
compile_rate = -1
param_share = -0.1
param_control = "sideways"
param_tolerance = 0
[[phases]]
name = "a"
[phases.rule]
metric = "fim_bpp"
k_noise = 3.0
[[phases.experiments]]
id = "baseline"
seeds = [1]
param_control = "bigger"
)"), &errs);
  EXPECT_TRUE(has(errs, "compile_rate must be in [0, 10000]")) << errs.size();
  EXPECT_TRUE(has(errs, "param_share must be in [0, 100)"));
  EXPECT_TRUE(has(errs, "param_control 'sideways' is not one of none, widen"));
  EXPECT_TRUE(has(errs, "param_tolerance must be in (0, 1)"));
  EXPECT_TRUE(has(errs, "[phases.rule]: metric 'fim_bpp' is not one of"));
  EXPECT_TRUE(has(errs, "[phases.rule]: 'k_noise' is plan-wide"));
  EXPECT_TRUE(has(errs, "experiment baseline: param_control 'bigger'"));
  for (auto& e : errs) EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  // compare_at = "compute" interpolates val_bpb curves: a phase deciding on another metric cannot use it.
  errs.clear();
  load_plan(plan_file(t, kHead + R"(
[rule]
compare_at = "compute"
[[phases]]
name = "a"
[phases.rule]
metric = "sri_bpb"
[[phases.experiments]]
id = "baseline"
seeds = [1]
)"), &errs);
  EXPECT_TRUE(has(errs, "compare_at = \"compute\" interpolates val_bpb curves only")) << (errs.empty() ? "" : errs[0]);
}

// ---------------------------------------------------------------------------------------------
// Scale ladders: `ladder = [...]` in place of `substrate`, each rung a substrate of its own.

namespace {
const std::string kSub = std::string(SLMLAB_SOURCE_DIR) + "/substrates/";
const std::string kExps = R"(
[[phases]]
name = "p"
[[phases.experiments]]
id = "base"
seeds = [1]
[[phases.experiments]]
id = "a"
base = "base"
seeds = [1]
modules = ["mtp"]
)";
std::string ladder_plan(const std::string& ladder) { return "name = \"lad\"\nladder = " + ladder + "\n" + kExps; }

// The problems of a plan, and that load_plan refuses it with all of them on one line.
std::vector<std::string> problems(const slm::test::TempDir& t, const std::string& body) {
  std::vector<std::string> errs;
  load_plan(plan_file(t, body), &errs);
  const std::string thrown = slm::test::error_of([&] { load_plan(plan_file(t, body)); });
  EXPECT_FALSE(thrown.empty());
  EXPECT_EQ(thrown.find('\n'), std::string::npos) << thrown;
  return errs;
}
}  // namespace

TEST(Plan, ALadderNamesItsRungsAndWhatEachRuns) {
  slm::test::TempDir t;
  auto p = load_plan(plan_file(t, ladder_plan("[\"" + kSub + "cpu-tiny.toml\", { substrate = \"" + kSub +
                                              "cpu-ladder-m.toml\", experiments = [\"base\"] }]")));
  ASSERT_EQ(p.ladder.size(), 2u);
  EXPECT_EQ(p.ladder[0].name, "cpu-tiny");
  EXPECT_EQ(p.ladder[1].name, "cpu-ladder-m");
  EXPECT_EQ(p.ladder[0].experiments, (std::vector<std::string>{"base", "a"}));
  EXPECT_EQ(p.ladder[1].experiments, (std::vector<std::string>{"base"}));
  EXPECT_EQ(p.substrate.name, "cpu-tiny");  // the first rung stands for the plan where one substrate is asked for
  EXPECT_EQ(run_id("lad", "cpu-tiny", "a", 2), "lad/cpu-tiny/a/s2");
  EXPECT_EQ(run_id("lad", "", "a", 2), "lad/a/s2");
}

TEST(Plan, ABadLadderIsRefusedInOneLine) {
  slm::test::TempDir t;
  const std::string tiny = "\"" + kSub + "cpu-tiny.toml\"", mid = "\"" + kSub + "cpu-ladder-s.toml\"";
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", \"cpu-no-such-rung\"]")), "cpu-no-such-rung"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", " + mid + ", " + tiny + "]")), "ladder[2]: duplicate rung 'cpu-tiny'"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + "]")), "'ladder' needs at least 2 rungs"));
  EXPECT_TRUE(has(problems(t, ladder_plan(tiny)), "'ladder' must be an array of substrates"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", 3]")), "ladder[1]: a rung is a substrate name or { substrate"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", { substrate = " + mid + ", experiments = [\"b\"] }]")),
                  "experiment 'b' is not an experiment of this plan"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", { substrate = " + mid + ", experiments = [\"a\"] }]")),
                  "runs experiment 'a' but not its base 'base'"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", { substrate = " + mid + ", experiments = [] }]")), "'experiments' is empty"));
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", { substrate = " + mid + ", runs = 2 }]")), "unknown key 'runs'"));
  EXPECT_TRUE(has(problems(t, "substrate = " + tiny + "\n" + ladder_plan("[" + tiny + ", " + mid + "]")),
                  "either 'substrate' (one) or 'ladder'"));
  // The same substrate under another name is not a second rung: its runs would share one group.
  std::string copy = slm::test::run("cat " + kSub + "cpu-tiny.toml").out;
  copy.replace(copy.find("name = \"cpu-tiny\""), 17, "name = \"cpu-tiny2\"");
  slm::test::write(t / "tiny2.toml", copy);
  EXPECT_TRUE(has(problems(t, ladder_plan("[" + tiny + ", \"" + t / "tiny2.toml" + "\"]")),
                  "rung 'cpu-tiny2' is the same substrate as rung 'cpu-tiny'"));
  // A module that does not fit a rung is reported on that rung.
  auto errs = problems(t, "name = \"lad\"\nladder = [" + tiny + ", " + mid + "]\n" + kExps +
                              "[[phases.experiments]]\nid = \"deep\"\nbase = \"base\"\nseeds = [1]\nmodules = [{ name = \"engram\", layers = [7] }]\n");
  EXPECT_TRUE(has(errs, "experiment deep on rung cpu-tiny:")) << ::testing::PrintToString(errs);
  EXPECT_TRUE(has(errs, "experiment deep on rung cpu-ladder-s:"));
}

// The shipped ladder runs the demo's experiments, as the demo defines them, on three rungs.
TEST(Plan, TheLadderDemoRunsTheDemosExperiments) {
  const std::string src = SLMLAB_SOURCE_DIR;
  auto demo = load_plan(src + "/plans/demo.toml");
  auto lad = load_plan(src + "/plans/ladder-demo.toml");
  ASSERT_EQ(lad.ladder.size(), 3u);
  EXPECT_EQ(lad.ladder[0].name, "cpu-tiny");
  EXPECT_EQ(lad.ladder[2].name, "cpu-ladder-m");
  ASSERT_EQ(lad.experiments.size(), demo.experiments.size());
  for (size_t i = 0; i < demo.experiments.size(); ++i) {
    EXPECT_EQ(lad.experiments[i].id, demo.experiments[i].id);
    EXPECT_EQ(lad.experiments[i].base, demo.experiments[i].base);
    std::vector<std::string> a, b;
    for (auto& m : lad.experiments[i].effective) a.push_back(catalog::arg_text(m));
    for (auto& m : demo.experiments[i].effective) b.push_back(catalog::arg_text(m));
    EXPECT_EQ(a, b) << demo.experiments[i].id;
  }
  for (auto& r : lad.ladder) EXPECT_GE(r.experiments.size(), 3u) << r.name;  // cut for time (the plan says how)
}

TEST(Plan, PlanCheckListsTheRungsAndAblateDecideRefusesALadder) {
  const std::string bin = SLMLAB_BIN, plan = std::string(SLMLAB_SOURCE_DIR) + "/plans/ladder-demo.toml";
  auto c = slm::test::run(bin + " plan check " + plan);
  ASSERT_EQ(c.status, 0) << c.out;
  EXPECT_NE(c.out.find("ok: plan ladder-demo on a ladder of 3 rungs"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("rung cpu-ladder-m"), std::string::npos);
  EXPECT_NE(c.out.find("(the target)"), std::string::npos);
  slm::test::TempDir t;
  auto d = slm::test::run(bin + " ablate " + plan + " --decide --ledger " + t / "l.sqlite" + " --runs " + t / "runs");
  EXPECT_NE(d.status, 0);
  EXPECT_NE(d.out.find("--decide does not run ladders yet"), std::string::npos) << d.out;
  EXPECT_EQ(slm::test::count_lines(d.out), 1) << d.out;
  EXPECT_FALSE(std::filesystem::exists(t / "l.sqlite"));  // refused before the ledger is touched
}
