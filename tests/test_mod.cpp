// MoD (docs/modules.md section 7): (a) in training exactly floor(C T) tokens of each row run the
// block, and the block sees those tokens only; (b) every other token comes out bit-identical to its
// input; the routed tokens get x + r f(x~) with attention among the routed tokens of their own row and
// document at their original RoPE positions; (c) evaluation is causal by the router's sigmoid or by
// the predictor, never the top-k; the router is on the language-model gradient path; generation
// with the cache equals recomputing and unrouted tokens add no K/V; FLOPs, layer choice, stats and
// the catalog's and the plan's refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "common/error.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "model/mhc.h"
#include "model/mod.h"
#include "test_util.h"
#include "test_tolerance.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

using slm::test::tiny_config;

ModelConfig with_mod(const std::map<std::string, std::string>& given = {}, ModelConfig c = tiny_config()) {
  return slm::test::tiny_with("mod", given, c);
}

void randomize(torch::nn::Module& m, uint64_t seed, double scale = 0.1) { slm::test::perturb(m, seed, scale, true); }

ModWrapImpl& wrap_of(GPT& m, int64_t layer) {
  auto w = std::dynamic_pointer_cast<ModWrapImpl>(m->blocks->ptr(layer)->as<BlockImpl>()->wrap);
  EXPECT_TRUE(w) << "layer " << layer << " has no mod wrapper";
  return *w;
}

Ctx ctx_of(GPT& m, bool training, const torch::Tensor& doc_ids = {}) {
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  ctx.training = training;
  ctx.doc_ids = doc_ids;
  ctx.allowed = document_causal_mask(doc_ids);
  return ctx;
}

// A mixer that records the length of every sequence it is given, then acts as attention would not:
// a per-token map, so the test sees what reached it.
struct RecordingMixer : MixerImpl {
  std::vector<int64_t> seen;
  torch::Tensor forward(const torch::Tensor& x, Ctx&) override {
    seen.push_back(x.size(0) * x.size(1));
    return torch::tanh(x);
  }
  std::string describe() const override { return "recorder"; }
};

using slm::test::error_of;

}  // namespace

TEST(ModCapacity, TokensPerRow) {
  EXPECT_EQ(mod_capacity_tokens(0.125, 256), 32);
  EXPECT_EQ(mod_capacity_tokens(0.125, 255), 31);
  EXPECT_EQ(mod_capacity_tokens(0.125, 4), 1);  // at least one
  EXPECT_EQ(mod_capacity_tokens(1.0, 32), 32);
  EXPECT_EQ(mod_capacity_tokens(0.3, 10), 3);
}

TEST(ModTraining, ExactlyCapacityTokensRunAndTheRestPassBitIdentical) {
  GPT m(with_mod({{"capacity", "0.25"}}));
  randomize(*m, 1);
  m->train();
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto& w = wrap_of(m, 1);
  torch::manual_seed(2);
  const int64_t B = 3, T = 32, k = 8;  // floor(0.25 x 32)
  auto x = torch::randn({B, T, 32});
  Ctx ctx = ctx_of(m, true);
  auto y = blk.forward(x, ctx);
  auto routed = w.last_routed;
  ASSERT_EQ(routed.sizes(), (std::vector<int64_t>{B, T}));
  for (int64_t b = 0; b < B; ++b) EXPECT_EQ(routed[b].sum().item<int64_t>(), k) << "row " << b;
  // (b) unselected: the very same bits
  auto keep = routed.logical_not();
  EXPECT_TRUE(torch::equal(y.index({keep}), x.index({keep})));
  // the selected ones did change (random weights), and they are the row's top-k by the router
  EXPECT_TRUE((y.index({routed}) - x.index({routed})).abs().sum(-1).gt(0).all().item<bool>());
  auto r = w.router_logits(x);
  auto kth = std::get<0>(r.topk(k, 1)).select(1, k - 1).unsqueeze(1);  // (B, 1)
  EXPECT_TRUE(r.index({routed}).ge(kth.expand({B, T}).index({routed})).all().item<bool>());
  EXPECT_TRUE(r.index({keep}).le(kth.expand({B, T}).index({keep})).all().item<bool>());
}

TEST(ModTraining, TheBlockSeesOnlyTheRoutedTokens) {
  ModelConfig c = tiny_config();
  const ModOptions o = ModOptions::from(slm::test::module_args("mod", {{"capacity", "0.25"}}), c);
  LayerPlan lp;
  auto rec = std::make_shared<RecordingMixer>();
  lp.mixer = [rec] { return Mixer(rec); };
  lp.ffn = [c] { return Ffn(std::make_shared<MLPImpl>(c)); };
  lp.wrap = [o] { return BlockWrap(std::make_shared<ModWrapImpl>(o)); };
  BlockImpl blk(lp);
  auto [cs, sn] = rope_tables(32, 16, 10000.0);
  Ctx ctx;
  ctx.cos = cs;
  ctx.sin = sn;
  ctx.training = true;
  blk.forward(torch::randn({1, 32, 32}), ctx);
  EXPECT_EQ(rec->seen, (std::vector<int64_t>{8}));
  rec->seen.clear();
  // Five rows of 8 routed tokens: packed into gathered calls of at most T = 32 tokens.
  blk.forward(torch::randn({5, 32, 32}), ctx);
  EXPECT_EQ(rec->seen, (std::vector<int64_t>{32, 8}));
}

TEST(ModTraining, RoutedTokensAttendAmongThemselvesAtTheirPositionsPerDocument) {
  GPT m(with_mod({{"capacity", "0.25"}}));
  randomize(*m, 3);
  m->train();
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto& w = wrap_of(m, 1);
  torch::manual_seed(4);
  const int64_t B = 2, T = 32;
  auto x = torch::randn({B, T, 32});
  auto doc = torch::zeros({B, T}, torch::kInt64);
  doc.index_put_({0, Slice(11)}, 1);
  doc.index_put_({1, Slice(20)}, 1);
  Ctx ctx = ctx_of(m, true, doc);
  auto y = blk.forward(x, ctx);
  auto routed = w.last_routed;
  // The reference: the whole rows through the block, keys limited to routed tokens of the same
  // document (the mixer's own RoPE at the original positions), read at the routed tokens.
  Ctx full = ctx_of(m, false, doc);
  full.allowed = full.allowed.logical_and(routed.view({B, 1, 1, T}));
  torch::Tensor ref;
  {
    torch::NoGradGuard ng;
    auto h = x + blk.mixer_delta(x, full);
    auto out = h + blk.ffn_delta(h, full);
    auto r = w.router_logits(x);
    ref = x + r.unsqueeze(-1) * (out - x);
  }
  auto got = y.index({routed}).detach(), want = ref.index({routed});
  EXPECT_TRUE(slm::test::fp32_close(got, want, slm::test::block_terms(32, 16, T, 128)));
}

// DSA on a routed layer: its indexer places the gathered tokens at their original positions
// (Ctx::positions), so selection and output equal DSA over the whole rows with keys limited to the
// routed tokens. Window 0: a window counts the block's own (routed) keys, which the reference's
// masked rows do not. Generation with the cache equals recomputing.
TEST(ModTraining, DsaOnARoutedLayerPlacesTheGatheredTokens) {
  ModelConfig c = tiny_config();
  c.modules = {slm::test::module_args("dsa", {{"topk", "4"}, {"window", "0"}, {"warmup_steps", "0"}}),
               slm::test::module_args("mod", {{"capacity", "0.5"}})};
  GPT m(c);
  randomize(*m, 21, 0.3);
  m->train();
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto& w = wrap_of(m, 1);
  torch::manual_seed(22);
  const int64_t B = 2, T = 32;
  auto x = torch::randn({B, T, 32});
  auto doc = torch::zeros({B, T}, torch::kInt64);
  doc.index_put_({1, Slice(13)}, 1);
  Ctx ctx = ctx_of(m, true, doc);
  auto y = blk.forward(x, ctx);
  auto routed = w.last_routed;
  Ctx full = ctx_of(m, false, doc);
  full.allowed = full.allowed.logical_and(routed.view({B, 1, 1, T}));
  torch::Tensor ref;
  {
    torch::NoGradGuard ng;
    auto h = x + blk.mixer_delta(x, full);
    auto out = h + blk.ffn_delta(h, full);
    ref = x + w.router_logits(x).unsqueeze(-1) * (out - x);
  }
  auto got = y.index({routed}).detach(), want = ref.index({routed});
  EXPECT_TRUE(slm::test::fp32_close(got, want, slm::test::block_terms(32, 16, T, 128)));

  std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42, 9, 9, 17};
  GenerateOptions g;
  g.max_tokens = 16;
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  EXPECT_EQ(cached, generate(*m, prompt, g));
}

TEST(ModTraining, RouterIsOnTheLanguageModelGradientPathAndStatsAreLogged) {
  GPT m(with_mod({{"aux_loss", "0"}}));  // no BCE: only the factor r can give the router a gradient
  randomize(*m, 5);
  m->train();
  torch::manual_seed(6);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  GPTImpl::Parts parts;
  auto loss = m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  loss.backward();
  auto& w = wrap_of(m, 1);
  ASSERT_TRUE(w.router.grad().defined());
  EXPECT_GT(w.router.grad().abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(parts.aux.empty());
  ASSERT_TRUE(parts.stats.count("mod.L1.causal_routed"));
  ASSERT_TRUE(parts.stats.count("mod.causal_acc"));
  EXPECT_GE(parts.stats["mod.causal_acc"], 0.0);
  EXPECT_LE(parts.stats["mod.causal_acc"], 1.0);
}

TEST(ModTraining, TheBceTeachesTheCausalCriterionTheTopK) {
  GPT m(with_mod({{"capacity", "0.25"}, {"aux_loss", "1.0"}}));
  randomize(*m, 7);
  m->train();
  torch::manual_seed(8);
  auto idx = torch::randint(0, 300, {4, 32}, torch::kInt64);
  torch::optim::Adam opt(m->parameters(), torch::optim::AdamOptions(1e-2));
  double first = -1, last = -1, bce0 = 0, bce1 = 0;
  for (int s = 0; s < 60; ++s) {
    GPTImpl::Parts parts;
    opt.zero_grad();
    auto l = m->loss(idx, idx.roll(-1, 1), {}, s, &parts);
    l.backward();
    opt.step();
    ASSERT_EQ(parts.aux.size(), 1u);
    EXPECT_EQ(parts.aux[0].name, "mod_bce.L1");
    (s == 0 ? bce0 : bce1) = parts.aux[0].value.item<double>();
    (s == 0 ? first : last) = parts.stats.at("mod.causal_acc");
  }
  EXPECT_LT(bce1, bce0);
  EXPECT_GT(last, 0.9) << "sigmoid(r) > 0.5 agrees with the top-k on " << last << " of tokens (first " << first << ")";
}

TEST(ModEval, RoutesBySigmoidOfTheRouterAndIsCausal) {
  GPT m(with_mod());
  randomize(*m, 9, 0.3);
  m->eval();
  torch::NoGradGuard ng;
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto& w = wrap_of(m, 1);
  torch::manual_seed(10);
  auto x = torch::randn({2, 32, 32});
  Ctx ctx = ctx_of(m, false);
  auto y = blk.forward(x, ctx);
  EXPECT_TRUE(torch::equal(w.last_routed, w.router_logits(x) > 0)) << "evaluation must route by sigmoid(r) > 0.5";
  EXPECT_TRUE(torch::equal(y.index({w.last_routed.logical_not()}), x.index({w.last_routed.logical_not()})));
  EXPECT_TRUE(ctx.stats.count("mod.L1.routed"));
  // (c) output t does not move when tokens after t change
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto other = idx.clone();
  other.index_put_({Slice(), Slice(20)}, torch::randint(0, 300, {2, 12}, torch::kInt64));
  auto a = m->hidden(idx, {}), b = m->hidden(other, {});
  // (gathered calls of other sizes may round differently in the last bits)
  EXPECT_TRUE(torch::allclose(a.index({Slice(), Slice(0, 20)}), b.index({Slice(), Slice(0, 20)}), 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(a.index({Slice(), Slice(20)}), b.index({Slice(), Slice(20)}), 1e-5, 1e-5));
}

TEST(ModEval, ThePredictorDecidesWhenEnabledAndTrainsOnDetachedInputs) {
  GPT m(with_mod({{"predictor", "true"}, {"predictor_hidden", "8"}}));
  randomize(*m, 11, 0.3);
  auto& blk = *m->blocks->ptr(1)->as<BlockImpl>();
  auto& w = wrap_of(m, 1);
  torch::manual_seed(12);
  auto x = torch::randn({2, 32, 32}, torch::requires_grad());
  {
    torch::NoGradGuard ng;
    Ctx ctx = ctx_of(m, false);
    blk.forward(x, ctx);
    EXPECT_TRUE(torch::equal(w.last_routed, w.predictor_logits(x) > 0));
  }
  Ctx ctx = ctx_of(m, true);
  blk.forward(x, ctx);
  ASSERT_EQ(ctx.aux.size(), 2u);
  EXPECT_EQ(ctx.aux[1].name, "mod_pred.L1");
  ctx.aux[1].value.backward();
  EXPECT_FALSE(x.grad().defined() && x.grad().abs().sum().item<double>() > 0) << "the predictor's loss reached x";
  EXPECT_GT(w.pred_out.grad().abs().sum().item<double>(), 0.0);
  EXPECT_FALSE(w.router.grad().defined() && w.router.grad().abs().sum().item<double>() > 0);
}

TEST(ModGeneration, CacheEqualsRecomputingAndUnroutedTokensAddNoKeys) {
  for (const char* pred : {"false", "true"}) {
    GPT m(with_mod({{"predictor", pred}, {"every", "1"}, {"skip_first", "1"}}));
    randomize(*m, 13, 0.3);
    std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42};
    GenerateOptions g;
    g.max_tokens = 20;
    auto cached = generate(*m, prompt, g);
    g.use_cache = false;
    EXPECT_EQ(cached, generate(*m, prompt, g)) << "predictor " << pred;
    // The prompt in one piece with a cache: layer 1 keeps the K/V of its routed tokens only.
    m->eval();
    torch::NoGradGuard ng;
    Caches caches;
    Ctx ctx;
    ctx.idx = torch::randint(0, 300, {1, 24}, torch::kInt64);
    ctx.caches = &caches;
    m->hidden(ctx);
    const int64_t n1 = wrap_of(m, 1).last_routed.sum().item<int64_t>();
    auto it = caches[1].find("attn");
    if (n1 == 0) {
      EXPECT_TRUE(it == caches[1].end() || !static_cast<KVCache&>(*it->second).k.defined());
    } else {
      ASSERT_NE(it, caches[1].end());
      EXPECT_EQ(static_cast<KVCache&>(*it->second).k.size(1), n1);
    }
    EXPECT_EQ(static_cast<KVCache&>(*caches[0].at("attn")).k.size(1), 24);  // layer 0 is not routed
  }
}

TEST(ModModel, LayersPlanAndFlops) {
  ModelConfig c = tiny_config();
  c.n_layer = 4;
  GPT m(with_mod({}, c));
  for (int64_t l = 0; l < 4; ++l)
    EXPECT_EQ(static_cast<bool>(m->blocks->ptr(l)->as<BlockImpl>()->wrap), l == 1 || l == 3) << "layer " << l;
  EXPECT_NE(layer_plan(*m).find("mod (capacity 0.125"), std::string::npos) << layer_plan(*m);
  GPT base(c);
  const double C = 32, T = 32;
  const double per = 6 * C - (1 - 0.125) * (6 * 12 * C * C + 12 * C * T);
  EXPECT_DOUBLE_EQ(m->flops_per_token(32) - base->flops_per_token(32), 2 * per);
  EXPECT_LT(m->flops_per_token(32), base->flops_per_token(32));

  catalog::ModelView v;
  v.depth = 6;
  v.layer_pattern = "AAM";
  auto layers = [&](const std::map<std::string, std::string>& g) {
    return catalog::mod_layers(slm::test::module_args("mod", g), v);
  };
  EXPECT_EQ(layers({}), (std::vector<int64_t>{1, 3}));  // 5 is Mamba
  EXPECT_EQ(layers({{"skip_mamba", "false"}}), (std::vector<int64_t>{1, 3, 5}));
  EXPECT_EQ(layers({{"every", "1"}}), (std::vector<int64_t>{0, 1, 3, 4}));
  EXPECT_EQ(layers({{"every", "1"}, {"skip_first", "2"}}), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(layers({{"layers", "4,0"}}), (std::vector<int64_t>{0, 4}));
}

TEST(ModModel, RoutesMambaLayersWhenAsked) {
  ModelConfig c = tiny_config();
  c.layer_pattern = "AM";
  c.modules = {slm::test::module_args("mamba3", {{"pattern", "AM"}, {"headdim", "16"}, {"d_state", "8"}, {"chunk", "8"}}),
               slm::test::module_args("mod", {{"skip_mamba", "false"}, {"capacity", "0.25"}})};
  GPT m(c);
  randomize(*m, 14);
  m->train();
  auto idx = torch::randint(0, 300, {3, 32}, torch::kInt64);
  auto loss = m->loss(idx, idx.roll(-1, 1), {}, 0);
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_EQ(wrap_of(m, 1).last_routed.sum().item<int64_t>(), 3 * 8);
  std::vector<int32_t> prompt = {0, 11, 23, 5, 7};
  GenerateOptions g;
  g.max_tokens = 12;
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  EXPECT_EQ(cached, generate(*m, prompt, g));
}

TEST(ModCatalog, RefusesBadArguments) {
  catalog::ModelView v;
  v.depth = 4;
  v.d_model = 128;
  v.context = 256;
  v.layer_pattern = "AAM";
  auto errors_of = [&](const std::map<std::string, std::string>& g) {
    return catalog::check({slm::test::module_args("mod", g)}, v, true);
  };
  auto has = [](const std::vector<std::string>& e, const std::string& what) {
    for (auto& s : e)
      if (s.find(what) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(errors_of({}).empty());
  EXPECT_TRUE(has(errors_of({{"capacity", "0"}}), "must be in (0, 1]"));
  EXPECT_TRUE(has(errors_of({{"capacity", "0.001"}}), "= 0 tokens per sequence"));
  EXPECT_TRUE(has(errors_of({{"layers", "1,4"}}), "beyond depth 4"));
  EXPECT_TRUE(has(errors_of({{"layers", "1,1"}}), "more than once"));
  EXPECT_TRUE(has(errors_of({{"layers", "2"}}), "are Mamba layers"));
  EXPECT_TRUE(errors_of({{"layers", "2"}, {"skip_mamba", "false"}}).empty());
  EXPECT_TRUE(has(errors_of({{"skip_first", "4"}}), "skips every layer"));
  EXPECT_TRUE(has(errors_of({{"every", "3"}, {"skip_first", "3"}}), "no layer is routed"));
  std::vector<std::string> errors;
  catalog::resolve_arg("mod.capacity=1.5", errors);
  EXPECT_FALSE(errors.empty());
}

TEST(ModCatalog, OneWrapperPerLayer) {
  ModelConfig c = tiny_config();
  // mhc first: mod refuses; mod first: mhc refuses
  c.modules = {slm::test::module_args("mhc"), slm::test::module_args("mod")};
  auto msg = error_of([&] { GPT m(c); });
  EXPECT_NE(msg.find("[mod] layer 1 already has a block wrapper (its modules: mhc)"), std::string::npos) << msg;
  c.modules = {slm::test::module_args("mod"), slm::test::module_args("mhc")};
  msg = error_of([&] { GPT m(c); });
  EXPECT_NE(msg.find("[mhc] layer 1 already has a block wrapper (its modules: mod)"), std::string::npos) << msg;
  ModelPlan plan = model_plan(tiny_config());
  msg = error_of([&] { apply_mod(slm::test::module_args("mod", {{"layers", "5"}}), tiny_config(), plan); });
  EXPECT_NE(msg.find("[mod] "), std::string::npos) << msg;
  EXPECT_NE(msg.find("beyond depth 3"), std::string::npos) << msg;
}
