#include "data/dedup.h"

#include <algorithm>
#include <string>
#include <unordered_map>

#include "common/hash.h"
#include "data/lexer.h"

namespace slm::data {

namespace {

// splitmix64's finalizer: a bijection of 64-bit words that mixes every bit.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

Signature minhash(std::string_view src) {
  std::vector<uint64_t> toks;
  for (const lex::Piece& p : lex::lex(src)) {
    if (p.kind == lex::Kind::Space || p.kind == lex::Kind::Newline || p.kind == lex::Kind::Comment ||
        p.kind == lex::Kind::Splice)
      continue;
    toks.push_back(hash64(src.substr(p.begin, p.len)));
  }
  Signature sig;
  sig.fill(~0ull);
  const size_t n = toks.size() < kShingle ? 1 : toks.size() - kShingle + 1;
  for (size_t i = 0; i < n; ++i) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t k = i; k < std::min(toks.size(), i + kShingle); ++k) h = mix(h ^ toks[k]);
    for (int j = 0; j < kMinHashes; ++j) sig[j] = std::min(sig[j], mix(h + 0x632be59bd9b4e019ull * (j + 1)));
  }
  return sig;
}

double similarity(const Signature& a, const Signature& b) {
  int same = 0;
  for (int j = 0; j < kMinHashes; ++j) same += a[j] == b[j];
  return static_cast<double>(same) / kMinHashes;
}

std::vector<NearDuplicate> near_duplicates(const std::vector<Signature>& index, const std::vector<Signature>& queries) {
  constexpr int rows = kMinHashes / kBands;
  auto band_key = [](const Signature& s, int b) {
    uint64_t h = static_cast<uint64_t>(b) * 0x9e3779b97f4a7c15ull;
    for (int r = 0; r < rows; ++r) h = mix(h ^ s[b * rows + r]);
    return h;
  };
  std::vector<std::unordered_map<uint64_t, std::vector<size_t>>> buckets(kBands);
  for (size_t i = 0; i < index.size(); ++i)
    for (int b = 0; b < kBands; ++b) buckets[b][band_key(index[i], b)].push_back(i);
  std::vector<NearDuplicate> out;
  for (size_t q = 0; q < queries.size(); ++q) {
    NearDuplicate best{q, 0, -1.0};
    for (int b = 0; b < kBands; ++b) {
      auto it = buckets[b].find(band_key(queries[q], b));
      if (it == buckets[b].end()) continue;
      for (size_t i : it->second) {
        const double s = similarity(queries[q], index[i]);
        if (s > best.similarity || (s == best.similarity && i < best.match)) best = {q, i, s};
      }
    }
    if (best.similarity >= kNearDuplicate) out.push_back(best);
  }
  return out;
}

}  // namespace slm::data
