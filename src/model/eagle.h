// EAGLE-2 speculative decoding (Li et al., arXiv 2406.16858): a one-layer draft head guesses a tree
// of continuations, the target checks the whole tree in one forward, and greedy decoding's output
// comes out unchanged, several tokens per target forward where the draft guesses well.
//
// The draft head reads the target's feature f_t (its final hidden state, the LM head's input: the
// "second-to-top" layer when the head counts as the top) beside the embedding of token t+1 and
// predicts f_{t+1}; the target's own LM head turns a predicted feature into next-token logits.
// fc(cat(rms_norm(e_{t+1}), f_t)) -> one pre-norm block (attention + ReLU^2 MLP) -> f^_{t+1}.
// The target's embedding and head are read, never trained here (draft train freezes the target).
//
// One decoding cycle (the target's cache holds every committed token but the last, the root r):
//  1. draft: the head runs on the committed pairs it has not seen, then grows the tree. Depth 1 is
//     the top_k tokens after r; each further level expands the top_k nodes of the last level by
//     global confidence (the product of draft probabilities along the path, summed as log
//     probabilities), top_k children each. Every candidate ever scored is kept; the final tree is
//     the `total_tokens` best by global confidence (a parent always ranks before its child).
//  2. verify: one target forward over [r, tree nodes] with a tree attention mask (each node sees
//     the cache and its ancestors) at positions pos + depth.
//  3. accept: from r, follow the child whose token equals the target's greedy pick, as far as it
//     goes; the picks along the way are emitted, the last one (the bonus) is the next root. The
//     target's cache keeps r and the accepted path; the draft's drops the tree.
//
// Which mixers verify a tree: those whose cache holds one entry per position and that honour
// Ctx::tree, i.e. plain attention with the ReLU^2 MLP and nothing else in the block. Any other
// model (DSA: its top-k window counts keys by position in the row; Mamba-3 and Engram: a running
// state that one forward cannot fork per branch; MoD, MoE, GateSkip, FlexiDepth, mHC) verifies the
// draft's single best path instead (top_k = 1, a chain) and rolls back the rejected tail: caches
// with one entry per position are truncated, running states (Mamba-3) are restored from a copy
// taken before the chain and the accepted tokens are run again (a recompute, one forward, counted
// as a replay). Either way the output equals greedy decoding (tests/test_eagle.cpp).
//
// Shapes: T tokens, C model dim, V vocabulary.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "model/generate.h"
#include "model/gpt.h"

namespace slm {

// The draft head: fc over the embedding and the feature, then one block with the target's
// geometry (heads, head dim; its own RoPE positions from the target's tables).
struct DraftHeadImpl : torch::nn::Module {
  explicit DraftHeadImpl(const ModelConfig& target);
  // feat: (B, T, C) target features at positions t; next_ids: (B, T) tokens t+1 -> (B, T, C) the
  // predicted features at t+1. ctx carries positions, caches and a tree as for the target
  // (ctx.layer is set here); cos/sin must already be this call's rows.
  torch::Tensor forward(const torch::Tensor& feat, const torch::Tensor& next_ids, GPTImpl& target, Ctx& ctx);
  torch::nn::Linear fc{nullptr};
  Block block{nullptr};
};
TORCH_MODULE(DraftHead);

// EAGLE-2's tree (paper defaults: 60 draft tokens, depth 6, top-k 10 per expansion; the CLI takes
// them from the eagle2 catalog row).
struct EagleOptions {
  int64_t depth = 6;          // levels of draft tokens below the root (draft forwards per cycle)
  int64_t top_k = 10;         // children per expanded node, and nodes expanded per level
  int64_t total_tokens = 60;  // draft tokens the target verifies per cycle (the root not counted)
};

// What a speculative generation cost, beside GenerateStats (tokens; forwards = target forwards,
// prefill and replays included; iterations = verification cycles + the prefill step).
struct EagleStats {
  GenerateStats gen;
  int64_t draft_forwards = 0;  // draft head forwards
  int64_t drafted = 0;         // draft tokens sent to verification in all
  int64_t accepted = 0;        // draft tokens the target accepted in all
  bool tree = false;           // verified trees (true) or chains (false): see the top of this file
};

// True when every block of `m` verifies a token tree in one forward (plain attention + ReLU^2 MLP,
// no branches, wrappers or streams); false: EAGLE verifies chains (see above).
bool verifies_trees(const GPTImpl& m);

// Greedy decoding of `prompt` with EAGLE-2 drafting; returns the new tokens, equal to
// generate(target, prompt, opt) with opt greedy. Refuses (one line) temperature > 0, no cache,
// options out of range, a draft head built for another geometry.
std::vector<int32_t> generate_eagle2(GPTImpl& target, DraftHeadImpl& draft, const std::vector<int32_t>& prompt,
                                     const GenerateOptions& opt, const EagleOptions& eo, EagleStats* stats = nullptr);

// The draft head's training loss on packed rows (gradient into the head only): idx (B, T) tokens,
// doc_ids (B, T) or undefined, feat (B, T, C) the target's features of idx (computed without
// gradient). EAGLE's loss: smooth L1 between the predicted and the true feature at t+1, plus
// w_token x the cross entropy of the head's next-token distribution against the target's
// distribution at t+1 (both through the target's LM head). Pairs that cross a document boundary
// are left out. Returns the total and its two parts (means over the pairs).
struct DraftLoss {
  torch::Tensor total, feature, token;
};
DraftLoss draft_loss(DraftHeadImpl& draft, GPTImpl& target, const torch::Tensor& idx, const torch::Tensor& doc_ids,
                     const torch::Tensor& feat, double w_token);

}  // namespace slm
