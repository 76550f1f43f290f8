// ADEPT-style early exit's catalog row: Tier 3 (inference lane), `slmlab eval bpb|generate --module
// adept[.threshold=X]` (model/adept.h): per token and layer Continue or Exit by a documented rule (the
// layer's relative update below the threshold), skipped layers' K/V from the exit state; lossy,
// reported as val_bpb beside mean layers per token; never trained here.
#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_adept() {
  static const ModuleSpec s{
      "adept",
      Tier::Inference,
      "inference",
      "ADEPT-style token-level early exit in prefill and decode: a token leaves the stack after a layer that "
      "barely moved it (||x_l - x_{l-1}|| / ||x_{l-1}|| < threshold; a rule, not the paper's trained policy); "
      "the skipped layers' K/V come from its exit state; lossy (val_bpb beside mean layers per token)",
      "an exited token costs only the q/k/v projections of each skipped layer; 0 = every layer (exact)",
      {
          {"threshold", ParamType::Float, "0.3", 0, 10, "exit when a layer's relative update is below it; 0 = never"},
          {"min_layers", ParamType::Int, "1", 1, 1024, "layers every token runs before it may exit"},
      },
      nullptr,
  };
  return s;
}

}  // namespace slm::catalog
