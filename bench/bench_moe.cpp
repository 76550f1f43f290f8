// The MoE layer against a dense MLP of the same active parameters on this CPU: forward + backward
// tokens/s of one FFN layer at the cpu-tiny width (d_model 128, 16 rows x 256 tokens a micro-batch),
// side by side in one run, each configuration in a process of its own so its peak RSS is its own;
// plus the routing overhead: the share of the MoE layer's time that is not expert compute (router,
// top-k, sort, gathers, scatter, aux losses), from the same expert GEMMs timed alone.
//   build/bench/bench_moe [--threads N] [--rows N] [--context N] [--reps N] [--rounds N] [--bf16 1]
// (--bf16 1: under bf16 autocast, as `slmlab train` runs on a CPU with fast bf16 matmuls.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <malloc.h>
#include <map>
#include <string>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"
#include "model/moe.h"

using namespace slm;
using clk = std::chrono::steady_clock;

namespace {

constexpr int64_t kWidth = 128;  // cpu-tiny: depth 4 x aspect 32

// Fastest seconds of `step` (forward + backward) over `reps` after 2 warm-ups: on a shared machine
// the minimum is the run least disturbed by other processes.
double time_step(const std::function<void()>& step, int reps) {
  double best = 1e30;
  for (int i = 0; i < reps + 2; ++i) {
    auto t0 = clk::now();
    step();
    if (i >= 2) best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
  }
  return best;
}

// Random weights, so zero-initialized projections do not make backward trivial.
void randomize(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  for (auto& p : m.parameters())
    if (p.requires_grad()) p.normal_(0, 0.02);
}

// A catalog row's resolved arguments: its defaults (the only ones) plus `given`, as texts.
catalog::ModuleArgs row(const std::string& name, const std::map<std::string, std::string>& given = {}) {
  std::vector<std::string> errors;
  catalog::ModuleArgs a = catalog::resolve(name, given, errors);
  SLM_CHECK(errors.empty(), "[bench] ", name, ": ", errors.empty() ? "" : errors.front());
  return a;
}

MoeOptions moe_config(const std::string& name) {
  std::map<std::string, std::string> given;  // the catalog's defaults: 2 shared + 16 routed of 4C/4 = C, top-2 softmax
  if (name == "moe-cap1.25") given = {{"capacity_factor", "1.25"}};
  if (name == "moe-sigmoid-bias") given = {{"score", "sigmoid"}, {"aux_loss", "0"}, {"bias_rate", "1e-3"}};
  ModelConfig c;
  c.d_model = kWidth;
  return MoeOptions::from(row("moe", given), c, /*layer=*/0);
}

// One configuration, in this process: prints "tok/s params active rss_bytes".
int measure(const std::string& name, int64_t rows, int64_t T, int reps, bool bf16) {
  torch::manual_seed(0);
  device::set_autocast(torch::kCPU, bf16);
  auto x = torch::randn({rows, T, kWidth}, torch::requires_grad());
  double secs = 0;
  int64_t params = 0, active = 0;
  if (name == "idle") {
    // the process and LibTorch alone: the RSS the others are measured against
  } else if (name == "dense") {
    ModelConfig c;
    c.d_model = kWidth;
    MLPImpl mlp(c);
    randomize(mlp);
    params = active = mlp.c_fc->weight.numel() + mlp.c_proj->weight.numel();
    Ctx ctx;
    ctx.training = true;
    secs = time_step([&] { mlp.forward(x, ctx).square().mean().backward(); }, reps);
  } else if (name == "experts-only") {
    // The expert GEMMs of "moe" on the routing it chose, without the routing.
    MoeImpl moe(moe_config("moe"));
    randomize(moe);
    params = moe.total_params();
    active = moe.active_params();
    auto xf = x.detach().reshape({-1, kWidth});
    std::vector<torch::Tensor> xs;  // each expert's rows, contiguous leaves
    {
      torch::NoGradGuard ng;
      auto d = moe.dispatch(moe.route(xf), rows, false);
      for (auto& t : xf.index_select(0, d.token).split_with_sizes(d.counts))
        xs.push_back(t.contiguous().requires_grad_(true));
    }
    auto xr = xf.clone().requires_grad_(true);
    secs = time_step([&] {
      auto loss = moe.shared->forward(xr).square().mean();
      for (int64_t i = 0; i < moe.opt.n_routed; ++i)
        if (xs[i].size(0) > 0) loss = loss + moe.experts[i]->as<MoeExpertImpl>()->forward(xs[i]).square().mean();
      loss.backward();
    }, reps);
  } else {
    MoeImpl moe(moe_config(name));
    randomize(moe);
    params = moe.total_params();
    active = moe.active_params();
    secs = time_step([&] {
      Ctx ctx;
      ctx.training = true;
      auto loss = moe.forward(x, ctx).square().mean();
      for (auto& a : ctx.aux) loss = loss + a.weight * a.value;
      loss.backward();
      StepCtx sc;
      moe.after_step(sc);
    }, reps);
  }
  std::printf("%.1f %lld %lld %lld\n", secs > 0 ? rows * T / secs : 0.0, (long long)params, (long long)active,
              (long long)device::peak_rss_bytes());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  int threads = 2, reps = 7, rounds = 3;
  bool bf16 = false;
  int64_t rows = 16, T = 256;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rows")) rows = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--context")) T = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--bf16")) bf16 = std::atoi(argv[i + 1]) != 0;
    else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
  }
  at::set_num_threads(threads);
  if (!only.empty()) return measure(only, rows, T, reps, bf16);

  std::printf("one FFN layer, d_model %lld, fwd+bwd, %lld rows x %lld tokens, %d threads, %s, best of %d rounds\n",
              (long long)kWidth, (long long)rows, (long long)T, threads, bf16 ? "bf16 autocast" : "fp32", rounds);
  std::printf("moe: 2 shared + 16 routed experts of %lld, top-2; dense: relu2 MLP of %lld (same active FFN params)\n",
              (long long)kWidth, (long long)(4 * kWidth));
  // Rounds over every configuration in turn, keeping each one's best: a burst of load from other
  // processes then hits one round of every configuration, not all rounds of one.
  const std::vector<std::string> names = {"idle", "dense", "moe", "moe-cap1.25", "moe-sigmoid-bias", "experts-only"};
  struct Result {
    double tok = 0;
    long long params = 0, active = 0, rss = 0;
  };
  std::map<std::string, Result> best;
  for (int r = 0; r < rounds; ++r)
    for (auto& name : names) {
      const std::string cmd = std::string(argv[0]) + " --only " + name + " --threads " + std::to_string(threads) +
                              " --rows " + std::to_string(rows) + " --context " + std::to_string(T) + " --reps " +
                              std::to_string(reps) + " --bf16 " + (bf16 ? "1" : "0");
      FILE* p = ::popen(cmd.c_str(), "r");
      Result got;
      const int n = p ? std::fscanf(p, "%lf %lld %lld %lld", &got.tok, &got.params, &got.active, &got.rss) : 0;
      if (p) ::pclose(p);
      if (n != 4) {
        std::fprintf(stderr, "bench_moe: %s failed\n", name.c_str());
        return 1;
      }
      Result& b = best[name];
      const long long rss = r == 0 ? got.rss : std::min(b.rss, got.rss);
      if (got.tok >= b.tok) b = got;
      b.rss = rss;
    }
  std::printf("%-18s %10s %10s %10s %8s %14s %9s\n", "layer", "params", "active", "tok/s", "ms", "RSS over idle",
              "vs dense");
  const double idle_rss = static_cast<double>(best["idle"].rss), dense_tok = best["dense"].tok;
  for (auto& name : names) {
    if (name == "idle") continue;
    const Result& b = best[name];
    std::printf("%-18s %10lld %10lld %10.0f %8.1f %11.1f MB %8.2fx\n", name.c_str(), b.params, b.active, b.tok,
                1000.0 * rows * T / b.tok, (b.rss - idle_rss) / 1e6, b.tok / dense_tok);
  }
  // 1 / tok/s is the time per token: the share of the MoE layer's time outside the expert GEMMs.
  std::printf("routing overhead (moe time not in expert GEMMs): %.0f%%\n",
              100.0 * (1.0 - best["moe"].tok / best["experts-only"].tok));
  return 0;
}
