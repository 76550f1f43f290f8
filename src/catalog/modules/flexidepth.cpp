// The catalog row of FlexiDepth (docs/modules.md section 8; model side in model/flexidepth.{h,cpp}):
// a per-token router per layer between the full block and a light adapter.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_flexidepth(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  check_layers(a, m, "every layer", e);
  if (m.d_model > 0 && a.i64("adapter_hidden") > 4 * m.d_model)
    e.push_back("adapter_hidden " + std::to_string(a.i64("adapter_hidden")) + " is wider than the dense MLP (" +
                std::to_string(4 * m.d_model) + "); the adapter is the light path, so use at most " +
                std::to_string(4 * m.d_model));
  return e;
}

}  // namespace

const ModuleSpec& spec_flexidepth() {
  static const ModuleSpec s{
      "flexidepth",
      Tier::Training,
      "depth",
      "FlexiDepth: per layer a router G = sigmoid(w . norm(x) + b) per token; G > tau takes the full block "
      "scaled by G, else a small ReLU^2 adapter scaled by 1 - G; skip loss alpha mean_t (sum_layers G)^2. "
      "Deviation: the paper freezes the base and trains router + adapter; here the base trains too (from-scratch "
      "ablations). The block runs for every token and is masked (K/V of skipped tokens kept): no compute saved",
      "per wrapped layer C + 1 router and 2 C h adapter params, ~6 (C + 2 C h) flops/token; no FLOPs saved "
      "(the full block runs for every token and is masked)",
      {
          {"layers", ParamType::IntList, "", 0, 1023, "layers to wrap; empty = every layer"},
          {"tau", ParamType::Float, "0.5", 0, 0.999, "router threshold: G > tau takes the full block (the paper: 0.5)"},
          {"alpha", ParamType::Float, "0.0001", 0, 1,
           "skip-loss weight on mean_t (sum of G over layers)^2 (the paper: 1e-4, then 1e-5); 0 = off"},
          {"adapter_hidden", ParamType::Int, "16", 1, 1 << 16, "hidden width of the light adapter"},
          {"router_bias", ParamType::Float, "1.0", -20, 20,
           "router bias init (1: G = 0.73, every token starts on the full path at tau 0.5)"},
      },
      &check_flexidepth,
      nullptr,
      // Router near 0.5 so some tokens of the tiny batch take each path (the adapter gets gradient).
      "router_bias=0,adapter_hidden=8,alpha=0.01",
      &listed_or_every_layer,  // the layers it wraps: one wrapper per layer (catalog::check)
      2,  // tensor parallel: router and adapter replicated (same routing on every rank), blocks split
  };
  return s;
}

}  // namespace slm::catalog
