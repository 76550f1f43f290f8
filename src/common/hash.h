// Hashing: xxHash3 (Debian libxxhash). 128-bit for content identity and fingerprints,
// 64-bit for file checksums. Non-cryptographic by design: it detects corruption and
// identifies content, it does not defend against an adversary.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace slm {

// 32 lowercase hex chars of XXH3-128.
std::string hash128_hex(std::string_view bytes);
uint64_t hash64(std::string_view bytes, uint64_t seed = 0);
std::string hex64(uint64_t v);

// Incremental 128-bit hasher, for fingerprints over many parts.
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  Hasher& update(std::string_view bytes);
  // A length-prefixed field, so ("ab","c") and ("a","bc") differ.
  Hasher& field(std::string_view bytes);
  Hasher& field(uint64_t v);
  std::string hex() const;

 private:
  void* state_;
};

}  // namespace slm
