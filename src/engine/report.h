// `slmlab report`: the plan saved in the ledger, its scorecard (engine/scorecard.h, the rules) and
// one of four renderings (engine/render.h).
#pragma once
#include <string>

#include "engine/plan.h"
#include "engine/scorecard.h"

namespace slm::engine {

// The plan as the ledger keeps it (saved by `ablate` at every start, so reports need only the ledger).
PlanInfo plan_info(const Plan& p);
std::string plan_info_json(const PlanInfo& p);
PlanInfo plan_info_from_json(const std::string& text);  // throws slm::Error on a malformed spec

struct ReportOptions {
  std::string plan;  // a plan name in the ledger or a plan .toml; "" = every plan in the ledger
  std::string ledger = "runs/ledger.sqlite";
  std::string format = "txt";  // txt, md, html, csv
  std::string out;             // "" = stdout
};
// `slmlab report`.
int report(const ReportOptions& o);

}  // namespace slm::engine
