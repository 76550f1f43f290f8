// NCP, next concept prediction (docs/modules.md section 10; docs/decisions.md row "NCP"): an auxiliary
// objective. Every k tokens of a document form a concept; the model predicts the next concept's code
// from the current concept.
//
//   concepts  concept c of a document = its tokens [c k, (c + 1) k), counted from the document's
//             start, so a document is cut the same way wherever a packed row holds it; a concept that
//             a document boundary or the row's end cuts short is never used.
//   pairs     (c, c + 1), both complete and in one document: source c ends at position p, target
//             c + 1 covers p + 1 .. p + k.
//   encode    u_c = mean of hn over c's k positions, hn = rms_norm(h) (the state lm_head reads).
//   quantize  z = rms_norm(u_{c+1} - m) per segment, stop-gradient, m the EMA mean of the concepts seen
//             in training: S segments of D = C / S dims, each matched to the nearest of the N codes
//             of its codebook E_s (N^S concepts in all).
//   predict   logits_s = (head u_c)_s over N codes; L_NCP = mean over pairs and segments of
//             CE(logits_s, q_s). The prediction reads positions <= p only: the end of concept c.
//   codebook  the spec's stop-gradient EMA codebook (online k-means): in training every forward adds
//             its assignments to EMA counts and sums, E = sums / counts. z is stop-gradient, so there
//             is no codebook or commitment loss and nothing pulls the trunk toward the codes. A code
//             whose EMA count falls below one concept per batch is restarted at the batch's
//             worst-quantized concept (deterministic: no random draw). The EMA lives in buffers, which
//             checkpoints carry, so a resumed run continues it.
//
// Data parallel (model/dp.h): the pair count, the concepts' mean, the code counts and sums are summed
// over the ranks before use, a restart picks among every rank's concepts, and the loss is this rank's
// share of the mean over every rank's pairs; a rank without a pair still takes part. So every replica
// keeps the same codebook, one process's for the same rows.
//
// Statistics (ctx.stats, from the assignments under the codebook as the step found it): ncp.usage
// (code-use perplexity / N, mean over segments; 1/N = one code), ncp.codes_used (fraction of codes
// chosen at least once), ncp.concept_ppl (perplexity of the joint concept ids, at most N^S), ncp.acc
// (next-code accuracy), ncp.restarted (codes restarted by this forward), ncp.pairs.
//
// Shapes: B batch rows, T tokens, C model dim, P pairs in the batch, S segments, N codes, D = C / S.
#pragma once
#include <torch/torch.h>

#include <string>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

struct NcpOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;  // C
  int64_t span = 0;       // k tokens per concept (the spec: 4-8)
  int64_t segments = 0;   // S (the spec: 2-4)
  int64_t codes = 0;      // N per segment (the spec: 64-256)
  double decay = 0;       // of the codebook's EMA; short runs (cpu-tiny: 100 steps) need it to follow
  double weight = 0;      // of L_NCP in the training loss
  bool doc_mask = true;   // concepts counted per document (follows ModelConfig.doc_mask)
  uint64_t seed = 1337;   // the codebook's and head's private initialization

  // From the resolved catalog row and the model configuration.
  static NcpOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// The concept pairs of a batch: flat positions b T + p of every source concept's last token, (P)
// int64 in row-major order. doc_ids (B, T) or undefined (each row one document).
torch::Tensor ncp_pair_ends(int64_t B, int64_t T, int64_t span, const torch::Tensor& doc_ids, torch::Device dev);

struct NcpObjectiveImpl : ObjectiveImpl {
  explicit NcpObjectiveImpl(const NcpOptions& o);
  // h (B, T, C) before the final norm; adds the auxiliary loss "ncp" and the statistics above and, in
  // training, updates the codebook. No pair in the batch (every document shorter than 2 k): only
  // ncp.pairs = 0 is reported.
  void add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) override;
  // The codebook E: (S, N, D) fp32.
  torch::Tensor codes() const;
  // z (P, S, D) -> the nearest code of each segment (P, S) int64, ties to the lowest index.
  torch::Tensor assign(const torch::Tensor& z) const;
  // Per concept, i.e. per k tokens: the head forward and backward (6 S N C) and the codebook distances
  // (2 N C); pooling and the EMA update are O(C) and not counted.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;

  NcpOptions opt;
  torch::Tensor ema_count;  // (S, N) buffer: EMA of the concepts each code took per batch
  torch::Tensor ema_sum;    // (S, N, D) buffer: EMA of their sum; E = ema_sum / ema_count
  torch::Tensor mean_sum;     // (C) buffer: EMA of the concepts' mean, zero-started ...
  torch::Tensor mean_weight;  // () buffer: ... and the EMA of 1 it is divided by (Adam's bias correction)
  torch::Tensor head;       // (S N, C) the next-concept predictor; "head": the output head's rate
};

// The model side of the catalog row: one NCP objective on the final hidden state.
void apply_ncp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
