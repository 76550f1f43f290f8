// Tests for the byte-level BPE tokenizer: training (against a slow reference trainer),
// encoding (against a slow reference encoder), exact round trips, serialization.
#include "data/tokenizer.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "data/lexer.h"

namespace slm {
using slm::test::random_bytes;

namespace {

using Merges = std::vector<std::pair<int32_t, int32_t>>;

int32_t byte_id(char c) { return kByteBase + static_cast<unsigned char>(c); }

// Replaces every (left, right) in `w` with `id`, left to right.
void apply_merge(std::vector<int32_t>& w, int32_t left, int32_t right, int32_t id) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < w.size();) {
    if (i + 1 < w.size() && w[i] == left && w[i + 1] == right) {
      out.push_back(id);
      i += 2;
    } else {
      out.push_back(w[i++]);
    }
  }
  w.swap(out);
}

// Slow reference trainer: recount every pair each step, take the highest count, then the
// smallest (left, right). Returns all merges until no pair is left (at most `max_merges`).
Merges reference_train(const ChunkCounts& counts, int32_t max_merges) {
  std::vector<std::pair<std::vector<int32_t>, uint64_t>> words;
  for (const auto& [chunk, n] : counts) {
    std::vector<int32_t> w;
    for (char c : chunk) w.push_back(byte_id(c));
    words.emplace_back(w, n);
  }
  Merges merges;
  while (static_cast<int32_t>(merges.size()) < max_merges) {
    std::map<std::pair<int32_t, int32_t>, uint64_t> pairs;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    if (pairs.empty()) break;
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;  // strict: the smallest pair wins ties
    int32_t id = kMinVocab + static_cast<int32_t>(merges.size());
    for (auto& [w, n] : words) apply_merge(w, best->first.first, best->first.second, id);
    merges.push_back(best->first);
  }
  return merges;
}

// Slow reference encoder: per pre-token chunk, apply every merge in rank order.
std::vector<int32_t> reference_encode(const Tokenizer& t, std::string_view text) {
  std::vector<std::string_view> chunks;
  lex::pretokenize(text, chunks);
  std::map<std::string_view, std::vector<int32_t>> memo;
  std::vector<int32_t> out;
  for (std::string_view chunk : chunks) {
    auto it = memo.find(chunk);
    if (it == memo.end()) {
      std::vector<int32_t> w;
      for (char c : chunk) w.push_back(byte_id(c));
      for (size_t r = 0; r < t.merges().size() && w.size() > 1; ++r)
        apply_merge(w, t.merges()[r].first, t.merges()[r].second,
                    kMinVocab + static_cast<int32_t>(r));
      it = memo.emplace(chunk, w).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

// Random C++-flavoured text: identifiers, numbers, operators, comments, strings, indentation.
std::string random_code(uint32_t seed, size_t n_tokens) {
  static const std::string_view pieces[] = {
      "int",   "return", "std::", "vector", "const", "auto", "template", "typename", "_M_impl",
      "x",     "y",      "i",     "0",      "1",     "42",   "0x1F",     "1.5e-3f",  "(",
      ")",     "{",      "}",     ";",      ",",     "<",    ">",        "::",       "->",
      "==",    "!=",     "&&",    "+=",     "<<=",   "\"hello world\"",  "'c'",      "// note",
      "/* block comment */",    "#include", "#define", " ",  "  ",       "\n",       "\n    ",
      "\n\t",  "\r\n",   "\\\n",  "\xc3\xa9", "\xff\xfe", std::string_view("\0", 1), "aaaa"};
  std::mt19937 rng(seed);
  std::string s;
  for (size_t i = 0; i < n_tokens; ++i) s += pieces[rng() % std::size(pieces)];
  return s;
}

// Real C++ (libstdc++ style), so encoding is also checked on text that is not generated.
constexpr std::string_view kCppSample = R"cpp(// vector implementation -*- C++ -*-
#ifndef _STL_VECTOR_H
#define _STL_VECTOR_H 1

#include <bits/stl_iterator_base_funcs.h>
#include <bits/functexcept.h>

namespace std _GLIBCXX_VISIBILITY(default)
{
  /// See bits/stl_deque.h's _Deque_base for an explanation.
  template<typename _Tp, typename _Alloc>
    struct _Vector_base
    {
      typedef typename __gnu_cxx::__alloc_traits<_Alloc>::template
	rebind<_Tp>::other _Tp_alloc_type;

      struct _Vector_impl_data
      {
	pointer _M_start;
	pointer _M_finish;

	_GLIBCXX20_CONSTEXPR
	_Vector_impl_data() _GLIBCXX_NOEXCEPT
	: _M_start(), _M_finish(), _M_end_of_storage()
	{ }
      };

      size_type
      _M_check_len(size_type __n, const char* __s) const
      {
	if (max_size() - size() < __n)
	  __throw_length_error(__N(__s));

	const size_type __len = size() + (std::max)(size(), __n);
	return (__len < size() || __len > max_size()) ? max_size() : __len;
      }
    };
  static_assert(sizeof(long) >= 4, "\"long\" is too small");
  constexpr double __eps = 1.0e-9, __mask = 0x7fff'ffffULL;
} // namespace std
#endif /* _STL_VECTOR_H */
)cpp";

ChunkCounts counts_of(const std::vector<std::string>& texts) {
  ChunkCounts counts;
  for (const std::string& t : texts) count_chunks(t, counts);
  return counts;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Expects `fn` to throw slm::Error with a one-line message containing `needle`.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected slm::Error containing '" << needle << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// A small tokenizer trained on generated code, shared by several tests.
const Tokenizer& code_tokenizer() {
  static const Tokenizer t = [] {
    std::vector<std::string> texts;
    for (uint32_t s = 0; s < 20; ++s) texts.push_back(random_code(s, 2000));
    return Tokenizer::train(counts_of(texts), 600);
  }();
  return t;
}

TEST(Tokenizer, SpecialIdsAreFixed) {
  EXPECT_EQ(TOK_BOS, 0);
  EXPECT_EQ(TOK_EOS, 1);
  EXPECT_EQ(TOK_PAD, 2);
  EXPECT_EQ(TOK_FIM_PREFIX, 3);
  EXPECT_EQ(TOK_FIM_MIDDLE, 4);
  EXPECT_EQ(TOK_FIM_SUFFIX, 5);
  EXPECT_EQ(TOK_FIM_INSTRUCTION, 6);
  EXPECT_EQ(TOK_SRI_SEARCH, 7);
  EXPECT_EQ(TOK_SRI_DIVIDER, 8);
  EXPECT_EQ(TOK_SRI_REPLACE, 9);
  EXPECT_EQ(N_SPECIAL, 10);
  EXPECT_EQ(kByteBase, 10);
  EXPECT_EQ(kMinVocab, 266);
  EXPECT_STREQ(special_name(TOK_BOS), "<|bos|>");
  EXPECT_STREQ(special_name(TOK_EOS), "<|eos|>");
  EXPECT_STREQ(special_name(TOK_PAD), "<|pad|>");
  EXPECT_STREQ(special_name(TOK_FIM_PREFIX), "<|fim_prefix|>");
  EXPECT_STREQ(special_name(TOK_FIM_MIDDLE), "<|fim_middle|>");
  EXPECT_STREQ(special_name(TOK_FIM_SUFFIX), "<|fim_suffix|>");
  EXPECT_STREQ(special_name(TOK_FIM_INSTRUCTION), "<|fim_instruction|>");
  EXPECT_STREQ(special_name(TOK_SRI_SEARCH), "<|sri_search|>");
  EXPECT_STREQ(special_name(TOK_SRI_DIVIDER), "<|sri_divider|>");
  EXPECT_STREQ(special_name(TOK_SRI_REPLACE), "<|sri_replace|>");
  EXPECT_EQ(special_name(N_SPECIAL), nullptr);
  EXPECT_EQ(special_name(-1), nullptr);
}

TEST(Tokenizer, DefaultHasSpecialsAndBytesOnly) {
  Tokenizer t;
  EXPECT_EQ(t.vocab_size(), kMinVocab);
  EXPECT_TRUE(t.merges().empty());
  ASSERT_EQ(t.token_bytes().size(), static_cast<size_t>(kMinVocab));
  for (int32_t id = 0; id < N_SPECIAL; ++id) {
    EXPECT_EQ(t.token_bytes()[id], 0) << id;
    EXPECT_EQ(t.token_string(id), "") << id;
  }
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(t.token_bytes()[kByteBase + b], 1);
    EXPECT_EQ(t.token_string(kByteBase + b), std::string(1, static_cast<char>(b)));
  }
  std::string all = random_bytes(1, 1000);
  EXPECT_EQ(t.encode(all).size(), all.size());
  EXPECT_EQ(t.decode(t.encode(all)), all);
}

TEST(Tokenizer, TokenBytesAreSumOfParts) {
  const Tokenizer& t = code_tokenizer();
  ASSERT_EQ(t.vocab_size(), 600);
  ASSERT_EQ(t.merges().size(), static_cast<size_t>(600 - kMinVocab));
  for (int32_t id = 0; id < N_SPECIAL; ++id) EXPECT_EQ(t.token_bytes()[id], 0);
  for (size_t i = 0; i < t.merges().size(); ++i) {
    int32_t id = kMinVocab + static_cast<int32_t>(i);
    auto [left, right] = t.merges()[i];
    EXPECT_GE(left, kByteBase);
    EXPECT_GE(right, kByteBase);
    EXPECT_LT(left, id);
    EXPECT_LT(right, id);
    EXPECT_EQ(t.token_bytes()[id], t.token_bytes()[left] + t.token_bytes()[right]);
    EXPECT_EQ(t.token_bytes()[id], static_cast<int32_t>(t.token_string(id).size()));
    EXPECT_EQ(t.token_string(id), t.token_string(left) + t.token_string(right));
  }
}

// Worked by hand: "aaab" x5, "ab" x3. Pair counts aa=10, ab=8 -> merge a+a. Then
// "aaab" = [aa a b]: (aa,a)=5, ab=5+3=8 -> merge a+b. Then "aaab" = [aa ab]: (aa,ab)=5.
TEST(Tokenizer, TrainsHandWorkedExample) {
  ChunkCounts counts{{"aaab", 5}, {"ab", 3}};
  Tokenizer t = Tokenizer::train(counts, kMinVocab + 3);
  Merges expected{
      {byte_id('a'), byte_id('a')}, {byte_id('a'), byte_id('b')}, {kMinVocab, kMinVocab + 1}};
  EXPECT_EQ(t.merges(), expected);
  EXPECT_EQ(t.token_string(kMinVocab), "aa");
  EXPECT_EQ(t.token_string(kMinVocab + 1), "ab");
  EXPECT_EQ(t.token_string(kMinVocab + 2), "aaab");
  // Nothing is left to merge after three merges: asking for more fails and names the maximum.
  expect_error([&] { Tokenizer::train(counts, kMinVocab + 4); }, std::to_string(kMinVocab + 3));
}

// Overlapping pairs: "aaaa" has three (a,a) pairs; merging gives [aa aa], one (aa,aa) pair.
TEST(Tokenizer, TrainsOverlappingPairs) {
  ChunkCounts counts{{"aaaa", 1}, {"aaa", 1}};
  Tokenizer t = Tokenizer::train(counts, kMinVocab + 2);
  // a+a first (3 + 2 pairs). Then "aaaa" = [aa aa] gives (aa,aa)=1 and "aaa" = [aa a] gives
  // (aa,a)=1: a tie, so the smaller pair (aa,a) wins.
  Merges expected{{byte_id('a'), byte_id('a')}, {kMinVocab, byte_id('a')}};
  EXPECT_EQ(t.merges(), expected);
  EXPECT_EQ(t.encode("aaaa"), (std::vector<int32_t>{kMinVocab, kMinVocab}));
}

TEST(Tokenizer, TiesBreakBySmallerPair) {
  // Three pairs with equal counts: the merge order is by (left, right).
  ChunkCounts counts{{"xy", 4}, {"ba", 4}, {"cd", 4}};
  Tokenizer t = Tokenizer::train(counts, kMinVocab + 3);
  Merges expected{
      {byte_id('b'), byte_id('a')}, {byte_id('c'), byte_id('d')}, {byte_id('x'), byte_id('y')}};
  EXPECT_EQ(t.merges(), expected);
  // The left id decides before the right one: (a,z) beats (b,a).
  ChunkCounts counts2{{"ba", 2}, {"az", 2}};
  EXPECT_EQ(Tokenizer::train(counts2, kMinVocab + 1).merges()[0],
            (std::pair<int32_t, int32_t>{byte_id('a'), byte_id('z')}));
}

TEST(Tokenizer, MatchesReferenceTrainer) {
  // Small alphabets make many overlaps, ties and repeated symbols.
  for (uint32_t seed = 0; seed < 40; ++seed) {
    std::mt19937 rng(seed);
    const std::string alphabet = seed % 2 ? "ab" : "abc ";
    ChunkCounts counts;
    for (int i = 0; i < 60; ++i) {
      std::string w(1 + rng() % 12, ' ');
      for (char& c : w) c = alphabet[rng() % alphabet.size()];
      counts[w] += 1 + rng() % 5;
    }
    Merges ref = reference_train(counts, 1000);
    int32_t reachable = kMinVocab + static_cast<int32_t>(ref.size());
    EXPECT_EQ(Tokenizer::train(counts, reachable).merges(), ref) << "seed " << seed;
    expect_error([&] { Tokenizer::train(counts, reachable + 1); }, std::to_string(reachable));
  }
}

TEST(Tokenizer, TrainingIsDeterministic) {
  std::vector<std::string> texts;
  for (uint32_t s = 100; s < 110; ++s) texts.push_back(random_code(s, 3000));
  ChunkCounts forward = counts_of(texts);
  // Same counts inserted in another order into a map with another bucket count.
  std::vector<std::pair<std::string, uint64_t>> items(forward.begin(), forward.end());
  std::reverse(items.begin(), items.end());
  ChunkCounts backward(7);
  for (const auto& [k, v] : items) backward.emplace(k, v);
  Tokenizer a = Tokenizer::train(forward, 700);
  Tokenizer b = Tokenizer::train(forward, 700);
  Tokenizer c = Tokenizer::train(backward, 700);
  EXPECT_EQ(a.serialize(), b.serialize());
  EXPECT_EQ(a.serialize(), c.serialize());
  EXPECT_EQ(a.hash(), c.hash());
}

TEST(Tokenizer, VocabBelowMinimumFails) {
  ChunkCounts counts{{"ab", 1}};
  expect_error([&] { Tokenizer::train(counts, kMinVocab - 1); }, std::to_string(kMinVocab));
  expect_error([&] { Tokenizer::train(counts, 0); }, std::to_string(kMinVocab));
  EXPECT_EQ(Tokenizer::train(counts, kMinVocab).vocab_size(), kMinVocab);
  EXPECT_EQ(Tokenizer::train(ChunkCounts{}, kMinVocab).vocab_size(), kMinVocab);
  expect_error([&] { Tokenizer::train(ChunkCounts{}, kMinVocab + 1); }, "too small");
}

TEST(Tokenizer, SerializeRoundTrip) {
  const Tokenizer& t = code_tokenizer();
  std::string text = t.serialize();
  EXPECT_EQ(text.rfind("slmlab-bpe v1\nvocab 600\nspecials 10\nmerges 334\n", 0), 0u)
      << text.substr(0, 80);
  Tokenizer u = Tokenizer::deserialize(text);
  EXPECT_EQ(u.serialize(), text);
  EXPECT_EQ(u.hash(), t.hash());
  EXPECT_EQ(u.hash().size(), 32u);
  EXPECT_EQ(u.merges(), t.merges());
  EXPECT_EQ(u.token_bytes(), t.token_bytes());
  std::string code = random_code(7, 500);
  EXPECT_EQ(u.encode(code), t.encode(code));
  EXPECT_NE(Tokenizer().hash(), t.hash());
  EXPECT_EQ(Tokenizer::deserialize(Tokenizer().serialize()).vocab_size(), kMinVocab);
}

TEST(Tokenizer, DeserializeRejectsMalformedText) {
  ChunkCounts counts{{"aaab", 5}, {"ab", 3}};
  const std::string good = Tokenizer::train(counts, kMinVocab + 3).serialize();
  ASSERT_EQ(good, "slmlab-bpe v1\nvocab 269\nspecials 10\nmerges 3\n107 107\n107 108\n266 267\n");
  // Every strict prefix is truncated.
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(Tokenizer::deserialize(good.substr(0, n)), Error) << n;
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::pair<std::string, std::string> bad[] = {
      {with("slmlab-bpe v1", "slmlab-bpe v2"), "header"},
      {with("vocab 269", "vocab 270"), "does not match"},
      {with("vocab 269", "vocab 0269"), "vocab"},
      {with("vocab 269", "vocab  269"), "vocab"},
      {with("vocab 269", "vocab -269"), "vocab"},
      {with("vocab 269", "vocab 99999999999"), "vocab"},
      {with("vocab 269", "vocab 265"), "minimum"},
      {with("specials 10", "specials 11"), "specials"},
      {with("merges 3", "merges 2"), "does not match"},
      {with("266 267", "266 268"), "must use ids"},
      {with("266 267", "268 267"), "must use ids"},
      {with("107 108", "9 108"), "must use ids"},
      {with("107 108", "107 107"), "repeats"},
      {with("107 108", "107 x"), "expected merge"},
      {with("107 108", "107  108"), "expected merge"},
      {with("107 108", "107"), "expected merge"},
      {with("107 108", "107 108 109"), "expected merge"},
      {with("\n", "\r\n"), "header"},
      {good + "266 267\n", "after the last merge"},
      {good + "\n", "after the last merge"},
      {good.substr(0, good.size() - 1), "unterminated"},
      {"", "header"},
      {std::string("\0\x01garbage\n", 10), "header"},
  };
  for (const auto& [text, needle] : bad)
    expect_error([&] { Tokenizer::deserialize(text); }, needle);
}

TEST(Tokenizer, EncodeMatchesReference) {
  const Tokenizer& t = code_tokenizer();
  for (uint32_t seed = 0; seed < 30; ++seed) {
    std::string code = random_code(1000 + seed, 400);
    EXPECT_EQ(t.encode(code), reference_encode(t, code)) << "seed " << seed;
    std::string bytes = random_bytes(seed, 500);
    EXPECT_EQ(t.encode(bytes), reference_encode(t, bytes)) << "seed " << seed;
  }
  std::string cpp(kCppSample);
  EXPECT_EQ(t.encode(cpp), reference_encode(t, cpp));
  Tokenizer own = Tokenizer::train(counts_of({cpp, cpp + cpp}), 500);  // merges fire a lot
  EXPECT_EQ(own.encode(cpp), reference_encode(own, cpp));
  EXPECT_LT(own.encode(cpp).size(), cpp.size() / 2);
  // Long runs exercise chunks past the cache limit and long merge chains.
  std::string runs =
      std::string(5000, '=') + " " + std::string(301, 'a') + std::string(257, ' ') + "x";
  EXPECT_EQ(t.encode(runs), reference_encode(t, runs));
}

TEST(Tokenizer, RoundTripsAnyBytes) {
  const Tokenizer& t = code_tokenizer();
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode({}), "");
  for (uint32_t seed = 0; seed < 200; ++seed) {
    std::string bytes = random_bytes(seed, seed * 37 % 3000);
    std::vector<int32_t> ids = t.encode(bytes);
    EXPECT_EQ(t.decode(ids), bytes) << "seed " << seed;
    std::string code = random_code(seed, seed % 300);
    EXPECT_EQ(t.decode(t.encode(code)), code) << "seed " << seed;
  }
  std::string nul_cr("a\0b\r\n\r\0\0\xff", 9);
  EXPECT_EQ(t.decode(t.encode(nul_cr)), nul_cr);
}

TEST(Tokenizer, EncodeAppendsAndNeverEmitsSpecials) {
  const Tokenizer& t = code_tokenizer();
  std::string text = "<|bos|> int x; <|eos|><|pad|><|fim_prefix|>";
  std::vector<int32_t> out{TOK_BOS};
  t.encode(text, out);
  ASSERT_GT(out.size(), 1u);
  EXPECT_EQ(out[0], TOK_BOS);
  for (size_t i = 1; i < out.size(); ++i) {
    EXPECT_GE(out[i], kByteBase);
    EXPECT_LT(out[i], t.vocab_size());
  }
  EXPECT_EQ(t.decode(out), text);
  EXPECT_EQ(t.decode(out, true), "<|bos|>" + text);
}

TEST(Tokenizer, DecodeSpecialsAndRejectsBadIds) {
  const Tokenizer& t = code_tokenizer();
  EXPECT_EQ(t.decode({TOK_BOS, byte_id('x'), TOK_EOS}), "x");
  EXPECT_EQ(t.decode({TOK_BOS, byte_id('x'), TOK_SRI_DIVIDER}, true), "<|bos|>x<|sri_divider|>");
  expect_error([&] { t.decode({byte_id('x'), t.vocab_size()}); }, std::to_string(t.vocab_size()));
  expect_error([&] { t.decode({-1}); }, "-1");
  expect_error([&] { Tokenizer().decode({kMinVocab}); }, std::to_string(kMinVocab));
}

TEST(Tokenizer, EncodeUsesTheRightTokenizerAfterReassignment) {
  // The per-thread chunk cache must never serve one tokenizer's ids for another.
  ChunkCounts ab{{"abab", 10}}, ba{{"baba", 10}};
  Tokenizer t = Tokenizer::train(ab, kMinVocab + 1);
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{kMinVocab, kMinVocab}));
  t = Tokenizer::train(ba, kMinVocab + 1);
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{byte_id('a'), kMinVocab, byte_id('b')}));
  Tokenizer copy = t;
  EXPECT_EQ(copy.encode("abab"), t.encode("abab"));
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  const Tokenizer& a = code_tokenizer();
  Tokenizer b = Tokenizer::train(ChunkCounts{{"return", 3}, {" int", 2}}, kMinVocab + 5);
  std::vector<std::string> texts;
  for (uint32_t s = 0; s < 16; ++s) texts.push_back(random_code(500 + s, 800));
  std::vector<std::vector<int32_t>> want_a, want_b;
  for (const std::string& s : texts) {
    want_a.push_back(reference_encode(a, s));
    want_b.push_back(reference_encode(b, s));
  }
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th) {
    threads.emplace_back([&, th] {
      bool good = true;
      for (int round = 0; round < 5; ++round)
        for (size_t i = 0; i < texts.size(); ++i) {
          const Tokenizer& t = (i + th + round) % 2 ? a : b;
          good = good && t.encode(texts[i]) == (&t == &a ? want_a[i] : want_b[i]);
        }
      ok[th] = good;
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(ok, std::vector<int>(4, 1));
}

TEST(Tokenizer, CountChunksPartitionsText) {
  std::string text = random_code(3, 2000);
  ChunkCounts counts;
  count_chunks(text, counts);
  count_chunks(text, counts);
  uint64_t bytes = 0;
  for (const auto& [chunk, n] : counts) {
    EXPECT_FALSE(chunk.empty());
    EXPECT_EQ(n % 2, 0u) << chunk;
    bytes += chunk.size() * n;
  }
  EXPECT_EQ(bytes, 2 * text.size());
}

// Trains on a sample of libstdc++ headers and round-trips every file under /usr/include/c++.
TEST(Tokenizer, RoundTripsSystemHeaders) {
  namespace fs = std::filesystem;
  const fs::path root = "/usr/include/c++";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) GTEST_SKIP() << root << " does not exist";
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(root, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file(ec)) files.push_back(it->path());
  ASSERT_FALSE(files.empty());
  std::sort(files.begin(), files.end());
  ChunkCounts counts;
  size_t sample_bytes = 0;
  for (size_t i = 0; i < files.size() && sample_bytes < (4u << 20); i += 5) {
    std::string text = read_file(files[i]);
    sample_bytes += text.size();
    count_chunks(text, counts);
  }
  Tokenizer t = Tokenizer::train(counts, 2048);
  ASSERT_EQ(t.vocab_size(), 2048);
  size_t total_bytes = 0, total_ids = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    std::string text = read_file(files[i]);
    std::vector<int32_t> ids = t.encode(text);
    ASSERT_EQ(t.decode(ids), text) << files[i];
    for (int32_t id : ids) ASSERT_TRUE(id >= kByteBase && id < t.vocab_size()) << files[i];
    if (i % 97 == 0) {
      EXPECT_EQ(ids, reference_encode(t, text)) << files[i];
    }
    total_bytes += text.size();
    total_ids += ids.size();
  }
  // BPE at vocab 2048 compresses C++ headers well beyond one byte per token.
  EXPECT_GT(static_cast<double>(total_bytes) / total_ids, 2.5);
}

}  // namespace
}  // namespace slm
