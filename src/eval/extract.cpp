#include "eval/extract.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <sstream>
#include <string_view>

#include "common/error.h"
#include "data/lexer.h"

namespace slm::eval {
namespace {

using lex::Kind;

// A significant token: not whitespace, a comment, a splice or part of a preprocessor line.
struct Tok {
  std::string_view text;
  Kind kind;
  size_t piece;      // index into the lexer's pieces
  const char* base;  // start of the source, for offsets
  size_t begin() const { return static_cast<size_t>(text.data() - base); }
  size_t end() const { return begin() + text.size(); }
};

// Tokens of `src`, with preprocessor lines (directive through the end of its logical line) left out:
// a `#define M {` must not open a scope.
std::vector<Tok> significant(std::string_view src, const std::vector<lex::Piece>& ps) {
  std::vector<Tok> out;
  bool in_directive = false;
  for (size_t i = 0; i < ps.size(); ++i) {
    const lex::Piece& p = ps[i];
    if (p.kind == Kind::Directive) in_directive = true;
    if (p.kind == Kind::Newline) in_directive = false;
    if (in_directive || p.kind == Kind::Space || p.kind == Kind::Newline || p.kind == Kind::Comment ||
        p.kind == Kind::Splice) {
      continue;
    }
    out.push_back({src.substr(p.begin, p.len), p.kind, i, src.data()});
  }
  return out;
}

bool is(const Tok& t, std::string_view s) { return t.text == s; }
bool is_ident(const Tok& t) { return t.kind == Kind::Identifier; }

// Index of the token that closes the bracket at `open` ("(" or "{"), or toks.size() if none.
size_t match(const std::vector<Tok>& toks, size_t open) {
  std::string_view o = toks[open].text, c = o == "(" ? ")" : o == "[" ? "]" : "}";
  int depth = 0;
  for (size_t i = open; i < toks.size(); ++i) {
    if (toks[i].kind != Kind::Punct) continue;
    if (toks[i].text == o) ++depth;
    if (toks[i].text == c && --depth == 0) return i;
  }
  return toks.size();
}

// Keywords whose parenthesized operand is not a parameter list.
bool is_operand_keyword(const Tok& t) {
  static const char* kw[] = {"decltype", "alignas", "__attribute__", "__declspec", "noexcept", "throw",
                             "requires", "sizeof", "alignof", "static_assert", "__typeof__", "typeof"};
  return std::any_of(std::begin(kw), std::end(kw), [&](const char* k) { return t.text == k; });
}
// Builtin type keywords: `void(int)` in `std::function<void(int)>` is a type, not a declarator.
bool is_type_keyword(const Tok& t) {
  static const char* kw[] = {"void", "int", "char", "bool", "float", "double", "long", "short", "unsigned", "signed",
                             "auto", "const", "volatile"};
  return std::any_of(std::begin(kw), std::end(kw), [&](const char* k) { return t.text == k; });
}

// Skips a `template <...>` header at i; returns the index after it (i when there is none).
size_t skip_template_header(const std::vector<Tok>& toks, size_t i, size_t end) {
  while (i + 1 < end && is(toks[i], "template") && is(toks[i + 1], "<")) {
    int depth = 0, paren = 0;
    size_t j = i + 1;
    for (; j < end; ++j) {
      std::string_view t = toks[j].text;
      if (t == "(") ++paren;
      if (t == ")") --paren;
      if (paren > 0) continue;  // `(N > 0)` inside a template argument is not a closing angle
      if (t == "<") ++depth;
      if (t == ">") --depth;
      if (t == ">>") depth -= 2;
      if (depth <= 0) break;
    }
    i = j + 1;
  }
  return i;
}

// The declaration [d, e) before a '{' at e, classified.
enum class Decl { Function, Scope, Other };
struct Classified {
  Decl kind = Decl::Other;
  size_t name_begin = 0, name_end = 0;  // token range of the function name
};

// Words and marks that may directly follow a parameter list.
bool is_trailing_specifier(const Tok& t) {
  static const char* kw[] = {"const", "volatile", "noexcept", "override", "final", "throw", "mutable", "requires",
                             "try", "&", "&&", "->", "[", "=", ":"};
  return std::any_of(std::begin(kw), std::end(kw), [&](const char* k) { return t.text == k; });
}

// Index of the parameter list's '(' in [d, e): a top-level group that follows a name (an identifier
// or the `>` of a template-id) and does not close inside template arguments; after `operator`, the
// first group (the second for `operator()`). e when there is none.
size_t param_group(const std::vector<Tok>& toks, size_t d, size_t e) {
  bool after_operator = false;
  size_t found = e;
  for (size_t i = d; i < e; ++i) {
    if (is(toks[i], "operator")) after_operator = true;
    if (found != e && is(toks[i], ":")) return found;  // a member-initializer list follows the parameters
    if (is(toks[i], "(")) {
      size_t close = match(toks, i);
      if (close >= e) return found;
      if (after_operator) {
        if (is(toks[i - 1], "operator") && close == i + 1) return close + 1 < e && is(toks[close + 1], "(") ? close + 1 : e;
        return i;
      }
      const Tok* prev = i > d ? &toks[i - 1] : nullptr;
      bool after_name = prev && ((is_ident(*prev) && !is_operand_keyword(*prev) && !is_type_keyword(*prev)) ||
                                 is(*prev, ">"));
      bool in_template_args =
          close + 1 < e && (is(toks[close + 1], ">") || is(toks[close + 1], ",") || is(toks[close + 1], ">>"));
      if (after_name && !in_template_args) {
        if (found == e) {
          found = i;
        } else {
          // A leading macro with arguments (`MACRO(x) void f()`) has a type and a name between its group and
          // the parameter list; a trailing one (`f() NOEXCEPT_IF(x)`) follows the list directly.
          size_t prev_close = match(toks, found);
          if (i - prev_close - 1 < 2 || is_trailing_specifier(toks[prev_close + 1])) return found;
          found = i;
        }
      }
      i = close;
    } else if (is(toks[i], "[") || is(toks[i], "{")) {
      i = std::min(match(toks, i), e);
    }
  }
  return found;
}

Classified classify(const std::vector<Tok>& toks, size_t d, size_t e) {
  Classified c;
  if (d >= e) return c;
  if (is(toks[d], "namespace") || (is(toks[d], "inline") && d + 1 < e && is(toks[d + 1], "namespace"))) {
    c.kind = Decl::Scope;
    return c;
  }
  if (is(toks[d], "extern") && d + 2 == e && toks[d + 1].kind == Kind::String) {  // extern "C" { ... }
    c.kind = Decl::Scope;
    return c;
  }
  size_t s = skip_template_header(toks, d, e);
  if (s >= e || is(toks[s], "enum") || is(toks[s], "catch")) return c;
  // An initializer (`auto f = [](int) { ... }`, `int v[] = {...}`) is not a definition.
  for (size_t i = s; i < e; ++i) {
    if (is(toks[i], "=") && !(i > s && is(toks[i - 1], "operator"))) return c;
    if (is(toks[i], "(") || is(toks[i], "[")) i = std::min(match(toks, i), e);
  }
  size_t p = param_group(toks, s, e);
  if (is(toks[s], "class") || is(toks[s], "struct") || is(toks[s], "union")) {
    // A class head unless a parameter list comes before any base clause (`struct S* make() {`).
    size_t colon = s;
    while (colon < e && !is(toks[colon], ":")) ++colon;
    if (p >= e || colon < p) {
      c.kind = Decl::Scope;
      return c;
    }
  }
  if (p >= e) return c;
  // The name: back from the parameter list over `operator ...`, identifiers, `::`, `~` and template args.
  size_t n = p;
  for (size_t i = s; i < p; ++i) {
    if (is(toks[i], "operator")) {
      n = i;
      break;
    }
  }
  if (n == p) n = p - 1;
  while (n > s) {
    const Tok& prev = toks[n - 1];
    if (is(prev, "::") || is(prev, "~") || (is_ident(prev) && n < p && is(toks[n], "::"))) {
      --n;
    } else if (is(prev, ">") && n < p && is(toks[n], "::")) {  // A<T>::f: back to the matching '<'
      int depth = 0;
      size_t j = n - 1;
      for (;; --j) {
        if (is(toks[j], ">")) ++depth;
        if (is(toks[j], "<") && --depth == 0) break;
        if (j == s) break;
      }
      n = (j > s && is_ident(toks[j - 1])) ? j - 1 : j;
    } else {
      break;
    }
  }
  c.kind = Decl::Function;
  c.name_begin = n;
  c.name_end = p;
  return c;
}

// Start of the documentation comment directly above piece `first`: whole-line comments separated
// from it and from each other by single line breaks (or on its own line before it); `fallback`
// when there is none. A trailing comment of a previous code line is not included.
size_t comment_start(std::string_view src, const std::vector<lex::Piece>& ps, size_t first, size_t fallback) {
  auto line_start = [&](size_t k) {
    if (k > 0 && ps[k - 1].kind == Kind::Space) --k;
    return k == 0 || ps[k - 1].kind == Kind::Newline;
  };
  auto single_break = [&](const lex::Piece& p) {
    return p.kind == Kind::Newline && std::count(src.begin() + p.begin, src.begin() + p.begin + p.len, '\n') == 1;
  };
  size_t begin = fallback;
  for (size_t j = first; j > 0; --j) {
    const lex::Piece& p = ps[j - 1];
    if (p.kind == Kind::Comment && line_start(j - 1)) {
      begin = p.begin;
    } else if (p.kind != Kind::Space && !single_break(p)) {
      break;
    }
  }
  return begin;
}

}  // namespace

std::vector<FunctionPrompt> find_function_prompts(const std::string& file_text) {
  std::string_view src(file_text);
  std::vector<lex::Piece> ps = lex::lex(src);
  std::vector<Tok> toks = significant(src, ps);
  std::vector<FunctionPrompt> out;
  // Walks the scopes where definitions start (the file, namespaces, linkage blocks, class bodies);
  // every other brace pair (function bodies, initializers, enums) is stepped over whole.
  size_t decl = 0;  // first token of the current declaration
  for (size_t i = 0; i < toks.size(); ++i) {
    const Tok& t = toks[i];
    if (is(t, ";") || is(t, "}")) {  // '}' closes a namespace or class body
      decl = i + 1;
    } else if ((is(t, "public") || is(t, "private") || is(t, "protected")) && i + 1 < toks.size() &&
               is(toks[i + 1], ":")) {
      decl = i + 2;
      ++i;
    } else if (is(t, "(") || is(t, "[")) {
      i = match(toks, i);  // default arguments and attributes may hold braces
      if (i >= toks.size()) break;
    } else if (is(t, "{")) {
      Classified c = classify(toks, decl, i);
      if (c.kind == Decl::Scope) {
        decl = i + 1;
        continue;
      }
      size_t close = match(toks, i);
      if (close >= toks.size()) break;  // unbalanced: stop rather than guess
      // After the parameters and a ':', a '{' that follows a name is a member's brace-init
      // (`A() : x_{1}, y_(2) {`), not the body.
      bool mem_init = false;
      if (c.kind == Decl::Function && (is_ident(toks[i - 1]) || is(toks[i - 1], ">"))) {
        for (size_t k = match(toks, c.name_end) + 1; k < i; ++k) mem_init = mem_init || is(toks[k], ":");
      }
      if (c.kind == Decl::Function && !mem_init) {
        FunctionPrompt f;
        f.decl_begin = toks[decl].begin();
        f.begin = comment_start(src, ps, toks[decl].piece, f.decl_begin);
        f.body_begin = t.end();
        f.body_end = toks[close].begin();
        size_t name_begin = toks[c.name_begin].begin();
        f.name = file_text.substr(name_begin, toks[c.name_end - 1].end() - name_begin);
        f.prompt = file_text.substr(f.begin, f.body_begin - f.begin);
        f.body = file_text.substr(f.body_begin, f.body_end - f.body_begin);
        out.push_back(std::move(f));
        decl = close + 1;
      }
      i = close;
    }
  }
  return out;
}

std::string splice_completion(const std::string& file_text, const FunctionPrompt& f, const std::string& completion) {
  SLM_CHECK(f.body_begin <= f.body_end && f.body_end < file_text.size(),
            "[eval] function '", f.name, "' does not fit a file of ", file_text.size(), " bytes");
  return file_text.substr(0, f.body_begin) + completion + file_text.substr(f.body_end + 1);
}

std::string EvalBudget::exhausted(int64_t files_checked) const {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (secs >= max_seconds) {
    std::ostringstream os;
    os << "the time limit of " << max_seconds << " s (--max-seconds)";
    return os.str();
  }
  if (files_checked >= max_files) return "the cap of " + std::to_string(max_files) + " held-out files checked";
  return "";
}

bool trivial_body(const std::string& completion) {
  // Comments and whitespace out (a literal holding "//" only makes the body look less trivial).
  std::string code;
  for (size_t i = 0; i < completion.size();) {
    if (completion.compare(i, 2, "//") == 0) {
      i = completion.find('\n', i);
      if (i == std::string::npos) break;
    } else if (completion.compare(i, 2, "/*") == 0) {
      size_t e = completion.find("*/", i + 2);
      i = e == std::string::npos ? completion.size() : e + 2;
    } else {
      if (!std::isspace(static_cast<unsigned char>(completion[i]))) code += completion[i];
      ++i;
    }
  }
  if (!code.empty() && code.back() == '}') code.pop_back();
  static const std::regex lone_return(
      R"(return(;|-?[0-9]([0-9a-zA-Z.']|[eEpP][+-])*;|true;|false;|nullptr;|\{\};|"";|'(\\?.)';))");
  return code.empty() || std::regex_match(code, lone_return);
}

std::optional<std::string> cut_at_matching_brace(const std::string& generated, int depth_at_start) {
  SLM_CHECK(depth_at_start >= 1, "[eval] cut_at_matching_brace needs depth_at_start >= 1, got ", depth_at_start);
  std::string_view src(generated);
  std::vector<lex::Piece> ps = lex::lex(src);
  int depth = depth_at_start;
  for (const Tok& t : significant(src, ps)) {
    if (t.kind != Kind::Punct) continue;
    if (t.text == "{") ++depth;
    if (t.text == "}" && --depth == 0) return generated.substr(0, t.end());
  }
  return std::nullopt;
}

}  // namespace slm::eval
