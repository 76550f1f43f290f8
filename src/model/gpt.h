// The baseline model, as small LMs are trained today (nanochat is the reference): token embedding,
// pre-norm blocks with parameter-free RMSNorm, causal attention with RoPE and QK-norm, ReLU^2 MLP,
// untied output head, logit softcap, zero-initialized output projections. Attention is masked per
// document inside a packed row (doc_mask). The layer pattern string repeats over depth.
//
// Shapes: B batch rows, T context, C model dim, H heads, D head dim, V vocabulary.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/module.h"
#include "model/ring.h"
#include "model/tp.h"
#include "model/yarn.h"

namespace slm {

struct ModelConfig {
  int64_t vocab = 8192;
  int64_t n_layer = 4;
  int64_t d_model = 256;      // C = n_head * head_dim
  int64_t n_head = 4;
  int64_t head_dim = 64;
  int64_t context = 256;      // longest T the RoPE cache covers
  std::string layer_pattern = "A";
  double softcap = 15.0;      // 0 = off
  bool doc_mask = true;
  double rope_base = 10000.0;
  uint64_t seed = 1337;       // initialization
  std::vector<catalog::ModuleArgs> modules;  // catalog modules, resolved and checked, in order

  // Kind of layer i: the pattern repeated over depth.
  char layer_kind(int64_t i) const { return layer_pattern[i % layer_pattern.size()]; }
};

// The layer plan: the default blocks, then every module's apply in order (model/module.h).
ModelPlan model_plan(const ModelConfig& c);
// A module's apply runs its catalog check again, for a ModelConfig assembled by hand (same rules,
// same messages): the view of `plan` as built so far (its pattern spelled out per layer when a
// module changed kinds), and the check itself, failing with "[name] " and every message.
catalog::ModelView plan_view(const ModelConfig& c, const ModelPlan& plan);
catalog::ModelView check_module(const catalog::ModuleSpec& spec, const catalog::ModuleArgs& args,
                                const ModelConfig& c, const ModelPlan& plan);
struct GPTImpl;
// One line per layer: "layer 0: A attention (H=4, D=64, ...) + relu2 mlp (1024) [engram]", then
// objectives, streams and notes. Printed at init and stored in config.json.
std::string layer_plan(const GPTImpl& m);

// Attention mask for packed rows: (B, 1, T, T) bool, true where query t may see key s
// (s <= t and same document). Undefined when doc ids are undefined (plain causal).
torch::Tensor document_causal_mask(const torch::Tensor& doc_ids);
// Generation with a cache: T_new queries at the last positions of T_all keys -> (1, 1, T_new, T_all).
torch::Tensor cached_causal_mask(int64_t T_new, int64_t T_all, torch::Device dev);
// Generation over a token tree (Ctx::tree): the T tree tokens' positions pos + depth, their rows
// of the RoPE tables `cos`, `sin` (context, D/2), and allowed (1, 1, T, pos + T): every cached key
// and the token's ancestors. Used by the model and by EAGLE's draft head.
void set_tree_positions(Ctx& ctx, const torch::Tensor& cos, const torch::Tensor& sin);

// Attention's generation cache: keys and values of every position so far, (B, T, H, D).
// The tensors are replaced, never written in place, so a copy of the handles is an independent copy.
struct KVCache : LayerCache {
  torch::Tensor k, v;
  std::shared_ptr<LayerCache> clone() const override { return std::make_shared<KVCache>(*this); }
  int64_t length() const override { return k.defined() ? k.size(1) : 0; }
  void truncate(int64_t n) override {
    k = k.slice(1, 0, n);
    v = v.slice(1, 0, n);
  }
};

struct CausalSelfAttentionImpl : MixerImpl {
  explicit CausalSelfAttentionImpl(const ModelConfig& c);
  // x: (B, T, C) -> (B, T, C); RoPE tables and the document mask come from ctx.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // q, k, v of x (the normed input): (B, T, H, D), RoPE'd and QK-normed, q scaled; with ctx.caches
  // the cache's keys and values before this call's (and the cache extended by them), and the mask
  // of the T queries over the keys (undefined: plain causal). Early exit (model/adept.h) runs the
  // projections of tokens that left the stack so that later tokens can attend to them.
  struct Projected {
    torch::Tensor q, k, v, allowed;
  };
  Projected project_qkv(const torch::Tensor& x, Ctx& ctx);
  double flops_per_token(int64_t T) const override;  // matmuls + 12 H D T for scores and values
  std::string describe() const override;
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override;  // by heads
  // q, k, v column-parallel by heads, c_proj row-parallel; what a subclass's override calls.
  std::string split_heads(const TpGroupPtr& g, TpSplits& splits);
  int64_t n_head, head_dim;  // n_head: this rank's heads under tensor parallelism
  bool doc_mask;
  torch::nn::Linear c_q{nullptr}, c_k{nullptr}, c_v{nullptr}, c_proj{nullptr};
  TpGroupPtr tp;  // set by GPTImpl::shard_tensor_parallel: q, k, v by heads, c_proj by its input
};
TORCH_MODULE(CausalSelfAttention);

struct MLPImpl : FfnImpl {
  explicit MLPImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;  // (B, T, C) -> (B, T, C)
  std::string describe() const override;
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override;  // by hidden units
  torch::nn::Linear c_fc{nullptr}, c_proj{nullptr};
  TpGroupPtr tp;  // set by GPTImpl::shard_tensor_parallel: c_fc by hidden units, c_proj by its input

 protected:
  // The split itself (c_fc by hidden units, c_proj by its input), for a subclass that has checked
  // that its own code follows it; "" or why it cannot split.
  std::string split_units(const TpGroupPtr& g, TpSplits& splits);
};
TORCH_MODULE(MLP);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const LayerPlan& lp);
  // x: (B, T, C) -> (B, T, C); with streams, (B, T, n, C) through the wrapper.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx);
  // The pieces a wrapper combines: x + branches(x), mixer(norm(x)), ffn(norm(h)).
  torch::Tensor with_branches(const torch::Tensor& x, Ctx& ctx);
  torch::Tensor mixer_delta(const torch::Tensor& x, Ctx& ctx);
  torch::Tensor ffn_delta(const torch::Tensor& h, Ctx& ctx);
  double flops_per_token(int64_t T) const;
  char kind;
  Mixer mixer;
  Ffn ffn;
  std::vector<Branch> branches;
  BlockWrap wrap;
};
TORCH_MODULE(Block);

struct GPTImpl : torch::nn::Module {
  explicit GPTImpl(const ModelConfig& c);

  // Final hidden state before the last norm: idx (B, T) int64, doc_ids (B, T) or undefined -> (B, T, C)
  torch::Tensor hidden(const torch::Tensor& idx, const torch::Tensor& doc_ids);
  // ctx.idx and ctx.doc_ids set; fills the rest. A caller that presets both ctx.allowed (B, 1, T, T)
  // and ctx.positions (T) runs its own packed layout (model/jacobi_forcing.h): mask and positions kept.
  torch::Tensor hidden(Ctx& ctx);
  // Logits in fp32, softcapped: (B, T, V).
  torch::Tensor logits(const torch::Tensor& h);
  // Per-target cross entropy in nats: (B, T), fp32, no gradient (evaluation), through the fused head.
  // Per-token nats, no gradient. `stats`, when given, receives what modules report in evaluation
  // (GateSkip's and MoD's eval-time skip fractions, ...).
  // `structure`: (B, T) structure codes of the inputs (Ctx::structure), for a model that reads them.
  torch::Tensor token_nats(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids,
                           std::map<std::string, double>* stats = nullptr, const torch::Tensor& structure = {});
  // Training loss: mean nats over all targets, with gradient, through the fused head (model/fused_ce.h),
  // plus every module's auxiliary losses with their weights. `parts`, when given, receives the main
  // loss and the auxiliary ones separately (for logging) and the modules' statistics.
  struct Parts {
    torch::Tensor main;
    std::vector<AuxLoss> aux;
    std::map<std::string, double> stats;
  };
  torch::Tensor loss(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids,
                     int64_t step = 0, Parts* parts = nullptr, const torch::Tensor& structure = {});
  // Whether the model reads structure codes (the structure module): the loader must feed them.
  bool reads_structure() const { return static_cast<bool>(input); }

  // The role of every parameter (model/module.h ParamRole), by named_parameters key: the default rule
  // (wte Embedding, lm_head Head, 2-D inside blocks, the model's or a module's own, Matrix, the rest
  // Scalar), overridden by what components declare (Engram's tables, objectives' "head").
  std::map<std::string, ParamRole> param_roles() const;
  // The parameters of one role, in named_parameters order.
  std::vector<std::string> params_of(ParamRole role) const;
  // Matrix parameters (Muon).
  std::vector<std::string> matrix_params() const { return params_of(ParamRole::Matrix); }
  // Output heads, trained at the head's rate: lm_head and every objective's own readout, the parameter
  // an objective registers as "head" (TOP's unembedding, NCP's concept predictor).
  std::vector<std::string> head_params() const { return params_of(ParamRole::Head); }
  int64_t n_params() const;
  // Parameters that take part in matmuls (all but the embedding), for FLOPs per token.
  int64_t n_matmul_params() const;
  // Model FLOPs per token of a training step (forward + backward), summed over what the model
  // runs: every block's components, the objectives and the head.
  double flops_per_token(int64_t T) const;
  // Calls every component's after_step (model/module.h StepCtx), in registration order, gradients off.
  void after_step(StepCtx& sctx);

  // Runs the model at another context: new RoPE tables, scaled by YaRN when `yarn` is given (its
  // original_context is this model's trained context), else plain RoPE extrapolated. Inference only.
  void set_context(int64_t T, const YarnConfig* yarn = nullptr);

  // Splits every component across the tensor-parallel group `g` (model/tp.h, ComponentImpl::
  // shard_tensor_parallel): attention by heads, the MLP by hidden units, Mamba-3 by SSM heads; the
  // rest (embedding, head, routers, gates, tables, stream mixing) stays replicated. Called once, on a
  // model built whole from the same seed on every rank, so the shards together are the single-process
  // model. Fails, naming the layer and component, where a component cannot split (heads that do not
  // divide by the group's size).
  void shard_tensor_parallel(const TpGroupPtr& g);
  // Under tensor parallelism: every replicated parameter and buffer (all but tp_splits) compared
  // across the group by a hash of its bits, so that replicas that drifted apart stop the run; fails
  // naming the first that differs, else returns how many were compared. Collective.
  int64_t check_tp_replicas();
  TpGroupPtr tp;         // null: not split
  TpSplits tp_splits;    // split parameter (named_parameters key) -> how it is split
  // The data-parallel group (model/dp.h): the ranks holding replicas of this model (of this rank's
  // shards under TP). Set by the trainer; null = one replica. Training forwards (loss()) and
  // after_step hand it to the modules, which reduce their state's statistics over it.
  TpGroupPtr dp;

  // Context parallelism (inference): from now on every forward takes this rank's share of each row
  // under the zigzag layout (model/ring.h; T / size tokens at zigzag_positions(T, rank, size)) and
  // attention runs through the ring. Fails, naming the layer or module, on a model with anything
  // but attention and the relu2 MLP in its blocks (other mixers and modules look across positions
  // in ways the ring does not carry), and on a tensor-parallel model.
  void use_ring(const RingGroupPtr& g);
  RingGroupPtr ring;                         // null: each forward holds whole rows

  // The inference lane's own pass over the blocks (model/adept.h: token-level early exit), in place of
  // running every token through every block: (B, T, C) embeddings -> final residual. Null: the plain
  // pass. Never set in training.
  struct LayerRunner {
    virtual ~LayerRunner() = default;
    virtual torch::Tensor run(GPTImpl& model, torch::Tensor x, Ctx& ctx) = 0;
  };
  std::shared_ptr<LayerRunner> layer_runner;

  ModelConfig cfg;
  ModelPlan plan;
  double attn_logit_scale = 1.0;  // YaRN's temperature once set_context() applied it
  int64_t trained_context = 0;    // the context the model was built for
  int64_t step = 0;               // the optimizer step it was trained to (schedules such as DSA's warm-up)
  torch::nn::Embedding wte{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<Objective> objectives;
  Streams streams;
  Input input;  // null: the token embedding alone
  torch::nn::Linear lm_head{nullptr};
  torch::Tensor rope_cos, rope_sin;  // buffers (context, D/2)
};
TORCH_MODULE(GPT);

// Rotary tables for positions [0, T): cos, sin of shape (T, D/2), half-split layout.
std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t T, int64_t head_dim, double base);
// Rotates x: (B, T, H, D) by the tables (T, D/2), half-split pairs (x_i, x_{i+D/2}).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// RMSNorm over the last dim, no learned scale.
torch::Tensor rms_norm(const torch::Tensor& x);

// While alive, the global CPU generator draws from `seed`; its state is restored after. A module
// builds its parameters (or whole blocks) inside one, so adding it leaves every other parameter's
// initialization, the baseline's, unchanged: paired comparisons start from the same backbone.
class PrivateInit {
 public:
  explicit PrivateInit(uint64_t seed);
  ~PrivateInit();
  PrivateInit(const PrivateInit&) = delete;
  PrivateInit& operator=(const PrivateInit&) = delete;

 private:
  torch::Tensor saved_;
};

}  // namespace slm
