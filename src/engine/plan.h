// Ablation plans (TOML): a name, a substrate, a decision rule, and phases of experiments. Each
// experiment has an id, an optional base (another experiment; its modules are inherited), modules
// with parameters, seeds (replicates) and notes. `slmlab plan check` validates everything that can
// be known before a step runs and lists every problem at once.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "train/substrate.h"

namespace slm::engine {

// A module keeps its place only when its improvement over its base is significant (Welch's t per
// comparison, at the two-sided rate k_noise implies for a normal: 2 P(Z > k), 4.55% at k = 2,
// corrected for repeated looks and, when asked, for the number of comparisons in the phase) and
// exceeds a minimum relative delta. Lower val_bpb is better. engine/scorecard.h has the details.
struct DecisionRule {
  std::string metric = "val_bpb";
  double k_noise = 2.0;
  std::string correction = "none";  // none | holm (family-wise rate) | bh (false-discovery rate), per phase
  int64_t max_seeds = 0;            // `ablate --decide` budget per experiment (0: no extra seeds, one look)
  bool unstable_decides = true;     // an unstable run (final worse than best by > the noise floor) still counts
  std::string compare_at = "steps";  // steps (best val_bpb) | compute (at equal training FLOPs, interpolated)
  int64_t compile_rate = 0;         // prompts of the FIM-mode compile rate scored at each finished run's best checkpoint, 0 = none
  // Parameter-matched controls (issue 21 section 2, engine/control.h): an experiment with more than
  // param_share more parameters than its base is flagged in its row; with param_control widen or
  // deepen it also gets a control arm, its base grown to the experiment's parameter count within
  // param_tolerance (relative), on a derived substrate of its own.
  double param_share = 0.10;
  std::string param_control = "none";  // none | widen (wider model, same depth) | deepen (more layers, same width)
  double param_tolerance = 0.05;
  double min_rel_delta = 0.005;     // 0.5%
  double provisional_factor = 3.0;  // step time above factor x the phase median: provisional
  int64_t max_retries = 2;          // a failed run is retried this often, then FAILED
  bool allow_mixed_code = false;    // let verdicts compare runs of different code ids (builds); logged
};

struct Experiment {
  std::string id, phase, base, notes;
  std::vector<int64_t> seeds;
  std::vector<catalog::ModuleArgs> modules;    // as written in this experiment
  std::vector<catalog::ModuleArgs> effective;  // base's effective modules + these (same name: these win)
  std::string param_control;                   // "" = the rule's; none | widen | deepen
  std::string control_of;                      // set on a parameter-matched control arm ablate added (engine/control.h)
};

// One rung of a scale ladder (issue 21 §4): a substrate of its own (pinned like any other) and the
// experiments it runs. A plan names rungs smallest first; the last is the target scale the smaller
// rungs are judged against (engine/ladder.h).
struct Rung {
  std::string ref;                       // as written: a name in substrates/ or a .toml path
  std::string name;                      // the substrate's name; its runs are <plan>/<name>/<experiment>/s<seed>
  Substrate substrate;
  std::vector<std::string> experiments;  // the experiments it runs, in plan order
};

struct Plan {
  std::string name, description, path, substrate_ref;
  Substrate substrate;        // a ladder's: its first rung's
  std::vector<Rung> ladder;   // empty unless the plan names `ladder = [...]` instead of `substrate`
  DecisionRule rule;
  std::vector<std::string> phases;
  std::map<std::string, std::string> phase_metrics;  // a phase's own [phases.rule] metric, when it names one
  std::vector<Experiment> experiments;  // in file order
  const Experiment* find(const std::string& id) const;
};

// The metrics a rule may decide on (eval/infill.h), for checks and messages.
const std::vector<std::string>& decision_metrics();
// A run's id, which is also its folder under --runs: "<plan>/<experiment>/s<seed>", with the rung's
// name after the plan's on a ladder ("" = no ladder).
std::string run_id(const std::string& plan, const std::string& rung, const std::string& experiment, int64_t seed);

// Parses and validates; on problems throws slm::Error whose message lists every one ("; "-joined)
// unless `errors` is given, in which case they are appended there and a best-effort plan returned.
// `substrate`, when not empty, replaces the plan's own (a name in substrates/ or a .toml path): the
// same experiments checked on another geometry and topology (`plan check --substrate`).
Plan load_plan(const std::string& path, std::vector<std::string>* errors = nullptr, const std::string& substrate = "");

// Plan names and experiment ids become folder names (runs/<plan>/<id>/s<seed>) and terminal text:
// "" when `name` is 1..kMaxNameLength characters of [A-Za-z0-9._-] not starting with '.' or '-',
// else a one-line problem naming it (control bytes escaped) and the allowed set. `kind` says what it
// is ("experiment id").
constexpr size_t kMaxNameLength = 64;
std::string name_problem(const std::string& kind, const std::string& name);
// The form two names must not share: case-folded, so `Base` and `base` do not share one folder on a
// case-insensitive file system.
std::string name_key(const std::string& name);

// The model geometry a substrate resolves to, as module constraints see it.
catalog::ModelView model_view(const Substrate& s);

}  // namespace slm::engine
