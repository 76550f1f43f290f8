// MTP, multi-token prediction (docs/modules.md section 5, DeepSeek-V3 form; docs/decisions.md row "MTP"):
// D sequential modules on the main model's final hidden state h^0 (before the final norm), sharing the
// model's embedding (wte) and output head (lm_head, with its softcap, through the fused loss). Module
// k = 1..D at position i:
//   h'^k_i = M_k [rms(Emb(t_{i+k})); rms(h^{k-1}_i)]       M_k: 2C -> C (the checkpoints' eh_proj order)
//   h^k    = TRM_k(h'^k)                                   a baseline block (attention + MLP), causal
//   L^k    = mean over counted i of -log P(t_{i+k+1} | softcap(lm_head(rms(h^k_i))))
// over positions i = 0 .. T-k-1 (the row's tokens t_0..t_T are the inputs and the last target).
// A target counts when positions i..i+k lie in one document of the packed row: the chain of inputs
// stays in the document and t_{i+k+1} is its next token, or the BOS that opens the next document,
// exactly as the main loss (k = 0) scores the token after each position. TRM_k attends within the
// document of its position. Each depth adds AuxLoss "mtp.d<k>" with weight lambda / D, so
// L_MTP = (lambda / D) sum_k L^k; lambda is `weight`, or `weight_after` from `switch_step` on (V3: 0.3,
// then 0.1). Auxiliary only: evaluation (token_nats, val_bpb) never runs objectives.
//
// Init: M_k uniform with the std of N(0, 1/(2C)), TRM_k as a baseline block (zero output
// projections: it starts as the identity), both from a private generator, so adding MTP leaves the
// main model's initialization, and with weight 0 its loss and gradients, exactly the baseline's.
//
// Shapes: B batch rows, T tokens, C model dim, V vocabulary, D depths, T_k = T - k.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/gpt.h"
#include "model/module.h"

namespace slm {

struct MtpOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t depth = 0;          // D
  double weight = 0;          // lambda
  double weight_after = 0;    // lambda from switch_step on
  int64_t switch_step = 0;    // 0 = never: lambda = weight throughout

  double weight_at(int64_t step) const { return switch_step > 0 && step >= switch_step ? weight_after : weight; }

  // From the resolved catalog row.
  static MtpOptions from(const catalog::ModuleArgs& args);
};

// Depth k's own parameters: the projection M_k and the block TRM_k.
struct MtpDepthImpl : torch::nn::Module {
  explicit MtpDepthImpl(const ModelConfig& c);
  torch::nn::Linear proj{nullptr};  // 2C -> C
  Block block{nullptr};
};
TORCH_MODULE(MtpDepth);

struct MtpImpl : ObjectiveImpl {
  MtpImpl(const MtpOptions& o, const ModelConfig& c);
  // h: (B, T, C) -> one AuxLoss per depth in ctx.aux, and per depth the fraction of counted targets
  // (mtp.d<k>.counted) and lambda (mtp.weight) in ctx.stats. Needs ctx.idx and ctx.targets.
  void add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) override;
  // Counted targets of depth k: (B, T - k) bool, all true without doc ids or document masking.
  torch::Tensor counted(const torch::Tensor& doc_ids, int64_t T, int64_t k) const;
  // Per depth, over its T - k positions: M_k (2 C C), TRM_k and the shared head (V C), x 6.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  MtpOptions opt;
  int64_t d_model, vocab;
  bool doc_mask;
  torch::nn::ModuleList blocks{nullptr};  // D MtpDepth; "blocks" so their matrices train as the model's (Muon)
};

// The model side of the catalog row: one MTP objective of `depth` modules.
void apply_mtp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
