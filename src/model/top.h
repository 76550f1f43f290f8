// TOP, token order prediction (docs/modules.md section 9; docs/decisions.md row "TOP"): an auxiliary
// objective that trains a separate unembedding W_top (V, C) on the final normed hidden state to rank
// the upcoming tokens by how soon they appear.
//
// Target (the paper's seq_to_top): y (B, T) are the next-token targets; for position t and token v,
// j = the first offset >= 0 with y_{t+j} = v; score_t(v) = W - j when j <= W, else -inf. Offsets that
// leave the row or the document of position t count as absent (the paper pads or masks).
// Loss (ListNet): L_TOP = mean_t [ -sum_v softmax(score_t)_v log_softmax(W_top hn_t)_v ].
//
// The target is sparse: at most J + 1 tokens per position have a finite score, so it is held as
// (ids, probs) of shape (B, T, J + 1) and never as (B, T, V). softmax(score_t) puts weight e^{-j} on
// offset j (the constant W cancels), and the first offset always counts, so the mass beyond offset
// 32 is below 1e-14 of the total: J = min(W, 32, T - 1) computes the target of any W exactly in fp32.
// The loss runs over rows in chunks, its gradient formed in the forward pass as the fused head does
// (model/fused_ce.h): no (B, T, V) tensor exists and nothing loops over tokens or offsets.
//
// Shapes: B batch rows, T tokens, C model dim, V vocabulary, N = B T rows, K = J + 1 offsets.
#pragma once
#include <torch/torch.h>

#include <string>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

// Offsets beyond this carry less than 1e-14 of a TOP target's mass (see above).
constexpr int64_t kTopMaxOffset = 32;

struct TopOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;   // C
  int64_t vocab = 8192;    // V
  int64_t window = 0;      // W, the lookahead (the paper's 340M config: 4096, the sequence length)
  double weight = 0;       // of L_TOP in the training loss (the paper: 1, beside L_NTP)
  bool doc_mask = true;    // windows stop at the document boundary (follows ModelConfig.doc_mask)
  uint64_t seed = 1337;    // W_top's private initialization

  // From the resolved catalog row and the model configuration.
  static TopOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// The sparse TOP target. ids (B, T, K): y_{t+j} (clamped to the row); probs (B, T, K) fp32: the
// softmax of the scores over the offsets that count (a token's first occurrence, inside the row and
// the document), 0 elsewhere; every row sums to 1.
struct TopTarget {
  torch::Tensor ids, probs;
};
// y (B, T) int64 targets; doc_ids (B, T) document of each position, or undefined (one document).
TopTarget top_target(const torch::Tensor& y, const torch::Tensor& doc_ids, int64_t window);

// Mean over rows of the ListNet loss of the logits h W^T (no softcap) against sparse soft targets:
//   loss_r = logsumexp(z_r) - sum_k probs[r, k] z_r[ids[r, k]],  z_r = h_r W^T in fp32.
// h (N, C), w (V, C), ids and probs (N, K). `compute` is the matmul dtype. Differentiable w.r.t. h and w,
// its gradient formed eagerly, chunk by chunk: use it linearly in the final loss, as the fused head.
torch::Tensor fused_linear_listnet_mean(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& ids,
                                        const torch::Tensor& probs, torch::ScalarType compute);

struct TopObjectiveImpl : ObjectiveImpl {
  explicit TopObjectiveImpl(const TopOptions& o);
  // h (B, T, C) before the final norm; adds the auxiliary loss "top" and the statistic "top.kl" (the
  // loss less the target's entropy: 0 = the order ranked exactly) from ctx.targets and ctx.doc_ids.
  void add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) override;
  double flops_per_token(int64_t T) const override;  // W_top forward and backward: 6 V C
  std::string describe() const override;

  TopOptions opt;
  torch::Tensor head;  // W_top (V, C); "head": trained at the output head's rate (GPTImpl::head_params)
};

// The model side of the catalog row: one TOP objective on the final hidden state.
void apply_top(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
