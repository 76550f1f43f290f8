// The memory a training rank needs, estimated before the model is allocated, so that a substrate
// too large for the machine is refused in one line (by `train` and `train --dry-run`) instead of
// dying in an allocation or the OOM killer mid-step.
//
// The estimate is a stated model, not a measurement:
//   weights and gradients fp32 (4 + 4 bytes per parameter), optimizer state (AdamW 8 bytes, Muon's
//   momentum 4), bf16 copies of the matrices under mixed precision (2),
//   activations saved for backward per token of a micro-batch: per layer 4 x (6 C + 24 C / tp)
//   bytes (norms, residuals, q k v, the attention output, the MLP's 4C up, ReLU^2 and down input,
//   split by tp where the block is) plus the attention scores where the attention kernel keeps them
//   (device::attention_score_bytes: fp32 scores and probabilities, (H / tp) x T per token), and
//   8 C for the embedding and the fused head.
// tests/test_memory.cpp checks it against the bytes LibTorch's CPU allocator really holds at the
// peak of a step (between 1x and 2x of it).
#pragma once
#include <cstdint>
#include <string>

#include <vector>

#include "model/gpt.h"
#include "train/optim.h"

namespace slm {

struct MemoryEstimate {
  double weights = 0, grads = 0, optimizer = 0, casts = 0, activations = 0;  // bytes on this rank
  double total() const { return weights + grads + optimizer + casts + activations; }
  // "1.32 GiB (weights 0.25, gradients 0.25, optimizer 0.41, bf16 casts 0, activations 0.41)"
  std::string describe() const;
};

// Parameters of one rank's share of the baseline (embedding and head whole, attention and MLP
// matrices split by tp): what every model of this geometry holds at least, before modules add theirs.
struct ParamCounts {
  double adamw = 0;  // parameters with two AdamW moments
  double muon = 0;   // parameters with Muon's one momentum buffer
  double matrices = 0;  // of those, the block matrices autocast copies to bf16
  double total() const { return adamw + muon; }
};
ParamCounts baseline_params(const ModelConfig& c, int64_t tp, bool muon);
// The exact counts of a built model's optimizer groups (this rank's shards).
ParamCounts param_counts(const std::vector<ParamGroup>& groups);

// Activations saved by one micro-batch of `rows` rows of c.context tokens, on a rank of a tp group.
double activation_bytes(const ModelConfig& c, int64_t rows, int64_t tp);

MemoryEstimate estimate_memory(const ModelConfig& c, const ParamCounts& p, int64_t rows, int64_t tp, bool bf16);

// Bytes this rank may use: `budget_gib` when > 0, else the machine's available memory (MemAvailable,
// bounded by the cgroup's limit) shared by the `local_ranks` on it; 0 when unknown (a CUDA device).
double memory_budget_bytes(const torch::Device& dev, double budget_gib, int local_ranks, std::string* source);

// "may use 4.00 GiB (--memory-budget)", or "not checked (unknown on cuda:0)".
std::string budget_text(double budget, const std::string& source);
// Throws a one-line Error when `e` exceeds the budget, naming both and what to change.
void require_memory_fits(const MemoryEstimate& e, double budget, const std::string& source, const std::string& what);

}  // namespace slm
