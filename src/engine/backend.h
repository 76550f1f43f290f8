// Where ablate's runs execute. The wave loop (runner.cpp) hands a backend `slmlab train` commands
// and learns how each ended; it alone touches the ledger. Two backends: local processes (the
// default, local.h) and Slurm jobs (slurm.h).
#pragma once
#include <csignal>
#include <optional>
#include <string>
#include <vector>

namespace slm::engine {

// One run to execute: the trainer's command line (argv[0] is the slmlab binary) and its folder.
struct Job {
  std::string run_id, dir;
  std::vector<std::string> argv;
  int threads = 1;  // the trainer's --threads, what a scheduler should reserve
};

// How a run's trainer ended: its exit code (128 + signal when killed), or -1 when nobody knows
// (a Slurm job that left the queue without writing one); `note` says why in that case.
struct Ended {
  std::string run_id;
  int code = -1;
  std::string note;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Starts the run. Returns true when it re-attached to a run already under way (a Slurm job
  // submitted by an earlier, killed ablate): that is not a new attempt.
  virtual bool start(const Job& job) = 0;
  // Blocks until a started run ends. nullopt: ablate was told to stop (stop_requested) and the
  // backend leaves its live runs where they are (Slurm jobs keep running; a restart re-attaches).
  virtual std::optional<Ended> wait_any() = 0;
  // Runs started and not yet returned by wait_any.
  virtual size_t n_live() const = 0;
};

// Set by ablate's SIGTERM/SIGINT handler.
extern volatile std::sig_atomic_t stop_requested;

}  // namespace slm::engine
