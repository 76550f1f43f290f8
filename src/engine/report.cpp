#include "engine/report.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "engine/ladder.h"
#include "engine/render.h"

namespace slm::engine {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The plan as the ledger keeps it.

PlanInfo plan_info(const Plan& p) {
  PlanInfo o;
  o.name = p.name;
  o.description = p.description;
  o.substrate = p.substrate_ref;
  o.rule = p.rule;
  o.phases = p.phases;
  o.phase_metrics = p.phase_metrics;
  for (auto& e : p.experiments) {
    PlanInfo::Exp x{e.id, e.phase, e.base, e.notes, {}, {}, e.seeds, e.control_of};
    for (auto& m : e.effective) {
      x.modules.push_back(catalog::arg_text(m));
      x.names.push_back(m.name);
    }
    o.experiments.push_back(std::move(x));
  }
  for (auto& r : p.ladder) o.ladder.push_back({r.name, r.ref, r.experiments});
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
              {"max_retries", p.rule.max_retries},
              {"allow_mixed_code", p.rule.allow_mixed_code},
              {"correction", p.rule.correction},
              {"max_seeds", p.rule.max_seeds},
              {"unstable_decides", p.rule.unstable_decides},
              {"compare_at", p.rule.compare_at},
              {"compile_rate", p.rule.compile_rate},
              {"param_share", p.rule.param_share},
              {"param_control", p.rule.param_control},
              {"param_tolerance", p.rule.param_tolerance}}},
            {"phase_metrics", p.phase_metrics}};
  j["experiments"] = json::array();
  for (auto& e : p.experiments)
    j["experiments"].push_back({{"id", e.id}, {"phase", e.phase}, {"base", e.base}, {"notes", e.notes},
                                {"modules", e.modules}, {"names", e.names}, {"seeds", e.seeds}, {"control_of", e.control_of}});
  if (!p.ladder.empty()) {
    j["ladder"] = json::array();
    for (auto& r : p.ladder) j["ladder"].push_back({{"name", r.name}, {"substrate", r.substrate}, {"experiments", r.experiments}});
  }
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
    p.rule.allow_mixed_code = r.value("allow_mixed_code", false);
    p.rule.correction = r.value("correction", "none");
    p.rule.max_seeds = r.value("max_seeds", int64_t(0));
    p.rule.unstable_decides = r.value("unstable_decides", true);
    p.rule.compare_at = r.value("compare_at", "steps");
    p.rule.compile_rate = r.value("compile_rate", int64_t(0));
    p.rule.param_share = r.value("param_share", 0.10);
    p.rule.param_control = r.value("param_control", "none");
    p.rule.param_tolerance = r.value("param_tolerance", 0.05);
    p.phase_metrics = j.value("phase_metrics", std::map<std::string, std::string>{});
    for (auto& e : j.at("experiments"))
      p.experiments.push_back({e.at("id").get<std::string>(), e.value("phase", ""), e.value("base", ""),
                               e.value("notes", ""), e.value("modules", std::vector<std::string>{}),
                               e.value("names", std::vector<std::string>{}),
                               e.value("seeds", std::vector<int64_t>{}), e.value("control_of", "")});
    if (j.contains("ladder"))
      for (auto& r : j.at("ladder"))
        p.ladder.push_back({r.at("name").get<std::string>(), r.value("substrate", ""),
                            r.value("experiments", std::vector<std::string>{})});
    return p;
  } catch (const json::exception& e) {
    fail("[report] the plan saved in the ledger is malformed (", e.what(), "); re-run `slmlab ablate PLAN` to save it again");
  }
}

// ---------------------------------------------------------------------------------------------

int report(const ReportOptions& o) {
  SLM_CHECK(o.format == "txt" || o.format == "md" || o.format == "html" || o.format == "csv", "report: --format '",
            o.format, "' is not one of txt, md, html, csv");
  SLM_CHECK(fs::exists(o.ledger), "report: no ledger at ", o.ledger, "; run `slmlab ablate PLAN` first or pass --ledger FILE");
  Ledger ledger(o.ledger);
  std::vector<PlanInfo> plans;
  if (!o.plan.empty() && o.plan.find(".toml") != std::string::npos) {
    PlanInfo p = plan_info(load_plan(o.plan));
    // --decide's budget lives in the ledger's copy of the rule: the looks it allowed still count.
    if (auto spec = ledger.plan_spec(p.name)) {
      const PlanInfo saved = plan_info_from_json(*spec);
      p.rule.max_seeds = std::max(p.rule.max_seeds, saved.rule.max_seeds);
      for (auto& e : saved.experiments)  // control arms exist only where ablate added them (engine/control.h)
        if (!e.control_of.empty() && !p.find(e.id)) p.experiments.push_back(e);
    }
    plans.push_back(p);
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
          if (!p.find(r.experiment)) p.experiments.push_back({r.experiment, r.phase, "", "", {}, {}, {}, ""});
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
    order_by_rung(s);  // a ladder's rungs smallest first
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
