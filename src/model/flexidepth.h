// FlexiDepth (docs/modules.md section 8; Luo, Wang, Yan, COLM 2025): a block wrapper with a per-token
// router that sends each token through the full block or a light adapter.
//
//   G    = sigmoid(w . norm(x) + b)                               (B, T, 1), per token
//   full = x + G (block(x) - x)            where G > tau          block = branches, mixer, FFN
//   skip = x + (1 - G) adapter(norm(x))    where G <= tau         adapter: ReLU^2 MLP C -> hidden -> C
//
// The scaling by G and 1 - G is what trains the router (the threshold itself has no gradient).
// The mixer runs for every token and its output is masked, so attention still computes K and V for
// skipped tokens (the paper's KV cache stays complete) and no compute is saved here (fine on CPU;
// FLOPs count the full block plus router and adapter). Per token, so causal and per document.
//
// Skip loss (training only): alpha x mean over tokens of (sum over FlexiDepth layers of G)^2, one
// aux "flexidepth_skip" pushed by the last FlexiDepth layer. The layers' gates are summed in
// Ctx::carry, which lives for one forward; the last layer takes and clears it.
//
// Init inside PrivateInit (the baseline's init is unchanged): router w ~ N(0, 0.01), b = router_bias
// (1: G = 0.73, every token starts on the full path at tau 0.5); adapter c_fc uniform with the std of
// N(0, 1/C), c_proj zero (a skipped token starts as the identity).
//
// The paper freezes the base model and trains only router and adapter; slmlab's ablations train
// from scratch, so the base trains too (the catalog row says so).
//
// Stats (training forwards): flexidepth.L<i>.full (share of tokens on the full path), .gate (mean G);
// flexidepth.layers_used (full layers per token, summed over layers), flexidepth.gate (mean G).
//
// Shapes: B batch rows, T tokens, C model dim.
#pragma once
#include <torch/torch.h>

#include <string>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

struct FlexiDepthOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;       // C
  int64_t layer = 0;           // names the layer's stats, seeds its init
  uint64_t seed = 1337;        // the model's init seed
  double tau = 0;              // G > tau takes the full block (the paper: 0.5)
  double alpha = 0;            // skip-loss weight (the paper's stage 1: 1e-4)
  int64_t adapter_hidden = 0;  // adapter width
  double router_bias = 0;      // b init
  bool last = true;            // the last FlexiDepth layer: pushes the skip loss

  // From the resolved catalog row and the model configuration.
  static FlexiDepthOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

struct FlexiDepthWrapImpl : BlockWrapImpl {
  explicit FlexiDepthWrapImpl(const FlexiDepthOptions& o);
  // x: (B, T, C) -> (B, T, C)
  torch::Tensor forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) override;
  torch::Tensor gate(const torch::Tensor& x);  // (B, T, C) -> G (B, T, 1), fp32
  std::string describe() const override;
  FlexiDepthOptions opt;
  torch::nn::Linear router{nullptr};                            // C -> 1, with bias
  torch::nn::Linear adapter_fc{nullptr}, adapter_proj{nullptr};  // C -> hidden -> C
};

// The model side of the catalog's "flexidepth": wraps each listed layer (every layer when empty).
// Refuses a layer another module already wraps.
void apply_flexidepth(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
