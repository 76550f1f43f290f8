// GateSkip (docs/modules.md section 8): (a) budget 0 is exactly the gated model h + g f(h), and unit
// gates without skipping are exactly the baseline; (b) a skipped token's hidden state is unchanged
// by that branch; (c) the fraction skipped equals the budget within 1/T, in training by the ramp and
// at eval by the calibrated threshold; eval with skipping is causal and generation with the cache
// equals recomputing; the L2 sparsity loss; the backbone's init is unchanged; the catalog row's and
// the plan's refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "model/generate.h"
#include "model/gateskip.h"
#include "model/gpt.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

using slm::test::tiny_config;

ModelConfig with_gateskip(const std::map<std::string, std::string>& over = {}) {
  return slm::test::tiny_with("gateskip", over);
}

GateSkipWrapImpl& wrap_of(GPT& m, int64_t layer) {
  auto* w = dynamic_cast<GateSkipWrapImpl*>(m->blocks->ptr(layer)->as<BlockImpl>()->wrap.get());
  EXPECT_NE(w, nullptr) << "layer " << layer << " has no GateSkip wrapper";
  return *w;
}

void randomize(GPT& m, uint64_t seed) { slm::test::perturb(*m, seed, 0.05); }

// Copies every parameter `from` has into `to` by name (the backbone of a wrapped model).
void copy_params(GPT& from, GPT& to) {
  torch::NoGradGuard ng;
  auto dst = to->named_parameters();
  for (auto& p : from->named_parameters()) dst[p.key()].copy_(p.value());
}

// A training forward's context as GPTImpl::hidden builds it (plain causal, no documents).
Ctx train_ctx(GPT& m, int64_t step) {
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  ctx.training = true;
  ctx.step = step;
  return ctx;
}

}  // namespace

TEST(GateSkip, Schedule) {
  GateSkipOptions o = GateSkipOptions::from(
      slm::test::module_args("gateskip",
                             {{"skip_start", "0.01"}, {"skip_final", "0.11"}, {"warmup", "10"}, {"ramp_steps", "100"}}),
      ModelConfig{}, /*n_gated_layers=*/1);
  EXPECT_EQ(gateskip_ratio(o, 0), 0.0);
  EXPECT_EQ(gateskip_ratio(o, 9), 0.0);
  EXPECT_DOUBLE_EQ(gateskip_ratio(o, 10), 0.01);
  EXPECT_DOUBLE_EQ(gateskip_ratio(o, 60), 0.06);
  EXPECT_DOUBLE_EQ(gateskip_ratio(o, 110), 0.11);
  EXPECT_DOUBLE_EQ(gateskip_ratio(o, 100000), 0.11);
  o.ramp_steps = 0;
  EXPECT_DOUBLE_EQ(gateskip_ratio(o, 10), 0.11);
}

// (a) budget 0: exactly x1 = x + branches, h = x1 + g_m mixer(x1), out = h + g_f ffn(h), per layer.
TEST(GateSkip, BudgetZeroIsTheGatedModel) {
  GPT m(with_gateskip({{"skip_start", "0"}, {"skip_final", "0"}, {"eval_skip", "0"}}));
  randomize(m, 1);
  m->train();
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  torch::NoGradGuard ng;
  auto got = m->hidden(idx, {});
  Ctx ctx = train_ctx(m, 100000);
  auto x = rms_norm(m->wte(idx));
  for (int64_t l = 0; l < 3; ++l) {
    ctx.layer = l;
    auto& b = *m->blocks->ptr(l)->as<BlockImpl>();
    auto& w = wrap_of(m, l);
    auto x1 = b.with_branches(x, ctx);
    auto h = x1 + w.gate(0, x1) * b.mixer_delta(x1, ctx);
    x = h + w.gate(1, h) * b.ffn_delta(h, ctx);
  }
  EXPECT_TRUE(torch::equal(got, x)) << "max diff " << (got - x).abs().max().item<double>();
  m->eval();
  EXPECT_TRUE(torch::equal(m->hidden(idx, {}), got)) << "eval with eval_skip 0 differs from the gated model";
}

// (a) g = 1 (bias 100: sigmoid is 1 in fp32) and no skipping: the baseline, bitwise.
TEST(GateSkip, UnitGatesWithoutSkippingAreTheBaseline) {
  GPT base(tiny_config());
  randomize(base, 2);
  GPT m(with_gateskip({{"skip_start", "0"}, {"skip_final", "0"}, {"eval_skip", "0"}}));
  copy_params(base, m);
  {
    torch::NoGradGuard ng;
    for (int64_t l = 0; l < 3; ++l)
      for (auto* g : {&wrap_of(m, l).mixer_gate, &wrap_of(m, l).ffn_gate}) {
        (*g)->weight.zero_();
        (*g)->bias.fill_(100.0);
      }
  }
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  torch::NoGradGuard ng;
  for (bool train : {true, false}) {
    base->train(train);
    m->train(train);
    auto a = base->hidden(idx, {}), b = m->hidden(idx, {});
    EXPECT_TRUE(torch::equal(a, b)) << (train ? "training" : "eval") << ": max diff "
                                    << (a - b).abs().max().item<double>();
  }
}

TEST(GateSkip, BackboneInitIsUnchanged) {
  GPT base(tiny_config());
  GPT m(with_gateskip());
  auto mine = m->named_parameters();
  for (auto& p : base->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), mine[p.key()])) << p.key() << " differs from the baseline's init";
  auto& w = wrap_of(m, 1);
  EXPECT_TRUE(torch::allclose(w.mixer_gate->bias, torch::full({32}, 5.0)));
  const double sd = w.mixer_gate->weight.std().item<double>();
  EXPECT_GT(sd, 0.005);
  EXPECT_LT(sd, 0.02);
}

// (b) and (c): a skipped token's state is its input; kept ones get x + g f(x); round(r T) skip per row.
TEST(GateSkip, SkippedTokensAreUnchangedByTheBranch) {
  GPT m(with_gateskip({{"skip_final", "0.25"}, {"ramp_steps", "0"}}));
  randomize(m, 3);
  auto& w = wrap_of(m, 0);
  torch::NoGradGuard ng;
  auto x = torch::randn({3, 32, 32});
  auto fx = torch::randn({3, 32, 32});
  Ctx ctx = train_ctx(m, 5);
  torch::Tensor skip, g;
  auto out = w.branch(0, x, [&](const torch::Tensor&) { return fx; }, ctx, &skip, &g);
  ASSERT_EQ(skip.sizes(), (std::vector<int64_t>{3, 32}));
  EXPECT_EQ(skip.sum(1).to(torch::kFloat64).sub(8).abs().max().item<double>(), 0.0)
      << "each row of 32 must skip round(0.25 x 32) = 8 tokens";
  auto s = skip.unsqueeze(-1).expand_as(x);
  EXPECT_TRUE(torch::equal(out.masked_select(s), x.masked_select(s))) << "a skipped token changed";
  auto kept = x + g * fx;
  EXPECT_TRUE(torch::equal(out.masked_select(s.logical_not()), kept.masked_select(s.logical_not())));
  // The skipped tokens are those of lowest mean gate in their row.
  auto imp = g.mean(-1);
  auto max_skipped = imp.masked_fill(skip.logical_not(), -1.0).amax(1);
  auto min_kept = imp.masked_fill(skip, 2.0).amin(1);
  EXPECT_TRUE(max_skipped.le(min_kept).all().item<bool>());
}

// (c) within 1/T for any ratio and length; and the whole model's stats during the ramp.
TEST(GateSkip, FractionSkippedMatchesTheBudget) {
  for (int64_t T : {7, 32, 100})
    for (double r : {0.0, 0.005, 0.1, 0.33, 0.5, 0.9}) {
      auto mask = gateskip_budget_mask(torch::rand({4, T}), r);
      auto frac = mask.to(torch::kFloat64).mean(1);
      EXPECT_LE((frac - r).abs().max().item<double>(), 1.0 / static_cast<double>(T)) << "T " << T << " r " << r;
    }
  GPT m(with_gateskip({{"skip_start", "0.1"}, {"skip_final", "0.3"}, {"ramp_steps", "100"}, {"warmup", "50"}}));
  randomize(m, 4);
  m->train();
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  for (auto [step, r] : std::vector<std::pair<int64_t, double>>{{0, 0.0}, {50, 0.1}, {100, 0.2}, {400, 0.3}}) {
    GPTImpl::Parts parts;
    m->loss(idx, idx.roll(-1, 1), {}, step, &parts);
    for (int64_t l = 0; l < 3; ++l)
      for (const char* b : {".skip_attn", ".skip_ffn"}) {
        const double f = parts.stats.at("gateskip.L" + std::to_string(l) + b);
        EXPECT_LE(std::abs(f - r), 1.0 / 32) << "step " << step << " layer " << l << b;
      }
    EXPECT_GT(parts.stats.at("gateskip.gate"), 0.9);  // near-identity gates at bias 5
  }
}

TEST(GateSkip, SparsityLossIsTheL2OfTheGates) {
  GPT m(with_gateskip({{"layers", "0,2"}, {"sparsity", "0.03"}}));
  {
    torch::NoGradGuard ng;
    for (int64_t l : {0, 2}) {
      auto& w = wrap_of(m, l);
      w.mixer_gate->weight.zero_();
      w.mixer_gate->bias.fill_(0.0);  // g = 0.5
      w.ffn_gate->weight.zero_();
      w.ffn_gate->bias.fill_(std::log(3.0));  // g = 0.75
    }
  }
  m->train();
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  GPTImpl::Parts parts;
  m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  ASSERT_EQ(parts.aux.size(), 2u);
  for (auto& a : parts.aux) {
    EXPECT_NEAR(a.value.item<double>(), (0.25 + 0.5625) / 2, 1e-6) << a.name;
    EXPECT_DOUBLE_EQ(a.weight, 0.03 / 2) << "the weight is sparsity over the gated layers";
  }
  EXPECT_EQ(parts.aux[0].name, "gateskip.L0");
  EXPECT_EQ(layer_plan(*m).find("layer 1: A attention (H=2, D=16, rope, qk-norm, doc-mask) + relu2 mlp (128)\n") !=
                std::string::npos,
            true)
      << layer_plan(*m);
}

// At eval a token skips iff its importance <= the calibrated threshold: causal, about eval_skip of
// the tokens, and generation with the cache equals recomputing.
TEST(GateSkip, EvalSkipsByACausalCalibratedThreshold) {
  GPT m(with_gateskip({{"eval_skip", "0.25"}, {"threshold_ema", "0.5"}}));
  randomize(m, 5);
  {
    torch::NoGradGuard ng;  // gates that differ between tokens, so the budget means something
    for (int64_t l = 0; l < 3; ++l) wrap_of(m, l).mixer_gate->weight.normal_(0.0, 0.5);
  }
  auto idx = torch::randint(0, 300, {4, 32}, torch::kInt64);
  EXPECT_LT(wrap_of(m, 0).eval_threshold[0].item<double>(), 0) << "uncalibrated before training";
  m->train();
  m->loss(idx, idx.roll(-1, 1), {}, 0);
  // Layer 0's mixer reads the embedding, the same at eval: exactly k = 0.25 x 128 tokens at or below
  // the batch's 0.25-quantile, the threshold after one calibration.
  auto& w = wrap_of(m, 0);
  const double thr = w.eval_threshold[0].item<double>();
  EXPECT_GT(thr, 0);
  m->eval();
  torch::NoGradGuard ng;
  Ctx ctx;
  ctx.cos = m->rope_cos;
  ctx.sin = m->rope_sin;
  torch::Tensor skip;
  w.branch(0, rms_norm(m->wte(idx)), [](const torch::Tensor& u) { return u; }, ctx, &skip);
  EXPECT_EQ(skip.sum().item<int64_t>(), 32) << "eval skipped a different share than eval_skip on the calibration batch";
  // Causal with skipping active.
  auto other = idx.clone();
  other.index_put_({Slice(), Slice(16)}, torch::randint(0, 300, {4, 16}, torch::kInt64));
  auto a = m->hidden(idx, {}), b = m->hidden(other, {});
  EXPECT_TRUE(torch::equal(a.index({Slice(), Slice(0, 16)}), b.index({Slice(), Slice(0, 16)})));
  // Skipping changes the output (it is on), and the threshold is a buffer (checkpoints carry it).
  {
    GPT off(with_gateskip({{"eval_skip", "0"}}));
    copy_params(m, off);
    off->eval();
    EXPECT_FALSE(torch::allclose(off->hidden(idx, {}), a));
  }
  bool found = false;
  for (auto& bf : m->named_buffers()) found |= bf.key() == "blocks.0.wrap.eval_threshold";
  EXPECT_TRUE(found);
  std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42};
  GenerateOptions g;
  g.max_tokens = 25;
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  EXPECT_EQ(cached, generate(*m, prompt, g));
}

TEST(GateSkip, CatalogRefusesBadArguments) {
  catalog::ModelView v = slm::test::model_view(4, 128, 2, 64, 256);
  auto errors_of = [&](const std::string& text, int64_t tp = 1) {
    std::vector<std::string> e;
    auto a = catalog::resolve_arg(text, e);
    v.tp = tp;
    if (e.empty()) e = catalog::check({a}, v, true);
    return e;
  };
  EXPECT_TRUE(errors_of("gateskip").empty());
  EXPECT_TRUE(errors_of("gateskip", 2).empty());
  auto e = errors_of("gateskip", 4);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("tp 4 exceeds 2"), std::string::npos) << e[0];
  EXPECT_FALSE(errors_of("gateskip.skip_start=0.2,skip_final=0.1").empty());
  EXPECT_FALSE(errors_of("gateskip.layers=1,4").empty());
  EXPECT_FALSE(errors_of("gateskip.layers=1,1").empty());
  EXPECT_FALSE(errors_of("gateskip.eval_skip=1.5").empty());
  EXPECT_FALSE(errors_of("gateskip.skip_finl=0.2").empty());
  // One wrapper per layer: mhc wraps every layer.
  ModelConfig c = tiny_config();
  c.modules = {slm::test::module_args("gateskip", {{"layers", "1"}}), slm::test::module_args("mhc")};
  EXPECT_THROW(GPT{c}, std::exception);
  c.modules = {slm::test::module_args("flexidepth", {{"layers", "1"}}), slm::test::module_args("gateskip")};
  EXPECT_THROW(GPT{c}, std::exception);
  c.modules = {slm::test::module_args("flexidepth", {{"layers", "1"}}),
               slm::test::module_args("gateskip", {{"layers", "0,2"}})};
  EXPECT_NO_THROW(GPT{c});
}
