// The catalog row of mHC (docs/modules.md section 3; docs/decisions.md row "mHC"; model side in
// model/mhc.{h,cpp}): the paper's per-token form, n residual streams expanded once and collapsed once.
#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_mhc() {
  static const ModuleSpec s{
      "mhc",
      Tier::Training,
      "residual",
      "manifold-constrained hyper-connections: n residual streams (expanded after the embedding, summed before "
      "the head); per token, each sub-layer reads them through sigmoid H_pre, writes through 2 sigmoid H_post and "
      "mixes them by a doubly stochastic H_res (Sinkhorn, fp32)",
      "residual memory x n; per sub-layer n C (n^2 + 2n) matrix params (phi) and ~6 (n + 1)(n^2 + 2n) C "
      "flops/token, plus Sinkhorn (~18 n^2 per iteration)",
      {
          {"streams", ParamType::Int, "4", 1, 16, "residual streams n (the paper: 4; 1 = a plain residual with gates)"},
          {"sinkhorn_iters", ParamType::Int, "20", 1, 100, "Sinkhorn-Knopp iterations t_max (the paper: 20)"},
          {"alpha", ParamType::Float, "0.01", 0, 1, "initial gating factor of the dynamic (per-token) part (the paper: 0.01)"},
      },
      nullptr,  // the ranges are the constraints; apply_mhc refuses a layer another module wraps
      nullptr,
      "",  // the defaults fit the tiny geometry
      &every_layer,  // the layers it wraps: one wrapper per layer (catalog::check)
      // Tensor parallel: the stream maps and Sinkhorn replicated (the same on every rank), the wrapped
      // blocks split as usual. Tested at tp 2, the article's (Dist/TensorParallelModule).
      2,
  };
  return s;
}

}  // namespace slm::catalog
