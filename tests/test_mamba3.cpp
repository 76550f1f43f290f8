// Mamba-3 (docs/modules.md section 4): the chunked SSD against the naive recurrence in fp64, the
// trapezoid's SSD form against its step recurrence, the Euler (Mamba-2) limit, state carry and
// decoding, causality, document isolation, gradients, bf16 autocast, FLOPs, the model plan and the
// catalog row (check messages and adjust).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"
#include "model/mamba3.h"
#include "test_util.h"


using namespace slm;
using torch::indexing::Slice;

namespace {

namespace F = torch::nn::functional;
const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

// The catalog's arguments for mamba3: defaults plus overrides given as text.
catalog::ModuleArgs mamba3_args(const std::map<std::string, std::string>& over = {}) {
  return slm::test::module_args("mamba3", over);
}

// h_t = exp(la_t) h_{t-1} + sum_r b x^T, y = c^T h, reset where seg changes: one step at a time.
std::pair<torch::Tensor, torch::Tensor> naive_ssd(const torch::Tensor& x, const torch::Tensor& la,
                                                  const torch::Tensor& b, const torch::Tensor& c,
                                                  const torch::Tensor& seg, torch::Tensor h) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(3), P = x.size(4), N = b.size(4);
  if (!h.defined()) h = torch::zeros({B, H, P, N}, x.options());
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    if (seg.defined() && t > 0) {
      auto keep = seg.select(1, t).eq(seg.select(1, t - 1)).to(x.scalar_type()).view({B, 1, 1, 1});
      h = h * keep;
    }
    h = la.select(1, t).exp().view({B, H, 1, 1}) * h + torch::einsum("brhp,brhn->bhpn", {x.select(1, t), b.select(1, t)});
    ys.push_back(torch::einsum("bhpn,brhn->brhp", {h, c.select(1, t)}));
  }
  return {torch::stack(ys, 1), h};
}

// The trapezoid recurrence step by step (spec 4): h_t = alpha h + beta B_{t-1} x_{t-1}^T + gamma B_t x_t^T.
std::pair<torch::Tensor, torch::Tensor> naive_trapezoid(const torch::Tensor& x, const torch::Tensor& la,
                                                        const torch::Tensor& dt, const torch::Tensor& lam,
                                                        const torch::Tensor& b, const torch::Tensor& c,
                                                        const torch::Tensor& seg, torch::Tensor h,
                                                        torch::Tensor kprev, torch::Tensor xprev) {
  const int64_t B = x.size(0), T = x.size(1), R = x.size(2), H = x.size(3), P = x.size(4), N = b.size(4);
  if (!h.defined()) h = torch::zeros({B, H, P, N}, x.options());
  if (!kprev.defined()) kprev = torch::zeros({B, R, H, N}, x.options());
  if (!xprev.defined()) xprev = torch::zeros({B, R, H, P}, x.options());
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    if (seg.defined() && t > 0) {  // a new document: nothing of the previous one, beta term included
      auto keep = seg.select(1, t).eq(seg.select(1, t - 1)).to(x.scalar_type());
      h = h * keep.view({B, 1, 1, 1});
      kprev = kprev * keep.view({B, 1, 1, 1});
    }
    auto alpha = la.select(1, t).exp(), d = dt.select(1, t), l = lam.select(1, t);  // (B, H)
    auto beta = (1 - l) * d * alpha, gamma = l * d;
    auto v = [&](const torch::Tensor& s) { return s.view({B, H, 1, 1}); };
    h = v(alpha) * h + v(beta) * torch::einsum("brhp,brhn->bhpn", {xprev, kprev}) +
        v(gamma) * torch::einsum("brhp,brhn->bhpn", {x.select(1, t), b.select(1, t)});
    ys.push_back(torch::einsum("bhpn,brhn->brhp", {h, c.select(1, t)}));
    kprev = b.select(1, t);
    xprev = x.select(1, t);
  }
  return {torch::stack(ys, 1), h};
}

struct ScanInputs {
  torch::Tensor x, la, dt, lam, b, c, seg;
};

// Random fp64 scan inputs, with segment ids from documents in row 0.
ScanInputs scan_inputs(int64_t B, int64_t T, int64_t R, int64_t H, int64_t P, int64_t N, uint64_t seed) {
  torch::manual_seed(seed);
  ScanInputs s;
  s.x = torch::randn({B, T, R, H, P}, f64);
  s.dt = F::softplus(torch::randn({B, T, H}, f64) - 1.0);
  s.la = -F::softplus(torch::randn({B, T, H}, f64)) * s.dt;
  s.lam = torch::sigmoid(torch::randn({B, T, H}, f64));
  s.b = torch::randn({B, T, R, H, N}, f64) / std::sqrt(static_cast<double>(N));
  s.c = torch::randn({B, T, R, H, N}, f64) / std::sqrt(static_cast<double>(N));
  // Row 0: documents at [0, 37), [37, 128) (ends on a chunk edge), [128, T); row 1: one document.
  auto doc = torch::zeros({B, T}, torch::kInt64);
  doc.index_put_({0, Slice(37, 128)}, 1);
  doc.index_put_({0, Slice(128, T)}, 2);
  s.seg = mamba3_segments(doc);
  return s;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// A small mixer: C = 16, H = 4, P = 8, N = 8, chunk 8 (T = 40 spans five chunks).
Mamba3Options small(int64_t rank = 1, double rope = 0.0) {
  ModelConfig c;
  c.d_model = 16;
  return Mamba3Options::from(mamba3_args({{"d_state", "8"},
                                          {"expand", "2"},
                                          {"headdim", "8"},
                                          {"chunk", "8"},
                                          {"mimo_rank", std::to_string(rank)},
                                          {"rope_fraction", std::to_string(rope)}}),
                             c);
}

// Gives the zero out-projection random weights and moves the other parameters off their init.
void randomize(Mamba3MixerImpl& m, uint64_t seed = 7) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  m.out_proj->weight.normal_(0, 0.3);
  for (auto& p : m.named_parameters()) {
    if (p.key() == "in_proj.weight" || p.key() == "out_proj.weight" || p.key() == "dt_bias") continue;
    p.value().add_(0.2 * torch::randn_like(p.value()));
  }
}

struct Variant {
  const char* name;
  Mamba3Options o;
};
std::vector<Variant> variants() {
  Mamba3Options euler = small();
  euler.trapezoidal = false;
  euler.bc_norm = false;
  return {{"siso", small()},          {"rope 0.5", small(1, 0.5)},   {"rope 1.0", small(1, 1.0)},
          {"mimo 2", small(2)},       {"mimo 2 rope 0.5", small(2, 0.5)}, {"euler no-bc-norm", euler}};
}

Mamba3Mixer make(const Mamba3Options& o, torch::ScalarType dtype, uint64_t seed = 3) {
  torch::manual_seed(seed);
  Mamba3Mixer m(o);
  randomize(*m);
  m->to(dtype);
  return m;
}
Mamba3Mixer make_fp64(const Mamba3Options& o) { return make(o, torch::kFloat64); }

}  // namespace

// ---- the scan

TEST(Mamba3Scan, ChunkedSsdEqualsNaiveRecurrenceFp64) {
  // spec 4 (a): T = 256, Q = 64, to 1e-10; also MIMO rank 2, a padded last chunk, an initial state and
  // document resets (row 0 has three documents, one ending on a chunk edge).
  for (int64_t R : {1, 2}) {
    for (int64_t T : {256, 250}) {
      auto s = scan_inputs(2, T, R, 3, 4, 5, 11 + R);
      auto h0 = torch::randn({2, 3, 4, 5}, f64);
      auto [y, h] = mamba3_ssd(s.x, s.la, s.b, s.c, {}, {}, 64);
      auto [yr, hr] = naive_ssd(s.x, s.la, s.b, s.c, {}, {});
      EXPECT_LT(max_diff(y, yr), 1e-10) << "R " << R << " T " << T;
      EXPECT_LT(max_diff(h, hr), 1e-10);
      auto [yd, hd] = mamba3_ssd(s.x, s.la, s.b, s.c, s.seg, h0, 64);
      auto [ydr, hdr] = naive_ssd(s.x, s.la, s.b, s.c, s.seg, h0);
      EXPECT_LT(max_diff(yd, ydr), 1e-10) << "with documents and h0, R " << R << " T " << T;
      EXPECT_LT(max_diff(hd, hdr), 1e-10);
    }
  }
}

TEST(Mamba3Scan, TrapezoidSsdFormEqualsStepRecurrence) {
  // spec 4 (b), with documents, MIMO rank 2 and a carried state (h0 plus the previous token's B and x).
  for (int64_t R : {1, 2}) {
    auto s = scan_inputs(2, 256, R, 3, 4, 5, 21 + R);
    auto [y, h] = mamba3_trapezoid(s.x, s.la, s.dt, s.lam, s.b, s.c, {}, {}, {}, {}, 64);
    auto [yr, hr] = naive_trapezoid(s.x, s.la, s.dt, s.lam, s.b, s.c, {}, {}, {}, {});
    EXPECT_LT(max_diff(y, yr), 1e-10) << "R " << R;
    EXPECT_LT(max_diff(h, hr), 1e-10);
    auto h0 = torch::randn({2, 3, 4, 5}, f64), kp = torch::randn({2, R, 3, 5}, f64), xp = torch::randn({2, R, 3, 4}, f64);
    auto [yd, hd] = mamba3_trapezoid(s.x, s.la, s.dt, s.lam, s.b, s.c, s.seg, h0, kp, xp, 64);
    auto [ydr, hdr] = naive_trapezoid(s.x, s.la, s.dt, s.lam, s.b, s.c, s.seg, h0, kp, xp);
    EXPECT_LT(max_diff(yd, ydr), 1e-10) << "with documents and a carried state, R " << R;
    EXPECT_LT(max_diff(hd, hdr), 1e-10);
  }
}

TEST(Mamba3Scan, LambdaOneIsTheEulerMamba2Update) {
  // spec 4 (c) at the scan: lambda = 1 drops the beta term, leaving h = alpha h + Delta B x^T.
  auto s = scan_inputs(2, 128, 1, 3, 4, 5, 31);
  auto ones = torch::ones_like(s.lam);
  auto [y, h] = mamba3_trapezoid(s.x, s.la, s.dt, ones, s.b, s.c, s.seg, {}, {}, {}, 32);
  auto [yr, hr] = naive_ssd(s.x * s.dt.unsqueeze(2).unsqueeze(-1), s.la, s.b, s.c, s.seg, {});
  EXPECT_LT(max_diff(y, yr), 1e-10);
  EXPECT_LT(max_diff(h, hr), 1e-10);
}

TEST(Mamba3Scan, SegmentsResetWhereTheDocumentIdChanges) {
  auto doc = torch::tensor({3, 3, 5, 5, 5, 3}, torch::kInt64).view({1, 6});
  auto seg = mamba3_segments(doc);
  EXPECT_TRUE(torch::equal(seg, torch::tensor({0, 0, 1, 1, 1, 2}, torch::kInt64).view({1, 6})));
  EXPECT_FALSE(mamba3_segments(torch::Tensor()).defined());
}

// ---- the mixer

TEST(Mamba3Mixer, EulerWithoutNormsIsMamba2) {
  // spec 4 (c) at the mixer: lambda = 1, theta = 0 (no rope), no B/C norm or bias: the Mamba-2 recurrence
  // (without its short conv) over the same projections, written out here one token at a time.
  Mamba3Options o = small();
  o.trapezoidal = false;
  o.bc_norm = false;
  auto m = make_fp64(o);
  torch::manual_seed(5);
  auto u = torch::randn({2, 40, 16}, f64);
  Ctx ctx;
  auto y = m->forward(u, ctx);

  const int64_t B = 2, T = 40, H = 4, P = 8, N = 8;
  torch::NoGradGuard ng;
  auto zx = m->in_proj(u);
  auto parts = zx.split_with_sizes({H * P, H * P, N, N, H, H}, -1);
  auto z = parts[0].view({B, T, H, P}), x = parts[1].view({B, T, H, P});
  auto dt = F::softplus(parts[4] + m->dt_bias.to(torch::kFloat64));
  auto A = -F::softplus(parts[5]).clamp_max(-o.a_floor);
  auto h = torch::zeros({B, H, P, N}, f64);
  std::vector<torch::Tensor> ys;
  for (int64_t t = 0; t < T; ++t) {
    auto d = dt.select(1, t);                                           // (B, H)
    auto Bt = parts[2].select(1, t), Ct = parts[3].select(1, t);        // (B, N), shared by the heads
    auto xt = x.select(1, t);                                           // (B, H, P)
    h = (A.select(1, t) * d).exp().view({B, H, 1, 1}) * h +
        (d.view({B, H, 1}) * xt).unsqueeze(-1) * Bt.view({B, 1, 1, N});
    auto yt = (h * Ct.view({B, 1, 1, N})).sum(-1) + m->D.view({1, H, 1}) * xt;
    ys.push_back(yt * F::silu(z.select(1, t)));
  }
  auto ref = m->out_proj(torch::stack(ys, 1).reshape({B, T, H * P}));
  EXPECT_LT(max_diff(y, ref), 1e-10);
}

TEST(Mamba3Mixer, ZeroInitOutputAndShapes) {
  torch::manual_seed(1);
  Mamba3Mixer m(small(2, 0.5));
  auto u = torch::randn({3, 20, 16});
  Ctx ctx;
  auto y = m->forward(u, ctx);
  EXPECT_EQ(y.sizes(), u.sizes());
  EXPECT_TRUE(torch::equal(y, torch::zeros_like(y)));  // zero out_proj: the block starts as the identity
  EXPECT_EQ(m->n_head, 4);
  EXPECT_EQ(m->n_angle, 2);  // floor(8 x 0.5) / 2
  EXPECT_EQ(m->in_proj->weight.size(0), 2 * 32 + 2 * 2 * 8 + 3 * 4 + 2);
  EXPECT_EQ(m->B_bias.sizes(), (std::vector<int64_t>{4, 2, 8}));
  EXPECT_TRUE(torch::equal(m->B_bias, torch::ones_like(m->B_bias)));
  EXPECT_TRUE(torch::equal(m->D, torch::ones_like(m->D)));
  EXPECT_TRUE(torch::allclose(m->mimo_x, torch::full_like(m->mimo_x, 0.5)));
  // Delta at init inside [dt_min, dt_max].
  auto d0 = F::softplus(m->dt_bias);
  EXPECT_GE(d0.min().item<double>(), 1e-3 * 0.999);
  EXPECT_LE(d0.max().item<double>(), 0.1 * 1.001);
  EXPECT_EQ(m->describe(), "mamba3 (H=4, P=8, N=8, chunk 8, trapezoidal, bc-norm, rope 0.5, mimo 2, doc-reset)");
  EXPECT_EQ(Mamba3Mixer(small())->describe(), "mamba3 (H=4, P=8, N=8, chunk 8, trapezoidal, bc-norm, doc-reset)");
}

TEST(Mamba3Mixer, BadShapesFailClearly) {
  Mamba3Options o = small();
  o.headdim = 12;  // 32 % 12 != 0
  try {
    Mamba3Mixer m(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[mamba3] headdim 12 does not divide"), std::string::npos) << e.what();
  }
  Mamba3Mixer m(small());
  Ctx ctx;
  try {
    m->forward(torch::randn({2, 5, 8}), ctx);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[mamba3] expects x of shape (B, T, 16)"), std::string::npos) << e.what();
  }
}

TEST(Mamba3Mixer, TwoHalvesAndStepByStepEqualTheWhole) {
  // spec 4 (d) for every variant: the state (angle, ssm, previous B and x) carried across a split in the
  // middle of a chunk, and greedy decoding one token at a time, give the parallel forward's outputs.
  for (auto& v : variants()) {
    auto m = make_fp64(v.o);
    torch::NoGradGuard ng;
    torch::manual_seed(9);
    auto u = torch::randn({2, 40, 16}, f64);
    Ctx ctx;
    auto whole = m->forward(u, ctx);

    Mamba3State st;
    auto a = m->forward_with_state(u.slice(1, 0, 19), {}, st);
    EXPECT_EQ(st.ssm.sizes(), (std::vector<int64_t>{2, 4, 8, 8})) << v.name;
    EXPECT_EQ(st.k.sizes(), (std::vector<int64_t>{2, v.o.mimo_rank, 4, 8})) << v.name;
    auto b = m->forward_with_state(u.slice(1, 19), {}, st);
    EXPECT_LT(max_diff(torch::cat({a, b}, 1), whole), 1e-10) << v.name;

    Mamba3State ss;
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < 40; ++t) steps.push_back(m->forward_step(u.slice(1, t, t + 1), ss));
    EXPECT_LT(max_diff(torch::cat(steps, 1), whole), 1e-10) << v.name;
    EXPECT_LT(max_diff(ss.ssm, st.ssm), 1e-10) << v.name;  // same final state both ways

    Mamba3State sp;  // a prompt through the chunked path, then decoding
    auto prompt = m->forward_with_state(u.slice(1, 0, 13), {}, sp);
    std::vector<torch::Tensor> rest{prompt};
    for (int64_t t = 13; t < 40; ++t) rest.push_back(m->forward_step(u.slice(1, t, t + 1), sp));
    EXPECT_LT(max_diff(torch::cat(rest, 1), whole), 1e-10) << v.name;
  }
}

TEST(Mamba3Mixer, CausalChangingAFutureTokenChangesNoEarlierOutput) {
  // spec 4 (e) for every variant, in fp32, at positions inside a chunk, on its first token and at the
  // end: earlier outputs are bit-identical, not merely close.
  for (auto& v : variants()) {
    auto m = make(v.o, torch::kFloat32);
    torch::NoGradGuard ng;
    torch::manual_seed(13);
    auto u = torch::randn({2, 40, 16});
    Ctx ctx;
    auto a = m->forward(u, ctx);
    for (int64_t t : {5, 15, 16, 39}) {
      auto w = u.clone();
      w.index_put_({Slice(), t}, torch::randn({2, 16}));
      auto b = m->forward(w, ctx);
      EXPECT_TRUE(torch::equal(a.slice(1, 0, t), b.slice(1, 0, t))) << v.name << " position " << t;
      EXPECT_GT(max_diff(a.select(1, t), b.select(1, t)), 1e-6) << v.name << " position " << t;
    }
  }
}

TEST(Mamba3Mixer, DocumentsInAPackedRowSeeNothingOfEachOther) {
  // spec (f)-style isolation for every variant: documents at [0, 11), [11, 16), [16, 40) (one ends mid-
  // chunk, one on a chunk edge); each document's outputs equal running it alone. RoPE angles keep running
  // across a boundary but only their differences reach c^T b, so rope variants match to rounding.
  auto doc = torch::zeros({2, 40}, torch::kInt64);
  doc.index_put_({Slice(), Slice(11, 16)}, 1);
  doc.index_put_({Slice(), Slice(16, 40)}, 2);
  for (auto& v : variants()) {
    auto m = make_fp64(v.o);
    torch::NoGradGuard ng;
    torch::manual_seed(17);
    auto u = torch::randn({2, 40, 16}, f64);
    Ctx ctx;
    ctx.doc_ids = doc;
    auto packed = m->forward(u, ctx);
    Ctx solo;
    for (auto [s, e] : {std::pair<int64_t, int64_t>{0, 11}, {11, 16}, {16, 40}}) {
      auto alone = m->forward(u.slice(1, s, e), solo);
      EXPECT_LT(max_diff(packed.slice(1, s, e), alone), 1e-10) << v.name << " document at " << s;
    }
    // Without the reset the same row leaks across the boundary.
    Mamba3Options o = v.o;
    o.doc_mask = false;
    auto u2 = make_fp64(o);
    auto leaked = u2->forward(u, ctx);
    EXPECT_GT(max_diff(leaked.slice(1, 16, 40), u2->forward(u.slice(1, 16, 40), solo)), 1e-6) << v.name;
  }
}

TEST(Mamba3Mixer, GradientReachesEveryParameter) {
  torch::manual_seed(2);
  Mamba3Mixer m(small(2, 0.5));
  randomize(*m);
  auto u = torch::randn({2, 24, 16}, torch::requires_grad());
  Ctx ctx;
  ctx.doc_ids = torch::cat({torch::zeros({2, 10}, torch::kInt64), torch::ones({2, 14}, torch::kInt64)}, 1);
  m->forward(u, ctx).pow(2).sum().backward();
  for (auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
  EXPECT_GT(u.grad().abs().sum().item<double>(), 0.0);
}

TEST(Mamba3Mixer, Bf16AutocastRunsAndStaysCloseToFp32) {
  torch::manual_seed(4);
  Mamba3Mixer m(small(1, 0.5));
  randomize(*m);
  auto u = torch::randn({2, 64, 16});
  Ctx ctx;
  auto y32 = m->forward(u, ctx);
  const torch::Device cpu(torch::kCPU);
  device::set_autocast(cpu, true);
  auto y16 = m->forward(u, ctx);
  Mamba3State st;
  m->forward_with_state(u, {}, st);
  y16.to(torch::kFloat32).pow(2).sum().backward();
  device::set_autocast(cpu, false);
  device::clear_autocast_cache();
  EXPECT_EQ(st.ssm.scalar_type(), torch::kFloat32);  // the scan accumulated in fp32 under autocast
  const double rel = max_diff(y16.to(torch::kFloat32), y32) / y32.abs().max().item<double>();
  EXPECT_LT(rel, 0.05);
  EXPECT_GT(rel, 0.0);  // the projections did run in bf16
  for (auto& p : m->named_parameters()) EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
}

TEST(Mamba3Mixer, Deterministic) {
  auto run = [] {
    torch::manual_seed(21);
    Mamba3Mixer m(small(2, 1.0));
    randomize(*m);
    torch::manual_seed(22);
    Ctx ctx;
    return m->forward(torch::randn({2, 30, 16}), ctx);
  };
  EXPECT_TRUE(torch::equal(run(), run()));
}

TEST(Mamba3Mixer, FlopsCountProjectionsAndTheChunkedScan) {
  Mamba3Mixer m(small(2));
  const double H = 4, P = 8, N = 8, R = 2;
  const double proj = 6.0 * static_cast<double>(m->in_proj->weight.numel() + m->out_proj->weight.numel());
  // T = 24, Q = 8: three chunks; T = 20: three chunks, the last padded (its work counts, it ran).
  for (auto [T, K] : {std::pair<int64_t, double>{24, 3}, {20, 3}}) {
    const double macs = H * (K * 8 * (8 * R * R * (N + P) + 2 * R * P * N) + (K + 1) * (K + 1) * P * N +
                             T * R * R * (N + P));
    EXPECT_DOUBLE_EQ(m->flops_per_token(T), proj + 6.0 * macs / T) << "T " << T;
  }
  EXPECT_GT(m->flops_per_token(24), proj);
}

// ---- the model side

namespace {
ModelConfig aam(int64_t depth) {
  ModelConfig c;
  c.vocab = 300;
  c.n_layer = depth;
  c.d_model = 32;
  c.n_head = 2;
  c.head_dim = 16;
  c.context = 24;
  c.layer_pattern = "AAM";
  return c;
}
catalog::ModuleArgs tiny_args() { return mamba3_args({{"d_state", "8"}, {"headdim", "16"}, {"chunk", "8"}}); }

// A GPT whose M layers run Mamba-3, built through the registry as the trainer builds it.
GPT gpt_with_mamba(ModelConfig c) {
  c.modules = {tiny_args()};
  return GPT(c);
}
}  // namespace

TEST(Mamba3Model, ApplyPutsTheMixerOnEveryMLayer) {
  for (int64_t depth : {3, 6}) {
    ModelConfig c = aam(depth);
    ModelPlan plan = model_plan(c);
    apply_mamba3(tiny_args(), c, plan);
    for (int64_t i = 0; i < depth; ++i) {
      auto mixer = plan.layers[i].mixer();
      if (i % 3 == 2) {
        EXPECT_EQ(plan.layers[i].modules, std::vector<std::string>{"mamba3"}) << "layer " << i;
        EXPECT_NE(dynamic_cast<Mamba3MixerImpl*>(mixer.get()), nullptr) << "layer " << i;
      } else {
        EXPECT_TRUE(plan.layers[i].modules.empty()) << "layer " << i;
        EXPECT_NE(dynamic_cast<CausalSelfAttentionImpl*>(mixer.get()), nullptr) << "layer " << i;
      }
    }
  }
  ModelConfig none = aam(3);
  none.layer_pattern = "A";
  ModelPlan plan = model_plan(none);
  try {
    apply_mamba3(tiny_args(), none, plan);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[mamba3] the layer plan has no M layer"), std::string::npos) << e.what();
  }
}

TEST(Mamba3Model, HybridGptTrainsCausallyAndKeepsDocumentsApart) {
  GPT m = gpt_with_mamba(aam(3));
  const std::string lp = layer_plan(*m);
  EXPECT_NE(lp.find("layer 2: M mamba3 (H=4, P=16, N=8, chunk 8, trapezoidal, bc-norm, doc-reset)"), std::string::npos)
      << lp;
  EXPECT_NE(lp.find("[mamba3]"), std::string::npos) << lp;
  {
    torch::NoGradGuard ng;
    torch::manual_seed(7);
    for (auto& p : m->parameters())
      if (p.dim() == 2) p.normal_(0, 0.2);
  }
  torch::manual_seed(8);
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64);
  auto doc = torch::cat({torch::zeros({2, 10}, torch::kInt64), torch::ones({2, 14}, torch::kInt64)}, 1);
  auto loss = m->loss(idx, idx, doc);
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  auto g = m->blocks->ptr(2)->as<BlockImpl>()->mixer->named_parameters()["in_proj.weight"].grad();
  ASSERT_TRUE(g.defined());
  EXPECT_GT(g.abs().sum().item<double>(), 0.0);

  torch::NoGradGuard ng;
  auto a = m->hidden(idx, {});
  auto j = idx.clone();
  j.index_put_({Slice(), 13}, (j.index({Slice(), 13}) + 1) % 300);
  auto b = m->hidden(j, {});
  EXPECT_TRUE(torch::equal(a.slice(1, 0, 13), b.slice(1, 0, 13)));
  EXPECT_GT(max_diff(a.select(1, 13), b.select(1, 13)), 1e-6);
  // Changing document 0 leaves document 1 untouched, attention and Mamba layers alike.
  auto other = idx.clone();
  other.index_put_({Slice(), Slice(0, 10)}, (idx.index({Slice(), Slice(0, 10)}) + 7) % 300);
  EXPECT_LT(max_diff(m->hidden(idx, doc).slice(1, 10), m->hidden(other, doc).slice(1, 10)), 1e-5);
}

// ---- the catalog row

TEST(Mamba3Catalog, RowDefaultsAndAdjust) {
  const auto& s = catalog::spec_mamba3();
  EXPECT_STREQ(s.name, "mamba3");
  EXPECT_EQ(s.tier, catalog::Tier::Training);
  EXPECT_STREQ(s.family, "mixer");
  ASSERT_NE(s.check, nullptr);
  ASSERT_NE(s.adjust, nullptr);
  for (auto& p : s.params)
    if (p.type == catalog::ParamType::Int || p.type == catalog::ParamType::Float) {
      const double v = std::stod(p.def);
      EXPECT_TRUE(v >= p.lo && v <= p.hi) << p.name << " default " << p.def;
    }
  auto a = mamba3_args();
  EXPECT_EQ(a.str("pattern"), "AAM");
  EXPECT_TRUE(a.flag("trapezoidal"));
  EXPECT_TRUE(a.flag("bc_norm"));
  EXPECT_EQ(a.f64("rope_fraction"), 0.0);
  EXPECT_EQ(a.i64("mimo_rank"), 1);
  catalog::ModelView v;
  v.depth = 16;
  v.d_model = 256;
  v.n_head = 4;
  v.head_dim = 64;
  v.context = 256;
  s.adjust(a, v);
  EXPECT_EQ(v.layer_pattern, "AAM");
  EXPECT_EQ(v.layers_of('M'), (std::vector<int64_t>{2, 5, 8, 11, 14}));
  EXPECT_TRUE(s.check(a, v).empty());
  for (const char* ok : {"0.5", "1.0"}) EXPECT_TRUE(s.check(mamba3_args({{"rope_fraction", ok}}), v).empty()) << ok;
  EXPECT_TRUE(s.check(mamba3_args({{"mimo_rank", "4"}, {"chunk", "16"}}), v).empty());
  EXPECT_TRUE(s.check(mamba3_args({{"chunk", "100"}}), v).empty());  // need not divide the context
  // Mamba3Options reads every parameter it needs from the resolved row.
  ModelConfig c;
  c.d_model = 256;
  Mamba3Options o = Mamba3Options::from(mamba3_args({{"rope_fraction", "0.5"}, {"mimo_rank", "2"}}), c);
  EXPECT_EQ(o.n_head(), 8);
  EXPECT_EQ(o.n_angle(), 16);
  EXPECT_EQ(o.mimo_rank, 2);
}

TEST(Mamba3Catalog, CheckMessagesNameTheRuleAndTheFix) {
  catalog::ModelView base;
  base.depth = 16;
  base.d_model = 256;
  base.n_head = 4;
  base.head_dim = 64;
  base.context = 256;
  struct Case {
    std::map<std::string, std::string> args;
    int64_t depth, tp;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{{"pattern", "AXM"}}, 16, 1, "pattern 'AXM' may hold only A (attention) and M (Mamba-3) letters"},
      {{{"pattern", ""}}, 16, 1, "may hold only A (attention) and M"},
      {{{"pattern", "AA"}}, 16, 1, "pattern 'AA' has no M"},
      {{{"pattern", "AAM"}}, 2, 1, "pattern 'AAM' repeated over depth 2 gives no M layer; use a shorter pattern"},
      {{{"headdim", "48"}}, 16, 1, "headdim 48 does not divide expand x d_model = 512"},
      {{{"rope_fraction", "0.3"}}, 16, 1, "rope_fraction 0.3 must be 0 (real state), 0.5 or 1.0"},
      {{{"rope_fraction", "0.5"}, {"d_state", "2"}}, 16, 1, "rotates no pair; raise d_state to at least 4"},
      {{{"dt_min", "0.2"}}, 16, 1, "dt_min 0.2 must be below dt_max 0.1"},
      {{}, 16, 3, "8 SSM heads (expand x d_model / headdim) do not divide by tp 3"},
  };
  const auto& s = catalog::spec_mamba3();
  for (auto& c : cases) {
    auto a = mamba3_args(c.args);
    catalog::ModelView v = base;
    v.depth = c.depth;
    v.tp = c.tp;
    s.adjust(a, v);
    auto errs = s.check(a, v);
    ASSERT_EQ(errs.size(), 1u) << c.message;
    EXPECT_NE(errs[0].find(c.message), std::string::npos) << errs[0];
  }
}
