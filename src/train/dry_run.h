// `slmlab train --dry-run`: an honest ETA from measurement, without a run folder.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "data/dataset.h"
#include "data/transforms.h"
#include "model/gpt.h"
#include "train/substrate.h"

namespace slm {

// What the estimate needs: the run's model and precision, and what a step does.
struct DryRunInputs {
  const data::DataSet* ds = nullptr;
  data::TransformSet transforms;
  Substrate sub;
  ModelConfig model;
  int64_t accum = 1;          // micro-batches per step on a rank
  bool bf16 = false;
  torch::Device dev{torch::kCPU};
  double flops_per_token = 0;
  double peak_flops = 0;
};

// One row through models of depth 1 and 2 (same width and context) gives the fixed cost and the
// per-layer cost of a forward+backward; a step is that, extrapolated to the full depth, times the
// rows of every micro-batch of every rank. Prints the ETA, the evaluation time and the implied MFU.
void print_dry_run_estimate(const DryRunInputs& in);

}  // namespace slm
