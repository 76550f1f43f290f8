#include "data/lexer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "common/error.h"

namespace slm::lex {
namespace {

// Byte classes, looked up once per byte so the hot loops are a table load and a mask test.
enum : uint8_t {
  kIdStart = 1,   // [A-Za-z_$] and bytes >= 0x80
  kIdCont = 2,    // kIdStart plus digits
  kDigit = 4,     // [0-9]
  kBlank = 8,     // space, \t, \v, \f
  kNumCont = 16,  // pp-number body: [0-9A-Za-z_.]
  kWord = 32,     // letters for chunking text: [A-Za-z_] and bytes >= 0x80
  kSpace = 64,    // blanks plus \r and \n
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    bool digit = c >= '0' && c <= '9';
    uint8_t v = 0;
    if (alpha || c == '_' || c == '$' || c >= 0x80) v |= kIdStart | kIdCont;
    if (digit) v |= kDigit | kIdCont | kNumCont;
    if (alpha || c == '_' || c == '.') v |= kNumCont;
    if (alpha || c == '_' || c >= 0x80) v |= kWord;
    if (c == ' ' || c == '\t' || c == '\v' || c == '\f') v |= kBlank | kSpace;
    if (c == '\n' || c == '\r') v |= kSpace;
    t[c] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kClass = make_classes();

inline uint8_t cls(char c) { return kClass[static_cast<unsigned char>(c)]; }

// First index >= i whose byte is not in `mask` (or n).
inline size_t skip(const char* s, size_t n, size_t i, uint8_t mask) {
  while (i < n && (cls(s[i]) & mask)) ++i;
  return i;
}

// Length of the line break at i: 2 for \r\n, 1 for \n or a lone \r, 0 for anything else.
inline size_t newline_len(const char* s, size_t n, size_t i) {
  if (i >= n) return 0;
  if (s[i] == '\n') return 1;
  if (s[i] == '\r') return (i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
  return 0;
}

struct Scan {
  size_t end;   // one past the last byte consumed
  bool closed;  // the closing quote / delimiter was found
};

// Body of a '...' or "..." literal starting at i (just past the opening quote). Stops past the
// closing quote, or before a line break / at the end when unterminated. A backslash escapes the
// next byte, or a whole line break (backslash-newline continues the literal, as in phase 2).
Scan quoted(const char* s, size_t n, size_t i, char quote) {
  while (i < n) {
    char c = s[i];
    if (c == quote) return {i + 1, true};
    if (c == '\n' || c == '\r') return {i, false};
    if (c == '\\' && i + 1 < n) {
      size_t nl = newline_len(s, n, i + 1);
      i += 1 + (nl ? nl : 1);
    } else {
      ++i;
    }
  }
  return {n, false};
}

// Valid raw-string delimiter byte: printable ASCII except space, parentheses and backslash.
inline bool is_delim_char(char c) { return c > ' ' && c < 0x7f && c != '(' && c != ')' && c != '\\'; }

// Length of the raw-string delimiter starting at i (just past R"), or npos when it is not
// at most 16 valid bytes followed by '('.
size_t raw_delim_len(const char* s, size_t n, size_t i) {
  size_t d = i;
  while (d < n && d - i <= 16 && is_delim_char(s[d])) ++d;
  if (d >= n || d - i > 16 || s[d] != '(') return std::string_view::npos;
  return d - i;
}

// Index of the ')' that starts `)delim"` at or after i, or npos when the raw string is unterminated.
size_t raw_close(const char* s, size_t n, size_t i, const char* delim, size_t dlen) {
  while (i < n) {
    const void* hit = std::memchr(s + i, ')', n - i);
    if (!hit) break;
    size_t p = static_cast<const char*>(hit) - s;
    if (p + dlen + 1 < n && s[p + dlen + 1] == '"' && std::memcmp(s + p + 1, delim, dlen) == 0) return p;
    i = p + 1;
  }
  return std::string_view::npos;
}

inline bool is_exponent(char c) { return c == 'e' || c == 'E' || c == 'p' || c == 'P'; }

// End of a pp-number whose first byte is at i - 1: [0-9A-Za-z_.], digit separators ('
// before an alphanumeric or _) and a sign right after an exponent letter (1e-3, 0x1p+4).
size_t number_end(const char* s, size_t n, size_t i) {
  while (i < n) {
    char c = s[i];
    if (cls(c) & kNumCont) {
      ++i;
    } else if ((c == '+' || c == '-') && is_exponent(s[i - 1])) {
      ++i;
    } else if (c == '\'' && i + 1 < n && (cls(s[i + 1]) & kNumCont) && s[i + 1] != '.') {
      i += 2;
    } else {
      break;
    }
  }
  return i;
}

// End of a // comment starting at i: the first line break not preceded by a backslash.
size_t line_comment_end(const char* s, size_t n, size_t i) {
  for (;;) {
    while (i < n && s[i] != '\n' && s[i] != '\r') ++i;
    if (i >= n || s[i - 1] != '\\') return i;
    i += newline_len(s, n, i);
  }
}

// Length of the longest C++ punctuator at i; any other byte is a 1-byte punct.
size_t punct_len(const char* s, size_t n, size_t i) {
  char a = s[i], b = i + 1 < n ? s[i + 1] : 0, c = i + 2 < n ? s[i + 2] : 0;
  switch (a) {
    case '<':
      if (b == '<') return c == '=' ? 3 : 2;
      if (b == '=') return c == '>' ? 3 : 2;
      return 1;
    case '>':
      if (b == '>') return c == '=' ? 3 : 2;
      return b == '=' ? 2 : 1;
    case '-':
      if (b == '>') return c == '*' ? 3 : 2;
      return (b == '-' || b == '=') ? 2 : 1;
    case '.':
      if (b == '.' && c == '.') return 3;
      return b == '*' ? 2 : 1;
    case ':': return b == ':' ? 2 : 1;
    case '#': return b == '#' ? 2 : 1;
    case '+': return (b == '+' || b == '=') ? 2 : 1;
    case '&': return (b == '&' || b == '=') ? 2 : 1;
    case '|': return (b == '|' || b == '=') ? 2 : 1;
    case '*':
    case '/':
    case '%':
    case '^':
    case '=':
    case '!': return b == '=' ? 2 : 1;
    default: return 1;
  }
}

inline bool is_encoding_prefix(std::string_view w) {
  return w == "u8" || w == "u" || w == "U" || w == "L";
}

inline bool is_raw_prefix(std::string_view w) {
  return !w.empty() && w.back() == 'R' && (w.size() == 1 || is_encoding_prefix(w.substr(0, w.size() - 1)));
}

// A closed literal absorbs a directly following user-defined-literal suffix ("abc"s, "x"_sv).
inline size_t with_suffix(const char* s, size_t n, Scan sc) {
  if (sc.closed && sc.end < n && (cls(s[sc.end]) & kIdStart)) return skip(s, n, sc.end + 1, kIdCont);
  return sc.end;
}

// Identifier at i, or a literal when the whole identifier is an encoding/raw prefix directly
// followed by a quote. Returns the piece kind; sets `end`.
Kind word_or_literal(const char* s, size_t n, size_t i, size_t& end) {
  size_t w = skip(s, n, i + 1, kIdCont);
  end = w;
  if (w >= n || (s[w] != '"' && s[w] != '\'')) return Kind::Identifier;
  std::string_view word(s + i, w - i);
  if (s[w] == '\'') {
    if (!is_encoding_prefix(word)) return Kind::Identifier;
    end = with_suffix(s, n, quoted(s, n, w + 1, '\''));
    return Kind::Char;
  }
  if (is_encoding_prefix(word)) {
    end = with_suffix(s, n, quoted(s, n, w + 1, '"'));
    return Kind::String;
  }
  if (!is_raw_prefix(word)) return Kind::Identifier;
  size_t dlen = raw_delim_len(s, n, w + 1);
  if (dlen == std::string_view::npos) return Kind::Identifier;  // malformed: R is a plain identifier
  size_t close = raw_close(s, n, w + dlen + 2, s + w + 1, dlen);
  end = close == std::string_view::npos ? n : with_suffix(s, n, {close + dlen + 2, true});
  return Kind::String;
}

// Scans the piece that starts at i; `line_start` means only blanks precede it on its line.
Kind scan_piece(const char* s, size_t n, size_t i, bool line_start, size_t& end) {
  char c = s[i];
  uint8_t k = cls(c);
  if (k & kBlank) {
    end = skip(s, n, i + 1, kBlank);
    return Kind::Space;
  }
  if (c == '\n' || c == '\r') {
    end = skip(s, n, i + 1, kSpace);
    return Kind::Newline;
  }
  if (k & kIdStart) return word_or_literal(s, n, i, end);
  if ((k & kDigit) || (c == '.' && i + 1 < n && (cls(s[i + 1]) & kDigit))) {
    end = number_end(s, n, i + 1);
    return Kind::Number;
  }
  switch (c) {
    case '"':
      end = with_suffix(s, n, quoted(s, n, i + 1, '"'));
      return Kind::String;
    case '\'':
      end = with_suffix(s, n, quoted(s, n, i + 1, '\''));
      return Kind::Char;
    case '/':
      if (i + 1 < n && s[i + 1] == '/') {
        end = line_comment_end(s, n, i + 2);
        return Kind::Comment;
      }
      if (i + 1 < n && s[i + 1] == '*') {
        size_t close = std::string_view(s, n).find("*/", i + 2);
        end = close == std::string_view::npos ? n : close + 2;
        return Kind::Comment;
      }
      break;
    case '#':
      if (line_start) {
        size_t j = skip(s, n, i + 1, kBlank);
        if (j < n && (cls(s[j]) & kIdStart)) {
          end = skip(s, n, j + 1, kIdCont);
          return Kind::Directive;
        }
      }
      break;
    case '\\':
      if (size_t nl = newline_len(s, n, i + 1)) {
        end = i + 1 + nl;
        return Kind::Splice;
      }
      break;
  }
  end = i + punct_len(s, n, i);
  return Kind::Punct;
}

// Appends the views into a source that pretokenize() produces.
struct Chunker {
  const char* s;
  std::vector<std::string_view>& out;

  void emit(size_t b, size_t e) {
    if (e > b) out.emplace_back(s + b, e - b);
  }

  // [b, e) in chunks of at most `max` bytes; the first chunk also takes the carried space at b0.
  void cut_fixed(size_t b0, size_t b, size_t e, size_t max) {
    size_t first = std::min(e, b + max);
    emit(b0, first);
    for (b = first; b < e; b += max) emit(b, std::min(e, b + max));
  }

  // GPT-2-style split of comment and literal text: (space) + letters | (space) + up to 3 digits
  // | (space) + other symbols | whitespace runs, which leave a final space to the next word.
  // Every chunk is at most 64 bytes so BPE words stay bounded.
  void cut_words(size_t i, size_t e) {
    while (i < e) {
      size_t start = i;
      if (s[i] == ' ' && i + 1 < e && !(cls(s[i + 1]) & kSpace)) ++i;
      uint8_t k = cls(s[i]);
      size_t j;
      if (k & kSpace) {
        j = skip(s, e, i + 1, kSpace);
        if (j < e && j - i > 1 && s[j - 1] == ' ') --j;
      } else if (k & kWord) {
        j = skip(s, e, i + 1, kWord);
      } else if (k & kDigit) {
        j = std::min(skip(s, e, i + 1, kDigit), i + 3);
      } else {
        j = i + 1;
        while (j < e && !(cls(s[j]) & (kSpace | kWord | kDigit))) ++j;
      }
      j = std::min(j, start + 64);
      emit(start, j);
      i = j;
    }
  }

  // Comment: the // or /* marker, the text, and a closing */ each on their own.
  void comment(size_t b0, size_t b, size_t e) {
    emit(b0, b + 2);
    bool block = s[b + 1] == '*';
    bool closed = block && e - b >= 4 && s[e - 2] == '*' && s[e - 1] == '/';
    cut_words(b + 2, closed ? e - 2 : e);
    if (closed) emit(e - 2, e);
  }

  // String or char literal: prefix + opening quote (raw: through the '('), the text, and the
  // closing quote (raw: `)delim"`) plus any suffix.
  void literal(size_t b0, size_t b, size_t e, char quote) {
    size_t q = b;
    while (s[q] != quote) ++q;
    size_t open_end = q + 1, close = e;
    if (q > b && s[q - 1] == 'R') {  // the lexer only emits an R prefix for a valid raw string
      size_t dlen = raw_delim_len(s, e, q + 1);
      open_end = q + dlen + 2;
      size_t c = raw_close(s, e, open_end, s + q + 1, dlen);
      if (c != std::string_view::npos) close = c;
    } else {
      Scan sc = quoted(s, e, q + 1, quote);
      if (sc.closed) close = sc.end - 1;
    }
    emit(b0, open_end);
    cut_words(open_end, close);
    emit(close, e);
  }
};

// Kinds that take a single preceding space into their first chunk (" x", " =", " \"s\"").
inline bool takes_space(Kind k) {
  return k != Kind::Space && k != Kind::Newline && k != Kind::Splice;
}

// True when [b, e) is all decimal digits.
inline bool all_digits(const char* s, size_t b, size_t e) { return skip(s, e, b, kDigit) == e; }

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Identifier: return "identifier";
    case Kind::Number: return "number";
    case Kind::String: return "string";
    case Kind::Char: return "char";
    case Kind::Comment: return "comment";
    case Kind::Directive: return "directive";
    case Kind::Punct: return "punct";
    case Kind::Newline: return "newline";
    case Kind::Space: return "space";
    case Kind::Splice: return "splice";
  }
  return "unknown";
}

std::vector<Piece> lex(std::string_view src) {
  SLM_CHECK(src.size() <= std::numeric_limits<uint32_t>::max(), "[lex] input of ", src.size(),
            " bytes is over the 4 GiB limit; split it into smaller files");
  const char* s = src.data();
  size_t n = src.size();
  std::vector<Piece> out;
  out.reserve(n / 4 + 1);  // about 5 bytes per piece on real C++, so this rarely regrows
  bool line_start = true;
  for (size_t i = 0; i < n;) {
    size_t end;
    Kind k = scan_piece(s, n, i, line_start, end);
    out.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(end - i), k});
    line_start = k == Kind::Newline || (line_start && k == Kind::Space);
    i = end;
  }
  return out;
}

void pretokenize(std::string_view src, std::vector<std::string_view>& out) {
  std::vector<Piece> pieces = lex(src);
  // About 1.1 chunks per piece on real code. Grow geometrically: callers append file after file.
  size_t need = out.size() + pieces.size() + pieces.size() / 4;
  if (need > out.capacity()) out.reserve(std::max(need, 2 * out.capacity()));
  const char* s = src.data();
  Chunker ch{s, out};
  size_t carry = 0;  // 1 when the previous Space piece's last ' ' belongs to this piece's first chunk
  for (size_t p = 0; p < pieces.size(); ++p) {
    size_t b = pieces[p].begin, e = b + pieces[p].len, b0 = b - carry;
    carry = 0;
    switch (pieces[p].kind) {
      case Kind::Space:
        if (p + 1 < pieces.size() && takes_space(pieces[p + 1].kind) && s[e - 1] == ' ') {
          carry = 1;
          --e;
        }
        ch.cut_fixed(b, b, e, 64);  // nothing when a lone ' ' moved on
        break;
      case Kind::Newline:
      case Kind::Identifier: ch.cut_fixed(b0, b, e, 64); break;
      case Kind::Number: ch.cut_fixed(b0, b, e, all_digits(s, b, e) ? 3 : 16); break;
      case Kind::Comment: ch.comment(b0, b, e); break;
      case Kind::String: ch.literal(b0, b, e, '"'); break;
      case Kind::Char:
        if (e - b > 8) {
          ch.literal(b0, b, e, '\'');
        } else {
          ch.emit(b0, e);
        }
        break;
      case Kind::Directive:
      case Kind::Punct:
      case Kind::Splice: ch.emit(b0, e); break;
    }
  }
}

}  // namespace slm::lex
