// The Slurm backend without a cluster: the batch script records the trainer's exit code (SIGTERM
// included) atomically, sbatch gets the arguments it needs, shell quoting survives any string, and
// ablate refuses an unknown backend, missing Slurm tools and a silent controller in one line,
// before the ledger is touched.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>

#include "common/fs.h"
#include "engine/slurm.h"
#include "test_util.h"

using namespace slm;

namespace {

engine::Job job_in(const std::string& dir, std::vector<std::string> argv) {
  engine::Job j;
  j.run_id = "p/exp/s1";
  j.dir = dir;
  j.argv = std::move(argv);
  j.threads = 3;
  return j;
}

// Runs the batch script as Slurm would (SLURM_JOB_ID set), optionally sending SIGTERM to its
// process group after `term_after_ms`, as slurmd does on requeue or preemption.
int run_script(const std::string& script, const std::string& job_id, int term_after_ms = -1) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::setenv("SLURM_JOB_ID", job_id.c_str(), 1);
    ::execl("/bin/bash", "bash", script.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  if (term_after_ms >= 0) {
    ::usleep(term_after_ms * 1000);
    ::kill(-pid, SIGTERM);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace

TEST(SlurmScript, RecordsTheTrainersExitCodeWithTheJobId) {
  slm::test::TempDir t;
  const std::string dir = t / "run dir";  // a space: every path is quoted
  fs::mkdirs(dir);
  auto job = job_in(dir, {"/bin/sh", "-c", "echo \"it's me\"; exit 7"});
  const std::string script = fs::join(dir, "slurm.sh");
  slm::test::write(script, engine::slurm::batch_script(job));
  slm::test::write(fs::join(dir, "slurm.exit"), "41 0\n");  // a stale outcome of an earlier job
  EXPECT_EQ(run_script(script, "42"), 7);
  EXPECT_EQ(fs::read_file(fs::join(dir, "slurm.exit")), "42 7\n");
  EXPECT_FALSE(fs::exists(fs::join(dir, "slurm.exit.tmp")));
}

TEST(SlurmScript, WaitsForATrainerStoppedBySigterm) {
  // The trainer's stand-in checkpoints (a file) on SIGTERM and exits 143 as slmlab train does; bash
  // gets the same SIGTERM and must still record the code.
  slm::test::TempDir t;
  const std::string dir = t.path;
  const std::string ckpt = fs::join(dir, "ckpt");
  auto job = job_in(dir, {"/bin/sh", "-c", "trap 'sleep 0.3; touch " + ckpt + "; exit 143' TERM; sleep 30 & wait"});
  const std::string script = fs::join(dir, "slurm.sh");
  slm::test::write(script, engine::slurm::batch_script(job));
  EXPECT_EQ(run_script(script, "7", 300), 143);
  EXPECT_TRUE(fs::exists(ckpt));
  EXPECT_EQ(fs::read_file(fs::join(dir, "slurm.exit")), "7 143\n");
}

TEST(SlurmScript, SbatchArguments) {
  engine::slurm::Options o;
  o.extra = {"--partition=cpu", "--time=1:00:00"};
  auto job = job_in("/shared/runs/p/exp/s1", {"/opt/slmlab", "train"});
  auto a = engine::slurm::sbatch_args(job, "/shared/runs/p/exp/s1/slurm.sh", o);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a.front(), "sbatch");
  EXPECT_EQ(a.back(), "/shared/runs/p/exp/s1/slurm.sh");
  for (const char* want : {"--parsable", "--requeue", "--cpus-per-task=3", "--output=/shared/runs/p/exp/s1/train.log",
                           "--open-mode=append", "--job-name=slm:p/exp/s1", "--partition=cpu", "--time=1:00:00"})
    EXPECT_NE(std::find(a.begin(), a.end(), want), a.end()) << want;
  // The user's arguments come after ours, so theirs win where both set something.
  EXPECT_GT(std::find(a.begin(), a.end(), "--partition=cpu") - a.begin(),
            std::find(a.begin(), a.end(), "--requeue") - a.begin());
}

TEST(SlurmScript, ShellQuotingRoundTrips) {
  for (std::string s : {"plain", "two words", "it's", "a\"b", "$HOME", "`x`", "back\\slash", "", "--set=seed=1"}) {
    auto r = slm::test::run("printf '%s' " + engine::slurm::shell_quote(s));
    EXPECT_EQ(r.status, 0);
    EXPECT_EQ(r.out, s) << engine::slurm::shell_quote(s);
  }
}

namespace {

struct Refusal {
  slm::test::TempDir t;
  std::string plan;
  Refusal() {
    slm::test::write(t / "tiny.toml",
                     "name = \"tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\ntotal_batch = 256\n"
                     "device_batch = 8\nsteps = 4\neval_every = 2\neval_tokens = 512\n");
    plan = t / "plan.toml";
    slm::test::write(plan, "name = \"r\"\nsubstrate = \"tiny.toml\"\n[[phases]]\nname = \"p\"\n"
                           "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1]\n");
  }
  slm::test::RunResult ablate(const std::string& env, const std::string& args) const {
    return slm::test::run(env + " " + SLMLAB_BIN + " ablate " + plan + " --ledger " + t.path + "/ledger.sqlite --runs " +
                          t.path + "/runs " + args);
  }
};

}  // namespace

TEST(SlurmScript, RefusesAnUnknownBackend) {
  Refusal f;
  auto r = f.ablate("", "--backend slrum");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--backend 'slrum' is not a backend"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_FALSE(fs::exists(f.t / "ledger.sqlite"));
}

TEST(SlurmScript, RefusesWithoutSlurmTools) {
  Refusal f;
  const std::string empty = f.t / "empty-bin";
  fs::mkdirs(empty);
  auto r = f.ablate("env PATH=" + empty, "--backend slurm");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("'sbatch' is not on PATH; install slurm-wlm"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_FALSE(fs::exists(f.t / "ledger.sqlite"));
  EXPECT_FALSE(fs::exists(f.t / "runs"));
}

TEST(SlurmScript, RefusesWhenTheControllerDoesNotAnswer) {
  // Stand-ins for the client tools: sinfo fails as it does when slurmctld is down.
  Refusal f;
  const std::string bin = f.t / "fake-bin";
  for (const char* p : {"sbatch", "squeue"}) slm::test::write(bin + "/" + p, "#!/bin/sh\nexit 0\n");
  slm::test::write(bin + "/sinfo",
                   "#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2\n"
                   "exit 1\n");
  for (const char* p : {"sbatch", "squeue", "sinfo"}) ::chmod((bin + "/" + p).c_str(), 0755);
  auto r = f.ablate("env PATH=" + bin + ":/usr/bin:/bin", "--backend slurm");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("the Slurm controller does not answer (sinfo: slurm_load_partitions: Unable to contact"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("scripts/slurm-local.sh start"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_FALSE(fs::exists(f.t / "ledger.sqlite"));
}
