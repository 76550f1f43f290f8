// GateSkip (docs/modules.md section 8; Thiggel/GateSkip GatedWrapper): a block wrapper that puts a
// vector gate on each residual branch (the mixer and the feed-forward) and skips, per token, the
// branches whose gate is lowest.
//
//   g   = sigmoid(W_g stop_grad(norm(h)) + b_g)                  (B, T, C), one gate per branch
//   h'  = h + g * f(norm(h))            kept tokens
//   h'  = h                             skipped tokens: the branch adds nothing
//   importance = mean_C(g)                                      (B, T)
//
// The gate reads the branch's normed input (the paper's h, normed as the branch reads it, so W_g's
// scale means the same at every depth), detached: the gate learns from the loss through g * f, not by
// reshaping the residual. Init inside PrivateInit (the baseline's init is unchanged): b_g = 5
// (sigmoid = 0.993, near the ungated block), W_g ~ N(0, 0.01).
//
// Sparsity: L2 on the gate values, mean over tokens and channels of g^2, averaged over the two
// branches; one aux per gated layer with weight sparsity / n_gated_layers, so the total is
// sparsity x the mean over gated layers.
//
// Which tokens skip:
//   training    per batch row, the round(r T) tokens of lowest importance (ties by position), r the
//               schedule: 0 before `warmup` steps, then skip_start -> skip_final linearly over
//               ramp_steps. The fraction skipped is r within 1/(2T). This reads the whole row (future
//               tokens too), as the paper's batch quantile does; it is training only.
//   evaluation  a token skips iff its importance <= a per-layer, per-branch threshold held in a
//   and decode  buffer: the EMA (decay threshold_ema) of the training batches' eval_skip-quantile of
//               importance. A fixed threshold makes each token's decision its own (causal, per
//               document, the same token by token as whole), so val_bpb never reads the future; the
//               fraction skipped at eval approximates eval_skip as far as eval importances follow
//               training's. The decay is short by default (0.5): the gates move as they train, and a
//               long memory lags them (0.99 made a 100-step cpu-tiny run skip 97% at eval, not 10%).
//               Data parallel (model/dp.h): the quantile is over every rank's tokens, so every
//               replica calibrates the same threshold.
//               Evaluation reports the fractions it skipped (eval_modules in metrics.jsonl).
//               Before any training step calibrated it (buffer < 0) nothing skips.
//
// Compute: skipping is emulated. Every branch runs on every token and skipped tokens' outputs are
// zeroed, so attention still has K/V for skipped tokens (the paper copies them from the layer below at
// decode; here they come from this layer) and no FLOPs are saved in this implementation. FLOPs count
// what ran: the full block plus the gates.
//
// Stats (training forwards): gateskip.L<i>.skip_attn / skip_ffn (fraction skipped), .gate (mean g);
// gateskip.skipped and gateskip.gate, the means over gated layers and branches.
//
// Shapes: B batch rows, T tokens, C model dim.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

struct GateSkipOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;         // C
  int64_t layer = 0;             // names the layer's aux loss and stats, seeds its init
  uint64_t seed = 1337;          // the model's init seed
  double sparsity = 0;           // L2 weight on the gates (the paper's default)
  double aux_weight = 0;         // the weight this layer's aux gets: sparsity / n_gated_layers
  double skip_start = 0;         // training skip ratio when the ramp starts
  double skip_final = 0;         // ... and after ramp_steps
  int64_t warmup = 0;            // steps with no skipping before the ramp
  int64_t ramp_steps = 0;        // the paper: 0.5% -> 10% over 5000 steps
  double eval_skip = 0;          // budget at evaluation and generation (0 = skip nothing)
  double threshold_ema = 0;      // decay of the eval threshold's running estimate
  double gate_bias = 5.0;        // b_g init (sigmoid 0.993)

  // From the resolved catalog row; aux_weight = sparsity / n_gated_layers.
  static GateSkipOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg, int64_t n_gated_layers);
};

// The training skip ratio at optimizer step `step`.
double gateskip_ratio(const GateSkipOptions& o, int64_t step);
// Per row, the round(ratio T) tokens of lowest importance: importance (B, T) -> bool (B, T).
torch::Tensor gateskip_budget_mask(const torch::Tensor& importance, double ratio);

struct GateSkipWrapImpl : BlockWrapImpl {
  explicit GateSkipWrapImpl(const GateSkipOptions& o);
  // x: (B, T, C) -> (B, T, C)
  torch::Tensor forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) override;
  // One branch (0 mixer, 1 feed-forward): x + g * f(norm(x)) with skipped tokens' term zeroed.
  // `skipped` and `gate`, when given, receive the (B, T) mask and the (B, T, C) gate.
  torch::Tensor branch(int64_t which, const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& f,
                       Ctx& ctx, torch::Tensor* skipped = nullptr, torch::Tensor* gate = nullptr);
  torch::Tensor gate(int64_t which, const torch::Tensor& x);  // (B, T, C) -> g (B, T, C)
  // Forward 2 + backward 2 per gate parameter (the input is detached: no input gradient).
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  GateSkipOptions opt;
  torch::nn::Linear mixer_gate{nullptr}, ffn_gate{nullptr};  // C -> C, with bias
  torch::Tensor eval_threshold;  // (2) buffer: the mixer's and the feed-forward's; < 0 = not calibrated
};

// The model side of the catalog's "gateskip": wraps each listed layer (every layer when empty).
// Refuses a layer another module already wraps.
void apply_gateskip(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
