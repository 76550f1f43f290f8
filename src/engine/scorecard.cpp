#include "engine/scorecard.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <set>
#include <sstream>

#include "common/stats.h"

namespace slm::engine {

const PlanInfo::Exp* PlanInfo::find(const std::string& id) const {
  for (auto& e : experiments)
    if (e.id == id) return &e;
  return nullptr;
}

std::string fixed_text(double x, int prec) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << x;
  return os.str();
}

std::string pct_text(double x, int prec) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream os;
  os << std::showpos << std::fixed << std::setprecision(prec) << x << "%";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// The rules.

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string value_text(double x) { return catalog::value_text(catalog::Value(x)); }

// The run's number: best val_bpb outside a loss spike, with its step.
void choose_value(RunView& v) {
  v.value = NAN;
  v.value_step = -1;
  for (auto& e : v.evals)
    if (!e.in_spike && std::isfinite(e.val_bpb) && (!std::isfinite(v.value) || e.val_bpb < v.value)) {
      v.value = e.val_bpb;
      v.value_step = e.step;
    }
  const RunRow& r = v.row;
  if (v.evals.empty() && r.has_summary && !r.best_in_spike && std::isfinite(r.best_val_bpb)) {
    v.value = r.best_val_bpb;  // no eval points stored: the summary's best is all there is
    v.value_step = r.best_step;
  }
  if (r.has_summary && r.best_in_spike)
    v.note = "best " + fixed_text(r.best_val_bpb) + " @ " + std::to_string(r.best_step) +
             " was saved inside a loss spike: refused; using " +
             (std::isfinite(v.value) ? fixed_text(v.value) + " @ " + std::to_string(v.value_step) : std::string("nothing"));
}

std::set<std::string> name_set(const PlanInfo::Exp& e) { return {e.names.begin(), e.names.end()}; }

void verdict(Card& c, const Card& base, const Group& g, const DecisionRule& rule) {
  std::ostringstream ev;
  if (c.n == 0) {
    bool pending = false;
    for (auto& r : c.runs)
      pending |= r.row.status == Status::Queued || r.row.status == Status::Running ||
                 (r.row.status == Status::Failed && r.row.attempts <= rule.max_retries);
    c.verdict = pending ? "pending" : "inconclusive";
    c.evidence = pending ? "runs not finished" : "no counted run (INVALID, failed or provisional)";
    return;
  }
  if (base.n == 0) {
    c.verdict = "inconclusive";
    c.evidence = "base " + base.id + " has no counted run on this substrate";
    return;
  }
  c.delta = c.mean - base.mean;
  c.delta_pct = 100.0 * c.delta / base.mean;
  if (!rule.allow_mixed_code) {
    std::vector<std::string> ids;
    for (const Card* k : {static_cast<const Card*>(&c), &base})
      for (auto& v : k->runs)
        if (v.counted && !v.row.code_id.empty() && std::find(ids.begin(), ids.end(), v.row.code_id) == ids.end())
          ids.push_back(v.row.code_id);
    if (ids.size() > 1) {
      c.verdict = "inconclusive";
      c.evidence = "mixed code: " + std::to_string(ids.size()) + " builds among these runs and " + base.id +
                   "'s; re-run them on one build, or set [rule] allow_mixed_code = true";
      return;
    }
  }
  if (!std::isfinite(g.noise_sd)) {
    c.verdict = "inconclusive";
    c.evidence = "no noise floor: no experiment on this substrate has 2 counted seeds";
    return;
  }
  const double sd_diff = g.noise_sd * std::sqrt(1.0 / c.n + 1.0 / base.n);
  const double bar = rule.k_noise * sd_diff;
  const double gain = -c.delta, rel = gain / base.mean;
  ev << "delta " << std::showpos << std::fixed << std::setprecision(4) << c.delta << std::noshowpos << " ("
     << pct_text(c.delta_pct) << ") vs " << base.id << "; bar k x noise = " << value_text(rule.k_noise) << " x " << fixed_text(sd_diff)
     << " = " << fixed_text(bar) << " (pooled sd " << fixed_text(g.noise_sd) << ", n " << c.n << " vs " << base.n
     << "); min delta " << fixed_text(100 * rule.min_rel_delta, 2) << "%";
  if (gain > bar && rel >= rule.min_rel_delta) c.verdict = "keep";
  else if (gain > bar) c.verdict = "park";  // real, but smaller than what is worth its cost
  else if (-gain > bar) c.verdict = "drop";
  else c.verdict = "inconclusive";
  c.evidence = ev.str();
}

// Stacking: each module's marginal effect from an experiment adding exactly it to a subset of c.
void stacking(Card& c, const std::vector<Card>& cards, const PlanInfo& plan, const Card* root) {
  const PlanInfo::Exp* e = plan.find(c.id);
  if (!e || e->names.size() < 2 || !root || root->n == 0 || c.n == 0) return;
  const auto target = name_set(*e);
  auto card_of = [&](const std::string& id) -> const Card* {
    for (auto& k : cards)
      if (k.id == id) return &k;
    return nullptr;
  };
  double sum = 0;
  std::string from;
  for (auto& m : target) {
    bool found = false;
    for (auto& x : plan.experiments) {
      if (x.id == c.id || x.base.empty()) continue;
      const PlanInfo::Exp* b = plan.find(x.base);
      if (!b) continue;
      auto xs = name_set(x), bs = name_set(*b);
      if (!xs.count(m) || bs.count(m) || xs.size() != bs.size() + 1) continue;
      if (!std::includes(target.begin(), target.end(), xs.begin(), xs.end())) continue;
      const Card *xc = card_of(x.id), *bc = card_of(b->id);
      if (!xc || !bc || xc->n == 0 || bc->n == 0) continue;
      sum += xc->mean - bc->mean;
      from += (from.empty() ? "" : " + ") + m + " (" + x.id + " - " + b->id + ")";
      found = true;
      break;
    }
    if (!found) return;  // a module without a measured marginal: no prediction
  }
  c.predicted_pct = 100.0 * sum / root->mean;
  c.measured_pct = 100.0 * (c.mean - root->mean) / root->mean;
  c.predicted_from = from;
}

}  // namespace

Scorecard build_scorecard(const PlanInfo& plan, const std::vector<RunRow>& runs,
                          const std::map<std::string, std::vector<EvalPoint>>& evals,
                          const std::map<std::string, std::vector<CompileEval>>& compiles) {
  Scorecard s;
  s.plan = plan;
  // Groups by substrate id, largest first; the runs that never reported gather under "".
  std::map<std::string, std::vector<const RunRow*>> by_sub;
  for (auto& r : runs) by_sub[r.substrate_id].push_back(&r);
  std::vector<std::string> order;
  for (auto& [k, v] : by_sub) order.push_back(k);
  std::stable_sort(order.begin(), order.end(), [&](const std::string& a, const std::string& b) {
    if (a.empty() != b.empty()) return b.empty();
    return by_sub[a].size() > by_sub[b].size();
  });

  for (auto& sub : order) {
    Group g;
    g.substrate_id = sub;
    std::vector<RunView> views;
    for (const RunRow* r : by_sub[sub]) {
      RunView v;
      v.row = *r;
      auto it = evals.find(r->run_id);
      if (it != evals.end()) v.evals = it->second;
      if (auto c = compiles.find(r->run_id); c != compiles.end()) v.compiles = c->second;
      choose_value(v);
      if (g.data_fingerprint.empty()) g.data_fingerprint = r->data_fingerprint;
      views.push_back(std::move(v));
    }
    // Provisional: step time far above the median of its phase on this substrate.
    std::map<std::string, std::vector<double>> phase_ms;
    for (auto& v : views)
      if (v.row.status == Status::Done && std::isfinite(v.row.step_ms) && v.row.step_ms > 0)
        phase_ms[v.row.phase].push_back(v.row.step_ms);
    for (auto& v : views) {
      const double med = median(phase_ms[v.row.phase]);
      if (std::isfinite(med) && std::isfinite(v.row.step_ms) && med > 0) {
        v.step_ratio = v.row.step_ms / med;
        v.provisional = v.step_ratio > plan.rule.provisional_factor;
      }
      v.counted = v.row.status == Status::Done && !v.provisional && std::isfinite(v.value);
    }
    // Cards in plan order; experiments the plan no longer has come last under their own id.
    std::vector<std::string> ids;
    for (auto& e : plan.experiments) ids.push_back(e.id);
    for (auto& v : views)
      if (std::find(ids.begin(), ids.end(), v.row.experiment) == ids.end()) ids.push_back(v.row.experiment);
    for (auto& id : ids) {
      Card c;
      c.id = id;
      if (const PlanInfo::Exp* e = plan.find(id)) {
        c.phase = e->phase;
        c.base = e->base;
        c.notes = e->notes;
        c.modules = e->modules;
      }
      for (auto& v : views)
        if (v.row.experiment == id) {
          if (c.phase.empty()) c.phase = v.row.phase;
          c.runs.push_back(v);
        }
      if (c.runs.empty()) continue;
      std::sort(c.runs.begin(), c.runs.end(), [](const RunView& a, const RunView& b) { return a.row.seed < b.row.seed; });
      double sum = 0, sq = 0;
      for (auto& v : c.runs)
        if (v.counted) {
          ++c.n;
          sum += v.value;
        }
      c.mean = c.n ? sum / c.n : NAN;
      for (auto& v : c.runs)
        if (v.counted) sq += (v.value - c.mean) * (v.value - c.mean);
      c.sd = c.n >= 2 ? std::sqrt(sq / (c.n - 1)) : NAN;
      // Compile rate: each counted run's latest evaluated checkpoint, complete mode preferred. The
      // spike rule holds here too: a checkpoint saved inside a loss spike is never pooled (the
      // seed's step-25K rate); the run's latest one outside a spike is used, and the card says so.
      for (const char* mode : {"complete", "fim"}) {
        c.compile_spiked = 0;
        for (auto& v : c.runs) {
          if (!v.counted) continue;
          const CompileEval* last = nullptr;
          bool skipped = false;
          for (auto& e : v.compiles) {
            if (e.mode != mode) continue;
            if (e.in_spike) skipped = true;
            else if (!last || e.step > last->step) last = &e;
          }
          c.compile_spiked += skipped;
          if (!last) continue;
          c.compile_n += last->n;
          c.compile_k += last->k;
        }
        if (c.compile_n > 0) {
          c.compile_mode = mode;
          auto ci = wilson_interval(c.compile_k, c.compile_n);
          c.compile_lo = ci.lo;
          c.compile_hi = ci.hi;
          break;
        }
      }
      c.delta = c.delta_pct = c.predicted_pct = c.measured_pct = NAN;
      g.cards.push_back(std::move(c));
    }
    // Builds: the distinct code ids of the counted runs ("" = unknown, an older ledger: not a build).
    for (auto& c : g.cards)
      for (auto& v : c.runs)
        if (v.counted && !v.row.code_id.empty() &&
            std::find(g.code_ids.begin(), g.code_ids.end(), v.row.code_id) == g.code_ids.end())
          g.code_ids.push_back(v.row.code_id);
    // Noise floor: the pooled sd of every experiment with replicas.
    double ss = 0;
    int dof = 0;
    for (auto& c : g.cards)
      if (c.n >= 2) {
        ss += c.sd * c.sd * (c.n - 1);
        dof += c.n - 1;
        g.noise_runs += c.n;
        ++g.noise_experiments;
      }
    g.noise_sd = dof > 0 ? std::sqrt(ss / dof) : NAN;
    // Verdicts against each base on this substrate, then stacking against the plan's baseline.
    const Card* root = nullptr;
    for (auto& c : g.cards)
      if (c.base.empty() && plan.find(c.id) && plan.find(c.id)->names.empty()) {
        root = &c;
        break;
      }
    for (auto& c : g.cards) {
      if (c.base.empty()) {
        c.verdict = "reference";
        c.evidence = c.n ? "baseline of its phase" : "no counted run";
        continue;
      }
      const Card* base = nullptr;
      for (auto& b : g.cards)
        if (b.id == c.base) base = &b;
      if (!base) {
        c.verdict = "inconclusive";
        c.evidence = "base " + c.base + " has no run on this substrate";
        continue;
      }
      verdict(c, *base, g, plan.rule);
    }
    for (auto& c : g.cards) stacking(c, g.cards, plan, root);
    s.groups.push_back(std::move(g));
  }
  return s;
}

}  // namespace slm::engine
