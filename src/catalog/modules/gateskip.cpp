// The catalog row of GateSkip (docs/modules.md section 8; model side in model/gateskip.{h,cpp}):
// residual-wise vector gates on the mixer and the feed-forward, with token skipping by gate budget.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_gateskip(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const double s0 = a.f64("skip_start"), s1 = a.f64("skip_final");
  if (s0 > s1)
    e.push_back("skip_start " + value_text(s0) + " exceeds skip_final " + value_text(s1) +
                "; the schedule ramps the skip ratio up, so set skip_start <= skip_final");
  // The article's GateSkip ran only at tensor parallelism <= 2 (the gates are per channel, and the
  // per-token skip decision needs every channel's gate: with wider TP shards it was not reproduced).
  if (m.tp > 2)
    e.push_back("tp " + std::to_string(m.tp) + " exceeds 2; gateskip was only validated at tp <= 2, so use a "
                "substrate with tp=1 or tp=2");
  check_layers(a, m, "every layer", e);
  return e;
}

}  // namespace

const ModuleSpec& spec_gateskip() {
  static const ModuleSpec s{
      "gateskip",
      Tier::Training,
      "depth",
      "GateSkip: a sigmoid vector gate (on the detached normed input, bias 5) on each residual branch, "
      "h + g * f(h), L2 sparsity on the gates; per branch the tokens of lowest mean gate skip it (output 0): "
      "in training a per-row budget ramping skip_start -> skip_final, at eval/decode a fixed threshold (EMA of "
      "training's eval_skip-quantile, causal). Skipping is emulated (every branch runs, outputs masked): no "
      "compute saved here",
      "per wrapped layer 2 (C^2 + C) gate params, ~4 (2 C^2) flops/token (no input gradient); no FLOPs saved "
      "(skipped branches run and are masked)",
      {
          {"layers", ParamType::IntList, "", 0, 1023, "layers to wrap; empty = every layer"},
          {"sparsity", ParamType::Float, "0.01", 0, 10, "weight of the L2 loss on the gate values (the paper: 0.01)"},
          {"skip_start", ParamType::Float, "0.005", 0, 1, "training skip ratio when the ramp starts (the paper: 0.5%)"},
          {"skip_final", ParamType::Float, "0.1", 0, 1, "training skip ratio after ramp_steps (the paper: 10%)"},
          {"warmup", ParamType::Int, "0", 0, 1e9, "steps with no skipping before the ramp starts"},
          {"ramp_steps", ParamType::Int, "5000", 0, 1e9, "steps of the linear ramp (the paper: 5000); 0 = skip_final at once"},
          {"eval_skip", ParamType::Float, "0.1", 0, 0.99,
           "skip budget at evaluation and generation, applied as a causal per-token threshold; 0 = skip nothing"},
          {"threshold_ema", ParamType::Float, "0.5", 0, 0.999,
           "decay of the eval threshold's running estimate over training batches: a memory of about "
           "1/(1 - decay) steps, kept short because the gates move as they train and a lagging threshold "
           "skips far more than eval_skip (0.99 made a 100-step run skip 97% at eval); 0 = the last batch's"},
      },
      &check_gateskip,
      nullptr,
      "layers=0,2,skip_final=0.2,ramp_steps=10",
      &listed_or_every_layer,  // the layers it wraps: one wrapper per layer (catalog::check)
      0,  // tensor parallel: its gates read the replicated residual; check_gateskip keeps the article's tp <= 2
  };
  return s;
}

}  // namespace slm::catalog
