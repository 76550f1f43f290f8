// The local backend of ablate: each run is a child process (`slmlab train ... --resume`) writing
// its folder's train.log. Children die with ablate (PR_SET_PDEATHSIG), so a killed ablate loses at
// most the steps since each run's last checkpoint; when ablate is asked to stop (SIGTERM/SIGINT)
// it passes SIGTERM on, and the trainers checkpoint. The Slurm backend is engine/slurm.h.
#pragma once
#include <memory>

#include "engine/backend.h"

namespace slm::engine::local {

std::unique_ptr<Backend> make_backend();

// ablate's SIGTERM/SIGINT handler (either backend): sets stop_requested and passes SIGTERM on to
// every local child. Async-signal-safe.
void on_stop_signal(int);

}  // namespace slm::engine::local
