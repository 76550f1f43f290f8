// Decoding methods compared on the same model, prompts and threads (the inference lane, issue 22
// §5): plain cached greedy decoding is the baseline; Jacobi decoding and EAGLE-2 are lossless, so
// every prompt's output must equal the baseline's (exactness below 100% makes a method INVALID,
// with the first diverging prompt). Per method: tokens/s, speedup over the baseline, tokens per
// target forward (decoding forwards, the prefill included; EAGLE's draft head not counted, reported
// apart). Methods interleave per prompt, so load from other processes falls on all of them alike.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/eagle.h"
#include "model/gpt.h"

namespace slm::eval {

// Held-out C++ function prompts (eval compile's "complete" prompts): validation files in a seeded
// order, the first function of each with a non-empty body, prompted with BOS and the last `budget`
// tokens of the file up to the body's opening brace. Fewer than n when the split runs out.
std::vector<std::vector<int32_t>> function_prompts(const data::DataSet& ds, int64_t n, int64_t budget, uint64_t seed);

struct DecodeMethod {
  std::string kind;       // greedy (the baseline), jacobi, eagle2
  int64_t block = 0;      // jacobi
  EagleOptions eagle;     // eagle2
  std::string name() const;  // "greedy (cached)", "jacobi block 8", "eagle2 6x10x60"
};

struct DecodeRow {
  DecodeMethod method;
  int64_t prompts = 0, exact = 0;  // prompts run; outputs equal to the baseline's
  int64_t first_diverging = -1;    // index of the first prompt whose output differs, -1: none
  int64_t tokens = 0, forwards = 0, iterations = 0, draft_forwards = 0, accepted = 0;
  double seconds = 0;
  bool valid() const { return exact == prompts; }
  double tokens_per_second() const { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0; }
  double tokens_per_forward() const { return iterations > 0 ? static_cast<double>(tokens) / static_cast<double>(iterations) : 0.0; }
};

// Runs the baseline and every method on every prompt, greedy, max_tokens each, stopping at EOS/BOS
// as generate does (or not: `stop` false). `draft` is needed only for eagle2 methods. Row 0 is the
// baseline.
std::vector<DecodeRow> compare_decoding(GPTImpl& model, DraftHeadImpl* draft, const std::vector<std::vector<int32_t>>& prompts,
                                        const std::vector<DecodeMethod>& methods, int64_t max_tokens, bool stop = true);

// The table as markdown: method, exact, tokens per target forward, tokens/s, speedup, and INVALID
// with the first diverging prompt where a method was not exact.
std::string decode_table(const std::vector<DecodeRow>& rows);

}  // namespace slm::eval
