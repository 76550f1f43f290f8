// splitmix64: the one portable random stream of slmlab's own code (data order, transforms, Engram's
// hash multipliers, sampling). std distributions are implementation-defined; these draws are the
// same on every compiler and library, so a seed means the same thing everywhere.
#pragma once
#include <cstddef>
#include <cstdint>

namespace slm {

// Advances `state` and returns the next well-mixed 64-bit value.
inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct SplitMix64 {
  uint64_t s;
  uint64_t next() { return splitmix64(s); }
  // Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-40 for our sizes).
  size_t below(size_t n) { return static_cast<size_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  // Uniform in [0, 1) with 53 random bits.
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

}  // namespace slm
