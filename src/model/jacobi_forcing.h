// Jacobi forcing (Hu, Kou et al., Dec 2025; hao-ai-lab/JacobiForcing; docs/modules.md, the inference
// lane): a training objective that teaches the model to decode many tokens per forward under Jacobi
// decoding (model/generate.h), the architecture unchanged. Each micro-batch:
//
//  1. Trajectories, the model's own, on training data (no gradient). A prompt is the first `prompt`
//     tokens of a row (one row in `row_every`); T = `blocks` blocks of N = `block` tokens continue it
//     by fixed-block Jacobi decoding with the cache: block j starts as N copies of the last committed
//     token and is refined, all N at once, until it is its own prediction; that fixed point y* is
//     greedy's continuation (the generator's tests check the equality) and is committed before block
//     j + 1. The states y^(0), ..., y^(K) = y* of each block are its trajectory (K <= N).
//  2. Progressive noise: block j's noisy view is the trajectory state whose fraction of tokens that
//     differ from y* is nearest to (j + 1) / T, so the noise within a row climbs from easy to hard.
//  3. One forward over the packed row [prompt | noisy_0 clean_0 | noisy_1 clean_1 | ...] with the
//     noise-aware causal mask: the prompt is causal; a noisy block sees the prompt, the earlier *noisy*
//     blocks and itself causally; a clean block sees the prompt, the earlier clean blocks and itself
//     causally. noisy_j and clean_j sit at the same positions (P + j N + r), so the clean stream is the
//     plain causal sequence [prompt, y*] and the noisy stream is the same text with noisy blocks.
//  4. Consistency loss: at each offset o of a noisy block from its first token that differs from
//     y* on, KL(teacher || student) between the clean block's distribution at o (detached: the fixed
//     point's, greedy's own) and the noisy block's at o; summed, over the R T N noisy positions (the
//     others have the clean context: 0), so a batch's loss is the mean of its rows'. The paper's
//     L = L_pc + lambda L_AR keeps an AR term on the model's own greedy output; in training from
//     data the next-token loss on the data plays that part, so the objective adds weight x L_pc
//     beside it (an AuxLoss, never part of val_bpb).
//
// Only attention reads the noise-aware mask and the shared positions, so the objective refuses
// models whose layers look across positions otherwise (Mamba-3, Engram, MoD, DSA), with the reason.
// The packed forward is a training forward: components that gather step statistics (MoE's expert
// load, CBP's activations) count its tokens too; the collection runs in evaluation mode and counts
// nothing. It keeps no state between steps and has no parameters: under data parallelism each rank collects
// on one row in row_every of its own rows and the losses average like the main loss (with row_every
// 1, DP=2 follows one process: tests/test_dist.cpp). Tensor parallelism is refused (max_tp 1): the
// collection's greedy picks would run on a split model, untested.
//
// Shapes: R prompt rows, P prompt tokens, T blocks, N tokens per block, L = P + 2 T N packed tokens.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/gpt.h"
#include "model/module.h"

namespace slm {

struct JacobiForcingOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t block = 0;      // N: tokens refined together, as `generate --decode jacobi --block N`
  int64_t blocks = 0;     // T: blocks decoded after each prompt
  int64_t prompt = 0;     // P: a row's first P tokens are the prompt
  int64_t row_every = 0;  // prompts from rows 0, row_every, 2 row_every, ... of each micro-batch
  double weight = 0;      // on the consistency loss

  static JacobiForcingOptions from(const catalog::ModuleArgs& args);
};

// The trajectories of R prompts: states[r][j] is block j's Jacobi states y^(0..K), the last its fixed
// point; the fixed points of a row, block after block, are greedy's continuation of its prompt.
struct JacobiTrajectories {
  std::vector<std::vector<std::vector<std::vector<int64_t>>>> states;  // [row][block][state][N]
  int64_t forwards = 0;              // block forwards over all rows at once (the prefill not counted)
  std::vector<int64_t> row_forwards;  // per row, the block forwards until each of its blocks converged
};
// Fixed-block Jacobi decoding of `blocks` blocks of `block` tokens after each row of prompt (R, P),
// with the cache, no gradient. Each block reaches its fixed point in at most `block` forwards.
JacobiTrajectories collect_jacobi_trajectories(GPTImpl& model, const torch::Tensor& prompt, int64_t block,
                                               int64_t blocks);

// The packed layout [prompt | noisy_0 clean_0 | ...]: the noise-aware causal mask (L, L) bool, true
// where a query may attend, and the positions (L) int64 that RoPE reads.
torch::Tensor noise_aware_mask(int64_t P, int64_t T, int64_t N);
torch::Tensor packed_positions(int64_t P, int64_t T, int64_t N);
// The state of a trajectory whose fraction of tokens that differ from its last state (the fixed
// point) is nearest to `noise`; the noisier of two equally near.
int64_t state_at_noise(const std::vector<std::vector<int64_t>>& trajectory, double noise);

struct JacobiForcingImpl : ObjectiveImpl {
  JacobiForcingImpl(const JacobiForcingOptions& o, const ModelConfig& c);
  // Adds AuxLoss "jacobi_forcing" (the consistency loss) and reports in ctx.stats the fixed-block
  // tokens per forward of the collected trajectories (jacobi_forcing.tokens_per_forward: N T over
  // block forwards, the model's own speed-up under Jacobi decoding on training data) and the
  // fraction of noisy positions scored (jacobi_forcing.scored). Needs ctx.idx.
  void add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) override;
  // Per token of the batch, one row in row_every: the collection (forward only: the prompt, and at
  // most N forwards of N tokens per block) and the packed forward + backward over L tokens, at the
  // baseline backbone's cost per token (modules on the layers not counted).
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  JacobiForcingOptions opt;
  ModelConfig cfg;
};

// The model side of the catalog row: one Jacobi forcing objective; refuses layers that look across
// positions other than through attention's mask.
void apply_jacobi_forcing(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
