// Engram (docs/modules.md section 2; docs/decisions.md): the paper's hashed n-gram memory as an extra
// residual branch before the mixer of selected attention layers, x + engram(x).
//
// Per token t of one layer:
//   1. compress   c_t = id_t mod Vc, Vc the largest prime <= 0.77 V (the paper's 23% vocabulary
//                 reduction; without the tokenizer's strings the map is a fixed arithmetic one).
//                 Vc itself is the reserved pad id.
//   2. n-grams    x^(k)_t = c_{t-k}, or the pad where t-k lies before the document (or sequence)
//                 start, so no n-gram crosses a boundary and "document start, x_t" is its own key.
//   3. hash       mix_t = XOR_{k<n} x^(k)_t * m_k with odd 64-bit multipliers m_k bounded by
//                 INT64_MAX / (Vc + 1) (no overflow), drawn by splitmix64 from seed 10007 x layer;
//                 row = mix_t mod P_{n,j} for head j of order n, P_{n,j} distinct primes >= table_size
//                 (distinct across orders, heads and layers).
//   4. lookup     e_t = concat over (order, head) of table rows of `dim` each: (E) = O K dim.
//   5. gate       g_t = sigmoid(<rms(W_K e_t), rms(h_t)> / sqrt(C)), h_t the residual (the paper's
//                 equation; the demo's signed square root has an unbounded slope at 0).
//   6. output     v~ = g v, v = W_V e;  Y = v~ + SiLU(DWConv_causal(rms(v~))), the conv depthwise
//                 with kernel `conv` and dilation max order (the demo's), reset at document starts.
// W_V and the conv are zero-initialized, so the model starts as the baseline exactly and both
// paths grow from zero; g = 0 gives Y = 0 (no biases anywhere).
//
// Generation (ctx.caches set) keeps the last max-order - 1 compressed ids and the conv's last
// (kernel - 1) x dilation inputs per layer, so running a sequence in pieces equals running it whole.
//
// Shapes: B batch rows, T tokens, C model dim, O orders, K heads per order, E = O K dim, M = max
// order - 1, R = (kernel - 1) x dilation. Under mHC streams x may be (B, T, n, C): the memory value
// is shared by the streams, the gate is per stream.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

// Everything one layer's Engram branch is built from. The catalog parameters have no defaults here:
// the row (catalog/modules/engram.cpp) holds the only ones, and from() reads them.
struct EngramOptions {
  int64_t d_model = 256;               // C
  int64_t vocab = 8192;                // V of the token ids
  std::vector<int64_t> orders;         // n-gram orders
  int64_t heads = 0;                   // K hash heads per order
  int64_t dim = 0;                     // per-head embedding dim; 0 = auto, max(1, C / (K O))
  std::vector<int64_t> primes;         // O x K table sizes, order-major; empty = the first O K primes >= table_size
  int64_t table_size = 0;              // base table size (used when `primes` is empty)
  int64_t conv = 0;                    // short conv kernel; 0 = off (Y = v~)
  int64_t layer = 0;                   // the layer index: seeds the hash multipliers
  bool doc_mask = true;                // reset at document boundaries (follows ModelConfig.doc_mask)

  int64_t max_order() const;
  int64_t head_dim() const;            // dim, or the auto value
  // Every layer's options but `layer` and `primes` (apply_engram sets those) from the resolved row.
  static EngramOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// Compressed vocabulary size Vc for V token ids: the largest prime <= max(2, 0.77 V).
int64_t engram_compressed_vocab(int64_t vocab);
// The first `count` primes >= base, increasing.
std::vector<int64_t> engram_primes(int64_t base, int64_t count);
// The hash multipliers m_0..m_{n-1} of a layer: odd, in [1, INT64_MAX / (Vc + 1)].
std::vector<int64_t> engram_multipliers(int64_t layer, int64_t n, int64_t compressed_vocab);

// The generation state of one branch. Undefined = the start of the sequence.
struct EngramState {
  torch::Tensor ids;   // (B, M) compressed ids of the last M tokens, pad before the start
  torch::Tensor conv;  // (B, R, [n,] C) the conv's last R inputs, zeros before the start
  bool defined() const { return ids.defined(); }
};

struct EngramImpl : BranchImpl {
  explicit EngramImpl(const EngramOptions& o);
  // x: (B, T, [n,] C) -> (B, T, [n,] C); token ids from ctx.idx, boundaries from ctx.doc_ids, and the
  // carried state from ctx.cache in generation.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // The same with explicit inputs: idx (B, T) ids, doc_ids (B, T) or undefined; with `st` the state
  // before the first token is read (undefined = fresh) and the state after the last is left in it.
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& idx, const torch::Tensor& doc_ids,
                    EngramState* st = nullptr);

  // ---- the pieces, exposed for tests
  // idx (B, T) -> compressed ids (B, T) in [0, Vc).
  torch::Tensor compress(const torch::Tensor& idx) const;
  // Compressed ids (B, T), segment ids (B, T) or undefined, previous ids (B, M) ->
  // rows (B, T, O K) into `table`: head h of order o at offsets[o K + h] + [0, primes[o K + h]).
  torch::Tensor hash(const torch::Tensor& ids, const torch::Tensor& seg, const torch::Tensor& prev) const;
  // x (B, T, [n,] C), e (B, T, E) -> g (B, T, [n,] 1) in (0, 1), fp32.
  torch::Tensor gate(const torch::Tensor& x, const torch::Tensor& e);
  // g (B, T, [n,] 1), v (B, T, C), seg or undefined -> Y = g v + SiLU(conv(rms(g v))) (B, T, [n,] C),
  // fp32; with `st`, the conv continues from st->conv and leaves its last inputs there.
  torch::Tensor output(const torch::Tensor& g, const torch::Tensor& v, const torch::Tensor& seg,
                       EngramState* st = nullptr);

  // W_K and W_V (2 E C), the depthwise conv and the gate's dot product, x 6 for forward + backward;
  // the hash and the table gathers are not matmuls.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  // The n-gram tables are looked up, not multiplied: Muon's orthogonalization means nothing for them.
  std::map<std::string, ParamRole> param_roles() const override { return {{"ngram_table", ParamRole::Embedding}}; }

  EngramOptions opt;
  int64_t vc;                          // compressed vocabulary; vc itself is the pad id
  int64_t dilation;                    // of the conv: the max order
  std::vector<int64_t> primes;         // O K table sizes, order-major
  std::vector<int64_t> offsets;        // O K first rows in `table`
  std::vector<int64_t> mult;           // max-order hash multipliers of this layer
  torch::Tensor ngram_table;           // (sum primes, dim) every (order, head) table, stacked
  torch::nn::Linear w_k{nullptr};      // E -> C, the gate's key
  torch::nn::Linear w_v{nullptr};      // E -> C, the value; zero-initialized
  torch::Tensor conv_w;                // (kernel, C) tap j reads the input j x dilation tokens back; zero-initialized
};
TORCH_MODULE(Engram);

// The model side of the catalog row: each layer in `layers` gets an Engram branch and "engram" in
// its module list. Refuses a layer that is not an attention layer of the plan with the catalog's
// message (the init guard's second line of defense).
void apply_engram(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
