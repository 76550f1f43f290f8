// Auxiliary objectives against the baseline: the step time of a full training step (model.loss +
// backward) of the cpu-tiny model (substrates/cpu-tiny.toml: geometry, context, device batch,
// precision rule) with and without TOP, with NCP, and with Jacobi forcing, side by side in one run.
// Jacobi forcing's cost varies with how fast the model's own trajectories converge (at most `block`
// forwards per block): the untrained model's tokens per forward is printed beside it. Steps interleave the
// variants, so load from other processes falls on all of them alike; the median is reported.
//   build/bench/bench_objectives [--threads N] [--steps N] [--vocab V]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/device.h"
#include "model/gpt.h"
#include "train/substrate.h"

using namespace slm;
using clk = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int threads = 2, steps = 9;
  int64_t vocab = 8192;  // the default data set's vocabulary (cpu-tiny takes it from the data set)
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) vocab = std::atoll(argv[i + 1]);
  }
  at::set_num_threads(threads);
  const Substrate sub = load_substrate("cpu-tiny");
  ModelConfig c;
  c.vocab = vocab;
  c.n_layer = sub.depth;
  c.d_model = sub.model_dim();
  c.head_dim = sub.head_dim;
  c.n_head = sub.n_head();
  c.context = sub.context;
  c.softcap = sub.softcap;
  c.doc_mask = sub.doc_mask;
  const torch::Device dev(torch::kCPU);
  std::string why;
  const bool bf16 = sub.precision == "bf16" || (sub.precision == "auto" && device::bf16_fast(dev, &why));
  const int64_t B = sub.device_batch, T = sub.context;
  std::printf("cpu-tiny: %lld x %lld, vocab %lld, batch %lld x %lld, %s, %d threads; model.loss + backward, median of %d "
              "interleaved steps\n",
              (long long)c.n_layer, (long long)c.d_model, (long long)vocab, (long long)B, (long long)T,
              bf16 ? "bf16 autocast" : "fp32", threads, steps);

  // One packed batch: random tokens, documents of 40 to 200 tokens laid end to end.
  torch::manual_seed(0);
  auto idx = torch::randint(0, vocab, {B, T + 1}, torch::kInt64);
  auto doc = torch::zeros({B, T}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 40 + (b * 37) % 160; t < T; t += 40 + (t * 13) % 160) doc.index({b, torch::indexing::Slice(t)}).add_(1);
  auto x = idx.slice(1, 0, T), y = idx.slice(1, 1);

  struct Variant {
    std::string name;  // the catalog module, or "baseline"
    GPT model{nullptr};
    std::vector<double> ms;
    double note = 0;  // Jacobi forcing: tokens per forward of its trajectories (last step)
  };
  std::vector<Variant> vs;
  for (const char* name : {"baseline", "top", "ncp", "jacobi_forcing"}) {
    ModelConfig mc = c;
    if (std::string(name) != "baseline") {
      std::vector<std::string> errs;
      mc.modules = {catalog::resolve_arg(name, errs)};  // the catalog's defaults
      if (!errs.empty()) {
        std::fprintf(stderr, "%s\n", errs[0].c_str());
        return 1;
      }
    }
    vs.push_back({name, GPT(mc), {}});
    vs.back().model->train();
  }
  for (int s = 0; s < steps + 2; ++s)  // 2 warm-ups
    for (auto& v : vs) {
      v.model->zero_grad();
      auto t0 = clk::now();
      device::set_autocast(dev, bf16);
      GPTImpl::Parts parts;
      auto loss = v.model->loss(x, y, doc, s, &parts);
      if (parts.stats.count("jacobi_forcing.tokens_per_forward")) v.note = parts.stats["jacobi_forcing.tokens_per_forward"];
      device::set_autocast(dev, false);
      loss.backward();
      device::clear_autocast_cache();
      if (s >= 2) v.ms.push_back(1000 * std::chrono::duration<double>(clk::now() - t0).count());
    }
  std::printf("%-14s %10s %10s %12s %14s\n", "variant", "ms/step", "vs base", "tok/s", "model MF/token");
  double base = 0;
  for (auto& v : vs) {
    std::sort(v.ms.begin(), v.ms.end());
    const double med = v.ms[v.ms.size() / 2];
    if (base == 0) base = med;
    std::printf("%-14s %10.1f %9.2fx %12.0f %14.2f", v.name.c_str(), med, med / base, B * T / (med / 1000),
                v.model->flops_per_token(T) / 1e6);
    if (v.note > 0) std::printf("   (trajectories: %.2f tokens per forward)", v.note);
    std::printf("\n");
  }
  return 0;
}
