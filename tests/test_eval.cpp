// Evaluation end to end, through the binary: a model trained on a corpus of small C++ files that
// compile is scored by `slmlab eval compile` in both modes (a rate with its Wilson interval, per-prompt
// records, the ledger row), and the report shows the compile rate next to val_bpb.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "data/dataset.h"
#include "engine/ledger.h"
#include "engine/report.h"
#include "test_paths.h"
#include "test_util.h"

using namespace slm;

namespace {

// Files that compile on their own: a few documented free functions each.
void write_corpus(const std::string& dir, int n_files) {
  fs::mkdirs(dir);
  for (int f = 0; f < n_files; ++f) {
    std::string s = "#include <vector>\n#include <string>\n\nnamespace lib" + std::to_string(f) + " {\n\n";
    for (int k = 0; k < 4; ++k) {
      const std::string n = std::to_string(f * 10 + k);
      s += "/// Adds " + n + " to every element.\nint add_" + n + "(std::vector<int>& v) {\n  int total = 0;\n"
           "  for (auto& x : v) {\n    x += " + n + ";\n    total += x;\n  }\n  return total;\n}\n\n";
      s += "// Joins the words with a separator.\nstd::string join_" + n +
           "(const std::vector<std::string>& w) {\n  std::string out;\n  for (const auto& x : w) out += x + \",\";\n"
           "  return out;\n}\n\n";
    }
    s += "}  // namespace lib" + std::to_string(f) + "\n";
    test::write(dir + "/f" + std::to_string(f) + ".cpp", s);
  }
}

}  // namespace

TEST(EvalCompile, RateIntervalRecordsLedgerAndReport) {
  test::TempDir t;
  write_corpus(t / "src", 60);
  const std::string bin = SLMLAB_BIN;
  auto b = test::run(bin + " data build --src " + (t / "src") + " --out " + (t / "ds") +
                     " --vocab 600 --val-frac 0.1 --val-min-bytes 2000 --threads 1");
  ASSERT_EQ(b.status, 0) << b.out;
  const std::string sub = t / "tiny.toml";
  test::write(sub,
              "name = \"eval-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 160\ntotal_batch = 1280\n"
              "device_batch = 8\nsteps = 40\neval_every = 20\neval_tokens = 640\nckpt_every = 20\nthreads = 1\n"
              "lr_matrix = 0.05\nlr_embed = 0.5\nlr_head = 0.02\n");
  const std::string run = t / "run";
  auto tr = test::run(bin + " train --quiet --data " + (t / "ds") + " --substrate " + sub + " --out " + run +
                      " --module ifim.rate=0.5 --keep-checkpoints");
  ASSERT_EQ(tr.status, 0) << tr.out;
  EXPECT_TRUE(fs::exists(run + "/ckpt_step000020.safetensors"));
  // The run in a ledger, as ablate would leave it.
  const std::string db = t / "ledger.sqlite";
  {
    engine::Ledger l(db);
    engine::RunRow r;
    r.run_id = "p/ifim/s1";
    r.plan = "p";
    r.phase = "x";
    r.experiment = "ifim";
    r.seed = 1;
    r.run_dir = run;
    r.status = engine::Status::Done;
    r.has_summary = true;
    r.best_val_bpb = r.final_val_bpb = 2.0;
    r.best_step = 40;
    r.substrate_id = "s";
    l.upsert(r);
    l.set_evals(r.run_id, {{40, 2.0, false}});
  }
  for (const char* mode : {"complete", "fim"}) {
    auto e = test::run(bin + " eval compile " + run + " --n 4 --max-tokens 64 --mode " + mode + " --ledger " + db +
                       " --threads 1");
    ASSERT_EQ(e.status, 0) << e.out;
    EXPECT_NE(e.out.find("compile rate "), std::string::npos) << e.out;
    EXPECT_NE(e.out.find("95% Wilson"), std::string::npos) << e.out;
    EXPECT_NE(e.out.find("0 rejected"), std::string::npos) << e.out;  // every held-out file compiles as written
    const std::string rec = run + "/compile_" + mode + "_step40.jsonl";
    ASSERT_TRUE(fs::exists(rec));
    EXPECT_EQ(test::count_lines(fs::read_file(rec)), 4);
    auto first = nlohmann::json::parse(fs::read_file(rec).substr(0, fs::read_file(rec).find('\n')));
    EXPECT_TRUE(first.contains("status") && first.contains("function") && first.contains("completion"));
    EXPECT_TRUE(first.contains("trivial")) << "trivial bodies are marked per prompt (issue 18 6)";
    EXPECT_NE(e.out.find("trivial bodies (not counted)"), std::string::npos) << e.out;
  }
  // An earlier checkpoint, kept by --keep-checkpoints, is evaluated as itself.
  auto early = test::run(bin + " eval compile " + run + " --checkpoint 20 --n 2 --max-tokens 64 --ledger " + db);
  ASSERT_EQ(early.status, 0) << early.out;
  EXPECT_NE(early.out.find("step 20"), std::string::npos) << early.out;
  engine::Ledger l(db);
  auto ce = l.compile_evals("p/ifim/s1");
  ASSERT_EQ(ce.size(), 3u);
  for (auto& c : ce) {
    EXPECT_LE(c.lo, static_cast<double>(c.k) / c.n);
    EXPECT_GE(c.hi, static_cast<double>(c.k) / c.n);
    EXPECT_LE(c.k + c.trivial, c.n) << "a trivial body is not a success";
    EXPECT_EQ(c.stopped, "");
  }
  // The bound (issue 18 6): held-out files that do not compile do not count toward --n, so the
  // evaluation has a clock; reached before any prompt, it is an error that says which bound.
  auto bounded = test::run(bin + " eval compile " + run + " --n 4 --max-tokens 64 --max-seconds 0.001 --ledger " + db);
  EXPECT_EQ(bounded.status, 2) << bounded.out;
  EXPECT_NE(bounded.out.find("stopped at the time limit of 0.001 s"), std::string::npos) << bounded.out;
  auto rep = test::run(bin + " report --ledger " + db);
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_NE(rep.out.find("compile rate"), std::string::npos) << rep.out;
  EXPECT_NE(rep.out.find("compile complete @ 40"), std::string::npos) << rep.out;
  // Bad input: one line, non-zero.
  auto bad = test::run(bin + " eval compile " + run + " --mode sideways --ledger " + db);
  EXPECT_EQ(bad.status, 2);
  EXPECT_EQ(test::count_lines(bad.out), 1) << bad.out;
  auto missing = test::run(bin + " eval compile " + run + " --checkpoint 7");
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.out.find("--keep-checkpoints"), std::string::npos) << missing.out;
}

// [rule] compile_rate = N (issue 21 §1): ablate scores the FIM-mode compile rate of each finished
// run's best checkpoint itself, records it in the ledger, and the scorecard shows it with its
// interval; a second ablate scores nothing again.
TEST(EvalCompile, AblateJoinsTheFimRateAtEachRunsBestCheckpoint) {
  test::TempDir t;
  write_corpus(t / "src", 60);
  const std::string bin = SLMLAB_BIN;
  auto b = test::run(bin + " data build --src " + (t / "src") + " --out " + (t / "ds") +
                     " --vocab 600 --val-frac 0.1 --val-min-bytes 2000 --threads 1");
  ASSERT_EQ(b.status, 0) << b.out;
  test::write(t / "tiny.toml",
              "name = \"eval-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 160\ntotal_batch = 1280\n"
              "device_batch = 8\nsteps = 20\neval_every = 10\neval_tokens = 640\nckpt_every = 10\n"
              "lr_matrix = 0.05\nlr_embed = 0.5\nlr_head = 0.02\n");
  test::write(t / "plan.toml",
              "name = \"cr\"\nsubstrate = \"tiny.toml\"\n[rule]\ncompile_rate = 3\n[[phases]]\nname = \"p\"\n"
              "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n");
  const std::string db = t / "ledger.sqlite";
  const std::string cmd = bin + " ablate " + (t / "plan.toml") + " --jobs 1 --threads 1 --data " + (t / "ds") + " --runs " +
                          (t / "runs") + " --ledger " + db;
  auto a = test::run(cmd);
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_NE(a.out.find("compile rate (fim, 3 prompts) at its best checkpoint"), std::string::npos) << a.out;
  engine::Ledger l(db);
  const auto row = l.get("cr/baseline/s1");
  ASSERT_TRUE(row);
  auto ce = l.compile_evals("cr/baseline/s1");
  ASSERT_EQ(ce.size(), 1u);
  EXPECT_EQ(ce[0].mode, "fim");
  EXPECT_EQ(ce[0].checkpoint, "best");
  EXPECT_EQ(ce[0].step, row->best_step);
  EXPECT_EQ(ce[0].n, 3);
  EXPECT_LE(ce[0].lo, static_cast<double>(ce[0].k) / ce[0].n);
  EXPECT_GE(ce[0].hi, static_cast<double>(ce[0].k) / ce[0].n);
  EXPECT_TRUE(fs::exists(row->run_dir + "/compile.log"));
  auto rep = test::run(bin + " report --ledger " + db);
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_NE(rep.out.find("compile rate (fim, 3 prompts) at each run's best checkpoint"), std::string::npos) << rep.out;
  EXPECT_NE(rep.out.find("/3 ("), std::string::npos) << rep.out;  // k/3 (x%, 95% lo-hi%)
  EXPECT_NE(rep.out.find("%) fim"), std::string::npos) << rep.out;
  // Resumed: the run is finished and scored; nothing runs again.
  auto again = test::run(cmd);
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(again.out.find("compile rate (fim"), std::string::npos) << again.out;
  EXPECT_EQ(l.compile_evals("cr/baseline/s1").size(), 1u);
}
