// The phrases every format shares, and the three table formats: text, Markdown, CSV (HTML is
// render_html.cpp).
#include "engine/render.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "engine/ladder.h"

namespace slm::engine {

using namespace phrase;

namespace {

std::string compile_text(int64_t k, int64_t n, double lo, double hi) {
  if (n == 0) return "-";
  std::ostringstream os;
  os << k << "/" << n << " (" << std::fixed << std::setprecision(0) << 100.0 * k / n << "%, 95% " << 100 * lo << "-"
     << 100 * hi << "%)";
  return os.str();
}

std::string run_compiles(const RunView& v) {
  std::string s;
  for (auto& e : v.compiles)
    s += (s.empty() ? "" : "; ") + std::string("compile ") + e.mode + " @ " + std::to_string(e.step) +
         (e.in_spike ? " (in a spike, excluded)" : "") + ": " + compile_text(e.k, e.n, e.lo, e.hi);
  return s;
}

}  // namespace

namespace phrase {

std::string short_id(const std::string& id) { return id.empty() ? "(not reported)" : id.substr(0, 16); }

std::string group_title(const Scorecard& s, size_t i) {
  const Group& g = s.groups[i];
  const std::string rung = group_rung(s, g);
  std::string t = (rung.empty() ? "" : "rung " + rung + ": ") + "substrate " + short_id(g.substrate_id);
  if (!g.data_fingerprint.empty()) t += " (data " + g.data_fingerprint.substr(0, 12) + ")";
  bool controls = !g.cards.empty();
  for (auto& c : g.cards) controls &= c.verdict == "control";
  if (controls) t += " -- parameter-matched control arms on a derived substrate: compared only with the experiments they control";
  if (!rung.empty()) t += " -- compared only within this rung";
  else if (i > 0 && !g.substrate_id.empty()) t += " -- a different substrate: compared only within this group";
  if (g.code_ids.size() > 1) t += " -- mixed code: " + std::to_string(g.code_ids.size()) + " builds";
  return t;
}

std::string noise_text(const Group& g) {
  if (!std::isfinite(g.noise_sd)) return "noise floor: not measured (no experiment has 2 counted seeds)";
  return "noise floor: pooled seed sd " + fixed_text(g.noise_sd) + " from " + std::to_string(g.noise_runs) + " runs of " +
         std::to_string(g.noise_experiments) + " experiment" + (g.noise_experiments > 1 ? "s" : "");
}

std::string rule_text(const Scorecard& s) {
  const DecisionRule& r = s.plan.rule;
  std::ostringstream os;
  os << "rule: " << r.metric << (r.compare_at == "compute" ? " at equal training FLOPs (interpolated on the eval curves)" : " at equal steps")
     << ", lower is better; Welch t per comparison (each arm's own seed variance; an arm with "
     << "one counted run borrows the substrate's pooled sd), decided at two-sided alpha " << fixed_text(100 * s.alpha, 2)
     << "% (k_noise " << r.k_noise << " -> " << fixed_text(100 * rule_alpha(r), 2) << "%";
  if (s.looks > 1) os << " / " << s.looks << " looks: --decide up to " << r.max_seeds << " seeds, Bonferroni over looks";
  os << "); correction " << r.correction
     << (r.correction == "holm" ? " (family-wise rate per phase)" : r.correction == "bh" ? " (false-discovery rate per phase)" : "")
     << "; keep also needs " << fixed_text(100 * r.min_rel_delta, 2) << "%; provisional above " << r.provisional_factor
     << "x the phase's median step time; unstable runs " << (r.unstable_decides ? "decide (flagged)" : "do not decide");
  if (r.allow_mixed_code) os << "; allow_mixed_code: runs of different builds are compared";
  for (auto& [ph, m] : s.plan.phase_metrics) os << "; phase " << ph << " decides on " << m;
  os << "; parameters over +" << fixed_text(100 * r.param_share, 0) << "% of the base flagged";
  if (r.param_control != "none")
    os << " and " << (r.param_control == "widen" ? "widened" : "deepened") << "-base controls within "
       << fixed_text(100 * r.param_tolerance, 1) << "% of their parameters";
  if (r.compile_rate > 0) os << "; compile rate (fim, " << r.compile_rate << " prompts) at each run's best checkpoint";
  return os.str();
}

std::string family_text(const Scorecard& s, const Group& g) {
  std::string out;
  for (auto& f : g.families) {
    out += (out.empty() ? "" : "; ") + std::string("phase ") + f.phase + ": " + std::to_string(f.m) + " comparison" +
           (f.m > 1 ? "s" : "") + ", ";
    if (s.plan.rule.correction == "none")
      out += "chance that some null among them is called keep/park/drop: " + fixed_text(100 * f.rate, 1) +
             "% (1 - (1 - alpha)^m, independent comparisons)";
    else if (s.plan.rule.correction == "holm")
      out += "family-wise false-verdict rate at most " + fixed_text(100 * f.rate, 2) + "% (Holm)";
    else
      out += "false-discovery rate at most " + fixed_text(100 * f.rate, 2) + "% (Benjamini-Hochberg; family-wise when all are null)";
  }
  return out.empty() ? "" : "false verdicts: " + out;
}

std::string mean_text(const Card& c) {
  if (c.n == 0) return "-";
  return fixed_text(c.mean) + (c.n >= 2 ? " +- " + fixed_text(c.sd) : "") + (c.metric_named ? " (" + c.metric + ")" : "");
}

std::string other_metrics_text(const Card& c, const std::string& plan_metric) {
  const std::string& rule_metric = c.metric.empty() ? plan_metric : c.metric;  // its phase's, when it names one
  std::string out;
  auto add = [&](const std::string& k, double x) { out += (out.empty() ? "" : ", ") + k + " " + fixed_text(x); };
  auto vb = c.metric_means.find("val_bpb");  // the headline first
  if (vb != c.metric_means.end() && rule_metric != "val_bpb") add(vb->first, vb->second);
  for (auto& [k, x] : c.metric_means)
    if (k != rule_metric && k != "val_bpb") add(k, x);
  return out.empty() ? "-" : out;
}

// The run's final value of the rule's metric: final val_bpb, or the last eval's objective metric.
static double run_final(const RunView& v, const std::string& metric) {
  if (metric == "val_bpb") return v.row.final_val_bpb;
  if (v.evals.empty()) return NAN;
  auto it = v.evals.back().metrics.find(metric);
  return it == v.evals.back().metrics.end() ? NAN : it->second;
}

static bool any_other_metrics(const Group& g, const std::string& rule_metric) {
  for (auto& c : g.cards)
    for (auto& kv : c.metric_means)
      if (kv.first != rule_metric) return true;
  return false;
}

std::string run_value_text(const RunView& v) {
  if (!std::isfinite(v.value)) return "-";
  return fixed_text(v.value) + " @ " + std::to_string(v.value_step);
}

std::string run_status_text(const RunView& v) {
  std::string s = status_name(v.row.status);
  if (v.provisional) s += ", provisional (" + fixed_text(v.step_ratio, 1) + "x median step)";
  if (v.unstable) s += ", unstable (final +" + fixed_text(v.drift) + " over best)";
  return s;
}

std::string card_compile(const Card& c) {
  const std::string spiked =
      c.compile_spiked ? " (" + std::to_string(c.compile_spiked) + " in a spike, excluded)" : "";
  return c.compile_n ? compile_text(c.compile_k, c.compile_n, c.compile_lo, c.compile_hi) + (c.compile_mode == "fim" ? " fim" : "") + spiked
                     : "-" + spiked;
}

// Everything said about a run beyond its numbers: status reason, the spike note, compile rates.
std::string run_reason(const RunView& v) {
  std::string why = v.row.reason;
  for (const std::string& part : {v.note, run_compiles(v)})
    if (!part.empty()) why += (why.empty() ? "" : "; ") + part;
  return why;
}

std::string cost_ratio_text(const Card& c) {
  if (!std::isfinite(c.params_x) && !std::isfinite(c.flops_x) && !std::isfinite(c.wall_x)) return "-";
  std::string s = "params " + fixed_text(c.params_x, 2) + "x";
  if (std::isfinite(c.active_x) && std::fabs(c.active_x - c.params_x) > 1e-9) s += " (active " + fixed_text(c.active_x, 2) + "x)";
  if (c.over_share)  // the parameter-matched view belongs beside the parameter count it answers
    s += " (over the rule's param_share" +
         (c.control_id.empty() ? std::string(", no control arm")
                               : "; vs control " + c.control_id + " " + pct_text(c.control_delta_pct) + " " + c.control_verdict) + ")";
  return s + ", FLOPs/tok " + fixed_text(c.flops_x, 2) + "x, wall " + fixed_text(c.wall_x, 2) + "x";
}

std::string equal_compute_text(const Card& c) {
  if (!std::isfinite(c.eq_delta_pct)) return "-";
  std::ostringstream os;
  os << pct_text(c.eq_delta_pct) << " @ " << std::setprecision(3) << c.eq_flops << " FLOPs (interpolated)";
  return os.str();
}

std::string stack_text(const Card& c) {
  if (!std::isfinite(c.predicted_pct)) return "";
  return "stacking: predicted " + pct_text(c.predicted_pct) + " (sum of " + c.predicted_from + "), measured " +
         pct_text(c.measured_pct) + " vs the baseline";
}

const char* const kAgreementNote =
    "decision agreement: the share of pairwise decisions (each experiment against its base, and every two experiments "
    "against each other: which has the better mean) a smaller rung gets the same as the target, DataDecide's decision "
    "accuracy; the order of the means as they are, whatever their noise";

std::string ladder_cell(const Card* c) {
  if (!c) return "-";
  return (c->base.empty() ? "" : pct_text(c->delta_pct) + " ") + c->verdict + (c->n ? " (n " + std::to_string(c->n) + ")" : "");
}

std::string ladder_title(const LadderView& v) {
  std::string t = "scale ladder: ";
  for (size_t i = 0; i < v.rungs.size(); ++i) t += (i ? " < " : "") + v.rungs[i];
  return t + " (the target); each delta against the experiment's base on the same rung";
}

std::string agreement_line(const LadderView& v, size_t i) {
  std::string t = v.rungs[i] + " agrees with " + v.rungs.back() + " on " + agreement_text(v.agreements[i]);
  if (!v.agreements[i].disagree.empty()) {
    t += "; differs on";
    for (auto& d : v.agreements[i].disagree) t += " " + d + (&d == &v.agreements[i].disagree.back() ? "" : ",");
  }
  return t;
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

}  // namespace phrase

namespace {

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
     << "\n" << rule_text(s) << "\n";
  if (s.groups.empty()) os << "\nno runs in the ledger for this plan yet\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "\n" << group_title(s, gi) << "\n" << noise_text(g) << "\n";
    if (!family_text(s, g).empty()) os << family_text(s, g) << "\n";
    os << "\n";
    Table t;
    bool any_compile = false;
    for (auto& c : g.cards) any_compile |= c.compile_n > 0 || c.compile_spiked > 0;
    const std::string& metric = s.plan.rule.metric;
    const bool others = any_other_metrics(g, metric);
    t.rows.push_back({"phase", "experiment", "base", "n", metric + " mean +- sd", "delta", "verdict", "cost vs base",
                      "delta at equal compute"});
    if (any_compile) t.rows[0].push_back("compile rate");
    if (others) t.rows[0].push_back("other metrics (mean of bests)");
    for (auto& c : g.cards) {
      t.rows.push_back({one_line(c.phase), one_line(c.id), c.base.empty() ? "-" : one_line(c.base), std::to_string(c.n),
                        mean_text(c), pct_text(c.delta_pct),
                        c.verdict + (c.unstable ? " (" + std::to_string(c.unstable) + " unstable)" : ""),
                        c.base.empty() ? "-" : cost_ratio_text(c), c.base.empty() ? "-" : equal_compute_text(c)});
      if (any_compile) t.rows.back().push_back(card_compile(c));
      if (others) t.rows.back().push_back(other_metrics_text(c, metric));
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
                                         "best " + run_value_text(v), "final " + fixed_text(run_final(v, c.metric)),
                                         std::isfinite(v.row.step_ms) && v.row.step_ms > 0 ? fixed_text(v.row.step_ms, 0) + " ms/step" : ""};
        const std::string why = run_reason(v);
        if (!why.empty()) row.push_back(one_line(why));
        rt.rows.push_back(row);
      }
      os << rt.str("    ");
    }
  }
  const LadderView lv = ladder_view(s);
  if (!lv.rungs.empty()) {
    os << "\n" << ladder_title(lv) << "\n\n";
    Table t;
    t.rows.push_back({"experiment", "base"});
    for (auto& r : lv.rungs) t.rows[0].push_back(r);
    t.rows[0].insert(t.rows[0].end(), {"trend", "flips with scale"});
    for (auto& row : lv.rows) {
      t.rows.push_back({one_line(row.id), one_line(row.base)});
      for (auto* c : row.cards) t.rows.back().push_back(ladder_cell(c));
      std::string flips;
      for (auto& f : row.flips) flips += (flips.empty() ? "FLIPS: " : "; ") + f;
      t.rows.back().insert(t.rows.back().end(), {row.trend, flips.empty() ? "-" : one_line(flips)});
    }
    os << t.str("  ") << "\n" << kAgreementNote << "\n";
    for (size_t i = 0; i < lv.agreements.size(); ++i) os << "  " << one_line(agreement_line(lv, i)) << "\n";
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

}  // namespace

std::string render_markdown(const Scorecard& s) {
  std::ostringstream os;
  os << "# Plan " << md_escape(s.plan.name) << "\n\n";
  if (!s.plan.description.empty()) os << md_escape(s.plan.description) << "\n\n";
  os << md_escape(rule_text(s)) << "\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "\n## " << md_escape(group_title(s, gi)) << "\n\n" << md_escape(noise_text(g)) << "\n\n";
    if (!family_text(s, g).empty()) os << md_escape(family_text(s, g)) << "\n\n";
    os << "| phase | experiment | base | n | " << md_escape(s.plan.rule.metric)
       << " mean ± sd | delta | verdict | cost vs base | delta at equal compute | compile rate | other metrics | evidence |\n";
    os << "|---|---|---|---:|---:|---:|---|---|---|---|---|---|\n";
    for (auto& c : g.cards) {
      std::string ev = c.evidence + (stack_text(c).empty() ? "" : "; " + stack_text(c));
      os << "| " << md_escape(c.phase) << " | " << md_escape(c.id) << " | " << md_escape(c.base.empty() ? "-" : c.base)
         << " | " << c.n << " | " << md_escape(mean_text(c)) << " | " << pct_text(c.delta_pct) << " | **" << c.verdict
         << "**" << (c.unstable ? " (" + std::to_string(c.unstable) + " unstable)" : "") << " | "
         << md_escape(c.base.empty() ? "-" : cost_ratio_text(c)) << " | " << md_escape(c.base.empty() ? "-" : equal_compute_text(c))
         << " | " << card_compile(c) << " | " << md_escape(other_metrics_text(c, s.plan.rule.metric)) << " | "
         << md_escape(ev) << " |\n";
    }
    os << "\n| run | status | best val_bpb @ step | final | ms/step | reason |\n|---|---|---:|---:|---:|---|\n";
    for (auto& c : g.cards)
      for (auto& v : c.runs) {
        const std::string why = run_reason(v);
        os << "| " << md_escape(v.row.run_id) << " | " << md_escape(run_status_text(v)) << " | " << run_value_text(v)
           << " | " << fixed_text(v.row.final_val_bpb) << " | " << fixed_text(v.row.step_ms, 0) << " | " << md_escape(why) << " |\n";
      }
  }
  const LadderView lv = ladder_view(s);
  if (!lv.rungs.empty()) {
    os << "\n## " << md_escape(ladder_title(lv)) << "\n\n| experiment | base |";
    for (auto& r : lv.rungs) os << " " << md_escape(r) << " |";
    os << " trend | flips with scale |\n|---|---|";
    for (size_t i = 0; i < lv.rungs.size(); ++i) os << "---:|";
    os << "---|---|\n";
    for (auto& row : lv.rows) {
      os << "| " << md_escape(row.id) << " | " << md_escape(row.base) << " |";
      for (auto* c : row.cards) os << " " << md_escape(ladder_cell(c)) << " |";
      std::string flips;
      for (auto& f : row.flips) flips += (flips.empty() ? "" : "; ") + f;
      os << " " << md_escape(row.trend) << " | " << (flips.empty() ? "-" : "**flips**: " + md_escape(flips)) << " |\n";
    }
    os << "\n" << md_escape(kAgreementNote) << "\n\n";
    for (size_t i = 0; i < lv.agreements.size(); ++i) os << "- " << md_escape(agreement_line(lv, i)) << "\n";
  }
  return os.str();
}

std::string render_csv(const Scorecard& s) {
  std::ostringstream os;
  os << "plan,substrate_id,data_fingerprint,phase,experiment,base,modules,seed,run_id,status,reason,counted,"
        "provisional,best_val_bpb,best_step,used_val_bpb,used_step,final_val_bpb,step_ms,tokens_per_second,"
        "exp_n,exp_mean,exp_sd,delta_pct,verdict,noise_sd,exp_compile_k,exp_compile_n,git_commit,code_id,"
        "unstable,p,p_adj,alpha,welch_df,n_params,active_params,flops_per_token,tokens,wall_seconds,"
        "params_x,active_x,flops_x,wall_x,equal_compute_flops,equal_compute_delta_pct\n";
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
                                      std::to_string(c.compile_k), std::to_string(c.compile_n), r.git_commit, r.code_id,
                                      v.unstable ? "1" : "0", num(c.p), num(c.p_adj), num(c.alpha), num(c.df),
                                      r.n_params > 0 ? std::to_string(r.n_params) : "",
                                      r.active_params > 0 ? std::to_string(r.active_params) : "", num(r.flops_per_token),
                                      num(r.tokens), num(r.wall_seconds), num(c.params_x), num(c.active_x), num(c.flops_x),
                                      num(c.wall_x), num(c.eq_flops), num(c.eq_delta_pct)};
        for (size_t i = 0; i < f.size(); ++i) os << (i ? "," : "") << csv_field(f[i]);
        os << "\n";
      }
    }
  return os.str();
}

}  // namespace slm::engine
