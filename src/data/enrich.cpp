#include "data/enrich.h"

#include <algorithm>

#ifdef SLMLAB_HAVE_LIBCLANG
#include <clang-c/Index.h>
#endif

namespace slm::data {

const char* category_name(int c) {
  static const char* names[kCategories] = {"unknown", "declaration", "statement",  "expression", "type",
                                           "preprocessor", "comment", "literal", "other"};
  return c >= 0 && c < kCategories ? names[c] : "?";
}

namespace {

Enriched unparsed(size_t n, std::string why) {
  Enriched e;
  e.error = std::move(why);
  e.category.assign(n, kUnknown);
  e.depth.assign(n, 0);
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

struct Paint {
  CXFile file;
  std::vector<uint8_t> cat, depth;  // per byte
  int level = 0;
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
  unsigned a, b;
  const bool here = offsets(clang_getCursorExtent(c), p->file, a, b);
  if (here) {
    b = std::min<unsigned>(b, p->cat.size());
    const uint8_t cat = category_of(clang_getCursorKind(c));
    const uint8_t dep = static_cast<uint8_t>(std::min(p->level + 1, 255));
    for (unsigned i = a; i < b; ++i) {
      if (cat != kUnknown) p->cat[i] = cat;
      p->depth[i] = dep;
    }
  }
  ++p->level;
  clang_visitChildren(c, visit, d);
  --p->level;
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

  // Per token: the category of its first lexed byte (white space only: other), the depth there.
  Enriched out;
  out.parsed = true;
  out.category.resize(n);
  out.depth.resize(n);
  size_t off = 0;
  for (size_t t = 0; t < n; ++t) {
    const size_t end = std::min(nb, off + token_bytes[t]);
    size_t at = off;
    while (at < end && !lexed[at]) ++at;
    out.category[t] = at < end ? p.cat[at] : static_cast<uint8_t>(kOther);
    out.depth[t] = off < nb ? p.depth[at < end ? at : off] : 0;
    off = end;
  }
  return out;
}

#endif

}  // namespace slm::data
