// The catalog row of MoD, Mixture-of-Depths (docs/modules.md section 7; model side in
// model/mod.{h,cpp}): a scalar router per token on every other block; in training the top
// capacity x T tokens of each row go through the block, the rest skip it. Evaluation and generation
// route by a causal criterion (the router's sigmoid, or a predictor), never the top-k.
#include <set>
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

std::vector<int64_t> mod_layers(const ModuleArgs& a, const ModelView& m) {
  std::vector<int64_t> out;
  const bool skip_mamba = a.flag("skip_mamba");
  if (!a.list("layers").empty()) {  // explicit: as listed (the check refuses what cannot be routed)
    std::set<int64_t> s(a.list("layers").begin(), a.list("layers").end());
    for (int64_t l : s)
      if (l < m.depth && !(skip_mamba && m.kind(l) == 'M')) out.push_back(l);
    return out;
  }
  // Every `every`-th block, counting from 1, so the first block always runs in full (the paper
  // routes every other block: layers 1, 3, 5, ... at every = 2).
  const int64_t every = a.i64("every"), first = a.i64("skip_first");
  for (int64_t l = first; l < m.depth; ++l)
    if (l % every == every - 1 && !(skip_mamba && m.kind(l) == 'M')) out.push_back(l);
  return out;
}

namespace {

std::vector<std::string> check_mod(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const double cap = a.f64("capacity");
  if (!(cap > 0.0))
    e.push_back("capacity " + value_text(cap) + " must be in (0, 1]; the paper's best is 0.125");
  else if (m.context > 0 && static_cast<int64_t>(cap * static_cast<double>(m.context) + 1e-9) < 1)
    e.push_back("capacity " + value_text(cap) + " routes floor(" + value_text(cap) + " x " +
                std::to_string(m.context) + ") = 0 tokens per sequence; raise it to at least " +
                value_text(1.0 / static_cast<double>(m.context)));
  check_layers(a, m, "every other layer", e);
  std::vector<int64_t> mamba;
  for (int64_t l : a.list("layers"))
    if (!(m.depth > 0 && l >= m.depth) && a.flag("skip_mamba") && m.kind(l) == 'M') mamba.push_back(l);
  if (!mamba.empty())
    e.push_back("layers " + value_text(mamba) + " are Mamba layers and skip_mamba is true; drop them from "
                "mod.layers, or set skip_mamba=false to route them");
  if (m.depth > 0 && a.i64("skip_first") >= m.depth)
    e.push_back("skip_first " + std::to_string(a.i64("skip_first")) + " skips every layer of depth " +
                std::to_string(m.depth) + "; lower it below " + std::to_string(m.depth));
  if (e.empty() && m.depth > 0 && mod_layers(a, m).empty())
    e.push_back("no layer is routed (depth " + std::to_string(m.depth) + ", pattern " + m.layer_pattern +
                ", every " + std::to_string(a.i64("every")) + ", skip_first " + std::to_string(a.i64("skip_first")) +
                "); lower every or skip_first, or list the layers");
  return e;
}

}  // namespace

const ModuleSpec& spec_mod() {
  static const ModuleSpec s{
      "mod",
      Tier::Training,
      "routing",
      "Mixture-of-Depths: a scalar router r = w.x per token on routed blocks; in training the top capacity x T "
      "tokens of each row run the block (attention among them only, causal by original position, per "
      "document) and get x + r f(x), the rest pass unchanged; an auxiliary BCE teaches sigmoid(r) the top-k, "
      "and evaluation/generation route iff sigmoid(r) > 0.5 (or a stop-gradient MLP predictor says so): causal",
      "per routed layer C router params (+ C h + h predictor); block FLOPs x capacity (attention ~ x capacity "
      "with chunked gathering); one gather and one scatter of the routed tokens",
      {
          {"capacity", ParamType::Float, "0.125", 0, 1, "fraction C of each row's tokens a routed block processes "
                                                         "in training, k = floor(C T) >= 1 (the paper: 0.125)"},
          {"every", ParamType::Int, "2", 1, 1024, "route layers l with l % every == every - 1 (2: every other "
                                                 "block, the paper's best); ignored when layers is given"},
          {"layers", ParamType::IntList, "", 0, 1023, "explicit routed layers; empty = every `every`-th layer"},
          {"skip_first", ParamType::Int, "0", 0, 1023, "never route layers below this one"},
          {"skip_mamba", ParamType::Bool, "true", 0, 0, "never route Mamba layers"},
          {"aux_loss", ParamType::Float, "0.01", 0, 10,
           "weight of the router BCE (target: in the row's top-k); the causal criterion sigmoid(r) > 0.5 learns "
           "from it (the paper's fix 1); 0 = off (then evaluate with predictor=true)"},
          {"predictor", ParamType::Bool, "false", 0, 0,
           "the paper's fix 2: a small MLP on stop-gradient inputs predicts top-k membership and decides routing "
           "in evaluation and generation instead of sigmoid(r)"},
          {"predictor_hidden", ParamType::Int, "64", 1, 1 << 14, "hidden units of the predictor"},
          {"predictor_loss", ParamType::Float, "1.0", 0, 100,
           "weight of the predictor's BCE (its input is detached: it trains the predictor only)"},
      },
      &check_mod,
      nullptr,
      // At depth 3, context 32: layer 1 routed, 8 of 32 tokens per row, both causal criteria trained
      // (the predictor decides in evaluation, so its path is the one the contract tests exercise).
      "capacity=0.25,predictor=true,predictor_hidden=16",
      &mod_layers,  // the layers it wraps: one wrapper per layer (catalog::check)
      2,  // tensor parallel: router and predictor replicated (same routing on every rank), blocks split
  };
  return s;
}

}  // namespace slm::catalog
