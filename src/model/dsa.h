// DSA: DeepSeek Sparse Attention (docs/modules.md section 1, docs/decisions.md "DSA", "DSA top-k").
// The baseline attention (same q/k/v/proj, RoPE, QK-norm, document mask) plus a lightning indexer
// per layer that scores every visible key for each query; the main attention then attends only to
// the top-k scored keys, with a local window of the latest keys always kept.
//
//   I_{t,s} = sum_j w_{t,j} ReLU(q^I_{t,j} . k^I_s)      j over H^I indexer heads of dim d^I
//
// The indexer reads a detached copy of the block input and learns only from its KL loss against the
// main attention distribution; the main model learns only from the LM loss (top-k is not
// differentiable). Training: dense attention while step < warmup_steps (KL over every visible key),
// then sparse (KL over the selected keys). Which path ran and the density are written to ctx.stats
// every forward, so a dense run never passes for a sparse one.
//
// Shapes: B batch rows, T tokens, C model dim, H heads, D head dim, K selected keys per query,
// HI indexer heads, DI indexer head dim.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>

#include "catalog/catalog.h"
#include "model/gpt.h"

namespace slm {

namespace catalog {
// The selection of a DSA configuration at a context, from the catalog arguments: k keys per query
// (window included: topk if > 0, else max(topk_min, topk_ratio x context)) and the local window
// (window if >= 0, else min(128, k / 2)). Defined in catalog/modules/dsa.cpp (torch-free) so the
// catalog check and the model resolve the parameters the same way.
int64_t dsa_topk(const ModuleArgs& args, int64_t context);
int64_t dsa_window(const ModuleArgs& args, int64_t context);
}  // namespace catalog

// One DSA layer's settings, resolved (k and window are counts, not ratios). The catalog parameters
// have no defaults here: the catalog row (catalog/modules/dsa.cpp) holds the only ones, and from()
// resolves them.
struct DsaOptions {
  int64_t layer = 0;          // this layer's index: names its aux loss and stats, seeds its indexer
  int64_t index_heads = 0;    // H^I
  int64_t index_dim = 0;      // d^I
  int64_t rope_dims = 0;      // leading indexer dims under RoPE (half-split, as the model), 0 = none
  int64_t topk = 0;           // k: keys each query attends to after warm-up, window included
  int64_t window = 0;         // the latest `window` visible keys are always selected, 0 = none
  int64_t warmup_steps = 0;   // dense attention (KL over all visible keys) while step < warmup_steps
  double kl_weight = 0;       // weight of the indexer's KL loss in the total loss
  std::string path;           // auto | sparse | dense_masked
  int64_t chunk_values = int64_t{1} << 18;  // values per chunk of the gather and of the selection (cache-sized)
  // The sparse path on CPU: true runs the loop kernels of model/dsa_cpu.h; false the chunked gather
  // that other devices run (tests compare the two on CPU).
  bool cpu_kernels = true;

  // The options of layer `layer` from resolved catalog arguments, for the model's context.
  static DsaOptions from(const catalog::ModuleArgs& args, int64_t context, int64_t layer);
};

struct DsaAttentionImpl : CausalSelfAttentionImpl {
  DsaAttentionImpl(const ModelConfig& c, const DsaOptions& o);
  // x: (B, T, C) -> (B, T, C). In training, appends AuxLoss "dsa_kl.L<layer>" to ctx.aux; always
  // writes dsa.* stats (path, density, warm-up) to ctx.stats.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // What runs at the current stage: dense T keys in warm-up, else k keys on the sparse path or T
  // keys on the dense-masked one; plus the indexer's projections and its T-key scores.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  // The indexer's RoPE tables follow the model's context (YaRN's frequencies when given), as the
  // main attention's do.
  void set_context(int64_t T, const YarnConfig* yarn) override;
  // Tensor parallelism: the main attention split by heads (as the baseline's); the indexer stays
  // whole on every rank (replicated): it reads the replicated block input, so every rank selects the
  // same keys, and its KL target (the main heads' distribution) is summed over the group's heads.
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override;

  // Raw index scores I: (B, T, T) fp32 (unmasked) for the indexer input xi: (B, T, C).
  torch::Tensor index_scores(const torch::Tensor& xi);
  // I at the keys idx: (B, T, K) only, as the sparse-stage KL computes them: (B, T, K) fp32.
  torch::Tensor index_scores_at(const torch::Tensor& xi, const torch::Tensor& idx);
  // Top-k selection for queries [t0, t0 + n) from their scores (B, n, T) and visible mask (B, n, T)
  // bool: indices (B, n, K) int64 and valid (B, n, K) bool, false where top-k returned a masked key
  // (when fewer than K are visible). The local window is always among the indices; ties go to the
  // earliest keys. On CPU (cpu_kernels) the indices come in ascending order (model/dsa_cpu.h).
  std::pair<torch::Tensor, torch::Tensor> select(const torch::Tensor& scores, const torch::Tensor& visible,
                                                 int64_t t0 = 0) const;
  // The selection the forward makes, straight from the indexer input xi: (B, T, C), a block of
  // queries at a time (as select over index_scores, without the T x T x HI scores held whole).
  std::pair<torch::Tensor, torch::Tensor> select_keys(const torch::Tensor& xi, const torch::Tensor& visible);
  // Whether the gather path runs at sequence length T (the `path` setting, auto by k vs T).
  bool sparse_path(int64_t T) const;
  // Whether the stage at `step` is sparse (warm-up over).
  bool sparse_stage(int64_t step) const { return step >= opt.warmup_steps; }

  DsaOptions opt;
  torch::nn::Linear indexer_q{nullptr};  // C -> HI * DI
  torch::nn::Linear indexer_k{nullptr};  // C -> DI, one key shared by the indexer heads
  torch::nn::Linear indexer_w{nullptr};  // C -> HI, per-head weights
  torch::nn::LayerNorm indexer_norm{nullptr};
  torch::Tensor indexer_cos, indexer_sin;  // buffers (context, rope_dims / 2)
  int64_t context = 0;                      // the model's context, for describe()
  double rope_base = 10000.0;               // the model's RoPE base, for the indexer's tables
  // The largest training step seen: evaluation forwards carry step 0, so they run the stage that
  // training reached.
  int64_t steps_seen = 0;
};
TORCH_MODULE(DsaAttention);

// The model side of the catalog's "dsa": every attention layer at or after start_layer becomes a
// DSA layer; Mamba layers stay as they are.
void apply_dsa(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
