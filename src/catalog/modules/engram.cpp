// The catalog row of Engram (docs/modules.md section 2; model side in model/engram.{h,cpp}): its
// parameters and THE INIT GUARD. Engram goes on attention layers only (docs/decisions.md): the article's
// Phase-1 runs put it on Mamba layers and two experiment groups were wasted before anyone noticed,
// so a plan that does so is refused before a step runs, with the valid layers for its pattern.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

// "layer 5 is" / "layers 5,8 are"
std::string layers_are(const std::vector<int64_t>& v) {
  return (v.size() == 1 ? "layer " : "layers ") + value_text(v) + (v.size() == 1 ? " is" : " are");
}

std::string kind_name(char k) {
  if (k == 'M') return "Mamba (M)";
  return std::string("kind '") + k + "'";
}

// Elements listed more than once, in order of their second appearance.
std::vector<int64_t> repeated(const std::vector<int64_t>& v) {
  std::set<int64_t> seen, rep;
  std::vector<int64_t> out;
  for (int64_t x : v)
    if (!seen.insert(x).second && rep.insert(x).second) out.push_back(x);
  return out;
}

std::vector<std::string> check_engram(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const auto& layers = a.list("layers");
  const auto& orders = a.list("orders");
  check_layers(a, m, nullptr, e);
  if (orders.empty()) e.push_back("orders is empty; use the paper's orders=2,3");
  if (auto r = repeated(orders); !r.empty())
    e.push_back("orders lists " + value_text(r) + " more than once; list each n-gram order once, e.g. orders=2,3");
  if (m.depth <= 0) return e;  // geometry unknown: the rules below need it

  std::map<char, std::vector<int64_t>> wrong;  // non-attention layers by kind
  for (int64_t l : layers)
    if (l < m.depth && m.kind(l) != 'A') wrong[m.kind(l)].push_back(l);
  if (!wrong.empty()) {
    std::string what;
    for (auto& [k, ls] : wrong) what += (what.empty() ? "" : ", ") + layers_are(ls) + " " + kind_name(k);
    const auto attn = m.layers_of('A');
    e.push_back("engram goes on attention layers only; " + what + " under layer_pattern " + m.layer_pattern +
                (attn.empty() ? "; the pattern has no attention layer, so drop engram or add A to the pattern"
                              : "; attention layers are " + value_text(attn) + "; pick engram.layers from them"));
  }
  return e;
}

}  // namespace

const ModuleSpec& spec_engram() {
  static const ModuleSpec s{
      "engram",
      Tier::Training,
      "memory",
      "Engram conditional memory: hashed 2/3-gram embeddings (K hash heads per order, distinct prime tables) "
      "gated by the hidden state, causal short conv, reset at document boundaries; attention layers only",
      "per layer: sum of tables x dim sparse params (gathers, no FLOPs) + 2 E C matrix params (E = orders x heads "
      "x dim) + conv x C; ~6 (2 E + conv + 1) C flops/token",
      {
          {"layers", ParamType::IntList, "0", 0, 1023,
           "layers that get memory; attention (A) layers only (the paper: an early and a middle layer)"},
          {"orders", ParamType::IntList, "2,3", 2, 5, "n-gram orders (the paper: 2,3)"},
          {"heads", ParamType::Int, "4", 1, 16, "hash heads K per order, each its own prime-sized table (the paper: 8)"},
          {"table_size", ParamType::Int, "4099", 16, 1 << 24,
           "base table rows; every (layer, order, head) gets a distinct prime >= it (size ~1-4 x V per order)"},
          {"dim", ParamType::Int, "0", 0, 1024, "embedding dim per head; 0 = d_model / (heads x orders), at least 1"},
          {"conv", ParamType::Int, "4", 0, 16, "causal depthwise conv kernel (dilation = max order); 0 = off"},
      },
      check_engram,
      nullptr,
      "layers=0,2,table_size=257",
      nullptr,
      // Tensor parallel: replicated on every rank. The tables are looked up (a gather of rows, no matmul
      // to split), the gate and conv read the replicated residual: every rank computes the same branch.
      // Tested at tp 2, the article's (Dist/TensorParallelModule).
      2,
  };
  return s;
}

}  // namespace slm::catalog
