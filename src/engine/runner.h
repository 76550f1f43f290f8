// slmlab ablate: a plan's experiments x seeds become runs, each a `slmlab train` process in its own
// folder, run in waves of N parallel processes with the threads divided between them. The ledger
// records every state change. Running the same command again skips finished runs and resumes the
// rest from their checkpoints; children die with the runner (PR_SET_PDEATHSIG), so a killed runner
// loses at most the steps since each run's last checkpoint, and the per-folder lock keeps a run
// from ever having two writers. A run stopped by a signal after its checkpoint (exit 143, summary
// "preempted") goes back to the queue without counting as a failed attempt; SIGTERM or SIGINT to
// ablate is passed on to the trainers, which checkpoint, and ablate exits 143.
// Runs are child processes (engine/local.h); --backend slurm submits each as a Slurm job instead
// (engine/slurm.h).
#pragma once
#include <string>

#include "engine/control.h"

namespace slm::engine {

struct AblateOptions {
  std::string plan;
  std::string ledger = "runs/ledger.sqlite";
  std::string data = "data/cpp-local";
  std::string runs = "runs";  // run folders go to runs/<plan>/<experiment>/s<seed>
  int jobs = 1;
  int threads = 0;            // total threads, 0 = all cores
  bool quiet = false;
  std::string backend = "local";  // local | slurm
  double poll_s = 2;              // slurm: seconds between squeue calls
  std::string sbatch;             // slurm: extra sbatch arguments, space separated
  // --decide: after the plan's runs, each wave's inconclusive experiments that more seeds could
  // still decide get one more seed (their base too when it has fewer), until every verdict is
  // decided or max_seeds is reached (engine/scorecard.h: seeds_to_add, and the looks correction).
  // The budget is saved into the ledger's copy of the plan's rule, so every report tests at the
  // alpha the looks imply.
  bool decide = false;
  int64_t max_seeds = 0;          // 0: the plan's [rule] max_seeds, else kDefaultMaxSeeds
  // Counts a model's parameters, for parameter-matched controls (engine/control.h); the CLI passes
  // engine::model_params. A plan that asks for controls without one is refused.
  ParamCounter count_params;
};
constexpr int64_t kDefaultMaxSeeds = 6;

// With [rule] compile_rate = N, each run that ends done gets its FIM-mode compile rate scored at its
// best checkpoint (N prompts, `slmlab eval compile`, recorded in the ledger; on this machine, also
// under --backend slurm), and a resumed ablate scores the finished runs that lack it.
// Returns 0 when every run ended done or INVALID, 1 when some run FAILED after its retries (or a
// compile-rate evaluation the rule asks for failed: its run stays done, the same command retries it), 143
// when a signal stopped ablate (nothing lost: the same command resumes).
int ablate(const AblateOptions& opt);

}  // namespace slm::engine
