// The HTML report: the tables of the text report, one decision chart per substrate (each experiment's
// delta against its base with the interval its verdict was taken on), one val_bpb-against-step chart
// per phase (inline SVG), INVALID runs drawn dashed, and a scale ladder's table. One page, no
// script, no network.
#include "engine/render.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <utility>

#include "engine/ladder.h"

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

// The x range of a decision chart, in percent of the base's mean: every delta with its interval, zero
// and the keep bar. An interval far wider than every delta (one seed against a 1-df noise floor)
// would squeeze the deltas into a line: the range stops at 4x the largest |delta| (or 4x the keep
// bar) and longer whiskers end in an arrow.
std::pair<double, double> decision_range(const std::vector<const Group*>& groups, double min_rel_pct) {
  double lo = -min_rel_pct, hi = min_rel_pct, reach = min_rel_pct;
  for (auto* g : groups)
    for (auto& c : g->cards)
      if (!c.base.empty() && std::isfinite(c.dec_delta) && c.dec_base > 0) {
        const double d = 100 * c.dec_delta / c.dec_base, h = std::isfinite(c.bar) ? 100 * c.bar / c.dec_base : 0;
        reach = std::max(reach, std::fabs(d));
        lo = std::min(lo, d - h);
        hi = std::max(hi, d + h);
      }
  return {std::max(lo, -4 * reach), std::min(hi, 4 * reach)};
}

// Each experiment with a base: its delta (the verdict's: equal steps or equal compute) as a bar from
// zero, colored by verdict, with the interval the rule decided on (delta +- the Welch bar at the
// comparison's alpha and df: it clears zero exactly when the comparison is significant before the
// phase's correction), and the keep bar (-min_rel_delta) as a dashed line. `range` in percent.
std::string decision_chart(const Scorecard& s, const Group& g, const std::string& title, std::pair<double, double> range) {
  std::vector<const Card*> cards;
  for (auto& c : g.cards)
    if (!c.base.empty()) cards.push_back(&c);
  if (cards.empty()) return "";
  const double W = 760, L = 170, R = 190, T = 24, row = 26, B = 36, H = T + row * cards.size() + B;
  const double min_rel_pct = 100 * s.plan.rule.min_rel_delta;
  double lo = range.first, hi = range.second;
  const double pad = 0.04 * (hi - lo);
  lo -= pad;
  hi += pad;
  auto X = [&](double pct) { return L + (W - L - R) * (std::clamp(pct, lo, hi) - lo) / (hi - lo); };
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"decisions\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
     << " " << H << "\" role=\"img\" aria-label=\"" << html_escape(title) << "\">\n";
  os << "<text x=\"" << L << "\" y=\"14\" class=\"lg\">" << html_escape(title) << "</text>\n";
  os << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << row * cards.size()
     << "\" fill=\"#fff\" stroke=\"#999\"/>\n";
  const double y_end = T + row * cards.size();
  // Ticks: at most six round values (1, 2 or 5 x 10^k percent) across the range.
  const double span = hi - lo;
  double tick = 1e-3;
  for (int k = 0; span / tick > 6; ++k) tick *= k % 3 == 1 ? 2.5 : 2.0;
  for (double v = std::ceil(lo / tick) * tick; v <= hi; v += tick)
    os << "<line x1=\"" << X(v) << "\" x2=\"" << X(v) << "\" y1=\"" << T << "\" y2=\"" << y_end << "\" stroke=\"#eee\"/><text x=\""
       << X(v) << "\" y=\"" << y_end + 14 << "\" text-anchor=\"middle\" class=\"ax\">" << pct_text(std::fabs(v) < tick / 2 ? 0 : v, 1)
       << "</text>\n";
  os << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 4 << "\" text-anchor=\"middle\" class=\"ax\">delta of "
     << html_escape(s.plan.rule.metric) << " against the base, % of the base's mean (lower is better)</text>\n";
  os << "<line class=\"zero\" x1=\"" << X(0) << "\" x2=\"" << X(0) << "\" y1=\"" << T << "\" y2=\"" << y_end
     << "\" stroke=\"#333\"/>\n";
  os << "<line class=\"keep-bar\" x1=\"" << X(-min_rel_pct) << "\" x2=\"" << X(-min_rel_pct) << "\" y1=\"" << T << "\" y2=\""
     << y_end << "\" stroke=\"#2a7a1f\" stroke-dasharray=\"4 3\"><title>keep bar: " << pct_text(-min_rel_pct)
     << " (min_rel_delta)</title></line>\n";
  for (size_t i = 0; i < cards.size(); ++i) {
    const Card& c = *cards[i];
    const double yc = T + row * (i + 0.5);
    const bool has = std::isfinite(c.dec_delta) && c.dec_base > 0 && c.n > 0;
    const double d = has ? 100 * c.dec_delta / c.dec_base : NAN;
    const double h = has && std::isfinite(c.bar) ? 100 * c.bar / c.dec_base : NAN;
    os << "<g class=\"decision verdict-" << c.verdict << "\" data-experiment=\"" << html_escape(c.id) << "\">";
    os << "<text x=\"" << L - 6 << "\" y=\"" << yc + 4 << "\" text-anchor=\"end\" class=\"lg\">"
       << html_escape(c.id.size() > 24 ? c.id.substr(0, 23) + "~" : c.id) << "</text>";
    if (has) {
      os << "<rect class=\"bar\" x=\"" << std::min(X(0), X(d)) << "\" y=\"" << yc - 7 << "\" width=\"" << std::fabs(X(d) - X(0))
         << "\" height=\"14\"><title>" << html_escape(c.id) << ": " << pct_text(d) << " vs " << html_escape(c.base) << ", "
         << c.verdict << "</title></rect>";
      if (std::isfinite(h)) {
        os << "<line class=\"interval\" x1=\"" << X(d - h) << "\" x2=\"" << X(d + h) << "\" y1=\"" << yc << "\" y2=\"" << yc
           << "\"><title>interval " << pct_text(d - h) << " to " << pct_text(d + h) << " (delta +- the bar at alpha "
           << fixed_text(100 * c.alpha, 2) << "%, " << fixed_text(c.df, 1) << " df)</title></line>";
        for (double e : {d - h, d + h}) {
          const bool clipped = e < lo || e > hi;
          const double xe = X(e), dir = e < lo ? 1 : -1;
          if (clipped)  // an arrow: the interval goes on past the range
            os << "<path class=\"interval clipped\" d=\"M" << xe + 6 * dir << "," << yc - 4 << " L" << xe << "," << yc << " L"
               << xe + 6 * dir << "," << yc + 4 << "\" fill=\"none\"/>";
          else
            os << "<line class=\"interval\" x1=\"" << xe << "\" x2=\"" << xe << "\" y1=\"" << yc - 5 << "\" y2=\"" << yc + 5 << "\"/>";
        }
      }
    }
    os << "<text x=\"" << W - R + 8 << "\" y=\"" << yc + 4 << "\" class=\"lg\">" << (has ? pct_text(d) + " " : "") << c.verdict
       << "</text></g>\n";
  }
  os << "</svg>\n";
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
     << "svg.decisions .bar{fill:#bbb}svg.decisions .interval{stroke:#222;stroke-width:1.5}\n"
     << "svg.decisions .verdict-keep .bar{fill:#4caf50}svg.decisions .verdict-park .bar{fill:#e6c229}\n"
     << "svg.decisions .verdict-drop .bar{fill:#e0504a}svg.decisions .verdict-reference .bar{fill:#7fa6d9}\n"
     << "svg.decisions .verdict-pending .bar{fill:#e4e4e4}.flip{color:#b00;font-weight:bold}\n"
     << "code.args{display:block;max-width:360px;white-space:normal;overflow-wrap:anywhere;color:#444}\n"
     << "</style></head><body>\n";
  os << "<h1>Plan " << html_escape(s.plan.name) << "</h1>\n";
  if (!s.plan.description.empty()) os << "<p>" << html_escape(s.plan.description) << "</p>\n";
  os << "<p class=\"muted\">" << html_escape(rule_text(s)) << "</p>\n";
  if (s.groups.empty()) os << "<p>No runs in the ledger for this plan yet.</p>\n";
  const LadderView lv = ladder_view(s);
  // A ladder's rungs share the decision charts' x range, so one panel per rung reads against the next.
  std::vector<const Group*> rung_groups;
  for (int gi : lv.groups)
    if (gi >= 0) rung_groups.push_back(&s.groups[gi]);
  const double min_rel_pct = 100 * s.plan.rule.min_rel_delta;
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
    const std::string rung = group_rung(s, g);
    const auto range = decision_range(rung.empty() ? std::vector<const Group*>{&g} : rung_groups, min_rel_pct);
    const std::string chart = decision_chart(s, g, (rung.empty() ? "" : "rung " + rung + ": ") + "decisions on " + s.plan.rule.metric, range);
    if (!chart.empty())
      os << "<h3>Decisions" << (rung.empty() ? "" : " on rung " + html_escape(rung)) << "</h3>\n" << chart
         << "<p class=\"muted\">Bar: each experiment's delta against its base, colored by verdict; whisker: the interval the "
            "verdict was taken on (delta +- the Welch bar at the comparison's alpha and degrees of freedom, before the phase's "
            "correction: it clears zero when the difference is significant); dashed: the keep bar (min_rel_delta). An arrow: "
            "the interval runs on past the chart.</p>\n";
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
  if (!lv.rungs.empty()) {
    os << "<h2>" << html_escape(ladder_title(lv)) << "</h2>\n<table class=\"ladder\"><tr><th>experiment</th><th>base</th>";
    for (auto& r : lv.rungs) os << "<th>" << html_escape(r) << "</th>";
    os << "<th>trend</th><th>flips with scale</th></tr>\n";
    for (auto& row : lv.rows) {
      os << "<tr data-experiment=\"" << html_escape(row.id) << "\"><td>" << html_escape(row.id) << "</td><td>" << html_escape(row.base)
         << "</td>";
      for (auto* c : row.cards) os << "<td class=\"" << (c ? c->verdict : "pending") << "\">" << html_escape(ladder_cell(c)) << "</td>";
      std::string flips;
      for (auto& f : row.flips) flips += (flips.empty() ? "" : "; ") + f;
      os << "<td>" << html_escape(row.trend) << "</td><td" << (flips.empty() ? ">-" : " class=\"flip\">flips: " + html_escape(flips))
         << "</td></tr>\n";
    }
    os << "</table>\n<p class=\"muted\">" << html_escape(kAgreementNote) << "</p>\n<ul class=\"agreement\">\n";
    for (size_t i = 0; i < lv.agreements.size(); ++i) os << "<li>" << html_escape(agreement_line(lv, i)) << "</li>\n";
    os << "</ul>\n";
  }
  os << "</body></html>\n";
  return os.str();
}

}  // namespace slm::engine
