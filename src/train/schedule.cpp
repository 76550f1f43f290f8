#include "train/schedule.h"

#include <cmath>
#include <vector>

#include "model/gpt.h"

namespace slm {

double lr_factor(const Substrate& s, int64_t step) {
  if (s.warmup_steps > 0 && step < s.warmup_steps) return static_cast<double>(step + 1) / s.warmup_steps;
  const double warmdown = std::round(s.warmdown_frac * s.steps);
  const double left = static_cast<double>(s.steps - step);
  if (warmdown > 0 && left <= warmdown) return s.final_lr_frac + (1.0 - s.final_lr_frac) * (left / warmdown);
  return 1.0;
}

torch::Tensor clip_grad_norm(GPTImpl& model, double max_norm, const std::function<void(torch::Tensor&)>& sum_shards) {
  torch::NoGradGuard ng;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(model.wte->weight.device());
  std::vector<torch::Tensor> sq, sq_shards;
  for (auto& p : model.named_parameters()) {
    if (!p.value().grad().defined()) continue;
    auto split = model.tp_splits.find(p.key());
    if (split == model.tp_splits.end()) sq.push_back(p.value().grad().to(torch::kFloat32).pow(2).sum());
    else sq_shards.push_back(tp_counted(p.value().grad(), split->second, *model.tp).to(torch::kFloat32).pow(2).sum());
  }
  auto total = torch::stack(sq).sum().to(torch::kFloat64);
  if (sum_shards) {
    auto t = (sq_shards.empty() ? torch::zeros({}, f64) : torch::stack(sq_shards).sum().to(torch::kFloat64))
                 .reshape({1})
                 .contiguous();
    sum_shards(t);
    total = total + t[0];
  }
  auto norm = total.sqrt();
  if (max_norm > 0) {
    // (a division, not Tensor's scalar / tensor, which multiplies by a reciprocal)
    auto coef = torch::where(norm > max_norm, torch::full({}, max_norm, f64).div(norm + 1e-6), torch::ones({}, f64));
    for (auto& p : model.parameters())
      if (p.grad().defined()) p.mutable_grad().mul_(coef);
  }
  return norm;
}

}  // namespace slm
