// Text generation from a trained model: greedy or sampled (temperature, top-k), seeded, with a
// per-layer cache (model/module.h) or by re-running the whole sequence each token. The two agree
// exactly under greedy decoding; tests check it for every mixer in the catalog.
//
// Jacobi decoding (greedy only): a block of N draft tokens is refined in parallel, one forward over
// [last committed token, drafts] per iteration with the committed prefix in the cache; the
// predictions replace the drafts. Prediction 1 is always greedy's next token, and prediction i+1 is
// greedy's too whenever drafts 1..i equalled predictions 1..i, so each iteration commits that
// converged prefix (at least one token) and the rest of the predictions seed the next block. The
// output equals greedy decoding token for token; a block that reaches its fixed point commits all N.
// The rejected drafts leave the cache by truncation (attention, DSA: one entry per position) or by
// restoring a copy of it and running the accepted tokens again (Mamba-3, Engram states, MoD's
// routed keys), one extra forward, counted.
#pragma once
#include <cstdint>
#include <vector>

#include "model/gpt.h"

namespace slm {

struct GenerateOptions {
  int64_t max_tokens = 128;   // new tokens at most
  double temperature = 0.0;   // 0 = greedy
  int64_t top_k = 0;          // 0 = the whole vocabulary
  uint64_t seed = 0;          // sampling stream
  bool use_cache = true;      // false: recompute the whole sequence each token (the reference)
  std::vector<int32_t> stop;  // token ids that end generation (not emitted); e.g. EOS, BOS
  bool jacobi = false;        // Jacobi decoding (greedy only)
  int64_t block = 0;          // Jacobi: draft tokens refined together (>= 1; 1 is plain greedy; the CLI's
                              // default is the jacobi_decode catalog row's)
};

// What a generation cost: forward passes of the model (the prompt's prefill included), and for
// Jacobi the refinement iterations (one block forward each) and the re-runs that rolled back a state.
struct GenerateStats {
  int64_t tokens = 0;      // new tokens emitted
  int64_t forwards = 0;    // model forward passes in all
  int64_t iterations = 0;  // decoding steps: one per token plainly, one per block forward in Jacobi
  int64_t replays = 0;     // Jacobi: forwards that re-ran accepted tokens after restoring a state
};

// A token list as the (1, T) int64 row the model reads, on `dev`.
torch::Tensor ids_tensor(const std::vector<int32_t>& ids, torch::Device dev);
// Greedy's pick for each row of fp32 logits (T, V): the first maximum (plain, Jacobi and EAGLE-2
// decoding share it, so their outputs can be compared bitwise).
std::vector<int32_t> argmax_rows(const torch::Tensor& logits);

// Continues `prompt` (token ids, BOS first if the model was trained so) and returns only the new tokens.
// Fails (one line) on a bad option: Jacobi with temperature > 0, block < 1.
std::vector<int32_t> generate(GPTImpl& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              GenerateStats* stats = nullptr);

}  // namespace slm
