// Scorecards: what a plan's runs say, under the rules of docs/decisions.md, from the ledger alone.
// - One comparison per substrate id: runs on another substrate form their own labeled group and
//   never enter a delta.
// - The number that counts for a run is its best val_bpb with the step it was reached at; a best
//   point recorded inside a loss spike is refused and the best point outside one is used, saying so.
// - INVALID runs (automatic or manual) stay in the table with their reason and are excluded from
//   every mean, noise estimate and verdict; so are provisional runs (step time above the rule's
//   factor x the phase median) and unfinished ones.
// - Verdict per experiment against its base: Welch's t on the two arms it compares, each with its
//   own seed variance (an arm with one counted run borrows the substrate's pooled seed sd, with the
//   pooled degrees of freedom), degrees of freedom by Welch-Satterthwaite. So one noisy arm widens
//   only its own comparisons, never the rest of its phase (issue 21 §3). The per-comparison
//   two-sided rate is the one k_noise implies for a normal, alpha = 2 P(Z > k) (4.55% at k = 2),
//   divided by the number of looks --decide may take (below); the phase's comparisons may then be
//   corrected together (rule correction: holm bounds the family-wise rate, bh the false-discovery
//   rate, none leaves each at alpha and the report states the family-wise rate that implies).
//   Decided: adjusted p < alpha. Keep also needs the minimum relative delta, park is a real gain
//   below it, drop a real loss, inconclusive everything else.
// - Repeated looks (`ablate --decide`): a plan whose rule has max_seeds M > n0 (n0: the fewest seeds
//   an experiment of the plan starts with) may be looked at after each of up to L = M - n0 + 1
//   waves. Every look tests at alpha / L (Bonferroni over looks, i.e. equal alpha spending): by the
//   union bound, the chance that a null comparison is ever called keep/park/drop over all L looks
//   is at most alpha whatever the dependence between looks. Conservative, but it needs no
//   simulation-calibrated boundary and holds for any M.
// - The rule's compare_at = "compute" takes the verdict at equal training FLOPs instead of equal
//   steps: each counted run's value is its eval curve at the equal-compute point (below), and the
//   same test runs on those; the evidence says so. Equal steps stays the default.
// - Stability: a counted run whose final val_bpb is worse than its best by more than the substrate's
//   pooled seed sd is unstable (flagged in its row); with the rule's unstable_decides = false it
//   leaves means and verdicts (the floor itself is measured before that exclusion).
// - Compile rates pool each counted run's latest evaluated checkpoint outside a loss spike; an
//   evaluation of a checkpoint saved inside one is shown, marked, and never pooled.
// - Runs from different code (code ids: a hash of the training sources of the binary) are not
//   compared: a verdict whose runs or base runs span two builds is inconclusive, "mixed code",
//   unless the plan's rule sets allow_mixed_code (shown in the rule line).
// - Stacking: for an experiment of two or more modules, the sum of each module's measured marginal
//   effect (from experiments that add exactly that module to a subset) beside the measured delta.
#pragma once
#include <cmath>
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
    std::string control_of;            // a parameter-matched control arm of that experiment (engine/control.h)
  };
  // A scale ladder's rungs, smallest first (empty for a plan on one substrate; engine/ladder.h).
  struct RungInfo {
    std::string name, substrate;           // the substrate's name (in its runs' ids) and its reference
    std::vector<std::string> experiments;  // the experiments it runs
  };
  std::string name, description, substrate;
  DecisionRule rule;
  std::vector<std::string> phases;
  std::map<std::string, std::string> phase_metrics;  // phases that decide on another metric than the rule's
  std::vector<Exp> experiments;
  std::vector<RungInfo> ladder;
  const Exp* find(const std::string& id) const;
  // The metric a phase decides on: its own [phases.rule] metric, else the rule's.
  const std::string& metric_of(const std::string& phase) const;
};
struct RunView {
  RunRow row;
  std::vector<EvalPoint> evals;
  double value = 0;         // best of the rule's metric (val_bpb unless the plan names another) outside a loss spike (NaN when none)
  std::map<std::string, double> bests;  // best outside a loss spike of every metric it recorded (val_bpb, fim_bpb, ...)
  int64_t value_step = -1;
  std::string note;         // why `value` is not the recorded best, when it is not
  bool provisional = false;
  double step_ratio = 0;    // step time / phase median
  bool counted = false;     // done, valid, not provisional, has a value: enters means and verdicts
  bool unstable = false;    // final val_bpb worse than `value` by more than the noise floor
  double drift = 0;         // final val_bpb - value (NaN when either is unknown)
  std::vector<CompileEval> compiles;  // compile-rate evaluations of its checkpoints
};

struct Card {
  std::string id, phase, base, notes;
  std::string metric;         // the metric its phase decides on: its mean, sd, delta and verdict are on it
  bool metric_named = false;  // its phase names it ([phases.rule]) and it is not the plan's: rows say which
  std::vector<std::string> modules;
  std::vector<RunView> runs;
  int n = 0;                  // counted runs
  double mean = 0, sd = 0;    // over counted runs (NaN when n = 0; sd NaN when n < 2)
  double delta = 0, delta_pct = 0;  // vs base (NaN without one)
  std::map<std::string, double> metric_means;  // every metric all its counted runs recorded: mean of their bests
  std::string verdict;        // reference, keep, park, drop, inconclusive, pending
  // The comparison with its base (NaN when there is none): Welch's t on 'df' degrees of freedom,
  // 'sd_diff' the sd of the difference of means, 'p' two-sided, 'p_adj' after the phase's
  // correction, 'alpha' the per-comparison rate it is decided at, 'bar' the |delta| that would be
  // decided at this df before the phase's correction.
  double sd_diff = 0, df = 0, t = 0, p = 0, p_adj = 0, alpha = 0, bar = 0;
  double dec_delta = 0, dec_base = 0;  // the delta and base mean the verdict is taken on (equal steps or compute)
  bool seeds_could_decide = false;  // inconclusive, and more seeds of the two arms may still decide it
  int unstable = 0;                 // counted runs flagged unstable
  // Cost beside quality (issue 21 §2), means over counted runs, and ratios to the base's (NaN when
  // unknown): total and active parameters, FLOPs per token (training FLOPs / tokens: the average
  // over what ran), wall time.
  double params = 0, active = 0, flops_tok = 0, train_flops = 0, wall = 0;
  double params_x = 0, active_x = 0, flops_x = 0, wall_x = 0;
  // Quality at equal compute: each counted run's eval curve as a function of its cumulative training
  // FLOPs (its total, summed by the trainer over the steps as they ran, spread evenly over the
  // steps), linearly interpolated at F = the smaller of
  // the two arms' mean training FLOPs (the base's, unless this arm is the cheaper one); the means
  // at F and their difference (NaN when a curve or a cost is missing).
  double eq_flops = 0, eq_mean = 0, eq_base_mean = 0, eq_delta_pct = 0;
  std::string evidence;
  double predicted_pct = 0, measured_pct = 0;  // stacking, vs the plan's baseline (NaN when not applicable)
  std::string predicted_from;
  // Compile rate pooled over the counted runs' latest evaluated checkpoint (mode complete, else fim).
  int64_t compile_n = 0, compile_k = 0;
  double compile_lo = 0, compile_hi = 1;
  std::string compile_mode;
  int compile_spiked = 0;     // counted runs with a compile eval of a checkpoint inside a loss spike (never pooled)
  // Parameters beyond the rule's share (params_x - 1 > param_share): flagged in the row. With a
  // parameter-matched control arm (engine/control.h; its runs in their own group), the comparison
  // with it, by the same test as with the base: verdict, delta in % of the control's mean, evidence.
  bool over_share = false;
  std::string control_id, control_verdict;
  double control_delta_pct = 0;
};

struct Group {
  std::string substrate_id, data_fingerprint;  // "" for runs that have not reported yet
  double noise_sd = 0;                          // pooled sd of seed replicas (NaN when unmeasured), on the rule's metric
  int noise_runs = 0, noise_experiments = 0, noise_dof = 0;
  // The same floor for every metric a phase decides on (the rule's included): a phase deciding on
  // fim_bpb borrows a fim_bpb floor, never the val_bpb one.
  struct Noise {
    double sd = NAN;
    int runs = 0, experiments = 0, dof = 0;
  };
  std::map<std::string, Noise> noise_by_metric;
  // Per phase: its decided comparisons' family and the false-verdict rate the rule implies if every
  // one of them were null (correction none: 1 - (1 - alpha)^m; holm: alpha family-wise; bh: alpha
  // false-discovery rate, alpha family-wise when all are null).
  struct Family {
    std::string phase;
    int m = 0;
    double rate = 0;
  };
  std::vector<Family> families;
  std::vector<std::string> code_ids;            // distinct code ids of its counted runs (engine: version.h)
  std::vector<Card> cards;
};

struct Scorecard {
  PlanInfo plan;
  int looks = 1;       // looks the rule allows (max_seeds - fewest plan seeds + 1, at least 1)
  double alpha = 0;    // per-comparison two-sided rate of one look: 2 P(Z > k_noise) / looks
  std::vector<Group> groups;  // the largest group first
};

// The two-sided rate k_noise stands for, 2 P(Z > k), and the looks a rule allows a plan.
double rule_alpha(const DecisionRule& r);
int rule_looks(const PlanInfo& plan);

// `ablate --decide`: the experiments that get one more seed now: each inconclusive experiment whose
// comparison more seeds could still decide (its observed |delta| would clear the bar with both
// arms at max_seeds, or it has no variance estimate yet) and that has fewer than max_seeds runs,
// and its base when the base would otherwise have fewer runs than it. Plan order, no repeats.
// Empty when the rule's max_seeds is 0.
std::vector<std::string> seeds_to_add(const Scorecard& s);

// Applies every rule above. `evals` maps run_id to its eval points.
Scorecard build_scorecard(const PlanInfo& plan, const std::vector<RunRow>& runs,
                          const std::map<std::string, std::vector<EvalPoint>>& evals,
                          const std::map<std::string, std::vector<CompileEval>>& compiles = {});

// A figure as every scorecard writes it: fixed decimals, "-" when not finite.
std::string fixed_text(double x, int prec = 4);
// A signed percentage, "+1.25%"; "-" when not finite.
std::string pct_text(double x, int prec = 2);

}  // namespace slm::engine
