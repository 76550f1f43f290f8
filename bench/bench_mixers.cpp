// Token mixers against attention: forward + backward tokens/s of one layer, side by side in one
// run, at contexts 256 to 4096 (the same tokens per batch at every context): Mamba-3 against
// attention, and DSA (sparse stage, k = T/8, window 128, indexer and its KL included) against dense
// attention at 1024 to 4096.
//   build/bench/bench_mixers [--threads N] [--tokens N] [--only mamba3|dsa] [--device cpu|cuda]
//                            [--context N[,N...]] [--precision fp32|bf16] [--reps N]
// --context keeps only the listed contexts (each a multiple of 8, at most 65536); --precision bf16
// runs the layer under bf16 autocast (as training does); on cuda every timing waits for the device.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <malloc.h>
#include <string>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "model/dsa.h"
#include "model/gpt.h"
#include "model/mamba3.h"

using namespace slm;
using clk = std::chrono::steady_clock;

namespace {

// A catalog row's resolved arguments: its defaults (the only ones) plus `given`, as texts.
catalog::ModuleArgs row(const std::string& name, const std::map<std::string, std::string>& given = {}) {
  std::vector<std::string> errors;
  catalog::ModuleArgs a = catalog::resolve(name, given, errors);
  SLM_CHECK(errors.empty(), "[bench] ", name, ": ", errors.empty() ? "" : errors.front());
  return a;
}

// Waits for everything queued on `dev` (CUDA work is asynchronous); nothing on the CPU.
void sync(const torch::Device& dev) {
  if (dev.is_cuda()) torch::cuda::synchronize();
}

// Median seconds of fwd+bwd over `reps` after 2 warm-ups; under bf16 autocast when `bf16`.
double time_fb(const std::function<torch::Tensor()>& fwd, int reps, const torch::Device& dev, bool bf16) {
  std::vector<double> t;
  for (int i = 0; i < reps + 2; ++i) {
    sync(dev);
    auto t0 = clk::now();
    device::set_autocast(dev, bf16);
    auto y = fwd();
    auto loss = y.to(torch::kFloat32).square().mean();
    device::set_autocast(dev, false);
    loss.backward();
    device::clear_autocast_cache();
    sync(dev);
    if (i >= 2) t.push_back(std::chrono::duration<double>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_mixers: %s\nusage: bench_mixers [--threads N] [--tokens N] [--only mamba3|dsa] [--device cpu|cuda] "
               "[--context N[,N...]] [--precision fp32|bf16] [--reps N]\n",
               why.c_str());
  std::exit(2);
}

int64_t parse_int(const char* flag, const std::string& v, int64_t lo, int64_t hi) {
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end || n < lo || n > hi)
    usage(std::string(flag) + " '" + v + "' is not a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  int threads = 2;
  int64_t tokens = 8192;
  int reps_override = 0;
  std::string only, device_name = "cpu", precision = "fp32";
  std::vector<int64_t> contexts;
  for (int i = 1; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage(flag + " needs a value");
    const std::string v = argv[i + 1];
    if (flag == "--threads") threads = static_cast<int>(parse_int("--threads", v, 1, 1024));
    else if (flag == "--tokens") tokens = parse_int("--tokens", v, 1, int64_t{1} << 30);
    else if (flag == "--only") only = v;
    else if (flag == "--device") device_name = v;
    else if (flag == "--precision") precision = v;
    else if (flag == "--reps") reps_override = static_cast<int>(parse_int("--reps", v, 1, 1000));
    else if (flag == "--context") {
      size_t p = 0;
      while (p <= v.size()) {
        const size_t q = std::min(v.find(',', p), v.size());
        const int64_t T = parse_int("--context", v.substr(p, q - p), 8, 65536);
        if (T % 8) usage("--context " + std::to_string(T) + " is not a multiple of 8 (DSA takes k = T/8)");
        contexts.push_back(T);
        p = q + 1;
      }
    } else usage("unknown option " + flag);
  }
  if (!only.empty() && only != "mamba3" && only != "dsa") usage("--only '" + only + "' is not mamba3 or dsa");
  if (precision != "fp32" && precision != "bf16") usage("--precision '" + precision + "' is not fp32 or bf16");
  if (device_name != "cpu" && device_name != "cuda") usage("--device '" + device_name + "' is not cpu or cuda");
  const torch::Device dev = device::resolve(device_name);  // fails in one line when cuda is absent
  const bool bf16 = precision == "bf16";
  at::set_num_threads(threads);
  torch::manual_seed(0);
  ModelConfig c;
  c.d_model = 256;
  c.n_head = 4;
  c.head_dim = 64;
  c.context = 4096;
  for (int64_t T : contexts) c.context = std::max(c.context, T);
  std::printf("one layer, d_model %lld, fwd+bwd, %lld tokens per batch, %d threads, %s, device %s (%s)\n",
              (long long)c.d_model, (long long)tokens, threads, precision.c_str(), dev.str().c_str(),
              device::describe().c_str());
  std::printf("%-8s %-6s %14s %14s %8s\n", "context", "batch", "attention tok/s", "mamba3 tok/s", "ratio");
  CausalSelfAttentionImpl attn(c);
  Mamba3MixerImpl mamba(Mamba3Options::from(row("mamba3"), c));
  {
    torch::NoGradGuard ng;  // non-zero output projections, so backward does real work
    attn.c_proj->weight.normal_(0, 0.02);
    for (auto& p : mamba.parameters()) p.add_(torch::randn_like(p) * 0.01);
  }
  attn.to(dev);
  mamba.to(dev);
  auto [cos_cpu, sin_cpu] = rope_tables(c.context, c.head_dim, c.rope_base);
  const torch::Tensor cos = cos_cpu.to(dev), sin = sin_cpu.to(dev);
  auto input = [&](int64_t B, int64_t T) {
    return torch::randn({B, T, c.d_model}, torch::TensorOptions().device(dev).requires_grad(true));
  };
  const std::vector<int64_t> mamba_contexts = contexts.empty() ? std::vector<int64_t>{256, 512, 1024, 2048, 4096} : contexts;
  const std::vector<int64_t> dsa_contexts = contexts.empty() ? std::vector<int64_t>{1024, 2048, 4096} : contexts;
  for (int64_t T : mamba_contexts) {
    if (only == "dsa") break;
    const int64_t B = std::max<int64_t>(1, tokens / T);
    auto x = input(B, T);
    Ctx ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    const int reps = reps_override ? reps_override : T >= 2048 ? 3 : 5;
    const double ta = time_fb([&] { return attn.forward(x, ctx); }, reps, dev, bf16);
    const double tm = time_fb([&] { return mamba.forward(x, ctx); }, reps, dev, bf16);
    std::printf("%-8lld %-6lld %14.0f %14.0f %7.2fx\n", (long long)T, (long long)B, B * T / ta, B * T / tm, ta / tm);
    std::fflush(stdout);
  }
  std::printf("\n%-8s %-6s %-6s %14s %14s %10s\n", "context", "batch", "k", "dense ms", "dsa ms", "dsa/dense");
  for (int64_t T : dsa_contexts) {
    if (only == "mamba3") break;
    const int64_t B = std::max<int64_t>(1, tokens / T);
    const int64_t k = T / 8, window = std::min<int64_t>(128, k);  // 128 at every default context (k >= 128 from 1024 on)
    const DsaOptions o = DsaOptions::from(
        row("dsa", {{"topk", std::to_string(k)}, {"window", std::to_string(window)}, {"path", "sparse"}, {"warmup_steps", "0"}}),
        T, /*layer=*/0);
    DsaAttentionImpl dsa(c, o);
    {
      torch::NoGradGuard ng;
      dsa.c_proj->weight.normal_(0, 0.02);
    }
    dsa.to(dev);
    auto x = input(B, T);
    Ctx ctx;
    ctx.cos = cos;
    ctx.sin = sin;
    ctx.training = true;
    ctx.step = 1;  // past the (zero) warm-up: the sparse stage
    const int reps = reps_override ? reps_override : 3;
    const double td = time_fb([&] { return attn.forward(x, ctx); }, reps, dev, bf16);
    const double ts = time_fb([&] {
      Ctx c2 = ctx;
      auto y = dsa.forward(x, c2);
      for (auto& a : c2.aux) y = y + 0 * a.value;  // the indexer's KL is part of the step
      return y;
    }, reps, dev, bf16);
    std::printf("%-8lld %-6lld %-6lld %14.3f %14.3f %9.2fx\n", (long long)T, (long long)B, (long long)o.topk, 1000 * td,
                1000 * ts, ts / td);
    std::fflush(stdout);
  }
  return 0;
}
