// The fused CPU attention (common/attention_cpu.h) against the math path it replaces: outputs and
// every gradient, causal and document masks, sizes that are not multiples of the blocks, bf16 under
// autocast; bitwise the same at any thread count.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/attention_cpu.h"
#include "common/device.h"
#include "test_tolerance.h"

namespace slm {
namespace {

struct Result {
  torch::Tensor y, dq, dk, dv;
};

// y and the gradients of sum(y * w) (w fixed random) in q, k and v.
template <class F>
Result run(F attn, const torch::Tensor& q0, const torch::Tensor& k0, const torch::Tensor& v0, const torch::Tensor& w,
           const torch::Tensor& allowed, bool bf16) {
  auto q = q0.detach().clone().requires_grad_(true), k = k0.detach().clone().requires_grad_(true);
  auto v = v0.detach().clone().requires_grad_(true);
  device::set_autocast(torch::kCPU, bf16);
  auto y = attn(q, k, v, allowed);
  device::set_autocast(torch::kCPU, false);
  (y.to(torch::kFloat32) * w).sum().backward();
  return {y.detach().to(torch::kFloat32), q.grad().to(torch::kFloat32), k.grad().to(torch::kFloat32),
          v.grad().to(torch::kFloat32)};
}

// (B, 1, T, T): causal within documents given by ids (B, T).
torch::Tensor doc_mask(const torch::Tensor& ids) {
  const int64_t T = ids.size(1);
  auto same = ids.unsqueeze(2) == ids.unsqueeze(1);
  return (same & torch::ones({T, T}, torch::kBool).tril()).unsqueeze(1);
}

struct Case {
  int64_t B, H, T, D;
};

void inputs(const Case& c, uint64_t seed, torch::Tensor* q, torch::Tensor* k, torch::Tensor* v, torch::Tensor* w) {
  torch::manual_seed(seed);
  // Logits of order a few units (as after QK-norm): softmax neither uniform nor one-hot.
  *q = torch::randn({c.B, c.H, c.T, c.D}) * 0.5;
  *k = torch::randn({c.B, c.H, c.T, c.D}) * 0.5 * std::sqrt(static_cast<double>(c.D)) / 2;
  *v = torch::randn({c.B, c.H, c.T, c.D});
  *w = torch::randn({c.B, c.H, c.T, c.D});
}

// fp32: both paths accumulate the same sums in different orders. Longest reduction path: q.k (D),
// the softmax's sum and the weighted sum of values (2 T); backward adds dO.V (D), the rowsum
// dO.O (D) and the sums over keys or queries (T); the polynomial exp is within 4 u of exp.
int64_t fp32_terms(const Case& c) { return 2 * (3 * c.D + 3 * c.T) + 8; }

void expect_fp32_close(const Case& c, const torch::Tensor& allowed, uint64_t seed) {
  torch::Tensor q, k, v, w;
  inputs(c, seed, &q, &k, &v, &w);
  const Result want = run(device::attention_math, q, k, v, w, allowed, false);
  const Result got = run(device::attention_fused_cpu, q, k, v, w, allowed, false);
  const int64_t n = fp32_terms(c);
  EXPECT_TRUE(test::fp32_close(got.y, want.y, n)) << "output";
  EXPECT_TRUE(test::fp32_close(got.dq, want.dq, n)) << "dq";
  EXPECT_TRUE(test::fp32_close(got.dk, want.dk, n)) << "dk";
  EXPECT_TRUE(test::fp32_close(got.dv, want.dv, n)) << "dv";
}

TEST(FusedAttention, CausalMatchesMathPathOddSizes) {
  expect_fp32_close({2, 3, 77, 16}, {}, 1);   // T not a multiple of the query (32) or key (64) blocks
  expect_fp32_close({1, 2, 130, 24}, {}, 2);  // three key blocks, the last partial
}

TEST(FusedAttention, DocumentMaskMatchesMathPath) {
  const Case c{2, 2, 97, 16};
  torch::manual_seed(7);
  // Documents of random lengths: boundaries inside blocks and across them.
  auto ids = (torch::rand({c.B, c.T}) < 0.06).cumsum(1);
  expect_fp32_close(c, doc_mask(ids), 3);
  expect_fp32_close(c, doc_mask(ids.slice(0, 0, 1)), 4);  // one mask for the whole batch
}

TEST(FusedAttention, Bf16UnderAutocastMatchesMathPath) {
  const Case c{2, 2, 70, 16};
  torch::Tensor q, k, v, w;
  inputs(c, 5, &q, &k, &v, &w);
  q = q.to(torch::kBFloat16), k = k.to(torch::kBFloat16), v = v.to(torch::kBFloat16);
  const Result want = run(device::attention_math, q, k, v, w, {}, true);
  const Result got = run(device::attention_fused_cpu, q, k, v, w, {}, true);
  ASSERT_EQ(got.y.sizes(), want.y.sizes());
  // The math path rounds the probabilities and its products to bf16 (u = 2^-8 relative, each), the
  // fused one only its output and gradients: each value differs by a few bf16 roundings of the
  // magnitudes it is made of. Bound: 8 roundings at the largest magnitude of the tensor.
  auto bf16_close = [](const torch::Tensor& a, const torch::Tensor& b, const char* what) {
    const double scale = b.abs().max().item<double>(), diff = (a - b).abs().max().item<double>();
    EXPECT_LE(diff, 8 * std::ldexp(1.0, -8) * scale) << what << ": max difference " << diff << " at magnitude " << scale;
  };
  bf16_close(got.y, want.y, "output");
  bf16_close(got.dq, want.dq, "dq");
  bf16_close(got.dk, want.dk, "dk");
  bf16_close(got.dv, want.dv, "dv");
}

TEST(FusedAttention, BitwiseAtAnyThreadCount) {
  const Case c{2, 3, 77, 16};
  torch::Tensor q, k, v, w;
  inputs(c, 9, &q, &k, &v, &w);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const Result one = run(device::attention_fused_cpu, q, k, v, w, {}, false);
  at::set_num_threads(std::max(2, threads));
  const Result many = run(device::attention_fused_cpu, q, k, v, w, {}, false);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.y, many.y));
  EXPECT_TRUE(torch::equal(one.dq, many.dq));
  EXPECT_TRUE(torch::equal(one.dk, many.dk));
  EXPECT_TRUE(torch::equal(one.dv, many.dv));
}

TEST(FusedAttention, DispatchAndScoreBytesFollowTheSwitch) {
  const Case c{1, 2, 40, 16};
  torch::Tensor q, k, v, w;
  inputs(c, 11, &q, &k, &v, &w);
  const bool was = device::fused_attention();
  device::set_fused_attention(true);
  auto a = device::attention(q, k, v, {});
  const double on_bytes = device::attention_score_bytes();
  device::set_fused_attention(false);
  auto b = device::attention(q, k, v, {});
  const double off_bytes = device::attention_score_bytes();
  device::set_fused_attention(was);
  if (device::torch_version().rfind("1.", 0) == 0) {  // 1.13: the switch picks the kernel
    EXPECT_TRUE(torch::equal(a, device::attention_fused_cpu(q, k, v, {})));
    EXPECT_TRUE(torch::equal(b, device::attention_math(q, k, v, {})));
    EXPECT_EQ(on_bytes, 0);
    EXPECT_EQ(off_bytes, 8);
  }
}

}  // namespace
}  // namespace slm
