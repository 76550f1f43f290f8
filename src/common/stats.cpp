#include "common/stats.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace slm {

Interval wilson_interval(int64_t k, int64_t n, double z) {
  SLM_CHECK(n >= 0 && k >= 0 && k <= n, "[stats] wilson_interval needs 0 <= k <= n, got k=", k, " n=", n);
  SLM_CHECK(z > 0, "[stats] wilson_interval needs z > 0, got ", z);
  if (n == 0) return {0.0, 1.0};
  double nn = static_cast<double>(n), p = static_cast<double>(k) / nn, z2 = z * z;
  double denom = 1 + z2 / nn;
  double center = (p + z2 / (2 * nn)) / denom;
  double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / denom;
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

}  // namespace slm
