#include "model/tp.h"

#include <algorithm>

#include "common/error.h"

namespace slm {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The group travels through autograd as a raw pointer: the model that owns the shared_ptr outlives
// every graph it builds.
const TpGroup& group_of(AutogradContext* ctx) {
  return *reinterpret_cast<const TpGroup*>(ctx->saved_data["group"].toInt());
}

torch::Tensor summed(const torch::Tensor& x, const TpGroup& g) {
  // fp32 (fp64 stays fp64, for reference tests): Gloo's bf16 support varies by version
  auto y = x.to(x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32).contiguous().clone();
  g.all_reduce_sum(y);
  return y.to(x.scalar_type());
}

struct CopyIn : torch::autograd::Function<CopyIn> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return x.clone();  // a new tensor, not the input: autograd then needs no view bookkeeping
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {summed(grads[0], group_of(ctx)), torch::Tensor()};
  }
};

struct ReduceOut : torch::autograd::Function<ReduceOut> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, int64_t group) {
    return summed(x, *reinterpret_cast<const TpGroup*>(group));
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], torch::Tensor()}; }
};

int64_t handle(const TpGroupPtr& g) { return reinterpret_cast<int64_t>(g.get()); }

}  // namespace

torch::Tensor tp_copy_in(const torch::Tensor& x, const TpGroupPtr& g) {
  if (!g || g->size == 1) return x;
  return CopyIn::apply(x, handle(g));
}

torch::Tensor tp_reduce_out(const torch::Tensor& x, const TpGroupPtr& g) {
  if (!g || g->size == 1) return x;
  return ReduceOut::apply(x, handle(g));
}

torch::Tensor tp_shard(const torch::Tensor& t, int64_t dim, const TpGroup& g) {
  SLM_CHECK(t.size(dim) % g.size == 0, "[tp] a tensor of shape ", t.sizes(), " does not split into ", g.size,
            " equal shards along dim ", dim, "; use a tp that divides it");
  const int64_t n = t.size(dim) / g.size;
  return t.narrow(dim, g.rank * n, n).clone();
}

torch::Tensor tp_unshard(const torch::Tensor& shard, int64_t dim, const TpGroup& g) {
  if (g.size == 1) return shard;
  return torch::cat(g.all_gather(shard.contiguous()), dim);
}

namespace {
torch::Tensor index_of(const std::vector<int64_t>& rows) {
  return torch::tensor(rows, torch::kInt64);
}
void check_rows(const TpSplit& s, const TpGroup& g) {
  SLM_CHECK(static_cast<int>(s.rows.size()) == g.size, "[tp] internal: a split lists rows for ", s.rows.size(),
            " ranks and the group has ", g.size);
}
}  // namespace

torch::Tensor tp_shard(const torch::Tensor& t, const TpSplit& s, const TpGroup& g) {
  if (s.rows.empty()) return tp_shard(t, s.dim, g);
  check_rows(s, g);
  return t.index_select(s.dim, index_of(s.rows[g.rank]).to(t.device())).clone();
}

torch::Tensor tp_unshard(const torch::Tensor& shard, const TpSplit& s, const TpGroup& g) {
  if (s.rows.empty()) return tp_unshard(shard, s.dim, g);
  check_rows(s, g);
  auto parts = g.all_gather(shard.contiguous());
  int64_t n = 0;
  for (auto& r : s.rows)
    for (int64_t i : r) n = std::max(n, i + 1);
  auto sizes = shard.sizes().vec();
  sizes[s.dim] = n;
  auto whole = torch::zeros(sizes, shard.options());
  for (int r = g.size - 1; r >= 0; --r)  // lowest rank last: its copy of a replicated row wins
    whole.index_copy_(s.dim, index_of(s.rows[r]).to(shard.device()), parts[r]);
  return whole;
}

torch::Tensor tp_counted(const torch::Tensor& shard, const TpSplit& s, const TpGroup& g) {
  if (s.rows.empty()) return shard;
  check_rows(s, g);
  std::vector<int64_t> own;
  for (size_t i = 0; i < s.rows[g.rank].size(); ++i) {
    bool lower = false;
    for (int r = 0; r < g.rank && !lower; ++r)
      lower = std::find(s.rows[r].begin(), s.rows[r].end(), s.rows[g.rank][i]) != s.rows[r].end();
    if (!lower) own.push_back(static_cast<int64_t>(i));
  }
  return shard.index_select(s.dim, index_of(own).to(shard.device()));
}

}  // namespace slm
