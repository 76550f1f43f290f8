// FIM / IFIM / SRI transforms: the spec's tiny tests (§11, §12), invertibility on synthetic documents
// and on a real corpus (the compiler's libstdc++ tree), determinism, rates, doc-comment extraction,
// and the token encoding of specials.
#include "data/transforms.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <set>

#include "common/error.h"
#include "common/fs.h"
#include "test_util.h"

namespace {

using namespace slm;
using namespace slm::data;

// The specials of a segment list, in order.
std::vector<int32_t> specials_of(const Segments& s) {
  std::vector<int32_t> out;
  for (const Segment& g : s) {
    if (g.is_special()) out.push_back(g.special);
  }
  return out;
}

// Text between the n-th special and the next one (n = -1: before the first special).
std::string text_after(const Segments& s, int n) {
  std::string out;
  int seen = -1;
  for (const Segment& g : s) {
    if (g.is_special()) {
      ++seen;
    } else if (seen == n) {
      out += g.text;
    }
  }
  return out;
}

// Edge cases every transform must survive, plus seeded synthetic C++ files.
std::vector<std::string> synthetic_docs() {
  std::vector<std::string> docs = {
      "",
      "x",
      "\n",
      "\n\n\n",
      "int a;",
      "int a;\nint b;",
      "a\r\nb\r\n",
      "  \n\t\n",
      "/// @brief Only a comment at the end\n",
      "// héllo wörld, ünïcode ✓\nint größe = 1; // 日本語\n",
      "int f();\n/* MIDDLE CODE TO COMPLETE */\nint g();\n/* MIDDLE CODE TO COMPLETE */\n",
      std::string("bin\0ary\n\xff\xfe\n", 11),
  };
  for (uint64_t s = 0; s < 40; ++s) docs.push_back(test::synthetic_cpp(s, 1 + static_cast<int>(s % 6)));
  docs.push_back(test::random_bytes(7, 3000));
  return docs;
}

// Every transform configuration the tests exercise, each applied unconditionally.
struct Config {
  std::string name;
  std::function<Segments(const std::string&, uint64_t)> apply;
};
std::vector<Config> configs() {
  std::vector<Config> c;
  for (FimSplit split : {FimSplit::Chars, FimSplit::Lines}) {
    FimOptions f = FimOptions::from(test::module_args("fim"));
    f.split = split;
    c.push_back({std::string("fim-") + fim_split_name(split), [f](const std::string& d, uint64_t s) { return fim(d, f, s); }});
    IfimOptions i = IfimOptions::from(test::module_args("ifim"));
    i.split = split;
    c.push_back({std::string("ifim-") + fim_split_name(split), [i](const std::string& d, uint64_t s) {
                   std::optional<Segments> r = ifim(d, i, s);
                   return r ? *r : Segments{};
                 }});
  }
  IfimOptions capped = IfimOptions::from(test::module_args("ifim"));
  capped.max_middle_lines = 3;
  c.push_back({"ifim-capped", [capped](const std::string& d, uint64_t s) {
                 std::optional<Segments> r = ifim(d, capped, s);
                 return r ? *r : Segments{};
               }});
  for (int ctx : {0, 3, 10}) {
    SriOptions o = SriOptions::from(test::module_args("sri"));
    o.context_lines = ctx;
    c.push_back({"sri-ctx" + std::to_string(ctx), [o](const std::string& d, uint64_t s) { return sri(d, o, s); }});
  }
  return c;
}

// invert(segs) == doc, or why not. An empty Segments (IFIM without a comment) is skipped.
testing::AssertionResult round_trips(const std::string& doc, const Segments& segs) {
  if (segs.empty() && !doc.empty()) return testing::AssertionSuccess();
  std::string back = invert(segs);
  if (back == doc) return testing::AssertionSuccess();
  size_t i = 0;
  while (i < back.size() && i < doc.size() && back[i] == doc[i]) ++i;
  return testing::AssertionFailure() << "inverted " << back.size() << " bytes vs " << doc.size()
                                     << ", first difference at byte " << i;
}

TEST(Fim, PrefixMiddleSuffixConcatenateToTheDocument) {
  for (const std::string& doc : synthetic_docs()) {
    for (FimSplit split : {FimSplit::Chars, FimSplit::Lines}) {
      for (uint64_t seed = 0; seed < 50; ++seed) {
        FimOptions o = FimOptions::from(test::module_args("fim"));
        o.split = split;
        o.spm_rate = 0;  // PSM: P, S and M are each one span between the sentinels
        Segments s = fim(doc, o, seed);
        ASSERT_EQ(specials_of(s), (std::vector<int32_t>{TOK_FIM_PREFIX, TOK_FIM_SUFFIX, TOK_FIM_MIDDLE}));
        std::string p = text_after(s, 0), suf = text_after(s, 1), m = text_after(s, 2);
        ASSERT_EQ(p + m + suf, doc) << "seed " << seed;
        if (split == FimSplit::Lines) {  // cuts at line starts
          EXPECT_TRUE(p.empty() || p.back() == '\n' || p.size() == doc.size());
          EXPECT_TRUE(m.empty() || m.back() == '\n' || suf.empty());
        }
      }
    }
  }
}

TEST(Fim, SpmLayoutPutsPrefixAndMiddleAfterTheMiddleSentinel) {
  std::string doc = test::synthetic_cpp(3, 4);
  for (uint64_t seed = 0; seed < 200; ++seed) {
    FimOptions o = FimOptions::from(test::module_args("fim"));
    o.spm_rate = 1;
    Segments s = fim(doc, o, seed);
    ASSERT_EQ(s[0].special, TOK_FIM_PREFIX);
    ASSERT_EQ(s[1].special, TOK_FIM_SUFFIX) << "SPM has no text between PREFIX and SUFFIX";
    std::string suf = text_after(s, 1), pm = text_after(s, 2);
    ASSERT_EQ(pm + suf, doc);
  }
  // fim_layout keeps P and M as separate segments in SPM (each tokenized on its own, as in the paper).
  Segments l = fim_layout("P", "M", "S", true);
  EXPECT_EQ(l, (Segments{Segment::token(TOK_FIM_PREFIX), Segment::token(TOK_FIM_SUFFIX), Segment::str("S"),
                         Segment::token(TOK_FIM_MIDDLE), Segment::str("P"), Segment::str("M")}));
}

TEST(Fim, CharSplitsNeverCutAUtf8Sequence) {
  std::string doc;
  for (int i = 0; i < 200; ++i) doc += "é✓日本\n";
  for (uint64_t seed = 0; seed < 500; ++seed) {
    for (const Segment& g : fim(doc, FimOptions::from(test::module_args("fim")), seed)) {
      if (g.is_special()) continue;
      ASSERT_NE(static_cast<unsigned char>(g.text[0]) & 0xC0, 0x80) << "seed " << seed;
    }
  }
}

TEST(Transforms, InvertRebuildsSyntheticDocumentsForThousandsOfSeeds) {
  std::vector<std::string> docs = synthetic_docs();
  std::vector<Config> cs = configs();
  int checked = 0;
  for (uint64_t seed = 0; seed < 3000; ++seed) {
    const std::string& doc = docs[seed % docs.size()];
    for (const Config& c : cs) {
      ASSERT_TRUE(round_trips(doc, c.apply(doc, seed))) << c.name << " seed " << seed << " doc #" << seed % docs.size();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3000 * static_cast<int>(cs.size()));
}

// Every C++ source and header of the compiler's standard library tree: real files with real comments.
std::vector<std::string> real_corpus_files(size_t cap) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator("/usr/include/c++", ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string ext = it->path().extension().string();
    // Extension-less files here are the standard headers themselves (<vector>, <map>, ...).
    if (ext == ".h" || ext == ".hpp" || ext == ".cc" || ext == ".cpp" || ext == ".tcc" || ext.empty()) {
      files.push_back(it->path().string());
    }
  }
  std::sort(files.begin(), files.end());
  if (files.size() > cap) files.resize(cap);
  return files;
}

TEST(Transforms, InvertRebuildsEveryFileOfARealCorpus) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> files = real_corpus_files(1500);
  ASSERT_GE(files.size(), 100u) << "expected the libstdc++ headers under /usr/include/c++ (g++ is a build dependency)";
  std::vector<Config> cs = configs();
  size_t documented = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    std::string doc = fs::read_file(files[f]);
    for (const Config& c : cs) {
      for (uint64_t seed : {f, f * 7919 + 13, f * 104729 + 7}) {
        Segments s = c.apply(doc, seed);
        ASSERT_TRUE(round_trips(doc, s)) << c.name << " seed " << seed << " " << files[f];
        if (c.name == "ifim-lines" && !s.empty()) ++documented;
      }
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[corpus] %zu files x %zu configs x 3 seeds in %.1f s; IFIM found a doc comment in %zu of %zu\n",
              files.size(), cs.size(), secs, documented / 3, files.size());
  EXPECT_GT(documented, files.size() / 4) << "libstdc++ is full of Doxygen comments; IFIM should find them";
}

TEST(Transforms, SameSeedSameResultDifferentSeedsDiffer) {
  TransformSet set;
  set.fim = FimOptions{0.3, 0.5, FimSplit::Chars};
  set.ifim = IfimOptions::from(test::module_args("ifim"));
  set.ifim->rate = 0.3;
  set.sri = SriOptions::from(test::module_args("sri"));
  set.sri->rate = 0.3;
  std::string doc = test::synthetic_cpp(11, 6);
  std::set<std::string> distinct;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Transformed a = transform(doc, set, seed), b = transform(doc, set, seed);
    ASSERT_EQ(a.segments, b.segments);
    ASSERT_EQ(a.drawn, b.drawn);
    ASSERT_EQ(a.drawn, draw_transform(set, seed));
    std::string key;
    for (const Segment& g : a.segments) key += g.is_special() ? "<" + std::to_string(g.special) + ">" : g.text;
    distinct.insert(key);
  }
  EXPECT_GT(distinct.size(), 100u) << "different seeds should give different samples";
}

// |count - n p| within 5 standard deviations.
void expect_rate(uint64_t count, uint64_t n, double p, const char* what) {
  double sd = std::sqrt(n * p * (1 - p));
  EXPECT_NEAR(static_cast<double>(count), n * p, 5 * sd + 1) << what;
}

TEST(Transforms, RatesAreHonored) {
  TransformSet set;
  set.fim = FimOptions{0.3, 0.25, FimSplit::Chars};
  set.ifim = IfimOptions::from(test::module_args("ifim"));
  set.ifim->rate = 0.2;
  set.sri = SriOptions::from(test::module_args("sri"));
  set.sri->rate = 0.1;
  validate(set);
  std::string doc = test::synthetic_cpp(5, 8);  // has @brief comments: IFIM never falls back here
  const uint64_t n = 20000;
  TransformStats stats;
  uint64_t spm = 0;
  for (uint64_t seed = 0; seed < n; ++seed) {
    Transformed t = transform(doc, set, seed * 0x9E3779B97F4A7C15ull);
    stats.add(t);
    if (t.applied == TransformKind::Fim && t.segments[1].special == TOK_FIM_SUFFIX) ++spm;
  }
  EXPECT_EQ(stats.docs, n);
  EXPECT_EQ(stats.ifim_no_comment, 0u);
  expect_rate(stats.applied[int(TransformKind::Fim)], n, 0.3, "fim rate");
  expect_rate(stats.applied[int(TransformKind::Ifim)], n, 0.2, "ifim rate");
  expect_rate(stats.applied[int(TransformKind::Sri)], n, 0.1, "sri rate");
  expect_rate(stats.applied[int(TransformKind::None)], n, 0.4, "untransformed share");
  expect_rate(spm, stats.applied[int(TransformKind::Fim)], 0.25, "spm_rate among FIM samples");
}

TEST(Transforms, ValidateRejectsBadOptions) {
  TransformSet set;
  set.fim = FimOptions{0.7, 0.5, FimSplit::Chars};
  set.sri = SriOptions::from(test::module_args("sri"));  // 0.7 + 0.5 > 1
  try {
    validate(set);
    FAIL() << "rates summing above 1 were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[transforms]"), std::string::npos) << e.what();
  }
  set.sri.reset();
  set.fim->spm_rate = 1.5;
  EXPECT_THROW(validate(set), Error);
  set.fim->spm_rate = 0.5;
  EXPECT_NO_THROW(validate(set));
  EXPECT_EQ(parse_fim_split("lines"), FimSplit::Lines);
  EXPECT_THROW(parse_fim_split("words"), Error);
  EXPECT_THROW(invert({Segment::token(TOK_FIM_MIDDLE), Segment::str("x")}), Error);
  EXPECT_THROW(invert({Segment::str("a"), Segment::token(TOK_SRI_SEARCH), Segment::str("zz"),
                       Segment::token(TOK_SRI_DIVIDER), Segment::token(TOK_SRI_REPLACE)}),
               Error);
}

// --- IFIM -------------------------------------------------------------------------------------

// The instruction for the line `line` of `doc`, or "<none>".
std::string instruction_for(const std::string& doc, const std::string& line) {
  size_t at = doc.find(line);
  for (const DocComment& c : doc_comments(doc)) {
    if (c.line_begin <= at && at < c.line_end + 1) {
      EXPECT_EQ(doc.substr(c.line_begin, c.line_end - c.line_begin).find(line), 0u + (at - c.line_begin));
      return c.instruction;
    }
  }
  return "<none>";
}

TEST(Ifim, ExtractsDocCommentsDirectlyAboveALine) {
  EXPECT_EQ(instruction_for("/// @brief Adds two numbers.\n/// @param a first\nint add(int a, int b);\n", "int add"),
            "Adds two numbers.");
  EXPECT_EQ(instruction_for("/**\n * Computes the sum.\n *\n * Longer text.\n * @param x the input\n */\nint f(int x);\n",
                            "int f"),
            "Computes the sum.");
  EXPECT_EQ(instruction_for("/**\n * @brief Brief that\n *        wraps.\n *\n * Details.\n */\nvoid w();\n", "void w"),
            "Brief that wraps.");
  EXPECT_EQ(instruction_for("// Returns the answer\n// to everything.\nint g();\n", "int g"),
            "Returns the answer to everything.");
  EXPECT_EQ(instruction_for("//! Qt style.\nvoid q();\n", "void q"), "Qt style.");
  EXPECT_EQ(instruction_for("/*! Bang block. */\nvoid b();\n", "void b"), "Bang block.");
  EXPECT_EQ(instruction_for("/** One-liner. **/\nvoid o();\n", "void o"), "One-liner.");
  EXPECT_EQ(instruction_for("/* @brief Brief in a plain block. */\nint h();\n", "int h"), "Brief in a plain block.");
  EXPECT_EQ(instruction_for("  /// \\brief Backslash brief.\n  void m();\n", "void m"), "Backslash brief.");
  EXPECT_EQ(instruction_for("/** Block doc. */\n// Line doc.\nint w;\n", "int w"), "Line doc.");
  EXPECT_EQ(instruction_for("struct S {\n  /// Member doc.\n  int x;\n};\n", "int x"), "Member doc.");
  EXPECT_EQ(instruction_for("// Windows line endings.\r\nint crlf;\r\n", "int crlf"), "Windows line endings.");

  EXPECT_EQ(instruction_for("/* plain block, no brief */\nint h();\n", "int h"), "<none>");
  EXPECT_EQ(instruction_for("/// Separated by a blank line.\n\nint s();\n", "int s"), "<none>");
  EXPECT_EQ(instruction_for("int x; // trailing, not documentation\nint y;\n", "int y"), "<none>");
  EXPECT_EQ(instruction_for("// ----------------\nint z;\n", "int z"), "<none>");
  EXPECT_EQ(instruction_for("const char* s = \"// not a comment\";\nint t;\n", "int t"), "<none>");
  EXPECT_EQ(instruction_for("/** doc */ int same_line;\nint next;\n", "int next"), "<none>");
  EXPECT_TRUE(doc_comments("int a;\n/// comment at the end of the file\n").empty());
  std::string long_comment = "// " + std::string(500, 'x') + "\nint l;\n";
  EXPECT_TRUE(doc_comments(long_comment, 400).empty()) << "a comment longer than the cap is not an instruction";
  EXPECT_EQ(doc_comments(long_comment, 1000).size(), 1u);
}

TEST(Ifim, MiddleStartsAtTheDocumentedLineAndCarriesItsComment) {
  std::string doc =
      "#include <vector>\n\nnamespace n {\n\nint helper(int x) { return x; }\n\n"
      "/// @brief Doubles a value.\nint twice(int x) {\n  return 2 * x;\n}\n\nint tail() { return 0; }\n}  // namespace n\n";
  size_t documented = doc.find("int twice");
  for (FimSplit split : {FimSplit::Lines, FimSplit::Chars}) {
    for (uint64_t seed = 0; seed < 300; ++seed) {
      IfimOptions o = IfimOptions::from(test::module_args("ifim"));
      o.split = split;
      o.spm_rate = 0;
      std::optional<Segments> s = ifim(doc, o, seed);
      ASSERT_TRUE(s);
      ASSERT_EQ(specials_of(*s), (std::vector<int32_t>{TOK_FIM_PREFIX, TOK_FIM_SUFFIX, TOK_FIM_INSTRUCTION,
                                                       TOK_FIM_MIDDLE}));
      std::string p = text_after(*s, 0), suf = text_after(*s, 1), ins = text_after(*s, 2), m = text_after(*s, 3);
      EXPECT_EQ(ins, "Doubles a value.");
      ASSERT_EQ(p + m + suf, doc) << "the instruction is a copy: P + M + S is still the document";
      if (split == FimSplit::Lines) {
        EXPECT_EQ(p.size(), documented) << "seed " << seed;
      } else {
        EXPECT_GE(p.size(), documented);
        EXPECT_LT(p.size(), doc.find('\n', documented));
      }
      EXPECT_NE(p.find("/// @brief Doubles a value.\n"), std::string::npos) << "the comment stays in P";
    }
  }
  IfimOptions capped = IfimOptions::from(test::module_args("ifim"));
  capped.max_middle_lines = 2;
  capped.spm_rate = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    std::string m = text_after(*ifim(doc, capped, seed), 3);
    EXPECT_LE(std::count(m.begin(), m.end(), '\n'), 2) << m;
  }
}

TEST(Ifim, DocumentWithoutCommentFallsBackToPlainFim) {
  std::string doc = "int a() { return 1; }\nint b() { return 2; }\n";
  EXPECT_FALSE(ifim(doc, IfimOptions::from(test::module_args("ifim")), 1));
  TransformSet as_ifim, as_fim;
  as_ifim.ifim = IfimOptions::from(test::module_args("ifim"));
  as_ifim.ifim->rate = 1;
  as_fim.fim = FimOptions{1, as_ifim.ifim->spm_rate, as_ifim.ifim->split};
  TransformStats stats;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    Transformed t = transform(doc, as_ifim, seed);
    stats.add(t);
    EXPECT_EQ(t.drawn, TransformKind::Ifim);
    EXPECT_EQ(t.applied, TransformKind::Fim);
    EXPECT_EQ(t.segments, transform(doc, as_fim, seed).segments) << "the fallback is FIM with the same options";
  }
  EXPECT_EQ(stats.ifim_no_comment, 50u);
}

TEST(Ifim, EmptyInstructionIsTheFimSequencePlusTheInstructionSentinel) {
  const std::string empty;
  for (bool spm : {false, true}) {
    for (auto [p, m, s] : {std::array<const char*, 3>{"int f() {", "return 1;", "}\n"}, {"", "x", ""}, {"a", "", "b"}}) {
      Segments with = fim_layout(p, m, s, spm, &empty);
      Segments plain = fim_layout(p, m, s, spm);
      auto mid = std::find(plain.begin(), plain.end(), Segment::token(TOK_FIM_MIDDLE));
      plain.insert(mid, Segment::token(TOK_FIM_INSTRUCTION));
      EXPECT_EQ(with, plain);
    }
  }
}

// --- SRI --------------------------------------------------------------------------------------

TEST(Sri, SearchMatchesOnceAndReplaceRebuildsTheFile) {
  std::string doc = test::synthetic_cpp(21, 8);
  for (uint64_t seed = 0; seed < 500; ++seed) {
    SriOptions o = SriOptions::from(test::module_args("sri"));
    Segments s = sri(doc, o, seed);
    ASSERT_EQ(specials_of(s), (std::vector<int32_t>{TOK_SRI_SEARCH, TOK_SRI_DIVIDER, TOK_SRI_REPLACE}));
    std::string prompt = text_after(s, -1), search = text_after(s, 0), replace = text_after(s, 1);
    size_t at = prompt.find(search);
    ASSERT_NE(at, std::string::npos);
    ASSERT_EQ(prompt.find(search, at + 1), std::string::npos) << "SEARCH must match exactly one location";
    EXPECT_EQ(std::count(search.begin(), search.end(), '\n') + (search.back() != '\n'),
              std::min<long>(o.context_lines + 1, std::count(prompt.begin(), prompt.end(), '\n')))
        << "the region is the marker line plus context_lines of context";
    ASSERT_NE(search.find(kSriMarker), std::string::npos);
    EXPECT_EQ(prompt.find(kSriMarker), prompt.rfind(kSriMarker));
    ASSERT_EQ(prompt.substr(0, at) + replace + prompt.substr(at + search.size()), doc);
    // The marker keeps the middle line's indentation.
    size_t mk = prompt.find(kSriMarker);
    size_t line = prompt.rfind('\n', mk) + 1;
    EXPECT_EQ(prompt.substr(line, mk - line), doc.substr(line, mk - line));
  }
}

TEST(Sri, RegionWidensWhenTheFileAlreadyContainsTheMarker) {
  // The marker's line repeats, so SEARCH must grow until it is unique.
  std::string doc;
  for (int i = 0; i < 30; ++i) doc += "x;\n" + std::string(kSriMarker) + "\n";
  SriOptions o = SriOptions::from(test::module_args("sri"));
  o.context_lines = 0;
  int widened = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Segments s = sri(doc, o, seed);
    std::string prompt = text_after(s, -1), search = text_after(s, 0);
    size_t at = prompt.find(search);
    ASSERT_EQ(prompt.find(search, at + 1), std::string::npos);
    widened += search.find('\n') != search.rfind('\n');
    ASSERT_EQ(invert(s), doc);
  }
  EXPECT_GT(widened, 100);
}

// --- Tokens -----------------------------------------------------------------------------------

TEST(Tokens, SpecialsEncodeToTheirIdsAndTextThroughTheTokenizer) {
  Tokenizer tok;  // bytes + specials
  Segments segs = {Segment::token(TOK_FIM_PREFIX), Segment::str("int a;"), Segment::token(TOK_FIM_SUFFIX),
                   Segment::token(TOK_FIM_INSTRUCTION), Segment::str("<|fim_middle|>"), Segment::token(TOK_FIM_MIDDLE),
                   Segment::token(TOK_SRI_SEARCH), Segment::token(TOK_SRI_DIVIDER), Segment::token(TOK_SRI_REPLACE)};
  std::vector<int32_t> ids;
  encode_segments(tok, segs, ids);
  std::vector<int32_t> want = {TOK_FIM_PREFIX};
  tok.encode("int a;", want);
  want.insert(want.end(), {TOK_FIM_SUFFIX, TOK_FIM_INSTRUCTION});
  tok.encode("<|fim_middle|>", want);
  want.insert(want.end(), {TOK_FIM_MIDDLE, TOK_SRI_SEARCH, TOK_SRI_DIVIDER, TOK_SRI_REPLACE});
  EXPECT_EQ(ids, want);
  EXPECT_EQ(std::count_if(ids.begin(), ids.end(), [](int32_t id) { return id < N_SPECIAL; }), 7)
      << "a special's spelling inside text is bytes, never the special";
  EXPECT_EQ(TOK_FIM_PREFIX, 3);
  EXPECT_EQ(TOK_FIM_INSTRUCTION, 6);
  EXPECT_EQ(TOK_SRI_REPLACE, 9);
}

TEST(Tokens, TransformTokensMatchesTheSegmentsAndPassesUntransformedIdsThrough) {
  Tokenizer tok;
  TransformSet set;
  set.fim = FimOptions{0.4, 0.5, FimSplit::Lines};
  set.sri = SriOptions::from(test::module_args("sri"));
  set.sri->rate = 0.3;
  std::string doc = test::synthetic_cpp(9, 3);
  std::vector<int32_t> doc_ids = tok.encode(doc);
  int untouched = 0;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    std::vector<int32_t> from_text = transform_tokens(tok, doc, set, seed);
    std::vector<int32_t> want;
    encode_segments(tok, transform(doc, set, seed).segments, want);
    EXPECT_EQ(from_text, want);
    EXPECT_EQ(transform_tokens(tok, doc_ids, set, seed), from_text);
    untouched += from_text == doc_ids;
  }
  EXPECT_GT(untouched, 10);
  set.fim->rate = 1;  // always transformed, so the ids are decoded and checked
  EXPECT_THROW(transform_tokens(tok, std::vector<int32_t>{TOK_BOS, 100}, set, 0), Error);
}

// The catalog's data modules reach the loader through one registry, with the catalog's defaults.
TEST(Transforms, TransformSetFromResolvedModules) {
  TransformSet t = transform_set({test::module_args("fim", {{"rate", "0.3"}}), test::module_args("sri"),
                                  test::module_args("mhc")});
  ASSERT_TRUE(t.fim);
  EXPECT_FALSE(t.ifim);
  ASSERT_TRUE(t.sri);
  EXPECT_EQ(t.fim->rate, 0.3);
  EXPECT_EQ(t.fim->spm_rate, 0.5);
  EXPECT_EQ(t.fim->split, FimSplit::Chars);
  EXPECT_EQ(t.sri->context_lines, 10);
  EXPECT_EQ(IfimOptions::from(test::module_args("ifim")).split, FimSplit::Lines);
  EXPECT_EQ(find_data_module("mhc"), nullptr);
  for (auto& m : data_modules()) EXPECT_STREQ(catalog::find(m.name)->family, "data") << m.name;
}

}  // namespace
