// Jacobi decoding's catalog row: Tier 3 (inference lane), `slmlab generate --decode jacobi
// [--block N]` (model/generate.h); greedy's output, never part of a training ablation.
#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_jacobi_decode() {
  static const ModuleSpec s{
      "jacobi_decode",
      Tier::Inference,
      "inference",
      "Jacobi decoding: a block of draft tokens refined in parallel to greedy's fixed point (lossless)",
      "one forward over the block per iteration; >= 1 token per forward (more where the text is predictable)",
      {
          {"block", ParamType::Int, "8", 1, 1024, "draft tokens refined together per forward"},
      },
      nullptr,
  };
  return s;
}

}  // namespace slm::catalog
