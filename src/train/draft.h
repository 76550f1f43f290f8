// slmlab draft train: EAGLE-2's draft head (model/eagle.h) trained on a finished run, the target
// frozen, on the run's own training data. A run folder of its own (train/run_folder.h: the same
// refusal to mix runs, lock and metrics log as training): config.json names the target run, its
// checkpoint file and step; metrics.jsonl has one record per step (loss and its feature and token
// parts) and per eval (the same on validation rows, and the draft's top-1 agreement with the
// target's greedy token: what acceptance rests on); draft_latest.safetensors holds the head, the
// optimizer state and the loader position ("slmlab-draft v1"), so --resume continues bitwise.
#pragma once
#include <cstdint>
#include <string>

#include "model/eagle.h"

namespace slm {

// Every value is given (the defaults live once, in the CLI's option table, cli/table.cpp).
struct DraftTrainOptions {
  std::string run_dir;     // the target run
  std::string checkpoint;  // the target's checkpoint: latest, best or a kept step
  std::string out_dir;     // the draft's run folder ("" = RUN_DIR/draft_eagle2)
  int64_t steps = 0;       // optimizer steps
  int64_t batch_rows = 0;  // rows of the target's context per step
  double lr = 0;           // AdamW, constant (so a resumed, extended run equals one longer run)
  double w_token = 0;      // EAGLE's weight of the token loss beside the feature regression
  int64_t eval_every = 0;  // steps; 0 = only at the end
  int64_t eval_rows = 0;   // validation rows per eval
  uint64_t seed = 0;       // the head's initialization and the data order
  bool resume = false;
  bool quiet = false;
};

// Trains and returns 0; bad input throws slm::Error (one line) before anything is written.
int draft_train(const DraftTrainOptions& opt);

// A trained draft head and what it was trained for.
struct LoadedDraft {
  DraftHead head{nullptr};
  std::string target_run, target_checkpoint;  // as config.json names them
  int64_t step = 0;
};
// Loads DRAFT_DIR's head for `target` (a LoadedRun's model): refused, one line, when the draft was
// trained for another target checkpoint or geometry.
LoadedDraft load_draft(const std::string& draft_dir, const GPTImpl& target, const std::string& target_checkpoint);

}  // namespace slm
