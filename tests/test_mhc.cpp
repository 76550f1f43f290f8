// mHC (docs/modules.md section 3): Sinkhorn gives doubly stochastic matrices (non-negative, rows and
// columns summing to 1) without overflow, closed under products (spectral norm <= 1); the stream
// mean is preserved; the maps are per token (no pooling over the sequence); n = 1 with unit
// coefficients is the baseline (loss bitwise, gradients to fp32 rounding); adding mHC leaves the backbone's
// initialization unchanged; the streams persist across blocks (not collapsed and re-expanded per
// block, the reproduction bug); it stacks with Engram, Mamba-3, DSA and MTP; stats, FLOPs, describe, the plan's wrapper guard and the catalog row.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "common/device.h"
#include "common/error.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "model/mhc.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

// The registry-wide tests' geometry: depth 3, d_model 32, 2 heads of 16, context 32.
using slm::test::tiny_config;

ModelConfig with_mhc(const std::map<std::string, std::string>& over = {}) { return slm::test::tiny_with("mhc", over); }

MhcWrapImpl& wrap_of(GPT& m, int64_t layer) {
  auto* w = dynamic_cast<MhcWrapImpl*>(m->blocks->ptr(layer)->as<BlockImpl>()->wrap.get());
  EXPECT_NE(w, nullptr) << "layer " << layer << " has no mHC wrapper";
  return *w;
}

void randomize(torch::nn::Module& m, uint64_t seed, double scale) { slm::test::perturb(m, seed, scale); }

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

// ---- Sinkhorn

TEST(MhcSinkhorn, DoublyStochasticNonNegativeAndFiniteAtLargeLogits) {
  torch::manual_seed(1);
  for (int64_t n : {1, 2, 4, 8}) {
    auto z = torch::randn({3, 5, n, n});
    auto m = sinkhorn(z, 20);
    EXPECT_EQ(m.sizes(), z.sizes());
    EXPECT_EQ(m.scalar_type(), torch::kFloat32);
    EXPECT_GE(m.min().item<double>(), 0.0) << "n=" << n;
    EXPECT_LT(max_diff(m.sum(-2), torch::ones({3, 5, n})), 1e-6) << "columns, n=" << n;
    EXPECT_LT(max_diff(m.sum(-1), torch::ones({3, 5, n})), 1e-3) << "rows, n=" << n;
  }
  // Sharp logits converge more slowly; more iterations get the rows there too.
  auto sharp = torch::randn({64, 4, 4}) * 4;
  const double err20 = max_diff(sinkhorn(sharp, 20).sum(-1), torch::ones({64, 4}));
  const double err200 = max_diff(sinkhorn(sharp, 200).sum(-1), torch::ones({64, 4}));
  EXPECT_LT(err200, std::max(1e-5, err20 / 10)) << "rows after 20 iterations " << err20 << ", after 200 " << err200;
  // Logits far beyond exp's fp32 range: log-domain, so finite and still doubly stochastic.
  auto big = sinkhorn(torch::randn({4, 4, 4}) * 200, 50);
  EXPECT_TRUE(torch::isfinite(big).all().item<bool>());
  EXPECT_GE(big.min().item<double>(), 0.0);
  EXPECT_LT(max_diff(big.sum(-2), torch::ones({4, 4})), 1e-5);
  // bf16 logits come back fp32 (Sinkhorn in fp32 whatever the input).
  EXPECT_EQ(sinkhorn(torch::randn({2, 3, 3}).to(torch::kBFloat16), 20).scalar_type(), torch::kFloat32);
  // Uniform logits give the uniform matrix 1/n; a 1 x 1 matrix is exactly 1.
  EXPECT_TRUE(torch::allclose(sinkhorn(torch::zeros({4, 4}), 20), torch::full({4, 4}, 0.25), 0, 1e-7));
  EXPECT_EQ(sinkhorn(torch::full({1, 1}, 7.5), 20).item<float>(), 1.0f);
}

TEST(MhcSinkhorn, ProductsStayInTheBirkhoffPolytope) {
  torch::manual_seed(2);
  auto ms = sinkhorn(torch::randn({64, 4, 4}) * 3, 20).to(torch::kFloat64);
  auto p = torch::eye(4, torch::kFloat64);
  for (int64_t i = 0; i < 64; ++i) p = torch::matmul(ms[i], p);
  const double spectral = torch::linalg_svdvals(p).max().item<double>();
  EXPECT_LE(spectral, 1.0 + 1e-3);
  EXPECT_GT(spectral, 0.99) << "the all-ones direction is preserved, so the norm is ~1";
  // Unconstrained positive matrices of the same logits grow without bound: what SK prevents.
  auto raw = torch::exp(torch::randn({64, 4, 4}) * 3).to(torch::kFloat64);
  auto q = torch::eye(4, torch::kFloat64);
  for (int64_t i = 0; i < 64; ++i) q = torch::matmul(raw[i], q);
  EXPECT_GT(torch::linalg_svdvals(q).max().item<double>(), 1e6);
}

// ---- the wrapper

TEST(MhcWrap, PreservesTheStreamMeanWhenTheSubLayersAddNothing) {
  // The backbone's output projections start at zero: F = 0, so x' = H_res x and, columns summing to
  // 1, sum_i x'_i = sum_i x_i (spec test c), for random maps and streams that differ.
  ModelConfig c = with_mhc({{"streams", "4"}});
  GPT m(c);
  auto& w = wrap_of(m, 1);
  randomize(*w.mixer_map, 3, 1.0);
  randomize(*w.ffn_map, 4, 1.0);
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto x = torch::randn({2, 7, 4, 32});
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  torch::NoGradGuard ng;
  auto y = blk.forward(x, ctx);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_GT(max_diff(y, x), 1e-2) << "H_res did not mix the streams";
  EXPECT_LT(max_diff(y.sum(2), x.sum(2)), 1e-4) << "the stream sum changed";
}

TEST(MhcWrap, StreamsStayFp32UnderBf16Autocast) {
  // With a = 0 the coefficients do not depend on phi's (bf16) product, and with the backbone's zero
  // output projections F = 0: the block is x' = H_res x, which must come out bitwise as in fp32.
  GPT m(with_mhc({{"streams", "4"}}));
  auto& w = wrap_of(m, 0);
  {
    torch::NoGradGuard ng;
    for (MhcMapImpl* map : {w.mixer_map.get(), w.ffn_map.get()}) {
      map->alpha.zero_();
      map->bias.slice(0, 8).add_(torch::randn({16}));  // a mixing H_res
    }
  }
  auto& blk = *m->blocks->ptr(0)->as<BlockImpl>();
  auto x = torch::randn({2, 7, 4, 32});
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  auto y32 = blk.forward(x, ctx);
  const torch::Device cpu(torch::kCPU);
  device::set_autocast(cpu, true);
  auto y16 = blk.forward(x, ctx);
  device::set_autocast(cpu, false);
  device::clear_autocast_cache();
  EXPECT_EQ(y16.scalar_type(), torch::kFloat32);
  EXPECT_GT(max_diff(y32, x), 1e-2) << "H_res did not mix";
  EXPECT_TRUE(torch::equal(y16, y32)) << "the stream mix ran in bf16 (" << max_diff(y16, y32) << ")";
}

TEST(MhcWrap, CoefficientsArePerTokenNotPooledOverTheSequence) {
  MhcMap map(32, 4, 0.5);
  randomize(*map, 5, 0.5);
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 10, 4, 32});
  auto other = x.clone();
  other.index_put_({Slice(), Slice(6)}, torch::randn({2, 4, 4, 32}));  // later tokens
  other.index_put_({Slice(), Slice(0, 2)}, torch::randn({2, 2, 4, 32}));  // earlier tokens
  auto [pre, post, res] = map->coefficients(x, 20);
  auto [pre2, post2, res2] = map->coefficients(other, 20);
  EXPECT_EQ(pre.sizes(), (std::vector<int64_t>{2, 10, 4}));
  EXPECT_EQ(res.sizes(), (std::vector<int64_t>{2, 10, 4, 4}));
  EXPECT_TRUE(torch::equal(pre.index({Slice(), Slice(2, 6)}), pre2.index({Slice(), Slice(2, 6)})));
  EXPECT_TRUE(torch::equal(post.index({Slice(), Slice(2, 6)}), post2.index({Slice(), Slice(2, 6)})));
  EXPECT_TRUE(torch::equal(res.index({Slice(), Slice(2, 6)}), res2.index({Slice(), Slice(2, 6)})));
  EXPECT_GT(max_diff(res.index({Slice(), Slice(6)}), res2.index({Slice(), Slice(6)})), 1e-4);
  // Ranges: H_pre in (0, 1), H_post in (0, 2).
  EXPECT_GT(pre.min().item<double>(), 0.0);
  EXPECT_LT(pre.max().item<double>(), 1.0);
  EXPECT_GT(post.min().item<double>(), 0.0);
  EXPECT_LT(post.max().item<double>(), 2.0);
}

TEST(MhcWrap, InitMapsAreTheDocumentedOnes) {
  MhcMap map(32, 4, 0.01);
  EXPECT_EQ(map->phi->weight.sizes(), (std::vector<int64_t>{24, 128}));  // n^2 + 2n logits from n C
  EXPECT_TRUE(torch::equal(map->alpha, torch::full({3}, 0.01)));
  auto b = map->bias;
  EXPECT_TRUE(torch::equal(b.slice(0, 0, 8), torch::zeros({8}))) << "b_pre = b_post = 0";
  EXPECT_TRUE(torch::equal(b.slice(0, 8).view({4, 4}), torch::eye(4) * 4)) << "b_res = 4 I";
  torch::NoGradGuard ng;
  auto [pre, post, res] = map->coefficients(torch::randn({1, 3, 4, 32}), 20);
  EXPECT_LT(max_diff(pre, torch::full_like(pre, 0.5)), 0.05);
  EXPECT_LT(max_diff(post, torch::ones_like(post)), 0.1);
  const double diag = std::exp(4.0) / (std::exp(4.0) + 3);  // 0.948: near the identity
  EXPECT_LT(max_diff(res.diagonal(0, -2, -1), torch::full({1, 3, 4}, diag)), 0.02);
}

// ---- the model

TEST(MhcModel, AddingMhcLeavesTheBackboneInitUnchanged) {
  GPT base(tiny_config());
  GPT m(with_mhc());
  auto bp = base->named_parameters();
  int64_t shared = 0;
  for (auto& p : m->named_parameters()) {
    if (p.key().find(".wrap.") != std::string::npos) continue;
    ASSERT_TRUE(bp.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), bp[p.key()])) << p.key() << " differs from the baseline's";
    ++shared;
  }
  EXPECT_EQ(shared, static_cast<int64_t>(bp.size()));
}

TEST(MhcModel, OneStreamWithUnitCoefficientsIsTheBaseline) {
  // Spec test d: n = 1, H_pre = H_post = H_res = 1. a = 0 removes the dynamic part; sigmoid(40) is 1
  // in fp32; 2 sigmoid(0) = 1; Sinkhorn of a 1 x 1 matrix is 1.
  GPT base(tiny_config());
  GPT m(with_mhc({{"streams", "1"}}));
  {
    torch::NoGradGuard ng;
    for (int64_t l = 0; l < 3; ++l)
      for (MhcMapImpl* map : {wrap_of(m, l).mixer_map.get(), wrap_of(m, l).ffn_map.get()}) {
        map->phi->weight.normal_();  // anything: a = 0 cancels it
        map->alpha.zero_();
        map->bias[0] = 40.0;  // b_pre
        map->bias[1] = 0.0;   // b_post
        map->bias[2] = 3.0;   // b_res: any value
      }
    randomize(*base, 6, 0.05);  // a live backbone, the same in both
    auto bp = base->named_parameters();
    for (auto& p : m->named_parameters())
      if (bp.contains(p.key())) p.value().copy_(bp[p.key()]);
  }
  base->train();
  m->train();
  torch::manual_seed(7);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto doc = (torch::arange(32) >= 11).to(torch::kInt64).unsqueeze(0).expand({2, 32}).contiguous();
  auto lb = base->loss(idx, idx.roll(-1, 1), doc);
  auto lm = m->loss(idx, idx.roll(-1, 1), doc);
  EXPECT_EQ(lb.item<double>(), lm.item<double>());
  lb.backward();
  lm.backward();
  auto bp = base->named_parameters();
  int64_t compared = 0;
  for (auto& p : m->named_parameters()) {
    if (!bp.contains(p.key())) continue;
    // Equal to fp32 rounding, not bitwise: autograd sums the residual's gradient terms in another order
    // ((a + b) + c against a + (b + c)) when the stream read sits between the residual and the norm.
    const auto& g = bp[p.key()].grad();
    EXPECT_LE(max_diff(p.value().grad(), g), 1e-5 * g.abs().max().item<double>()) << p.key();
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int64_t>(bp.size()));
  // The same model with its gates live is no longer the baseline: the test can fail.
  {
    torch::NoGradGuard ng;
    wrap_of(m, 1).mixer_map->bias[1] = 1.0;  // H_post = 2 sigmoid(1) = 1.46
  }
  EXPECT_NE(m->loss(idx, idx.roll(-1, 1), doc).item<double>(), lb.item<double>());
}

TEST(MhcModel, StreamsPersistAcrossBlocks) {
  // The reproduction bug: collapsing and re-expanding around each block makes HC a plain residual.
  // With streams that persist, the first map of layer 2 sees streams that layers 0-1 made different,
  // so its H_res matters; were the streams re-expanded (identical copies), a doubly stochastic H_res
  // would map them to themselves and change nothing.
  GPT m(with_mhc({{"streams", "4"}, {"sinkhorn_iters", "100"}}));
  randomize(*m, 8, 0.3);
  m->eval();
  torch::NoGradGuard ng;
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto h = m->hidden(idx, {});
  auto& map = *wrap_of(m, 2).mixer_map;
  map.bias.slice(0, 8).add_(torch::randn({16}) * 3);
  const double effect = max_diff(m->hidden(idx, {}), h);
  // Control: on identical streams (one expanded token) the same H_res changes nothing but for
  // Sinkhorn's unconverged row sums.
  auto x = torch::randn({1, 5, 1, 32}).expand({1, 5, 4, 32});
  auto [pre, post, res] = map.coefficients(x, 100);
  const double control = max_diff((res.unsqueeze(-1) * x.unsqueeze(2)).sum(3), x);
  EXPECT_LT(control, 1e-3);
  EXPECT_GT(effect, 100 * control) << "layer 2's H_res changed as little as on identical streams: " << effect
                                   << " against " << control;
}

TEST(MhcModel, StatsShowMixingAndSinkhornError) {
  GPT m(with_mhc());
  m->train();
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  GPTImpl::Parts parts;
  m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  for (const char* k : {"mhc.res_diag", "mhc.pre", "mhc.post", "mhc.sinkhorn_row_err", "mhc.L0.res_diag",
                        "mhc.L2.res_diag", "mhc.n_maps"})
    ASSERT_TRUE(parts.stats.count(k)) << k;
  EXPECT_EQ(parts.stats["mhc.n_maps"], 6.0);  // 3 layers x (mixer, ffn)
  EXPECT_NEAR(parts.stats["mhc.res_diag"], std::exp(4.0) / (std::exp(4.0) + 3), 0.02);
  EXPECT_NEAR(parts.stats["mhc.pre"], 0.5, 0.05);
  EXPECT_NEAR(parts.stats["mhc.post"], 1.0, 0.1);
  EXPECT_LT(parts.stats["mhc.sinkhorn_row_err"], 1e-3);
  // Evaluation records nothing (no host sync off the training path).
  m->eval();
  GPTImpl::Parts ev;
  m->loss(idx, idx.roll(-1, 1), {}, 0, &ev);
  EXPECT_EQ(ev.stats.count("mhc.res_diag"), 0u);
}

TEST(MhcModel, FlopsDescribeAndPlan) {
  ModelConfig c = with_mhc({{"streams", "4"}, {"sinkhorn_iters", "20"}});
  GPT m(c);
  GPT base(tiny_config());
  const double n = 4, C = 32, mm = n * n + 2 * n;
  const double per_layer = 2 * (6 * (n * C * mm + mm * C) + 18 * 20 * n * n);
  EXPECT_DOUBLE_EQ(m->flops_per_token(32) - base->flops_per_token(32), 3 * per_layer + 2 * n * C);
  const std::string plan = layer_plan(*m);
  EXPECT_NE(plan.find("| mhc (4 streams, sinkhorn 20, alpha 0.01)"), std::string::npos) << plan;
  EXPECT_NE(plan.find("streams: mhc: 4 residual streams"), std::string::npos) << plan;
  EXPECT_NE(plan.find("[mhc]"), std::string::npos) << plan;
  // phi trains with the block matrices (Muon); the gates and biases with the scalars.
  auto mats = m->matrix_params();
  EXPECT_NE(std::find(mats.begin(), mats.end(), "blocks.0.wrap.mixer_map.phi.weight"), mats.end());
  EXPECT_EQ(std::find(mats.begin(), mats.end(), "blocks.0.wrap.mixer_map.bias"), mats.end());
}

TEST(MhcModel, WrapperRefusesAPlainResidualAndPlanRefusesASecondWrapper) {
  GPT m(with_mhc());
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  auto& blk = *m->blocks->ptr(0)->as<BlockImpl>();
  std::string msg;
  try {
    blk.forward(torch::randn({1, 4, 32}), ctx);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("[mhc] layer 0 expects the streams (B, T, 4, 32)"), std::string::npos) << msg;
  ModelConfig c = tiny_config();
  ModelPlan plan = model_plan(c);
  plan.layers[1].wrap = [] { return BlockWrap(); };
  plan.layers[1].modules.push_back("gateskip");
  msg.clear();
  try {
    apply_mhc(slm::test::module_args("mhc"), c, plan);
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("[mhc] layer 1 already has a block wrapper (its modules: gateskip)"), std::string::npos) << msg;
}

TEST(MhcModel, StacksWithTheOtherModulesOfThePhasePlans) {
  // plans/phase1.toml and phase2.toml put mHC beside Engram (a branch that reads the streams),
  // Mamba-3 and DSA (mixers with their own generation state) and MTP (reads the collapsed state).
  using torch::indexing::Slice;
  const std::vector<std::vector<std::string>> stacks = {
      {"mamba3.pattern=AAM,d_state=16,headdim=16,chunk=8", "engram.layers=0,1,table_size=257", "mhc.streams=2", "mtp"},
      {"dsa.topk=8,window=2,path=sparse,warmup_steps=0", "mhc"},
  };
  for (const auto& texts : stacks) {
    std::vector<std::string> errors;
    std::vector<catalog::ModuleArgs> mods;
    for (auto& t : texts) mods.push_back(catalog::resolve_arg(t, errors));
    ModelConfig c = tiny_config();
    catalog::ModelView v;
    v.depth = c.n_layer;
    v.d_model = c.d_model;
    v.n_head = c.n_head;
    v.head_dim = c.head_dim;
    v.context = c.context;
    if (errors.empty()) errors = catalog::check(mods, v, /*training=*/true);
    ASSERT_TRUE(errors.empty()) << texts[0] << ": " << errors[0];
    c.layer_pattern = catalog::adjusted(mods, v).layer_pattern;
    c.modules = mods;
    GPT m(c);
    randomize(*m, 9, 0.05);
    const std::string plan = layer_plan(*m);
    EXPECT_NE(plan.find("| mhc ("), std::string::npos) << plan;
    m->train();
    auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
    auto doc = (torch::arange(32) >= 12).to(torch::kInt64).unsqueeze(0).expand({2, 32}).contiguous();
    auto loss = m->loss(idx, idx.roll(-1, 1), doc, 1000);
    ASSERT_TRUE(std::isfinite(loss.item<double>())) << texts[0];
    loss.backward();
    m->eval();
    torch::NoGradGuard ng;
    auto packed = m->hidden(idx.slice(0, 0, 1), doc.slice(0, 0, 1));
    auto alone = m->hidden(idx.index({Slice(0, 1), Slice(12)}), {});
    EXPECT_LT(max_diff(packed.index({Slice(), Slice(12)}), alone), 1e-4) << texts[0] << ": documents leak";
    std::vector<int32_t> prompt = {0, 11, 23, 5, 7};
    GenerateOptions g;
    g.max_tokens = 20;
    auto cached = generate(*m, prompt, g);
    g.use_cache = false;
    EXPECT_EQ(cached, generate(*m, prompt, g)) << texts[0] << ": generation with the cache differs";
  }
}

// ---- the catalog row

TEST(MhcCatalog, RowDefaultsAndRanges) {
  const auto& s = catalog::spec_mhc();
  EXPECT_STREQ(s.name, "mhc");
  EXPECT_EQ(s.tier, catalog::Tier::Training);
  EXPECT_STREQ(s.family, "residual");
  auto d = slm::test::module_args("mhc");
  EXPECT_EQ(d.i64("streams"), 4);
  EXPECT_EQ(d.i64("sinkhorn_iters"), 20);
  EXPECT_EQ(d.f64("alpha"), 0.01);
  for (const char* bad : {"mhc.streams=0", "mhc.sinkhorn_iters=0", "mhc.alpha=2", "mhc.streamz=2"}) {
    std::vector<std::string> errors;
    catalog::resolve_arg(bad, errors);
    EXPECT_FALSE(errors.empty()) << bad << " was accepted";
  }
}
