// exp(x) for x <= 0, as a branch-free polynomial the compiler vectorizes inside `omp simd` loops and
// target_clones kernels (the fused loss head, model/fused_ce.cpp, and the fused CPU attention,
// common/attention_cpu.cpp): x = k ln2 + r, exp(r) by a degree-6 polynomial on |r| <= ln2/2.
// Max relative error ~2e-7, fp32 level; arguments below -87 are clamped (exp(-87) ~ 1.6e-38).
#pragma once

#include <cstdint>

namespace slm {

inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float k = __builtin_roundf(x * 1.44269504088896341f);
  const float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(k) + 127;
  float scale;
  const int32_t bits = e << 23;
  __builtin_memcpy(&scale, &bits, 4);
  return p * scale;
}

}  // namespace slm
