// Compile-rate evaluation: does the code a model writes compile? Prompts come from functions of the
// held-out split whose file compiles with its reference body (a file that does not compile as it
// is cannot judge a generation). The model writes the body, left to right ("complete": the file up
// to the function's opening brace is the prompt) or as an infill ("fim": prefix and suffix around
// the body); the text is cut at the brace that closes the function, put back into its file, and
// checked by g++ -fsyntax-only in the sandbox (eval/sandbox.h). Generated code is never executed.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/extract.h"
#include "eval/sandbox.h"
#include "model/gpt.h"

namespace slm::eval {

struct CompileEvalOptions {
  int64_t n = 32;              // prompts to score
  std::string mode = "complete";  // complete | fim
  int64_t max_tokens = 128;    // generated tokens per prompt; bodies longer than this are not used
  int64_t per_file = 2;        // functions taken per held-out file at most
  double temperature = 0;      // 0 = greedy
  double max_seconds = 900;    // wall clock of the whole evaluation; then it reports what it has
  int64_t max_files = 0;       // held-out files checked at most; 0 = 8 x n
  uint64_t seed = 0;
  SandboxOptions sandbox;
};

struct PromptRecord {
  std::string file, function;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  bool closed = false;         // the generation closed the function's brace
  bool ok = false;             // it compiled, and not with a trivial body (those count apart)
  bool trivial = false;        // it compiled with a trivial body (eval::trivial_body)
  std::string status;          // ok, compile_error, unterminated, timeout, ...
  std::string first_error;
  std::string completion;      // the cut generation as spliced in
};

struct CompileEvalResult {
  int64_t n = 0, k = 0;        // scored prompts, compiling ones (trivial bodies excluded)
  int64_t trivial = 0;         // scored prompts whose body compiled but was trivial: not in k
  std::string stopped;         // "" or why the evaluation stopped before n prompts (EvalBudget)
  Interval ci{0, 1};           // Wilson 95%
  int64_t files_seen = 0, files_rejected = 0;  // held-out files read; those whose reference did not compile
  std::vector<PromptRecord> prompts;
};

// The "complete" prompt of function f of file `text`: BOS and the last `budget` tokens of the file
// up to the body's opening brace. Also the held-out prompts of decoding comparisons (eval/decode.h).
std::vector<int32_t> completion_prompt(const Tokenizer& tok, const std::string& text, const FunctionPrompt& f,
                                       int64_t budget);

// Scores up to o.n prompts within o.max_seconds and o.max_files; `progress` (may be empty) is called after each.
CompileEvalResult compile_rate(GPTImpl& model, const data::DataSet& ds, const CompileEvalOptions& o,
                               const std::function<void(const PromptRecord&, int64_t done)>& progress = {});

}  // namespace slm::eval
