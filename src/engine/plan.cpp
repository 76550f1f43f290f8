#include "engine/plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "common/error.h"
#include "common/fs.h"
#include "common/options.h"
#include "common/toml_read.h"

namespace slm::engine {

const Experiment* Plan::find(const std::string& id) const {
  for (auto& e : experiments)
    if (e.id == id) return &e;
  return nullptr;
}

catalog::ModelView model_view(const Substrate& s) { return s.model_view(); }

std::string name_problem(const std::string& kind, const std::string& name) {
  bool ok = !name.empty() && name.size() <= kMaxNameLength && name[0] != '.' && name[0] != '-';
  for (unsigned char c : name) ok = ok && (std::isalnum(c) || c == '.' || c == '_' || c == '-');
  if (ok) return "";
  return kind + " '" + toml_read::printable(name) + "' is not a safe name: use 1 to " + std::to_string(kMaxNameLength) +
         " characters of [A-Za-z0-9._-], not starting with '.' or '-' (it becomes a folder name)";
}

std::string name_key(const std::string& name) {
  std::string k = name;
  for (char& c : k) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return k;
}

std::string run_id(const std::string& plan, const std::string& rung, const std::string& experiment, int64_t seed) {
  return plan + "/" + (rung.empty() ? "" : rung + "/") + experiment + "/s" + std::to_string(seed);
}

namespace {

// Unknown keys of a table, each with the nearest known one.
void check_keys(const toml::table& t, const std::vector<std::string>& known, const std::string& where,
                std::vector<std::string>& errors) {
  for (auto& [k, v] : t) {
    std::string key(k.str());
    bool ok = false;
    for (auto& n : known) ok |= n == key;
    if (!ok) {
      std::string n = cli::nearest(key, known);
      errors.push_back(where + ": unknown key '" + toml_read::printable(key) + "'" + (n.empty() ? "" : "; did you mean '" + n + "'?"));
    }
  }
}

// A TOML value as the text catalog::resolve() parses.
std::string node_text(const toml::node& n) {
  if (auto s = n.value_exact<std::string>()) return *s;
  if (auto b = n.value_exact<bool>()) return *b ? "true" : "false";
  if (auto i = n.value_exact<int64_t>()) return std::to_string(*i);
  if (auto d = n.value_exact<double>()) {
    std::ostringstream os;
    os.precision(17);
    os << *d;
    return os.str();
  }
  if (auto a = n.as_array()) {
    std::string s;
    for (size_t i = 0; i < a->size(); ++i) s += (i ? "," : "") + node_text(*a->get(i));
    return s;
  }
  return "<table>";
}

// The rule's (or a phase's) metric: one the evaluation records, and compare_at = "compute" only on val_bpb.
void check_metric(const std::string& metric, const std::string& compare_at, const std::string& where,
                  std::vector<std::string>& errors) {
  const auto& metrics = decision_metrics();
  if (std::find(metrics.begin(), metrics.end(), metric) == metrics.end())
    errors.push_back(where + ": metric '" + toml_read::printable(metric) +
                     "' is not one of val_bpb, fim_bpb, ifim_bpb, ifim_noinst_bpb, sri_bpb (eval/infill.h)");
  else if (metric != "val_bpb" && compare_at == "compute")
    errors.push_back(where + ": compare_at = \"compute\" interpolates val_bpb curves only; use compare_at = "
                     "\"steps\" with metric '" + metric + "'");
}

void check_param_control(const std::string& v, const std::string& where, std::vector<std::string>& errors) {
  if (v != "none" && v != "widen" && v != "deepen")
    errors.push_back(where + ": param_control '" + toml_read::printable(v) +
                     "' is not one of none, widen (the base wider at the same depth), deepen (the base deeper at the same width)");
}

}  // namespace

const std::vector<std::string>& decision_metrics() {
  static const std::vector<std::string> m = {"val_bpb", "fim_bpb", "ifim_bpb", "ifim_noinst_bpb", "sri_bpb"};
  return m;
}

Plan load_plan(const std::string& path, std::vector<std::string>* errors_out, const std::string& substrate) {
  std::vector<std::string> errors;
  Plan plan;
  plan.path = path;
  SLM_CHECK(fs::exists(path), "plan ", path, " not found; pass the path to a plan .toml (see plans/)");
  toml::table t;
  try {
    t = toml::parse(fs::read_file(path), path);
  } catch (const toml::parse_error& e) {
    fail(path, ":", e.source().begin.line, ":", e.source().begin.column, ": invalid TOML: ", e.description());
  }
  check_keys(t, {"name", "description", "substrate", "ladder", "rule", "phases"}, path, errors);
  using toml_read::get;
  plan.name = get<std::string>(t, "name", path, errors).value_or("");
  plan.description = get<std::string>(t, "description", path, errors).value_or("");
  if (!t.get("name")) errors.push_back(path + ": 'name' is required");
  else if (auto p = name_problem("plan name", plan.name); t.get("name")->is_string() && !p.empty()) errors.push_back(path + ": " + p);
  plan.substrate_ref = get<std::string>(t, "substrate", path, errors).value_or("");
  // A substrate the plan names; a relative .toml path is relative to the plan file.
  auto load_ref = [&](std::string ref, Substrate& out) {
    try {
      if (ref.find(".toml") != std::string::npos && ref[0] != '/') ref = fs::join(fs::parent(path), ref);
      out = load_substrate(ref);
      out.validate();
      return true;
    } catch (const Error& e) {
      errors.push_back(e.what());
      return false;
    }
  };
  bool have_substrate = false;
  if (!substrate.empty()) {
    try {
      plan.substrate_ref = substrate;
      plan.substrate = load_substrate(substrate);
      plan.substrate.validate();
      have_substrate = true;
    } catch (const Error& e) {
      errors.push_back(e.what());
    }
  } else if (t.get("ladder")) {
    if (t.get("substrate"))
      errors.push_back(path + ": give either 'substrate' (one) or 'ladder' (a scale ladder of substrates, smallest first), not both");
  } else if (!t.get("substrate")) {
    errors.push_back(path + ": 'substrate' is required (a name in substrates/ or a .toml path), or a scale ladder: "
                     "ladder = [\"cpu-tiny\", \"cpu-small\"]");
  } else if (!plan.substrate_ref.empty()) {
    have_substrate = load_ref(plan.substrate_ref, plan.substrate);
  }
  // The ladder's rungs: the experiments they run are checked once the experiments are known (below).
  std::vector<const toml::array*> rung_only;  // per rung: its `experiments`, when limited
  if (const toml::node* ln = t.get("ladder"); ln && substrate.empty()) {
    const toml::array* arr = ln->as_array();
    if (!arr)
      errors.push_back(path + ": 'ladder' must be an array of substrates, smallest first (ladder = [\"cpu-tiny\", "
                       "\"cpu-small\"]), got " + toml_read::found_name(*ln));
    else if (arr->size() < 2)
      errors.push_back(path + ": 'ladder' needs at least 2 rungs (a smaller substrate and the target scale), got " +
                       std::to_string(arr->size()));
    for (size_t i = 0; arr && i < arr->size(); ++i) {
      const std::string where = path + " ladder[" + std::to_string(i) + "]";
      const toml::node& n = *arr->get(i);
      Rung r;
      const toml::array* only = nullptr;
      if (n.is_string()) {
        std::string terr;
        r.ref = toml_read::as<std::string>(n, "ladder", terr).value_or("");
        if (!terr.empty()) errors.push_back(where + ": " + terr);
      } else if (auto rt = n.as_table()) {
        check_keys(*rt, {"substrate", "experiments"}, where, errors);
        r.ref = get<std::string>(*rt, "substrate", where, errors).value_or("");
        if (!rt->get("substrate")) errors.push_back(where + ": 'substrate' is required ({ substrate = \"cpu-small\", experiments = [...] })");
        only = toml_read::get_array(*rt, "experiments", where, errors);
      } else {
        errors.push_back(where + ": a rung is a substrate name or { substrate = \"...\", experiments = [\"...\"] }, got " +
                         toml_read::found_name(n));
      }
      if (r.ref.empty() || !load_ref(r.ref, r.substrate)) continue;
      r.name = r.substrate.name;
      if (auto p = name_problem("rung (substrate name)", r.name); !p.empty()) {
        errors.push_back(where + ": " + p);
        continue;
      }
      bool dup = false;
      for (auto& o : plan.ladder) {
        if (name_key(o.name) == name_key(r.name))
          errors.push_back(where + ": duplicate rung '" + r.name + "' (already a rung of this ladder); each rung is listed once");
        else if (o.substrate.id() == r.substrate.id())
          errors.push_back(where + ": rung '" + r.name + "' is the same substrate as rung '" + o.name + "' (id " + r.substrate.id() +
                           "); rungs must differ in size");
        else continue;
        dup = true;
        break;
      }
      if (dup) continue;
      plan.ladder.push_back(std::move(r));
      rung_only.push_back(only);
    }
    if (!plan.ladder.empty()) {
      plan.substrate_ref = plan.ladder[0].ref;
      plan.substrate = plan.ladder[0].substrate;
    }
  } else if (ln) {
    errors.push_back(path + ": --substrate replaces a plan's one substrate, but this plan names a ladder; check it as it is");
  }
  if (auto r = toml_read::get_table(t, "rule", path, errors)) {
    const std::string rw = path + " [rule]";
    check_keys(*r, {"metric", "k_noise", "min_rel_delta", "provisional_factor", "max_retries", "allow_mixed_code", "correction",
                     "max_seeds", "unstable_decides", "compare_at", "compile_rate", "param_share", "param_control",
                     "param_tolerance"}, rw, errors);
    plan.rule.metric = get<std::string>(*r, "metric", rw, errors).value_or(plan.rule.metric);
    plan.rule.k_noise = get<double>(*r, "k_noise", rw, errors).value_or(plan.rule.k_noise);
    plan.rule.min_rel_delta = get<double>(*r, "min_rel_delta", rw, errors).value_or(plan.rule.min_rel_delta);
    plan.rule.provisional_factor = get<double>(*r, "provisional_factor", rw, errors).value_or(plan.rule.provisional_factor);
    plan.rule.max_retries = get<int64_t>(*r, "max_retries", rw, errors).value_or(plan.rule.max_retries);
    plan.rule.allow_mixed_code = get<bool>(*r, "allow_mixed_code", rw, errors).value_or(plan.rule.allow_mixed_code);
    plan.rule.correction = get<std::string>(*r, "correction", rw, errors).value_or(plan.rule.correction);
    plan.rule.max_seeds = get<int64_t>(*r, "max_seeds", rw, errors).value_or(plan.rule.max_seeds);
    plan.rule.unstable_decides = get<bool>(*r, "unstable_decides", rw, errors).value_or(plan.rule.unstable_decides);
    plan.rule.compare_at = get<std::string>(*r, "compare_at", rw, errors).value_or(plan.rule.compare_at);
    plan.rule.compile_rate = get<int64_t>(*r, "compile_rate", rw, errors).value_or(plan.rule.compile_rate);
    plan.rule.param_share = get<double>(*r, "param_share", rw, errors).value_or(plan.rule.param_share);
    plan.rule.param_control = get<std::string>(*r, "param_control", rw, errors).value_or(plan.rule.param_control);
    plan.rule.param_tolerance = get<double>(*r, "param_tolerance", rw, errors).value_or(plan.rule.param_tolerance);
  }
  check_metric(plan.rule.metric, plan.rule.compare_at, path + " [rule]", errors);
  if (!(plan.rule.k_noise >= 0)) errors.push_back(path + " [rule]: k_noise must be >= 0");
  if (!(plan.rule.min_rel_delta >= 0 && plan.rule.min_rel_delta < 1)) errors.push_back(path + " [rule]: min_rel_delta must be in [0, 1)");
  if (!(plan.rule.provisional_factor > 1)) errors.push_back(path + " [rule]: provisional_factor must be > 1");
  if (plan.rule.correction != "none" && plan.rule.correction != "holm" && plan.rule.correction != "bh")
    errors.push_back(path + " [rule]: correction '" + toml_read::printable(plan.rule.correction) +
                     "' is not one of none, holm (family-wise error rate), bh (false-discovery rate)");
  if (plan.rule.compare_at != "steps" && plan.rule.compare_at != "compute")
    errors.push_back(path + " [rule]: compare_at '" + toml_read::printable(plan.rule.compare_at) +
                     "' is not one of steps (best val_bpb at equal steps), compute (at equal training FLOPs)");
  if (plan.rule.max_seeds < 0 || plan.rule.max_seeds > 64) errors.push_back(path + " [rule]: max_seeds must be in [0, 64] (0: no extra seeds)");
  if (plan.rule.max_retries < 0 || plan.rule.max_retries > 100) errors.push_back(path + " [rule]: max_retries must be in [0, 100]");
  if (plan.rule.compile_rate < 0 || plan.rule.compile_rate > 10000)
    errors.push_back(path + " [rule]: compile_rate must be in [0, 10000] prompts (0: no compile-rate evaluation)");
  if (!(plan.rule.param_share >= 0 && plan.rule.param_share < 100))
    errors.push_back(path + " [rule]: param_share must be in [0, 100) (a share of the base's parameters, 0.10 = 10%)");
  if (!(plan.rule.param_tolerance > 0 && plan.rule.param_tolerance < 1))
    errors.push_back(path + " [rule]: param_tolerance must be in (0, 1) (the control's parameter count within this share of the experiment's)");
  check_param_control(plan.rule.param_control, path + " [rule]", errors);

  auto phases = toml_read::get_array(t, "phases", path, errors);
  if (!t.get("phases") || (phases && phases->empty()))
    errors.push_back(path + ": no [[phases]]; a plan needs at least one phase with experiments");
  std::map<std::string, std::string> ids;  // name_key -> id as written
  if (phases)
    for (size_t pi = 0; pi < phases->size(); ++pi) {
      auto ph = phases->get(pi)->as_table();
      if (!ph) {
        errors.push_back(path + ": phases[" + std::to_string(pi) + "] is not a table");
        continue;
      }
      const std::string pw = path + " phases[" + std::to_string(pi) + "]";
      std::string pname = get<std::string>(*ph, "name", pw, errors).value_or("phase" + std::to_string(pi + 1));
      if (auto p = name_problem("phase name", pname); !p.empty()) {
        errors.push_back(pw + ": " + p);
        pname = "phase" + std::to_string(pi + 1);
      }
      const std::string where = path + " phase " + pname;
      check_keys(*ph, {"name", "notes", "experiments", "rule"}, where, errors);
      get<std::string>(*ph, "notes", where, errors);
      plan.phases.push_back(pname);
      // A phase's own rule names the metric it decides on; the rest of the rule is the plan's (one
      // alpha, one correction, one budget for every phase).
      if (auto pr = toml_read::get_table(*ph, "rule", where, errors)) {
        const std::string prw = where + " [phases.rule]";
        for (auto& [k, v] : *pr)
          if (k.str() != "metric")
            errors.push_back(prw + ": '" + toml_read::printable(std::string(k.str())) +
                             "' is plan-wide; a phase's rule names only its metric (set the rest in [rule])");
        if (auto m = get<std::string>(*pr, "metric", prw, errors)) {
          check_metric(*m, plan.rule.compare_at, prw, errors);
          plan.phase_metrics[pname] = *m;
        }
      }
      auto exps = toml_read::get_array(*ph, "experiments", where, errors);
      if (!ph->get("experiments") || (exps && exps->empty())) errors.push_back(where + ": no [[phases.experiments]]");
      if (!exps) continue;
      for (size_t ei = 0; ei < exps->size(); ++ei) {
        auto et = exps->get(ei)->as_table();
        if (!et) {
          errors.push_back(where + ": experiments[" + std::to_string(ei) + "] must be a table ([[phases.experiments]]), got " +
                           toml_read::found_name(*exps->get(ei)));
          continue;
        }
        Experiment e;
        e.phase = pname;
        const std::string ew0 = where + " experiment #" + std::to_string(ei + 1);
        const toml::node* idn = et->get("id");
        const auto idv = get<std::string>(*et, "id", ew0, errors);  // a wrong type is reported here
        e.id = idv.value_or("");
        const std::string id_problem = idv ? name_problem("experiment id", e.id) : "";
        const std::string ew = (e.id.empty() || !id_problem.empty()) ? ew0 : where + " experiment " + e.id;
        check_keys(*et, {"id", "base", "modules", "seeds", "notes", "param_control"}, ew, errors);
        if (!idn) {
          errors.push_back(ew + ": 'id' is required");
        } else if (!id_problem.empty()) {
          errors.push_back(ew + ": " + id_problem);
        } else if (!idv) {
          // wrong type or control characters: already reported
        } else if (auto [it, fresh] = ids.emplace(name_key(e.id), e.id); !fresh) {
          errors.push_back(ew + ": duplicate id '" + e.id + "'" +
                           (it->second == e.id ? "" : " (same as '" + it->second + "' up to case)") +
                           "; ids are unique across the plan, ignoring case");
        }
        e.base = get<std::string>(*et, "base", ew, errors).value_or("");
        e.notes = get<std::string>(*et, "notes", ew, errors).value_or("");
        if (auto pc = get<std::string>(*et, "param_control", ew, errors)) {
          e.param_control = *pc;
          check_param_control(*pc, ew, errors);
        }
        if (auto seeds = toml_read::get_array(*et, "seeds", ew, errors)) {
          std::set<int64_t> uniq;
          for (auto& s : *seeds) {
            auto v = s.value_exact<int64_t>();
            if (!v || *v < 0) errors.push_back(ew + ": seeds must be non-negative integers");
            else if (!uniq.insert(*v).second) errors.push_back(ew + ": seed " + std::to_string(*v) + " listed twice");
            else e.seeds.push_back(*v);
          }
        }
        if (e.seeds.empty()) errors.push_back(ew + ": 'seeds' needs at least one seed, e.g. seeds = [1, 2]");
        if (auto mods = toml_read::get_array(*et, "modules", ew, errors)) {
          for (auto& m : *mods) {
            std::vector<std::string> merr;
            std::string terr;
            if (m.is_string()) {
              if (auto s = toml_read::as<std::string>(m, "modules", terr)) e.modules.push_back(catalog::resolve(*s, {}, merr));
            } else if (auto mt = m.as_table()) {
              std::string name;
              std::map<std::string, std::string> given;
              for (auto& [k, v] : *mt) {
                const std::string key(k.str());
                if (toml_read::has_control(key)) {
                  terr = "module parameter '" + toml_read::printable(key) + "' holds control characters";
                } else if (key == "name") {
                  name = toml_read::as<std::string>(v, "name", terr).value_or("");
                } else if (v.is_floating_point() && !std::isfinite(*v.value_exact<double>())) {
                  terr = "module parameter '" + key + "' must be a finite number, got " + node_text(v);
                } else if (v.is_string() && toml_read::has_control(*v.value_exact<std::string>())) {
                  toml_read::as<std::string>(v, key, terr);
                } else {
                  given[key] = node_text(v);
                }
              }
              if (!terr.empty()) merr.push_back(terr);
              else if (name.empty()) merr.push_back("a module table needs name = \"...\"");
              else e.modules.push_back(catalog::resolve(name, given, merr));
            } else {
              merr.push_back("modules entries are names or tables like { name = \"engram\", layers = [0, 1] }");
            }
            if (!terr.empty() && merr.empty()) merr.push_back(terr);
            for (auto& x : merr) errors.push_back(ew + ": " + x);
          }
        }
        plan.experiments.push_back(std::move(e));
      }
    }

  // Bases: exist, no cycles; effective modules in dependency order.
  std::map<std::string, int> state;  // 0 unvisited, 1 visiting, 2 done
  std::function<bool(Experiment&)> resolve_base = [&](Experiment& e) -> bool {
    if (state[e.id] == 2) return true;
    if (state[e.id] == 1) return false;
    state[e.id] = 1;
    std::vector<catalog::ModuleArgs> eff;
    if (!e.base.empty()) {
      Experiment* b = nullptr;
      for (auto& x : plan.experiments)
        if (x.id == e.base) b = &x;
      if (!b) {
        std::vector<std::string> all;
        for (auto& x : plan.experiments) all.push_back(x.id);
        std::string n = cli::nearest(e.base, all);
        errors.push_back(path + " experiment " + e.id + ": base '" + e.base + "' is not an experiment of this plan" +
                         (n.empty() ? "" : "; did you mean '" + n + "'?"));
      } else if (!resolve_base(*b)) {
        errors.push_back(path + " experiment " + e.id + ": bases form a cycle through '" + e.base + "'");
        state[e.id] = 2;
        return true;
      } else {
        eff = b->effective;
      }
    }
    for (auto& m : e.modules) {
      bool replaced = false;
      for (auto& x : eff)
        if (x.name == m.name) x = m, replaced = true;
      if (!replaced) eff.push_back(m);
    }
    e.effective = eff;
    state[e.id] = 2;
    return true;
  };
  for (auto& e : plan.experiments)
    if (!e.id.empty()) resolve_base(e);

  // Each rung runs the experiments its `experiments` lists (every one when not limited), each with its base.
  for (size_t i = 0; i < plan.ladder.size(); ++i) {
    Rung& r = plan.ladder[i];
    const std::string where = path + " ladder[" + std::to_string(i) + "] (" + r.name + ")";
    std::set<std::string> only;
    if (rung_only[i]) {
      if (rung_only[i]->empty()) errors.push_back(where + ": 'experiments' is empty; list the experiments this rung runs, or leave it out for all");
      for (auto& x : *rung_only[i]) {
        std::string terr;
        auto id = toml_read::as<std::string>(x, "experiments", terr);
        if (!id) errors.push_back(where + ": " + terr);
        else if (!plan.find(*id)) {
          std::vector<std::string> all;
          for (auto& e : plan.experiments) all.push_back(e.id);
          std::string n = cli::nearest(*id, all);
          errors.push_back(where + ": experiment '" + toml_read::printable(*id) + "' is not an experiment of this plan" +
                           (n.empty() ? "" : "; did you mean '" + n + "'?"));
        } else if (!only.insert(*id).second) {
          errors.push_back(where + ": experiment '" + *id + "' listed twice");
        }
      }
    }
    for (auto& e : plan.experiments) {
      if (rung_only[i] && !only.count(e.id)) continue;
      if (rung_only[i] && !e.base.empty() && !only.count(e.base))
        errors.push_back(where + ": runs experiment '" + e.id + "' but not its base '" + e.base + "'; add '" + e.base + "' to its experiments");
      r.experiments.push_back(e.id);
    }
  }
  if (!plan.ladder.empty()) {
    for (auto& r : plan.ladder) {
      const catalog::ModelView view = model_view(r.substrate);
      for (auto& id : r.experiments)
        for (auto& x : catalog::check(plan.find(id)->effective, view, /*training=*/true))
          errors.push_back(path + " experiment " + id + " on rung " + r.name + ": " + x);
    }
  } else if (have_substrate) {
    const catalog::ModelView view = model_view(plan.substrate);
    for (auto& e : plan.experiments)
      for (auto& x : catalog::check(e.effective, view, /*training=*/true))
        errors.push_back(path + " experiment " + e.id + ": " + x);
  }
  // One problem can surface through several experiments (a base's module in each child): say it once.
  std::vector<std::string> uniq;
  for (auto& x : errors)
    if (std::find(uniq.begin(), uniq.end(), x) == uniq.end()) uniq.push_back(x);
  if (errors_out) {
    errors_out->insert(errors_out->end(), uniq.begin(), uniq.end());
    return plan;
  }
  if (!uniq.empty()) {
    std::string all = "plan " + path + " has " + std::to_string(uniq.size()) + " problem" + (uniq.size() > 1 ? "s" : "") + ": ";
    for (size_t i = 0; i < uniq.size(); ++i) all += (i ? "; " : "") + uniq[i];
    throw Error(all);
  }
  return plan;
}

}  // namespace slm::engine
