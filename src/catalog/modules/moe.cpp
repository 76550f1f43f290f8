// The catalog row of MoE (docs/modules.md section 6, docs/decisions.md "MoE"; model side in
// model/moe.{h,cpp}): DeepSeekMoE shared + fine-grained routed experts, its parameters and
// constraints. The defaults are the seed's shape (2 shared + 16 routed, top-2) with the papers'
// coefficients: z-loss 1e-3 (ST-MoE; the seed's plans set 0.01 explicitly), Switch balance loss 0.01.
#include <algorithm>
#include <string>
#include <vector>

#include "catalog/modules.h"
#include "common/options.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_moe(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const int64_t k = a.i64("top_k"), n = a.i64("n_routed");
  if (k > n)
    e.push_back("top_k " + std::to_string(k) + " exceeds n_routed " + std::to_string(n) +
                "; each token picks top_k distinct routed experts, so lower top_k to at most " + std::to_string(n));
  const std::string& score = a.str("score");
  if (score != "softmax" && score != "sigmoid") {
    const std::string near = cli::nearest(score, {"softmax", "sigmoid"});
    e.push_back("score '" + score + "' is not softmax or sigmoid" + (near.empty() ? "" : "; did you mean '" + near + "'?"));
  }
  check_layers(a, m, "every layer", e);
  // Tensor parallelism splits every expert's hidden units (model/moe.h): they must divide by tp.
  const int64_t h = moe_expert_hidden(a.i64("expert_hidden"), m.d_model, a.i64("n_shared"), k);
  if (m.tp > 1 && m.d_model > 0 && h % m.tp != 0)
    e.push_back("expert hidden size " + std::to_string(h) + " does not divide by tp " + std::to_string(m.tp) +
                "; set expert_hidden to a multiple of " + std::to_string(m.tp) + " or use a tp that divides it");
  return e;
}

}  // namespace

int64_t moe_expert_hidden(int64_t expert_hidden, int64_t d_model, int64_t n_shared, int64_t top_k) {
  if (expert_hidden > 0) return expert_hidden;
  return std::max<int64_t>(1, 4 * d_model / (n_shared + top_k));
}

const ModuleSpec& spec_moe() {
  static const ModuleSpec s{
      "moe",
      Tier::Training,
      "routing",
      "DeepSeekMoE feed-forward: shared experts + fine-grained routed ReLU^2 experts, top-k softmax or sigmoid "
      "router, z-loss, Switch balance loss and/or DeepSeek-V3 bias balancing, optional capacity with token "
      "dropping in training; sort/gather dispatch",
      "per MoE layer: E C router + (n_shared + n_routed) 2 C h expert params (h = expert_hidden, auto 4 C / "
      "(n_shared + top_k): a token's active FFN params equal the dense MLP's); ~6 (E C + (n_shared + top_k) 2 C h) "
      "flops/token, active experts only",
      {
          {"layers", ParamType::IntList, "", 0, 1023, "layers whose FFN becomes MoE; empty = every layer"},
          {"n_shared", ParamType::Int, "2", 0, 64, "shared experts, always active (the seed: 2)"},
          {"n_routed", ParamType::Int, "16", 1, 1024, "routed experts E (the seed: 16)"},
          {"top_k", ParamType::Int, "2", 1, 64, "routed experts per token K (the seed: 2)"},
          {"expert_hidden", ParamType::Int, "0", 0, 1 << 16,
           "hidden size h of every expert; 0 = 4 d_model / (n_shared + top_k), at least 1"},
          {"score", ParamType::String, "softmax", 0, 0,
           "softmax (gates not renormalized) | sigmoid (DeepSeek-V3: gates renormalized to sum 1)"},
          {"route_scale", ParamType::Float, "1.0", 1e-3, 100, "factor on the gates (DeepSeek-V3: 2.5)"},
          {"z_loss", ParamType::Float, "0.001", 0, 1,
           "router z-loss weight (ST-MoE 1e-3; the seed's 0.01 is 10x the paper's); 0 = off"},
          {"aux_loss", ParamType::Float, "0.01", 0, 1, "Switch balance-loss weight alpha (1.0 at a uniform router); 0 = off"},
          {"bias_rate", ParamType::Float, "0", 0, 1,
           "auxiliary-loss-free balancing: bias step gamma per optimizer step (DeepSeek-V3: 0.001); 0 = off"},
          {"capacity_factor", ParamType::Float, "0", 0, 64,
           "per row and expert keep ceil(T K / E x factor) picks, earliest first, in training only; 0 = drop none"},
      },
      &check_moe,
      nullptr,
      // At d_model 32: 1 shared + 4 routed experts of 24, the sigmoid path with the bias on, and a
      // capacity that drops in training (32 tokens x 2 picks over 4 experts: 16 a row at factor 1).
      "n_shared=1,n_routed=4,top_k=2,expert_hidden=24,score=sigmoid,bias_rate=0.01,capacity_factor=1.0,layers=0,2",
      nullptr,
      // Tensor parallel: every expert splits inside itself as the dense MLP (its hidden units over the
      // ranks; no token exchange, equal work per rank whatever the router does); the router and the
      // bias stay whole on every rank, so routing and the balancing decisions are the same everywhere.
      // Up to 4 because that is what is tested against one process (Dist/TensorParallelModule, tp 2
      // and 4, the article's Phase 4); check_moe asks the hidden size to divide by tp.
      4,
  };
  return s;
}

}  // namespace slm::catalog
