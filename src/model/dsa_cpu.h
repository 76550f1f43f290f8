// DSA's sparse stage on CPU: loop kernels over each query's own K selected keys, in place of
// gathering (B, H, T, K, D) key and value tensors. The selection is shared by the heads, so a
// selected key's row of every head (H x D contiguous in the (B, T, H, D) layout) is read once per
// query; nothing of size K x D is materialized and nothing of size T x T exists.
//
// Deterministic for any thread count: each output element is computed by one thread in a fixed
// order. The keys' and values' gradients, which many queries contribute to, are summed per key
// through an inverse index (the queries that selected it, in query order), not scattered.
//
// Shapes: B batch rows, Tq queries, Tk keys (Tk > Tq in cached generation), H heads, D head dim,
// K selected keys per query. Tensors are contiguous fp32 or fp64 (the caller casts bf16).
#pragma once
#include <torch/torch.h>

#include <tuple>
#include <utility>

namespace slm::dsa_cpu {

// Attention of each query over its selected keys:
//   p_{t,h,j} = softmax_j(scale q_{t,h} . k_{idx(t,j),h}) over the entries with ok, 0 elsewhere
//   y_{t,h} = sum_j p_{t,h,j} v_{idx(t,j),h}
// q: (B, Tq, H, D); k, v: (B, Tk, H, D); idx: (B, Tq, K) int64 in [0, Tk); ok: (B, Tq, K) bool.
// Returns y: (B, Tq, H, D) and p: (B, Tq, H, K).
std::pair<torch::Tensor, torch::Tensor> attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, const torch::Tensor& idx,
                                                          const torch::Tensor& ok, double scale);

// Gradients of attention_forward for gy: (B, Tq, H, D), from its saved inputs and p.
// Returns dq, dk, dv in the shapes of q, k, v.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> attention_backward(
    const torch::Tensor& gy, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& idx, const torch::Tensor& ok, const torch::Tensor& p, double scale);

// The lightning indexer's score at the selected keys, with one key per position shared by its heads:
//   I_{t,j} = sum_h w_{t,h} ReLU(q_{t,h} . k_{idx(t,j)})
// q: (B, Tq, HI, DI); k: (B, Tk, DI); w: (B, Tq, HI); idx: (B, Tq, K). Returns (B, Tq, K).
torch::Tensor index_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& w,
                            const torch::Tensor& idx);

// Gradients of index_forward for g: (B, Tq, K). Returns dq, dk, dw in the shapes of q, k, w.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> index_backward(const torch::Tensor& g, const torch::Tensor& q,
                                                                       const torch::Tensor& k, const torch::Tensor& w,
                                                                       const torch::Tensor& idx);

// Top-k selection per query from its index scores, as DsaAttentionImpl::select defines it: the
// latest `window` visible keys always (query t at absolute position t0 + row, keys at positions
// [0, Tk)), then the highest-scoring visible keys, ties to the earliest key; rows with fewer than K
// visible keys are filled with the earliest invisible ones (valid false). Indices ascending, so the
// selection does not depend on how rows were cut (generation equals the whole sequence).
// scores: (B, n, Tk) float; visible: (B, n, Tk) bool. Returns idx (B, n, K) int64 and valid (B, n, K).
std::pair<torch::Tensor, torch::Tensor> select_topk(const torch::Tensor& scores, const torch::Tensor& visible,
                                                    int64_t K, int64_t window, int64_t t0);

// The same selection straight from the indexer's projections, scores and top-k fused per query row
// (nothing (B, n, HI, Tk) or (B, n, Tk) is materialized). q: (B, Tq, HI, DI); k: (B, Tk, DI);
// w: (B, Tq, HI); visible: (B, Tq, Tk) bool.
std::pair<torch::Tensor, torch::Tensor> index_select_topk(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& w, const torch::Tensor& visible,
                                                          int64_t K, int64_t window, int64_t t0);

}  // namespace slm::dsa_cpu
