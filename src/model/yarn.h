// YaRN (Peng et al., arXiv 2309.00071): RoPE scaling for running at a longer context than trained.
// Per rotary pair i (frequency theta_i = b^(-2i/D)), the ramp index boundaries come from rotation
// counts over the original context L, as in DeepSeek's code:
//   idx(r) = D ln(L / (2 pi r)) / (2 ln b),  low = floor(idx(beta_fast)),  high = ceil(idx(beta_slow))
//   smooth_i = 1 - clamp((i - low) / (high - low), 0, 1)
//   theta'_i = theta_i / s * (1 - smooth_i) + theta_i * smooth_i
// so pairs below `low` (fast, many rotations) are unchanged and pairs above `high` are interpolated
// by 1/s. Attention logits are multiplied by mscale^2, mscale = 0.1 ln s + 1 (the temperature).
// With s = 1 everything is exactly RoPE. Inference lane only: evaluation and generation.
#pragma once
#include <torch/torch.h>

#include <utility>

namespace slm {

struct YarnConfig {
  double scale = 1.0;               // s = new context / original context
  int64_t original_context = 0;     // L, the context the model was trained at
  double beta_fast = 32.0;          // rotations above which a pair is left alone
  double beta_slow = 1.0;           // rotations below which a pair is fully interpolated
  bool mscale = true;               // apply the attention temperature
};

// The ramp boundaries (pair indices) for head dim D and RoPE base b; high > low always.
std::pair<int64_t, int64_t> yarn_bounds(int64_t head_dim, double base, const YarnConfig& y);
// Per-pair frequencies (D/2) in fp64, scaled.
torch::Tensor yarn_inv_freq(int64_t head_dim, double base, const YarnConfig& y);
// Tables (T, D/2) like rope_tables(), from the scaled frequencies.
std::pair<torch::Tensor, torch::Tensor> yarn_rope_tables(int64_t T, int64_t head_dim, double base, const YarnConfig& y);
// The factor on attention logits: (0.1 ln s + 1)^2 for s > 1, else 1.
double yarn_logit_scale(const YarnConfig& y);

}  // namespace slm
