// Small statistics shared by evaluation and the scorecard. Torch-free.
#pragma once
#include <cstdint>

namespace slm {

// A closed interval [lo, hi].
struct Interval {
  double lo, hi;
};

// Wilson score interval for k successes out of n at normal quantile z (1.96: 95%); [0, 1] for n = 0.
// Unlike the normal approximation it stays inside [0, 1] and is honest at k = 0 or k = n.
Interval wilson_interval(int64_t k, int64_t n, double z = 1.96);

}  // namespace slm
