// slmlab ablate end to end: a plan runs in waves into the ledger; running it again runs nothing;
// SIGKILL of the runner mid-wave, then a restart, loses nothing and duplicates nothing, and the
// resumed runs reproduce the uninterrupted curves bitwise.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "data/dataset.h"
#include "engine/ledger.h"
#include "test_util.h"

using namespace slm;
using json = nlohmann::json;

namespace {

struct Fixture {
  slm::test::TempDir t;
  std::string data, plan;
  Fixture() {
    data = slm::test::small_dataset(t.path, 50, 5, 16, 400, 8192);
    slm::test::write(t / "tiny.toml",
                     "name = \"ablate-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                     "total_batch = 256\ndevice_batch = 8\nsteps = 40\neval_every = 10\neval_tokens = 512\n"
                     "ckpt_every = 5\nprecision = \"auto\"\n");
    plan = t / "plan.toml";
    slm::test::write(plan,
                     "name = \"noise\"\nsubstrate = \"tiny.toml\"\n[[phases]]\nname = \"p\"\n"
                     "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1, 2, 3]\n");
  }
  std::string cmd(const std::string& root) const {
    return std::string(SLMLAB_BIN) + " ablate " + plan + " --jobs 2 --threads 2 --data " + data + " --runs " + root +
           " --ledger " + root + "/ledger.sqlite";
  }
};

const Fixture& fx() {
  static Fixture f;
  return f;
}

}  // namespace

TEST(Ablate, RunsThePlanIntoTheLedgerAndSkipsFinishedRuns) {
  const auto& f = fx();
  const std::string root = f.t / "a";
  auto r = slm::test::run(f.cmd(root));
  ASSERT_EQ(r.status, 0) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  auto runs = l.runs("noise");
  ASSERT_EQ(runs.size(), 3u);
  for (auto& x : runs) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
    EXPECT_TRUE(x.has_summary);
    EXPECT_GT(x.best_val_bpb, 0);
    EXPECT_GE(x.best_step, 0);
    EXPECT_EQ(x.attempts, 1);
    EXPECT_EQ(l.evals(x.run_id).size(), 5u);  // steps 0, 10, 20, 30, 40
    EXPECT_FALSE(x.git_commit.empty());
  }
  // Replicas share one substrate id (the seed is a replica label) and differ in their numbers.
  EXPECT_EQ(runs[0].substrate_id, runs[1].substrate_id);
  EXPECT_NE(runs[0].best_val_bpb, runs[1].best_val_bpb);
  auto again = slm::test::run(f.cmd(root));
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_NE(again.out.find("3 finished, 0 to run"), std::string::npos) << again.out;
  for (auto& x : l.runs("noise")) EXPECT_EQ(x.attempts, 1) << x.run_id;
}

// A finished run is the experiment's only while the plan still resolves the experiment to the modules
// the run trained with; an edit in place is refused before anything runs, a new id runs.
TEST(Ablate, FinishedRunWithOtherModulesThanThePlanIsRefused) {
  const auto& f = fx();
  const std::string dir = f.t / "edit", root = dir + "/runs";
  slm::test::write(dir + "/tiny.toml",
                   "name = \"edit-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                   "total_batch = 256\ndevice_batch = 8\nsteps = 6\neval_every = 3\neval_tokens = 256\n"
                   "ckpt_every = 3\nprecision = \"fp32\"\n");
  auto plan = [&](const std::string& id, int depth) {
    slm::test::write(dir + "/plan.toml", "name = \"edit\"\nsubstrate = \"tiny.toml\"\n[[phases]]\nname = \"p\"\n"
                                         "[[phases.experiments]]\nid = \"" + id + "\"\nseeds = [1]\n"
                                         "modules = [{ name = \"mtp\", depth = " + std::to_string(depth) + " }]\n");
  };
  const std::string cmd = std::string(SLMLAB_BIN) + " ablate " + dir + "/plan.toml --jobs 1 --threads 2 --data " +
                          f.data + " --runs " + root + " --ledger " + root + "/ledger.sqlite";
  plan("mtp", 1);
  auto r = slm::test::run(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  plan("mtp", 2);  // edited in place
  r = slm::test::run(cmd);
  EXPECT_NE(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("ablate: edit/mtp/s1 finished with modules [mtp.depth=1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("give the changed experiment a new id"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << "one line, nothing started: " << r.out;
  plan("mtp_d2", 2);  // the changed definition under a new id runs; the old run stays
  r = slm::test::run(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  auto runs = l.runs("edit");
  ASSERT_EQ(runs.size(), 2u);
  for (auto& x : runs) EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
}

TEST(Ablate, KilledRunnerRestartsWithoutLossOrDuplicates) {
  const auto& f = fx();
  const std::string ref = f.t / "a";
  if (!fs::exists(ref + "/ledger.sqlite")) {
    ASSERT_EQ(slm::test::run(f.cmd(ref)).status, 0);
  }
  const std::string root = f.t / "k";
  pid_t pid = slm::test::start(f.cmd(root));
  // Kill the runner once the first wave is past a checkpoint.
  const std::string m1 = root + "/noise/baseline/s1/metrics.jsonl";
  for (int i = 0; i < 6000; ++i) {
    if (fs::exists(m1) && slm::test::count_lines(fs::read_file(m1)) >= 9) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  slm::test::stop(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the children die with the runner
  auto r = slm::test::run(f.cmd(root));
  ASSERT_EQ(r.status, 0) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  auto runs = l.runs("noise");
  ASSERT_EQ(runs.size(), 3u);
  for (auto& x : runs) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
    EXPECT_EQ(slm::test::curve(x.run_dir), slm::test::curve(ref + "/noise/baseline/s" + std::to_string(x.seed))) << x.run_id;
  }
}

TEST(Ablate, SigtermCheckpointsTheRunsAndTheyResumeWithoutAFailedAttempt) {
  const auto& f = fx();
  const std::string ref = f.t / "a";
  if (!fs::exists(ref + "/ledger.sqlite")) {
    ASSERT_EQ(slm::test::run(f.cmd(ref)).status, 0);
  }
  const std::string root = f.t / "term";
  pid_t pid = slm::test::start(f.cmd(root));
  const std::string m1 = root + "/noise/baseline/s1/metrics.jsonl";
  for (int i = 0; i < 6000; ++i) {
    if (fs::exists(m1) && slm::test::count_lines(fs::read_file(m1)) >= 9) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const int st = slm::test::stop(pid, SIGTERM);  // ablate passes it on; the trainers checkpoint the step in flight and stop
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 143);
  {
    engine::Ledger l(root + "/ledger.sqlite");
    auto s1 = l.get("noise/baseline/s1");
    ASSERT_TRUE(s1);
    if (s1->status != engine::Status::Done) {  // it may have finished before the signal
      EXPECT_EQ(s1->status, engine::Status::Queued) << s1->reason;
      EXPECT_NE(s1->reason.find("preempted"), std::string::npos) << s1->reason;
      EXPECT_EQ(s1->attempts, 0);
      auto summary = json::parse(fs::read_file(root + "/noise/baseline/s1/summary.json"));
      EXPECT_EQ(summary.value("status", ""), "preempted");
    }
    for (auto& x : l.runs("noise")) EXPECT_NE(x.status, engine::Status::Running) << x.run_id;  // none left "running"
  }
  auto r = slm::test::run(f.cmd(root));
  ASSERT_EQ(r.status, 0) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  for (auto& x : l.runs("noise")) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
    EXPECT_EQ(x.attempts, 1) << x.run_id;
    EXPECT_EQ(slm::test::curve(x.run_dir), slm::test::curve(ref + "/noise/baseline/s" + std::to_string(x.seed))) << x.run_id;
  }
  EXPECT_NE(fs::read_file(root + "/noise/baseline/s1/train.log").find("resumed from"), std::string::npos);
}

// SIGTERM to ablate at the instant its trainers start (before they can install their handlers, as
// happened under load in CI: a trainer still loading died of the signal and was counted a failed
// attempt): no run counts an attempt for it, and the next ablate finishes every run once.
TEST(Ablate, SigtermWhileTrainersStartCountsNoAttempt) {
  const auto& f = fx();
  const std::string root = f.t / "term_early";
  pid_t pid = slm::test::start(f.cmd(root));
  const std::string d1 = root + "/noise/baseline/s1";
  for (int i = 0; i < 6000 && !fs::exists(d1); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const int st = slm::test::stop(pid, SIGTERM);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 143);
  auto r = slm::test::run(f.cmd(root));
  ASSERT_EQ(r.status, 0) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  for (auto& x : l.runs("noise")) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
    EXPECT_EQ(x.attempts, 1) << x.run_id << ": " << x.reason;
  }
}

// A second ablate on a ledger in use refuses up front, in one line, touching nothing; the first
// finishes every run (before: the second started trainers into the first's folders, recorded them
// failed "in use by another slmlab train" and exited 1).
TEST(Ablate, ASecondAblateOnTheSameLedgerRefusesUpFront) {
  const auto& f = fx();
  const std::string root = f.t / "two";
  pid_t first = slm::test::start(f.cmd(root));
  const std::string m1 = root + "/noise/baseline/s1/metrics.jsonl";
  for (int i = 0; i < 6000 && !fs::exists(m1); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(fs::exists(m1));
  auto second = slm::test::run(f.cmd(root));
  EXPECT_EQ(second.status, 2) << second.out;
  EXPECT_NE(second.out.find("is in use by another slmlab ablate (pid " + std::to_string(first) + ")"), std::string::npos)
      << second.out;
  EXPECT_NE(second.out.find("wait for it or pass --ledger"), std::string::npos) << second.out;
  EXPECT_EQ(slm::test::count_lines(second.out), 1) << second.out;
  int st = 0;
  ::waitpid(first, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0);
  engine::Ledger l(root + "/ledger.sqlite");
  for (auto& x : l.runs("noise")) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id << ": " << x.reason;
    EXPECT_EQ(x.attempts, 1) << x.run_id;
  }
  // The lock dies with its holder: the next ablate runs (nothing left to do).
  auto again = slm::test::run(f.cmd(root));
  EXPECT_EQ(again.status, 0) << again.out;
}

// A run folder holding garbage (a config.json and a summary.json that are not JSON): the run is
// recorded failed with the reason, never left "running", and ablate exits 1, not 3.
TEST(Ablate, AnUnreadableSummaryFailsTheRunWithItsReason) {
  const auto& f = fx();
  const std::string dir = f.t / "garbage", root = dir + "/runs";
  slm::test::write(dir + "/plan.toml", "name = \"garbage\"\nsubstrate = \"" + std::string(f.t / "tiny.toml") +
                                           "\"\n[rule]\nmax_retries = 0\n[[phases]]\nname = \"p\"\n"
                                           "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n");
  const std::string run = root + "/garbage/baseline/s1";
  slm::test::write(run + "/config.json", "{not json");
  slm::test::write(run + "/summary.json", "{\"status\": \"done\", \"best_val_bpb\": ");
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " ablate " + dir + "/plan.toml --jobs 1 --threads 2 --data " + f.data +
                          " --runs " + root + " --ledger " + root + "/ledger.sqlite");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_EQ(r.out.find("internal error"), std::string::npos) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  auto row = l.get("garbage/baseline/s1");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->status, engine::Status::Failed) << row->reason;
  EXPECT_NE(row->reason.find("summary.json is not JSON"), std::string::npos) << row->reason;
  EXPECT_FALSE(row->code_id.empty());
}

// --decide end to end (issue 21 §3): one seed per arm leaves no variance to judge by, so the row is
// inconclusive and more seeds could decide it; --decide gives it and its base one more seed each
// (ordinary ledger runs), looks again, and stops at --max-seeds.
TEST(Ablate, DecideAddsASeedToAnInconclusiveRow) {
  const auto& f = fx();
  const std::string root = f.t / "decide";
  fs::mkdirs(root);
  slm::test::write(root + "/tiny.toml",
                   "name = \"decide-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                   "total_batch = 256\ndevice_batch = 8\nsteps = 10\neval_every = 5\neval_tokens = 512\n"
                   "ckpt_every = 5\nprecision = \"auto\"\n");
  const std::string plan = root + "/plan.toml";
  slm::test::write(plan,
                   "name = \"decide\"\nsubstrate = \"tiny.toml\"\n[[phases]]\nname = \"p\"\n"
                   "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n"
                   "[[phases.experiments]]\nid = \"again\"\nbase = \"baseline\"\nseeds = [1]\n");
  const std::string cmd = std::string(SLMLAB_BIN) + " ablate " + plan + " --jobs 2 --threads 2 --data " + f.data +
                          " --runs " + root + " --ledger " + root + "/ledger.sqlite --decide --max-seeds 2";
  auto r = slm::test::run(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("decide: inconclusive and within reach: one more seed for baseline s2, again s2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("at 2 seeds after 1 added wave"), std::string::npos) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  auto runs = l.runs("decide");
  ASSERT_EQ(runs.size(), 4u);
  for (auto& x : runs) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id;
    EXPECT_EQ(l.evals(x.run_id).size(), 3u) << x.run_id;  // steps 0, 5, 10: an ordinary run
  }
  EXPECT_EQ(runs[1].run_id, "decide/again/s2");
  // Costs (issue 21 §2) reach the ledger: a dense model uses all its parameters, every step the same
  // FLOPs per token, so the trainer's per-step sum is the last step's figure x tokens (10 additions).
  for (auto& x : runs) {
    EXPECT_GT(x.n_params, 0) << x.run_id;
    EXPECT_EQ(x.active_params, x.n_params) << x.run_id;
    EXPECT_EQ(x.steps, 10);
    EXPECT_DOUBLE_EQ(x.tokens, 2560);
    EXPECT_GT(x.wall_seconds, 0);
    EXPECT_NEAR(x.train_flops, x.flops_per_token * x.tokens, 16 * std::numeric_limits<double>::epsilon() * x.train_flops);
  }
  // The budget is in the ledger's rule (reports test at alpha / 2 looks), and a plain ablate keeps it.
  auto again = slm::test::run(std::string(SLMLAB_BIN) + " ablate " + plan + " --jobs 2 --threads 2 --data " + f.data +
                              " --runs " + root + " --ledger " + root + "/ledger.sqlite");
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_NE(again.out.find("4 runs, 4 finished, 0 to run"), std::string::npos) << again.out;
  EXPECT_NE(l.plan_spec("decide")->find("\"max_seeds\":2"), std::string::npos);
  auto rep = slm::test::run(std::string(SLMLAB_BIN) + " report --plan decide --ledger " + root + "/ledger.sqlite");
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_NE(rep.out.find("/ 2 looks"), std::string::npos) << rep.out;
}

// A parameter-matched control end to end (issue 21 §2): ablate derives the control arm before
// anything runs, trains it on its derived substrate (written beside its runs), the ledger keeps it
// under its own substrate id, and the report shows it as its own labeled group and the experiment's
// delta against it in the row.
TEST(Ablate, AParameterMatchedControlRunsOnItsDerivedSubstrate) {
  const auto& f = fx();
  const std::string root = f.t / "control";
  fs::mkdirs(root);
  slm::test::write(root + "/tiny.toml",
                   "name = \"ctl-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                   "total_batch = 256\ndevice_batch = 8\nsteps = 6\neval_every = 3\neval_tokens = 512\n"
                   "ckpt_every = 3\nprecision = \"auto\"\n");
  const std::string plan = root + "/plan.toml";
  slm::test::write(plan,
                   "name = \"ctl\"\nsubstrate = \"tiny.toml\"\n[rule]\nparam_control = \"deepen\"\nparam_tolerance = 0.5\n"
                   "[[phases]]\nname = \"p\"\n[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n"
                   "[[phases.experiments]]\nid = \"mem\"\nbase = \"baseline\"\nseeds = [1]\n"
                   "modules = [{ name = \"engram\", layers = [0, 1], table_size = 2039 }]\n");
  const std::string cmd = std::string(SLMLAB_BIN) + " ablate " + plan + " --jobs 2 --threads 2 --data " + f.data +
                          " --runs " + root + " --ledger " + root + "/ledger.sqlite";
  auto r = slm::test::run(cmd);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("[ablate] control mem.deepen: parameter-matched control of mem: its base deepened to"),
            std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(root + "/ctl/mem.deepen/substrate.toml"));
  engine::Ledger l(root + "/ledger.sqlite");
  auto base = l.get("ctl/baseline/s1"), mem = l.get("ctl/mem/s1"), ctl = l.get("ctl/mem.deepen/s1");
  ASSERT_TRUE(base && mem && ctl);
  for (auto* x : {&*base, &*mem, &*ctl}) EXPECT_EQ(x->status, engine::Status::Done) << x->run_id;
  EXPECT_EQ(base->substrate_id, mem->substrate_id);
  EXPECT_NE(ctl->substrate_id, base->substrate_id);  // its own group, never the base's
  EXPECT_GT(ctl->n_params, base->n_params);
  EXPECT_LE(std::fabs(double(ctl->n_params - mem->n_params)) / mem->n_params, 0.5);  // the plan's tolerance
  auto rep = slm::test::run(std::string(SLMLAB_BIN) + " report --plan ctl --ledger " + root + "/ledger.sqlite");
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_NE(rep.out.find("parameter-matched control arms on a derived substrate"), std::string::npos) << rep.out;
  EXPECT_NE(rep.out.find("vs control mem.deepen"), std::string::npos) << rep.out;
  // The same plan again: the same derived substrate, nothing to run.
  auto again = slm::test::run(cmd);
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_NE(again.out.find("3 runs, 3 finished, 0 to run"), std::string::npos) << again.out;
}
