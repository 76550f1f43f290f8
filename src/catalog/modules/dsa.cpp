// The catalog row of DSA (DeepSeek Sparse Attention) and its constraints; the model side is
// model/dsa.{h,cpp}. Torch-free: the catalog, plans and `slmlab catalog` read it without LibTorch.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "common/options.h"

namespace slm::catalog {

const ModuleSpec& spec_dsa();

// Shared with the model (declared in model/dsa.h), so both resolve k and the window the same way.
int64_t dsa_topk(const ModuleArgs& a, int64_t context);
int64_t dsa_window(const ModuleArgs& a, int64_t context);

int64_t dsa_topk(const ModuleArgs& a, int64_t context) {
  if (a.i64("topk") > 0) return a.i64("topk");
  const auto by_ratio = static_cast<int64_t>(std::llround(a.f64("topk_ratio") * static_cast<double>(context)));
  return std::max(a.i64("topk_min"), by_ratio);
}

int64_t dsa_window(const ModuleArgs& a, int64_t context) {
  if (a.i64("window") >= 0) return a.i64("window");
  // Auto: the decisions' 128 at long context, but never more than half of k, so the indexer still
  // chooses half the keys at short context (cpu-tiny: k = 64, window 32).
  return std::min<int64_t>(128, dsa_topk(a, context) / 2);
}

namespace {

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s.empty() ? "none" : s;
}

std::vector<std::string> check_dsa(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const int64_t start = a.i64("start_layer");
  const auto attn = m.layers_of('A');
  if (start >= m.depth) {
    e.push_back("start_layer " + std::to_string(start) + " is outside the model's depth " + std::to_string(m.depth) +
                "; use 0.." + std::to_string(m.depth - 1));
  } else if (std::none_of(attn.begin(), attn.end(), [&](int64_t l) { return l >= start; })) {
    e.push_back("no attention layer at or after start_layer " + std::to_string(start) + " (attention layers: " +
                join(attn) + "); lower start_layer");
  }
  const int64_t di = a.i64("index_dim"), rope = a.i64("rope_dims");
  if (di % 2 != 0) e.push_back("index_dim " + std::to_string(di) + " must be even (RoPE rotates pairs); use " +
                               std::to_string(di + 1));
  if (rope % 2 != 0 || rope > di)
    e.push_back("rope_dims " + std::to_string(rope) + " must be even and at most index_dim " + std::to_string(di) +
                "; use " + std::to_string(std::min(di - di % 2, rope - rope % 2)));
  const int64_t k = dsa_topk(a, m.context), w = dsa_window(a, m.context);
  if (k < w)
    e.push_back("top-k must be at least the local window: k=" + std::to_string(k) + " < window=" + std::to_string(w) +
                "; lower window or raise topk");
  if (w >= m.context)
    e.push_back("window " + std::to_string(w) + " must be below the context " + std::to_string(m.context) +
                "; lower window");
  if (k >= m.context)
    e.push_back("k=" + std::to_string(k) + " keys per query at context " + std::to_string(m.context) +
                " keeps every key, so DSA would be dense attention; lower topk or topk_ratio (and topk_min)");
  const std::string& path = a.str("path");
  const std::vector<std::string> paths = {"auto", "sparse", "dense_masked"};
  if (std::find(paths.begin(), paths.end(), path) == paths.end()) {
    const std::string n = cli::nearest(path, paths);
    e.push_back("path '" + path + "' is not one of auto, sparse, dense_masked" +
                (n.empty() ? "" : "; did you mean '" + n + "'?"));
  }
  if (m.tp > 1 && m.n_head % m.tp != 0)
    e.push_back("n_head " + std::to_string(m.n_head) + " is not divisible by tp " + std::to_string(m.tp) +
                "; tensor parallelism splits attention by heads");
  // (The indexer is replicated under tensor parallelism, model/dsa.h: its heads need not divide.)
  return e;
}

}  // namespace

const ModuleSpec& spec_dsa() {
  static const ModuleSpec s = {
      "dsa",
      Tier::Training,
      "mixer",
      "DeepSeek sparse attention: a lightning indexer per layer picks the top-k keys per query (local window "
      "always kept); trained by a KL to the main attention on a detached input, after a dense warm-up",
      "indexer projections + T-key index scores (H^I x d^I per key) on top of attention; main attention over k "
      "keys instead of T after warm-up; the KL reuses the attention's probabilities",
      {
          {"start_layer", ParamType::Int, "0", 0, 1 << 20, "attention layers from this index on become DSA"},
          {"index_heads", ParamType::Int, "4", 1, 256, "indexer heads H^I"},
          {"index_dim", ParamType::Int, "32", 2, 1024, "indexer head dim d^I (even)"},
          {"rope_dims", ParamType::Int, "16", 0, 1024, "leading indexer dims under RoPE, half-split (even, <= index_dim)"},
          {"topk", ParamType::Int, "0", 0, 1 << 20, "keys per query, window included; 0 = topk_ratio x context"},
          {"topk_ratio", ParamType::Float, "0.125", 0, 1, "k as a fraction of the context when topk = 0"},
          {"topk_min", ParamType::Int, "64", 1, 1 << 20, "smallest k from the ratio"},
          {"window", ParamType::Int, "-1", -1, 1 << 20, "latest keys always kept; -1 = min(128, k/2), 0 = none"},
          {"warmup_steps", ParamType::Int, "50", 0, 1 << 30, "dense attention steps before top-k (indexer KL on)"},
          {"kl_weight", ParamType::Float, "1.0", 0, 1000, "weight of the indexer KL loss (dsa_kl.L<layer>)"},
          {"path", ParamType::String, "auto", 0, 0, "auto | sparse (gather) | dense_masked (reference)"},
      },
      &check_dsa,
      nullptr,
      // At context 32: k = 8 of up to 32 keys, the sparse stage from step 0 (evaluation and generation
      // included), and the gather path, which auto would not take at T = 32.
      "topk=8,window=2,path=sparse,warmup_steps=0",
      nullptr,
      // Tensor parallel: the main attention by heads; the indexer replicated (it reads the replicated
      // block input, so the top-k is the same on every rank), its KL target summed over the heads.
      4,
  };
  return s;
}

}  // namespace slm::catalog
