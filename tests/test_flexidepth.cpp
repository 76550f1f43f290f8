// FlexiDepth (docs/modules.md section 8): (d) tau = 0 is the base model with each block's update
// scaled by G; a tau no gate passes routes every token to the adapter (the identity at init); a
// mixed batch takes each token by its own gate; the skip loss alpha mean_t (sum_l G)^2 on hand-worked
// gates, with its gradient; the router and adapter get gradient from the LM loss; the backbone's init
// is unchanged; the catalog row's refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "model/flexidepth.h"
#include "model/gpt.h"
#include "test_util.h"
#include "test_tolerance.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

using slm::test::tiny_config;

ModelConfig with_flexidepth(const std::map<std::string, std::string>& over = {}) {
  return slm::test::tiny_with("flexidepth", over);
}

FlexiDepthWrapImpl& wrap_of(GPT& m, int64_t layer) {
  auto* w = dynamic_cast<FlexiDepthWrapImpl*>(m->blocks->ptr(layer)->as<BlockImpl>()->wrap.get());
  EXPECT_NE(w, nullptr) << "layer " << layer << " has no FlexiDepth wrapper";
  return *w;
}

void randomize(torch::nn::Module& m, uint64_t seed, double scale = 0.05) { slm::test::perturb(m, seed, scale); }

void copy_params(GPT& from, GPT& to) {
  torch::NoGradGuard ng;
  auto dst = to->named_parameters();
  for (auto& p : from->named_parameters()) dst[p.key()].copy_(p.value());
}

void set_router(FlexiDepthWrapImpl& w, double bias) {
  torch::NoGradGuard ng;
  w.router->weight.zero_();
  w.router->bias.fill_(bias);
}

}  // namespace

// (d) tau = 0: every G > 0 passes, out = x + G (block(x) - x) with the base model's block.
TEST(FlexiDepth, TauZeroIsTheBaseModelScaledByG) {
  GPT base(tiny_config());
  randomize(*base, 1);
  GPT m(with_flexidepth({{"tau", "0"}}));
  copy_params(base, m);
  for (int64_t l = 0; l < 3; ++l) randomize(*wrap_of(m, l).router, 10 + l, 0.3);  // G varies by token
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  torch::NoGradGuard ng;
  Ctx ctx;
  ctx.cos = base->rope_cos;
  ctx.sin = base->rope_sin;
  auto x = rms_norm(base->wte(idx));
  for (int64_t l = 0; l < 3; ++l) {
    ctx.layer = l;
    auto G = wrap_of(m, l).gate(x);
    EXPECT_GT((G.max() - G.min()).item<double>(), 1e-3) << "the test wants gates that differ between tokens";
    auto y = base->blocks->ptr(l)->as<BlockImpl>()->forward(x, ctx);
    x = x + G * (y - x);
  }
  m->eval();
  auto got = m->hidden(idx, {});
  EXPECT_TRUE(slm::test::fp32_close(got, x, 3 * slm::test::block_terms(32, 16, 32, 128)));
  // With G = 1 (bias 100) the base model itself.
  for (int64_t l = 0; l < 3; ++l) set_router(wrap_of(m, l), 100.0);
  auto b = base->hidden(idx, {});
  EXPECT_TRUE(slm::test::fp32_close(m->hidden(idx, {}), b, 3 * slm::test::block_terms(32, 16, 32, 128)));
}

// A tau no gate passes: every token takes the adapter, the identity at init (c_proj zero): the
// hidden state is the embedding, bitwise, however the blocks are set.
TEST(FlexiDepth, EveryTokenOnTheAdapterIsTheIdentityAtInit) {
  GPT m(with_flexidepth({{"tau", "0.99"}, {"router_bias", "0"}}));
  {
    torch::NoGradGuard ng;
    for (auto& p : m->named_parameters())
      if (p.key().find("adapter") == std::string::npos && p.key().find("router") == std::string::npos)
        p.value().add_(torch::randn_like(p.value()) * 0.05);
  }
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  m->train();
  GPTImpl::Parts parts;
  m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  EXPECT_EQ(parts.stats.at("flexidepth.layers_used"), 0.0);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(m->hidden(idx, {}), rms_norm(m->wte(idx))));
}

// Each token by its own gate: G > tau -> x + G delta, else x + (1 - G) adapter(norm(x)).
TEST(FlexiDepth, EachTokenTakesThePathOfItsGate) {
  GPT m(with_flexidepth({{"router_bias", "0"}, {"adapter_hidden", "8"}}));
  randomize(*m, 2);
  auto& w = wrap_of(m, 0);
  randomize(*w.router, 3, 0.5);
  auto& b = *m->blocks->ptr(0)->as<BlockImpl>();
  torch::NoGradGuard ng;
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  auto x = torch::randn({2, 32, 32});
  auto out = w.forward(b, x, ctx);
  auto G = w.gate(x);
  auto full = G.gt(0.5).squeeze(-1);
  const int64_t n_full = full.sum().item<int64_t>();
  ASSERT_GT(n_full, 0);
  ASSERT_LT(n_full, 64) << "the test wants both paths";
  auto h = x + b.mixer_delta(x, ctx);
  auto y = h + b.ffn_delta(h, ctx);
  auto a = torch::relu(w.adapter_fc(rms_norm(x)));
  auto light = x + (1 - G) * w.adapter_proj(a * a);
  auto heavy = x + G * (y - x);
  auto want = torch::where(full.unsqueeze(-1), heavy, light);
  EXPECT_TRUE(slm::test::fp32_close(out, want, slm::test::block_terms(32, 16, 32, 128)));
}

// alpha mean_t (sum_l G_l)^2: G = 0.5 and 0.75 on layers 0 and 2 -> (1.25)^2 = 1.5625; its gradient
// on each router bias is 2 S G (1 - G).
TEST(FlexiDepth, SkipLossOnHandWorkedGates) {
  GPT m(with_flexidepth({{"layers", "0,2"}, {"alpha", "0.001"}}));
  set_router(wrap_of(m, 0), 0.0);
  set_router(wrap_of(m, 2), std::log(3.0));
  m->train();
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  GPTImpl::Parts parts;
  for (int rep = 0; rep < 2; ++rep) {  // twice: the accumulator starts afresh each forward
    m->zero_grad();
    m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
    ASSERT_EQ(parts.aux.size(), 1u);
    EXPECT_EQ(parts.aux[0].name, "flexidepth_skip");
    EXPECT_DOUBLE_EQ(parts.aux[0].weight, 0.001);
    EXPECT_NEAR(parts.aux[0].value.item<double>(), 1.5625, 1e-6);
  }
  parts.aux[0].value.backward();
  EXPECT_NEAR(wrap_of(m, 0).router->bias.grad().item<double>(), 2 * 1.25 * 0.25, 1e-5);
  EXPECT_NEAR(wrap_of(m, 2).router->bias.grad().item<double>(), 2 * 1.25 * 0.75 * 0.25, 1e-5);
  // Three layers: 0.5 + 0.75 + 0.25 = 1.5 -> 2.25.
  GPT m3(with_flexidepth());
  set_router(wrap_of(m3, 0), 0.0);
  set_router(wrap_of(m3, 1), std::log(3.0));
  set_router(wrap_of(m3, 2), -std::log(3.0));
  m3->train();
  m3->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  ASSERT_EQ(parts.aux.size(), 1u);
  EXPECT_NEAR(parts.aux[0].value.item<double>(), 2.25, 1e-6);
  EXPECT_NEAR(parts.stats.at("flexidepth.layers_used"), 1.0, 1e-9) << "only G 0.75 is above tau 0.5";
  m3->eval();
  torch::NoGradGuard ng;
  m3->hidden(idx, {});  // evaluation adds no loss (and must not throw)
}

TEST(FlexiDepth, RouterAndAdapterLearnFromTheLmLoss) {
  GPT m(with_flexidepth({{"alpha", "0"}, {"router_bias", "0"}}));
  randomize(*m, 4);
  m->train();
  auto idx = torch::randint(0, 300, {4, 32}, torch::kInt64);
  GPTImpl::Parts parts;
  auto loss = m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  EXPECT_TRUE(parts.aux.empty());
  loss.backward();
  for (int64_t l = 0; l < 3; ++l) {
    auto& w = wrap_of(m, l);
    EXPECT_GT(w.router->weight.grad().abs().sum().item<double>(), 0) << "layer " << l;
    EXPECT_GT(w.adapter_proj->weight.grad().abs().sum().item<double>(), 0) << "layer " << l;
  }
}

TEST(FlexiDepth, BackboneInitIsUnchanged) {
  GPT base(tiny_config());
  GPT m(with_flexidepth());
  auto mine = m->named_parameters();
  for (auto& p : base->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), mine[p.key()])) << p.key() << " differs from the baseline's init";
  EXPECT_NEAR(wrap_of(m, 0).gate(torch::zeros({1, 1, 32}) + 1).item<double>(), 1 / (1 + std::exp(-1.0)), 0.05);
}

TEST(FlexiDepth, CatalogRefusesBadArguments) {
  catalog::ModelView v = slm::test::model_view(4, 128, 2, 64, 256);
  auto errors_of = [&](const std::string& text) {
    std::vector<std::string> e;
    auto a = catalog::resolve_arg(text, e);
    if (e.empty()) e = catalog::check({a}, v, true);
    return e;
  };
  EXPECT_TRUE(errors_of("flexidepth").empty());
  EXPECT_FALSE(errors_of("flexidepth.layers=0,4").empty());
  EXPECT_FALSE(errors_of("flexidepth.layers=2,2").empty());
  EXPECT_FALSE(errors_of("flexidepth.tau=1").empty());
  EXPECT_FALSE(errors_of("flexidepth.adapter_hidden=1024").empty());
  EXPECT_FALSE(errors_of("flexidepth.adapter_hidden=0").empty());
  EXPECT_FALSE(errors_of("flexidepth.alpa=0.1").empty());
  ModelConfig c = tiny_config();
  c.modules = {slm::test::module_args("mhc"), slm::test::module_args("flexidepth")};
  EXPECT_THROW(GPT{c}, std::exception);
}
