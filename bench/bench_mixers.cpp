// Token mixers against attention on this CPU: forward + backward tokens/s of one layer, side by
// side in one run, at contexts 256 to 4096 (the same tokens per batch at every context): Mamba-3
// against attention, and DSA (sparse stage, k = T/8, window 128, indexer and its KL included)
// against dense attention at 1024 to 4096.
//   build/bench/bench_mixers [--threads N] [--tokens N] [--only mamba3|dsa]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <malloc.h>
#include <string>
#include <vector>

#include "model/dsa.h"
#include "model/gpt.h"
#include "model/mamba3.h"

using namespace slm;
using clk = std::chrono::steady_clock;

namespace {

// Median seconds of fwd+bwd over `reps` after 2 warm-ups.
double time_fb(const std::function<torch::Tensor()>& fwd, int reps) {
  std::vector<double> t;
  for (int i = 0; i < reps + 2; ++i) {
    auto t0 = clk::now();
    auto y = fwd();
    y.square().mean().backward();
    if (i >= 2) t.push_back(std::chrono::duration<double>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  int threads = 2;
  int64_t tokens = 8192;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
  }
  at::set_num_threads(threads);
  torch::manual_seed(0);
  ModelConfig c;
  c.d_model = 256;
  c.n_head = 4;
  c.head_dim = 64;
  c.context = 4096;
  std::printf("one layer, d_model %lld, fwd+bwd, %lld tokens per batch, %d threads, fp32\n", (long long)c.d_model,
              (long long)tokens, threads);
  std::printf("%-8s %-6s %14s %14s %8s\n", "context", "batch", "attention tok/s", "mamba3 tok/s", "ratio");
  CausalSelfAttentionImpl attn(c);
  Mamba3Options mo;
  mo.d_model = c.d_model;
  Mamba3MixerImpl mamba(mo);
  {
    torch::NoGradGuard ng;  // non-zero output projections, so backward does real work
    attn.c_proj->weight.normal_(0, 0.02);
    for (auto& p : mamba.parameters()) p.add_(torch::randn_like(p) * 0.01);
  }
  auto [cos, sin] = rope_tables(c.context, c.head_dim, c.rope_base);
  for (int64_t T : {256, 512, 1024, 2048, 4096}) {
    if (only == "dsa") break;
    const int64_t B = std::max<int64_t>(1, tokens / T);
    auto x = torch::randn({B, T, c.d_model}, torch::requires_grad());
    Ctx ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    const int reps = T >= 2048 ? 3 : 5;
    const double ta = time_fb([&] { return attn.forward(x, ctx); }, reps);
    const double tm = time_fb([&] { return mamba.forward(x, ctx); }, reps);
    std::printf("%-8lld %-6lld %14.0f %14.0f %7.2fx\n", (long long)T, (long long)B, B * T / ta, B * T / tm, ta / tm);
    std::fflush(stdout);
  }
  std::printf("\n%-8s %-6s %-6s %14s %14s %10s\n", "context", "batch", "k", "dense ms", "dsa ms", "dsa/dense");
  for (int64_t T : {1024, 2048, 4096}) {
    if (only == "mamba3") break;
    const int64_t B = std::max<int64_t>(1, tokens / T);
    DsaOptions o;
    o.topk = T / 8;
    o.window = 128;
    o.path = "sparse";
    DsaAttentionImpl dsa(c, o);
    {
      torch::NoGradGuard ng;
      dsa.c_proj->weight.normal_(0, 0.02);
    }
    auto x = torch::randn({B, T, c.d_model}, torch::requires_grad());
    Ctx ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    ctx.training = true;
    ctx.step = 1;  // past the (zero) warm-up: the sparse stage
    const int reps = 3;
    const double td = time_fb([&] { return attn.forward(x, ctx); }, reps);
    const double ts = time_fb([&] {
      Ctx c2 = ctx;
      auto y = dsa.forward(x, c2);
      for (auto& a : c2.aux) y = y + 0 * a.value;  // the indexer's KL is part of the step
      return y;
    }, reps);
    std::printf("%-8lld %-6lld %-6lld %14.0f %14.0f %9.2fx\n", (long long)T, (long long)B, (long long)o.topk, 1000 * td,
                1000 * ts, ts / td);
    std::fflush(stdout);
  }
  return 0;
}
