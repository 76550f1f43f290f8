#include "engine/ladder.h"

#include <algorithm>
#include <cmath>

namespace slm::engine {

namespace {

bool decided(const std::string& verdict) { return verdict == "keep" || verdict == "park" || verdict == "drop"; }

int sign(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }

}  // namespace

Agreement agreement(const std::vector<std::string>& order, const std::map<std::string, double>& small,
                    const std::map<std::string, double>& target, const std::map<std::string, std::string>& bases) {
  auto value = [](const std::map<std::string, double>& m, const std::string& id) {
    auto it = m.find(id);
    return it == m.end() ? NAN : it->second;
  };
  std::vector<std::string> arms;  // measured on both rungs
  for (auto& id : order)
    if (std::isfinite(value(small, id)) && std::isfinite(value(target, id))) arms.push_back(id);
  Agreement a;
  for (size_t i = 0; i < arms.size(); ++i)
    for (size_t j = i + 1; j < arms.size(); ++j) {
      const std::string &x = arms[i], &y = arms[j];
      const int want = sign(value(target, x) - value(target, y));
      if (want == 0) {
        ++a.ties;
        continue;
      }
      const bool same = sign(value(small, x) - value(small, y)) == want;
      auto bx = bases.find(x), by = bases.find(y);
      const bool vs_base = (bx != bases.end() && bx->second == y) || (by != bases.end() && by->second == x);
      ++a.pairs;
      a.agree += same;
      a.base_pairs += vs_base;
      a.base_agree += vs_base && same;
      if (!same) a.disagree.push_back(x + " vs " + y);
    }
  return a;
}

std::string run_rung(const PlanInfo& plan, const std::string& run_id) {
  if (plan.ladder.empty()) return "";
  const std::string head = plan.name + "/";
  if (run_id.compare(0, head.size(), head) != 0) return "";
  const size_t end = run_id.find('/', head.size());
  if (end == std::string::npos) return "";
  const std::string rung = run_id.substr(head.size(), end - head.size());
  for (auto& r : plan.ladder)
    if (r.name == rung) return rung;
  return "";
}

std::string group_rung(const Scorecard& s, const Group& g) {
  for (auto& c : g.cards)
    for (auto& v : c.runs)
      if (auto r = run_rung(s.plan, v.row.run_id); !r.empty()) return r;
  return "";
}

void order_by_rung(Scorecard& s) {
  if (s.plan.ladder.empty()) return;
  auto rank = [&](const Group& g) {
    // Runs not reported yet gather in the group of substrate "": after every rung.
    if (g.substrate_id.empty()) return s.plan.ladder.size() + 1;
    const std::string r = group_rung(s, g);
    for (size_t i = 0; i < s.plan.ladder.size(); ++i)
      if (s.plan.ladder[i].name == r) return i;
    return s.plan.ladder.size();
  };
  std::stable_sort(s.groups.begin(), s.groups.end(), [&](const Group& a, const Group& b) { return rank(a) < rank(b); });
}

std::string trend_text(const std::vector<double>& d) {
  std::vector<double> x;
  for (double v : d)
    if (std::isfinite(v)) x.push_back(v);
  if (x.size() < 2) return x.empty() ? "-" : "one rung";
  bool same_sign = true, grows = true, shrinks = true;
  for (size_t i = 1; i < x.size(); ++i) {
    same_sign &= sign(x[i]) == sign(x[0]) && sign(x[0]) != 0;
    grows &= std::fabs(x[i]) > std::fabs(x[i - 1]);
    shrinks &= std::fabs(x[i]) < std::fabs(x[i - 1]);
  }
  if (!same_sign) return "changes sign";
  const std::string dir = x[0] < 0 ? "gain" : "loss";
  return grows ? dir + " grows with scale" : shrinks ? dir + " shrinks with scale" : dir + " at every rung, not monotone";
}

std::string agreement_text(const Agreement& a) {
  auto frac = [](int k, int n) {
    return std::to_string(k) + "/" + std::to_string(n) + (n ? " (" + fixed_text(100.0 * k / n, 0) + "%)" : "");
  };
  std::string s = frac(a.agree, a.pairs) + ": vs base " + frac(a.base_agree, a.base_pairs) + ", between experiments " +
                  frac(a.agree - a.base_agree, a.pairs - a.base_pairs);
  if (a.ties) s += "; " + std::to_string(a.ties) + " tied at the target, left out";
  return s;
}

LadderView ladder_view(const Scorecard& s) {
  LadderView v;
  if (s.plan.ladder.empty()) return v;
  for (auto& r : s.plan.ladder) {
    v.rungs.push_back(r.name);
    v.groups.push_back(-1);
  }
  for (size_t gi = 0; gi < s.groups.size(); ++gi) {
    const std::string r = s.groups[gi].substrate_id.empty() ? "" : group_rung(s, s.groups[gi]);
    for (size_t i = 0; i < v.rungs.size(); ++i)
      if (v.rungs[i] == r && v.groups[i] < 0) v.groups[i] = static_cast<int>(gi);
  }
  auto card = [&](size_t rung, const std::string& id) -> const Card* {
    if (v.groups[rung] < 0) return nullptr;
    for (auto& c : s.groups[v.groups[rung]].cards)
      if (c.id == id) return &c;
    return nullptr;
  };
  const size_t last = v.rungs.size() - 1;
  std::vector<std::string> order;
  std::map<std::string, std::string> bases;
  for (auto& e : s.plan.experiments) {
    order.push_back(e.id);
    if (!e.base.empty()) bases[e.id] = e.base;
  }
  for (auto& e : s.plan.experiments) {
    if (e.base.empty()) continue;
    LadderRow row{e.id, e.base, {}, "", {}};
    std::vector<double> deltas;
    for (size_t i = 0; i < v.rungs.size(); ++i) {
      row.cards.push_back(card(i, e.id));
      deltas.push_back(row.cards.back() ? row.cards.back()->delta_pct : NAN);
    }
    if (std::all_of(row.cards.begin(), row.cards.end(), [](const Card* c) { return !c; })) continue;  // on no rung yet
    row.trend = trend_text(deltas);
    const Card* t = row.cards[last];
    for (size_t i = 0; t && i < last; ++i) {
      const Card* c = row.cards[i];
      if (!c) continue;
      if (decided(c->verdict) && decided(t->verdict) && c->verdict != t->verdict)
        row.flips.push_back("verdict " + c->verdict + " on " + v.rungs[i] + ", " + t->verdict + " on " + v.rungs[last]);
      else if (std::isfinite(c->delta_pct) && std::isfinite(t->delta_pct) && sign(c->delta_pct) * sign(t->delta_pct) < 0)
        row.flips.push_back("direction " + pct_text(c->delta_pct) + " on " + v.rungs[i] + ", " + pct_text(t->delta_pct) +
                            " on " + v.rungs[last]);
    }
    v.rows.push_back(std::move(row));
  }
  std::vector<std::map<std::string, double>> means(v.rungs.size());
  for (size_t i = 0; i < v.rungs.size(); ++i)
    for (auto& id : order)
      if (const Card* c = card(i, id); c && c->n > 0) means[i][id] = c->mean;
  for (size_t i = 0; i < last; ++i) v.agreements.push_back(agreement(order, means[i], means[last], bases));
  return v;
}

}  // namespace slm::engine
