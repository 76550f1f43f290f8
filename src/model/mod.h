// MoD, Mixture-of-Depths (Raposo et al. 2024; docs/modules.md section 7): a block wrapper on the
// routed layers. Per token a scalar router r = w.x (x the block's input); a token the router picks
// goes through the block on a gathered sequence of the picked tokens only,
//   x' = x + r f(x~),  f(x~) = block(x~) - x~ (branches, mixer and feed-forward),
// and every other token passes unchanged, bit for bit. The factor r puts the router on the gradient
// path of the language-model loss.
//
// Which tokens: in training, the top k = max(1, floor(capacity T)) of each row by r (the paper's
// expert-choice top-k; it depends on later tokens, so it is used only where the whole row is
// known and the loss is not reported). In evaluation and generation a causal per-token criterion:
// sigmoid(r) > 0.5, taught by an auxiliary BCE on r with target "in the top-k" (the paper's fix 1,
// weight aux_loss), or, with predictor=true, a small MLP on the detached block input trained by
// its own BCE (fix 2). So val_bpb is always measured with the causal criterion (the spec's pitfall:
// top-k at evaluation would leak the future).
//
// The gathered sequence keeps the tokens in order; attention among them is causal by their
// original positions, per document (the row's mask gathered), and RoPE rotates them by their
// original positions (the tables' rows gathered). Rows are packed into one gathered sequence of at
// most about T tokens at a time with a block-diagonal mask, so the block runs in a few large calls
// rather than one per row (Mamba layers: one row per call, as the scan has no mask). Branches
// (Engram) run on the full sequence, as they read the neighbouring token ids; their output reaches
// the routed tokens only.
//
// Generation: the criterion is per token, so a chunk's routing is the same whether the sequence
// runs whole or in pieces; unrouted tokens never enter the block, so they add no K/V (or SSM
// state) at that layer, in both ways.
//
// Shapes: B batch rows, T tokens, C model dim, N routed tokens.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;
struct BlockImpl;

struct ModOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;         // C
  double capacity = 0;           // fraction of a row's tokens routed in training
  double aux_loss = 0;           // router BCE weight
  bool predictor = false;        // fix 2: an MLP decides in evaluation
  int64_t predictor_hidden = 0;
  double predictor_loss = 0;
  char kind = 'A';               // the layer's kind ('M': one row per gathered call)
  int64_t layer = 0;             // stats names and the private init stream
  uint64_t seed = 1337;          // the model's init seed

  // From the resolved catalog row and the model configuration.
  static ModOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// Tokens a routed block processes per row of T tokens in training: max(1, floor(capacity T)).
int64_t mod_capacity_tokens(double capacity, int64_t T);

struct ModWrapImpl : BlockWrapImpl {
  explicit ModWrapImpl(const ModOptions& o);
  // x: (B, T, C) -> (B, T, C). In training appends the BCE losses "mod_bce.L<l>" (and
  // "mod_pred.L<l>") to ctx.aux, and to ctx.stats "mod.L<l>.causal_routed" (the fraction the causal
  // criterion would route: what evaluation runs), "mod.L<l>.causal_acc" (its agreement with the
  // top-k), and their means over routed layers "mod.causal_routed", "mod.causal_acc". Outside
  // training, "mod.L<l>.routed": the fraction routed.
  torch::Tensor forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) override;
  // The router's (and predictor's) FLOPs minus what the block does not run: (1 - capacity) of the
  // default attention's and MLP's matmuls and of attention's scores (a Mamba mixer's saving is not
  // counted). Negative: BlockImpl adds it to the block's full cost. Approximate for replaced FFNs.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  // The router's logits r: (B, T, C) -> (B, T) fp32; the predictor's: the same, from x detached.
  torch::Tensor router_logits(const torch::Tensor& x) const;
  torch::Tensor predictor_logits(const torch::Tensor& x);
  ModOptions opt;
  torch::Tensor router;  // (C) w; a vector, so AdamW, not Muon, trains it
  torch::nn::Linear pred_fc{nullptr};
  torch::Tensor pred_out, pred_bias;  // (h), (1)
  torch::Tensor last_routed;          // (B, T) bool: the tokens the last forward routed (tests, diagnostics)
};

// The model side of the catalog row: the wrapper on each routed layer (catalog::mod_layers), "mod"
// in its module list. Refuses a layer another module already wraps. A DSA mixer on a
// routed layer reads the tokens' original positions from Ctx::positions; its local window counts the
// routed keys.
void apply_mod(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
