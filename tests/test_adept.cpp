// ADEPT-style early exit (model/adept.h): with exits disabled (threshold 0) the model is exact, bit
// for bit, in evaluation, cached generation and Jacobi decoding; with exits, an exited token keeps its
// exit state and the later layers attend to K/V computed from it (checked against a masked reference
// that runs every token through every block); compute falls as the threshold rises; refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "model/adept.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "test_model_util.h"
#include "test_tolerance.h"
#include "test_util.h"

using namespace slm;
using slm::test::tiny_config;

namespace {

GPT random_model(const ModelConfig& c, uint64_t seed) {
  GPT m(c);
  slm::test::perturb(*m, seed, 0.3);
  m->eval();
  return m;
}

}  // namespace

TEST(Adept, ThresholdZeroIsThePlainModelBitwise) {
  GPT m = random_model(tiny_config(), 1);
  torch::NoGradGuard ng;
  torch::manual_seed(2);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto doc = (torch::arange(32) >= 13).to(torch::kInt64).unsqueeze(0).expand({2, 32}).contiguous();
  auto plain = m->hidden(idx, doc);
  std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42};
  GenerateOptions g;
  g.max_tokens = 20;
  auto greedy = generate(*m, prompt, g);
  g.jacobi = true;
  g.block = 4;
  auto jacobi = generate(*m, prompt, g);

  auto r = use_adept(*m, AdeptOptions{0.0, 1});
  EXPECT_TRUE(torch::equal(m->hidden(idx, doc), plain));
  g.jacobi = false;
  EXPECT_EQ(generate(*m, prompt, g), greedy);
  g.jacobi = true;
  EXPECT_EQ(generate(*m, prompt, g), jacobi);
  EXPECT_EQ(r->layers_per_token(), static_cast<double>(m->cfg.n_layer));
}

TEST(Adept, ExitedTokensKeepTheirStateAndLaterTokensAttendToTheirBackfilledKV) {
  // Two layers: tokens decide once, after layer 0. The threshold sits in the widest gap of layer 0's
  // relative updates near their median, so rounding cannot flip a decision.
  ModelConfig c = tiny_config(2);
  GPT m = random_model(c, 3);
  torch::NoGradGuard ng;
  torch::manual_seed(4);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  // The reference: every token through every block (its keys and values from its current state),
  // an exited token's state left as it was.
  auto x0 = rms_norm(m->wte(idx));
  Ctx a;
  a.idx = idx;
  a.cos = m->rope_cos;
  a.sin = m->rope_sin;
  auto x1 = m->blocks[0]->as<Block>()->forward(x0, a);
  auto moved = (x1 - x0).norm(2, -1) / x0.norm(2, -1);  // (B, T)
  auto sorted = std::get<0>(moved.flatten().sort());
  const int64_t n = sorted.size(0);
  double thr = 0, gap = -1;
  for (int64_t i = n / 4; i < 3 * n / 4; ++i) {
    const double g = sorted[i + 1].item<double>() - sorted[i].item<double>();
    if (g > gap) gap = g, thr = 0.5 * (sorted[i].item<double>() + sorted[i + 1].item<double>());
  }
  ASSERT_GT(gap, 1e-4 * thr) << "no clear gap between layer 0's updates";
  auto exited = moved.lt(thr).unsqueeze(-1);  // (B, T, 1)
  Ctx b;
  b.idx = idx;
  b.cos = m->rope_cos;
  b.sin = m->rope_sin;
  auto x2 = m->blocks[1]->as<Block>()->forward(x1, b);
  auto want = torch::where(exited, x1, x2);

  auto r = use_adept(*m, AdeptOptions{thr, 1});
  auto got = m->hidden(idx, {});
  const int64_t terms = 2 * slm::test::block_terms(c.d_model, c.head_dim, 32, 4 * c.d_model);
  EXPECT_TRUE(slm::test::fp32_close(got, want, terms));
  const double n_exit = exited.sum().item<double>();
  EXPECT_GT(n_exit, 0);
  EXPECT_LT(n_exit, static_cast<double>(n));
  EXPECT_DOUBLE_EQ(r->layers_per_token(), 2.0 - n_exit / static_cast<double>(n));
}

TEST(Adept, APrefillInPiecesWithTheCacheEqualsTheWholeSequence) {
  // Generation's path: the first 20 tokens through the cache, then 12 more; exited tokens of the
  // first piece are in the cache of layer 1 by their backfilled K/V. Two layers and a threshold in a
  // clear gap of layer 0's updates, as above, so both runs take the same decisions.
  ModelConfig c = tiny_config(2);
  GPT m = random_model(c, 7);
  torch::NoGradGuard ng;
  torch::manual_seed(8);
  auto idx = torch::randint(0, 300, {1, 32}, torch::kInt64);
  Ctx a;
  a.idx = idx;
  a.cos = m->rope_cos;
  a.sin = m->rope_sin;
  auto x0 = rms_norm(m->wte(idx));
  auto moved = (m->blocks[0]->as<Block>()->forward(x0, a) - x0).norm(2, -1) / x0.norm(2, -1);
  auto sorted = std::get<0>(moved.flatten().sort());
  double thr = 0, gap = -1;
  for (int64_t i = 8; i < 24; ++i) {
    const double g = sorted[i + 1].item<double>() - sorted[i].item<double>();
    if (g > gap) gap = g, thr = 0.5 * (sorted[i].item<double>() + sorted[i + 1].item<double>());
  }
  ASSERT_GT(gap, 1e-4 * thr);
  auto r = use_adept(*m, AdeptOptions{thr, 1});
  auto whole = m->hidden(idx, {});
  Caches caches;
  for (auto [from, to] : {std::pair<int64_t, int64_t>{0, 20}, {20, 32}}) {
    Ctx g;
    g.idx = idx.slice(1, from, to);
    g.caches = &caches;
    g.pos = from;
    auto piece = m->hidden(g);
    const int64_t terms = 2 * slm::test::block_terms(c.d_model, c.head_dim, 32, 4 * c.d_model);
    EXPECT_TRUE(slm::test::fp32_close(piece, whole.slice(1, from, to), terms)) << "tokens " << from << ".." << to;
  }
  EXPECT_LT(r->layers_per_token(), 2.0) << "some tokens exited";
  EXPECT_GT(r->layers_per_token(), 1.0) << "some tokens ran both layers";
}

TEST(Adept, ComputeFallsAsTheThresholdRises) {
  GPT m = random_model(tiny_config(4), 5);
  torch::NoGradGuard ng;
  torch::manual_seed(6);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  double last = 5;
  for (double thr : {0.0, 0.3, 1.0, 100.0}) {
    auto r = use_adept(*m, AdeptOptions{thr, 1});
    m->hidden(idx, {});
    EXPECT_LE(r->layers_per_token(), last) << thr;
    last = r->layers_per_token();
  }
  EXPECT_EQ(last, 1.0) << "a threshold above every update exits every token after min_layers";
  m->layer_runner = nullptr;
}

TEST(Adept, RefusesBlocksItCannotRun) {
  ModelConfig c = tiny_config();
  c.modules = {slm::test::module_args("engram")};
  GPT m(c);
  const std::string e = slm::test::error_of([&] { use_adept(*m, AdeptOptions{0.1, 1}); });
  EXPECT_NE(e.find("[adept] layer"), std::string::npos) << e;
  GPT plain(tiny_config());
  EXPECT_NE(slm::test::error_of([&] { use_adept(*plain, AdeptOptions{-1, 1}); }).find("[adept] threshold"),
            std::string::npos);
}
