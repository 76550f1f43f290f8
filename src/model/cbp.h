// Continual backprop (docs/modules.md section 14; Dohare et al., "Loss of plasticity in deep
// continual learning", Nature 2024): the baseline ReLU^2 MLP whose least useful mature hidden units
// are re-initialized now and then, so the layer keeps fresh units that can still learn.
//
// Per hidden unit i of one layer, with a_i = ReLU(W_fc x)_i^2 the unit's output and W_proj[:, i]
// its outgoing weights:
//   utility    u_i <- eta u_i + (1 - eta) mean_tokens(|a_i|) sum_k |W_proj[k, i]|     every step
//   age        age_i <- age_i + 1                                                     every step
//   ranking    u_i / (1 - eta^age_i)   (the paper's bias correction: a young unit's average
//              started at 0, so without it a just-matured replacement looks least useful again)
//   due        d <- d + rate x #{i : age_i > maturity}                                 every step
//   replace    on steps divisible by `every`: the floor(d) eligible units of lowest corrected
//              utility (d keeps the fraction). W_fc[i, :] is redrawn from the init distribution,
//              W_proj[:, i] = 0 (the new unit contributes nothing yet), u_i = 0, age_i = 0, and the
//              optimizer's state of that row and column is zeroed.
// The forward only reads activations (no effect on outputs or gradients); the update and the
// replacement run in after_step, after the optimizer step. The MLP has no biases, so unlike the
// paper's nets there is none to absorb the removed unit's mean output: the model changes by exactly
// that unit's (lowest-utility) contribution, and not at all through the new one.
//
// Determinism: the redraw uses a generator seeded from (model seed, layer, step), so it needs no
// generator state to be saved; utility, age, the due fraction and the replacement count are buffers,
// which checkpoints carry, so a resumed run replaces exactly the units the uninterrupted one would.
//
// Data parallel (model/dp.h): after_step sums the activation sums and token counts over the ranks
// first, so every replica ranks the same utilities. Tensor parallel: c_fc and c_proj split by hidden
// units as the MLP's (model/tp.h); utility and age stay whole (H) on every rank, updated from the
// shards' gathered sums, so every shard ranks the same units, and each redraws its own rows of the
// replaced units from the same draws.
//
// Shapes: B batch rows, T tokens, C model dim, H = 4 C hidden units.
#pragma once
#include <torch/torch.h>

#include <string>

#include "catalog/catalog.h"
#include "model/gpt.h"

namespace slm {

// One layer's settings; apply_cbp fills them from the catalog row.
struct CbpOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  double rate = 0;          // replacements per eligible unit per step (the paper: 1e-4 to 1e-5)
  int64_t maturity = 0;     // a unit is eligible once its age exceeds this many steps
  double decay = 0;         // eta, of the utility's running average
  int64_t every = 0;        // replace on steps divisible by this (utility and age update every step)
  int64_t layer = 0;        // this layer's index: names its stats, seeds its redraws
  uint64_t seed = 1337;     // the model's init seed

  // From the resolved catalog row and the model configuration.
  static CbpOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

struct CbpMlpImpl : MLPImpl {
  CbpMlpImpl(const ModelConfig& c, const CbpOptions& o);
  // x: (B, T, C) -> (B, T, C), the baseline's output; in training also sums |a| per unit.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // Updates utilities and ages from this step's activations, then replaces the units due; writes
  // cbp.L<layer>.replaced (units so far) and .utility (mean), and cbp.replaced (all layers).
  void after_step(StepCtx& sctx) override;
  // Replaces units idx (n,) int64 now, as after_step does, redrawing from the generator of `step`;
  // resets their optimizer state through sctx.optim_state when it is set. Exposed for tests.
  void replace(const torch::Tensor& idx, int64_t step, const StepCtx& sctx);
  // The MLP's 6 x matrix params + 1 add per hidden unit per token for the utility's sum. The
  // per-step update (H C for the outgoing-weight sums) is not per token and is left out.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  // Split as the MLP (its forward and after_step index this rank's units from tp's rank).
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override { return split_units(g, splits); }

  CbpOptions opt;
  torch::Tensor utility;   // (H,) fp32, the running contribution utility
  torch::Tensor age;       // (H,) int64, steps since the unit was (re)born
  torch::Tensor due;       // () fp64, replacements owed, carried fraction included
  torch::Tensor replaced;  // () int64, units replaced so far
  // Transient, per step: sum over this step's training tokens of |a| (H,) fp32, and their count.
  torch::Tensor act_sum;
  int64_t act_tokens = 0;
};
TORCH_MODULE(CbpMlp);

// The model side of the catalog row: the layers listed (every layer when the list is empty) get
// CbpMlp as their feed-forward and "cbp" in their module list.
void apply_cbp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
