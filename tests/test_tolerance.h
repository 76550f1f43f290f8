// Tolerances derived from the computation, not from the machine a test was written on.
//
// Two implementations of the same fp32 math (gathered vs masked tokens, a wrapper vs the blocks it
// wraps, cached vs recomputed) sum in different orders, and another machine's BLAS kernel sums in
// yet another. Each result then carries at most Higham's gamma_n = n u / (1 - n u) relative to the
// magnitudes summed, where n is the number of terms accumulated along the longest path of reductions
// and u = 2^-24; two such results differ by at most twice that. The bound is a worst case: a real
// bug moves outputs by orders of magnitude more, which the tests' planted differences check.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

namespace slm::test {

// Reduction terms along one pre-norm transformer block's longest path at width d, head dim hd,
// context T and MLP hidden h: q.k (hd), the softmax's sum and the weighted sum of values (2 T), the
// output projection (d), the MLP's two matmuls (d + h).
inline int64_t block_terms(int64_t d, int64_t hd, int64_t T, int64_t h) { return hd + 2 * T + d + d + h; }

// |got - want| <= 2 gamma_n max(|want|, 1) elementwise over fp32 results of n accumulated terms.
inline double fp32_bound(int64_t n_terms, double scale) {
  const double u = 1.0 / (1 << 24), nu = static_cast<double>(n_terms) * u;
  return 2.0 * nu / (1.0 - nu) * std::max(scale, 1.0);
}

inline ::testing::AssertionResult fp32_close(const torch::Tensor& got, const torch::Tensor& want, int64_t n_terms) {
  if (got.sizes() != want.sizes()) return ::testing::AssertionFailure() << "shapes differ";
  const double scale = want.abs().max().item<double>(), diff = (got - want).abs().max().item<double>();
  const double bound = fp32_bound(n_terms, scale);
  if (diff <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max difference " << diff << " > bound " << bound << " (" << n_terms
                                       << " accumulated fp32 terms at magnitude " << scale << ")";
}

}  // namespace slm::test
