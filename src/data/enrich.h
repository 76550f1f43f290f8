// Compiler structure per token (`slmlab data build --enrich`), from Debian's libclang: each token of
// the tokenizer gets the structure category of the code it belongs to and its AST depth, from the
// cursors of the file's own parse (with its compile command) mapped onto the token's bytes.
// Built without libclang (not found at configure time), enrichment is unavailable and says so.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace slm::data {

// The fixed category set, stored as u8. Unknown: the file was not parsed (kept raw).
enum Category : uint8_t {
  kUnknown = 0, kDeclaration, kStatement, kExpression, kType, kPreprocessor, kComment, kLiteral, kOther
};
constexpr int kCategories = 9;
const char* category_name(int c);

bool enrich_available();
std::string libclang_version();  // "" without libclang

struct Enriched {
  bool parsed = false;        // parsed fully: no error diagnostics
  std::string error;          // why not (first error), when !parsed
  std::vector<uint8_t> category, depth;  // per token
};

// Parses `path` as holding `content` (passed to libclang as an unsaved file, so the bytes are
// exactly these) with `args`, and labels each token; `token_bytes[i]` is token i's byte length
// (their sum is content.size()). A file that does not parse fully gets kUnknown / depth 0 throughout.
Enriched enrich(const std::string& path, const std::string& content, const std::vector<std::string>& args,
                const std::vector<uint32_t>& token_bytes);

}  // namespace slm::data
