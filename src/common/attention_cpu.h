// Fused causal attention for the CPU (LibTorch 1.13 has no fused kernel; device::attention uses this
// where it is on, see device.h): FlashAttention-2 style, blocked over queries and keys with an online
// softmax in fp32, causal blocks above the diagonal skipped, no T x T tensor (the mask, when given, is
// read where a block needs it). Backward recomputes each block's probabilities from the saved
// log-sum-exp. Parallel over batch x heads; each (b, h) is one task writing only its own rows, so the
// bits do not depend on the thread count.
#pragma once
#include <torch/torch.h>

namespace slm::device {

// softmax(q k^T / sqrt(D) masked) v, differentiable in q, k and v. q, k, v: (B, H, T, D) on the CPU,
// any float dtype (computed in fp32; the result has the dtype a matmul would give here: bf16 inside
// autocast, else v's). allowed: undefined (causal) or a (B or 1, 1, T, T) bool tensor, true where a
// query may attend. A query that may attend to nothing gets zeros (the math path gives NaN).
torch::Tensor attention_fused_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& allowed);
// Whether attention_fused_cpu takes these arguments (CPU tensors, equal T for q and k, the mask's shape).
bool attention_fused_cpu_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& allowed);

}  // namespace slm::device
