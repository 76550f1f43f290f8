#include "engine/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/stats.h"

namespace slm::engine {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The plan as the ledger keeps it.

const PlanInfo::Exp* PlanInfo::find(const std::string& id) const {
  for (auto& e : experiments)
    if (e.id == id) return &e;
  return nullptr;
}

PlanInfo plan_info(const Plan& p) {
  PlanInfo o;
  o.name = p.name;
  o.description = p.description;
  o.substrate = p.substrate_ref;
  o.rule = p.rule;
  o.phases = p.phases;
  for (auto& e : p.experiments) {
    PlanInfo::Exp x{e.id, e.phase, e.base, e.notes, {}, {}, e.seeds};
    for (auto& m : e.effective) {
      x.modules.push_back(catalog::arg_text(m));
      x.names.push_back(m.name);
    }
    o.experiments.push_back(std::move(x));
  }
  return o;
}

std::string plan_info_json(const PlanInfo& p) {
  json j = {{"name", p.name},
            {"description", p.description},
            {"substrate", p.substrate},
            {"phases", p.phases},
            {"rule",
             {{"metric", p.rule.metric},
              {"k_noise", p.rule.k_noise},
              {"min_rel_delta", p.rule.min_rel_delta},
              {"provisional_factor", p.rule.provisional_factor},
              {"max_retries", p.rule.max_retries}}}};
  j["experiments"] = json::array();
  for (auto& e : p.experiments)
    j["experiments"].push_back({{"id", e.id}, {"phase", e.phase}, {"base", e.base}, {"notes", e.notes},
                                {"modules", e.modules}, {"names", e.names}, {"seeds", e.seeds}});
  return j.dump();
}

PlanInfo plan_info_from_json(const std::string& text) {
  try {
    auto j = json::parse(text);
    PlanInfo p;
    p.name = j.at("name").get<std::string>();
    p.description = j.value("description", "");
    p.substrate = j.value("substrate", "");
    p.phases = j.value("phases", std::vector<std::string>{});
    auto& r = j.at("rule");
    p.rule.metric = r.value("metric", "val_bpb");
    p.rule.k_noise = r.value("k_noise", 2.0);
    p.rule.min_rel_delta = r.value("min_rel_delta", 0.005);
    p.rule.provisional_factor = r.value("provisional_factor", 3.0);
    p.rule.max_retries = r.value("max_retries", int64_t(2));
    for (auto& e : j.at("experiments"))
      p.experiments.push_back({e.at("id").get<std::string>(), e.value("phase", ""), e.value("base", ""),
                               e.value("notes", ""), e.value("modules", std::vector<std::string>{}),
                               e.value("names", std::vector<std::string>{}),
                               e.value("seeds", std::vector<int64_t>{})});
    return p;
  } catch (const json::exception& e) {
    fail("[report] the plan saved in the ledger is malformed (", e.what(), "); re-run `slmlab ablate PLAN` to save it again");
  }
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

std::string fmt(double x, int prec = 4) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << x;
  return os.str();
}

std::string pct(double x, int prec = 2) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream os;
  os << std::showpos << std::fixed << std::setprecision(prec) << x << "%";
  return os.str();
}

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
    v.note = "best " + fmt(r.best_val_bpb) + " @ " + std::to_string(r.best_step) +
             " was saved inside a loss spike: refused; using " +
             (std::isfinite(v.value) ? fmt(v.value) + " @ " + std::to_string(v.value_step) : std::string("nothing"));
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
  if (!std::isfinite(g.noise_sd)) {
    c.verdict = "inconclusive";
    c.evidence = "no noise floor: no experiment on this substrate has 2 counted seeds";
    return;
  }
  const double sd_diff = g.noise_sd * std::sqrt(1.0 / c.n + 1.0 / base.n);
  const double bar = rule.k_noise * sd_diff;
  const double gain = -c.delta, rel = gain / base.mean;
  ev << "delta " << std::showpos << std::fixed << std::setprecision(4) << c.delta << std::noshowpos << " ("
     << pct(c.delta_pct) << ") vs " << base.id << "; bar k x noise = " << value_text(rule.k_noise) << " x " << fmt(sd_diff)
     << " = " << fmt(bar) << " (pooled sd " << fmt(g.noise_sd) << ", n " << c.n << " vs " << base.n
     << "); min delta " << fmt(100 * rule.min_rel_delta, 2) << "%";
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
      // Compile rate: each counted run's latest evaluated checkpoint, complete mode preferred.
      for (const char* mode : {"complete", "fim"}) {
        for (auto& v : c.runs) {
          if (!v.counted) continue;
          const CompileEval* last = nullptr;
          for (auto& e : v.compiles)
            if (e.mode == mode && (!last || e.step > last->step)) last = &e;
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

// ---------------------------------------------------------------------------------------------
// Renderings.

namespace {

std::string short_id(const std::string& id) { return id.empty() ? "(not reported)" : id.substr(0, 16); }

std::string group_title(const Scorecard& s, size_t i) {
  const Group& g = s.groups[i];
  std::string t = "substrate " + short_id(g.substrate_id);
  if (!g.data_fingerprint.empty()) t += " (data " + g.data_fingerprint.substr(0, 12) + ")";
  if (i > 0 && !g.substrate_id.empty()) t += " -- a different substrate: compared only within this group";
  return t;
}

std::string noise_text(const Group& g) {
  if (!std::isfinite(g.noise_sd)) return "noise floor: not measured (no experiment has 2 counted seeds)";
  return "noise floor: pooled seed sd " + fmt(g.noise_sd) + " from " + std::to_string(g.noise_runs) + " runs of " +
         std::to_string(g.noise_experiments) + " experiment" + (g.noise_experiments > 1 ? "s" : "");
}

std::string rule_text(const DecisionRule& r) {
  std::ostringstream os;
  os << "rule: " << r.metric << ", lower is better; keep when the gain over the base exceeds " << r.k_noise
     << " x noise and " << fmt(100 * r.min_rel_delta, 2) << "%; provisional above " << r.provisional_factor
     << "x the phase's median step time";
  return os.str();
}

std::string mean_text(const Card& c) {
  if (c.n == 0) return "-";
  return fmt(c.mean) + (c.n >= 2 ? " +- " + fmt(c.sd) : "");
}

std::string run_value_text(const RunView& v) {
  if (!std::isfinite(v.value)) return "-";
  return fmt(v.value) + " @ " + std::to_string(v.value_step);
}

std::string run_status_text(const RunView& v) {
  std::string s = status_name(v.row.status);
  if (v.provisional) s += ", provisional (" + fmt(v.step_ratio, 1) + "x median step)";
  return s;
}

std::string compile_text(int64_t k, int64_t n, double lo, double hi) {
  if (n == 0) return "-";
  std::ostringstream os;
  os << k << "/" << n << " (" << std::fixed << std::setprecision(0) << 100.0 * k / n << "%, 95% " << 100 * lo << "-"
     << 100 * hi << "%)";
  return os.str();
}

std::string card_compile(const Card& c) {
  return c.compile_n ? compile_text(c.compile_k, c.compile_n, c.compile_lo, c.compile_hi) + (c.compile_mode == "fim" ? " fim" : "")
                     : "-";
}

std::string run_compiles(const RunView& v) {
  std::string s;
  for (auto& e : v.compiles)
    s += (s.empty() ? "" : "; ") + std::string("compile ") + e.mode + " @ " + std::to_string(e.step) +
         (e.in_spike ? " (in a spike)" : "") + ": " + compile_text(e.k, e.n, e.lo, e.hi);
  return s;
}

// Everything said about a run beyond its numbers: status reason, the spike note, compile rates.
std::string run_reason(const RunView& v) {
  std::string why = v.row.reason;
  for (const std::string& part : {v.note, run_compiles(v)})
    if (!part.empty()) why += (why.empty() ? "" : "; ") + part;
  return why;
}

std::string stack_text(const Card& c) {
  if (!std::isfinite(c.predicted_pct)) return "";
  return "stacking: predicted " + pct(c.predicted_pct) + " (sum of " + c.predicted_from + "), measured " +
         pct(c.measured_pct) + " vs the baseline";
}

// Text table with padded columns.
struct Table {
  std::vector<std::vector<std::string>> rows;
  std::string str(const std::string& indent = "") const {
    std::vector<size_t> w;
    for (auto& r : rows)
      for (size_t i = 0; i < r.size(); ++i) {
        if (w.size() <= i) w.push_back(0);
        w[i] = std::max(w[i], r[i].size());
      }
    std::string out;
    for (auto& r : rows) {
      std::string line = indent;
      for (size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line += std::string(w[i] - r[i].size() + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line + "\n";
    }
    return out;
  }
};

std::string one_line(std::string s) {
  for (auto& ch : s)
    if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
  return s;
}

}  // namespace

std::string render_text(const Scorecard& s) {
  std::ostringstream os;
  os << "plan " << one_line(s.plan.name) << (s.plan.description.empty() ? "" : " -- " + one_line(s.plan.description))
     << "\n" << rule_text(s.plan.rule) << "\n";
  if (s.groups.empty()) os << "\nno runs in the ledger for this plan yet\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "\n" << group_title(s, gi) << "\n" << noise_text(g) << "\n\n";
    Table t;
    bool any_compile = false;
    for (auto& c : g.cards) any_compile |= c.compile_n > 0;
    t.rows.push_back({"phase", "experiment", "base", "n", "val_bpb mean +- sd", "delta", "verdict"});
    if (any_compile) t.rows[0].push_back("compile rate");
    for (auto& c : g.cards) {
      t.rows.push_back({one_line(c.phase), one_line(c.id), c.base.empty() ? "-" : one_line(c.base), std::to_string(c.n),
                        mean_text(c), pct(c.delta_pct), c.verdict});
      if (any_compile) t.rows.back().push_back(card_compile(c));
    }
    os << t.str("  ") << "\n";
    for (auto& c : g.cards) {
      os << "  " << one_line(c.id) << ": " << one_line(c.evidence) << "\n";
      if (!c.modules.empty()) {
        os << "    modules:";
        for (auto& m : c.modules) os << " " << one_line(m);
        os << "\n";
      }
      if (!stack_text(c).empty()) os << "    " << stack_text(c) << "\n";
      Table rt;
      for (auto& v : c.runs) {
        std::vector<std::string> row = {"s" + std::to_string(v.row.seed), run_status_text(v),
                                         "best " + run_value_text(v), "final " + fmt(v.row.final_val_bpb),
                                         std::isfinite(v.row.step_ms) && v.row.step_ms > 0 ? fmt(v.row.step_ms, 0) + " ms/step" : ""};
        const std::string why = run_reason(v);
        if (!why.empty()) row.push_back(one_line(why));
        rt.rows.push_back(row);
      }
      os << rt.str("    ");
    }
  }
  return os.str();
}

namespace {

std::string md_escape(const std::string& s) {
  std::string o;
  for (char ch : one_line(s)) {
    if (std::string("|\\`*_[]<>#").find(ch) != std::string::npos) o += '\\';
    o += ch;
  }
  return o;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string o = "\"";
  for (char ch : s) o += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return o + "\"";
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char ch : s) switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += ch;
    }
  return o;
}

}  // namespace

std::string render_markdown(const Scorecard& s) {
  std::ostringstream os;
  os << "# Plan " << md_escape(s.plan.name) << "\n\n";
  if (!s.plan.description.empty()) os << md_escape(s.plan.description) << "\n\n";
  os << md_escape(rule_text(s.plan.rule)) << "\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "\n## " << md_escape(group_title(s, gi)) << "\n\n" << md_escape(noise_text(g)) << "\n\n";
    os << "| phase | experiment | base | n | val_bpb mean ± sd | delta | verdict | compile rate | evidence |\n";
    os << "|---|---|---|---:|---:|---:|---|---|---|\n";
    for (auto& c : g.cards) {
      std::string ev = c.evidence + (stack_text(c).empty() ? "" : "; " + stack_text(c));
      os << "| " << md_escape(c.phase) << " | " << md_escape(c.id) << " | " << md_escape(c.base.empty() ? "-" : c.base)
         << " | " << c.n << " | " << md_escape(mean_text(c)) << " | " << pct(c.delta_pct) << " | **" << c.verdict
         << "** | " << card_compile(c) << " | " << md_escape(ev) << " |\n";
    }
    os << "\n| run | status | best val_bpb @ step | final | ms/step | reason |\n|---|---|---:|---:|---:|---|\n";
    for (auto& c : g.cards)
      for (auto& v : c.runs) {
        const std::string why = run_reason(v);
        os << "| " << md_escape(v.row.run_id) << " | " << md_escape(run_status_text(v)) << " | " << run_value_text(v)
           << " | " << fmt(v.row.final_val_bpb) << " | " << fmt(v.row.step_ms, 0) << " | " << md_escape(why) << " |\n";
      }
  }
  return os.str();
}

std::string render_csv(const Scorecard& s) {
  std::ostringstream os;
  os << "plan,substrate_id,data_fingerprint,phase,experiment,base,modules,seed,run_id,status,reason,counted,"
        "provisional,best_val_bpb,best_step,used_val_bpb,used_step,final_val_bpb,step_ms,tokens_per_second,"
        "exp_n,exp_mean,exp_sd,delta_pct,verdict,noise_sd,exp_compile_k,exp_compile_n,git_commit\n";
  auto num = [](double x) {
    if (!std::isfinite(x)) return std::string();
    std::ostringstream o;
    o << std::setprecision(10) << x;
    return o.str();
  };
  for (auto& g : s.groups)
    for (auto& c : g.cards) {
      std::string mods;
      for (auto& m : c.modules) mods += (mods.empty() ? "" : " ") + m;
      for (auto& v : c.runs) {
        const RunRow& r = v.row;
        std::vector<std::string> f = {s.plan.name, g.substrate_id, g.data_fingerprint, c.phase, c.id, c.base, mods,
                                      std::to_string(r.seed), r.run_id, status_name(r.status), r.reason,
                                      v.counted ? "1" : "0", v.provisional ? "1" : "0", num(r.best_val_bpb),
                                      r.best_step >= 0 ? std::to_string(r.best_step) : "", num(v.value),
                                      v.value_step >= 0 ? std::to_string(v.value_step) : "", num(r.final_val_bpb),
                                      num(r.step_ms), num(r.tokens_per_second), std::to_string(c.n), num(c.mean),
                                      num(c.sd), num(c.delta_pct), c.verdict, num(g.noise_sd),
                                      std::to_string(c.compile_k), std::to_string(c.compile_n), r.git_commit};
        for (size_t i = 0; i < f.size(); ++i) os << (i ? "," : "") << csv_field(f[i]);
        os << "\n";
      }
    }
  return os.str();
}

namespace {

const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                          "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"};

// A round tick interval (1, 2 or 5 x 10^k) giving at most 6 ticks over [0, n].
int64_t nice_step(int64_t n) {
  for (int64_t p = 1;; p *= 10)
    for (int64_t m : {1, 2, 5})
      if (n / (m * p) <= 5) return m * p;
}

// val_bpb against step for the runs of one phase. The y range leaves out the first fifth of
// training (step 0 sits near ln V / ln 2 per byte and would flatten everything else); points
// above the range are drawn on its top edge.
std::string phase_chart(const Group& g, const std::string& phase) {
  const double W = 760, H = 340, L = 64, R = 170, T = 16, B = 40;
  std::vector<const Card*> cards;
  int64_t max_step = 0;
  for (auto& c : g.cards)
    if (c.phase == phase) {
      cards.push_back(&c);
      for (auto& v : c.runs)
        for (auto& e : v.evals) max_step = std::max(max_step, e.step);
    }
  double lo = INFINITY, hi = -INFINITY;
  for (auto* c : cards)
    for (auto& v : c->runs)
      for (auto& e : v.evals)
        if (std::isfinite(e.val_bpb)) {
          lo = std::min(lo, e.val_bpb);
          if (e.step >= max_step / 5) hi = std::max(hi, e.val_bpb);
        }
  if (!std::isfinite(lo) || max_step == 0) return "<p class=\"muted\">no eval points yet</p>";
  if (!(hi > lo)) hi = lo + 0.01;
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  auto X = [&](double step) { return L + (W - L - R) * step / double(max_step); };
  auto Y = [&](double y) { return T + (H - T - B) * (1.0 - (y - lo) / (hi - lo)); };
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" role=\"img\" aria-label=\"val_bpb against step, phase " << html_escape(phase) << "\">\n";
  os << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
     << "\" fill=\"#fff\" stroke=\"#999\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double y = lo + (hi - lo) * i / 4.0;
    os << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << Y(y) << "\" y2=\"" << Y(y)
       << "\" stroke=\"#eee\"/><text x=\"" << L - 6 << "\" y=\"" << Y(y) + 4 << "\" text-anchor=\"end\" class=\"ax\">"
       << fmt(y, 3) << "</text>\n";
  }
  const int64_t tick = nice_step(max_step);
  for (int64_t step = 0; step <= max_step; step += tick)
    os << "<text x=\"" << X(step) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\" class=\"ax\">" << step
       << "</text>\n";
  os << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 6 << "\" text-anchor=\"middle\" class=\"ax\">step</text>\n";
  os << "<text x=\"14\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 14 " << (T + H - B) / 2
     << ")\" text-anchor=\"middle\" class=\"ax\">val_bpb</text>\n";
  double legend_y = T + 10;
  for (size_t ci = 0; ci < cards.size(); ++ci) {
    const Card& c = *cards[ci];
    const char* color = kPalette[ci % (sizeof kPalette / sizeof *kPalette)];
    for (auto& v : c.runs) {
      if (v.evals.empty()) continue;
      const bool invalid = v.row.status == Status::Invalid;
      os << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.6\""
         << (invalid ? " stroke-dasharray=\"6 4\" opacity=\"0.7\"" : "") << " points=\"";
      for (auto& e : v.evals)
        if (std::isfinite(e.val_bpb) && e.val_bpb <= hi) os << X(e.step) << "," << Y(e.val_bpb) << " ";
      os << "\"><title>" << html_escape(v.row.run_id) << (invalid ? " INVALID: " + html_escape(v.row.reason) : "")
         << "</title></polyline>\n";
      if (std::isfinite(v.value) && v.value_step >= 0)
        os << "<circle cx=\"" << X(v.value_step) << "\" cy=\"" << Y(v.value) << "\" r=\"4\" fill=\""
           << (invalid ? "#fff" : color) << "\" stroke=\"" << color << "\"><title>" << html_escape(v.row.run_id)
           << " best " << fmt(v.value) << " @ " << v.value_step << "</title></circle>\n";
      if (invalid) {
        const EvalPoint& e = v.evals.back();
        os << "<text x=\"" << X(e.step) - 4 << "\" y=\"" << Y(e.val_bpb) - 6
           << "\" text-anchor=\"end\" class=\"inv\">INVALID</text>\n";
      }
    }
    os << "<line x1=\"" << W - R + 12 << "\" x2=\"" << W - R + 36 << "\" y1=\"" << legend_y << "\" y2=\"" << legend_y
       << "\" stroke=\"" << color << "\" stroke-width=\"2\"/><text x=\"" << W - R + 42 << "\" y=\"" << legend_y + 4
       << "\" class=\"lg\">" << html_escape(c.id.size() > 20 ? c.id.substr(0, 19) + "~" : c.id) << "</text>\n";
    legend_y += 18;
  }
  os << "</svg>\n<p class=\"muted\">Dot: the best step that counts; dashed: INVALID. Curves start where they enter the "
        "range: evals above "
     << fmt(hi, 3) << " (the first fifth of training) are in the tables, not drawn.</p>\n";
  return os.str();
}

}  // namespace

std::string render_html(const Scorecard& s) {
  std::ostringstream os;
  os << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>slmlab report: "
     << html_escape(s.plan.name) << "</title>\n<style>\n"
     << "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}\n"
     << "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}\n"
     << "th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}\n"
     << ".keep{background:#d8f5d0}.park{background:#fff4c2}.drop{background:#f9d0d0}.inconclusive{background:#eee}\n"
     << ".reference{background:#e4ecf7}.pending{background:#fff}.INVALID{color:#b00;font-weight:bold}.muted{color:#777}\n"
     << ".ev{font-size:12px;color:#444;max-width:520px}.ax{font-size:11px;fill:#555}.lg{font-size:12px;fill:#222}\n"
     << ".inv{font-size:11px;fill:#b00;font-weight:bold}code{font-size:12px}\n"
     << "code.args{display:block;max-width:360px;white-space:normal;overflow-wrap:anywhere;color:#444}\n"
     << "</style></head><body>\n";
  os << "<h1>Plan " << html_escape(s.plan.name) << "</h1>\n";
  if (!s.plan.description.empty()) os << "<p>" << html_escape(s.plan.description) << "</p>\n";
  os << "<p class=\"muted\">" << html_escape(rule_text(s.plan.rule)) << "</p>\n";
  if (s.groups.empty()) os << "<p>No runs in the ledger for this plan yet.</p>\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "<h2>" << html_escape(group_title(s, gi)) << "</h2>\n<p class=\"muted\">" << html_escape(noise_text(g))
       << "</p>\n";
    os << "<table><tr><th>phase</th><th>experiment</th><th>base</th><th>modules</th><th>n</th><th>val_bpb mean ± sd</th>"
          "<th>delta</th><th>verdict</th><th>compile rate</th><th>evidence</th></tr>\n";
    for (auto& c : g.cards) {
      std::string mods;
      for (auto& m : c.modules) {  // the name, with every resolved argument folded under it (no script needed)
        const auto dot = m.find('.');
        mods += "<details><summary><code>" + html_escape(m.substr(0, dot)) + "</code></summary><code class=\"args\">" +
                html_escape(dot == std::string::npos ? "(defaults)" : m.substr(dot + 1)) + "</code></details>";
      }
      os << "<tr><td>" << html_escape(c.phase) << "</td><td>" << html_escape(c.id) << "</td><td>"
         << html_escape(c.base.empty() ? "-" : c.base) << "</td><td>" << (mods.empty() ? "(baseline)" : mods)
         << "</td><td class=\"num\">" << c.n << "</td><td class=\"num\">" << html_escape(mean_text(c))
         << "</td><td class=\"num\">" << pct(c.delta_pct) << "</td><td class=\"" << c.verdict << "\"><b>" << c.verdict
         << "</b></td><td>" << card_compile(c) << "</td><td class=\"ev\">" << html_escape(c.evidence)
         << (stack_text(c).empty() ? "" : "<br>" + html_escape(stack_text(c))) << "</td></tr>\n";
    }
    os << "</table>\n";
    std::vector<std::string> phases;
    for (auto& c : g.cards)
      if (std::find(phases.begin(), phases.end(), c.phase) == phases.end()) phases.push_back(c.phase);
    for (auto& ph : phases) os << "<h3>Phase " << html_escape(ph) << ": val_bpb against step</h3>\n" << phase_chart(g, ph);
    os << "<h3>Runs</h3>\n<table><tr><th>run</th><th>status</th><th>best val_bpb @ step</th><th>final</th>"
          "<th>ms/step</th><th>substrate</th><th>commit</th><th>reason</th></tr>\n";
    for (auto& c : g.cards)
      for (auto& v : c.runs) {
        const std::string why = run_reason(v);
        const bool inv = v.row.status == Status::Invalid;
        os << "<tr><td>" << html_escape(v.row.run_id) << "</td><td" << (inv ? " class=\"INVALID\"" : "") << ">"
           << html_escape(run_status_text(v)) << "</td><td class=\"num\">" << run_value_text(v) << "</td><td class=\"num\">"
           << fmt(v.row.final_val_bpb) << "</td><td class=\"num\">" << fmt(v.row.step_ms, 0) << "</td><td><code>"
           << html_escape(short_id(v.row.substrate_id)) << "</code></td><td><code>"
           << html_escape(v.row.git_commit.substr(0, 10)) << "</code></td><td>" << html_escape(why) << "</td></tr>\n";
      }
    os << "</table>\n";
  }
  os << "</body></html>\n";
  return os.str();
}

// ---------------------------------------------------------------------------------------------

int report(const ReportOptions& o) {
  SLM_CHECK(o.format == "txt" || o.format == "md" || o.format == "html" || o.format == "csv", "report: --format '",
            o.format, "' is not one of txt, md, html, csv");
  SLM_CHECK(fs::exists(o.ledger), "report: no ledger at ", o.ledger, "; run `slmlab ablate PLAN` first or pass --ledger FILE");
  Ledger ledger(o.ledger);
  std::vector<PlanInfo> plans;
  if (!o.plan.empty() && o.plan.find(".toml") != std::string::npos) {
    plans.push_back(plan_info(load_plan(o.plan)));
  } else {
    std::vector<std::string> names = o.plan.empty() ? ledger.plan_names() : std::vector<std::string>{o.plan};
    SLM_CHECK(!names.empty(), "report: the ledger ", o.ledger, " has no runs yet");
    for (auto& n : names) {
      auto spec = ledger.plan_spec(n);
      if (!spec) {
        SLM_CHECK(!ledger.runs(n).empty(), "report: no plan '", n, "' in ", o.ledger, "; plans there: ", [&] {
          std::string s;
          for (auto& x : ledger.plan_names()) s += (s.empty() ? "" : ", ") + x;
          return s.empty() ? std::string("none") : s;
        }());
        // Runs without a saved spec (a ledger from before specs were saved): experiments, no bases.
        PlanInfo p;
        p.name = n;
        for (auto& r : ledger.runs(n))
          if (!p.find(r.experiment)) p.experiments.push_back({r.experiment, r.phase, "", "", {}, {}, {}});
        plans.push_back(p);
      } else {
        plans.push_back(plan_info_from_json(*spec));
      }
    }
  }
  std::string out;
  for (auto& p : plans) {
    std::map<std::string, std::vector<EvalPoint>> evals;
    auto runs = ledger.runs(p.name);
    std::map<std::string, std::vector<CompileEval>> compiles;
    for (auto& r : runs) {
      evals[r.run_id] = ledger.evals(r.run_id);
      compiles[r.run_id] = ledger.compile_evals(r.run_id);
    }
    Scorecard s = build_scorecard(p, runs, evals, compiles);
    if (o.format == "txt") out += (out.empty() ? "" : "\n") + render_text(s);
    else if (o.format == "md") out += (out.empty() ? "" : "\n") + render_markdown(s);
    else if (o.format == "csv") {
      std::string c = render_csv(s);
      out += out.empty() ? c : c.substr(c.find('\n') + 1);  // one header
    } else {
      SLM_CHECK(plans.size() == 1, "report: --format html renders one plan; pass --plan NAME (plans: ", [&] {
        std::string x;
        for (auto& q : plans) x += (x.empty() ? "" : ", ") + q.name;
        return x;
      }(), ")");
      out = render_html(s);
    }
  }
  if (o.out.empty()) std::fputs(out.c_str(), stdout);
  else {
    fs::mkdirs(fs::parent(o.out));
    fs::write_atomic(o.out, out);
    std::printf("[report] wrote %s\n", o.out.c_str());
  }
  return 0;
}

}  // namespace slm::engine
