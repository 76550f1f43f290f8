// Report rules on synthetic ledgers: verdicts for a positive, a negative and a null control, park,
// INVALID shown but excluded, substrate groups, best-with-step and the spike rule, provisional
// runs, stacking, escaping in every format; and the `report` / `invalidate` commands end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/error.h"
#include "common/fs.h"
#include "common/stats.h"
#include "engine/ladder.h"
#include "engine/ledger.h"
#include "engine/render.h"
#include "engine/report.h"
#include "engine/scorecard.h"
#include "test_paths.h"
#include "test_util.h"

using namespace slm::engine;

namespace {

// A plan: baseline plus experiments "id:base:mod1+mod2".
PlanInfo make_plan(const std::vector<std::string>& specs) {
  PlanInfo p;
  p.name = "synthetic";
  p.rule.k_noise = 2.0;
  p.rule.min_rel_delta = 0.005;
  p.rule.provisional_factor = 3.0;
  p.experiments.push_back({"baseline", "p1", "", "", {}, {}, {1, 2, 3}, ""});
  for (auto& s : specs) {
    auto a = s.find(':'), b = s.find(':', a + 1);
    PlanInfo::Exp e{s.substr(0, a), "p1", s.substr(a + 1, b - a - 1), "", {}, {}, {1, 2, 3}, ""};
    std::string mods = s.substr(b + 1);
    size_t pos = 0;
    while (pos < mods.size()) {
      size_t q = mods.find('+', pos);
      if (q == std::string::npos) q = mods.size();
      e.names.push_back(mods.substr(pos, q - pos));
      e.modules.push_back(mods.substr(pos, q - pos));
      pos = q + 1;
    }
    p.experiments.push_back(e);
  }
  return p;
}

struct Synth {
  PlanInfo plan;
  std::vector<RunRow> runs;
  std::map<std::string, std::vector<EvalPoint>> evals;

  // A finished run whose curve falls to `best` at step 200 and ends at best + 0.01 at step 250.
  RunRow& add(const std::string& exp, int64_t seed, double best, const std::string& sub = "sub-A", double ms = 100) {
    RunRow r;
    r.plan = plan.name;
    r.experiment = exp;
    r.phase = "p1";
    r.seed = seed;
    r.run_id = plan.name + "/" + exp + "/s" + std::to_string(seed);
    r.run_dir = "/runs/" + r.run_id;
    r.status = Status::Done;
    r.substrate_id = sub;
    r.data_fingerprint = "fp";
    r.has_summary = true;
    r.best_val_bpb = best;
    r.best_step = 200;
    r.final_val_bpb = best + 0.01;
    r.step_ms = ms;
    evals[r.run_id] = {{0, 3.8, false}, {100, best + 0.2, false}, {200, best, false}, {250, best + 0.01, false}};
    runs.push_back(r);
    return runs.back();
  }
  Scorecard card() const { return build_scorecard(plan, runs, evals); }
};

// A seeded standard normal: Box-Muller over a splitmix64 stream.
struct Gauss {
  uint64_t x;
  double u() {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return ((z ^ (z >> 31)) >> 11) * 0x1.0p-53 + 1e-12;
  }
  double operator()() { return std::sqrt(-2 * std::log(u())) * std::cos(6.283185307179586 * u()); }
};

const Card& find_card(const Scorecard& s, const std::string& id, size_t group = 0) {
  for (auto& c : s.groups.at(group).cards)
    if (c.id == id) return c;
  throw std::runtime_error("no card " + id);
}

void add_baseline(Synth& s) {
  s.add("baseline", 1, 1.300);
  s.add("baseline", 2, 1.310);
  s.add("baseline", 3, 1.290);
}

}  // namespace

TEST(Report, PositiveNegativeAndNullControls) {
  Synth s{make_plan({"better:baseline:good", "worse:baseline:bad", "null:baseline:same"}), {}, {}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) {
    s.add("better", i, 1.240 + 0.01 * (i - 2));  // -4.6%, far beyond the noise
    s.add("worse", i, 1.360 + 0.01 * (i - 2));   // +4.6%
  }
  // Null control: the baseline's configuration under other seeds; the spread is the same noise.
  s.add("null", 1, 1.305);
  s.add("null", 2, 1.296);
  s.add("null", 3, 1.311);
  auto sc = s.card();
  ASSERT_EQ(sc.groups.size(), 1u);
  EXPECT_NEAR(sc.groups[0].noise_sd, 0.01, 0.002);
  EXPECT_EQ(find_card(sc, "baseline").verdict, "reference");
  EXPECT_EQ(find_card(sc, "better").verdict, "keep");
  EXPECT_EQ(find_card(sc, "worse").verdict, "drop");
  EXPECT_EQ(find_card(sc, "null").verdict, "inconclusive");
  EXPECT_NEAR(find_card(sc, "better").delta_pct, -4.615, 0.01);
  EXPECT_EQ(find_card(sc, "better").n, 3);
  EXPECT_NE(find_card(sc, "better").evidence.find("Welch t"), std::string::npos);
}

TEST(Report, NullControlIsRarelyAnythingButInconclusive) {
  // Many null experiments drawn from one distribution: at k = 2 the rule calls few of them.
  std::vector<std::string> specs;
  for (int i = 0; i < 40; ++i) specs.push_back("null" + std::to_string(i) + ":baseline:same");
  Synth s{make_plan(specs), {}, {}};
  uint64_t x = 12345;
  auto gauss = [&] {  // Box-Muller over a splitmix stream
    auto u = [&] {
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return ((z ^ (z >> 31)) >> 11) * 0x1.0p-53 + 1e-12;
    };
    return std::sqrt(-2 * std::log(u())) * std::cos(6.283185307179586 * u());
  };
  for (int seed = 1; seed <= 3; ++seed) s.add("baseline", seed, 1.3 + 0.01 * gauss());
  for (int i = 0; i < 40; ++i)
    for (int seed = 1; seed <= 3; ++seed) s.add("null" + std::to_string(i), seed, 1.3 + 0.01 * gauss());
  auto sc = s.card();
  int called = 0;
  for (auto& c : sc.groups[0].cards) called += c.verdict == "keep" || c.verdict == "drop" || c.verdict == "park";
  EXPECT_LE(called, 4) << "a null experiment must come out inconclusive; " << called << " of 40 were called";
}

TEST(Report, ParkIsARealGainBelowTheMinimumDelta) {
  Synth s{make_plan({"small:baseline:tiny"}), {}, {}};
  for (int i = 1; i <= 3; ++i) {
    s.add("baseline", i, 1.3000 + 0.0001 * (i - 2));
    s.add("small", i, 1.2980 + 0.0001 * (i - 2));  // -0.15%: beyond the noise, below 0.5%
  }
  EXPECT_EQ(find_card(s.card(), "small").verdict, "park");
}

TEST(Report, NoReplicasMeansNoVerdict) {
  Synth s{make_plan({"one:baseline:m"}), {}, {}};
  s.add("baseline", 1, 1.30);
  s.add("one", 1, 1.10);
  auto sc = s.card();
  auto& c = find_card(sc, "one");
  EXPECT_EQ(c.verdict, "inconclusive");
  EXPECT_NE(c.evidence.find("no noise floor"), std::string::npos);
}

TEST(Report, InvalidRowsAreShownButExcluded) {
  Synth s{make_plan({"better:baseline:good"}), {}, {}};
  add_baseline(s);
  s.add("better", 1, 1.24);
  s.add("better", 2, 1.25);
  RunRow& bad = s.add("better", 3, 0.20);  // absurdly good, and INVALID
  bad.status = Status::Invalid;
  bad.reason = "manual: engram on a Mamba layer";
  auto sc = s.card();
  const Card& c = find_card(sc, "better");
  EXPECT_EQ(c.n, 2);
  EXPECT_NEAR(c.mean, 1.245, 1e-9);
  EXPECT_EQ(c.runs.size(), 3u);
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("INVALID"), std::string::npos);
  EXPECT_NE(txt.find("engram on a Mamba layer"), std::string::npos);
  EXPECT_NE(render_html(sc).find("stroke-dasharray"), std::string::npos);  // drawn dashed
  EXPECT_NE(render_csv(sc).find("INVALID"), std::string::npos);
}

TEST(Report, OtherSubstratesFormTheirOwnGroup) {
  Synth s{make_plan({"better:baseline:good"}), {}, {}};
  add_baseline(s);
  s.add("better", 1, 1.24);
  s.add("better", 2, 1.25, "sub-B");  // another substrate: never in this delta
  s.add("better", 3, 1.00, "sub-B");
  auto sc = s.card();
  ASSERT_EQ(sc.groups.size(), 2u);
  EXPECT_EQ(sc.groups[0].substrate_id, "sub-A");
  EXPECT_EQ(find_card(sc, "better", 0).n, 1);
  EXPECT_NEAR(find_card(sc, "better", 0).mean, 1.24, 1e-12);
  const Card& other = find_card(sc, "better", 1);
  EXPECT_EQ(other.n, 2);
  EXPECT_EQ(other.verdict, "inconclusive");  // its base never ran on sub-B
  EXPECT_TRUE(std::isnan(other.delta_pct));
  EXPECT_NE(render_text(sc).find("a different substrate"), std::string::npos);
}

TEST(Report, BestWithStepAndTheSpikeRule) {
  Synth s{make_plan({}), {}, {}};
  RunRow& r = s.add("baseline", 1, 1.30);
  r.best_val_bpb = 1.25;
  r.best_step = 150;
  r.best_in_spike = true;
  s.evals[r.run_id] = {{0, 3.8, false}, {100, 1.35, false}, {150, 1.25, true}, {200, 1.30, false}, {250, 1.31, false}};
  s.add("baseline", 2, 1.32);
  auto sc = s.card();
  const RunView& v = find_card(sc, "baseline").runs[0];
  EXPECT_DOUBLE_EQ(v.value, 1.30);
  EXPECT_EQ(v.value_step, 200);
  EXPECT_NE(v.note.find("loss spike"), std::string::npos);
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("1.3000 @ 200"), std::string::npos);
  EXPECT_NE(txt.find("final 1.3100"), std::string::npos);
  EXPECT_NE(txt.find("refused"), std::string::npos);
}

// The spike rule holds for compile rates too: a checkpoint saved inside a loss spike is shown,
// marked, and never pooled; the run's latest evaluation outside the spike is used instead.
TEST(Report, CompileRateOfACheckpointInASpikeIsNotPooled) {
  Synth s{make_plan({}), {}, {}};
  s.add("baseline", 1, 1.30);
  s.add("baseline", 2, 1.31);
  std::map<std::string, std::vector<CompileEval>> compiles;
  auto ce = [](const std::string& run, int64_t step, bool spike, int64_t k) {
    CompileEval e;
    e.run_id = run;
    e.checkpoint = std::to_string(step);
    e.mode = "complete";
    e.step = step;
    e.in_spike = spike;
    e.n = 100;
    e.k = k;
    return e;
  };
  compiles["synthetic/baseline/s1"] = {ce("synthetic/baseline/s1", 200, false, 40), ce("synthetic/baseline/s1", 250, true, 90)};
  compiles["synthetic/baseline/s2"] = {ce("synthetic/baseline/s2", 250, false, 50)};
  auto sc = build_scorecard(s.plan, s.runs, s.evals, compiles);
  const Card& c = find_card(sc, "baseline");
  EXPECT_EQ(c.compile_n, 200);
  EXPECT_EQ(c.compile_k, 90);  // 40 (s1 @ 200, outside the spike) + 50; the spiked 90 is not pooled
  EXPECT_EQ(c.compile_spiked, 1);
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("1 in a spike, excluded"), std::string::npos) << txt;
  EXPECT_NE(txt.find("compile complete @ 250 (in a spike, excluded)"), std::string::npos) << txt;
}

// Runs from different builds (code ids) are not compared: the group says "mixed code", the verdict
// refuses, and an explicit allow_mixed_code in the rule decides anyway, saying so in the rule line.
TEST(Report, MixedCodeIsLabelledAndRefusedUnlessAllowed) {
  Synth s{make_plan({"better:baseline:a"}), {}, {}};
  add_baseline(s);
  s.add("better", 1, 1.200);
  s.add("better", 2, 1.210);
  s.add("better", 3, 1.190);
  for (auto& r : s.runs) r.code_id = r.experiment == "baseline" ? "aaaa" : "bbbb";
  auto sc = s.card();
  EXPECT_EQ(sc.groups.at(0).code_ids.size(), 2u);
  const Card& c = find_card(sc, "better");
  EXPECT_EQ(c.verdict, "inconclusive");
  EXPECT_NE(c.evidence.find("mixed code: 2 builds"), std::string::npos) << c.evidence;
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("mixed code: 2 builds"), std::string::npos) << txt;
  EXPECT_EQ(txt.find("allow_mixed_code: runs of different builds"), std::string::npos);
  // One build: the same numbers decide.
  for (auto& r : s.runs) r.code_id = "aaaa";
  EXPECT_EQ(find_card(s.card(), "better").verdict, "keep");
  // Unknown ids (older ledgers) are not a second build.
  s.runs[0].code_id = "";
  EXPECT_EQ(find_card(s.card(), "better").verdict, "keep");
  // Mixed, but allowed by the plan: decided, and the rule line says so.
  for (auto& r : s.runs) r.code_id = r.experiment == "baseline" ? "aaaa" : "bbbb";
  s.plan.rule.allow_mixed_code = true;
  auto allowed = s.card();
  EXPECT_EQ(find_card(allowed, "better").verdict, "keep");
  EXPECT_NE(render_text(allowed).find("allow_mixed_code: runs of different builds are compared"), std::string::npos);
  // The override survives the ledger's copy of the plan.
  EXPECT_TRUE(plan_info_from_json(plan_info_json(s.plan)).rule.allow_mixed_code);
}

TEST(Report, ProvisionalNumbersNeverDecide) {
  Synth s{make_plan({"slow:baseline:top"}), {}, {}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("slow", i, 1.10, "sub-A", 800);  // 8x the median step time
  s.add("baseline", 4, 1.30, "sub-A", 100);
  s.add("baseline", 5, 1.30, "sub-A", 100);
  auto sc = s.card();
  const Card& c = find_card(sc, "slow");
  EXPECT_TRUE(c.runs[0].provisional);
  EXPECT_EQ(c.n, 0);
  EXPECT_EQ(c.verdict, "inconclusive");
  EXPECT_NE(render_text(sc).find("provisional"), std::string::npos);
}

TEST(Report, StackingPredictsTheAdditiveDelta) {
  Synth s{make_plan({"a:baseline:ma", "b:baseline:mb", "ab:a:ma+mb"}), {}, {}};
  for (int i = 1; i <= 2; ++i) {
    s.add("baseline", i, 1.30 + 0.001 * i);
    s.add("a", i, 1.27 + 0.001 * i);   // -0.03
    s.add("b", i, 1.28 + 0.001 * i);   // -0.02
    s.add("ab", i, 1.26 + 0.001 * i);  // measured -0.04, predicted -0.05
  }
  auto sc = s.card();
  const Card& c = find_card(sc, "ab");
  ASSERT_TRUE(std::isfinite(c.predicted_pct));
  EXPECT_NEAR(c.predicted_pct, -100.0 * 0.05 / 1.3015, 1e-6);
  EXPECT_NEAR(c.measured_pct, -100.0 * 0.04 / 1.3015, 1e-6);
  EXPECT_NE(c.predicted_from.find("ma (a - baseline)"), std::string::npos);
  EXPECT_NE(c.predicted_from.find("mb (b - baseline)"), std::string::npos);
  EXPECT_TRUE(std::isnan(find_card(sc, "a").predicted_pct));  // a single module predicts nothing
}

TEST(Report, UserInputIsEscapedInEveryFormat) {
  Synth s{make_plan({"<script>alert(1)</script>:baseline:m"}), {}, {}};
  s.plan.description = "a \"quoted\", <b>bold</b> | piped plan";
  add_baseline(s);
  s.add("<script>alert(1)</script>", 1, 1.2).reason = "x,\"y\"\nz";
  auto sc = s.card();
  const std::string html = render_html(sc);
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;"), std::string::npos);
  EXPECT_EQ(html.find("<b>bold"), std::string::npos);
  const std::string md = render_markdown(sc);
  EXPECT_EQ(md.find("<script>"), std::string::npos);
  EXPECT_NE(md.find("\\| piped"), std::string::npos);
  const std::string csv = render_csv(sc);
  EXPECT_NE(csv.find("\"x,\"\"y\"\"\nz\""), std::string::npos);
  EXPECT_EQ(render_text(sc).find("\nz"), std::string::npos);  // one line per run in the terminal
}

TEST(Report, PlanSpecRoundTripsThroughJson) {
  PlanInfo p = make_plan({"ab:a:ma+mb"});
  p.rule.k_noise = 3;
  PlanInfo q = plan_info_from_json(plan_info_json(p));
  EXPECT_EQ(q.name, p.name);
  EXPECT_EQ(q.rule.k_noise, 3);
  ASSERT_EQ(q.experiments.size(), 2u);
  EXPECT_EQ(q.experiments[1].base, "a");
  EXPECT_EQ(q.experiments[1].names, (std::vector<std::string>{"ma", "mb"}));
  EXPECT_THROW(plan_info_from_json("{"), slm::Error);
}

TEST(Report, CommandsReportAndInvalidate) {
  slm::test::TempDir t;
  const std::string db = t / "ledger.sqlite";
  Synth s{make_plan({"better:baseline:good"}), {}, {}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("better", i, 1.24 + 0.01 * (i - 2));
  {
    Ledger l(db);
    l.save_plan(s.plan.name, plan_info_json(s.plan));
    for (auto& r : s.runs) {
      l.upsert(r);
      l.set_evals(r.run_id, s.evals[r.run_id]);
    }
  }
  const std::string bin = SLMLAB_BIN;
  auto r = slm::test::run(bin + " report --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("keep"), std::string::npos) << r.out;
  // Invalidate by id and by folder; the verdict loses its evidence, then comes back on undo.
  r = slm::test::run(bin + " invalidate synthetic/better/s1 --ledger " + db);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("--reason"), std::string::npos) << r.out;
  r = slm::test::run(bin + " invalidate synthetic/better/s1 --reason 'loader bug' --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  r = slm::test::run(bin + " invalidate /runs/synthetic/better/s2/ --reason 'loader bug' --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  r = slm::test::run(bin + " report --format csv --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("manual: loader bug"), std::string::npos) << r.out;
  r = slm::test::run(bin + " report --ledger " + db);
  EXPECT_NE(r.out.find("INVALID"), std::string::npos);
  r = slm::test::run(bin + " invalidate synthetic/better/s1 --undo --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  r = slm::test::run(bin + " report --format html --out " + (t / "r.html") + " --ledger " + db);
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string html = slm::fs::read_file(t / "r.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  // Bad input: one line, non-zero.
  r = slm::test::run(bin + " report --format pdf --ledger " + db);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  r = slm::test::run(bin + " report --plan nope --ledger " + db);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("synthetic"), std::string::npos) << r.out;  // names the plans there
  r = slm::test::run(bin + " invalidate nope/x/s1 --reason r --ledger " + db);
  EXPECT_EQ(r.status, 2);
  r = slm::test::run(bin + " report --ledger " + (t / "missing.sqlite"));
  EXPECT_EQ(r.status, 2);
}

// ---------------------------------------------------------------------------------------------
// Issue 21 §3 and §5: per-comparison noise, many comparisons, seeds until decided, stability.

TEST(Stats, StudentTAgainstTables) {
  // Two-sided 95% quantiles from any t table; df -> infinity is the normal's 1.959964.
  EXPECT_NEAR(slm::student_t_quantile_upper(0.025, 1), 12.7062, 1e-4);
  EXPECT_NEAR(slm::student_t_quantile_upper(0.025, 2), 4.3027, 1e-4);
  EXPECT_NEAR(slm::student_t_quantile_upper(0.025, 4), 2.7764, 1e-4);
  EXPECT_NEAR(slm::student_t_quantile_upper(0.025, 10), 2.2281, 1e-4);
  EXPECT_NEAR(slm::student_t_quantile_upper(0.025, 1e7), 1.959964, 1e-5);
  // df = 1 is the Cauchy: P(T > t) = 1/2 - atan(t)/pi, exactly; df = 2 has a closed form too.
  for (double t : {0.1, 1.0, 3.0, 30.0}) {
    EXPECT_NEAR(slm::student_t_sf(t, 1), 0.5 - std::atan(t) / M_PI, 1e-13);
    EXPECT_NEAR(slm::student_t_sf(t, 2), 0.5 - t / (2 * std::sqrt(2 + t * t)), 1e-13);
    EXPECT_NEAR(slm::student_t_sf(-t, 2), 0.5 + t / (2 * std::sqrt(2 + t * t)), 1e-13);
  }
  EXPECT_NEAR(slm::normal_sf(2.0), 0.0227501319, 1e-9);
}

TEST(Stats, HolmAndBenjaminiHochbergWithKnownPValues) {
  const std::vector<double> p = {0.01, 0.04, 0.03, 0.005, NAN};
  // Holm: sorted 0.005 0.01 0.03 0.04 -> 4p, 3p, 2p, 1p = 0.02 0.03 0.06 0.04, then running max.
  const auto h = slm::holm_adjust(p);
  EXPECT_NEAR(h[3], 0.02, 1e-15);
  EXPECT_NEAR(h[0], 0.03, 1e-15);
  EXPECT_NEAR(h[2], 0.06, 1e-15);
  EXPECT_NEAR(h[1], 0.06, 1e-15);
  EXPECT_TRUE(std::isnan(h[4]));  // not in the family
  // BH: m/rank x p = 0.02 0.02 0.04 0.04, then running min from the top.
  const auto b = slm::bh_adjust(p);
  EXPECT_NEAR(b[3], 0.02, 1e-15);
  EXPECT_NEAR(b[0], 0.02, 1e-15);
  EXPECT_NEAR(b[2], 0.04, 1e-15);
  EXPECT_NEAR(b[1], 0.04, 1e-15);
  EXPECT_TRUE(std::isnan(b[4]));
}

// One noisy arm must not blind the rest: a planted arm whose two seeds are 0.11 apart (the issue's
// GateSkip) beside a real -3% effect. A pooled floor would be ~0.035 and read the -3% inconclusive;
// Welch judges each comparison by its own two arms.
TEST(Report, ANoisyArmDoesNotBlindTheRest) {
  Synth s{make_plan({"real:baseline:good", "noisy:baseline:wild"}), {}, {}};
  for (int i = 1; i <= 3; ++i) {
    s.add("baseline", i, 1.300 + 0.005 * (i - 2));
    s.add("real", i, 1.261 + 0.005 * (i - 2));  // -3.0%
  }
  s.add("noisy", 1, 1.245);
  s.add("noisy", 2, 1.355);
  auto sc = s.card();
  EXPECT_GT(sc.groups[0].noise_sd, 0.03);  // the pooled floor the noisy arm inflates
  const Card& real = find_card(sc, "real");
  EXPECT_EQ(real.verdict, "keep") << real.evidence;
  EXPECT_NEAR(real.df, 4.0, 1e-9);  // equal sds and n: Welch's df is n1 + n2 - 2
  EXPECT_NEAR(real.sd_diff, 0.005 * std::sqrt(2.0 / 3), 1e-9);
  EXPECT_EQ(find_card(sc, "noisy").verdict, "inconclusive");
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("Welch t per comparison"), std::string::npos) << txt;
}

// An arm with one counted run borrows the pooled sd (with the pooled degrees of freedom).
TEST(Report, ASingleRunArmBorrowsThePooledFloor) {
  Synth s{make_plan({"one:baseline:m"}), {}, {}};
  add_baseline(s);  // sd 0.01, n 3
  s.add("one", 1, 1.20);
  const Card& c = find_card(s.card(), "one");
  EXPECT_NEAR(c.sd_diff, 0.01 * std::sqrt(1.0 + 1.0 / 3), 1e-9);
  EXPECT_NEAR(c.df, 2.0, 1e-9);  // both variances rest on the baseline's 2 degrees of freedom (Satterthwaite: 3.2)
  EXPECT_NE(c.evidence.find("(pooled)"), std::string::npos) << c.evidence;
}

// Many comparisons: with correction none the report states 1 - (1 - alpha)^m; holm and bh decide on
// adjusted p-values, so a borderline effect among many decided at alpha alone is no longer decided.
TEST(Report, ThePhaseStatesItsFalseVerdictRateAndCanCorrect) {
  std::vector<std::string> specs;
  for (int i = 0; i < 9; ++i) specs.push_back("null" + std::to_string(i) + ":baseline:same");
  specs.push_back("edge:baseline:m");
  Synth s{make_plan(specs), {}, {}};
  add_baseline(s);  // 1.30 1.31 1.29
  for (int i = 0; i < 9; ++i)
    for (int seed = 1; seed <= 3; ++seed) s.add("null" + std::to_string(i), seed, 1.30 + 0.01 * (seed - 2) + 0.0001 * i);
  for (int seed = 1; seed <= 3; ++seed) s.add("edge", seed, 1.27 + 0.01 * (seed - 2));  // t = -3.67 on 4 df: p ~ 0.021
  auto none = s.card();
  const double alpha = 2 * slm::normal_sf(2.0);
  ASSERT_EQ(none.groups[0].families.size(), 1u);
  EXPECT_EQ(none.groups[0].families[0].m, 10);
  EXPECT_NEAR(none.groups[0].families[0].rate, 1 - std::pow(1 - alpha, 10), 1e-12);
  EXPECT_NE(render_text(none).find("37.2%"), std::string::npos) << render_text(none);
  const Card& e0 = find_card(none, "edge");
  EXPECT_EQ(e0.verdict, "keep") << e0.evidence;
  EXPECT_LT(e0.p, alpha);
  s.plan.rule.correction = "holm";
  auto holm = s.card();
  const Card& e1 = find_card(holm, "edge");
  EXPECT_EQ(e1.verdict, "inconclusive") << e1.evidence;
  EXPECT_NEAR(e1.p_adj, std::min(1.0, 10 * e1.p), 1e-12);  // the smallest p of the ten: x m
  EXPECT_NE(render_text(holm).find("correction holm"), std::string::npos);
  EXPECT_NEAR(holm.groups[0].families[0].rate, alpha, 1e-12);
  s.plan.rule.correction = "bh";
  EXPECT_EQ(find_card(s.card(), "edge").verdict, "inconclusive");
  EXPECT_EQ(plan_info_from_json(plan_info_json(s.plan)).rule.correction, "bh");
}

// Stability (§5): final worse than best by more than the floor is flagged; the rule decides whether it counts.
TEST(Report, UnstableRunsAreFlaggedAndTheRuleSaysWhetherTheyDecide) {
  Synth s{make_plan({"drifty:baseline:m"}), {}, {}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("drifty", i, 1.25 + 0.001 * i);
  for (auto& r : s.runs) r.final_val_bpb = r.best_val_bpb + 0.001;  // settled runs: 0.001 over best
  s.runs.back().final_val_bpb = 1.253 + 0.05;  // drifty s3 drifts 0.05 back up, ~7x the pooled floor (0.0071)
  auto sc = s.card();
  const Card& c = find_card(sc, "drifty");
  EXPECT_TRUE(c.runs[2].unstable);
  EXPECT_FALSE(c.runs[0].unstable);
  EXPECT_EQ(c.unstable, 1);
  EXPECT_EQ(c.n, 3);
  EXPECT_NE(render_text(sc).find("unstable (final +0.0500 over best)"), std::string::npos) << render_text(sc);
  s.plan.rule.unstable_decides = false;
  auto strict = s.card();
  EXPECT_EQ(find_card(strict, "drifty").n, 2);
  EXPECT_NE(render_text(strict).find("unstable runs do not decide"), std::string::npos);
}

// --decide's stopping rule under the null: many independent seed-only experiments (each with its own
// base, all drawn from one distribution), given seeds by seeds_to_add until decided or out of
// budget. The share called keep/park/drop must stay under the rate the rule states, within the
// binomial sampling error of the estimate (3 sigma). Without the correction for repeated looks the
// same draws are called far more often (printed, and checked to exceed the stated rate).
TEST(Report, DecideKeepsNullFalseVerdictsUnderTheStatedRate) {
  const int N = 4000, M = 8;
  Gauss g{20261203};
  int called = 0, called_naive = 0, added = 0, rounds_max = 0;
  double alpha_stated = 0;
  for (int i = 0; i < N; ++i) {
    PlanInfo p;
    p.name = "null";
    p.rule.max_seeds = M;
    p.experiments.push_back({"base", "p1", "", "", {}, {}, {1, 2}, ""});
    p.experiments.push_back({"null", "p1", "base", "", {"m"}, {"m"}, {1, 2}, ""});
    Synth s{p, {}, {}};
    std::map<std::string, int64_t> next;
    for (const char* e : {"base", "null"})
      for (int seed = 1; seed <= 2; ++seed) s.add(e, seed, 1.3 + 0.01 * g());
    next["base"] = next["null"] = 3;
    bool naive = false;
    for (int round = 0;; ++round) {
      auto sc = s.card();
      alpha_stated = rule_alpha(p.rule);
      const Card& c = find_card(sc, "null");
      naive |= std::isfinite(c.p) && c.p < alpha_stated;  // a look at the uncorrected alpha
      auto more = seeds_to_add(sc);
      if (more.empty()) {
        called += c.verdict == "keep" || c.verdict == "park" || c.verdict == "drop";
        rounds_max = std::max(rounds_max, round);
        break;
      }
      for (auto& e : more) {
        s.add(e, next[e]++, 1.3 + 0.01 * g());
        ++added;
      }
    }
    called_naive += naive;
  }
  const double rate = double(called) / N, naive_rate = double(called_naive) / N;
  const double margin = 3 * std::sqrt(alpha_stated * (1 - alpha_stated) / N);
  std::printf("[null test] %d experiments, max_seeds %d: %d called (%.2f%%), stated rate %.2f%% (+ %.2f%% margin); "
              "uncorrected looks would call %d (%.2f%%); %d seeds added, at most %d rounds\n",
              N, M, called, 100 * rate, 100 * alpha_stated, 100 * margin, called_naive, 100 * naive_rate, added, rounds_max);
  EXPECT_LE(rate, alpha_stated + margin);
  EXPECT_GT(naive_rate, alpha_stated + margin) << "the test must be able to see repeated looks";
  EXPECT_GT(added, 0);
  EXPECT_GE(rounds_max, 3);  // some experiments were looked at again and again
  EXPECT_LE(rounds_max, M - 2);
}

// A real effect under --decide: inconclusive at two seeds, decided once seeds are added, within budget.
TEST(Report, DecideAddsSeedsToAnInconclusiveRowUntilDecided) {
  PlanInfo p;
  p.name = "grow";
  p.rule.max_seeds = 8;
  p.experiments.push_back({"base", "p1", "", "", {}, {}, {1, 2}, ""});
  p.experiments.push_back({"better", "p1", "base", "", {"m"}, {"m"}, {1, 2}, ""});
  p.experiments.push_back({"flat", "p1", "base", "", {"z"}, {"z"}, {1, 2}, ""});
  Synth s{p, {}, {}};
  Gauss g{7};
  std::map<std::string, int64_t> next{{"base", 1}, {"better", 1}, {"flat", 1}};
  auto draw = [&](const std::string& e) {
    s.add(e, next[e]++, (e == "better" ? 1.28 : 1.30) + 0.01 * g());
  };
  for (const char* e : {"base", "better", "flat"}) draw(e), draw(e);
  auto first = s.card();
  ASSERT_EQ(find_card(first, "better").verdict, "inconclusive") << find_card(first, "better").evidence;
  auto more = seeds_to_add(first);
  EXPECT_NE(std::find(more.begin(), more.end(), "better"), more.end());
  EXPECT_NE(std::find(more.begin(), more.end(), "base"), more.end());  // the base has no more seeds than it
  Scorecard sc = first;
  while (!(more = seeds_to_add(sc)).empty()) {
    for (auto& e : more) draw(e);
    sc = s.card();
  }
  const Card& b = find_card(sc, "better");
  EXPECT_EQ(b.verdict, "keep") << b.evidence;
  EXPECT_LE(b.runs.size(), 8u);
  EXPECT_LE(find_card(sc, "base").runs.size(), 8u);
  EXPECT_NE(render_text(sc).find("Bonferroni over looks"), std::string::npos);
  // No budget: nothing is added.
  s.plan.rule.max_seeds = 0;
  EXPECT_TRUE(seeds_to_add(s.card()).empty());
}

// Cost beside quality (§2): ratios against the base, and the delta at equal training FLOPs read off
// each run's eval curve (interpolated), beside the delta at equal steps.
TEST(Report, CostRatiosAndTheDeltaAtEqualCompute) {
  Synth s{make_plan({"big:baseline:engram"}), {}, {}};
  add_baseline(s);  // bests 1.30 1.31 1.29; curves 100: best + 0.2, 200: best, 250: best + 0.01
  for (int i = 1; i <= 3; ++i) s.add("big", i, 1.20 + 0.01 * (i == 2) - 0.01 * (i == 3));
  for (auto& r : s.runs) {
    const bool big = r.experiment == "big";
    r.n_params = big ? 1780 : 1000;
    r.active_params = r.n_params;
    r.flops_per_token = big ? 12000 : 6000;  // twice the FLOPs per token
    r.tokens = 64000;
    r.steps = 250;
    r.wall_seconds = big ? 20 : 10;
  }
  auto sc = s.card();
  const Card& c = find_card(sc, "big");
  EXPECT_EQ(c.verdict, "keep");  // -7.7% at equal steps
  EXPECT_NEAR(c.params_x, 1.78, 1e-12);
  EXPECT_NEAR(c.flops_x, 2.0, 1e-12);
  EXPECT_NEAR(c.wall_x, 2.0, 1e-12);
  // Equal compute: the base's whole budget, 6000 x 64000 FLOPs, is big's step 125: between its eval
  // at 100 (best + 0.2) and 200 (best), a quarter of the way: best + 0.15 = 1.35 on average; the
  // base there is at its step 250, best + 0.01 = 1.31.
  EXPECT_DOUBLE_EQ(c.eq_flops, 6000.0 * 64000);
  EXPECT_NEAR(c.eq_mean, 1.35, 1e-12);
  EXPECT_NEAR(c.eq_base_mean, 1.31, 1e-12);
  EXPECT_NEAR(c.eq_delta_pct, 100 * 0.04 / 1.31, 1e-9);
  const std::string txt = render_text(sc);
  // +78% parameters is over the rule's 10% share: the row says so, and that no control arm ran.
  EXPECT_TRUE(c.over_share);
  EXPECT_NE(txt.find("params 1.78x (over the rule's param_share, no control arm), FLOPs/tok 2.00x, wall 2.00x"),
            std::string::npos) << txt;
  EXPECT_NE(txt.find("+3.05% @ 3.84e+08 FLOPs (interpolated)"), std::string::npos) << txt;
  // The trainer's own sum over the steps as they ran (DSA's dense warm-up, say) wins over the last
  // step's FLOPs per token x tokens.
  for (auto& r : s.runs)
    if (r.experiment == "big") r.train_flops = 1.5 * r.flops_per_token * r.tokens;
  EXPECT_NEAR(find_card(s.card(), "big").flops_x, 3.0, 1e-12);
  for (auto& r : s.runs) r.train_flops = NAN;
  // The rule may decide at equal compute: there big is a real loss (+3.05%, t 4.9 on 4 df).
  s.plan.rule.compare_at = "compute";
  auto at_c = s.card();
  const Card& cc = find_card(at_c, "big");
  EXPECT_EQ(cc.verdict, "drop") << cc.evidence;
  EXPECT_NEAR(cc.dec_delta, 0.04, 1e-12);
  EXPECT_NEAR(cc.delta_pct, -100 * 0.1 / 1.3, 1e-9);  // the equal-steps delta is still shown
  EXPECT_NE(cc.evidence.find("at equal compute"), std::string::npos) << cc.evidence;
  EXPECT_NE(render_text(at_c).find("val_bpb at equal training FLOPs"), std::string::npos);
  EXPECT_EQ(plan_info_from_json(plan_info_json(s.plan)).rule.compare_at, "compute");
  // Without costs (older ledgers) nothing is made up: no equal-compute delta, and no verdict on it.
  for (auto& r : s.runs) r.flops_per_token = NAN;
  EXPECT_TRUE(std::isnan(find_card(s.card(), "big").eq_delta_pct));
  EXPECT_EQ(find_card(s.card(), "big").verdict, "inconclusive");
}

// A plan may decide on an objective metric (issue 21 §1): a FIM arm that costs val_bpb (the code
// objectives can only cost on next-token code) but infills far better is kept on fim_bpb, dropped
// on val_bpb; the scorecard shows val_bpb beside the deciding metric and says which one decided.
TEST(Report, AnObjectiveMetricDecidesAndValBpbIsShownBesideIt) {
  Synth s{make_plan({"fim:baseline:fim"}), {}, {}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("fim", i, 1.33 + 0.01 * (i - 2));  // val_bpb +2.3%
  // fim_bpb at each eval: the baseline's 2.0 (+- seed noise), the FIM arm's 1.6: -20%.
  for (auto& r : s.runs) {
    const double fim = (r.experiment == "fim" ? 1.6 : 2.0) + 0.01 * (r.seed - 2);
    for (auto& e : s.evals[r.run_id]) e.metrics = {{"fim_bpb", fim + 0.001 * (250 - e.step) / 50}, {"sri_bpb", 3.0}};
  }
  auto on_val = s.card();
  EXPECT_EQ(find_card(on_val, "fim").verdict, "drop");
  s.plan.rule.metric = "fim_bpb";
  auto sc = s.card();
  const Card& c = find_card(sc, "fim");
  EXPECT_EQ(c.verdict, "keep");
  EXPECT_NEAR(c.mean, 1.6, 1e-12);  // the best (last) fim_bpb of each run
  EXPECT_NEAR(c.delta_pct, -20.0, 1e-9);
  EXPECT_NEAR(c.metric_means.at("val_bpb"), 1.33, 1e-12);
  EXPECT_EQ(c.evidence.rfind("on fim_bpb: ", 0), 0u) << c.evidence;
  const std::string text = render_text(sc);
  EXPECT_NE(text.find("rule: fim_bpb"), std::string::npos) << text;
  EXPECT_NE(text.find("fim_bpb mean +- sd"), std::string::npos) << text;
  EXPECT_NE(text.find("val_bpb 1.3300, sri_bpb 3.0000"), std::string::npos) << text;
  EXPECT_NE(render_markdown(sc).find("val\\_bpb 1.3300"), std::string::npos);  // md escapes _
  EXPECT_NE(render_html(sc).find("fim_bpb mean ± sd"), std::string::npos);
  // A run that did not record the rule's metric has no number and does not count.
  for (auto& e : s.evals["synthetic/fim/s3"]) e.metrics.clear();
  EXPECT_EQ(find_card(s.card(), "fim").n, 2);
}

// A phase's own rule names its metric (issue 21 §1): the objectives phase decides on fim_bpb while
// the plan (and the baseline's phase) stays on val_bpb. The base is re-valued on fim_bpb for the
// comparison, the floor an arm borrows is the fim_bpb one, and the row names the metric.
TEST(Report, APhaseDecidesOnItsOwnMetric) {
  Synth s{make_plan({"fim:baseline:fim", "other:baseline:mtp"}), {}, {}};
  s.plan.experiments[1].phase = "objectives";
  s.plan.phase_metrics = {{"objectives", "fim_bpb"}};
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("fim", i, 1.33 + 0.01 * (i - 2)).phase = "objectives";  // val_bpb +2.3%
  for (int i = 1; i <= 3; ++i) s.add("other", i, 1.30 + 0.01 * (i - 2));
  for (auto& r : s.runs) {
    const double fim = (r.experiment == "fim" ? 1.6 : 2.0) + 0.01 * (r.seed - 2);
    for (auto& e : s.evals[r.run_id]) e.metrics = {{"fim_bpb", fim + 0.001 * (250 - e.step) / 50}};
  }
  auto sc = s.card();
  const Card& c = find_card(sc, "fim");
  EXPECT_EQ(c.metric, "fim_bpb");
  EXPECT_EQ(c.verdict, "keep") << c.evidence;
  EXPECT_NEAR(c.mean, 1.6, 1e-12);
  EXPECT_NEAR(c.delta_pct, -20.0, 1e-9);  // against the baseline's fim_bpb, 2.0
  EXPECT_EQ(c.evidence.rfind("on fim_bpb: ", 0), 0u) << c.evidence;
  EXPECT_NEAR(c.metric_means.at("val_bpb"), 1.33, 1e-12);
  // The baseline's own phase is on val_bpb; so is the other experiment's verdict.
  EXPECT_EQ(find_card(sc, "baseline").metric, "val_bpb");
  EXPECT_NEAR(find_card(sc, "baseline").mean, 1.30, 1e-12);
  EXPECT_EQ(find_card(sc, "other").evidence.rfind("on val_bpb: ", 0), 0u);
  // One floor per decided metric: seeds spread 0.01 in both, so both floors are 0.01.
  const Group& g = sc.groups[0];
  ASSERT_EQ(g.noise_by_metric.count("fim_bpb"), 1u);
  EXPECT_NEAR(g.noise_by_metric.at("fim_bpb").sd, 0.01, 1e-9);
  EXPECT_NEAR(g.noise_sd, 0.01, 1e-9);
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("phase objectives decides on fim_bpb"), std::string::npos) << txt;
  EXPECT_NE(txt.find("1.6000 +- 0.0100 (fim_bpb)"), std::string::npos) << txt;
  // The per-phase metric survives the ledger's copy of the plan.
  EXPECT_EQ(plan_info_from_json(plan_info_json(s.plan)).phase_metrics, s.plan.phase_metrics);
}

// Parameter-matched control (issue 21 §2): the control arm's runs are on a derived substrate, in a
// group of their own (never in the base group's floor), and the experiment's row shows its delta
// and verdict against the control beside those against its base.
TEST(Report, AnExperimentIsComparedWithItsParameterMatchedControl) {
  Synth s{make_plan({"big:baseline:engram"}), {}, {}};
  s.plan.experiments.push_back({"big.widen", "p1", "", "parameter-matched control of big: ...", {}, {}, {1, 2, 3}, "big"});
  add_baseline(s);
  for (int i = 1; i <= 3; ++i) s.add("big", i, 1.20 + 0.01 * (i - 2));
  // A same-size plain model gets part of the way: big is -2.4% against it, 1.23 -> 1.20.
  for (int i = 1; i <= 3; ++i) s.add("big.widen", i, 1.23 + 0.01 * (i - 2), "sub-W");
  for (auto& r : s.runs) r.n_params = r.experiment == "baseline" ? 1000 : 1780;
  auto sc = s.card();
  ASSERT_EQ(sc.groups.size(), 2u);
  const Card& c = find_card(sc, "big");
  EXPECT_EQ(c.verdict, "keep");
  EXPECT_TRUE(c.over_share);
  EXPECT_EQ(c.control_id, "big.widen");
  EXPECT_NEAR(c.control_delta_pct, -100 * 0.03 / 1.23, 1e-9);
  EXPECT_EQ(c.control_verdict, "keep") << c.evidence;  // t = 0.03 / (0.01 sqrt(2/3)) = 3.67 on 4 df: p 0.021 < 4.55%
  EXPECT_NE(c.evidence.find("vs parameter-matched control on val_bpb: delta -0.0300"), std::string::npos) << c.evidence;
  const Card& ctl = find_card(sc, "big.widen", 1);
  EXPECT_EQ(ctl.verdict, "control");
  // The base group's floor is the base's and big's seeds only (6 runs), never the control's.
  EXPECT_EQ(sc.groups[0].noise_runs, 6);
  const std::string txt = render_text(sc);
  EXPECT_NE(txt.find("(over the rule's param_share; vs control big.widen -2.44% keep)"), std::string::npos) << txt;
  EXPECT_NE(txt.find("parameter-matched control arms on a derived substrate"), std::string::npos) << txt;
  // Under the share nothing is flagged.
  for (auto& r : s.runs) r.n_params = r.experiment == "baseline" ? 1000 : 1050;
  EXPECT_FALSE(find_card(s.card(), "big").over_share);
  // The control arm's link survives the ledger's copy of the plan.
  EXPECT_EQ(plan_info_from_json(plan_info_json(s.plan)).find("big.widen")->control_of, "big");
}

// ---------------------------------------------------------------------------------------------
// Scale ladders (engine/ladder.h), on a constructed ladder whose answer is worked by hand.

namespace {

// A run of a ladder plan on `rung` (its own substrate id): id <plan>/<rung>/<experiment>/s<seed>,
// final = best (stable).
void add_on_rung(Synth& s, const std::string& rung, const std::string& exp, int64_t seed, double best) {
  RunRow& r = s.add(exp, seed, best, "id-" + rung);
  auto ev = s.evals[r.run_id];
  s.evals.erase(r.run_id);
  r.run_id = run_id(s.plan.name, rung, exp, seed);
  r.final_val_bpb = best;
  s.evals[r.run_id] = ev;
}

// Three rungs. Means (each experiment two seeds at mean -+ 0.001, d at -+ 0.02):
//            baseline   a      b      c (base a)   d
//   r-small    1.10    1.04   1.08   1.12         1.11
//   r-mid      1.05    1.00    -      -            -     (runs baseline and a only)
//   r-big      1.00    0.95   1.02   0.97         0.99   (the target)
Synth ladder_synth() {
  Synth s{make_plan({"a:baseline:ma", "b:baseline:mb", "c:a:mc", "d:baseline:md"}), {}, {}};
  s.plan.ladder = {{"r-small", "r-small", {"baseline", "a", "b", "c", "d"}},
                   {"r-mid", "r-mid", {"baseline", "a"}},
                   {"r-big", "r-big", {"baseline", "a", "b", "c", "d"}}};
  const std::map<std::string, std::map<std::string, double>> means = {
      {"r-small", {{"baseline", 1.10}, {"a", 1.04}, {"b", 1.08}, {"c", 1.12}, {"d", 1.11}}},
      {"r-mid", {{"baseline", 1.05}, {"a", 1.00}}},
      {"r-big", {{"baseline", 1.00}, {"a", 0.95}, {"b", 1.02}, {"c", 0.97}, {"d", 0.99}}}};
  for (auto& [rung, m] : means)
    for (auto& [exp, mean] : m) {
      const double h = exp == "d" ? 0.02 : 0.001;
      add_on_rung(s, rung, exp, 1, mean - h);
      add_on_rung(s, rung, exp, 2, mean + h);
    }
  return s;
}

}  // namespace

// The ten pairs of r-small against r-big, by hand (sign of the first minus the second):
//   baseline-a + +  agree (vs base)     a-b  - -  agree         b-c  + -  differ
//   baseline-b - +  differ (vs base)    a-c  - -  agree (c's base a)  b-d  + -  differ
//   baseline-c + -  differ              a-d  - -  agree         c-d  - +  differ
//   baseline-d + -  differ (vs base)
// 4 of 10 agree; vs base 2 of 4; between experiments 2 of 6.
TEST(Ladder, DecisionAgreementWorkedByHand) {
  const std::vector<std::string> order = {"baseline", "a", "b", "c", "d"};
  const std::map<std::string, std::string> bases = {{"a", "baseline"}, {"b", "baseline"}, {"c", "a"}, {"d", "baseline"}};
  const std::map<std::string, double> small = {{"baseline", 1.10}, {"a", 1.04}, {"b", 1.08}, {"c", 1.12}, {"d", 1.11}};
  const std::map<std::string, double> big = {{"baseline", 1.00}, {"a", 0.95}, {"b", 1.02}, {"c", 0.97}, {"d", 0.99}};
  Agreement a = agreement(order, small, big, bases);
  EXPECT_EQ(a.pairs, 10);
  EXPECT_EQ(a.agree, 4);
  EXPECT_EQ(a.base_pairs, 4);
  EXPECT_EQ(a.base_agree, 2);
  EXPECT_EQ(a.ties, 0);
  EXPECT_EQ(a.disagree, (std::vector<std::string>{"baseline vs b", "baseline vs c", "baseline vs d", "b vs c", "b vs d", "c vs d"}));
  EXPECT_EQ(agreement_text(a), "4/10 (40%): vs base 2/4 (50%), between experiments 2/6 (33%)");
  // Arms missing on either rung leave their pairs out; a tie at the target has no answer and is left
  // out; a tie on the smaller rung where the target orders the pair did not pick the winner.
  std::map<std::string, double> partial = {{"baseline", 1.10}, {"a", 1.10}, {"c", NAN}};
  std::map<std::string, double> tied = big;
  tied["b"] = tied["baseline"];
  Agreement p = agreement(order, partial, tied, bases);
  EXPECT_EQ(p.pairs, 1);  // baseline vs a only
  EXPECT_EQ(p.agree, 0);
  EXPECT_EQ(p.base_pairs, 1);
  Agreement t = agreement(order, small, tied, bases);
  EXPECT_EQ(t.ties, 1);
  EXPECT_EQ(t.pairs, 9);
}

TEST(Ladder, EachExperimentPerRungWithItsTrendAndFlips) {
  Synth s = ladder_synth();
  Scorecard sc = s.card();
  order_by_rung(sc);
  ASSERT_EQ(sc.groups.size(), 3u);
  EXPECT_EQ(group_rung(sc, sc.groups[0]), "r-small");  // rung order, not size order
  EXPECT_EQ(group_rung(sc, sc.groups[1]), "r-mid");
  EXPECT_EQ(group_rung(sc, sc.groups[2]), "r-big");
  const LadderView v = ladder_view(sc);
  ASSERT_EQ(v.rungs, (std::vector<std::string>{"r-small", "r-mid", "r-big"}));
  ASSERT_EQ(v.rows.size(), 4u);
  auto row = [&](const std::string& id) -> const LadderRow& {
    for (auto& r : v.rows)
      if (r.id == id) return r;
    throw std::runtime_error("no row " + id);
  };
  // a: a gain on every rung (-5.45%, -4.76%, -5.00%), kept on each: no flip.
  ASSERT_TRUE(row("a").cards[1]);
  EXPECT_NEAR(row("a").cards[0]->delta_pct, 100 * (1.04 - 1.10) / 1.10, 1e-9);
  EXPECT_EQ(row("a").cards[0]->verdict, "keep");
  EXPECT_EQ(row("a").cards[2]->verdict, "keep");
  EXPECT_EQ(row("a").trend, "gain at every rung, not monotone");
  EXPECT_TRUE(row("a").flips.empty());
  // b: decided both ways (seed sd 0.0014 against a 0.02 delta): keep small, drop at the target.
  EXPECT_FALSE(row("b").cards[1]);  // not run on r-mid
  EXPECT_EQ(row("b").trend, "changes sign");
  EXPECT_EQ(row("b").flips, (std::vector<std::string>{"verdict keep on r-small, drop on r-big"}));
  // c against its base a: a loss on both rungs, dropped on both.
  EXPECT_TRUE(row("c").flips.empty());
  EXPECT_EQ(row("c").trend, "loss shrinks with scale");
  // d: too noisy to decide anywhere, but its delta points the other way at the target.
  EXPECT_EQ(row("d").cards[0]->verdict, "inconclusive");
  EXPECT_EQ(row("d").flips, (std::vector<std::string>{"direction +0.91% on r-small, -1.00% on r-big"}));
  ASSERT_EQ(v.agreements.size(), 2u);
  EXPECT_EQ(v.agreements[0].agree, 4);
  EXPECT_EQ(v.agreements[0].pairs, 10);
  EXPECT_EQ(v.agreements[1].pairs, 1);  // r-mid ran baseline and a only
  EXPECT_EQ(v.agreements[1].agree, 1);
  // Every format says it.
  const std::string txt = render_text(sc), md = render_markdown(sc);
  EXPECT_NE(txt.find("rung r-small: substrate id-r-small"), std::string::npos) << txt;
  EXPECT_NE(txt.find("scale ladder: r-small < r-mid < r-big"), std::string::npos);
  EXPECT_NE(txt.find("FLIPS: verdict keep on r-small, drop on r-big"), std::string::npos);
  EXPECT_NE(txt.find("r-small agrees with r-big on 4/10 (40%): vs base 2/4 (50%), between experiments 2/6 (33%)"),
            std::string::npos) << txt;
  EXPECT_NE(txt.find("r-mid agrees with r-big on 1/1 (100%)"), std::string::npos);
  EXPECT_NE(md.find("**flips**: direction +0.91% on r-small, -1.00% on r-big"), std::string::npos) << md;
  // A plan without a ladder has no ladder section.
  Synth plain{make_plan({"x:baseline:m"}), {}, {}};
  add_baseline(plain);
  EXPECT_TRUE(ladder_view(plain.card()).rungs.empty());
  EXPECT_EQ(render_text(plain.card()).find("scale ladder"), std::string::npos);
}

TEST(Ladder, TheLadderRoundTripsThroughThePlanSpec) {
  PlanInfo p = ladder_synth().plan;
  PlanInfo q = plan_info_from_json(plan_info_json(p));
  ASSERT_EQ(q.ladder.size(), 3u);
  EXPECT_EQ(q.ladder[1].name, "r-mid");
  EXPECT_EQ(q.ladder[1].experiments, (std::vector<std::string>{"baseline", "a"}));
  EXPECT_TRUE(plan_info_from_json(plan_info_json(make_plan({}))).ladder.empty());
}

namespace {

// How often `needle` occurs in `hay`.
size_t occurrences(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + needle.size())) ++n;
  return n;
}

}  // namespace

// The HTML report in a real browser: headless Chromium parses the page with its inline SVG, and the
// DOM it dumps must hold one decision panel per rung, every experiment's bar in its verdict's class,
// and the ladder table with its flips and agreement after them (a tag the parser misread would
// swallow what follows). Chromium is Debian's, from scripts/setup.sh; without it this test fails.
TEST(ReportHtml, ChromiumRendersTheDecisionPanelsAndTheLadder) {
  const std::string chromium = "/usr/bin/chromium";
  ASSERT_TRUE(std::filesystem::exists(chromium))
      << chromium << " is missing: run scripts/setup.sh (it installs Debian's chromium, which this test renders the HTML report in)";
  slm::test::TempDir t;
  Scorecard sc = ladder_synth().card();
  order_by_rung(sc);
  slm::test::write(t / "report.html", render_html(sc));
  // The flags that let it start in a closed sandbox (no network, no GPU, a fresh profile).
  auto r = slm::test::run("(timeout 120 " + chromium + " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
                          "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=" +
                          t / "profile" + " --dump-dom file://" + t / "report.html" + " 2>/dev/null)");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string& dom = r.out;
  ASSERT_NE(dom.find("</html>"), std::string::npos) << dom;
  EXPECT_EQ(occurrences(dom, "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"decisions\""), 3u);  // one panel per rung
  EXPECT_EQ(occurrences(dom, "<g class=\"decision verdict-"), 9u);  // 4 + 1 + 4 experiments with a base
  EXPECT_EQ(occurrences(dom, "<rect class=\"bar\""), 9u);
  // b: kept on r-small (the first panel), dropped on r-big (the last).
  const size_t b1 = dom.find("data-experiment=\"b\">"), b2 = dom.find("data-experiment=\"b\">", b1 + 1);
  ASSERT_NE(b2, std::string::npos);
  EXPECT_NE(dom.rfind("<g class=\"decision verdict-keep\"", b1), std::string::npos);
  EXPECT_EQ(dom.substr(dom.rfind("<g ", b1), 40).find("verdict-keep"), std::string("<g class=\"decision ").size());
  EXPECT_EQ(dom.substr(dom.rfind("<g ", b2), 40).find("verdict-drop"), std::string("<g class=\"decision ").size());
  // A whisker and its two ends (a line, or an arrow past the range) per bar.
  EXPECT_EQ(occurrences(dom, "class=\"interval\"") + occurrences(dom, "class=\"interval clipped\""), 9u * 3);
  EXPECT_EQ(occurrences(dom, "class=\"keep-bar\""), 3u);
  // The ladder table after the panels, with both flips flagged and each smaller rung's agreement.
  const size_t table = dom.find("<table class=\"ladder\">");
  ASSERT_NE(table, std::string::npos);
  EXPECT_EQ(occurrences(dom.substr(table), "class=\"flip\""), 2u);
  EXPECT_NE(dom.find("<li>r-small agrees with r-big on 4/10 (40%)", table), std::string::npos);
  EXPECT_NE(dom.find("<li>r-mid agrees with r-big on 1/1 (100%)", table), std::string::npos);
}
