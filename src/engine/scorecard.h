// Scorecards: what a plan's runs say, under the rules of docs/decisions.md, from the ledger alone.
// - One comparison per substrate id: runs on another substrate form their own labeled group and
//   never enter a delta.
// - The number that counts for a run is its best val_bpb with the step it was reached at; a best
//   point recorded inside a loss spike is refused and the best point outside one is used, saying so.
// - INVALID runs (automatic or manual) stay in the table with their reason and are excluded from
//   every mean, noise estimate and verdict; so are provisional runs (step time above the rule's
//   factor x the phase median) and unfinished ones.
// - Verdict per experiment against its base: the gain must exceed k x the noise of a difference
//   of means (pooled seed sd x sqrt(1/n + 1/n_base)) to count; keep also needs the minimum
//   relative delta, park is a real gain below it, drop a real loss, inconclusive everything else.
// - Compile rates pool each counted run's latest evaluated checkpoint outside a loss spike; an
//   evaluation of a checkpoint saved inside one is shown, marked, and never pooled.
// - Runs from different code (code ids: a hash of the training sources of the binary) are not
//   compared: a verdict whose runs or base runs span two builds is inconclusive, "mixed code",
//   unless the plan's rule sets allow_mixed_code (shown in the rule line).
// - Stacking: for an experiment of two or more modules, the sum of each module's measured marginal
//   effect (from experiments that add exactly that module to a subset) beside the measured delta.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/ledger.h"
#include "engine/plan.h"

namespace slm::engine {

// What a scorecard needs of a plan; saved into the ledger as JSON by `ablate` (engine/report.h).
struct PlanInfo {
  struct Exp {
    std::string id, phase, base, notes;
    std::vector<std::string> modules;  // effective modules as "name.k=v,..." (base's included)
    std::vector<std::string> names;    // their names
    std::vector<int64_t> seeds;
  };
  std::string name, description, substrate;
  DecisionRule rule;
  std::vector<std::string> phases;
  std::vector<Exp> experiments;
  const Exp* find(const std::string& id) const;
};
struct RunView {
  RunRow row;
  std::vector<EvalPoint> evals;
  double value = 0;         // best val_bpb outside a loss spike (NaN when none)
  int64_t value_step = -1;
  std::string note;         // why `value` is not the recorded best, when it is not
  bool provisional = false;
  double step_ratio = 0;    // step time / phase median
  bool counted = false;     // done, valid, not provisional, has a value: enters means and verdicts
  std::vector<CompileEval> compiles;  // compile-rate evaluations of its checkpoints
};

struct Card {
  std::string id, phase, base, notes;
  std::vector<std::string> modules;
  std::vector<RunView> runs;
  int n = 0;                  // counted runs
  double mean = 0, sd = 0;    // over counted runs (NaN when n = 0; sd NaN when n < 2)
  double delta = 0, delta_pct = 0;  // vs base (NaN without one)
  std::string verdict;        // reference, keep, park, drop, inconclusive, pending
  std::string evidence;
  double predicted_pct = 0, measured_pct = 0;  // stacking, vs the plan's baseline (NaN when not applicable)
  std::string predicted_from;
  // Compile rate pooled over the counted runs' latest evaluated checkpoint (mode complete, else fim).
  int64_t compile_n = 0, compile_k = 0;
  double compile_lo = 0, compile_hi = 1;
  std::string compile_mode;
  int compile_spiked = 0;     // counted runs with a compile eval of a checkpoint inside a loss spike (never pooled)
};

struct Group {
  std::string substrate_id, data_fingerprint;  // "" for runs that have not reported yet
  double noise_sd = 0;                          // pooled sd of seed replicas (NaN when unmeasured)
  int noise_runs = 0, noise_experiments = 0;
  std::vector<std::string> code_ids;            // distinct code ids of its counted runs (engine: version.h)
  std::vector<Card> cards;
};

struct Scorecard {
  PlanInfo plan;
  std::vector<Group> groups;  // the largest group first
};

// Applies every rule above. `evals` maps run_id to its eval points.
Scorecard build_scorecard(const PlanInfo& plan, const std::vector<RunRow>& runs,
                          const std::map<std::string, std::vector<EvalPoint>>& evals,
                          const std::map<std::string, std::vector<CompileEval>>& compiles = {});

// A figure as every scorecard writes it: fixed decimals, "-" when not finite.
std::string fixed_text(double x, int prec = 4);
// A signed percentage, "+1.25%"; "-" when not finite.
std::string pct_text(double x, int prec = 2);

}  // namespace slm::engine
