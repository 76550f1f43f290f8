// Compiler structure per token (`slmlab data build --enrich`), from Debian's libclang: each token of
// the tokenizer gets the structure category of the code it belongs to, its AST depth and the role of
// the name it spells (declared, defined, used), from the cursors of the file's own parse (with its
// compile command) mapped onto the token's bytes; per file, the function and type dependency edges
// the compiler resolved, and where its top-level declarations start (document chunking cuts there).
// Built without libclang (not found at configure time), enrichment is unavailable and says so.
#pragma once
#include <cstdint>
#include <tuple>
#include <string>
#include <vector>

namespace slm::data {

// The fixed category set, stored as u8. Unknown: the file was not parsed (kept raw).
enum Category : uint8_t {
  kUnknown = 0, kDeclaration, kStatement, kExpression, kType, kPreprocessor, kComment, kLiteral, kOther
};
constexpr int kCategories = 9;
const char* category_name(int c);

// What the name a token spells is to the program: a declaration that is not a definition, a
// definition, a use (a reference the compiler resolved), or no name at all. Stored as u8.
enum Role : uint8_t { kNoRole = 0, kDeclares, kDefines, kUses };
constexpr int kRoles = 4;
const char* role_name(int r);

// A dependency the compiler resolved inside one file: the function or type defined around the
// reference (`from`, qualified: ns::Class::method) calls the function `to` (kind 'c') or names the
// type `to` (kind 't'). Names never hold tabs or newlines (they are stored one edge a line).
struct Edge {
  std::string from, to;
  char kind = 'c';
  bool operator<(const Edge& o) const { return std::tie(from, to, kind) < std::tie(o.from, o.to, o.kind); }
  bool operator==(const Edge& o) const { return from == o.from && to == o.to && kind == o.kind; }
};

bool enrich_available();
std::string libclang_version();  // "" without libclang

struct Enriched {
  bool parsed = false;        // parsed fully: no error diagnostics
  std::string error;          // why not (first error), when !parsed
  std::vector<uint8_t> category, depth, role;  // per token
  std::vector<Edge> edges;                     // sorted, distinct
  // Token indices (ascending, > 0) where a top-level declaration or directive starts (a declaration
  // at file scope or directly inside a file-scope namespace / extern "C"), moved back over the
  // comments right above it: a document cut there splits no declaration.
  std::vector<uint32_t> boundaries;
};

// Parses `path` as holding `content` (passed to libclang as an unsaved file, so the bytes are
// exactly these) with `args`, and labels each token; `token_bytes[i]` is token i's byte length
// (their sum is content.size()). A file that does not parse fully gets kUnknown / depth 0 / kNoRole
// throughout, no edges and no boundaries.
Enriched enrich(const std::string& path, const std::string& content, const std::vector<std::string>& args,
                const std::vector<uint32_t>& token_bytes);

}  // namespace slm::data
