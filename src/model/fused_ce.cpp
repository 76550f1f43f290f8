#include "model/fused_ce.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "common/error.h"
#include "common/fast_exp.h"

namespace slm {

namespace {

constexpr int64_t kChunkRows = 256;  // (256 x V) fp32 logits per chunk: cache-sized for V ~ 8k-32k

// One row: cap*tanh(z/cap) in place, then max, sum of exponentials, nats; then (optionally) the
// gradient (softmax - onehot) * (1 - tanh^2) * scale in place. Three passes over a cache-resident row.
__attribute__((target_clones("avx512f", "avx2", "default")))
float row_kernel(float* z, int64_t V, int64_t target, float cap, float grad_scale) {
  const float inv_cap = 1.0f / cap;
  float m = -INFINITY;
  if (cap > 0) {
    for (int64_t j = 0; j < V; ++j) {
      // tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|): stable for any u.
      const float u = z[j] * inv_cap, a = u < 0 ? -u : u;
      const float e = exp_neg(-2.0f * a);
      const float t = (1.0f - e) / (1.0f + e);
      z[j] = cap * (u < 0 ? -t : t);
    }
  }
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = z[j] > m ? z[j] : m;
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < V; ++j) s += exp_neg(z[j] - m);
  const float lse = m + std::log(s);
  const float nats = lse - z[target];
  if (grad_scale != 0) {
    for (int64_t j = 0; j < V; ++j) {
      const float p = exp_neg(z[j] - lse);
      const float t = z[j] * inv_cap;
      const float dcap = cap > 0 ? 1.0f - t * t : 1.0f;  // d softcap / dz
      z[j] = p * dcap * grad_scale;
    }
  }
  return nats;
}

}  // namespace

void softcap_ce_rows(float* z, int64_t n, int64_t V, const int64_t* targets, double softcap, double grad_scale,
                     float* nats) {
  for (int64_t i = 0; i < n; ++i)
    SLM_CHECK(targets[i] >= 0 && targets[i] < V, "[loss] target id ", targets[i], " is outside the vocabulary of ", V);
  const float cap = static_cast<float>(softcap), scale = static_cast<float>(grad_scale);
  at::parallel_for(0, n, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* row = z + i * V;
      const int64_t y = targets[i];
      // The onehot term of the gradient needs d softcap/dz at the target, taken before the row is overwritten.
      float dcap_y = 1.0f;
      if (cap > 0) {
        const float t = std::tanh(row[y] / cap);
        dcap_y = 1.0f - t * t;
      }
      nats[i] = row_kernel(row, V, y, cap, scale);
      if (scale != 0) row[y] -= dcap_y * scale;
    }
  });
}

// The device's own kernels. Targets are not range-checked (that would wait for the device): gather
// fails on a bad id instead.
torch::Tensor softcap_ce_rows_ops(torch::Tensor& z, const torch::Tensor& y, double softcap, double grad_scale) {
  const torch::Tensor t = softcap > 0 ? torch::tanh(z / softcap) : torch::Tensor();
  const torch::Tensor zc = softcap > 0 ? t * softcap : z;
  const torch::Tensor lse = torch::logsumexp(zc, 1, /*keepdim=*/true);  // (n, 1)
  const torch::Tensor yi = y.unsqueeze(1);
  torch::Tensor nats = (lse - zc.gather(1, yi)).squeeze(1);
  if (grad_scale != 0) {
    torch::Tensor g = (zc - lse).exp_();  // softmax
    g.scatter_add_(1, yi, -torch::ones_like(yi, g.options()));  // - onehot
    if (softcap > 0) g.mul_(1 - t * t);  // d softcap / dz
    z.copy_(g.mul_(grad_scale));
  }
  return nats;
}

namespace {

struct ChunkOut {
  torch::Tensor nats, grad_h, grad_w;
};

ChunkOut run_chunks(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets, double softcap,
                    torch::ScalarType compute, double grad_scale) {
  const int64_t N = h.size(0), V = w.size(0);
  auto wc = w.to(compute);
  auto hc = h.to(compute);
  auto tg = targets.to(torch::kInt64).contiguous();
  ChunkOut out;
  out.nats = torch::empty({N}, h.options().dtype(torch::kFloat32));
  if (grad_scale != 0) {
    out.grad_h = torch::empty({N, h.size(1)}, h.options().dtype(torch::kFloat32));
    out.grad_w = torch::zeros({V, w.size(1)}, w.options().dtype(torch::kFloat32));
  }
  for (int64_t r0 = 0; r0 < N; r0 += kChunkRows) {
    const int64_t r1 = std::min(N, r0 + kChunkRows), n = r1 - r0;
    auto hs = hc.slice(0, r0, r1);
    auto z = torch::matmul(hs, wc.t()).to(torch::kFloat32).contiguous();  // (n, V)
    if (z.is_cpu()) {
      const int64_t* y = tg.data_ptr<int64_t>() + r0;
      float* zp = z.data_ptr<float>();
      softcap_ce_rows(zp, n, V, y, softcap, grad_scale, out.nats.data_ptr<float>() + r0);
    } else {
      out.nats.slice(0, r0, r1).copy_(softcap_ce_rows_ops(z, tg.slice(0, r0, r1), softcap, grad_scale));
    }
    if (grad_scale != 0) {
      auto dz = z.to(compute);
      out.grad_h.slice(0, r0, r1).copy_(torch::matmul(dz, wc));
      out.grad_w.add_(torch::matmul(dz.t(), hs).to(torch::kFloat32));
    }
  }
  return out;
}

struct FusedLinearCE : torch::autograd::Function<FusedLinearCE> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& w,
                               const torch::Tensor& targets, double softcap, int64_t compute) {
    const int64_t N = h.size(0);
    ChunkOut o = run_chunks(h, w, targets, softcap, static_cast<torch::ScalarType>(compute), 1.0 / N);
    ctx->saved_data["grad_h"] = o.grad_h.to(h.scalar_type());
    ctx->saved_data["grad_w"] = o.grad_w.to(w.scalar_type());
    return o.nats.mean();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto g = grad_out[0];
    auto gh = ctx->saved_data["grad_h"].toTensor() * g;
    auto gw = ctx->saved_data["grad_w"].toTensor() * g;
    return {gh, gw, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fused_linear_ce_mean(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets,
                                   double softcap, torch::ScalarType compute) {
  SLM_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && targets.numel() == h.size(0),
            "[loss] fused head: shapes h ", h.sizes(), ", w ", w.sizes(), ", targets ", targets.sizes(), " do not agree");
  return FusedLinearCE::apply(h, w, targets, softcap, static_cast<int64_t>(compute));
}

torch::Tensor linear_ce_nats(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& targets, double softcap,
                             torch::ScalarType compute) {
  torch::NoGradGuard ng;
  return run_chunks(h.detach(), w.detach(), targets, softcap, compute, 0.0).nats;
}

}  // namespace slm
