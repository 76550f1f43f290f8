// YaRN against the spec's numbers (docs/modules.md section 13): the ramp boundaries, s = 1 is exactly
// RoPE, pairs below `low` unchanged and above `high` exactly theta / s, the logit scale, relative
// position invariance; and a model moved to a longer context keeps its outputs on the first T.
#include <gtest/gtest.h>

#include <cmath>

#include "model/gpt.h"
#include "model/yarn.h"
#include "test_model_util.h"
#include "test_tolerance.h"
#include "test_util.h"

using namespace slm;

TEST(Yarn, RampBoundariesMatchTheWorkedNumbers) {
  YarnConfig y;
  y.original_context = 4096;
  y.scale = 4;
  EXPECT_EQ(yarn_bounds(64, 1e4, y), std::make_pair(int64_t(10), int64_t(23)));
  EXPECT_EQ(yarn_bounds(128, 1e4, y), std::make_pair(int64_t(20), int64_t(46)));
}

TEST(Yarn, ScaleOneIsExactlyRope) {
  YarnConfig y;
  y.original_context = 256;
  y.scale = 1;
  auto [c1, s1] = yarn_rope_tables(300, 32, 1e4, y);
  auto [c2, s2] = rope_tables(300, 32, 1e4);
  EXPECT_TRUE(torch::equal(c1, c2));
  EXPECT_TRUE(torch::equal(s1, s2));
  EXPECT_EQ(yarn_logit_scale(y), 1.0);
}

TEST(Yarn, FastPairsKeptSlowPairsInterpolated) {
  YarnConfig y;
  y.original_context = 4096;
  y.scale = 8;
  auto f = yarn_inv_freq(64, 1e4, y);
  YarnConfig one = y;
  one.scale = 1;
  auto base = yarn_inv_freq(64, 1e4, one);
  auto [low, high] = yarn_bounds(64, 1e4, y);
  for (int64_t i = 0; i < 32; ++i) {
    const double a = f[i].item<double>(), b = base[i].item<double>();
    if (i <= low) EXPECT_DOUBLE_EQ(a, b) << i;
    else if (i >= high) EXPECT_NEAR(a, b / 8, 1e-18) << i;
    else EXPECT_TRUE(a < b && a > b / 8) << i;  // inside the ramp: between the two
  }
}

TEST(Yarn, LogitScale) {
  YarnConfig y;
  y.scale = 40;
  EXPECT_NEAR(yarn_logit_scale(y), 1.874, 5e-4);  // DeepSeek-V3's figure for s = 40
  y.mscale = false;
  EXPECT_EQ(yarn_logit_scale(y), 1.0);
}

TEST(Yarn, RelativePositionInvariance) {
  YarnConfig y;
  y.original_context = 64;
  y.scale = 4;
  auto [c, s] = yarn_rope_tables(256, 16, 1e4, y);
  torch::manual_seed(1);
  auto q = torch::randn({1, 1, 1, 16}), k = torch::randn({1, 1, 1, 16});
  auto at = [&](const torch::Tensor& x, int64_t pos) {
    auto xs = x.expand({1, pos + 1, 1, 16}).contiguous();
    return apply_rope(xs, c, s).index({0, pos, 0});
  };
  const double d1 = (at(q, 100) * at(k, 90)).sum().item<double>();
  const double d2 = (at(q, 210) * at(k, 200)).sum().item<double>();
  EXPECT_NEAR(d1, d2, 1e-4);
}

TEST(Yarn, LongerContextKeepsTheFirstPositions) {
  ModelConfig c;
  c.vocab = 100;
  c.n_layer = 2;
  c.d_model = 32;
  c.n_head = 2;
  c.head_dim = 16;
  c.context = 16;
  GPT m(c);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.05);
  }
  m->eval();
  torch::NoGradGuard ng;
  auto idx = torch::randint(0, 100, {1, 32}, torch::kInt64);
  auto first = m->hidden(idx.slice(1, 0, 16), {});
  EXPECT_THROW(m->hidden(idx, {}), std::exception);  // beyond the trained context
  m->set_context(32, nullptr);                       // plain RoPE, extended
  auto longer = m->hidden(idx, {});
  EXPECT_TRUE(torch::allclose(longer.slice(1, 0, 16), first, 1e-5, 1e-5));
  YarnConfig y;
  y.scale = 2;
  m->set_context(32, &y);  // YaRN: different tables and temperature, still finite and causal
  auto yl = m->hidden(idx, {});
  EXPECT_TRUE(torch::isfinite(yl).all().item<bool>());
  EXPECT_FALSE(torch::allclose(yl, longer, 1e-4, 1e-4));
  EXPECT_GT(m->attn_logit_scale, 1.0);
}

// Every component whose tables follow the context moves with the model (issue 18 §7): a DSA model
// evaluated at twice its context, plain or YaRN, used to fail on the indexer's RoPE tables
// ("shape '[1, 256, 1, 8]' is invalid"). With plain RoPE its outputs on the first T are unchanged.
TEST(Yarn, DsaIndexerFollowsTheContext) {
  ModelConfig c = slm::test::tiny_config();
  c.context = 16;
  c.modules = {slm::test::module_args("dsa", {{"topk", "8"}, {"window", "2"}, {"warmup_steps", "0"}, {"path", "sparse"}})};
  GPT m(c);
  slm::test::perturb(*m, 3, 0.05);
  m->eval();
  torch::NoGradGuard ng;
  auto idx = torch::randint(0, 100, {1, 32}, torch::kInt64);
  auto first = m->hidden(idx.slice(1, 0, 16), {});
  m->set_context(32, nullptr);
  auto longer = m->hidden(idx, {});
  EXPECT_TRUE(slm::test::fp32_close(longer.slice(1, 0, 16), first, 3 * slm::test::block_terms(32, 16, 32, 128)));
  YarnConfig y;
  y.scale = 2;
  m->set_context(32, &y);
  EXPECT_TRUE(torch::isfinite(m->hidden(idx, {})).all().item<bool>());
}
