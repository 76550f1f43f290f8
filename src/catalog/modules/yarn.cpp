// YaRN's catalog row: Tier 3 (inference lane), used by `slmlab eval bpb --context N --module yarn`
// and by generation at a longer context than trained; never part of a training ablation.
#include "catalog/modules.h"

namespace slm::catalog {

namespace {
std::vector<std::string> check_yarn(const ModuleArgs& a, const ModelView&) {
  std::vector<std::string> e;
  if (a.f64("beta_fast") <= a.f64("beta_slow"))
    e.push_back("beta_fast (" + value_text(a.values.at("beta_fast")) + ") must exceed beta_slow (" +
                value_text(a.values.at("beta_slow")) + ")");
  return e;
}
}  // namespace

const ModuleSpec& spec_yarn() {
  static const ModuleSpec s{
      "yarn",
      Tier::Inference,
      "inference",
      "YaRN RoPE scaling: run at a longer context than trained (frequency ramp + attention temperature)",
      "free: new RoPE tables once; one multiply on q per attention layer",
      {
          {"scale", ParamType::Float, "0", 0, 1024, "s = new context / trained context; 0 = from the evaluation context"},
          {"beta_fast", ParamType::Float, "32", 1e-3, 1e6, "rotations over the trained context above which a pair is kept"},
          {"beta_slow", ParamType::Float, "1", 1e-3, 1e6, "rotations below which a pair is fully interpolated by 1/s"},
          {"mscale", ParamType::Bool, "true", 0, 0, "multiply attention logits by (0.1 ln s + 1)^2"},
      },
      check_yarn,
  };
  return s;
}

}  // namespace slm::catalog
