// Tensor parallelism as Megatron-LM splits a transformer block: attention's q, k, v projections are
// column-parallel (each rank holds H / tp heads) and its output projection row-parallel; the MLP's
// up projection column-parallel and its down projection row-parallel. Embeddings, norms, the head and
// everything outside the blocks' linears stay replicated. Per block, one all-reduce after attention
// and one after the MLP in the forward pass (g), and one each on the way back into them (f).
//
// The group is what the model knows of the collectives: two functions, so that model code never
// includes c10d (the trainer builds them on its process group, tests on threads).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

namespace slm {

struct TpGroup {
  int rank = 0, size = 1;
  std::function<void(torch::Tensor&)> all_reduce_sum;                    // in place, contiguous
  std::function<std::vector<torch::Tensor>(const torch::Tensor&)> all_gather;  // every rank's, rank order
};
using TpGroupPtr = std::shared_ptr<const TpGroup>;

// Megatron's f: the identity forward; backward, the input gradient summed over the group (each rank
// saw only its heads' or hidden units' share of it). At the input of column-parallel linears.
torch::Tensor tp_copy_in(const torch::Tensor& x, const TpGroupPtr& g);
// Megatron's g: the partial outputs summed over the group forward (in fp32); backward, the identity.
// After row-parallel linears.
torch::Tensor tp_reduce_out(const torch::Tensor& x, const TpGroupPtr& g);
// This rank's contiguous 1/size of t along dim (a copy); t.size(dim) must divide.
torch::Tensor tp_shard(const torch::Tensor& t, int64_t dim, const TpGroup& g);
// The whole tensor from every rank's shard along dim. Collective: every rank of the group calls it.
torch::Tensor tp_unshard(const torch::Tensor& shard, int64_t dim, const TpGroup& g);

}  // namespace slm
