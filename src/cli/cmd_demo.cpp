// slmlab demo, the main job: the default data set (built if missing, then verified), the demo plan
// on cpu-tiny in parallel waves, its scorecard in the terminal and as one HTML page.
#include <cstdio>

#include "cli/commands.h"
#include "common/fs.h"
#include "data/dataset.h"
#include "engine/report.h"
#include "engine/runner.h"
#include "train/substrate.h"

namespace slm::cli {

int cmd_demo(const Args& a) {
  const std::string dir = a.str("data");
  if (!data::is_dataset(dir)) {
    std::printf("== demo: building the default data set from this machine's C++ sources into %s\n", dir.c_str());
    data::BuildOptions o;
    o.out = dir;
    data::BuildResult r = data::build(o);
    std::printf("built in %.1fs (collect %.1fs, tokenizer %.1fs, encode %.1fs)\n",
                r.seconds_collect + r.seconds_tokenizer + r.seconds_encode, r.seconds_collect, r.seconds_tokenizer,
                r.seconds_encode);
  } else {
    std::printf("== demo: using the existing data set %s\n", dir.c_str());
  }
  data::VerifyResult v = data::verify(dir, 64, 0);
  std::printf("== verify: ok (%llu documents decode to their source hash)\n", (unsigned long long)v.docs_decoded);
  std::printf("== statistics\n%s", data::stats(dir, 20, false).c_str());
  // The demo plan on cpu-tiny in waves of --jobs; re-running the demo skips finished runs and
  // resumes the rest. Then the scorecard, in the terminal and as one HTML page.
  engine::AblateOptions ab;
  ab.plan = fs::join(fs::join(fs::parent(substrates_dir()), "plans"), "demo.toml");
  ab.data = dir;
  ab.runs = a.str("runs");
  ab.ledger = fs::join(ab.runs, "ledger.sqlite");
  ab.jobs = static_cast<int>(a.i64("jobs"));
  std::printf("== ablation: %s, --jobs %d, ledger %s\n", ab.plan.c_str(), ab.jobs, ab.ledger.c_str());
  std::fflush(stdout);
  const int rc = engine::ablate(ab);
  engine::ReportOptions rep;
  rep.ledger = ab.ledger;
  rep.plan = "demo";
  std::printf("== scorecard\n");
  std::fflush(stdout);
  engine::report(rep);
  rep.format = "html";
  rep.out = fs::join(ab.runs, "report.html");
  engine::report(rep);
  return rc;
}

}  // namespace slm::cli
