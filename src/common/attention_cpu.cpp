#include "common/attention_cpu.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/device.h"
#include "common/fast_exp.h"

namespace slm::device {

namespace {

constexpr int64_t kBq = 32;  // query rows per block
constexpr int64_t kBk = 64;  // keys per block: with kBq rows, q, k and v blocks stay in L1/L2 for D <= 128

inline float dot(const float* a, const float* b, int64_t D) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

inline void axpy(float* y, float a, const float* x, int64_t D) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) y[d] += a * x[d];
}

// One (b, h): q, k, v, o (T, D) fp32 contiguous; lse (T). mask: (T, T) bytes, row-major, or null
// (causal). Keys past the query's row are skipped in the causal case only.
__attribute__((target_clones("avx512f", "avx2", "default")))
void forward_head(const float* q, const float* k, const float* v, const bool* mask, float* o, float* lse, int64_t T,
                  int64_t D, float scale) {
  std::vector<float> s(kBk), m(kBq), l(kBq);
  for (int64_t i0 = 0; i0 < T; i0 += kBq) {
    const int64_t i1 = std::min(T, i0 + kBq);
    for (int64_t i = i0; i < i1; ++i) {
      m[i - i0] = -std::numeric_limits<float>::infinity();
      l[i - i0] = 0;
      std::fill(o + i * D, o + (i + 1) * D, 0.0f);
    }
    const int64_t jend = mask ? T : i1;  // causal: no key after the block's last query
    for (int64_t j0 = 0; j0 < jend; j0 += kBk) {
      const int64_t j1 = std::min(jend, j0 + kBk);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t je = mask ? j1 : std::min(j1, i + 1);
        if (je <= j0) continue;
        const bool* mrow = mask ? mask + i * T : nullptr;
        float mx = m[i - i0];
        for (int64_t j = j0; j < je; ++j) {
          const bool ok = !mrow || mrow[j];
          s[j - j0] = ok ? dot(q + i * D, k + j * D, D) * scale : -std::numeric_limits<float>::infinity();
          mx = std::max(mx, s[j - j0]);
        }
        if (mx == -std::numeric_limits<float>::infinity()) continue;  // nothing allowed yet
        float* oi = o + i * D;
        const float corr = exp_neg(m[i - i0] - mx);  // m = -inf gives 0 (clamped, then 0 * 0 terms)
        if (corr != 1.0f) {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) oi[d] *= corr;
        }
        float li = l[i - i0] * corr;
        for (int64_t j = j0; j < je; ++j) {
          if (s[j - j0] == -std::numeric_limits<float>::infinity()) continue;
          const float p = exp_neg(s[j - j0] - mx);
          li += p;
          axpy(oi, p, v + j * D, D);
        }
        m[i - i0] = mx;
        l[i - i0] = li;
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const float li = l[i - i0];
      float* oi = o + i * D;
      if (li > 0) {
        const float inv = 1.0f / li;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) oi[d] *= inv;
        lse[i] = m[i - i0] + std::log(li);
      } else {
        lse[i] = std::numeric_limits<float>::infinity();  // nothing allowed: p = 0 everywhere
      }
    }
  }
}

// One (b, h)'s gradients from the saved lse: dq, dk, dv (T, D) fp32, zeroed by the caller; delta (T)
// = rowsum(do * o). Key blocks outer (dk, dv of a block accumulate in cache), queries inner.
__attribute__((target_clones("avx512f", "avx2", "default")))
void backward_head(const float* q, const float* k, const float* v, const bool* mask, const float* go, const float* lse,
                   const float* delta, float* dq, float* dk, float* dv, int64_t T, int64_t D, float scale) {
  for (int64_t j0 = 0; j0 < T; j0 += kBk) {
    const int64_t j1 = std::min(T, j0 + kBk);
    const int64_t istart = mask ? 0 : j0;  // causal: no query before the block's first key sees it
    for (int64_t i = istart; i < T; ++i) {
      if (lse[i] == std::numeric_limits<float>::infinity()) continue;
      const int64_t je = mask ? j1 : std::min(j1, i + 1);
      const bool* mrow = mask ? mask + i * T : nullptr;
      const float* qi = q + i * D;
      const float* goi = go + i * D;
      float* dqi = dq + i * D;
      for (int64_t j = j0; j < je; ++j) {
        if (mrow && !mrow[j]) continue;
        const float p = exp_neg(dot(qi, k + j * D, D) * scale - lse[i]);
        axpy(dv + j * D, p, goi, D);
        const float ds = p * (dot(goi, v + j * D, D) - delta[i]) * scale;
        axpy(dqi, ds, k + j * D, D);
        axpy(dk + j * D, ds, qi, D);
      }
    }
  }
}

struct Shapes {
  int64_t B, H, T, D;
};

// The mask as (T, T) bools for batch row b, or null (causal).
const bool* mask_of(const torch::Tensor& m, int64_t b, int64_t T) {
  if (!m.defined()) return nullptr;
  return m.data_ptr<bool>() + (m.size(0) == 1 ? 0 : b) * T * T;
}

class FlashCpu : public torch::autograd::Function<FlashCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& allowed) {
    const Shapes s{q.size(0), q.size(1), q.size(2), q.size(3)};
    const auto out_dtype = matmul_dtype(v);
    auto q32 = q.to(torch::kFloat32).contiguous(), k32 = k.to(torch::kFloat32).contiguous();
    auto v32 = v.to(torch::kFloat32).contiguous();
    // An empty mask stands for causal (autograd's apply takes no undefined tensor).
    auto mask = allowed.numel() > 0 ? allowed.contiguous() : torch::Tensor();
    auto o = torch::empty({s.B, s.H, s.T, s.D}, q32.options());
    auto lse = torch::empty({s.B, s.H, s.T}, q32.options());
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
    const int64_t TD = s.T * s.D;
    at::parallel_for(0, s.B * s.H, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh)
        forward_head(q32.data_ptr<float>() + bh * TD, k32.data_ptr<float>() + bh * TD, v32.data_ptr<float>() + bh * TD,
                     mask_of(mask, bh / s.H, s.T), o.data_ptr<float>() + bh * TD, lse.data_ptr<float>() + bh * s.T, s.T,
                     s.D, scale);
    });
    ctx->save_for_backward({q32, k32, v32, o, lse, mask.defined() ? mask : allowed});
    ctx->saved_data["qt"] = static_cast<int64_t>(q.scalar_type());
    ctx->saved_data["kt"] = static_cast<int64_t>(k.scalar_type());
    ctx->saved_data["vt"] = static_cast<int64_t>(v.scalar_type());
    return o.to(out_dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &q32 = saved[0], &k32 = saved[1], &v32 = saved[2], &o = saved[3], &lse = saved[4];
    const torch::Tensor mask = saved[5].numel() > 0 ? saved[5] : torch::Tensor();
    const Shapes s{q32.size(0), q32.size(1), q32.size(2), q32.size(3)};
    auto go = grads[0].to(torch::kFloat32).contiguous();
    auto delta = (go * o).sum(-1).contiguous();
    auto dq = torch::zeros_like(q32), dk = torch::zeros_like(k32), dv = torch::zeros_like(v32);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
    const int64_t TD = s.T * s.D;
    at::parallel_for(0, s.B * s.H, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bh = b0; bh < b1; ++bh)
        backward_head(q32.data_ptr<float>() + bh * TD, k32.data_ptr<float>() + bh * TD, v32.data_ptr<float>() + bh * TD,
                      mask_of(mask, bh / s.H, s.T), go.data_ptr<float>() + bh * TD, lse.data_ptr<float>() + bh * s.T,
                      delta.data_ptr<float>() + bh * s.T, dq.data_ptr<float>() + bh * TD, dk.data_ptr<float>() + bh * TD,
                      dv.data_ptr<float>() + bh * TD, s.T, s.D, scale);
    });
    auto ty = [&](const char* n) { return static_cast<c10::ScalarType>(ctx->saved_data[n].toInt()); };
    return {dq.to(ty("qt")), dk.to(ty("kt")), dv.to(ty("vt")), torch::Tensor()};
  }
};

}  // namespace

bool attention_fused_cpu_supports(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& allowed) {
  if (!q.device().is_cpu() || q.dim() != 4 || k.dim() != 4 || q.size(2) != k.size(2)) return false;
  if (!allowed.defined()) return true;
  const int64_t T = q.size(2);
  return allowed.scalar_type() == torch::kBool && allowed.dim() == 4 && allowed.size(1) == 1 && allowed.size(2) == T &&
         allowed.size(3) == T && (allowed.size(0) == 1 || allowed.size(0) == q.size(0));
}

torch::Tensor attention_fused_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& allowed) {
  TORCH_CHECK(attention_fused_cpu_supports(q, k, allowed), "attention_fused_cpu: unsupported shapes or device");
  return FlashCpu::apply(q, k, v, allowed.defined() ? allowed : torch::empty({0}, torch::kBool));
}

}  // namespace slm::device
