// What happens to rates and gradients at every step: the learning-rate schedule and the clipping
// of the global gradient norm.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>

#include "train/substrate.h"

namespace slm {

struct GPTImpl;

// Learning-rate multiplier of optimizer step `step` (0-based): linear warmup over warmup_steps
// ((step + 1) / warmup_steps), then 1, then a linear warmdown over the last round(warmdown_frac x
// steps) steps to final_lr_frac (at step s the factor is final + (1 - final) x (steps - s) / warmdown).
double lr_factor(const Substrate& s, int64_t step);

// The global norm of the model's gradients, fp64 on the device (no wait for it), and the gradients
// scaled in place to max_norm when it is larger (max_norm 0 = no clipping; a factor of exactly 1
// below the threshold and for a non-finite norm). Under tensor parallelism the squares of the
// sharded parameters (model.tp_splits; replicated rows of a split once, tp_counted) are summed over
// the TP group by `sum_shards` (a collective sum of a (1) fp64 tensor, in place); the replicated
// parameters count once.
torch::Tensor clip_grad_norm(GPTImpl& model, double max_norm,
                             const std::function<void(torch::Tensor&)>& sum_shards = nullptr);

}  // namespace slm
