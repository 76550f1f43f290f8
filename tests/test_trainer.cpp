// The trainer end to end, through the binary: a run that learns, kill -9 and resume reproducing the
// uninterrupted loss curve bitwise, the safetensors export read back by an independent reader,
// INVALID on a non-finite loss, and bad input refused before any step.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "data/dataset.h"
#include "test_util.h"
#include "train/safetensors.h"

using namespace slm;
using json = nlohmann::json;

namespace {

struct Fixture {
  slm::test::TempDir t;
  std::string data, substrate;
  Fixture() {
    data = slm::test::small_dataset(t.path, 60, 11, 20, 512, 8192);
    substrate = t / "tiny.toml";
    slm::test::write(substrate,
                     "name = \"test-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                     "total_batch = 256\ndevice_batch = 4\nsteps = 30\neval_every = 10\neval_tokens = 512\n"
                     "ckpt_every = 5\nthreads = 1\nprecision = \"auto\"\nlr_matrix = 0.05\nlr_embed = 0.5\n"
                     "lr_head = 0.02\nwarmdown_frac = 0.3\n");
  }
  std::string train_cmd(const std::string& out, const std::string& extra = "") const {
    return std::string(SLMLAB_BIN) + " train --quiet --data " + data + " --substrate " + substrate + " --out " + out +
           " " + extra;
  }
};

const Fixture& fx() {
  static Fixture f;
  return f;
}

int64_t last_step(const std::string& run) {
  int64_t s = 0;
  if (!fs::exists(run + "/metrics.jsonl")) return 0;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    try {
      s = std::max<int64_t>(s, json::parse(line).value("step", 0));
    } catch (...) {
    }
  }
  return s;
}

}  // namespace

TEST(Trainer, RunLearnsAndLeavesEverything) {
  const auto& f = fx();
  std::string run = f.t / "run";
  auto r = slm::test::run(f.train_cmd(run));
  ASSERT_EQ(r.status, 0) << r.out;
  auto s = json::parse(fs::read_file(run + "/summary.json"));
  EXPECT_EQ(s["status"], "done");
  EXPECT_EQ(s["step"], 30);
  EXPECT_EQ(s["tokens"], 30 * 256);
  EXPECT_GT(s["tokens_per_second"].get<double>(), 0);
  EXPECT_GT(s["peak_rss_bytes"].get<double>(), 0);
  auto recs = slm::test::metrics(run);
  std::vector<double> vals;
  for (auto& x : recs)
    if (x.contains("val_bpb")) vals.push_back(x["val_bpb"]);
  ASSERT_EQ(vals.size(), 4u);  // steps 0, 10, 20, 30
  EXPECT_LT(vals.back(), vals.front() * 0.8) << "val_bpb should fall";
  EXPECT_DOUBLE_EQ(s["best_val_bpb"].get<double>(), *std::min_element(vals.begin(), vals.end()));
  EXPECT_DOUBLE_EQ(s["final_val_bpb"].get<double>(), vals.back());
  for (auto& x : recs) {
    if (!x.contains("loss")) continue;
    for (const char* k : {"lr", "grad_norm", "step_ms", "tok_s", "mfu"}) EXPECT_TRUE(x.contains(k)) << k;
  }
  auto cfg = json::parse(fs::read_file(run + "/config.json"));
  EXPECT_EQ(cfg["substrate_id"], s["substrate_id"]);
  EXPECT_EQ(cfg["data"]["fingerprint"], data::DataSet(f.data).fingerprint());
  EXPECT_TRUE(fs::exists(run + "/ckpt_latest.safetensors"));
  EXPECT_TRUE(fs::exists(run + "/ckpt_best.safetensors"));
  // A finished run resumed is a no-op, and an existing run without --resume is refused.
  auto again = slm::test::run(f.train_cmd(run, "--resume"));
  EXPECT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(slm::test::curve(run).size(), 34u);
  auto refused = slm::test::run(f.train_cmd(run));
  EXPECT_EQ(refused.status, 2);
  EXPECT_NE(refused.out.find("--resume"), std::string::npos) << refused.out;
  // `eval bpb` on the best checkpoint reproduces the training eval exactly; a longer context runs
  // with plain RoPE and with YaRN.
  auto ev = slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + run + " --checkpoint best --threads 1");
  ASSERT_EQ(ev.status, 0) << ev.out;
  char want[32];
  std::snprintf(want, sizeof want, "val_bpb %.4f", s["best_val_bpb"].get<double>());
  EXPECT_NE(ev.out.find(want), std::string::npos) << ev.out << " vs " << want;
  auto ev2 = slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + run + " --context 64 --tokens 256 --module yarn --threads 1");
  ASSERT_EQ(ev2.status, 0) << ev2.out;
  EXPECT_NE(ev2.out.find("yarn s=2"), std::string::npos) << ev2.out;
  auto ev3 = slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + run + " --module yarn.scale=0.5 --context 64");
  EXPECT_EQ(ev3.status, 2);
  EXPECT_EQ(slm::test::count_lines(ev3.out), 1) << ev3.out;
  // generate: greedy text is the same with the cache and without; sampling is seeded; FIM prompts run.
  // (The text only: generate's cost line on stderr carries tokens/s, which no two runs share.)
  auto gen = [&](const std::string& extra) {  // in a subshell that drops its stderr
    return slm::test::run("(" + std::string(SLMLAB_BIN) + " generate " + run +
                          " --prompt 'int f(int x) {' --max-tokens 16 --threads 1 " + extra + " 2>/dev/null)");
  };
  auto g1 = gen(""), g2 = gen("--no-cache");
  ASSERT_EQ(g1.status, 0) << g1.out;
  EXPECT_EQ(g1.out, g2.out);
  auto s1 = gen("--temperature 1 --top-k 50 --seed 4"), s2 = gen("--temperature 1 --top-k 50 --seed 4");
  EXPECT_EQ(s1.out, s2.out);
  EXPECT_EQ(gen("--suffix '}'").status, 0);
  auto too_long = slm::test::run(std::string(SLMLAB_BIN) + " generate " + run + " --prompt 'int f(int x) {' --max-tokens 1000");
  EXPECT_EQ(too_long.status, 2);
  EXPECT_NE(too_long.out.find("context"), std::string::npos) << too_long.out;
}

TEST(Trainer, KillNineAndResumeReproduceTheCurveBitwise) {
  const auto& f = fx();
  std::string ref = f.t / "ref";
  ASSERT_EQ(slm::test::run(f.train_cmd(ref)).status, 0);
  const auto expect = slm::test::curve(ref);
  // Kill at a few different instants, then resume until done.
  for (int64_t kill_at : {3, 12, 21}) {
    std::string run = f.t / ("killed" + std::to_string(kill_at));
    pid_t pid = slm::test::start(f.train_cmd(run));
    while (last_step(run) < kill_at) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    slm::test::stop(pid, SIGKILL);
    auto r = slm::test::run(f.train_cmd(run, "--resume"));
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(slm::test::curve(run), expect) << "killed at step " << kill_at;
  }
}

// SIGTERM (Slurm's preemption or requeue) between checkpoints: the trainer finishes its step, writes
// the latest checkpoint there, says "preempted" and exits 143; the same command resumes bitwise.
TEST(Trainer, SigtermCheckpointsTheStepAndResumesBitwise) {
  const auto& f = fx();
  std::string ref = f.t / "ref_term";
  ASSERT_EQ(slm::test::run(f.train_cmd(ref)).status, 0);
  std::string run = f.t / "termed";
  pid_t pid = slm::test::start(f.train_cmd(run));
  while (last_step(run) < 7) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const int st = slm::test::stop(pid, SIGTERM);
  ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st) << " instead of stopping";
  EXPECT_EQ(WEXITSTATUS(st), 143);
  auto summary = json::parse(slm::fs::read_file(run + "/summary.json"));
  EXPECT_EQ(summary["status"], "preempted") << summary.dump();
  const int64_t stopped = last_step(run);
  EXPECT_LT(stopped, 30);
  EXPECT_EQ(summary["step"].get<int64_t>(), stopped) << "the checkpoint is not the last step written";
  auto r = slm::test::run(f.train_cmd(run, "--resume"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::curve(run), slm::test::curve(ref));
}

TEST(Trainer, ExportReadsBackWithAnIndependentReader) {
  const auto& f = fx();
  std::string run = f.t / "exp";
  ASSERT_EQ(slm::test::run(f.train_cmd(run, "--set steps=5")).status, 0);
  auto e = slm::test::run(std::string(SLMLAB_BIN) + " export " + run + " --format safetensors --out " + run + "/w.safetensors");
  ASSERT_EQ(e.status, 0) << e.out;
  auto py = slm::test::run("/usr/bin/python3 " + std::string(SLMLAB_SOURCE_DIR) + "/tests/read_safetensors.py " + run +
                           "/w.safetensors 2>/dev/null");
  ASSERT_EQ(py.status, 0) << py.out;
  auto j = json::parse(py.out);
  auto ck = st::read(run + "/ckpt_latest.safetensors");
  size_t n_model = 0;
  for (auto& [name, t] : ck.tensors) {
    if (name.rfind("model.", 0) != 0) continue;
    ++n_model;
    const auto& p = j["tensors"][name.substr(6)];
    ASSERT_FALSE(p.is_null()) << name;
    EXPECT_EQ(p["dtype"], "F32");
    EXPECT_EQ(p["shape"].get<std::vector<int64_t>>(), t.sizes().vec());
    auto vals = p["values"].get<std::vector<double>>();
    auto flat = t.reshape({-1});
    ASSERT_EQ(vals.size(), static_cast<size_t>(flat.numel()));
    for (int64_t i = 0; i < flat.numel(); i += std::max<int64_t>(1, flat.numel() / 97))
      EXPECT_EQ(static_cast<float>(vals[i]), flat[i].item<float>()) << name << "[" << i << "]";
  }
  EXPECT_EQ(j["tensors"].size(), n_model);  // weights only, no optimizer state
  EXPECT_GT(n_model, 5u);
}

TEST(Trainer, NonFiniteLossMarksTheRunInvalid) {
  const auto& f = fx();
  std::string run = f.t / "nan";
  ASSERT_EQ(slm::test::run(f.train_cmd(run, "--set steps=20")).status, 0);
  // Turn the latest checkpoint into a diverged one at step 5: NaN head weights.
  auto ck = st::read(run + "/ckpt_latest.safetensors");
  for (auto& [name, t] : ck.tensors)
    if (name == "model.lm_head.weight") t.fill_(std::numeric_limits<float>::quiet_NaN());
  auto state = json::parse(ck.metadata["state"]);
  state["step"] = 5;
  ck.metadata["state"] = state.dump();
  st::write(run + "/ckpt_latest.safetensors", ck);
  const std::string poisoned = fs::read_file(run + "/ckpt_latest.safetensors");
  auto r = slm::test::run(f.train_cmd(run, "--set steps=20 --resume"));
  EXPECT_EQ(r.status, 3) << r.out;
  auto s = json::parse(fs::read_file(run + "/summary.json"));
  EXPECT_EQ(s["status"], "INVALID");
  EXPECT_NE(s["reason"].get<std::string>().find("non-finite loss at step 6"), std::string::npos) << s.dump();
  EXPECT_EQ(fs::read_file(run + "/ckpt_latest.safetensors"), poisoned) << "the checkpoint must stay as it was";
  auto recs = slm::test::metrics(run);
  ASSERT_FALSE(recs.empty());
  EXPECT_TRUE(recs.back().contains("invalid"));
  for (auto& x : recs) EXPECT_LE(x["step"].get<int64_t>(), 6);
}

TEST(Trainer, BadInputIsRefusedBeforeAnyStep) {
  const auto& f = fx();
  auto expect = [&](const std::string& extra, const std::string& needle) {
    std::string run = f.t / "bad";
    fs::remove_all(run);
    auto r = slm::test::run(f.train_cmd(run, extra));
    EXPECT_EQ(r.status, 2) << extra << ": " << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << extra << ": " << r.out;
    EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
    EXPECT_FALSE(fs::exists(run + "/metrics.jsonl")) << extra;
  };
  expect("--set stesp=3", "did you mean 'steps'?");
  expect("--set steps=three", "expects an integer");
  expect("--set device_batch=3", "not a multiple of device_batch x context");
  expect("--set context=100000000 --set total_batch=400000000 --set device_batch=4", "context");
  expect("--set eval_tokens=100000000", "exceeds the validation split");
  expect("--module flashmem", "unknown module 'flashmem'");
  expect("--module engram.layers=5", "layer 5");                    // beyond depth 2: the guard, before a step
  expect("--set depth=3 --module mamba3.pattern=AAM --module engram.layers=2", "attention layers are 0,1");
  expect("--module yarn", "Tier 3");                                 // inference lane only
  expect("--set vocab=999", "expects vocab 999");
  expect("--set data_fingerprint=0123", "pins data fingerprint");
  expect("--set tp=2", "run tp x dp ranks (--nproc 2)");
  // ~700,000 GiB of weights: refused from the geometry before anything is allocated, on any machine.
  expect("--set depth=64 --set aspect=4096", "the baseline of this geometry needs an estimated");
  expect("--memory-budget nan", "--memory-budget must be a finite number");
  expect("--memory-budget -1", "--memory-budget must be >= 0");
  expect("--memory-budget 1e12", "beyond any machine");
}

// The estimate with the model's exact parameters (a module's included) is checked after the model is
// built and before the optimizer's state or a step allocates: over the budget, one line, no run folder.
TEST(Trainer, ModelOverItsMemoryBudgetIsRefusedBeforeAStep) {
  const auto& f = fx();
  auto estimate = [&](const std::string& extra) {
    auto r = slm::test::run(f.train_cmd(f.t / "mem_dry", "--dry-run " + extra));
    EXPECT_EQ(r.status, 0) << r.out;
    const auto at = r.out.find("memory: estimated ");
    EXPECT_NE(at, std::string::npos) << r.out;
    return at == std::string::npos ? 0.0 : std::stod(r.out.substr(at + 18));
  };
  const double base = estimate(""), moe = estimate("--module moe");
  ASSERT_GT(moe, base * 1.05) << "MoE's experts must add parameters for this test to mean anything";
  const std::string budget = " --memory-budget " + std::to_string((base + moe) / 2);
  const std::string run = f.t / "mem_moe";
  auto r = slm::test::run(f.train_cmd(run, "--module moe" + budget));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("train: this model needs an estimated"), std::string::npos) << r.out;
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_FALSE(fs::exists(run)) << "nothing is written for a refused run";
  EXPECT_EQ(slm::test::run(f.train_cmd(f.t / "mem_dry", "--dry-run" + budget)).status, 0) << "the baseline fits";
}

TEST(Trainer, OneTrainerPerRunFolder) {
  const auto& f = fx();
  std::string run = f.t / "locked";
  pid_t pid = slm::test::start(f.train_cmd(run, "--set steps=200"));
  while (last_step(run) < 1) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto second = slm::test::run(f.train_cmd(run, "--set steps=200 --resume"));
  EXPECT_EQ(second.status, 2) << second.out;
  EXPECT_NE(second.out.find("is in use by another slmlab train (pid " + std::to_string(pid) + ")"), std::string::npos)
      << second.out;
  slm::test::stop(pid, SIGKILL);
  // The lock died with the killed process: the run resumes.
  auto third = slm::test::run(f.train_cmd(run, "--set steps=200 --set eval_every=0 --resume"));
  EXPECT_EQ(third.status, 2) << "a different substrate (eval_every) is refused: " << third.out;
  auto resumed = slm::test::run(f.train_cmd(run, "--set steps=200 --resume"));
  EXPECT_EQ(resumed.status, 0) << resumed.out;
}

TEST(Trainer, ResumeOnAnotherTokenizerIsRefused) {
  const auto& f = fx();
  std::string run = f.t / "tok";
  ASSERT_EQ(slm::test::run(f.train_cmd(run, "--set steps=2")).status, 0);
  data::BuildOptions o;
  o.src = {f.t / "src"};
  o.out = f.t / "ds-other";
  o.vocab = 600;
  o.val_frac = 0.1;
  o.val_min_bytes = 8192;
  o.quiet = true;
  data::build(o);
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " train --quiet --data " + (f.t / "ds-other") + " --substrate " +
                          f.substrate + " --out " + run + " --set steps=2 --resume");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("was trained with tokenizer"), std::string::npos) << r.out;
}

// What a run folder says is checked before it is believed: `eval bpb` refuses a config.json that
// disagrees with the checkpoint's own (checksummed) configuration; a resume whose metrics.jsonl lost
// steps is refused, and the trainer writes that error line to failure.txt (what the runner records);
// a killed run's half-written checkpoint is removed at the next start.
TEST(Trainer, RunFolderIsCheckedBeforeItIsBelieved) {
  const auto& f = fx();
  std::string run = f.t / "trust";
  ASSERT_EQ(slm::test::run(f.train_cmd(run, "--set steps=10")).status, 0);
  const std::string cfg = fs::read_file(run + "/config.json");
  auto edited = json::parse(cfg);
  edited["model"]["softcap"] = 55.0;
  slm::test::write(run + "/config.json", edited.dump(1));
  auto ev = slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + run + " --threads 1");
  EXPECT_EQ(ev.status, 2) << ev.out;
  EXPECT_NE(ev.out.find("disagrees with"), std::string::npos) << ev.out;
  EXPECT_NE(ev.out.find("model.softcap"), std::string::npos) << ev.out;
  EXPECT_EQ(slm::test::count_lines(ev.out), 1) << ev.out;
  slm::test::write(run + "/config.json", cfg);
  EXPECT_EQ(slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + run + " --threads 1").status, 0);

  const std::string stale = run + "/ckpt_latest.safetensors.tmp.999999999";  // above any pid_max: dead
  slm::test::write(stale, "half a checkpoint");
  std::string kept;
  for (auto& x : slm::test::metrics(run))
    if (x["step"].get<int64_t>() <= 3) kept += x.dump() + "\n";
  slm::test::write(run + "/metrics.jsonl", kept);
  auto r = slm::test::run(f.train_cmd(run, "--set steps=10 --resume"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("lacks the records of steps 4..10"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(stale));
  ASSERT_TRUE(fs::exists(run + "/failure.txt"));
  const std::string reason = fs::read_file(run + "/failure.txt");
  EXPECT_EQ(slm::test::count_lines(reason), 1) << reason;
  EXPECT_NE(r.out.find(reason.substr(0, reason.size() - 1)), std::string::npos) << reason << " vs " << r.out;
  EXPECT_EQ(reason.rfind("error: train: ", 0), 0u) << reason;
}

// --profile: the phases of a step, the ops of the last two and the machine line, printed at the end;
// profiling changes no bit of the run. Neither does OpenMP's wait policy: the binary waits passively
// unless the user chose (device::exec_with_passive_openmp), and the machine line says which.
TEST(Trainer, ProfileReportsPhasesOpsAndMachineWithoutChangingTheRun) {
  const Fixture& f = fx();
  slm::test::TempDir t;
  const std::string few = "--set steps=6 --set eval_every=3 --set ckpt_every=0";
  const std::string plain = t / "plain", profiled = t / "profiled";
  auto a = slm::test::run("OMP_WAIT_POLICY=ACTIVE " + f.train_cmd(plain, few));
  auto b = slm::test::run("env -u OMP_WAIT_POLICY " + f.train_cmd(profiled, few + " --profile"));
  ASSERT_EQ(a.status, 0) << a.out;
  ASSERT_EQ(b.status, 0) << b.out;
  EXPECT_EQ(a.out.find("phases ("), std::string::npos);
  EXPECT_NE(b.out.find("machine: "), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("BLAS_INFO="), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("load average at start"), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("OMP_WAIT_POLICY=PASSIVE"), std::string::npos) << b.out;
  // Steps 3 and 4 of 6 timed (two warm-up steps, the last two profiled by op).
  EXPECT_NE(b.out.find("phases (median of 2 steps, ms)"), std::string::npos) << b.out;
  for (const char* phase : {"data", "forward", "backward", "clip", "muon_ns", "muon_other", "adamw", "host_read"})
    EXPECT_NE(b.out.find(std::string("\n  ") + phase + " "), std::string::npos) << phase << "\n" << b.out;
  EXPECT_NE(b.out.find("ops (autograd profiler over 2 steps of "), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("aten::"), std::string::npos) << b.out;
  EXPECT_EQ(slm::test::curve(plain), slm::test::curve(profiled));
}

// A bad SLMLAB_ATTENTION (the process switch of the CPU attention kernel) fails in one line naming
// it, before anything is written.
TEST(Trainer, BadAttentionSwitchFailsBeforeWriting) {
  const Fixture& f = fx();
  slm::test::TempDir t;
  const std::string out = t / "run";
  auto r = slm::test::run("SLMLAB_ATTENTION=flash " + f.train_cmd(out, "--set steps=1"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("SLMLAB_ATTENTION='flash' is not a choice; use fused or math"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out));
}

// The attention path is part of what reproduces a run: config.json records it, and a resume on the
// other path is refused in one line naming the way back (the same path resumes).
TEST(Trainer, ResumeOnAnotherAttentionPathIsRefused) {
  const Fixture& f = fx();
  slm::test::TempDir t;
  const std::string out = t / "run";
  auto a = slm::test::run("SLMLAB_ATTENTION=fused " + f.train_cmd(out, "--set steps=10 --set eval_every=0"));
  ASSERT_EQ(a.status, 0) << a.out;
  EXPECT_EQ(json::parse(fs::read_file(out + "/config.json"))["attention"], "fused");
  const std::string before = fs::read_file(out + "/metrics.jsonl");
  auto b = slm::test::run("SLMLAB_ATTENTION=math " + f.train_cmd(out, "--set steps=10 --set eval_every=0 --resume"));
  EXPECT_NE(b.status, 0);
  EXPECT_EQ(slm::test::count_lines(b.out), 1) << b.out;
  EXPECT_NE(b.out.find("was trained with attention fused and this process computes math; resume it with "
                       "SLMLAB_ATTENTION=fused"),
            std::string::npos)
      << b.out;
  EXPECT_EQ(fs::read_file(out + "/metrics.jsonl"), before);
  auto c = slm::test::run("SLMLAB_ATTENTION=fused " + f.train_cmd(out, "--set steps=10 --set eval_every=0 --resume"));
  EXPECT_EQ(c.status, 0) << c.out;
  EXPECT_EQ(last_step(out), 10);
}
