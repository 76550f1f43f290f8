#include "engine/control.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "common/format.h"

namespace slm::engine {

namespace {

constexpr int kMaxCandidates = 256;  // geometries tried per control: far beyond any 2x growth

std::string geometry_text(const Substrate& s) {
  return "d_model " + std::to_string(s.model_dim()) + " (" + std::to_string(s.n_head()) + " heads of " +
         std::to_string(s.head_dim) + "), depth " + std::to_string(s.depth);
}

std::string signed_pct(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%+.2f%%", 100 * x);
  return b;
}

// The candidate geometries of `kind` in growing order: widen keeps the depth and adds heads of the
// same size (d_model = k x head_dim, aspect the smallest that gives it); deepen keeps d_model and
// adds layers (the layer pattern repeats over them). Candidates the modules refuse are skipped.
std::vector<Substrate> candidates(const Substrate& base, const std::vector<catalog::ModuleArgs>& mods, const std::string& kind) {
  std::vector<Substrate> out;
  const int64_t d = base.model_dim();
  for (int64_t step = 1; step <= kMaxCandidates; ++step) {
    Substrate s = base;
    if (kind == "widen") {
      const int64_t want = d + step * base.head_dim;
      s.aspect = (want + s.depth - 1) / s.depth;
      if (s.model_dim() != want) continue;
    } else {
      s.depth = base.depth + step;
      s.aspect = (d + s.depth - 1) / s.depth;
      if (s.model_dim() != d) s.aspect = d / s.depth;
      if (s.aspect < 1 || s.model_dim() != d) continue;
    }
    if (!catalog::check(mods, s.model_view(), /*training=*/true).empty()) continue;
    out.push_back(s);
  }
  return out;
}

}  // namespace

std::string ControlArm::describe() const {
  return "parameter-matched control of " + of + ": its base " + kind + "ed to " + geometry + ", " + std::to_string(params) +
         " parameters vs its " + std::to_string(target) + " (" + signed_pct(gap) + "; base " + std::to_string(base_params) + ")";
}

ControlArm match_params(const Substrate& base, const std::vector<catalog::ModuleArgs>& mods, int64_t target,
                        const std::string& kind, double tolerance, const ParamCounter& count) {
  SLM_CHECK(kind == "widen" || kind == "deepen", "[control] kind '", kind, "' is not widen or deepen");
  SLM_CHECK(tolerance > 0 && tolerance < 1, "[control] param_tolerance ", tolerance, " is outside (0, 1)");
  SLM_CHECK(target > 0, "[control] a parameter target must be positive, got ", target);
  ControlArm best;
  best.kind = kind;
  best.target = target;
  best.base_params = count(base, mods);
  best.gap = INFINITY;
  // Parameters grow with either dial: once a candidate passes the target, later ones only get farther.
  for (const Substrate& s : candidates(base, mods, kind)) {
    const int64_t n = count(s, mods);
    const double gap = double(n - target) / double(target);
    if (std::fabs(gap) < std::fabs(best.gap)) {
      best.substrate = s;
      best.params = n;
      best.gap = gap;
    }
    if (n > target) break;
  }
  SLM_CHECK(std::isfinite(best.gap), "[control] no ", kind, " geometry of ", base.name, " (", geometry_text(base),
            ") passes the modules' constraints; try param_control = \"", kind == "widen" ? "deepen" : "widen", "\"");
  best.geometry = geometry_text(best.substrate);
  SLM_CHECK(std::fabs(best.gap) <= tolerance, "[control] no ", kind, " of ", base.name, " comes within param_tolerance ",
            signed_pct(tolerance).substr(1), " of ", target, " parameters: the nearest is ", best.geometry, " with ",
            best.params, " (", signed_pct(best.gap), "); try param_control = \"", kind == "widen" ? "deepen" : "widen",
            "\" or a larger [rule] param_tolerance");
  best.substrate.name = base.name + "." + kind + "-" +
                        (kind == "widen" ? "d" + std::to_string(best.substrate.model_dim()) : "L" + std::to_string(best.substrate.depth));
  return best;
}

std::string control_kind(const Plan& plan, const Experiment& e) {
  if (e.base.empty() || !e.control_of.empty()) return "none";
  return e.param_control.empty() ? plan.rule.param_control : e.param_control;
}

double added_share(const Plan& plan, const Experiment& e, int64_t vocab, const ParamCounter& count) {
  const Experiment* b = plan.find(e.base);
  SLM_CHECK(b, "[control] experiment ", e.id, " has no base in plan ", plan.name);
  Substrate s = plan.substrate;
  s.vocab = vocab;
  return double(count(s, e.effective)) / double(count(s, b->effective)) - 1;
}

std::vector<ControlArm> plan_controls(const Plan& plan, int64_t vocab, const ParamCounter& count) {
  std::vector<ControlArm> arms;
  std::vector<std::string> errors;
  Substrate sub = plan.substrate;
  sub.vocab = vocab;
  for (auto& e : plan.experiments) {
    const std::string kind = control_kind(plan, e);
    if (kind == "none") continue;
    const Experiment* b = plan.find(e.base);
    if (!b) continue;  // load_plan reported it
    try {
      const int64_t target = count(sub, e.effective), base_n = count(sub, b->effective);
      if (double(target) / double(base_n) - 1 <= plan.rule.param_share) continue;  // within the share: no control needed
      ControlArm a = match_params(sub, b->effective, target, kind, plan.rule.param_tolerance, count);
      a.of = e.id;
      a.id = e.id + "." + kind;
      a.substrate.vocab = plan.substrate.vocab;  // bound to the data set at run time, like the base's
      a.substrate.description = a.describe();
      a.substrate.validate();  // its name too (it becomes the trainer's substrate): refused here, not at run time
      if (auto p = name_problem("control arm id", a.id); !p.empty()) throw Error(p + "; shorten experiment id '" + e.id + "'");
      for (auto& x : plan.experiments)
        if (name_key(x.id) == name_key(a.id))
          throw Error("control arm id '" + a.id + "' is taken by an experiment of the plan; rename that experiment");
      arms.push_back(a);
    } catch (const Error& x) {
      errors.push_back("experiment " + e.id + ": " + x.what());
    }
  }
  if (!errors.empty()) {
    std::string all = "plan " + plan.path + ": parameter-matched controls: ";
    for (size_t i = 0; i < errors.size(); ++i) all += (i ? "; " : "") + errors[i];
    throw Error(all);
  }
  return arms;
}

void add_controls(Plan& plan, const std::vector<ControlArm>& arms) {
  for (auto& a : arms) {
    const Experiment* e = plan.find(a.of);
    const Experiment* b = e ? plan.find(e->base) : nullptr;
    SLM_CHECK(e && b, "[control] ", a.of, " is not an experiment with a base in plan ", plan.name);
    Experiment c;
    c.id = a.id;
    c.phase = e->phase;
    c.seeds = e->seeds;
    c.effective = b->effective;
    c.notes = a.describe();
    c.control_of = a.of;
    plan.experiments.push_back(std::move(c));
  }
}

}  // namespace slm::engine
