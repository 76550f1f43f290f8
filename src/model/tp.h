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
#include <map>
#include <memory>
#include <string>
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
// How a parameter is split along `dim`. Contiguous (rows empty): rank r holds the r-th 1/size of the
// whole. Otherwise rank r holds rows[r] of the whole, in that order; a row that several ranks hold is
// replicated (Mamba-3's in_proj keeps its heads' rows and every rank the rows of B and C), and its
// gradient must then be the same on each of them.
struct TpSplit {
  TpSplit(int64_t d = 0) : dim(d) {}  // NOLINT: implicit, a plain dim is the contiguous split
  int64_t dim = 0;
  std::vector<std::vector<int64_t>> rows;  // [rank] -> rows of the whole; empty = contiguous
};
using TpSplits = std::map<std::string, TpSplit>;  // parameter name -> its split

// This rank's contiguous 1/size of t along dim (a copy); t.size(dim) must divide.
torch::Tensor tp_shard(const torch::Tensor& t, int64_t dim, const TpGroup& g);
// The whole tensor from every rank's shard along dim. Collective: every rank of the group calls it.
torch::Tensor tp_unshard(const torch::Tensor& shard, int64_t dim, const TpGroup& g);
// The same for any TpSplit: this rank's rows of the whole (a copy), and the whole from every rank's
// shard (collective; a replicated row is taken from the lowest rank holding it).
torch::Tensor tp_shard(const torch::Tensor& t, const TpSplit& s, const TpGroup& g);
torch::Tensor tp_unshard(const torch::Tensor& shard, const TpSplit& s, const TpGroup& g);
// The part of a shard this rank counts in a sum over the whole (norms): all of it, less the replicated
// rows that a lower rank holds too, so that every row of the whole is counted once over the group.
torch::Tensor tp_counted(const torch::Tensor& shard, const TpSplit& s, const TpGroup& g);

}  // namespace slm
