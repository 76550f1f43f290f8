// Parameter-matched controls (issue 21 section 2). An experiment that adds parameters may win by
// size alone: its base grown to the same parameter count is the fairer comparison. With the plan's
// [rule] param_control = "widen" (or "deepen"; an experiment's own param_control overrides it), every
// experiment with more than param_share more parameters than its base gets a control arm: the
// base's modules on a derived substrate, the base's geometry widened (more heads of the same size,
// same depth) or deepened (more layers, same width) to the candidate whose parameter count is
// closest to the experiment's. Closest must be within param_tolerance (relative), else ablate
// refuses and names the nearest. The derived substrate is the base substrate with only that
// geometry changed, so its id is a function of the base's and differs from it: its runs form their
// own labeled group and never enter the base group's noise floor or verdicts. The arm's id is
// "<experiment>.<kind>", and the experiment's row shows its delta against it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "engine/plan.h"
#include "train/substrate.h"

namespace slm::engine {

// The parameter count of the model `s` builds with `mods` (s.vocab set).
using ParamCounter = std::function<int64_t(const Substrate& s, const std::vector<catalog::ModuleArgs>& mods)>;
// The real one: builds the model on the CPU and counts. Defined in engine/control_params.cpp (it
// needs LibTorch, so it lives in slmlab_core; the CLI hands it to ablate).
int64_t model_params(const Substrate& s, const std::vector<catalog::ModuleArgs>& mods);

struct ControlArm {
  std::string id, of, kind;       // "<of>.<kind>", the experiment it controls, widen | deepen
  Substrate substrate;            // the derived substrate (vocab as the base's: bound at run time)
  int64_t params = 0, target = 0, base_params = 0;
  double gap = 0;                 // (params - target) / target
  std::string geometry;           // "d_model 160 (5 heads of 32), depth 4"
  std::string describe() const;   // one line for notes and reports
};

// The geometry of `kind` grown from `base` (vocab set) running `mods` whose parameter count is
// closest to `target`; throws slm::Error naming the nearest when it is not within `tolerance`.
ControlArm match_params(const Substrate& base, const std::vector<catalog::ModuleArgs>& mods, int64_t target,
                        const std::string& kind, double tolerance, const ParamCounter& count);

// The share of parameters `e` adds over its base on the plan's substrate (vocab set), and the control
// it asks for: the experiment's param_control, else the rule's ("none" when it has no base).
double added_share(const Plan& plan, const Experiment& e, int64_t vocab, const ParamCounter& count);
std::string control_kind(const Plan& plan, const Experiment& e);

// Every control the plan asks for, checked (ids free and safe, geometry within tolerance); throws
// slm::Error listing every problem. `vocab`: the data set's.
std::vector<ControlArm> plan_controls(const Plan& plan, int64_t vocab, const ParamCounter& count);

// Adds each arm to the plan as an experiment of its experiment's phase (no base; the base's
// effective modules; the experiment's seeds; control_of set).
void add_controls(Plan& plan, const std::vector<ControlArm>& arms);

}  // namespace slm::engine
