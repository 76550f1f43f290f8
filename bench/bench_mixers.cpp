// Token mixers against attention on this CPU: forward + backward tokens/s of one layer, side by
// side in one run, at contexts 256 to 4096 (the same tokens per batch at every context).
//   build/bench/bench_mixers [--threads N] [--tokens N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <malloc.h>
#include <string>
#include <vector>

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
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::atoll(argv[i + 1]);
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
  return 0;
}
