// Optimizers, written out so their state is explicit tensors that checkpoints save and restore
// bitwise: AdamW, and Muon (momentum orthogonalized by a Newton-Schulz iteration) for 2-D matrices.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "model/tp.h"
#include "train/step_profile.h"

namespace slm {

// A group of parameters sharing one optimizer rule and one base learning rate.
struct ParamGroup {
  std::string name;                  // "embed", "head", "matrix", "scalar"
  std::string kind;                  // "adamw" or "muon"
  double base_lr = 0.0;              // multiplied by the schedule factor each step
  double weight_decay = 0.0;
  std::vector<std::string> names;    // parameter names (model.named_parameters keys)
  std::vector<torch::Tensor> params;
};

struct OptimOptions {
  double beta1 = 0.8, beta2 = 0.95, eps = 1e-10;  // adamw
  double momentum = 0.95;                          // muon (nesterov)
  int ns_steps = 5;                                // Newton-Schulz iterations
  bool fused = true;                               // adamw: PyTorch's fused kernel where it runs (CUDA, LibTorch >= 2.0)
};

class Optimizer {
 public:
  Optimizer(std::vector<ParamGroup> groups, OptimOptions opt);
  // One update with lr = base_lr * lr_factor for every group. Parameters without grad are skipped.
  // phases: where --profile times Muon's Newton-Schulz (muon_ns), the rest of Muon and AdamW.
  void step(double lr_factor, prof::Phases* phases = nullptr);
  void zero_grad();
  // Every state tensor, named "<param name>.<state>" (e.g. "blocks.0.attn.c_q.weight.exp_avg"),
  // plus "step" counters; restore() takes exactly such a map and checks names and shapes.
  std::map<std::string, torch::Tensor> state() const;
  void restore(const std::map<std::string, torch::Tensor>& state);
  // The live state of parameter p (the same tensor, not a copy), by state name: "exp_avg" and
  // "exp_avg_sq" (AdamW) or "momentum" (Muon); empty if p is in no group. Writes go into the optimizer.
  std::map<std::string, torch::Tensor> state_of(const torch::Tensor& p) const;
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Tensor parallelism: the parameters in `dims` are this rank's shards (model/tp.h). AdamW is
  // elementwise and runs on shards as is; Muon orthogonalizes the whole matrix, so its update is
  // gathered over the group, orthogonalized whole (the same on every rank) and sliced back.
  void set_tensor_parallel(TpGroupPtr g, TpSplits splits);

 private:
  // AdamW over every parameter of g that has a gradient, at learning rate lr, for step step_.
  void adamw_step(ParamGroup& g, double lr);

  TpGroupPtr tp_;
  TpSplits tp_splits_;
  std::vector<ParamGroup> groups_;
  OptimOptions opt_;
  int64_t step_ = 0;
  std::map<std::string, torch::Tensor> exp_avg_, exp_avg_sq_, momentum_;
  torch::Tensor fused_step_;  // step_ as the fused kernel reads it: float32, 0-dim, on the parameters' device
};

// Newton-Schulz quintic iteration: an approximate orthogonalization U V^T of G = U S V^T.
// Computed in bf16 where the device supports it (as Muon does), fp32 otherwise.
torch::Tensor zeropower_newton_schulz(const torch::Tensor& g, int steps, bool use_bf16);

}  // namespace slm
