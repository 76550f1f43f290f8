#include "common/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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

namespace {

// Continued fraction of the regularized incomplete beta function I_x(a, b) (modified Lentz),
// valid for x < (a + 1) / (a + b + 2); the caller uses the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
double beta_cf(double a, double b, double x) {
  const double tiny = 1e-300, eps = 1e-15;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    const double m2 = 2.0 * m;
    double num = m * (b - m) * x / ((a + m2 - 1) * (a + m2));  // even step
    d = 1 + num * d;
    c = 1 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1));  // odd step
    d = 1 + num * d;
    c = 1 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < eps) break;
  }
  return h;
}

double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double lfront = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  if (x < (a + 1) / (a + b + 2)) return std::exp(lfront) * beta_cf(a, b, x) / a;
  const double lback = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + b * std::log1p(-x) + a * std::log(x);
  return 1 - std::exp(lback) * beta_cf(b, a, 1 - x) / b;
}

}  // namespace

double normal_sf(double z) { return 0.5 * std::erfc(z / std::sqrt(2.0)); }

double student_t_sf(double t, double df) {
  SLM_CHECK(df > 0, "[stats] student_t_sf needs df > 0, got ", df);
  if (std::isnan(t)) return NAN;
  if (std::isinf(t)) return t > 0 ? 0.0 : 1.0;
  const double tail = 0.5 * incomplete_beta(0.5 * df, 0.5, df / (df + t * t));  // P(T > |t|)
  return t >= 0 ? tail : 1 - tail;
}

double student_t_quantile_upper(double p, double df) {
  SLM_CHECK(p > 0 && p < 1, "[stats] student_t_quantile_upper needs p in (0, 1), got ", p);
  if (p == 0.5) return 0;
  if (p > 0.5) return -student_t_quantile_upper(1 - p, df);
  double lo = 0, hi = 1;
  while (student_t_sf(hi, df) > p) hi *= 2;  // sf falls monotonically in t
  for (int i = 0; i < 200 && hi - lo > 1e-13 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_sf(mid, df) > p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double t_two_sided_p(double t, double df) { return std::min(1.0, 2 * student_t_sf(std::fabs(t), df)); }

namespace {
// The finite entries' indices, by ascending p.
std::vector<size_t> order_finite(const std::vector<double>& p) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < p.size(); ++i)
    if (std::isfinite(p[i])) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  return idx;
}
}  // namespace

std::vector<double> holm_adjust(const std::vector<double>& p) {
  std::vector<double> out(p.size(), NAN);
  const auto idx = order_finite(p);
  const double m = static_cast<double>(idx.size());
  double run = 0;
  for (size_t j = 0; j < idx.size(); ++j) {  // step-down: (m - j) p_(j), never below an earlier one
    run = std::max(run, std::min(1.0, (m - j) * p[idx[j]]));
    out[idx[j]] = run;
  }
  return out;
}

std::vector<double> bh_adjust(const std::vector<double>& p) {
  std::vector<double> out(p.size(), NAN);
  const auto idx = order_finite(p);
  const double m = static_cast<double>(idx.size());
  double run = 1;
  for (size_t j = idx.size(); j-- > 0;) {  // step-up: m / rank x p_(rank), never above a later one
    run = std::min(run, m / static_cast<double>(j + 1) * p[idx[j]]);
    out[idx[j]] = run;
  }
  return out;
}

}  // namespace slm
