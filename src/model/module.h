// How catalog modules plug into the model. A model is a plan of layers (model/gpt.h); each layer is
// a block of a token mixer (attention, DSA, Mamba-3) and a feed-forward (MLP, MoE) on a pre-norm
// residual, optionally with extra branches (Engram) and a wrapper that decides how the block meets
// the residual (GateSkip, MoD, FlexiDepth, mHC). Objectives (MTP, NCP, TOP) add auxiliary losses on
// the final hidden state. A module is one file under src/model/ that implements some of these
// interfaces and one `apply` function that edits the ModelPlan; src/model/registry.cpp lists the
// applies by catalog name.
//
// Shapes: B batch rows, T tokens, C model dim.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/dp.h"
#include "model/tp.h"

namespace slm {

struct ModelConfig;
struct GPTImpl;
struct YarnConfig;

// A loss a module adds to training: total = main + sum(weight x value). Never part of val_bpb.
struct AuxLoss {
  std::string name;
  torch::Tensor value;  // scalar with gradient
  double weight = 1.0;
};

// Per-layer state a component keeps between calls in incremental generation (a KV cache, an SSM
// state, the last tokens of an n-gram). Each component defines its own subclass.
// Speculative decoding (Jacobi, model/generate.h) runs draft tokens through the caches and then
// keeps only the accepted ones: a cache that holds one entry per position says how many (length)
// and drops the rest (truncate); any cache can be copied (clone) so that the state before the
// drafts can be restored and the accepted tokens run again.
struct LayerCache {
  virtual ~LayerCache() = default;
  // An independent copy: later calls on either leave the other unchanged. Null: cannot be copied.
  virtual std::shared_ptr<LayerCache> clone() const { return nullptr; }
  // Positions held, one entry each; -1 for a running state (an SSM's, an n-gram's last tokens).
  virtual int64_t length() const { return -1; }
  // Keeps the first n positions (only where length() >= n).
  virtual void truncate(int64_t /*n*/) {}
};
using Caches = std::vector<std::map<std::string, std::shared_ptr<LayerCache>>>;  // [layer][component]

struct RingGroup;  // model/ring.h

// One forward pass: what modules may read, and what they report back.
struct Ctx {
  torch::Tensor idx;       // (B, T) input ids
  torch::Tensor targets;   // (B, T) next-token ids (undefined in generation)
  torch::Tensor doc_ids;   // (B, T) document index within the row, or undefined
  torch::Tensor structure; // (B, T) int64 structure codes of the inputs (data/loader.h structure_code), or
                           // undefined: no parse (generation; every position reads as unparsed)
  torch::Tensor allowed;   // (B, 1, T, T) bool attention mask, or undefined (plain causal)
  torch::Tensor cos, sin;  // RoPE tables (context, D/2)
  double attn_logit_scale = 1.0;  // a factor on attention logits (YaRN's temperature; 1 in training)
  int64_t step = 0;        // optimizer step, for warm-ups and schedules
  bool training = false;
  // Incremental generation: x holds the tokens at positions [pos, pos + T) of one sequence, and
  // `caches` (when set) the state of everything before pos; cos/sin are already shifted to pos.
  // A component that looks across positions must then read and extend its cache, so that running
  // a sequence in pieces equals running it whole (tests check greedy generation both ways).
  int64_t pos = 0;
  Caches* caches = nullptr;
  int64_t layer = 0;  // the block being run (set by the model)
  // The data-parallel group (model/dp.h; null: one replica). A training forward that updates state
  // from batch statistics reduces them over it first.
  TpGroupPtr dp;
  // (T) int64 absolute positions of x's tokens when a wrapper ran the block on a gathered subset
  // (MoD: cos/sin are then gathered to match); undefined = consecutive from pos. A component with
  // position tables of its own (DSA's indexer RoPE) reads them here.
  torch::Tensor positions;
  // Generation over a token tree (speculative decoding, model/eagle.h): (T, T) bool, new token i
  // sees new token j where tree[i][j] (its ancestors and itself) and every cached position; token
  // i sits at position pos + its depth (GPTImpl::hidden fills positions, cos/sin and allowed).
  // Undefined: the new tokens are a chain, as always.
  torch::Tensor tree;
  // Ring attention (model/ring.h): x holds this rank's share of each row, at `positions`; attention
  // runs over the whole row through the ring. Null: the whole row is here.
  const RingGroup* ring = nullptr;
  // Tensors a module carries from layer to layer within one forward (FlexiDepth's sum of gates).
  std::map<std::string, torch::Tensor> carry;
  // This layer's cache slot for a component, created on first use.
  template <typename T>
  T& cache(const std::string& component) {
    auto& slot = (*caches)[layer][component];
    if (!slot) slot = std::make_shared<T>();
    return static_cast<T&>(*slot);
  }
  std::vector<AuxLoss> aux;
  std::map<std::string, double> stats;  // logged with each eval: expert load, codebook use, ...
};

// Components are abstract, so they are held by shared_ptr (TORCH_MODULE holders need a concrete
// type); a module file builds its own with std::make_shared<XxxImpl>(...).

// What a component may read and change after an optimizer step, outside the forward pass (the
// trainer calls GPTImpl::after_step once per step, gradients off). Work that belongs to the step and
// not to a batch lives here: continual backprop's unit replacement, MoE's bias balancing.
struct StepCtx {
  int64_t step = 0;  // optimizer steps taken, this one included (1 after the first)
  TpGroupPtr dp;     // the data-parallel group (model/dp.h; null: one replica)
  // The optimizer's live state tensors of parameter p, each shaped like p, by name: "exp_avg" and
  // "exp_avg_sq" (AdamW) or "momentum" (Muon); empty when p is not optimized. A component that
  // re-initializes part of p resets the same part here, so stale history does not push it.
  std::function<std::map<std::string, torch::Tensor>(const torch::Tensor& p)> optim_state;
  std::map<std::string, double> stats;  // logged with each eval, beside Ctx::stats
};

// What a parameter is to the optimizer (train/param_groups.h gives each role its group and rate).
// The model assigns the default: the token embedding Embedding, lm_head Head, 2-D matrices inside
// blocks Matrix, everything else Scalar; a component declares a role where the default is wrong.
enum class ParamRole {
  Matrix,     // multiplies activations: Muon (or AdamW at lr_adamw)
  Embedding,  // rows looked up, not multiplied: AdamW at the embedding rate
  Head,       // an output readout: AdamW at the head rate
  Scalar,     // norms, gains, biases and other vectors: AdamW at the scalar rate
};

// Every model component reports what it costs, so MFU counts what actually ran.
struct ComponentImpl : torch::nn::Module {
  // Roles of this component's own parameters (names as it registers them, "ngram_table") where the
  // model's default rule (ParamRole) is wrong. Default: none.
  virtual std::map<std::string, ParamRole> param_roles() const { return {}; }
  // Forward + backward FLOPs per token at sequence length T. Default: 6 x its matrix parameters.
  virtual double flops_per_token(int64_t T) const;
  // One line for the layer plan printed at init and stored in config.json.
  virtual std::string describe() const = 0;
  // Runs after every optimizer step (StepCtx). State it keeps across steps belongs in buffers
  // (register_buffer): checkpoints carry every buffer, so a resumed run continues it. Default: nothing.
  virtual void after_step(StepCtx&) {}
  // The model's context changed to T (evaluation at a longer context, plain RoPE or YaRN when
  // `yarn` is given, its original_context resolved): tables sized by the context follow. Default:
  // nothing.
  virtual void set_context(int64_t T, const YarnConfig* yarn) {}
  // Tensor parallelism (model/tp.h): splits this component's own weights across the group `g`,
  // keeping this rank's part, and adds each split parameter (named as registered here, "in_proj.weight")
  // to `splits`. Returns "" or why it cannot run at this tp (the model refuses, naming the layer).
  // Nested components (MTP's blocks) are split by their own override. Default: the component stays
  // whole on every rank (replicated): it reads the replicated residual and writes to it, so every
  // rank computes the same values from the same inputs and gets the same gradients, with no
  // communication (routers, gates, tables, stream mixing).
  virtual std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) { return ""; }
};

// A token mixer: (B, T, C) -> (B, T, C), causal, masked per document.
struct MixerImpl : ComponentImpl {
  virtual torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) = 0;
};
using Mixer = std::shared_ptr<MixerImpl>;

// A feed-forward: (B, T, C) -> (B, T, C), per token.
struct FfnImpl : ComponentImpl {
  virtual torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) = 0;
};
using Ffn = std::shared_ptr<FfnImpl>;

// An extra branch added to the residual before the mixer: x + branch(x).
struct BranchImpl : ComponentImpl {
  virtual torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) = 0;
};
using Branch = std::shared_ptr<BranchImpl>;

struct BlockImpl;
// How a block meets the residual. The default (no wrapper) is
//   h = x + mixer(norm(x)); out = h + ffn(norm(h)).
// A wrapper calls block.mixer_delta / block.ffn_delta itself and combines them its own way.
struct BlockWrapImpl : ComponentImpl {
  virtual torch::Tensor forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) = 0;
};
using BlockWrap = std::shared_ptr<BlockWrapImpl>;

// An auxiliary objective on the final hidden state h: (B, T, C), before the last norm. Its own output
// head, if it has one, is the parameter it registers as "head": it trains at lm_head's rate.
struct ObjectiveImpl : ComponentImpl {
  std::map<std::string, ParamRole> param_roles() const override { return {{"head", ParamRole::Head}}; }
  virtual void add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) = 0;
};
using Objective = std::shared_ptr<ObjectiveImpl>;

// An input embedding added to the token embedding before the first norm (the structure module): the
// token embeddings (B, T, C) -> (B, T, C), per position, from what the batch carries in ctx.
struct InputImpl : ComponentImpl {
  virtual torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) = 0;
};
using Input = std::shared_ptr<InputImpl>;

// Residual streams (mHC): expanded once after the embedding, collapsed once before the head.
// While expanded the residual is (B, T, n, C); every block is wrapped by `wrap()`.
struct StreamsImpl : ComponentImpl {
  virtual torch::Tensor expand(const torch::Tensor& x) = 0;    // (B, T, C) -> (B, T, n, C)
  virtual torch::Tensor collapse(const torch::Tensor& s) = 0;  // (B, T, n, C) -> (B, T, C)
};
using Streams = std::shared_ptr<StreamsImpl>;

// What each layer is built from. Builders run in GPT's constructor, after every module's apply.
struct LayerPlan {
  char kind = 'A';                                    // 'A' attention, 'M' Mamba-3
  std::function<Mixer()> mixer;                       // default: causal self-attention
  std::function<Ffn()> ffn;                           // default: ReLU^2 MLP
  std::vector<std::function<Branch()>> branches;
  std::function<BlockWrap()> wrap;                    // default: none (plain pre-norm residual)
  std::vector<std::string> modules;                   // names of the modules sitting on this layer
};

struct ModelPlan {
  std::vector<LayerPlan> layers;
  std::vector<std::function<Objective()>> objectives;
  std::function<Streams()> streams;
  std::function<Input()> input;    // default: the token embedding alone
  std::vector<std::string> notes;  // model-wide effects, for the layer plan ("yarn: scale 2 at eval")
};

// A module's model side: edits the plan for the given (already resolved and checked) arguments.
using ApplyFn = void (*)(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

struct ModelModule {
  const char* name;  // the catalog name
  ApplyFn apply;
};
// The registry (model/registry.cpp); nullptr for names without a model side (data transforms).
const ModelModule* find_model_module(const std::string& name);
const std::vector<ModelModule>& model_modules();

}  // namespace slm
