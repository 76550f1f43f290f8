// A trained run, loaded back for evaluation and generation (val_bpb itself: eval/bpb.h).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>

#include "data/dataset.h"
#include "eval/bpb.h"
#include "model/gpt.h"

namespace slm {

struct LoadedRun {
  std::string dir, checkpoint;  // the run folder and the checkpoint file read
  nlohmann::json config;        // the run's config.json
  ModelConfig model_cfg;
  GPT model{nullptr};
  int64_t step = 0;             // the checkpoint's step
  bool in_spike = false;        // saved inside a detected loss spike
  torch::Device device{torch::kCPU};  // where it runs: the run's own device
};

// The model geometry as config.json's "model" holds it (modules are stored beside it, as text), and
// back: the configuration a run's config.json describes, modules re-resolved through the catalog.
nlohmann::json model_config_json(const ModelConfig& c);
ModelConfig model_config_from(const nlohmann::json& config);
// Loads RUN_DIR's "latest" or "best" checkpoint (or a kept step) onto the device the run trained
// on, in evaluation mode.
LoadedRun load_run(const std::string& run_dir, const std::string& which);


}  // namespace slm
