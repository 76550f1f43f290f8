// MoE (docs/modules.md section 6; docs/decisions.md "MoE"): a DeepSeekMoE feed-forward on selected
// layers, in place of the dense ReLU^2 MLP.
//
//   y_t = sum_{i < N_s} FFN^s_i(u_t) + sum_{i in topK_t} g_{i,t} FFN^r_i(u_t)
//
// Every expert is a ReLU^2 MLP of hidden size h (fine-grained: by default h = 4C / (N_s + K), so a
// token's active FFN parameters equal the dense MLP's). The N_s shared experts always run, fused as
// one MLP of hidden N_s h (a sum of MLPs is one MLP over their concatenated hidden units).
//
// Routing, per token: logits z = W_r u (fp32), scores s = softmax(z) or sigmoid(z); the K experts
// with the largest s + b are selected, b a balancing bias that takes no gradient (it changes which
// experts are chosen, never their weights); gates g = s at the selected experts, renormalized to sum
// to 1 for sigmoid (not for softmax, DeepSeek-V3's gate), times route_scale.
//
// Balancing, in training only (aux losses never enter val_bpb):
//   z-loss    mean_t logsumexp(z_t)^2                       (ST-MoE), weight z_loss
//   balance   E sum_i f_i P_i, f_i = share of the N K picks that went to expert i, P_i = mean_t of
//             the per-token normalized scores (Switch; = 1 for a uniform router), weight aux_loss
//   bias      b_i += bias_rate sign(mean load - load_i) after each optimizer step (after_step), the
//             loads counted over the step's training forwards (DeepSeek-V3's auxiliary-loss-free
//             balancing)
//
// Data parallel (model/dp.h): the step's load is summed over the ranks before the bias update, and the
// balance loss's f counts every rank's picks, so every replica moves its biases alike and the loss is
// one process's.
//
// Capacity (capacity_factor > 0, training only): each batch row is a group; expert i keeps at most
//   capacity = ceil(n K / E x capacity_factor) of the row's n tokens, earliest positions first, so
//   whether a token is kept depends only on the tokens at or before it in its row (never on the
//   future; earlier documents of a packed row can crowd a later one out). A dropped pick adds
//   nothing: a token dropped by all its experts gets the shared experts and the residual only.
//   Evaluation and generation drop nothing: a drop there would make val_bpb depend on what else is
//   in the batch and break generation-with-cache == recomputation (DeepSeek-V3 drops none either).
//
// Dispatch: the kept picks are sorted by expert (stable), their tokens gathered once, each expert
// runs on its contiguous slice (a loop over experts, never tokens), and the weighted outputs are
// added back with index_add (sequential on CPU: bitwise deterministic).
//
// Stats (ctx.stats, every forward): per layer the share of picks per expert (load.<i>), its
// coefficient of variation over experts (load_cv), max load over the mean (max_load) and the share
// of picks dropped; the means over MoE layers as moe.load_cv, moe.max_load, moe.dropped.
//
// Shapes: N tokens (B T, rows flattened), C model dim, E routed experts, K picks per token,
// A = N K picks, h expert hidden size.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

// One MoE layer's settings; from() fills it from the catalog row.
struct MoeOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;          // C
  int64_t layer = 0;              // names the layer's losses and stats, seeds its init
  uint64_t seed = 1337;           // the model's init seed
  int64_t n_shared = 0;           // N_s always-on experts
  int64_t n_routed = 0;           // E
  int64_t top_k = 0;              // K
  int64_t expert_hidden = 0;      // h; 0 = 4C / (n_shared + top_k), at least 1
  std::string score = "";         // softmax | sigmoid
  double route_scale = 0;         // factor on the gates
  double z_loss = 0;              // router z-loss weight (ST-MoE's; the seed's plans set 0.01)
  double aux_loss = 0;            // balance-loss weight (Switch), 0 = off
  double bias_rate = 0;           // gamma of the auxiliary-loss-free bias update, 0 = off
  double capacity_factor = 0;     // > 0: drop picks over capacity in training; 0 = drop nothing

  int64_t hidden() const;         // h, resolved

  // The options of layer `layer` from resolved catalog arguments.
  static MoeOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg, int64_t layer);
};

// One expert: a ReLU^2 MLP C -> hidden -> C (c_proj zero-initialized, as the dense MLP's).
struct MoeExpertImpl : torch::nn::Module {
  MoeExpertImpl(int64_t d_model, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);  // (n, C) -> (n, C)
  torch::nn::Linear c_fc{nullptr}, c_proj{nullptr};
};
TORCH_MODULE(MoeExpert);

// The router's decision for N tokens.
struct MoeRouting {
  torch::Tensor logits;   // (N, E) fp32, before softmax/sigmoid (the z-loss reads these)
  torch::Tensor probs;    // (N, E) fp32 scores normalized per token (the balance loss's P)
  torch::Tensor experts;  // (N, K) int64, by s + b, largest first
  torch::Tensor gates;    // (N, K) fp32 weights of those experts, with gradient into the router
};

// Which picks run where: the kept picks sorted by expert.
struct MoeDispatch {
  torch::Tensor pick;           // (A') kept picks (index p into the N K picks), grouped by expert
  torch::Tensor token;          // (A') their tokens, p / K
  std::vector<int64_t> counts;  // (E) kept picks per expert: expert i runs rows [sum_{j<i}, + counts[i])
  std::vector<int64_t> load;    // (E) picks per expert before capacity
  int64_t picks = 0;            // A = N K
  int64_t capacity = 0;         // per (row, expert); 0 = unlimited
};

// Router z-loss: mean over tokens of logsumexp(logits)^2. logits: (N, E) -> scalar.
torch::Tensor moe_z_loss(const torch::Tensor& logits);
// Switch balance loss E sum_i f_i P_i: probs (N, E) rows summing to 1, experts (N, K) -> scalar.
// With a data-parallel group (model/dp.h), f counts every rank's picks.
torch::Tensor moe_balance_loss(const torch::Tensor& probs, const torch::Tensor& experts, const TpGroupPtr& dp = nullptr);

struct MoeImpl : FfnImpl {
  explicit MoeImpl(const MoeOptions& o);
  // x: (B, T, C) -> (B, T, C). In training, appends "moe_z.L<layer>" and "moe_aux.L<layer>" to
  // ctx.aux (when their weights are > 0), drops over capacity and counts the step's load for the
  // bias; always writes the load stats.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // The pieces, exposed for tests. xf: (N, C).
  MoeRouting route(const torch::Tensor& xf);
  // Kept picks of `r` for `groups` rows of N / groups tokens each; drop = apply the capacity.
  MoeDispatch dispatch(const MoeRouting& r, int64_t groups, bool drop) const;
  // Routed experts' outputs for the picks of d, weighted by r's gates: (N, C). Split (tp): xf is the
  // experts' input (after tp_copy_in), and the partial outputs are summed over the group before the
  // gates weight them, so the router's gradient is the whole one on every rank.
  torch::Tensor run_experts(const torch::Tensor& xf, const MoeRouting& r, const MoeDispatch& d);
  // b_i += bias_rate sign(mean - load_i) for load (E) picks per expert; no gradient.
  void update_bias(const torch::Tensor& load);
  // The bias update from the step's load (when bias_rate > 0); stats: the bias's spread max - min.
  void after_step(StepCtx& sc) override;
  // Tensor parallelism (model/tp.h): every expert, the shared one included, splits inside itself as
  // the relu2 MLP (c_fc by hidden units, c_proj by its input), each split parameter added to `splits`
  // (named as registered here, "experts.0.c_fc.weight"). Chosen over whole experts per rank because
  // it needs no token exchange and keeps every rank's work equal whatever the router does: one
  // all-reduce of the routed outputs and one of the shared expert's per layer, as the dense MLP.
  // The router and the bias stay whole on every rank and read the replicated residual, so routing,
  // capacity, z-loss, balance loss and the bias update see the same (global) numbers and take the
  // same decisions everywhere. Returns "" or why it cannot split (hidden units that do not divide).
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override;

  // Matrix parameters a token uses (router, shared, K routed experts) and all of them.
  int64_t active_params() const;
  int64_t total_params() const;
  double flops_per_token(int64_t T) const override;  // 6 x active params: only active experts count
  std::string describe() const override;

  MoeOptions opt;
  int64_t hidden;                  // h
  torch::nn::Linear router{nullptr};  // C -> E
  MoeExpert shared{nullptr};       // C -> N_s h -> C, or null when n_shared = 0
  torch::nn::ModuleList experts{nullptr};  // E x MoeExpert(C, h)
  // (E) b: a parameter that takes no gradient, not a buffer: routing depends on it, so it travels
  // with the weights (checkpoints, snapshots, export, eval) as the router does.
  torch::Tensor balance_bias;
  torch::Tensor step_load;         // (E) int64 buffer: picks per expert in this step's training forwards
  TpGroupPtr tp;                   // set by shard_tensor_parallel; null: whole
};
TORCH_MODULE(Moe);

// The model side of the catalog's "moe": the FFN of each listed layer (every layer when the list is
// empty) becomes an MoE layer.
void apply_moe(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
