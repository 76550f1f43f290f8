// Token-level early exit in the style of ADEPT (Yoo, Malla et al., arXiv 2601.03700; docs/modules.md,
// the inference lane), Tier 3: never trained, never in a training ablation. Installed on a trained
// model (GPTImpl::layer_runner), it replaces the pass over the blocks in every forward (`eval bpb`,
// `generate`, Jacobi decoding), in prefill and decode alike:
//
//  - After each layer l (from min_layers on, the last excepted) each token still running decides
//    Continue or Exit. The policy is a documented simpler rule, not the paper's DPO-trained one:
//    exit when the layer barely moved the token's residual, ||x_l - x_{l-1}|| / ||x_{l-1}|| <
//    threshold (the hidden state has saturated; a rule with no parameters and no training).
//  - A token that exited keeps its exit hidden state as its final one (the final norm and the head
//    read it), and in every skipped layer its keys and values are computed from that exit state
//    (the paper's KV backfill), so later tokens attend to it at every layer. It costs the skipped
//    layers' q/k/v projections only (q unused), not their attention output or MLP.
//  - threshold 0 never exits: every block runs as in the plain pass, bit for bit (tested).
//
// Early exit is lossy: val_bpb of the exiting model is reported beside its compute (mean full layers
// per token) and speed (bench/bench_adept.cpp prints the curve over the threshold). It runs models
// whose blocks are attention + MLP (the baseline's), without tensor or context parallelism.
//
// Shapes: B rows, T tokens, C model dim.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>

#include "model/gpt.h"

namespace slm {

struct AdeptOptions {
  double threshold = 0;    // exit when a layer's relative update of the token is below it; 0 = never
  int64_t min_layers = 1;  // layers every token runs before it may exit
};

struct AdeptRunner : GPTImpl::LayerRunner {
  explicit AdeptRunner(const AdeptOptions& o) : opt(o) {}
  // x: (B, T, C) embeddings -> (B, T, C) the final residual, each token's from the layer it left at.
  torch::Tensor run(GPTImpl& model, torch::Tensor x, Ctx& ctx) override;
  AdeptOptions opt;
  // Over every call since installed: tokens run and the full layers they ran (an exited token's
  // K/V-only layers not counted).
  int64_t tokens = 0, layers = 0;
  double layers_per_token() const { return tokens > 0 ? static_cast<double>(layers) / static_cast<double>(tokens) : 0; }
};

// Installs early exit on `model` and returns the runner (its counters); fails in one line, naming the
// layer, on a model it cannot run (a block other than attention + the relu2 MLP, a wrapper or branch,
// residual streams, tensor or ring parallelism).
std::shared_ptr<AdeptRunner> use_adept(GPTImpl& model, const AdeptOptions& o);

}  // namespace slm
