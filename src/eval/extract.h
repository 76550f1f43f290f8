// Compile-rate evaluation, text side: function prompts from a source file, cutting a generation at
// the brace that closes the function. Torch-free.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/stats.h"

namespace slm::eval {

// A function definition at namespace or class scope (free functions, methods defined in a class,
// out-of-class methods, templates, operators). Offsets are bytes into the file text:
//   [begin, decl_begin)        the documentation comment directly above (may be empty)
//   [decl_begin, body_begin)   template header, specifiers and signature through the opening '{'
//   [body_begin, body_end)     the body (the reference), without the closing '}' at body_end
struct FunctionPrompt {
  std::string name;   // as written before the parameter list: "f", "A::f", "operator==", "~A"
  size_t begin;       // start of the prompt: the comment, or the declaration when there is none
  size_t decl_begin;  // start of the declaration
  size_t body_begin;  // one past the opening '{'
  size_t body_end;    // offset of the closing '}'
  std::string prompt; // file_text[begin, body_begin)
  std::string body;   // file_text[body_begin, body_end)
};

// Every function definition at namespace or class scope, in file order. Lexer-based (strings,
// comments and raw strings are opaque), preprocessor lines are skipped, and lambdas, brace
// initializers and member-initializer braces are not functions. A file whose braces do not
// balance yields the functions found before the imbalance.
std::vector<FunctionPrompt> find_function_prompts(const std::string& file_text);

// The file with `f`'s body and closing brace replaced by `completion` (a cut generation: body text
// through the closing brace), ready for the compile check.
std::string splice_completion(const std::string& file_text, const FunctionPrompt& f, const std::string& completion);

// The prefix of `generated` through the '}' that brings the brace depth from depth_at_start to 0;
// braces in string and char literals (raw strings included), comments and preprocessor lines do
// not count. nullopt when the depth never reaches 0.
std::optional<std::string> cut_at_matching_brace(const std::string& generated, int depth_at_start = 1);

// True when a completion (body text through the closing '}') does nothing a compiler could fault:
// only comments and whitespace, `return;`, or `return` of a lone literal (0, -1, 1.5f, true, false,
// nullptr, {}, "", 'c'). Such a body compiles almost anywhere, so it is counted apart, not as a success.
bool trivial_body(const std::string& completion);

// The bound of one compile-rate evaluation. Held-out files whose reference does not compile do not
// count toward the prompts asked for, so without it a data set of such files keeps the evaluation
// going for hours.
struct EvalBudget {
  double max_seconds = 900;  // wall clock of the whole evaluation
  int64_t max_files = 256;   // held-out files checked (each costs a compile of the reference)
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  // "" while within the bound, else why the evaluation stops ("the time limit of 900 s", ...).
  std::string exhausted(int64_t files_checked) const;
};

// The Wilson interval of a rate lives with the other small statistics, in common/stats.h.
using slm::Interval;
using slm::wilson_interval;

}  // namespace slm::eval
