// ablate --backend slurm against a real controller and node (scripts/slurm-local.sh start; CI starts
// one): a small plan runs to the end while one of its jobs is requeued mid-run; the job resumes
// from its checkpoint, nothing is lost, nothing counts as a failed attempt, and the requeued run's
// curve equals the same run under the local backend bitwise. Skipped when no controller answers,
// unless SLMLAB_REQUIRE_SLURM=1 (CI), where that is a failure.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "engine/ledger.h"
#include "test_util.h"

using namespace slm;
using json = nlohmann::json;

namespace {

bool controller_answers() { return slm::test::run("timeout 20 sinfo --noheader --format %t").status == 0; }

// Skips (developer machines) or, under SLMLAB_REQUIRE_SLURM=1 (CI), fails without a controller.
#define SKIP_WITHOUT_CONTROLLER()                                                                          \
  if (!controller_answers()) {                                                                             \
    const char* req = std::getenv("SLMLAB_REQUIRE_SLURM");                                                 \
    if (req && std::string(req) == "1") FAIL() << "SLMLAB_REQUIRE_SLURM=1 but no Slurm controller answers"; \
    GTEST_SKIP() << "no Slurm controller answers (sinfo); start one with scripts/slurm-local.sh start";    \
  }

std::string plan_text(const std::string& experiments) {
  return "name = \"sl\"\nsubstrate = \"tiny.toml\"\n[[phases]]\nname = \"p\"\n" + experiments;
}

// A data set, a substrate whose runs take a few seconds with a checkpoint every 5 steps, and a
// plan of 2 experiments x 2 seeds (twin: the same configuration as its base).
struct Fixture {
  slm::test::TempDir t;
  std::string data, plan;
  Fixture() {
    data = slm::test::small_dataset(t.path, 50, 5, 16, 400, 8192);
    slm::test::write(t / "tiny.toml",
                     "name = \"slurm-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                     "total_batch = 256\ndevice_batch = 8\nsteps = 120\neval_every = 20\neval_tokens = 512\n"
                     "ckpt_every = 5\nprecision = \"auto\"\n");
    plan = t / "plan.toml";
    slm::test::write(plan, plan_text("[[phases.experiments]]\nid = \"baseline\"\nseeds = [1, 2]\n"
                                     "[[phases.experiments]]\nid = \"twin\"\nbase = \"baseline\"\nseeds = [1, 2]\n"));
  }
  std::string cmd(const std::string& plan_file, const std::string& dir, const std::string& backend) const {
    return std::string(SLMLAB_BIN) + " ablate " + plan_file + " --jobs 2 --threads 2 --data " + data + " --runs " + dir +
           " --ledger " + dir + "/ledger.sqlite --backend " + backend + " --poll 0.5";
  }
};

const Fixture& fx() {
  static Fixture f;
  return f;
}

// Starts a command in the background, its output to `out`.
pid_t spawn(const std::string& cmd, const std::string& out) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >" + out + " 2>&1").c_str(), (char*)nullptr);
    ::_exit(127);
  }
  return pid;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

}  // namespace

TEST(Slurm, PlanRunsToTheEndThroughARequeue) {
  SKIP_WITHOUT_CONTROLLER();
  const auto& f = fx();
  const auto& t = f.t;
  const std::string plan = f.plan;
  const std::string root = t / "slurm";
  auto ablate = [&](const std::string& p, const std::string& dir, const std::string& be) { return f.cmd(p, dir, be); };

  const auto t0 = std::chrono::steady_clock::now();
  const std::string out = t / "ablate.out";
  pid_t pid = spawn(ablate(plan, root, "slurm"), out);
  // Requeue baseline/s1's job once its metrics show a few steps past a checkpoint.
  const std::string run = root + "/sl/baseline/s1";
  bool requeued = false;
  for (int i = 0; i < 1200 && !requeued; ++i) {
    if (fs::exists(run + "/slurm.job") && fs::exists(run + "/metrics.jsonl") &&
        slm::test::count_lines(fs::read_file(run + "/metrics.jsonl")) >= 12) {
      const std::string id = fs::read_file(run + "/slurm.job");
      auto r = slm::test::run("scontrol requeue " + id);
      ASSERT_EQ(r.status, 0) << "scontrol requeue " << id << ": " << r.out;
      requeued = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  const double slurm_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string log = fs::exists(out) ? fs::read_file(out) : "";
  ASSERT_TRUE(requeued) << "baseline/s1 never showed 12 metric lines\n" << log;
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << log;
  EXPECT_NE(log.find("sl/baseline/s1: Slurm job"), std::string::npos) << log;
  EXPECT_NE(log.find("requeued; it resumes from its checkpoint"), std::string::npos) << log;

  engine::Ledger l(root + "/ledger.sqlite");
  auto runs = l.runs("sl");
  ASSERT_EQ(runs.size(), 4u);
  for (auto& x : runs) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id << ": " << x.reason;
    EXPECT_EQ(x.attempts, 1) << x.run_id;  // the requeue is not a failed attempt
    EXPECT_TRUE(x.has_summary) << x.run_id;
    EXPECT_EQ(l.evals(x.run_id).size(), 7u) << x.run_id;  // steps 0, 20, ..., 120
  }
  const std::string train_log = fs::read_file(run + "/train.log");
  EXPECT_NE(train_log.find("resumed from"), std::string::npos) << train_log;
  EXPECT_NE(train_log.find("restart 1"), std::string::npos) << train_log;

  // The same run under the local backend: same command, so the same curve, bitwise.
  const std::string local_plan = t / "local.toml";
  slm::test::write(local_plan, plan_text("[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n"));
  const auto t1 = std::chrono::steady_clock::now();
  auto lr = slm::test::run(ablate(local_plan, t / "local", "local"));
  const double local_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  ASSERT_EQ(lr.status, 0) << lr.out;
  auto want = slm::test::curve(t / "local/sl/baseline/s1");
  EXPECT_EQ(want.size(), 127u);  // 120 steps + 7 evals
  EXPECT_EQ(slm::test::curve(run), want);

  // A complete scorecard: every experiment with its two counted seeds, nothing pending.
  auto rep = slm::test::run(std::string(SLMLAB_BIN) + " report --ledger " + root + "/ledger.sqlite --plan sl");
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_EQ(rep.out.find("pending"), std::string::npos) << rep.out;
  EXPECT_EQ(rep.out.find("running"), std::string::npos) << rep.out;
  for (const char* e : {"baseline", "twin"}) EXPECT_NE(rep.out.find(e), std::string::npos) << rep.out;
  std::printf("[slurm test] plan of 4 runs with one requeue: %.1f s under Slurm; one run alone, local backend: %.1f s\n",
              slurm_s, local_s);
}

TEST(Slurm, StoppedAblateReattachesInsteadOfSubmittingTwice) {
  SKIP_WITHOUT_CONTROLLER();
  const auto& f = fx();
  const std::string root = f.t / "reattach";
  const std::string out1 = f.t / "reattach1.out";
  pid_t pid = spawn(f.cmd(f.plan, root, "slurm"), out1);
  // Stop ablate while the first wave's jobs run: they stay queued on Slurm.
  const std::string m1 = root + "/sl/baseline/s1/metrics.jsonl";
  for (int i = 0; i < 1200; ++i) {
    if (fs::exists(m1) && slm::test::count_lines(fs::read_file(m1)) >= 6) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid, SIGTERM);
  int st = 0;
  ::waitpid(pid, &st, 0);
  const std::string log1 = fs::read_file(out1);
  ASSERT_TRUE(WIFEXITED(st)) << log1;
  EXPECT_EQ(WEXITSTATUS(st), 143) << log1;
  EXPECT_NE(log1.find("Slurm jobs left running"), std::string::npos) << log1;
  ASSERT_TRUE(fs::exists(root + "/sl/baseline/s1/slurm.job")) << log1;
  const std::string job1 = fs::read_file(root + "/sl/baseline/s1/slurm.job");

  auto r = slm::test::run(f.cmd(f.plan, root, "slurm"));
  ASSERT_EQ(r.status, 0) << r.out;
  // baseline/s1 and s2 were taken over (still queued, or ended while ablate was away), not resubmitted.
  EXPECT_EQ(count(log1, "submitted as") + count(r.out, "submitted as"), 4u) << log1 << r.out;
  EXPECT_EQ(count(r.out, "re-attached to") + count(r.out, "ended while ablate was away"), 2u) << r.out;
  EXPECT_EQ(count(fs::read_file(root + "/sl/baseline/s1/train.log"), "[slurm] job "), 1u);  // one job, one start
  EXPECT_NE(r.out.find("Slurm job " + job1.substr(0, job1.find('\n'))), std::string::npos) << r.out;
  engine::Ledger l(root + "/ledger.sqlite");
  for (auto& x : l.runs("sl")) {
    EXPECT_EQ(x.status, engine::Status::Done) << x.run_id << ": " << x.reason;
    EXPECT_EQ(x.attempts, 1) << x.run_id;
  }
}
