// Byte-level BPE tokenizer with C++-aware pre-tokenization (lexer.h).
// Ids: special tokens first (fixed ids 0..N_SPECIAL-1), then the 256 bytes, then merges in rank order.
// token_bytes(id) is the exact byte length of a token's expansion, 0 for special tokens (by id).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace slm {

enum SpecialToken : int32_t {
  TOK_BOS = 0,
  TOK_EOS,
  TOK_PAD,
  TOK_FIM_PREFIX,
  TOK_FIM_MIDDLE,
  TOK_FIM_SUFFIX,
  TOK_FIM_INSTRUCTION,
  TOK_SRI_SEARCH,
  TOK_SRI_DIVIDER,
  TOK_SRI_REPLACE,
  N_SPECIAL
};
// Spelling used only for display; never used to recognise a special token.
const char* special_name(int32_t id);
constexpr int32_t kByteBase = N_SPECIAL;             // id of byte 0
constexpr int32_t kMinVocab = N_SPECIAL + 256;       // bytes plus specials

// Pre-token chunk -> occurrence count, the BPE training input.
using ChunkCounts = std::unordered_map<std::string, uint64_t>;
// Adds the chunks of `text` (lex::pretokenize) to `counts`.
void count_chunks(std::string_view text, ChunkCounts& counts);

class Tokenizer {
 public:
  Tokenizer();  // bytes + specials only (vocab kMinVocab)
  // Learns merges until vocab_size. Deterministic: ties break by the smaller (left, right) pair.
  static Tokenizer train(const ChunkCounts& counts, int32_t vocab_size);

  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  const std::vector<int32_t>& token_bytes() const { return token_bytes_; }
  // Byte expansion of a token ("" for a special token).
  const std::string& token_string(int32_t id) const { return token_str_[id]; }

  // Appends the ids of `text` to `out`. Never emits special tokens.
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // Bytes of `ids`; special tokens decode to nothing unless `show_special` (then "<|bos|>" etc.).
  std::string decode(const std::vector<int32_t>& ids, bool show_special = false) const;

  // Canonical text serialization (stable across versions of this code) and its hash.
  std::string serialize() const;
  static Tokenizer deserialize(std::string_view text);  // throws slm::Error on malformed input
  std::string hash() const;

 private:
  void rebuild();  // token_str_, token_bytes_, rank table from merges_
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<std::string> token_str_;
  std::vector<int32_t> token_bytes_;
  std::unordered_map<uint64_t, int32_t> rank_;  // (left<<32|right) -> merge rank
  int32_t serial_ = -1;                          // identity of the merge table, keys encode caches
};

}  // namespace slm
