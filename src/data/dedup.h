// Near-duplicate detection between the splits of a data set: MinHash over shingles of C++ lexer
// tokens, candidates by locality-sensitive hashing (bands of the signature), confirmed by the
// signatures' estimated Jaccard similarity. Exact duplicates are removed at collection; this finds
// another version of the same header (a changed line, a renamed parameter) on both sides of the
// hash split, so that validation does not score what training has seen.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace slm::data {

constexpr int kShingle = 5;       // lexer tokens per shingle
constexpr int kMinHashes = 64;    // signature length: the similarity estimate's sd is <= 0.0625
constexpr int kBands = 16;        // 16 bands of 4: a pair at similarity 0.7 is a candidate with p = 0.99
constexpr double kNearDuplicate = 0.7;  // estimated Jaccard similarity from which a pair is one document

using Signature = std::array<uint64_t, kMinHashes>;

// The signature of a source over its lexer tokens without whitespace and comments (a licence header
// alone does not make two files alike). A source of fewer than kShingle tokens has one shingle.
Signature minhash(std::string_view src);
// The share of equal entries: an unbiased estimate of the Jaccard similarity of the shingle sets.
double similarity(const Signature& a, const Signature& b);

struct NearDuplicate {
  size_t query, match;  // indexes into `queries` and `index`
  double similarity;
};
// For each query, the most similar index signature at kNearDuplicate or above (first by index order
// on ties); deterministic.
std::vector<NearDuplicate> near_duplicates(const std::vector<Signature>& index, const std::vector<Signature>& queries);

}  // namespace slm::data
