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

const std::string& PlanInfo::metric_of(const std::string& phase) const {
  auto it = phase_metrics.find(phase);
  return it == phase_metrics.end() ? rule.metric : it->second;
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

// A metric of one eval point: val_bpb, or an objective metric it recorded (NaN when it did not).
double metric_of(const EvalPoint& e, const std::string& metric) {
  if (metric == "val_bpb") return e.val_bpb;
  auto it = e.metrics.find(metric);
  return it == e.metrics.end() ? NAN : it->second;
}

// The run's number: the best of the rule's metric outside a loss spike, with its step; and the best
// of every metric it recorded (RunView::bests) for the scorecard to show beside it.
void choose_value(RunView& v, const std::string& metric) {
  v.value = NAN;
  v.value_step = -1;
  v.bests.clear();
  for (auto& e : v.evals) {
    if (e.in_spike) continue;
    std::map<std::string, double> all = e.metrics;
    all["val_bpb"] = e.val_bpb;
    for (auto& [k, x] : all)
      if (std::isfinite(x) && (!v.bests.count(k) || x < v.bests[k])) v.bests[k] = x;
    const double x = metric_of(e, metric);
    if (std::isfinite(x) && (!std::isfinite(v.value) || x < v.value)) {
      v.value = x;
      v.value_step = e.step;
    }
  }
  const RunRow& r = v.row;
  if (metric == "val_bpb" && v.evals.empty() && r.has_summary && !r.best_in_spike && std::isfinite(r.best_val_bpb)) {
    v.value = r.best_val_bpb;  // no eval points stored: the summary's best is all there is
    v.value_step = r.best_step;
    v.bests["val_bpb"] = r.best_val_bpb;
  }
  if (r.has_summary && r.best_in_spike)
    v.note = "best " + fixed_text(r.best_val_bpb) + " @ " + std::to_string(r.best_step) +
             " was saved inside a loss spike: refused; using " +
             (std::isfinite(v.value) ? fixed_text(v.value) + " @ " + std::to_string(v.value_step) : std::string("nothing"));
}

// The final value of the rule's metric: the summary's final val_bpb, or the last eval's objective metric.
double final_value(const RunView& v, const std::string& metric) {
  if (metric == "val_bpb") return v.row.has_summary ? v.row.final_val_bpb : NAN;
  return v.evals.empty() || !v.row.has_summary ? NAN : metric_of(v.evals.back(), metric);
}

// n, mean and sd over the counted runs.
void card_stats(Card& c) {
  double sum = 0, sq = 0;
  c.n = 0;
  for (auto& v : c.runs)
    if (v.counted) {
      ++c.n;
      sum += v.value;
    }
  c.mean = c.n ? sum / c.n : NAN;
  for (auto& v : c.runs)
    if (v.counted) sq += (v.value - c.mean) * (v.value - c.mean);
  c.sd = c.n >= 2 ? std::sqrt(sq / (c.n - 1)) : NAN;
}

std::set<std::string> name_set(const PlanInfo::Exp& e) { return {e.names.begin(), e.names.end()}; }

// Mean over counted runs of a positive, finite field (NaN when no run has one).
template <typename F>
double run_mean(const Card& c, F field) {
  double sum = 0;
  int n = 0;
  for (auto& v : c.runs)
    if (v.counted) {
      const double x = field(v.row);
      if (std::isfinite(x) && x > 0) sum += x, ++n;
    }
  return n ? sum / n : NAN;
}

// A run's training FLOPs: the trainer's sum over its steps as they ran, else (older runs) its last
// FLOPs per token x tokens.
double run_train_flops(const RunRow& r) {
  if (std::isfinite(r.train_flops) && r.train_flops > 0) return r.train_flops;
  return r.flops_per_token > 0 && r.tokens > 0 ? r.flops_per_token * r.tokens : NAN;
}

// A run's val_bpb on its eval curve at cumulative training FLOPs F, linearly interpolated between
// eval points (NaN outside the curve or without costs). Cumulative FLOPs at a step: the run's
// training FLOPs spread evenly over its steps (a DSA run's dense warm-up makes its early steps
// dearer than that; the total, and so the cheaper arm's point, is exact).
double curve_at_flops(const RunView& v, double F) {
  const RunRow& r = v.row;
  const double total = run_train_flops(r);
  if (!(total > 0) || r.steps <= 0) return NAN;
  const double per_step = total / static_cast<double>(r.steps);  // spread evenly over the steps
  const double s = F / per_step;
  const EvalPoint* lo = nullptr;
  for (auto& e : v.evals) {
    if (e.in_spike || !std::isfinite(e.val_bpb)) continue;
    if (e.step <= s) lo = &e;
    else {
      if (!lo) return NAN;
      const double w = (s - lo->step) / static_cast<double>(e.step - lo->step);
      return lo->val_bpb + w * (e.val_bpb - lo->val_bpb);
    }
  }
  // F at the last eval: s is that step up to the rounding of total / (total / steps).
  return lo && std::fabs(s - static_cast<double>(lo->step)) <= 1e-9 * std::max(1.0, s) ? lo->val_bpb : NAN;
}

void cost(Card& c, const Card& base) {
  auto fill = [](Card& k) {
    k.params = run_mean(k, [](const RunRow& r) { return double(r.n_params); });
    k.active = run_mean(k, [](const RunRow& r) { return double(r.active_params); });
    k.flops_tok = run_mean(k, [](const RunRow& r) { return r.tokens > 0 ? run_train_flops(r) / r.tokens : NAN; });
    k.train_flops = run_mean(k, [](const RunRow& r) { return run_train_flops(r); });
    k.wall = run_mean(k, [](const RunRow& r) { return r.wall_seconds; });
  };
  fill(c);
  Card b = base;
  fill(b);
  c.params_x = c.params / b.params;
  c.active_x = c.active / b.active;
  c.flops_x = c.flops_tok / b.flops_tok;
  c.wall_x = c.wall / b.wall;
  c.eq_flops = std::min(c.train_flops, b.train_flops);
  if (!std::isfinite(c.eq_flops)) return;
  auto mean_at = [&](const Card& k) -> double {
    double sum = 0;
    int n = 0;
    for (auto& v : k.runs)
      if (v.counted) {
        const double x = curve_at_flops(v, c.eq_flops);
        if (!std::isfinite(x)) return NAN;  // every counted run or none
        sum += x, ++n;
      }
    return n ? sum / n : NAN;
  };
  c.eq_mean = mean_at(c);
  c.eq_base_mean = mean_at(b);
  c.eq_delta_pct = 100.0 * (c.eq_mean - c.eq_base_mean) / c.eq_base_mean;
}

// The comparison of c with its base: sets the verdict when a rule refuses to decide (pending,
// no counted run, mixed code, no variance), else delta, t, df and p (the verdict comes later, once
// the phase's comparisons are known together).
// A card's counted runs re-valued on another metric (their best of it outside a spike): a base whose
// own phase decides on val_bpb, compared with an experiment of a phase deciding on fim_bpb.
Card on_metric(const Card& k, const std::string& metric) {
  if (k.metric == metric) return k;
  Card x = k;
  x.metric = metric;
  for (auto& v : x.runs)
    if (v.counted) {
      auto it = v.bests.find(metric);
      v.value = it == v.bests.end() ? NAN : it->second;
      v.counted = std::isfinite(v.value);
    }
  card_stats(x);
  return x;
}

void compare(Card& c, const Card& base_own, const Group& g, const DecisionRule& rule, double alpha, int max_seeds) {
  const Card base = on_metric(base_own, c.metric);
  const Group::Noise nz = g.noise_by_metric.count(c.metric) ? g.noise_by_metric.at(c.metric) : Group::Noise{};
  if (c.n == 0) {
    bool pending = false;
    for (auto& r : c.runs)
      pending |= r.row.status == Status::Queued || r.row.status == Status::Running ||
                 (r.row.status == Status::Failed && r.row.attempts <= rule.max_retries);
    c.verdict = pending ? "pending" : "inconclusive";
    c.evidence = pending ? "runs not finished" : "no counted run (INVALID, failed, provisional or unstable)";
    return;
  }
  if (base.n == 0) {
    c.verdict = "inconclusive";
    c.evidence = "base " + base.id + " has no counted run on this substrate" +
                 (base_own.metric == c.metric ? "" : " with " + c.metric + " recorded");
    return;
  }
  c.delta = c.mean - base.mean;
  c.delta_pct = 100.0 * c.delta / base.mean;
  // The arms the verdict is taken on: each run's number at equal steps (its best), or with
  // compare_at = "compute" its eval curve at the equal-compute point (cost(), interpolated).
  const bool at_compute = rule.compare_at == "compute";
  Card cx, bx;
  if (at_compute) {
    cx = c;
    bx = base;
    for (Card* k : {&cx, &bx})
      for (auto& v : k->runs)
        if (v.counted) {
          v.value = std::isfinite(c.eq_flops) ? curve_at_flops(v, c.eq_flops) : NAN;
          v.counted = std::isfinite(v.value);
        }
    card_stats(cx);
    card_stats(bx);
    if (cx.n == 0 || bx.n == 0 || !std::isfinite(c.eq_delta_pct)) {
      c.verdict = "inconclusive";
      c.evidence = "no equal-compute value: the rule compares at equal compute and these runs lack costs "
                   "(parameters, FLOPs per token, tokens) or an eval curve reaching " + fixed_text(c.eq_flops, 0) + " FLOPs";
      return;
    }
  }
  const Card& x = at_compute ? cx : c;
  const Card& y = at_compute ? bx : base;
  c.dec_delta = x.mean - y.mean;
  c.dec_base = y.mean;
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
  // Each arm's variance of its mean and the degrees of freedom of that variance: its own seeds, or
  // with one counted run the substrate's pooled sd.
  struct Arm {
    double var, dof, sd;
    bool own;
  };
  auto arm = [&](const Card& k) -> Arm {
    if (k.n >= 2) return {k.sd * k.sd / k.n, double(k.n - 1), k.sd, true};
    if (std::isfinite(nz.sd) && nz.dof > 0) return {nz.sd * nz.sd / k.n, double(nz.dof), nz.sd, false};
    return {NAN, 0, NAN, false};
  };
  const Arm a = arm(x), b = arm(y);
  if (!std::isfinite(a.var) || !std::isfinite(b.var)) {
    c.verdict = "inconclusive";
    c.evidence = "no noise floor: no experiment on this substrate has 2 counted seeds";
    c.seeds_could_decide = true;
    return;
  }
  c.sd_diff = std::sqrt(a.var + b.var);
  const double den = (a.var > 0 ? a.var * a.var / a.dof : 0) + (b.var > 0 ? b.var * b.var / b.dof : 0);
  c.df = den > 0 ? (a.var + b.var) * (a.var + b.var) / den : a.dof + b.dof;  // Welch-Satterthwaite
  // A borrowed variance is not independent of the other arm's (the pooled sd includes it, or both
  // borrow it): Satterthwaite would overcount, so the df is at most the pooled estimate's own.
  if (!a.own || !b.own) c.df = std::min(c.df, double(nz.dof));
  const double d = c.dec_delta;
  if (c.sd_diff > 0) {
    c.t = d / c.sd_diff;
    c.p = t_two_sided_p(c.t, c.df);
  } else {  // identical seeds on both arms: any difference is certain, none is none
    c.t = d == 0 ? 0 : std::copysign(INFINITY, d);
    c.p = d == 0 ? 1 : 0;
  }
  c.alpha = alpha;
  c.bar = student_t_quantile_upper(alpha / 2, c.df) * c.sd_diff;
  auto arm_text = [](const Arm& x, int n) {
    return "sd " + fixed_text(x.sd) + (x.own ? "" : " (pooled)") + " n " + std::to_string(n);
  };
  std::ostringstream ev;
  ev << "on " << c.metric << ": ";
  if (at_compute)
    ev << "at equal compute (" << std::setprecision(3) << c.eq_flops << " training FLOPs, interpolated on the eval curves): ";
  ev << "delta " << std::showpos << std::fixed << std::setprecision(4) << d << std::noshowpos << " ("
     << pct_text(100 * d / y.mean) << ") vs " << base.id << "; Welch t " << fixed_text(c.t, 2) << " on " << fixed_text(c.df, 1)
     << " df, sd of the difference " << fixed_text(c.sd_diff) << " (" << arm_text(a, x.n) << " vs " << arm_text(b, y.n)
     << "); p " << fixed_text(c.p) << "; bar at alpha " << fixed_text(100 * alpha, 2) << "% = " << fixed_text(c.bar)
     << "; min delta " << fixed_text(100 * rule.min_rel_delta, 2) << "%";
  c.evidence = ev.str();
  // Could more seeds decide it? The observed |delta| against the bar with both arms at max_seeds.
  if (max_seeds > 0) {
    const double M = max_seeds;
    const double va = a.sd * a.sd / M, vb = b.sd * b.sd / M;
    const double dena = (va > 0 ? va * va / (M - 1) : 0) + (vb > 0 ? vb * vb / (M - 1) : 0);
    const double df_m = dena > 0 ? (va + vb) * (va + vb) / dena : 2 * (M - 1);
    const double bar_m = M >= 2 ? student_t_quantile_upper(alpha / 2, df_m) * std::sqrt(va + vb) : INFINITY;
    c.seeds_could_decide = std::fabs(d) > bar_m;
  }
}

void decide(Card& c, const DecisionRule& rule, const std::string& correction) {
  if (!std::isfinite(c.p)) return;
  const double gain = -c.dec_delta, rel = gain / c.dec_base;
  const bool decided = c.p_adj < c.alpha;
  if (decided && gain > 0 && rel >= rule.min_rel_delta) c.verdict = "keep";
  else if (decided && gain > 0) c.verdict = "park";  // real, but smaller than what is worth its cost
  else if (decided && gain < 0) c.verdict = "drop";
  else c.verdict = "inconclusive";
  if (correction != "none") c.evidence += "; " + correction + "-adjusted p " + fixed_text(c.p_adj);
  if (c.verdict != "inconclusive") c.seeds_could_decide = false;
}

// Stacking: each module's marginal effect from an experiment adding exactly it to a subset of c.
void stacking(Card& c, const std::vector<Card>& cards, const PlanInfo& plan, const Card* root) {
  const PlanInfo::Exp* e = plan.find(c.id);
  if (!e || e->names.size() < 2 || !root || root->n == 0 || c.n == 0 || root->metric != c.metric) return;
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
      if (!xc || !bc || xc->n == 0 || bc->n == 0 || xc->metric != c.metric || bc->metric != c.metric) continue;  // one metric
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

double rule_alpha(const DecisionRule& r) { return std::min(1.0, 2 * normal_sf(r.k_noise)); }

int rule_looks(const PlanInfo& plan) {
  int64_t n0 = -1;
  for (auto& e : plan.experiments)
    if (!e.seeds.empty() && (n0 < 0 || static_cast<int64_t>(e.seeds.size()) < n0)) n0 = static_cast<int64_t>(e.seeds.size());
  if (n0 < 0) n0 = 1;
  return plan.rule.max_seeds > n0 ? static_cast<int>(plan.rule.max_seeds - n0 + 1) : 1;
}

std::vector<std::string> seeds_to_add(const Scorecard& s) {
  std::vector<std::string> out;
  const int64_t M = s.plan.rule.max_seeds;
  if (M <= 0) return out;
  auto add = [&](const std::string& id) {
    if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  for (auto& g : s.groups) {
    if (g.substrate_id.empty()) continue;
    for (auto& c : g.cards) {
      if (c.base.empty() || c.verdict != "inconclusive" || !c.seeds_could_decide) continue;
      const Card* base = nullptr;
      for (auto& b : g.cards)
        if (b.id == c.base) base = &b;
      if (!base || !s.plan.find(c.id)) continue;
      const int64_t runs = static_cast<int64_t>(c.runs.size()), base_runs = static_cast<int64_t>(base->runs.size());
      if (runs >= M && base_runs >= M) continue;  // budget spent
      if (runs < M) add(c.id);
      if (base_runs < M && base_runs <= runs) add(base->id);
    }
  }
  std::vector<std::string> ordered;  // plan order
  for (auto& e : s.plan.experiments)
    if (std::find(out.begin(), out.end(), e.id) != out.end()) ordered.push_back(e.id);
  return ordered;
}

Scorecard build_scorecard(const PlanInfo& plan, const std::vector<RunRow>& runs,
                          const std::map<std::string, std::vector<EvalPoint>>& evals,
                          const std::map<std::string, std::vector<CompileEval>>& compiles) {
  Scorecard s;
  s.plan = plan;
  s.looks = rule_looks(plan);
  s.alpha = rule_alpha(plan.rule) / s.looks;
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
      const PlanInfo::Exp* pe = plan.find(r->experiment);
      choose_value(v, plan.metric_of(pe ? pe->phase : r->phase));
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
      c.metric = plan.metric_of(c.phase);
      c.metric_named = c.metric != plan.rule.metric;
      std::sort(c.runs.begin(), c.runs.end(), [](const RunView& a, const RunView& b) { return a.row.seed < b.row.seed; });
      card_stats(c);
      // Every metric the counted runs all recorded, as the mean of their bests (the rule's one included).
      {
        std::map<std::string, std::pair<int, double>> acc;
        for (auto& v : c.runs)
          if (v.counted)
            for (auto& [k, x] : v.bests) {
              acc[k].first += 1;
              acc[k].second += x;
            }
        for (auto& [k, a] : acc)
          if (a.first == c.n) c.metric_means[k] = a.second / a.first;
      }
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
      c.sd_diff = c.df = c.t = c.p = c.p_adj = c.alpha = c.bar = c.dec_delta = c.dec_base = NAN;
      c.params = c.active = c.flops_tok = c.train_flops = c.wall = NAN;
      c.params_x = c.active_x = c.flops_x = c.wall_x = NAN;
      c.eq_flops = c.eq_mean = c.eq_base_mean = c.eq_delta_pct = c.control_delta_pct = NAN;
      g.cards.push_back(std::move(c));
    }
    // Builds: the distinct code ids of the counted runs ("" = unknown, an older ledger: not a build).
    for (auto& c : g.cards)
      for (auto& v : c.runs)
        if (v.counted && !v.row.code_id.empty() &&
            std::find(g.code_ids.begin(), g.code_ids.end(), v.row.code_id) == g.code_ids.end())
          g.code_ids.push_back(v.row.code_id);
    // Noise floor: the pooled sd of every experiment with replicas, per metric a phase decides on.
    std::set<std::string> decided = {plan.rule.metric};
    for (auto& [ph, m] : plan.phase_metrics) decided.insert(m);
    for (auto& m : decided) {
      double ss = 0;
      Group::Noise nz;
      for (auto& c0 : g.cards) {
        const Card c = on_metric(c0, m);
        if (c.n < 2) continue;
        ss += c.sd * c.sd * (c.n - 1);
        nz.dof += c.n - 1;
        nz.runs += c.n;
        ++nz.experiments;
      }
      nz.sd = nz.dof > 0 ? std::sqrt(ss / nz.dof) : NAN;
      g.noise_by_metric[m] = nz;
    }
    {
      const Group::Noise& nz = g.noise_by_metric[plan.rule.metric];
      g.noise_sd = nz.sd;
      g.noise_dof = nz.dof;
      g.noise_runs = nz.runs;
      g.noise_experiments = nz.experiments;
    }
    // Stability: final worse than the run's number by more than the floor (of the metric it is on).
    for (auto& c : g.cards) {
      const double floor_sd = g.noise_by_metric[c.metric].sd;
      for (auto& v : c.runs) {
        v.drift = std::isfinite(v.value) ? final_value(v, c.metric) - v.value : NAN;
        v.unstable = v.counted && std::isfinite(floor_sd) && std::isfinite(v.drift) && v.drift > floor_sd;
        c.unstable += v.unstable;
        if (v.unstable && !plan.rule.unstable_decides) v.counted = false;
      }
      if (c.unstable && !plan.rule.unstable_decides) card_stats(c);
    }
    // Verdicts against each base on this substrate, then stacking against the plan's baseline.
    const Card* root = nullptr;
    for (auto& c : g.cards)
      if (c.base.empty() && plan.find(c.id) && plan.find(c.id)->names.empty()) {
        root = &c;
        break;
      }
    for (auto& c : g.cards) {
      const PlanInfo::Exp* pe = plan.find(c.id);
      if (pe && !pe->control_of.empty()) {
        c.verdict = "control";
        c.evidence = pe->notes + (c.n ? "" : "; no counted run");
        continue;
      }
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
      cost(c, *base);
      c.over_share = std::isfinite(c.params_x) && c.params_x - 1 > plan.rule.param_share;
      compare(c, *base, g, plan.rule, s.alpha, static_cast<int>(plan.rule.max_seeds));
    }
    // The phase's comparisons together: the correction, then the verdicts.
    std::vector<std::string> phases;
    for (auto& c : g.cards)
      if (std::find(phases.begin(), phases.end(), c.phase) == phases.end()) phases.push_back(c.phase);
    for (auto& ph : phases) {
      std::vector<Card*> fam;
      std::vector<double> ps;
      for (auto& c : g.cards)
        if (c.phase == ph && !c.base.empty() && std::isfinite(c.p)) {
          fam.push_back(&c);
          ps.push_back(c.p);
        }
      if (fam.empty()) continue;
      const auto adj = plan.rule.correction == "holm" ? holm_adjust(ps) : plan.rule.correction == "bh" ? bh_adjust(ps) : ps;
      for (size_t i = 0; i < fam.size(); ++i) {
        fam[i]->p_adj = adj[i];
        decide(*fam[i], plan.rule, plan.rule.correction);
      }
      const int m = static_cast<int>(fam.size());
      g.families.push_back({ph, m, plan.rule.correction == "none" ? 1 - std::pow(1 - s.alpha, m) : s.alpha});
    }
    for (auto& c : g.cards) stacking(c, g.cards, plan, root);
    s.groups.push_back(std::move(g));
  }
  // Each experiment against its parameter-matched control arm, whose runs are in a group of their
  // own (a derived substrate): the same test as against the base, uncorrected (one extra
  // comparison per experiment, shown beside its verdict, never replacing it).
  for (auto& g : s.groups)
    for (auto& c : g.cards) {
      for (auto& x : plan.experiments)
        if (x.control_of == c.id && !c.base.empty()) c.control_id = x.id;
      if (c.control_id.empty()) continue;
      const Card* ctl = nullptr;
      for (auto& h : s.groups)
        for (auto& k : h.cards)
          if (k.id == c.control_id) ctl = &k;
      if (!ctl) {
        c.control_verdict = "pending";
        continue;
      }
      Card t = c;
      t.verdict.clear();
      t.sd_diff = t.df = t.t = t.p = t.p_adj = t.alpha = t.bar = t.dec_delta = t.dec_base = NAN;
      cost(t, *ctl);
      compare(t, *ctl, g, plan.rule, s.alpha, 0);
      t.p_adj = t.p;
      decide(t, plan.rule, "none");
      c.control_verdict = t.verdict;
      c.control_delta_pct = 100.0 * t.dec_delta / t.dec_base;
      c.evidence += "; vs parameter-matched control " + t.evidence;
    }
  return s;
}

}  // namespace slm::engine
