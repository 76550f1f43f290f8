// The HTML report: the tables of the text report, one val_bpb-against-step chart per phase (inline
// SVG), INVALID runs drawn dashed. One page, no script, no network.
#include "engine/render.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace slm::engine {

using namespace phrase;

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
       << fixed_text(y, 3) << "</text>\n";
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
           << " best " << fixed_text(v.value) << " @ " << v.value_step << "</title></circle>\n";
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
     << fixed_text(hi, 3) << " (the first fifth of training) are in the tables, not drawn.</p>\n";
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
  os << "<p class=\"muted\">" << html_escape(rule_text(s)) << "</p>\n";
  if (s.groups.empty()) os << "<p>No runs in the ledger for this plan yet.</p>\n";
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const Group& g = s.groups[gi];
    os << "<h2>" << html_escape(group_title(s, gi)) << "</h2>\n<p class=\"muted\">" << html_escape(noise_text(g))
       << "</p>\n";
    if (!family_text(s, g).empty()) os << "<p class=\"muted\">" << html_escape(family_text(s, g)) << "</p>\n";
    os << "<table><tr><th>phase</th><th>experiment</th><th>base</th><th>modules</th><th>n</th><th>" << html_escape(s.plan.rule.metric)
       << " mean ± sd</th><th>delta</th><th>verdict</th><th>cost vs base</th><th>delta at equal compute</th><th>compile rate</th>"
          "<th>other metrics</th><th>evidence</th></tr>\n";
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
         << "</td><td class=\"num\">" << pct_text(c.delta_pct) << "</td><td class=\"" << c.verdict << "\"><b>" << c.verdict
         << "</b>" << (c.unstable ? " (" + std::to_string(c.unstable) + " unstable)" : "") << "</td><td>"
         << html_escape(c.base.empty() ? "-" : cost_ratio_text(c)) << "</td><td>"
         << html_escape(c.base.empty() ? "-" : equal_compute_text(c)) << "</td><td>" << card_compile(c) << "</td><td>" << html_escape(other_metrics_text(c, s.plan.rule.metric))
         << "</td><td class=\"ev\">" << html_escape(c.evidence)
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
           << fixed_text(v.row.final_val_bpb) << "</td><td class=\"num\">" << fixed_text(v.row.step_ms, 0) << "</td><td><code>"
           << html_escape(short_id(v.row.substrate_id)) << "</code></td><td><code>"
           << html_escape(v.row.git_commit.substr(0, 10)) << "</code></td><td>" << html_escape(why) << "</td></tr>\n";
      }
    os << "</table>\n";
  }
  os << "</body></html>\n";
  return os.str();
}

}  // namespace slm::engine
