// The fused CPU attention kernel (common/attention_cpu.h) against the math path it replaces on
// LibTorch 1.13: forward + backward of softmax(q k^T) v alone, causal, H heads of D, the same tokens
// per batch at every context; the two timed alternately in one process (a ratio that holds on a
// loaded machine better than either time).
//   build/bench/bench_attention [--threads N] [--tokens N] [--heads H] [--head-dim D] [--reps N]
//                               [--context N[,N...]] [--precision fp32|bf16]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/attention_cpu.h"
#include "common/device.h"
#include "common/error.h"

using namespace slm;
using clk = std::chrono::steady_clock;

int run(int argc, char** argv) {
  int threads = 0, reps = 5;
  int64_t tokens = 8192, H = 6, D = 64;
  std::vector<int64_t> contexts{256, 1024, 2048};
  bool bf16 = false;
  for (int i = 1; i < argc; ++i) {
    auto val = [&]() -> std::string {
      SLM_CHECK(i + 1 < argc, "bench_attention: ", argv[i], " needs a value");
      return argv[++i];
    };
    const std::string a = argv[i];
    if (a == "--threads") threads = std::stoi(val());
    else if (a == "--tokens") tokens = std::stoll(val());
    else if (a == "--heads") H = std::stoll(val());
    else if (a == "--head-dim") D = std::stoll(val());
    else if (a == "--reps") reps = std::stoi(val());
    else if (a == "--precision") {
      const std::string p = val();
      SLM_CHECK(p == "fp32" || p == "bf16", "bench_attention: --precision ", p, " is not fp32 or bf16");
      bf16 = p == "bf16";
    } else if (a == "--context") {
      contexts.clear();
      std::string s = val();
      for (size_t p = 0; p < s.size();) {
        const size_t c = s.find(',', p);
        contexts.push_back(std::stoll(s.substr(p, c - p)));
        p = c == std::string::npos ? s.size() : c + 1;
      }
    } else {
      slm::fail("bench_attention: unknown option ", a, "; see the header of bench/bench_attention.cpp");
    }
  }
  if (threads > 0) at::set_num_threads(threads);
  std::printf("attention fwd+bwd, %s, %d threads, H=%lld D=%lld, %lld tokens per batch, median of %d\n",
              bf16 ? "bf16 autocast" : "fp32", at::get_num_threads(), (long long)H, (long long)D, (long long)tokens, reps);
  std::printf("| T | B | math ms | fused ms | math / fused |\n|---|---|---|---|---|\n");
  torch::manual_seed(0);
  for (int64_t T : contexts) {
    const int64_t B = std::max<int64_t>(1, tokens / T);
    auto q = torch::randn({B, H, T, D}).requires_grad_(true), k = torch::randn({B, H, T, D}).requires_grad_(true);
    auto v = torch::randn({B, H, T, D}).requires_grad_(true);
    auto w = torch::randn({B, H, T, D});
    auto once = [&](bool fused) {
      const auto t0 = clk::now();
      device::set_autocast(torch::kCPU, bf16);
      auto y = fused ? device::attention_fused_cpu(q, k, v, {}) : device::attention_math(q, k, v, {});
      device::set_autocast(torch::kCPU, false);
      (y.to(torch::kFloat32) * w).sum().backward();
      q.mutable_grad().reset(), k.mutable_grad().reset(), v.mutable_grad().reset();
      return std::chrono::duration<double>(clk::now() - t0).count();
    };
    std::vector<double> tm, tf;
    once(false), once(true);
    for (int r = 0; r < reps; ++r) tm.push_back(once(false)), tf.push_back(once(true));
    std::sort(tm.begin(), tm.end()), std::sort(tf.begin(), tf.end());
    const double m = tm[tm.size() / 2], f = tf[tf.size() / 2];
    std::printf("| %lld | %lld | %.1f | %.1f | %.2fx |\n", (long long)T, (long long)B, 1000 * m, 1000 * f, m / f);
    std::fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
