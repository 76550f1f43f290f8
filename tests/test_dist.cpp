// Data-parallel training: the bucketed all-reduce of a two-rank in-process group averages gradients;
// `--nproc 2` follows the single-process loss curve (same total batch) and gives its val_bpb; a
// killed two-rank run resumes bitwise; a resume with another world size is refused in one line.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fs.h"
#include "test_util.h"
#include "train/dist.h"

using namespace slm;
using json = nlohmann::json;

namespace {

// Runs fn(comm) on `world` threads, each a rank of one Gloo group met through a shared HashStore.
template <class Fn>
void with_group(int world, Fn fn) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::thread> ts;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r)
    ts.emplace_back([&, r] {
      try {
        dist::World w;
        w.rank = r;
        w.size = world;
        dist::Comm comm(store, w, torch::kCPU);
        fn(comm);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Parameters with rank-specific gradients: 3 tensors, one larger than a small bucket, one of them
// without a gradient on rank 1 only, one without a gradient anywhere.
std::vector<torch::Tensor> params_for(int rank) {
  std::vector<torch::Tensor> ps;
  for (auto n : {7, 300, 5, 4}) ps.push_back(torch::zeros({n}, torch::requires_grad()));
  for (size_t i = 0; i < 3; ++i) {
    if (i == 2 && rank == 1) continue;
    auto g = torch::arange(ps[i].numel(), torch::kFloat32) * (rank + 1) + 100 * static_cast<double>(i);
    ps[i].mutable_grad() = g;
  }
  return ps;  // ps[3]: no gradient on any rank
}

}  // namespace

TEST(Dist, BucketedAllReduceAveragesGradients) {
  for (int64_t bucket : {int64_t(64), int64_t(4) << 20}) {  // many buckets (one per tensor, 300 floats alone) and one
    std::vector<std::vector<torch::Tensor>> got(2);
    with_group(2, [&](dist::Comm& c) {
      auto ps = params_for(c.world().rank);
      dist::GradReducer(c, ps, bucket).finish();  // unarmed: gradients already in .grad
      for (auto& p : ps) got[c.world().rank].push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    });
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(got[r].size(), 4u);
      for (size_t i = 0; i < 3; ++i) {
        auto g0 = params_for(0)[i].grad(), g1 = params_for(1)[i].grad();
        auto expect = i == 2 ? g0 / 2 : (g0 + g1) / 2;  // rank 1 contributes zeros where it has none
        ASSERT_TRUE(got[r][i].defined()) << "rank " << r << " tensor " << i;
        EXPECT_TRUE(torch::equal(got[r][i], expect)) << "rank " << r << " tensor " << i << " bucket " << bucket;
      }
      EXPECT_FALSE(got[r][3].defined()) << "a gradient undefined on every rank stays undefined";
    }
  }
}

namespace {

// A three-layer net whose last term uses `extra` on rank 0 only; `never` is used by nobody. Values
// from linspace, not the global generator (the ranks here are threads of one process).
std::vector<torch::Tensor> net_params() {
  std::vector<torch::Tensor> ps;
  for (auto shape : std::vector<std::vector<int64_t>>{{24, 8}, {24, 24}, {6, 24}, {6}, {6}}) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    ps.push_back(torch::linspace(-0.5, 0.5, n).view(shape).clone().requires_grad_());
  }
  return ps;
}

torch::Tensor net_loss(const std::vector<torch::Tensor>& ps, int rank, int micro) {
  auto x = torch::linspace(-1, 1, 5 * 8).view({5, 8}) * (1 + rank) + 0.25 * micro;
  auto h = torch::tanh(x.mm(ps[0].t()));
  h = torch::tanh(h.mm(ps[1].t()));
  auto out = h.mm(ps[2].t());
  auto loss = out.pow(2).mean();
  if (rank == 0) loss = loss + (out * ps[3]).mean();
  return loss;  // ps[4]: never used
}

}  // namespace

// Armed for the last micro-batch's backward, the reducer sends buckets before backward returns and
// ends with the same gradients, bit for bit, as reducing after backward; both are the mean of the
// ranks' accumulated gradients. A parameter one rank does not use gets half the other's; one
// nobody uses keeps no gradient.
TEST(Dist, GradientBucketsSentDuringBackwardEqualReducingAfterIt) {
  std::vector<std::vector<torch::Tensor>> got(4);  // [rank * 2 + armed]
  std::vector<int64_t> early(4), buckets(4);
  for (int armed = 0; armed < 2; ++armed)
    with_group(2, [&](dist::Comm& c) {
      const int r = c.world().rank;
      auto ps = net_params();
      dist::GradReducer red(c, ps, /*bucket_bytes=*/24 * 24 * 4);
      net_loss(ps, r, 0).backward();  // the first micro-batch only accumulates
      auto loss = net_loss(ps, r, 1);
      if (armed) red.arm(loss);
      loss.backward();
      red.finish();
      early[r * 2 + armed] = red.sent_during_backward();
      buckets[r * 2 + armed] = red.buckets();
      for (auto& p : ps) got[r * 2 + armed].push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    });
  // The expected means, from each rank's own accumulated gradients.
  std::vector<std::vector<torch::Tensor>> own(2);
  for (int r = 0; r < 2; ++r) {
    auto ps = net_params();
    net_loss(ps, r, 0).backward();
    net_loss(ps, r, 1).backward();
    for (auto& p : ps) own[r].push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  }
  ASSERT_TRUE(own[0][3].defined());
  ASSERT_FALSE(own[1][3].defined());
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(buckets[r * 2], 3) << "bucket limit of one 24 x 24 matrix: {ps[4], ps[3], ps[2]}, {ps[1]}, {ps[0]}";
    EXPECT_EQ(early[r * 2], 0) << "unarmed: nothing sent during backward";
    EXPECT_GE(early[r * 2 + 1], 2) << "armed: buckets left before backward returned (the first despite ps[4], "
                                      "which the loss does not reach)";
    for (size_t i = 0; i < 4; ++i) {
      auto expect = i == 3 ? own[0][i] / 2 : (own[0][i] + own[1][i]) / 2;
      for (int armed = 0; armed < 2; ++armed) {
        ASSERT_TRUE(got[r * 2 + armed][i].defined()) << "rank " << r << " param " << i;
        EXPECT_TRUE(torch::equal(got[r * 2 + armed][i], expect)) << "rank " << r << " param " << i << " armed " << armed;
      }
    }
    EXPECT_FALSE(got[r * 2][4].defined());
    EXPECT_FALSE(got[r * 2 + 1][4].defined()) << "a gradient no rank has stays undefined";
  }
}

TEST(Dist, SumGatherBroadcast) {
  std::vector<double> sums(3);
  std::vector<std::vector<torch::Tensor>> gathered(3);
  std::vector<torch::Tensor> bcast(3);
  with_group(3, [&](dist::Comm& c) {
    const int r = c.world().rank;
    auto t = torch::tensor({double(r + 1)}, torch::kFloat64);
    c.all_reduce_sum(t);
    sums[r] = t.item<double>();
    gathered[r] = c.all_gather(torch::full({2}, r, torch::kUInt8));
    std::vector<torch::Tensor> b{torch::full({3}, float(r + 10))};
    c.broadcast(b, 1);
    bcast[r] = b[0];
    c.barrier();
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(sums[r], 6.0);
    ASSERT_EQ(gathered[r].size(), 3u);
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(torch::equal(gathered[r][k], torch::full({2}, k, torch::kUInt8)));
    EXPECT_TRUE(torch::equal(bcast[r], torch::full({3}, 11.0f)));
  }
}

namespace {

struct Fixture {
  slm::test::TempDir t;
  std::string data, substrate;
  Fixture() {
    data = slm::test::small_dataset(t.path, 60, 11, 20, 512, 8192);
    substrate = t / "tiny.toml";
    // 16 rows a step: one process does 4 micro-batches of 4 rows; two ranks do 2 of 4 rows each.
    slm::test::write(substrate,
                     "name = \"test-dp\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
                     "total_batch = 512\ndevice_batch = 4\nsteps = 10\neval_every = 5\neval_tokens = 512\n"
                     "ckpt_every = 2\nthreads = 1\nprecision = \"fp32\"\nlr_matrix = 0.05\nlr_embed = 0.5\n"
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

std::map<int64_t, double> series(const std::string& run, const char* key) {
  std::map<int64_t, double> m;
  for (auto& r : slm::test::metrics(run))
    if (r.contains(key)) m[r["step"]] = r[key];
  return m;
}

// Tolerances of DP=2 against one process (fp32, same total batch, same rows): only the order of
// floating-point sums differs (a mean of two rank means vs one mean; micro-batch accumulation).
constexpr double kLossTol = 1e-4;   // absolute, nats, any of the 10 steps (seen: 5e-7)
constexpr double kFirstTol = 1e-5;  // step 1: same weights, so only the summation order differs (seen: 1e-7)
constexpr double kValTol = 1e-5;    // absolute, bits per byte (seen: 8e-9)

}  // namespace

TEST(Dist, TwoRanksFollowTheSingleProcessCurve) {
  const auto& f = fx();
  const std::string one = f.t / "one", two = f.t / "two";
  auto r1 = slm::test::run(f.train_cmd(one));
  ASSERT_EQ(r1.status, 0) << r1.out;
  auto r2 = slm::test::run(f.train_cmd(two, "--nproc 2"));
  ASSERT_EQ(r2.status, 0) << r2.out;

  auto c1 = json::parse(fs::read_file(one + "/config.json")), c2 = json::parse(fs::read_file(two + "/config.json"));
  EXPECT_EQ(c1["substrate_id"], c2["substrate_id"]) << "world size is an execution setting, not part of the id";
  EXPECT_EQ(c1["world_size"], 1);
  EXPECT_EQ(c2["world_size"], 2);
  EXPECT_EQ(c1["grad_accum"], 4);
  EXPECT_EQ(c2["grad_accum"], 2);
  auto s2 = json::parse(fs::read_file(two + "/summary.json"));
  EXPECT_EQ(s2["status"], "done");
  EXPECT_EQ(s2["tokens"], 10 * 512) << "the total batch is the substrate's";
  EXPECT_EQ(s2["world_size"], 2);
  // MFU counts every rank's tokens, so its denominator is every rank's device (issue 20 §3).
  EXPECT_DOUBLE_EQ(s2["peak_flops"].get<double>(), 2 * s2["peak_flops_per_device"].get<double>());
  EXPECT_NEAR(s2["mfu"].get<double>(),
              s2["tokens_per_second"].get<double>() * s2["flops_per_token"].get<double>() / s2["peak_flops"].get<double>(),
              1e-12);
  EXPECT_EQ(c2["code_id"].get<std::string>().size(), c1["code_id"].get<std::string>().size());
  EXPECT_FALSE(c2["code_id"].get<std::string>().empty());

  auto l1 = series(one, "loss"), l2 = series(two, "loss");
  ASSERT_EQ(l1.size(), 10u);
  ASSERT_EQ(l2.size(), 10u) << "rank 0 alone writes the records: one per step";
  EXPECT_NEAR(l1[1], l2[1], kFirstTol);
  double worst = 0;
  for (auto& [step, loss] : l1) {
    EXPECT_NEAR(loss, l2[step], kLossTol) << "step " << step;
    worst = std::max(worst, std::abs(loss - l2[step]));
  }
  EXPECT_LT(l2[10], l2[1]) << "the two-rank run learns";

  auto v1 = series(one, "val_bpb"), v2 = series(two, "val_bpb");
  ASSERT_EQ(v1.size(), 3u);  // steps 0, 5, 10
  ASSERT_EQ(v2.size(), 3u);
  EXPECT_EQ(v1[0], v2[0]) << "same weights: the split evaluation gives the single-process figure bit for bit";
  // So do the objective metrics (eval/infill.h): each rank scores every dp-th batch of samples.
  auto at0 = [](const std::string& run) {
    for (auto& r : slm::test::metrics(run))
      if (r.contains("val_bpb") && r["step"] == 0) return r;
    return nlohmann::json();
  };
  const auto e1 = at0(one), e2 = at0(two);
  for (const char* k : {"fim_bpb", "ifim_bpb", "ifim_noinst_bpb", "sri_bpb"}) {
    ASSERT_TRUE(e1.contains(k) && e2.contains(k)) << k;
    EXPECT_EQ(e1[k], e2[k]) << k;
  }
  double worst_val = 0;
  for (auto& [step, v] : v1) {
    EXPECT_NEAR(v, v2[step], kValTol) << "step " << step;
    worst_val = std::max(worst_val, std::abs(v - v2[step]));
  }
  std::printf("DP=2 vs 1 process: max |loss diff| %.3g (step 1: %.3g), max |val_bpb diff| %.3g\n", worst,
              std::abs(l1[1] - l2[1]), worst_val);
  for (auto& r : slm::test::metrics(two)) {
    if (r.contains("loss")) {
      EXPECT_TRUE(r.contains("comm_ms"));
    }
  }

  // The same world size reproduces itself bitwise, whether the gradient buckets are sent during
  // backward (the default) or after it.
  const std::string again = f.t / "two-again";
  auto r3 = slm::test::run(f.train_cmd(again, "--nproc 2 --grad-reduce after"));
  ASSERT_EQ(r3.status, 0) << r3.out;
  EXPECT_EQ(slm::test::curve(two), slm::test::curve(again));
  int64_t sent_early = 0;
  for (auto& r : slm::test::metrics(two))
    if (r.contains("buckets_in_backward")) sent_early += r["buckets_in_backward"].get<int64_t>();
  EXPECT_GT(sent_early, 0) << "the overlapped run sent buckets during backward";
  for (auto& r : slm::test::metrics(again))
    if (r.contains("buckets_in_backward")) {
      EXPECT_EQ(r["buckets_in_backward"], 0);
    }
}

TEST(Dist, KilledTwoRankRunResumesBitwise) {
  const auto& f = fx();
  const std::string ref = f.t / "ref2", run = f.t / "killed2";
  ASSERT_EQ(slm::test::run(f.train_cmd(ref, "--nproc 2")).status, 0);
  pid_t pid = slm::test::start(f.train_cmd(run, "--nproc 2"));
  // Kill the launcher after step 5 (a checkpoint at 4): its ranks die with it.
  for (;;) {
    int64_t s = 0;
    if (fs::exists(run + "/metrics.jsonl")) {
      std::ifstream in(run + "/metrics.jsonl");
      std::string line;
      while (std::getline(in, line)) try {
          s = std::max<int64_t>(s, json::parse(line).value("step", 0));
        } catch (...) {
        }
    }
    if (s >= 5) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  slm::test::stop(pid, SIGKILL);
  // Rank 0 holds the run folder's lock until it has died.
  for (int i = 0; i < 500; ++i) {
    int fd = ::open((run + "/.lock").c_str(), O_RDWR);
    const bool free = fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0;
    if (fd >= 0) ::close(fd);
    if (free) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto r = slm::test::run(f.train_cmd(run, "--nproc 2 --resume"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(slm::test::curve(run), slm::test::curve(ref));
}

// SIGTERM to the launcher reaches every rank; they stop at the same step, rank 0 checkpoints it, and
// the launcher exits 143. The same command resumes bitwise.
TEST(Dist, SigtermedTwoRankRunStopsTogetherAndResumesBitwise) {
  const auto& f = fx();
  const std::string ref = f.t / "ref3", run = f.t / "termed3";
  ASSERT_EQ(slm::test::run(f.train_cmd(ref, "--nproc 2")).status, 0);
  pid_t pid = slm::test::start(f.train_cmd(run, "--nproc 2"));
  while (series(run, "loss").size() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const int st = slm::test::stop(pid, SIGTERM);
  ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st);
  EXPECT_EQ(WEXITSTATUS(st), 143);
  auto summary = json::parse(fs::read_file(run + "/summary.json"));
  EXPECT_EQ(summary["status"], "preempted") << summary.dump();
  EXPECT_EQ(summary["step"].get<int64_t>(), series(run, "loss").rbegin()->first);
  auto r = slm::test::run(f.train_cmd(run, "--nproc 2 --resume"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(slm::test::curve(run), slm::test::curve(ref));
}

// Tensor parallelism (model/tp.h): TP=2 x DP=2 as four CPU processes follows the single-process
// curve (same substrate but tp, same total batch); only summation orders differ (partial matmuls
// summed by the all-reduce, Muon's update gathered whole). The checkpoint holds whole tensors, so
// `eval bpb` on it gives the trainer's figure.
TEST(Dist, TensorTimesDataParallelFollowsTheSingleProcessCurve) {
  const auto& f = fx();
  const std::string one = f.t / "tp_one", mesh = f.t / "tp2dp2";
  auto r1 = slm::test::run(f.train_cmd(one));
  ASSERT_EQ(r1.status, 0) << r1.out;
  auto r4 = slm::test::run(f.train_cmd(mesh, "--nproc 4 --set tp=2"));
  ASSERT_EQ(r4.status, 0) << r4.out;
  EXPECT_NE(r4.out.find("tensor parallel: tp 2 x dp 2"), std::string::npos) << r4.out;
  auto l1 = series(one, "loss"), l4 = series(mesh, "loss");
  ASSERT_EQ(l1.size(), 10u);
  ASSERT_EQ(l4.size(), 10u);
  double worst = 0;
  for (auto& [step, v] : l1) {
    EXPECT_NEAR(l4[step], v, kLossTol) << "step " << step;
    worst = std::max(worst, std::abs(l4[step] - v));
  }
  std::printf("tp2 x dp2 vs one process: largest loss difference %.3g over %zu steps\n", worst, l1.size());
  EXPECT_GT(l1.begin()->second - l1.rbegin()->second, 0.1) << "the curve must move for the comparison to mean anything";
  auto v1 = series(one, "val_bpb"), v4 = series(mesh, "val_bpb");
  ASSERT_EQ(v1.size(), v4.size());
  for (auto& [step, v] : v1) EXPECT_NEAR(v4[step], v, kValTol) << "step " << step;
  auto e = slm::test::run(std::string(SLMLAB_BIN) + " eval bpb " + mesh + " --threads 1");
  ASSERT_EQ(e.status, 0) << e.out;
  char want[32];
  std::snprintf(want, sizeof want, "val_bpb %.4f ", v4.rbegin()->second);
  EXPECT_NE(e.out.find(want), std::string::npos) << want << " vs " << e.out;
}

// GateSkip at TP=2 (the article's limit): its gates read the replicated residual and its branches
// are the split blocks, so two TP ranks follow one process with the module too.
TEST(Dist, GateSkipAtTensorParallelTwoFollowsOneProcess) {
  const auto& f = fx();
  const std::string mod = " --module gateskip.ramp_steps=4,skip_final=0.2";
  const std::string one = f.t / "gs_one", two = f.t / "gs_tp2";
  auto r1 = slm::test::run(f.train_cmd(one, mod));
  ASSERT_EQ(r1.status, 0) << r1.out;
  auto r2 = slm::test::run(f.train_cmd(two, "--nproc 2 --set tp=2" + mod));
  ASSERT_EQ(r2.status, 0) << r2.out;
  auto l1 = series(one, "loss"), l2 = series(two, "loss");
  ASSERT_EQ(l1.size(), 10u);
  ASSERT_EQ(l2.size(), 10u);
  for (auto& [step, v] : l1) EXPECT_NEAR(l2[step], v, kLossTol) << "step " << step;
  auto v1 = series(one, "val_bpb"), v2 = series(two, "val_bpb");
  for (auto& [step, v] : v1) EXPECT_NEAR(v2[step], v, kValTol) << "step " << step;
  auto r3 = slm::test::run(f.train_cmd(f.t / "gs_tp4", "--nproc 4 --set tp=4" + mod));
  EXPECT_NE(r3.status, 0);
  EXPECT_NE(r3.out.find("gateskip was only validated at tp <= 2"), std::string::npos) << r3.out;
}

// A TP=2 run stopped by SIGTERM resumes from its whole-tensor checkpoint (sliced again per rank)
// and reproduces the uninterrupted TP=2 curve bitwise.
TEST(Dist, TensorParallelRunResumesBitwise) {
  const auto& f = fx();
  const std::string ref = f.t / "tp_ref", run = f.t / "tp_termed";
  ASSERT_EQ(slm::test::run(f.train_cmd(ref, "--nproc 2 --set tp=2")).status, 0);
  pid_t pid = slm::test::start(f.train_cmd(run, "--nproc 2 --set tp=2"));
  while (series(run, "loss").size() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const int st = slm::test::stop(pid, SIGTERM);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 143) << st;
  ASSERT_LT(series(run, "loss").size(), 10u);
  auto r = slm::test::run(f.train_cmd(run, "--nproc 2 --set tp=2 --resume"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(slm::test::curve(run), slm::test::curve(ref));
}

// A module that does not split its weights is refused at tp > 1, with the reason, before any step.
TEST(Dist, ModuleWithoutTensorParallelIsRefused) {
  const auto& f = fx();
  auto r = slm::test::run(f.train_cmd(f.t / "tp_moe", "--nproc 2 --set tp=2 --module moe"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("module moe runs at tp <= 1"), std::string::npos) << r.out;
}

// A module whose state follows rank-local statistics is refused at the run's real data-parallel
// width (--nproc, not only the substrate's dp), before a step, with nothing trained (issue 20 §1).
TEST(Dist, RankLocalStateIsRefusedAtTwoDataParallelRanks) {
  const auto& f = fx();
  const std::string run = f.t / "dp_cbp";
  auto r = slm::test::run(f.train_cmd(run, "--nproc 2 --module cbp"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("at tp 1 x dp 2: module cbp: it decides which units to replace"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(run + "/metrics.jsonl")) << "refused before any step";
}

TEST(Dist, ResumeWithAnotherWorldSizeIsRefused) {
  const auto& f = fx();
  const std::string two = f.t / "refuse2", one = f.t / "refuse1";
  ASSERT_EQ(slm::test::run(f.train_cmd(two, "--nproc 2")).status, 0);
  auto r = slm::test::run(f.train_cmd(two, "--resume"));
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("with 2 data-parallel rank(s) and this one has 1; resume it with --nproc 2"), std::string::npos)
      << r.out;

  ASSERT_EQ(slm::test::run(f.train_cmd(one)).status, 0);
  r = slm::test::run(f.train_cmd(one, "--resume --nproc 2"));
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(slm::test::count_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("with 1 data-parallel rank(s) and this one has 2; resume it with --nproc 1"), std::string::npos)
      << r.out;
}
