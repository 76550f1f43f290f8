#include "data/lexer.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace std::string_literals;
using slm::lex::Kind;
using slm::lex::Piece;
using V = std::vector<std::string>;
using slm::test::random_bytes;

namespace {

// "kind:text" for every piece, so expectations read like the source.
V lexed(std::string_view src) {
  V r;
  for (const Piece& p : slm::lex::lex(src)) {
    r.push_back(std::string(slm::lex::kind_name(p.kind)) + ":" + std::string(src.substr(p.begin, p.len)));
  }
  return r;
}

V chunks(std::string_view src) {
  std::vector<std::string_view> out;
  slm::lex::pretokenize(src, out);
  return V(out.begin(), out.end());
}

// Pieces are non-empty, contiguous and cover src exactly.
testing::AssertionResult is_partition(std::string_view src, const std::vector<Piece>& ps) {
  size_t pos = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].len == 0) return testing::AssertionFailure() << "empty piece #" << i << " at " << pos;
    if (ps[i].begin != pos) return testing::AssertionFailure() << "piece #" << i << " starts at " << ps[i].begin << ", want " << pos;
    pos += ps[i].len;
  }
  if (pos != src.size()) return testing::AssertionFailure() << "pieces cover " << pos << " of " << src.size() << " bytes";
  return testing::AssertionSuccess();
}

// Chunks are non-empty views into src, contiguous, and cover it exactly.
testing::AssertionResult is_partition(std::string_view src, const std::vector<std::string_view>& cs) {
  size_t pos = 0;
  for (size_t i = 0; i < cs.size(); ++i) {
    if (cs[i].empty()) return testing::AssertionFailure() << "empty chunk #" << i << " at " << pos;
    if (cs[i].data() != src.data() + pos) return testing::AssertionFailure() << "chunk #" << i << " is not at " << pos;
    pos += cs[i].size();
  }
  if (pos != src.size()) return testing::AssertionFailure() << "chunks cover " << pos << " of " << src.size() << " bytes";
  return testing::AssertionSuccess();
}

bool all_of(std::string_view t, const char* set) { return t.find_first_not_of(set) == std::string_view::npos; }

// Byte-level facts each kind must satisfy whatever the input.
testing::AssertionResult kinds_consistent(std::string_view src, const std::vector<Piece>& ps) {
  for (const Piece& p : ps) {
    std::string_view t = src.substr(p.begin, p.len);
    bool ok = true;
    switch (p.kind) {
      case Kind::Space: ok = all_of(t, " \t\v\f"); break;
      case Kind::Newline: ok = (t[0] == '\n' || t[0] == '\r') && all_of(t, " \t\v\f\r\n"); break;
      case Kind::Splice: ok = t == "\\\n" || t == "\\\r\n" || t == "\\\r"; break;
      case Kind::Directive: ok = t[0] == '#' && t.size() >= 2; break;
      case Kind::Comment: ok = t.substr(0, 2) == "//" || t.substr(0, 2) == "/*"; break;
      case Kind::Punct: ok = t.size() <= 3; break;
      case Kind::Number: ok = (t[0] >= '0' && t[0] <= '9') || t[0] == '.'; break;
      case Kind::String: ok = t.find('"') != std::string_view::npos; break;
      case Kind::Char: ok = t.find('\'') != std::string_view::npos; break;
      case Kind::Identifier: ok = t.find_first_of(" \t\r\n\"'/#") == std::string_view::npos; break;
    }
    if (!ok) return testing::AssertionFailure() << slm::lex::kind_name(p.kind) << " piece at " << p.begin << " is malformed";
  }
  return testing::AssertionSuccess();
}

// Every regular file under /usr/include/c++, read once.
const std::vector<std::pair<std::string, std::string>>& system_headers() {
  static const auto files = [] {
    std::vector<std::pair<std::string, std::string>> r;
    std::error_code ec;
    if (!std::filesystem::is_directory("/usr/include/c++", ec)) return r;
    for (const auto& e : std::filesystem::recursive_directory_iterator("/usr/include/c++")) {
      if (!e.is_regular_file()) continue;
      std::ifstream in(e.path(), std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      r.emplace_back(e.path().string(), ss.str());
    }
    return r;
  }();
  return files;
}

// Random text built from the fragments that drive the lexer's decisions, so every rule and its
// unterminated form gets exercised far more often than with uniform bytes.
std::string random_cpp_soup(uint32_t seed, size_t len) {
  static const char* frags[] = {"R\"", "u8R\"", "LR\"", "u8", "L", "\"", "'", "/", "*", "//", "/*", "*/",
                                "\\", "\n", "\r", "\r\n", " ", "\t", "#", "##", "(", ")", "d(", ")d\"",
                                "a", "x", "1", "0x", ".", "e", "+", "-", "<", "=", ">", ":", "_", "\xff",
                                "\xc3\xa9", "include", "define"};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < len) s += frags[rng() % (sizeof frags / sizeof *frags)];
  s += std::string(1, '\0');
  return s;
}

}  // namespace

TEST(Lexer, KindNames) {
  EXPECT_STREQ(slm::lex::kind_name(Kind::Identifier), "identifier");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Number), "number");
  EXPECT_STREQ(slm::lex::kind_name(Kind::String), "string");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Char), "char");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Comment), "comment");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Directive), "directive");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Punct), "punct");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Newline), "newline");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Space), "space");
  EXPECT_STREQ(slm::lex::kind_name(Kind::Splice), "splice");
}

TEST(Lexer, EmptyInput) {
  EXPECT_TRUE(slm::lex::lex("").empty());
  EXPECT_TRUE(chunks("").empty());
}

TEST(Lexer, Declaration) {
  EXPECT_EQ(lexed("int x = 1;"), (V{"identifier:int", "space: ", "identifier:x", "space: ", "punct:=", "space: ",
                                    "number:1", "punct:;"}));
  EXPECT_EQ(lexed("$a _b \xc3\xa9t\xc3\xa9 a1"),
            (V{"identifier:$a", "space: ", "identifier:_b", "space: ", "identifier:\xc3\xa9t\xc3\xa9", "space: ",
               "identifier:a1"}));
}

TEST(Lexer, RawStringCustomDelimiter) {
  EXPECT_EQ(lexed("auto s = R\"xy(a)\" b \"c\" \n )xy\";"),
            (V{"identifier:auto", "space: ", "identifier:s", "space: ", "punct:=", "space: ",
               "string:R\"xy(a)\" b \"c\" \n )xy\"", "punct:;"}));
  // No escapes inside a raw string: the backslash does not protect the closing quote.
  EXPECT_EQ(lexed("R\"(a\\)\" x"), (V{"string:R\"(a\\)\"", "space: ", "identifier:x"}));
  // The longest allowed delimiter is 16 bytes, and it may contain quotes.
  EXPECT_EQ(lexed("R\"0123456789abcdef(x)0123456789abcdef\""), (V{"string:R\"0123456789abcdef(x)0123456789abcdef\""}));
  EXPECT_EQ(lexed("R\"\"(x)\"\"!"), (V{"string:R\"\"(x)\"\"", "punct:!"}));
}

TEST(Lexer, RawStringPrefixes) {
  EXPECT_EQ(lexed("u8R\"(a)\" uR\"(b)\" UR\"(c)\" LR\"(d)\" R\"(e)\"s"),
            (V{"string:u8R\"(a)\"", "space: ", "string:uR\"(b)\"", "space: ", "string:UR\"(c)\"", "space: ",
               "string:LR\"(d)\"", "space: ", "string:R\"(e)\"s"}));
}

TEST(Lexer, IdentifierEndingInRIsNotAPrefix) {
  EXPECT_EQ(lexed("fooR\"x\""), (V{"identifier:fooR", "string:\"x\""}));
  EXPECT_EQ(lexed("xR\"(a)\""), (V{"identifier:xR", "string:\"(a)\""}));
  EXPECT_EQ(lexed("U8R\"(a)\""), (V{"identifier:U8R", "string:\"(a)\""}));
  EXPECT_EQ(lexed("u8x\"y\" Lx'c'"), (V{"identifier:u8x", "string:\"y\"", "space: ", "identifier:Lx", "char:'c'"}));
  EXPECT_EQ(lexed("R'a'"), (V{"identifier:R", "char:'a'"}));
}

TEST(Lexer, MalformedRawDelimiterFallsBackToIdentifier) {
  EXPECT_EQ(lexed("R\"a b(x)a b\""), (V{"identifier:R", "string:\"a b(x)a b\""}));
  EXPECT_EQ(lexed("R\"0123456789abcdefg(x)0123456789abcdefg\""),
            (V{"identifier:R", "string:\"0123456789abcdefg(x)0123456789abcdefg\""}));
  EXPECT_EQ(lexed("uR\"abc"), (V{"identifier:uR", "string:\"abc"}));
}

TEST(Lexer, EncodingPrefixesAndSuffixes) {
  EXPECT_EQ(lexed("u8\"a\" u\"b\" U\"c\" L\"d\""),
            (V{"string:u8\"a\"", "space: ", "string:u\"b\"", "space: ", "string:U\"c\"", "space: ", "string:L\"d\""}));
  EXPECT_EQ(lexed("\"abc\"s \"x\"_sv u8\"y\"_z \"a\" s"),
            (V{"string:\"abc\"s", "space: ", "string:\"x\"_sv", "space: ", "string:u8\"y\"_z", "space: ", "string:\"a\"",
               "space: ", "identifier:s"}));
  EXPECT_EQ(lexed("u8'a' u'b' U'c' L'd' '\\'' 'x'_c"),
            (V{"char:u8'a'", "space: ", "char:u'b'", "space: ", "char:U'c'", "space: ", "char:L'd'", "space: ",
               "char:'\\''", "space: ", "char:'x'_c"}));
  EXPECT_EQ(lexed("\"a\\\"b\" c"), (V{"string:\"a\\\"b\"", "space: ", "identifier:c"}));
}

TEST(Lexer, Numbers) {
  EXPECT_EQ(lexed("1'000'000 0b1010'0101 0x1F 0xFFull 1.5e-3f 0x1p-3 .5 1E+10 42_km 3.14L 1.0e+5_kg 0x1.8P+1L"),
            (V{"number:1'000'000", "space: ", "number:0b1010'0101", "space: ", "number:0x1F", "space: ",
               "number:0xFFull", "space: ", "number:1.5e-3f", "space: ", "number:0x1p-3", "space: ", "number:.5",
               "space: ", "number:1E+10", "space: ", "number:42_km", "space: ", "number:3.14L", "space: ",
               "number:1.0e+5_kg", "space: ", "number:0x1.8P+1L"}));
  // A sign only continues a number right after an exponent letter.
  EXPECT_EQ(lexed("1+2-x"), (V{"number:1", "punct:+", "number:2", "punct:-", "identifier:x"}));
  EXPECT_EQ(lexed("a.b .x"), (V{"identifier:a", "punct:.", "identifier:b", "space: ", "punct:.", "identifier:x"}));
  // A quote after a number that is not a digit separator opens a char literal.
  EXPECT_EQ(lexed("f(1,'a')"), (V{"identifier:f", "punct:(", "number:1", "punct:,", "char:'a'", "punct:)"}));
  EXPECT_EQ(lexed("1'a'"), (V{"number:1'a", "char:'"}));
}

TEST(Lexer, PunctuatorsLongestMatch) {
  EXPECT_EQ(lexed("a<=>b->*c<<=d::e...f>>=g"),
            (V{"identifier:a", "punct:<=>", "identifier:b", "punct:->*", "identifier:c", "punct:<<=", "identifier:d",
               "punct:::", "identifier:e", "punct:...", "identifier:f", "punct:>>=", "identifier:g"}));
  EXPECT_EQ(lexed("p->q.*r<<s>>t<=u>=v==w!=x&&y||z"),
            (V{"identifier:p", "punct:->", "identifier:q", "punct:.*", "identifier:r", "punct:<<", "identifier:s",
               "punct:>>", "identifier:t", "punct:<=", "identifier:u", "punct:>=", "identifier:v", "punct:==",
               "identifier:w", "punct:!=", "identifier:x", "punct:&&", "identifier:y", "punct:||", "identifier:z"}));
  EXPECT_EQ(lexed("++--+=-=*=/=%=&=|=^=##:::"),
            (V{"punct:++", "punct:--", "punct:+=", "punct:-=", "punct:*=", "punct:/=", "punct:%=", "punct:&=",
               "punct:|=", "punct:^=", "punct:##", "punct:::", "punct::"}));
  EXPECT_EQ(lexed("...."), (V{"punct:...", "punct:."}));
  EXPECT_EQ(lexed(".."), (V{"punct:.", "punct:."}));
  // Bytes that are no C++ token are single-byte puncts.
  EXPECT_EQ(lexed("@`\x01\\x"s + '\0'), (V{"punct:@", "punct:`", "punct:\x01", "punct:\\", "identifier:x", "punct:"s + '\0'}));
}

TEST(Lexer, CommentMarkersInsideLiterals) {
  EXPECT_EQ(lexed("\"// no\" '/' \"/* no */\" x"),
            (V{"string:\"// no\"", "space: ", "char:'/'", "space: ", "string:\"/* no */\"", "space: ", "identifier:x"}));
  EXPECT_EQ(lexed("'\"' '//'"), (V{"char:'\"'", "space: ", "char:'//'"}));
}

TEST(Lexer, LiteralMarkersInsideComments) {
  EXPECT_EQ(lexed("// a \"b\nc"), (V{"comment:// a \"b", "newline:\n", "identifier:c"}));
  EXPECT_EQ(lexed("/* it's \"x */y"), (V{"comment:/* it's \"x */", "identifier:y"}));
  EXPECT_EQ(lexed("/*/ x */"), (V{"comment:/*/ x */"}));
  EXPECT_EQ(lexed("/**/a//b"), (V{"comment:/**/", "identifier:a", "comment://b"}));
}

TEST(Lexer, LineCommentContinuation) {
  EXPECT_EQ(lexed("// a \\\n b\nc"), (V{"comment:// a \\\n b", "newline:\n", "identifier:c"}));
  EXPECT_EQ(lexed("// a\\\r\n b\r\nc"), (V{"comment:// a\\\r\n b", "newline:\r\n", "identifier:c"}));
  EXPECT_EQ(lexed("// a\\ \nb"), (V{"comment:// a\\ ", "newline:\n", "identifier:b"}));
}

TEST(Lexer, DefineWithSplices) {
  EXPECT_EQ(lexed("#define M(x) \\\n  f(x); \\\r\n  g()\n"),
            (V{"directive:#define", "space: ", "identifier:M", "punct:(", "identifier:x", "punct:)", "space: ",
               "splice:\\\n", "space:  ", "identifier:f", "punct:(", "identifier:x", "punct:)", "punct:;", "space: ",
               "splice:\\\r\n", "space:  ", "identifier:g", "punct:(", "punct:)", "newline:\n"}));
  // A '#' at the start of a spliced line is the stringizing operator, not a directive.
  EXPECT_EQ(lexed("#define S(x) \\\n#x\n"),
            (V{"directive:#define", "space: ", "identifier:S", "punct:(", "identifier:x", "punct:)", "space: ",
               "splice:\\\n", "punct:#", "identifier:x", "newline:\n"}));
}

TEST(Lexer, Directives) {
  EXPECT_EQ(lexed("#include <vector>\n  #  define X\na # b\n#\n# 1 \"f\"\n## x"),
            (V{"directive:#include", "space: ", "punct:<", "identifier:vector", "punct:>", "newline:\n  ",
               "directive:#  define", "space: ", "identifier:X", "newline:\n", "identifier:a", "space: ", "punct:#",
               "space: ", "identifier:b", "newline:\n", "punct:#", "newline:\n", "punct:#", "space: ", "number:1",
               "space: ", "string:\"f\"", "newline:\n", "punct:##", "space: ", "identifier:x"}));
  EXPECT_EQ(lexed("\t#if X\r\n#endif"),
            (V{"space:\t", "directive:#if", "space: ", "identifier:X", "newline:\r\n", "directive:#endif"}));
  EXPECT_EQ(lexed("/**/#if"), (V{"comment:/**/", "punct:#", "identifier:if"}));
}

TEST(Lexer, Newlines) {
  EXPECT_EQ(lexed("a\r\nb\rc\r\n\r\n  d"),
            (V{"identifier:a", "newline:\r\n", "identifier:b", "newline:\r", "identifier:c", "newline:\r\n\r\n  ",
               "identifier:d"}));
  EXPECT_EQ(lexed("{\n\n    x;\n  \n\t}  \n"),
            (V{"punct:{", "newline:\n\n    ", "identifier:x", "punct:;", "newline:\n  \n\t", "punct:}", "space:  ",
               "newline:\n"}));
  EXPECT_EQ(lexed("a \t\v\fb"), (V{"identifier:a", "space: \t\v\f", "identifier:b"}));
}

TEST(Lexer, Unterminated) {
  EXPECT_EQ(lexed("\"abc\nx"), (V{"string:\"abc", "newline:\n", "identifier:x"}));
  EXPECT_EQ(lexed("\"abc\r\nx"), (V{"string:\"abc", "newline:\r\n", "identifier:x"}));
  EXPECT_EQ(lexed("\"abc\\"), (V{"string:\"abc\\"}));
  EXPECT_EQ(lexed("'a\n'"), (V{"char:'a", "newline:\n", "char:'"}));
  EXPECT_EQ(lexed("/* abc\n def"), (V{"comment:/* abc\n def"}));
  EXPECT_EQ(lexed("x = R\"d(abc\n)\" )e\""), (V{"identifier:x", "space: ", "punct:=", "space: ", "string:R\"d(abc\n)\" )e\""}));
  EXPECT_EQ(lexed("R\"d"), (V{"identifier:R", "string:\"d"}));
  // Backslash-newline inside a literal continues it.
  EXPECT_EQ(lexed("\"a\\\nb\" c"), (V{"string:\"a\\\nb\"", "space: ", "identifier:c"}));
}

TEST(Pretokenize, SpaceAttachesToNextToken) {
  EXPECT_EQ(chunks("int x = 1;"), (V{"int", " x", " =", " 1", ";"}));
  EXPECT_EQ(chunks("a\t b"), (V{"a", "\t", " b"}));
  EXPECT_EQ(chunks("a  \n"), (V{"a", "  ", "\n"}));
  EXPECT_EQ(chunks("a \\\n  b"), (V{"a", " ", "\\\n", " ", " b"}));
  EXPECT_EQ(chunks("  #include <a.h>\n"), (V{" ", " #include", " <", "a", ".", "h", ">", "\n"}));
  EXPECT_EQ(chunks("f(x, 'c');"), (V{"f", "(", "x", ",", " 'c'", ")", ";"}));
}

TEST(Pretokenize, CommentsAreCutIntoWords) {
  EXPECT_EQ(chunks("  return a+b;  // sum it!!\n"),
            (V{" ", " return", " a", "+", "b", ";", " ", " //", " sum", " it", "!!", "\n"}));
  EXPECT_EQ(chunks("/* a  b */"), (V{"/*", " a", " ", " b", " ", "*/"}));
  EXPECT_EQ(chunks("/*\n   x_y2 */"), (V{"/*", "\n  ", " x_y", "2", " ", "*/"}));
  EXPECT_EQ(chunks("// 1234567 caf\xc3\xa9"), (V{"//", " 123", "456", "7", " caf\xc3\xa9"}));
  EXPECT_EQ(chunks("/* open"), (V{"/*", " open"}));
}

TEST(Pretokenize, StringsAreCutIntoWords) {
  EXPECT_EQ(chunks("s = u8\"hello, world 12345\";"),
            (V{"s", " =", " u8\"", "hello", ",", " world", " 123", "45", "\"", ";"}));
  EXPECT_EQ(chunks("R\"d(x y)d\"_s"), (V{"R\"d(", "x", " y", ")d\"_s"}));
  EXPECT_EQ(chunks("\"a\\n\" \"open"), (V{"\"", "a", "\\", "n", "\"", " \"", "open"}));
  EXPECT_EQ(chunks("\"\""), (V{"\"", "\""}));
  EXPECT_EQ(chunks("'abcdefghij' 'ab'"), (V{"'", "abcdefghij", "'", " 'ab'"}));
}

TEST(Pretokenize, LongPiecesAreBounded) {
  EXPECT_EQ(chunks("x = 123456789 + 0x1234567890abcdef12ULL;"),
            (V{"x", " =", " 123", "456", "789", " +", " 0x1234567890abcd", "ef12ULL", ";"}));
  EXPECT_EQ(chunks("1'000'000"), (V{"1'000'000"}));
  std::string id(100, 'a');
  EXPECT_EQ(chunks(" " + id), (V{" " + id.substr(0, 64), id.substr(64)}));
  std::string b64(64, ' ');
  EXPECT_EQ(chunks(b64 + b64 + " x"), (V{b64, b64, " x"}));
  EXPECT_EQ(chunks(b64 + b64 + "  x"), (V{b64, b64, " ", " x"}));
  EXPECT_EQ(chunks("\n" + b64 + b64 + "  "), (V{"\n" + b64.substr(0, 63), b64, "   "}));
  std::string dashes(70, '-');
  EXPECT_EQ(chunks("//" + dashes), (V{"//", dashes.substr(0, 64), dashes.substr(0, 6)}));
}

// Pieces and chunks of `src` both partition it, and every piece's bytes fit its kind.
void expect_partitions(const std::string& src, uint32_t seed) {
  auto ps = slm::lex::lex(src);
  ASSERT_TRUE(is_partition(src, ps)) << "seed " << seed;
  ASSERT_TRUE(kinds_consistent(src, ps)) << "seed " << seed;
  std::vector<std::string_view> cs;
  slm::lex::pretokenize(src, cs);
  ASSERT_TRUE(is_partition(src, cs)) << "seed " << seed;
}

TEST(LexerProperty, RandomBytesPartition) {
  for (uint32_t seed = 1; seed <= 40; ++seed) expect_partitions(random_bytes(seed, (seed * 2654435761u) % 10001), seed);
}

TEST(LexerProperty, RandomCppSoupPartition) {
  for (uint32_t seed = 1; seed <= 200; ++seed) expect_partitions(random_cpp_soup(seed, (seed * 40503u) % 10001), seed);
}

TEST(LexerProperty, EverySuffixPartitions) {
  // Every truncation point of tricky input is an unterminated case somewhere.
  const std::string src = "#define M R\"d(x)\"d)d\" u8'\\'' /* a */ // b\\\r\n c \"e\\\"\" 1.5e-3'f <=> \\\n";
  for (size_t len = 0; len <= src.size(); ++len) {
    std::string_view s(src.data(), len);
    ASSERT_TRUE(is_partition(s, slm::lex::lex(s))) << "prefix " << len;
    std::vector<std::string_view> cs;
    slm::lex::pretokenize(s, cs);
    ASSERT_TRUE(is_partition(s, cs)) << "prefix " << len;
  }
}

TEST(LexerProperty, SystemHeadersPartition) {
  const auto& files = system_headers();
  if (files.empty()) GTEST_SKIP() << "/usr/include/c++ is missing or empty; install libstdc++ headers";
  size_t bytes = 0;
  for (const auto& [path, src] : files) {
    auto ps = slm::lex::lex(src);
    for (const Piece& p : ps) ASSERT_GT(p.len, 0u) << path << ": empty piece at " << p.begin;
    ASSERT_TRUE(is_partition(src, ps)) << path;
    ASSERT_TRUE(kinds_consistent(src, ps)) << path;
    bytes += src.size();
  }
  EXPECT_GT(bytes, 0u);
}

TEST(LexerProperty, SystemHeadersPretokenize) {
  const auto& files = system_headers();
  if (files.empty()) GTEST_SKIP() << "/usr/include/c++ is missing or empty; install libstdc++ headers";
  for (const auto& [path, src] : files) {
    std::vector<std::string_view> cs;
    slm::lex::pretokenize(src, cs);
    ASSERT_TRUE(is_partition(src, cs)) << path;
    for (std::string_view c : cs) ASSERT_LE(c.size(), 65u) << path << ": chunk '" << c << "'";
  }
}
