// The output head fused with the logit softcap and the cross entropy: logits are produced and
// consumed chunk by chunk, so the full (N, V) fp32 logits, their softcapped copy and the autograd
// graph over them never exist. In training the gradient w.r.t. the logits is computed during the
// forward pass (the loss is the last op), which removes the second pass over the logits.
#pragma once
#include <torch/torch.h>

namespace slm {

// Mean over N of the per-token nats of softcap(h W^T) against targets. h: (N, C), w: (V, C),
// targets: (N) int64. `compute` is the matmul dtype (bf16 under mixed precision). Differentiable
// w.r.t. h and w; must be the final loss (its gradient is computed eagerly).
torch::Tensor fused_linear_ce_mean(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets,
                                   double softcap, torch::ScalarType compute);

// Per-token nats (N), fp32, without gradient: the evaluation path.
torch::Tensor linear_ce_nats(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets, double softcap,
                             torch::ScalarType compute);

// The row kernel, exposed for tests: z (n, V) fp32 logits in, per-row nats out; when `grad_scale` != 0,
// z is overwritten with d(loss)/dz where loss = grad_scale * sum(nats).
void softcap_ce_rows(float* z, int64_t n, int64_t V, const int64_t* targets, double softcap, double grad_scale,
                     float* nats);
// The row kernel in tensor ops, for memory the host cannot read (CUDA): z (n, V) fp32 and targets (n)
// int64 on any device; returns the nats (n) and overwrites z with the gradient when grad_scale != 0.
torch::Tensor softcap_ce_rows_ops(torch::Tensor& z, const torch::Tensor& targets, double softcap, double grad_scale);

}  // namespace slm
