// The Slurm backend of ablate: each run is one batch job (sbatch --requeue) whose script runs the
// same `slmlab train ... --resume` command as the local backend and records the trainer's exit
// code in the run folder (slurm.exit, written atomically). ablate learns outcomes from run folders
// on the shared filesystem, never from sacct (no slurmdbd needed) and never by a job writing the
// SQLite ledger. The job id is kept in the run folder (slurm.job), so an ablate restarted after a
// kill re-attaches to live jobs instead of submitting twice. squeue, polled, says which jobs are
// still pending or running; a preempted or `scontrol requeue`d job stays queued and resumes from
// its checkpoint (the trainer checkpoints on SIGTERM).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace slm::engine::slurm {

struct Options {
  double poll_s = 2;                // how often squeue is asked
  std::vector<std::string> extra;   // more sbatch arguments (partition, account, time limit)
  double exit_grace_s = 15;         // how long a job that left the queue may take to show its exit file (NFS)
};

// Fails with a one-line reason when sbatch/squeue are missing or the controller does not answer.
void check_available();

// The batch script of a job: runs `argv` (shell-quoted), keeps the trainer's exit code in
// DIR/slurm.exit as "<job id> <code>" (tmp + mv), passes SIGTERM to the trainer and waits for it.
std::string batch_script(const Job& job);

// sbatch's arguments for a job whose script is `script` (argv[0] = "sbatch").
std::vector<std::string> sbatch_args(const Job& job, const std::string& script, const Options& opt);

// "'a b'" for the shell; plain words stay as they are.
std::string shell_quote(const std::string& s);

std::unique_ptr<Backend> make_backend(const Options& opt);

}  // namespace slm::engine::slurm
