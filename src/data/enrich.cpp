#include "data/enrich.h"

#include <algorithm>
#include <set>

#ifdef SLMLAB_HAVE_LIBCLANG
#include <clang-c/Index.h>
#endif

namespace slm::data {

const char* category_name(int c) {
  static const char* names[kCategories] = {"unknown", "declaration", "statement",  "expression", "type",
                                           "preprocessor", "comment", "literal", "other"};
  return c >= 0 && c < kCategories ? names[c] : "?";
}

const char* role_name(int r) {
  static const char* names[kRoles] = {"none", "declares", "defines", "uses"};
  return r >= 0 && r < kRoles ? names[r] : "?";
}

namespace {

Enriched unparsed(size_t n, std::string why) {
  Enriched e;
  e.error = std::move(why);
  e.category.assign(n, kUnknown);
  e.depth.assign(n, 0);
  e.role.assign(n, kNoRole);
  return e;
}

}  // namespace

#ifndef SLMLAB_HAVE_LIBCLANG

bool enrich_available() { return false; }
std::string libclang_version() { return ""; }
Enriched enrich(const std::string&, const std::string&, const std::vector<std::string>&,
                const std::vector<uint32_t>& token_bytes) {
  return unparsed(token_bytes.size(), "slmlab was built without libclang");
}

#else

bool enrich_available() { return true; }

std::string libclang_version() {
  CXString s = clang_getClangVersion();
  std::string v = clang_getCString(s);
  clang_disposeString(s);
  return v;
}

namespace {

// Category a cursor kind paints; kUnknown: the kind does not change its parent's category.
uint8_t category_of(CXCursorKind k) {
  switch (k) {
    case CXCursor_IntegerLiteral: case CXCursor_FloatingLiteral: case CXCursor_ImaginaryLiteral:
    case CXCursor_StringLiteral: case CXCursor_CharacterLiteral: case CXCursor_CXXBoolLiteralExpr:
    case CXCursor_CXXNullPtrLiteralExpr: case CXCursor_ObjCStringLiteral:
      return kLiteral;
    case CXCursor_TypeRef: case CXCursor_TemplateRef: case CXCursor_CXXBaseSpecifier:
      return kType;
    default: break;
  }
  if (clang_isPreprocessing(k)) return kPreprocessor;
  if (clang_isDeclaration(k)) return kDeclaration;
  if (clang_isStatement(k)) return kStatement;
  if (clang_isExpression(k)) return kExpression;
  return kUnknown;
}

bool is_function(CXCursorKind k) {
  return k == CXCursor_FunctionDecl || k == CXCursor_CXXMethod || k == CXCursor_Constructor ||
         k == CXCursor_Destructor || k == CXCursor_ConversionFunction || k == CXCursor_FunctionTemplate;
}
bool is_type(CXCursorKind k) {
  return k == CXCursor_ClassDecl || k == CXCursor_StructDecl || k == CXCursor_UnionDecl || k == CXCursor_EnumDecl ||
         k == CXCursor_ClassTemplate || k == CXCursor_ClassTemplatePartialSpecialization ||
         k == CXCursor_TypedefDecl || k == CXCursor_TypeAliasDecl || k == CXCursor_TypeAliasTemplateDecl;
}

std::string spelling(CXCursor c) {
  CXString s = clang_getCursorSpelling(c);
  std::string out = clang_getCString(s);
  clang_disposeString(s);
  return out;
}

// ns::Class::name along the semantic parents; tabs and newlines (never in a C++ name, but in odd
// operator spellings) become spaces so an edge stays one line.
std::string qualified(CXCursor c) {
  std::string out;
  for (; !clang_Cursor_isNull(c) && !clang_isTranslationUnit(clang_getCursorKind(c)) && !clang_isInvalid(clang_getCursorKind(c));
       c = clang_getCursorSemanticParent(c)) {
    std::string s = spelling(c);
    if (s.empty()) s = "(anonymous)";
    out = out.empty() ? s : s + "::" + out;
  }
  for (char& ch : out)
    if (ch == '\t' || ch == '\n' || ch == '\r') ch = ' ';
  return out;
}

struct Paint {
  CXFile file;
  std::vector<uint8_t> cat, depth, role;  // per byte
  int level = 0;
  bool top = true;                  // the cursors being visited are top-level (file scope, or a top-level namespace's)
  std::vector<std::string> owner;   // the function and type definitions around the cursor, qualified
  std::set<Edge> edges;
  std::vector<unsigned> top_starts;  // byte offsets of top-level declarations and directives
};

bool offsets(CXSourceRange r, CXFile want, unsigned& a, unsigned& b) {
  CXFile fa, fb;
  clang_getExpansionLocation(clang_getRangeStart(r), &fa, nullptr, nullptr, &a);
  clang_getExpansionLocation(clang_getRangeEnd(r), &fb, nullptr, nullptr, &b);
  return fa && fb && clang_File_isEqual(fa, want) && clang_File_isEqual(fb, want) && a < b;
}

// Pre-order: a child repaints the bytes of its parent, so each byte ends with its innermost cursor.
CXChildVisitResult visit(CXCursor c, CXCursor, CXClientData d) {
  auto* p = static_cast<Paint*>(d);
  // An included file's declarations hold none of this file's bytes: not walked.
  if (p->level == 0 && !clang_Location_isFromMainFile(clang_getCursorLocation(c))) return CXChildVisit_Continue;
  const CXCursorKind k = clang_getCursorKind(c);
  unsigned a, b;
  const bool here = offsets(clang_getCursorExtent(c), p->file, a, b);
  bool owns = false;
  if (here) {
    b = std::min<unsigned>(b, p->cat.size());
    const uint8_t cat = category_of(k);
    const uint8_t dep = static_cast<uint8_t>(std::min(p->level + 1, 255));
    for (unsigned i = a; i < b; ++i) {
      if (cat != kUnknown) p->cat[i] = cat;
      p->depth[i] = dep;
    }
    if (p->top && (clang_isDeclaration(k) || k == CXCursor_InclusionDirective || k == CXCursor_MacroDefinition))
      p->top_starts.push_back(a);
    // The role of the name the cursor spells (its name range, not its whole extent).
    uint8_t role = kNoRole;
    if (clang_isDeclaration(k)) role = clang_isCursorDefinition(c) ? kDefines : kDeclares;
    else if (clang_isReference(k) || k == CXCursor_DeclRefExpr || k == CXCursor_MemberRefExpr) role = kUses;
    unsigned na, nb;
    if (role != kNoRole && offsets(clang_Cursor_getSpellingNameRange(c, 0, 0), p->file, na, nb))
      std::fill(p->role.begin() + na, p->role.begin() + std::min<unsigned>(nb, p->role.size()), role);
    // Dependency edges from the innermost function or type defined around the reference.
    if (!p->owner.empty() && (k == CXCursor_CallExpr || k == CXCursor_TypeRef || k == CXCursor_TemplateRef)) {
      CXCursor r = clang_getCursorReferenced(c);
      const CXCursorKind rk = clang_Cursor_isNull(r) ? CXCursor_InvalidCode : clang_getCursorKind(r);
      const char kind = k == CXCursor_CallExpr ? (is_function(rk) ? 'c' : 0) : (is_type(rk) ? 't' : 0);
      if (kind) {
        Edge e{p->owner.back(), qualified(r), kind};
        if (e.from != e.to) p->edges.insert(std::move(e));
      }
    }
    owns = (is_function(k) || is_type(k)) && clang_isCursorDefinition(c);
    if (owns) p->owner.push_back(qualified(c));
  }
  const bool top = p->top;
  p->top = top && (k == CXCursor_Namespace || k == CXCursor_LinkageSpec);
  ++p->level;
  clang_visitChildren(c, visit, d);
  --p->level;
  p->top = top;
  if (owns) p->owner.pop_back();
  return CXChildVisit_Continue;
}

}  // namespace

Enriched enrich(const std::string& path, const std::string& content, const std::vector<std::string>& args,
                const std::vector<uint32_t>& token_bytes) {
  const size_t n = token_bytes.size();
  CXIndex index = clang_createIndex(0, 0);
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  CXUnsavedFile uf{path.c_str(), content.data(), static_cast<unsigned long>(content.size())};
  CXTranslationUnit tu = nullptr;
  CXErrorCode err = clang_parseTranslationUnit2(index, path.c_str(), argv.data(), static_cast<int>(argv.size()), &uf, 1,
                                                CXTranslationUnit_DetailedPreprocessingRecord, &tu);
  if (err != CXError_Success || !tu) {
    clang_disposeIndex(index);
    return unparsed(n, "libclang could not parse the file (error " + std::to_string(static_cast<int>(err)) + ")");
  }
  struct Guard {
    CXIndex i;
    CXTranslationUnit t;
    ~Guard() { clang_disposeTranslationUnit(t), clang_disposeIndex(i); }
  } guard{index, tu};
  for (unsigned i = 0, nd = clang_getNumDiagnostics(tu); i < nd; ++i) {
    CXDiagnostic dg = clang_getDiagnostic(tu, i);
    const bool error = clang_getDiagnosticSeverity(dg) >= CXDiagnostic_Error;
    std::string text;
    if (error) {
      CXString s = clang_formatDiagnostic(dg, CXDiagnostic_DisplaySourceLocation);
      text = clang_getCString(s);
      clang_disposeString(s);
    }
    clang_disposeDiagnostic(dg);
    if (error) return unparsed(n, text);
  }
  Paint p;
  p.file = clang_getFile(tu, path.c_str());
  if (!p.file) return unparsed(n, "libclang lost the main file");
  const size_t nb = content.size();
  p.cat.assign(nb, kOther);
  p.depth.assign(nb, 0);
  p.role.assign(nb, kNoRole);
  clang_visitChildren(clang_getTranslationUnitCursor(tu), visit, &p);

  // Lexical layer: literals, then preprocessor lines, then comments; bytes outside every clang
  // token (white space) are "other".
  std::vector<uint8_t> lexed(nb, 0);
  CXSourceRange all = clang_getRange(clang_getLocationForOffset(tu, p.file, 0),
                                     clang_getLocationForOffset(tu, p.file, static_cast<unsigned>(nb)));
  CXToken* toks = nullptr;
  unsigned nt = 0;
  clang_tokenize(tu, all, &toks, &nt);
  std::vector<std::pair<unsigned, unsigned>> comments, directives;
  unsigned last_line = 0;
  for (unsigned i = 0; i < nt; ++i) {
    CXSourceRange r = clang_getTokenExtent(tu, toks[i]);
    CXFile f;
    unsigned a, b, line;
    clang_getSpellingLocation(clang_getRangeStart(r), &f, &line, nullptr, &a);
    clang_getSpellingLocation(clang_getRangeEnd(r), &f, nullptr, nullptr, &b);
    b = std::min<unsigned>(b, nb);
    if (a >= b) continue;
    std::fill(lexed.begin() + a, lexed.begin() + b, 1);
    CXTokenKind k = clang_getTokenKind(toks[i]);
    if (k == CXToken_Comment) {
      comments.push_back({a, b});
      continue;  // a comment does not start a line's first token
    }
    if (k == CXToken_Literal) std::fill(p.cat.begin() + a, p.cat.begin() + b, kLiteral);
    if (k == CXToken_Punctuation && line != last_line && b == a + 1 && content[a] == '#') {
      unsigned e = a;  // to the end of the logical line
      while (e < nb && !(content[e] == '\n' && (e == 0 || content[e - 1] != '\\'))) ++e;
      directives.push_back({a, e});
    }
    last_line = line;
  }
  clang_disposeTokens(tu, toks, nt);
  for (auto [a, b] : directives) std::fill(p.cat.begin() + a, p.cat.begin() + b, kPreprocessor);
  for (auto [a, b] : comments) std::fill(p.cat.begin() + a, p.cat.begin() + b, kComment);

  // A top-level declaration starts at the comments right above it: each on its own line, only white
  // space between (a comment after code, "}  // namespace", stays with that code).
  auto blank = [&](unsigned a, unsigned b) {
    for (unsigned i = a; i < b; ++i)
      if (content[i] != ' ' && content[i] != '\t' && content[i] != '\n' && content[i] != '\r') return false;
    return true;
  };
  auto own_line = [&](unsigned a) {
    unsigned s = a;
    while (s > 0 && content[s - 1] != '\n') --s;
    return blank(s, a);
  };
  std::sort(comments.begin(), comments.end());
  for (unsigned& a : p.top_starts)
    for (auto it = std::lower_bound(comments.begin(), comments.end(), std::make_pair(a, 0u));
         it != comments.begin() && std::prev(it)->second <= a && blank(std::prev(it)->second, a) && own_line(std::prev(it)->first);)
      a = (--it)->first;
  std::sort(p.top_starts.begin(), p.top_starts.end());

  // Per token: the category of its first lexed byte (white space only: other), the depth there.
  Enriched out;
  out.parsed = true;
  out.category.resize(n);
  out.depth.resize(n);
  out.role.resize(n);
  out.edges.assign(p.edges.begin(), p.edges.end());
  size_t off = 0;
  auto next_top = p.top_starts.begin();
  for (size_t t = 0; t < n; ++t) {
    const size_t end = std::min(nb, off + token_bytes[t]);
    size_t at = off;
    while (at < end && !lexed[at]) ++at;
    out.category[t] = at < end ? p.cat[at] : static_cast<uint8_t>(kOther);
    out.depth[t] = off < nb ? p.depth[at < end ? at : off] : 0;
    out.role[t] = at < end ? p.role[at] : static_cast<uint8_t>(kNoRole);
    // The token holding a top-level start begins the declaration's chunk.
    bool starts = false;
    for (; next_top != p.top_starts.end() && *next_top < end; ++next_top) starts = true;
    if (starts && t > 0) out.boundaries.push_back(static_cast<uint32_t>(t));
    off = end;
  }
  return out;
}

#endif

}  // namespace slm::data
