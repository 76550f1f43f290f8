#include "model/tp.h"

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
  auto y = x.to(torch::kFloat32).contiguous().clone();  // fp32: Gloo's bf16 support varies by version
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

}  // namespace slm
