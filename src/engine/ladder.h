// Scale ladders (issue 21 §4): does a verdict survive size? A plan may name rungs, substrates of one
// recipe at growing size (engine/plan.h); the same experiments run on each and the scorecard judges
// each rung as its own group (a rung is a substrate). This reads those groups side by side:
// - per experiment: its delta and verdict on each rung, the trend of the delta along the ladder, and
//   the flips: a smaller rung whose decided verdict (keep/park/drop) differs from the target's
//   decided one, or whose delta points the other way than the target's;
// - per smaller rung: its decision accuracy against the target (the last, largest rung), as AI2's
//   DataDecide (Magnusson et al., ICML 2025) defines it: over every pair of arms measured on both
//   rungs, the share whose order (which of the two has the better mean of the rule's metric) the
//   smaller rung gets the same as the target. Pairs are every experiment against its base and every
//   two experiments against each other. The order is the point estimate, whatever its noise: this is
//   the figure a user gets who ranks on the small rung, which is what the agreement measures.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/scorecard.h"

namespace slm::engine {

// One smaller rung's agreement with the target. A pair the target cannot order (equal means) has no
// right answer and is left out (counted in `ties`); a pair the smaller rung cannot order while the
// target can counts as a disagreement (it did not pick the winner).
struct Agreement {
  int pairs = 0, agree = 0;            // every pair measured on both rungs
  int base_pairs = 0, base_agree = 0;  // of those: an experiment against its own base
  int ties = 0;
  std::vector<std::string> disagree;   // "a vs b", in plan order
};
// `small` and `target`: mean of the rule's metric per experiment id (lower is better; NaN or absent:
// not measured there), `order` the experiment ids in plan order, `bases` each experiment's base.
Agreement agreement(const std::vector<std::string>& order, const std::map<std::string, double>& small,
                    const std::map<std::string, double>& target, const std::map<std::string, std::string>& bases);

struct LadderRow {
  std::string id, base;
  std::vector<const Card*> cards;  // per rung, smallest first (nullptr: not run, or not reported, there)
  std::string trend;               // the delta along the rungs that have one, e.g. "grows with scale"
  std::vector<std::string> flips;  // one line per smaller rung that disagrees with the target
};

struct LadderView {
  std::vector<std::string> rungs;      // smallest first; empty when the plan has no ladder
  std::vector<int> groups;             // per rung: its group in the scorecard, -1 while none reported
  std::vector<LadderRow> rows;         // experiments with a base reported on some rung, plan order
  std::vector<Agreement> agreements;   // per rung but the last, against the last
};
LadderView ladder_view(const Scorecard& s);

// The rung a run of a ladder plan ran on: its id is <plan>/<rung>/<experiment>/s<seed>
// (engine/plan.h: run_id). "" for a plan without a ladder or an id of another form.
std::string run_rung(const PlanInfo& plan, const std::string& run_id);
// The rung of a scorecard group: its runs' ("" when none, or no ladder).
std::string group_rung(const Scorecard& s, const Group& g);
// Puts a ladder plan's groups in rung order, smallest first (groups of no rung last, as they were).
void order_by_rung(Scorecard& s);

// The phrases the renderings share.
std::string trend_text(const std::vector<double>& delta_pct);  // the delta along the rungs that have one
std::string agreement_text(const Agreement& a);                // "11/15 (73%): vs base 4/5, between experiments 7/10"

}  // namespace slm::engine
