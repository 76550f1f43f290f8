// slmlab catalog | plan check | ablate | report | invalidate
#include <cstdio>

#include "catalog/catalog.h"
#include "cli/commands.h"
#include "common/error.h"
#include "common/fs.h"
#include "engine/control.h"
#include "engine/ledger.h"
#include "engine/plan.h"
#include "engine/report.h"
#include "engine/runner.h"

namespace slm::cli {

int cmd_catalog(const Args& a) {
  std::fputs(catalog::table(a.flag("json")).c_str(), stdout);
  return 0;
}

int cmd_plan_check(const Args& a) {
  std::vector<std::string> errors;
  engine::Plan p = engine::load_plan(a.positional[0], &errors, a.str("substrate"));
  if (!errors.empty()) {
    // Every problem, one per line, then the one-line verdict that main() prints.
    for (auto& e : errors) std::fprintf(stderr, "  - %s\n", e.c_str());
    fail("plan check: ", a.positional[0], " has ", errors.size(), " problem", errors.size() > 1 ? "s" : "",
         " (listed above); nothing was run");
  }
  size_t runs = 0;
  for (auto& e : p.experiments) runs += e.seeds.size();
  if (p.ladder.empty()) {
    std::printf("ok: plan %s on substrate %s (id %s before the data binds): %zu phases, %zu experiments, %zu runs\n",
                p.name.c_str(), p.substrate.name.c_str(), p.substrate.id().c_str(), p.phases.size(), p.experiments.size(),
                runs);
  } else {
    runs = 0;
    for (auto& r : p.ladder)
      for (auto& id : r.experiments) runs += p.find(id)->seeds.size();
    std::printf("ok: plan %s on a ladder of %zu rungs: %zu phases, %zu experiments, %zu runs\n", p.name.c_str(), p.ladder.size(),
                p.phases.size(), p.experiments.size(), runs);
    for (auto& r : p.ladder)
      std::printf("  rung %-16s id %s before the data binds, %zu experiments%s\n", r.name.c_str(), r.substrate.id().c_str(),
                  r.experiments.size(), &r == &p.ladder.back() ? " (the target)" : "");
  }
  for (auto& e : p.experiments) {
    std::printf("  %-10s %-16s base %-12s seeds %zu  modules:", e.phase.c_str(), e.id.c_str(),
                e.base.empty() ? "-" : e.base.c_str(), e.seeds.size());
    if (e.effective.empty()) std::printf(" (baseline)");
    for (auto& m : e.effective) std::printf(" %s", m.name.c_str());
    std::printf("\n");
  }
  return 0;
}

int cmd_ablate(const Args& a) {
  engine::AblateOptions o;
  o.plan = a.positional[0];
  o.ledger = a.str("ledger");
  o.data = a.str("data");
  o.runs = a.str("runs");
  o.jobs = static_cast<int>(a.i64("jobs"));
  int64_t t = a.i64("threads");
  SLM_CHECK(t >= 0 && t <= 1024, "ablate: --threads ", t, " is outside [0, 1024]");
  o.threads = static_cast<int>(t);
  o.backend = a.str("backend");
  o.poll_s = a.f64("poll");
  o.sbatch = a.str("sbatch");
  o.decide = a.flag("decide");
  o.max_seeds = a.i64("max-seeds");
  SLM_CHECK(o.max_seeds >= 0 && o.max_seeds <= 64, "ablate: --max-seeds ", o.max_seeds, " is outside [0, 64]");
  SLM_CHECK(o.decide || o.max_seeds == 0, "ablate: --max-seeds is --decide's budget; add --decide, or set [rule] max_seeds in the plan");
  o.count_params = engine::model_params;  // parameter-matched controls count the models they compare
  return engine::ablate(o);
}

int cmd_report(const Args& a) {
  engine::ReportOptions o;
  o.plan = a.str("plan");
  o.ledger = a.str("ledger");
  o.format = a.str("format");
  o.out = a.str("out");
  return engine::report(o);
}

int cmd_invalidate(const Args& a) {
  const std::string ledger_path = a.str("ledger");
  SLM_CHECK(fs::exists(ledger_path), "invalidate: no ledger at ", ledger_path, "; pass --ledger FILE");
  engine::Ledger ledger(ledger_path);
  // RUN is a run id, or a run folder as the ledger recorded it.
  std::string id = a.positional[0];
  if (!ledger.get(id)) {
    if (auto in_dir = ledger.run_in_dir(id)) id = *in_dir;
    SLM_CHECK(ledger.get(id), "invalidate: no run '", a.positional[0], "' in ", ledger_path,
              "; pass a run id (plan/experiment/sN, see `slmlab report --format csv`) or its run folder");
  }
  if (a.flag("undo")) {
    SLM_CHECK(a.str("reason").empty(), "invalidate: --undo takes no --reason");
    ledger.revalidate(id);
    auto r = ledger.get(id);
    std::printf("%s: manual invalidation withdrawn; status %s\n", id.c_str(), engine::status_name(r->status));
    return 0;
  }
  SLM_CHECK(!a.str("reason").empty(), "invalidate: --reason TEXT is required (say why ", id, " does not count)");
  ledger.invalidate(id, a.str("reason"));
  std::printf("%s: INVALID (manual: %s); excluded from every delta, mean and verdict\n", id.c_str(),
              a.str("reason").c_str());
  return 0;
}

}  // namespace slm::cli
