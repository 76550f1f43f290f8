// Ring attention (context parallelism; Liu et al. 2023, "Ring Attention with Blockwise Transformers"):
// each of N ranks holds a block of the sequence's tokens; the key/value blocks travel around the
// ring, rank r -> r + 1, N - 1 times, and each rank accumulates its queries' softmax online (running
// max, running sum, rescaled output, in fp32), so no rank ever holds the whole sequence's keys or a
// T x T score matrix. Causal attention is load balanced by the zigzag layout: the sequence in 2N
// chunks, rank r holding chunks r and 2N - 1 - r, so every rank has as many early as late queries
// (the striped variant of Brandon et al. balances the same way). Positions and document ids travel
// with the keys, so causal and document masks are exact.
//
// The group is what the model knows of the collective: one function, so model code never includes
// c10d (dist::Comm builds it on its process group with Gloo's send/recv, tests on threads).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>

namespace slm {

struct RingGroup {
  int rank = 0, size = 1;
  // Sends t to rank + 1 (mod size) and returns what rank - 1 sent, same shape and dtype. Collective.
  std::function<torch::Tensor(const torch::Tensor&)> pass;
};
using RingGroupPtr = std::shared_ptr<const RingGroup>;

// Positions [0, T) held by `rank` of `size` under the zigzag layout: (T / size) int64, ascending.
// T must divide by 2 size.
torch::Tensor zigzag_positions(int64_t T, int rank, int size);
// This rank's tokens of x along dim (x.size(dim) = T, divisible by 2 size), in zigzag_positions order.
torch::Tensor zigzag_shard(const torch::Tensor& x, int64_t dim, int rank, int size);

// softmax(q k^T / sqrt(D)) v over every rank's keys that the query may see: key position <= query
// position, and (doc defined) the same document. q, k, v: (B, H, Tl, D) this rank's tokens at
// positions pos (Tl) int64; doc: (B, Tl) int64 document ids or undefined. Every rank holds the same
// Tl. Returns (B, H, Tl, D) in q's dtype. Collective: every rank of g calls it.
torch::Tensor ring_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& pos, const torch::Tensor& doc, const RingGroup& g);

}  // namespace slm
