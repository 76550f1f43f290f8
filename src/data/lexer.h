// C++-aware lexer used as the tokenizer's pre-tokenizer.
// lex() cuts source bytes into pieces that partition the input exactly (their concatenation is
// the input, for any bytes, including invalid UTF-8 and NUL). BPE merges never cross the
// boundaries of the chunks that pretokenize() returns.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace slm::lex {

enum class Kind : uint8_t {
  Identifier,  // identifiers and keywords: [A-Za-z_$\x80-\xff][A-Za-z0-9_$\x80-\xff]*
  Number,      // pp-number: 0x1F, 0b1010'0101, 1'000'000ull, 1.5e-3f, .5, 0x1p-3
  String,      // "..." with prefixes u8/u/U/L and raw strings R"d(...)d"; unterminated ends at newline
  Char,        // '...' with prefixes u8/u/U/L
  Comment,     // // ... (continues over backslash-newline) and /* ... */ (unterminated: to end)
  Directive,   // preprocessor head at line start: '#', optional blanks, directive name ("#include", "#  define")
  Punct,       // punctuator, longest match (<=>, ->*, <<=, ::, ...) or any other single byte
  Newline,     // newline(s) plus the indentation after them: "\n    ", "\r\n\t", "\n\n  "
  Space,       // run of blanks (space, tab, \v, \f) not containing a newline
  Splice,      // backslash-newline outside comments and literals (line continuation)
};

const char* kind_name(Kind k);

struct Piece {
  uint32_t begin;  // byte offset into the source
  uint32_t len;    // > 0
  Kind kind;
};

// Exact partition of `src` into pieces.
std::vector<Piece> lex(std::string_view src);

// Chunks for BPE: lex(), then comments and string literals are cut into word-like chunks
// (optional one space + letters, digits, punctuation runs, whitespace runs; at most 64 bytes),
// and the last space of a blank run is attached to the following token of any kind but a
// newline (" int", " //"). All-digit numbers are cut in groups of 3, long identifiers and
// whitespace at 64 bytes. The chunks partition `src` exactly. Appends views into `src` to `out`.
void pretokenize(std::string_view src, std::vector<std::string_view>& out);

}  // namespace slm::lex
