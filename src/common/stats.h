// Small statistics shared by evaluation and the scorecard. Torch-free.
#pragma once
#include <cstdint>
#include <vector>

namespace slm {

// A closed interval [lo, hi].
struct Interval {
  double lo, hi;
};

// Wilson score interval for k successes out of n at normal quantile z (1.96: 95%); [0, 1] for n = 0.
// Unlike the normal approximation it stays inside [0, 1] and is honest at k = 0 or k = n.
Interval wilson_interval(int64_t k, int64_t n, double z = 1.96);

// P(Z > z) for a standard normal Z.
double normal_sf(double z);
// P(T > t) for Student's t with `df` > 0 degrees of freedom (df need not be an integer: Welch's
// Satterthwaite df is not). Through the regularized incomplete beta function.
double student_t_sf(double t, double df);
// The t with P(T > t) = p, for p in (0, 1) (bisection on student_t_sf: exact to ~1e-12 relative).
double student_t_quantile_upper(double p, double df);
// Two-sided p-value of a t statistic.
double t_two_sided_p(double t, double df);

// Multiple-comparison adjusted p-values, in the order given (NaN entries are left out of the family
// and stay NaN): Holm's step-down (controls the family-wise error rate) and Benjamini-Hochberg's
// step-up (controls the false-discovery rate). A comparison is decided when its adjusted p < alpha.
std::vector<double> holm_adjust(const std::vector<double>& p);
std::vector<double> bh_adjust(const std::vector<double>& p);

}  // namespace slm
