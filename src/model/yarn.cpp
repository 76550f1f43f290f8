#include "model/yarn.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace slm {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

std::pair<int64_t, int64_t> yarn_bounds(int64_t head_dim, double base, const YarnConfig& y) {
  SLM_CHECK(y.original_context > 0, "[yarn] original_context must be positive");
  SLM_CHECK(y.beta_fast > y.beta_slow && y.beta_slow > 0, "[yarn] need beta_fast > beta_slow > 0, got ", y.beta_fast,
            " and ", y.beta_slow);
  auto idx = [&](double rotations) {
    return head_dim * std::log(y.original_context / (2 * kPi * rotations)) / (2 * std::log(base));
  };
  int64_t low = static_cast<int64_t>(std::floor(idx(y.beta_fast)));
  int64_t high = static_cast<int64_t>(std::ceil(idx(y.beta_slow)));
  low = std::max<int64_t>(low, 0);
  high = std::min<int64_t>(high, head_dim - 1);
  if (high <= low) high = low + 1;  // a ramp of one pair rather than a division by zero
  return {low, high};
}

torch::Tensor yarn_inv_freq(int64_t head_dim, double base, const YarnConfig& y) {
  SLM_CHECK(y.scale >= 1.0, "[yarn] scale ", y.scale, " < 1; YaRN only stretches the context");
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto i = torch::arange(0, head_dim / 2, opts);
  auto freq = torch::pow(base, -2.0 * i / static_cast<double>(head_dim));
  if (y.scale == 1.0) return freq;
  auto [low, high] = yarn_bounds(head_dim, base, y);
  auto ramp = ((i - static_cast<double>(low)) / static_cast<double>(high - low)).clamp(0.0, 1.0);
  auto smooth = 1.0 - ramp;
  return freq / y.scale * (1.0 - smooth) + freq * smooth;
}

std::pair<torch::Tensor, torch::Tensor> yarn_rope_tables(int64_t T, int64_t head_dim, double base, const YarnConfig& y) {
  auto pos = torch::arange(0, T, torch::TensorOptions().dtype(torch::kFloat64));
  auto ang = torch::outer(pos, yarn_inv_freq(head_dim, base, y));  // fp64 so long contexts stay exact
  return {ang.cos().to(torch::kFloat32), ang.sin().to(torch::kFloat32)};
}

double yarn_logit_scale(const YarnConfig& y) {
  if (!y.mscale || y.scale <= 1.0) return 1.0;
  const double m = 0.1 * std::log(y.scale) + 1.0;
  return m * m;
}

}  // namespace slm
