#include "train/dry_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/device.h"
#include "common/format.h"
#include "data/loader.h"

namespace slm {

void print_dry_run_estimate(const DryRunInputs& in) {
  using clk = std::chrono::steady_clock;
  const Substrate& sub = in.sub;
  const int64_t row = sub.context + 1;
  data::Loader L(*in.ds, data::Split::Train, sub.context, sub.data_order_seed(), true);
  L.set_transforms(in.transforms);
  auto time_depth = [&](int64_t depth) {
    ModelConfig mc = in.model;
    mc.n_layer = depth;
    GPT m(mc);
    m->to(in.dev);
    std::vector<int32_t> tk(row), dc(row);
    L.next(tk.data(), dc.data());
    auto t = torch::from_blob(tk.data(), {1, row}, torch::kInt32).to(torch::kInt64).to(in.dev);
    auto d = torch::from_blob(dc.data(), {1, row}, torch::kInt32).to(torch::kInt64).to(in.dev);
    double best = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      auto t0 = clk::now();
      device::set_autocast(in.dev, in.bf16);
      auto loss = m->loss(t.slice(1, 0, sub.context), t.slice(1, 1, row), d.slice(1, 0, sub.context));
      device::set_autocast(in.dev, false);
      loss.backward();
      device::clear_autocast_cache();
      best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
    }
    return best;
  };
  const double t1 = time_depth(1), t2 = time_depth(2);
  const double per_layer = std::max(0.0, t2 - t1), fixed = std::max(0.0, t1 - per_layer);
  const double per_row = fixed + per_layer * sub.depth;
  const double rows_per_step = static_cast<double>(sub.total_batch) / sub.context;  // all ranks, all micro-batches
  const double per_step = per_row * rows_per_step;
  const double evals = sub.eval_every > 0 ? std::floor(double(sub.steps) / sub.eval_every) + 1 : 1;
  const double eval_s = per_row / 3.0 * std::ceil(double(sub.eval_tokens) / sub.context) * evals;
  const double flops_tok = in.flops_per_token, peak = in.peak_flops;
  std::printf("dry run: one row of %lld tokens, forward+backward: %.3f s fixed + %.3f s per layer (measured at depth 1 and 2)\n",
              (long long)sub.context, fixed, per_layer);
  std::printf("dry run: %.0f rows per step (%lld micro-batches x %lld rows x tp %lld x dp %lld ranks' work in one process) = %.1f s/step\n",
              rows_per_step, (long long)in.accum, (long long)sub.device_batch, (long long)sub.tp, (long long)sub.dp, per_step);
  std::printf("dry run: ETA on this machine: %s for %lld steps, plus ~%s of evaluation\n",
              human_duration(per_step * sub.steps).c_str(), (long long)sub.steps, human_duration(eval_s).c_str());
  std::printf("dry run: model FLOPs %.3g per token, %.3g per step; measured peak %.3g FLOP/s; implied MFU %.1f%%\n", flops_tok,
              flops_tok * sub.total_batch, peak, 100.0 * flops_tok * sub.context / per_row / peak);
}

}  // namespace slm
