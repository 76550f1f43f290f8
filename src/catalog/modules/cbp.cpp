// The catalog row of continual backprop (docs/modules.md section 14; model side in
// model/cbp.{h,cpp}): its parameters and their constraints.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_cbp(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  if (a.f64("rate") <= 0)
    e.push_back("rate " + value_text(a.f64("rate")) +
                " replaces no unit, so cbp would be the plain MLP; use the paper's 1e-4 or drop cbp");
  if (a.f64("decay") >= 1)
    e.push_back("decay " + value_text(a.f64("decay")) + " never lets a utility change; use the paper's 0.99");
  check_layers(a, m, "every layer", e);
  return e;
}

}  // namespace

const ModuleSpec& spec_cbp() {
  static const ModuleSpec s{
      "cbp",
      Tier::Training,
      "plasticity",
      "continual backprop: tracks each MLP hidden unit's contribution utility (|activation| x sum |outgoing "
      "weights|, running average) and age; after each optimizer step re-initializes the lowest-utility mature "
      "units (fresh input weights, zero outgoing weights, optimizer state of those rows reset)",
      "no parameters; per token +1 add per hidden unit (the utility's sum); per step ~H C on each cbp layer for "
      "the outgoing-weight sums, plus the redraw of the units replaced",
      {
          {"layers", ParamType::IntList, "", 0, 1023, "layers whose MLP is tracked and renewed; empty = every layer"},
          {"rate", ParamType::Float, "0.0001", 0, 1,
           "replacements per eligible unit per step, accumulated until a whole unit is due (the paper: 1e-4..1e-5)"},
          {"maturity", ParamType::Int, "100", 0, 1000000000,
           "a unit is eligible once its age exceeds this many steps (the paper: 100)"},
          {"decay", ParamType::Float, "0.99", 0, 1, "eta, the utility's running-average decay, below 1 (the paper: 0.99)"},
          {"every", ParamType::Int, "1", 1, 1000000,
           "replace on steps divisible by this; utilities and ages update every step and the count due accumulates"},
      },
      check_cbp,
      nullptr,
      "rate=0.05,maturity=2",
      nullptr,
      // Tensor parallel: split as the relu2 MLP (hidden units over the ranks); utilities and ages stay
      // whole on every rank (the shards' sums gathered), so every shard ranks and replaces the same units.
      0,
  };
  return s;
}

}  // namespace slm::catalog
