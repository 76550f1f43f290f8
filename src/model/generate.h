// Text generation from a trained model: greedy or sampled (temperature, top-k), seeded, with a
// per-layer cache (model/module.h) or by re-running the whole sequence each token. The two agree
// exactly under greedy decoding; tests check it for every mixer in the catalog.
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
};

// Continues `prompt` (token ids, BOS first if the model was trained so) and returns only the new tokens.
std::vector<int32_t> generate(GPTImpl& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt);

}  // namespace slm
