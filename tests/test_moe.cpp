// MoE (docs/modules.md section 6): one routed expert at top-1 without shared experts is the dense
// MLP; gate weights sum as defined (route_scale for sigmoid, the top-k probabilities for softmax);
// the balancing bias changes selection but takes no gradient; z-loss and balance loss on hand
// examples and at a uniform router (log(E)^2 and 1); capacity: no expert keeps more than its
// capacity per row, the earliest picks win, drops are counted, a fully dropped token gets the
// shared path only, and the drops depend on no later token; the bias update balances a skewed
// router; load stats; the model plan, init and FLOPs; the catalog row's checks; no silent
// replacement of another module's FFN.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "common/error.h"
#include "model/gpt.h"
#include "model/moe.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

MoeOptions small_options() {
  ModelConfig c;
  c.d_model = 16;
  const catalog::ModuleArgs a = slm::test::module_args(
      "moe", {{"n_shared", "1"}, {"n_routed", "4"}, {"top_k", "2"}, {"expert_hidden", "24"}});
  return MoeOptions::from(a, c, /*layer=*/0);
}

// Random weights everywhere (the experts' zero-initialized projections included).
void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& p : m.parameters())
    if (p.requires_grad()) p.copy_(torch::randn_like(p) * 0.3);
}

// The capacity of each (row, expert) for rows of n tokens.
int64_t capacity_of(const MoeOptions& o, int64_t n) {
  return static_cast<int64_t>(std::ceil(static_cast<double>(n * o.top_k) / o.n_routed * o.capacity_factor));
}

using slm::test::tiny_config;

catalog::ModelView view_of(const ModelConfig& c) {
  catalog::ModelView v;
  v.depth = c.n_layer;
  v.d_model = c.d_model;
  v.n_head = c.n_head;
  v.head_dim = c.head_dim;
  v.context = c.context;
  return v;
}

std::string joined(const std::vector<std::string>& e) {
  std::string s;
  for (auto& x : e) s += x + "\n";
  return s;
}

}  // namespace

TEST(Moe, OneRoutedExpertAtTopOneIsTheDenseMlp) {
  ModelConfig c;
  c.d_model = 16;
  MLP dense(c);
  randomize(*dense, 1);
  auto x = torch::randn({2, 8, 16});
  for (const char* score : {"softmax", "sigmoid"}) {
    MoeOptions o = small_options();
    o.n_shared = 0;
    o.n_routed = 1;
    o.top_k = 1;
    o.expert_hidden = 4 * c.d_model;
    o.score = score;
    Moe m(o);
    randomize(*m, 2);  // a random router: its gate is still exactly 1
    {
      torch::NoGradGuard ng;
      auto* e = m->experts[0]->as<MoeExpertImpl>();
      e->c_fc->weight.copy_(dense->c_fc->weight);
      e->c_proj->weight.copy_(dense->c_proj->weight);
    }
    for (bool training : {false, true}) {
      Ctx ctx;
      ctx.training = training;
      auto y = m->forward(x, ctx), want = dense->forward(x, ctx);
      EXPECT_TRUE(torch::allclose(y, want, 1e-6, 1e-6))
          << score << ": max diff " << (y - want).abs().max().item<double>();
    }
  }
}

TEST(Moe, GateWeightsSumAsDefined) {
  MoeOptions o = small_options();
  o.n_routed = 8;
  o.top_k = 3;
  o.route_scale = 2.5;
  auto xf = torch::randn({40, o.d_model});
  {
    o.score = "sigmoid";  // renormalized: the gates of a token sum to route_scale
    Moe m(o);
    randomize(*m, 3);
    auto r = m->route(xf);
    EXPECT_TRUE(torch::allclose(r.gates.sum(-1), torch::full({40}, 2.5), 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(r.probs.sum(-1), torch::ones({40}), 1e-5, 1e-6));
  }
  {
    o.score = "softmax";  // not renormalized: route_scale x the top-k probabilities
    Moe m(o);
    randomize(*m, 3);
    auto r = m->route(xf);
    auto topk = std::get<0>(torch::softmax(r.logits, -1).topk(3, -1)).sum(-1);
    EXPECT_TRUE(torch::allclose(r.gates.sum(-1), 2.5 * topk, 1e-5, 1e-6));
    EXPECT_TRUE((r.gates.sum(-1) < 2.5).all().item<bool>());
  }
}

TEST(Moe, BiasChangesSelectionButTakesNoGradient) {
  MoeOptions o = small_options();
  Moe m(o);
  randomize(*m, 4);
  auto x = torch::randn({2, 8, o.d_model});
  {
    torch::NoGradGuard ng;
    m->balance_bias[3] = 10.0;  // expert 3 wins every selection
  }
  m->balance_bias.set_requires_grad(true);  // would anything reach it?
  auto r = m->route(x.reshape({-1, o.d_model}));
  EXPECT_TRUE(r.experts.select(1, 0).eq(3).all().item<bool>()) << "the bias must change which experts are picked";
  // ... but the gate is the unbiased score.
  EXPECT_TRUE(torch::allclose(r.gates.select(1, 0), torch::softmax(r.logits, -1).select(1, 3), 1e-6, 1e-7));
  Ctx ctx;
  ctx.training = true;
  auto y = m->forward(x, ctx);
  auto loss = y.square().sum();
  for (auto& a : ctx.aux) loss = loss + a.weight * a.value;
  loss.backward();
  const auto& g = m->balance_bias.grad();
  EXPECT_TRUE(!g.defined() || g.abs().sum().item<double>() == 0.0) << "dloss/db must be 0";
  EXPECT_GT(m->router->weight.grad().abs().sum().item<double>(), 0.0) << "the router learns through the gates";
}

TEST(Moe, ZLossAndBalanceLossOnHandExamples) {
  // logits [0, 0] and [ln 3, 0]: logsumexp ln 2 and ln 4 -> z = (ln^2 2 + 4 ln^2 2) / 2 = 2.5 ln^2 2.
  auto logits = torch::tensor({0.0, 0.0, std::log(3.0), 0.0}, torch::kFloat64).view({2, 2});
  EXPECT_NEAR(moe_z_loss(logits).item<double>(), 2.5 * std::log(2.0) * std::log(2.0), 1e-12);
  // probs [.5, .5] and [.75, .25], both tokens on expert 0: f = [1, 0], P = [.625, .375] -> 2 x .625.
  auto probs = torch::softmax(logits, -1);
  auto picks = torch::zeros({2, 1}, torch::kInt64);
  EXPECT_NEAR(moe_balance_loss(probs, picks).item<double>(), 1.25, 1e-12);
  // Half the picks on each expert: f = [.5, .5] -> 2 x .5 x (.625 + .375) = 1.
  EXPECT_NEAR(moe_balance_loss(probs, torch::tensor({0, 1}, torch::kInt64).view({2, 1})).item<double>(), 1.0, 1e-12);

  // A uniform router (zero weights): z-loss = log(E)^2 and the balance loss = 1, so weight x value = alpha.
  MoeOptions o = small_options();
  o.n_routed = 8;
  o.z_loss = 1e-3;
  o.aux_loss = 0.01;
  Moe m(o);
  {
    torch::NoGradGuard ng;
    m->router->weight.zero_();
  }
  Ctx ctx;
  ctx.training = true;
  m->forward(torch::randn({2, 8, o.d_model}), ctx);
  ASSERT_EQ(ctx.aux.size(), 2u);
  std::map<std::string, AuxLoss> aux;
  for (auto& a : ctx.aux) aux[a.name] = a;
  EXPECT_NEAR(aux.at("moe_z.L0").value.item<double>(), std::log(8.0) * std::log(8.0), 1e-5);
  EXPECT_DOUBLE_EQ(aux.at("moe_z.L0").weight, 1e-3);
  EXPECT_NEAR(aux.at("moe_aux.L0").weight * aux.at("moe_aux.L0").value.item<double>(), 0.01, 1e-8);
  // Evaluation adds no loss.
  Ctx eval;
  m->forward(torch::randn({2, 8, o.d_model}), eval);
  EXPECT_TRUE(eval.aux.empty());
}

TEST(Moe, CapacityKeepsTheEarliestPicksAndCountsTheDrops) {
  MoeOptions o = small_options();
  o.capacity_factor = 0.75;
  Moe m(o);
  randomize(*m, 5);
  const int64_t B = 3, T = 16, K = o.top_k, E = o.n_routed, cap = capacity_of(o, T);
  auto x = torch::randn({B, T, o.d_model});
  auto r = m->route(x.reshape({-1, o.d_model}));
  auto d = m->dispatch(r, B, /*drop=*/true);
  EXPECT_EQ(d.capacity, cap);
  // The reference: walk the picks in order, keep while the (row, expert) has room.
  auto ex = r.experts.reshape({-1});
  std::vector<int64_t> used(B * E, 0);
  std::vector<bool> want(B * T * K, false);
  for (int64_t p = 0; p < B * T * K; ++p) {
    const int64_t g = (p / (T * K)) * E + ex[p].item<int64_t>();
    if (used[g] < cap) want[p] = true, ++used[g];
  }
  std::vector<bool> got(B * T * K, false);
  for (int64_t i = 0; i < d.pick.size(0); ++i) got[d.pick[i].item<int64_t>()] = true;
  EXPECT_EQ(got, want) << "capacity must keep the earliest picks of each (row, expert)";
  int64_t kept = 0;
  for (int64_t e = 0; e < E; ++e) {
    kept += d.counts[e];
    // Grouped by expert: the slice of expert e holds its picks only.
    auto mine = ex.index_select(0, d.pick).slice(0, kept - d.counts[e], kept);
    EXPECT_TRUE(mine.eq(e).all().item<bool>());
  }
  for (int64_t u : used) EXPECT_LE(u, cap);
  ASSERT_LT(kept, B * T * K) << "the test needs drops";

  Ctx ctx;
  ctx.training = true;
  m->forward(x, ctx);
  EXPECT_DOUBLE_EQ(ctx.stats.at("moe.L0.dropped"), 1.0 - static_cast<double>(kept) / (B * T * K));
  EXPECT_DOUBLE_EQ(ctx.stats.at("moe.dropped"), ctx.stats.at("moe.L0.dropped"));
  Ctx eval;  // evaluation drops nothing
  m->forward(x, eval);
  EXPECT_EQ(eval.stats.at("moe.L0.dropped"), 0.0);
}

TEST(Moe, AFullyDroppedTokenGetsTheSharedPathOnly) {
  MoeOptions o = small_options();
  o.capacity_factor = 0.5;  // 16 tokens x 2 picks / 4 experts x 0.5 = 4 a row
  Moe m(o);
  randomize(*m, 6);
  {
    torch::NoGradGuard ng;
    m->router->weight.zero_();  // uniform scores: the bias alone picks experts 0 and 1 for every token
    m->balance_bias.copy_(torch::tensor({1.0f, 0.5f, 0.0f, 0.0f}));
  }
  auto x = torch::randn({2, 16, o.d_model});
  Ctx ctx;
  ctx.training = true;
  auto y = m->forward(x, ctx);
  auto shared = m->shared->forward(x.reshape({-1, o.d_model})).view(x.sizes());
  // Tokens 4.. of each row are over capacity at both their experts.
  EXPECT_TRUE(torch::equal(y.index({Slice(), Slice(4)}), shared.index({Slice(), Slice(4)})));
  // Tokens 0..3 are kept at both, each with gate 1/4 (the unbiased uniform score).
  auto xs = x.index({Slice(), Slice(0, 4)}).reshape({-1, o.d_model});
  auto routed = 0.25 * (m->experts[0]->as<MoeExpertImpl>()->forward(xs) + m->experts[1]->as<MoeExpertImpl>()->forward(xs));
  EXPECT_TRUE(torch::allclose(y.index({Slice(), Slice(0, 4)}),
                              (shared.index({Slice(), Slice(0, 4)}).reshape({-1, o.d_model}) + routed).view({2, 4, -1}),
                              1e-5, 1e-6));
  EXPECT_DOUBLE_EQ(ctx.stats.at("moe.L0.dropped"), 0.75);  // 12 of 16 tokens dropped twice
}

TEST(Moe, CapacityDropsDependOnNoLaterToken) {
  MoeOptions o = small_options();
  o.capacity_factor = 0.75;
  Moe m(o);
  randomize(*m, 7);
  auto x = torch::randn({2, 16, o.d_model});
  auto other = x.clone();
  other.index_put_({Slice(), Slice(8)}, torch::randn({2, 8, o.d_model}));
  Ctx a, b;
  a.training = b.training = true;
  auto ya = m->forward(x, a), yb = m->forward(other, b);
  ASSERT_GT(a.stats.at("moe.L0.dropped"), 0.0) << "the test needs drops";
  EXPECT_TRUE(torch::allclose(ya.index({Slice(), Slice(0, 8)}), yb.index({Slice(), Slice(0, 8)}), 1e-6, 1e-6))
      << "a later token changed an earlier token's output in training";
  EXPECT_FALSE(torch::allclose(ya.index({Slice(), Slice(8)}), yb.index({Slice(), Slice(8)}), 1e-6, 1e-6));
}

TEST(Moe, BiasUpdateBalancesASkewedRouter) {
  MoeOptions o = small_options();
  o.n_shared = 0;
  o.top_k = 1;
  o.score = "sigmoid";
  o.bias_rate = 0.01;
  Moe m(o);
  randomize(*m, 8);
  auto x = torch::randn({4, 32, o.d_model});
  {
    torch::NoGradGuard ng;
    x.select(2, 0).fill_(1.0);
    m->router->weight.mul_(0.1);
    m->router->weight.index_put_({0, 0}, 3.0);  // expert 0: +3 on every token's logit
  }
  auto cv_now = [&] {
    Ctx ctx;
    ctx.training = true;
    m->forward(x, ctx);
    StepCtx sc;
    m->after_step(sc);
    return ctx.stats.at("moe.L0.load_cv");
  };
  const double first = cv_now();
  EXPECT_GT(first, 1.0) << "the router must start skewed";
  double last = first;
  for (int s = 0; s < 400; ++s) last = cv_now();
  EXPECT_LT(last, 0.25 * first) << "load CV " << first << " -> " << last;
  EXPECT_LT(m->balance_bias[0].item<double>(), 0.0) << "the overloaded expert's bias falls";
  EXPECT_EQ(m->step_load.sum().item<int64_t>(), 0) << "after_step starts the next step's count";
}

TEST(Moe, LoadStatsDescribeTheRouting) {
  MoeOptions o = small_options();
  o.layer = 2;
  Moe m(o);
  randomize(*m, 9);
  auto x = torch::randn({2, 16, o.d_model});
  Ctx ctx;
  m->forward(x, ctx);
  auto r = m->route(x.reshape({-1, o.d_model}));
  auto counts = torch::bincount(r.experts.reshape({-1}), {}, o.n_routed).to(torch::kFloat64);
  double sum = 0;
  for (int64_t i = 0; i < o.n_routed; ++i) {
    const double share = ctx.stats.at("moe.L2.load." + std::to_string(i));
    EXPECT_DOUBLE_EQ(share, counts[i].item<double>() / 64.0);
    sum += share;
  }
  EXPECT_DOUBLE_EQ(sum, 1.0);
  const double cv = (counts.std(/*unbiased=*/false) / counts.mean()).item<double>();
  EXPECT_NEAR(ctx.stats.at("moe.L2.load_cv"), cv, 1e-12);
  EXPECT_NEAR(ctx.stats.at("moe.L2.max_load"), (counts.max() / counts.mean()).item<double>(), 1e-12);
  EXPECT_DOUBLE_EQ(ctx.stats.at("moe.load_cv"), ctx.stats.at("moe.L2.load_cv"));
}

TEST(Moe, PlanInitAndFlops) {
  ModelConfig c = tiny_config();
  ModelConfig mc = c;
  mc.modules = {test::module_args("moe", {{"layers", "1"}})};
  GPT base(c), moe(mc);
  // Only layer 1's FFN changes; every other parameter initializes as the baseline's.
  auto want = base->named_parameters();
  int64_t same = 0;
  for (auto& p : moe->named_parameters()) {
    if (p.key().rfind("blocks.1.ffn.", 0) == 0) continue;
    ASSERT_TRUE(want.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key() << " differs from the baseline's init";
    ++same;
  }
  EXPECT_GT(same, 10);
  const std::string plan = layer_plan(*moe);
  EXPECT_NE(plan.find("layer 1: A attention"), std::string::npos);
  EXPECT_NE(plan.find("[moe]"), std::string::npos) << plan;
  // Defaults at C = 32: 2 shared + 16 routed of h = 4C / 4 = 32, top-2: a token's FFN params equal
  // the dense MLP's 8 C^2, plus the router's E C.
  auto* ffn = moe->blocks->ptr(1)->as<BlockImpl>()->ffn.get();
  auto* m = dynamic_cast<MoeImpl*>(ffn);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->hidden, 32);
  EXPECT_EQ(m->active_params(), 8 * 32 * 32 + 16 * 32);
  EXPECT_EQ(m->total_params(), 18 * 2 * 32 * 32 + 16 * 32);
  EXPECT_DOUBLE_EQ(m->flops_per_token(32), 6.0 * m->active_params());
  EXPECT_DOUBLE_EQ(moe->flops_per_token(32) - base->flops_per_token(32), 6.0 * 16 * 32);
  EXPECT_NE(m->describe().find("8704 of 37376 params active"), std::string::npos) << m->describe();
  EXPECT_NE(m->describe().find("z-loss 0.001"), std::string::npos) << m->describe();
  // The bias is a parameter without gradient: it travels with the weights.
  auto named = moe->named_parameters();
  ASSERT_TRUE(named.contains("blocks.1.ffn.balance_bias"));
  EXPECT_FALSE(named["blocks.1.ffn.balance_bias"].requires_grad());
}

TEST(Moe, TheModelRunsTheStepHook) {
  ModelConfig c = tiny_config();
  c.modules = {test::module_args("moe", {{"bias_rate", "0.01"}, {"z_loss", "0.01"}})};
  GPT m(c);
  m->train();
  auto idx = torch::randint(0, c.vocab, {2, c.context}, torch::kInt64);
  GPTImpl::Parts parts;
  m->loss(idx, idx.roll(-1, 1), {}, 0, &parts);
  int z = 0;
  for (auto& a : parts.aux) z += a.name.rfind("moe_z.L", 0) == 0 && a.weight == 0.01;
  EXPECT_EQ(z, 3) << "one z-loss per MoE layer, at the plan's weight";
  EXPECT_TRUE(parts.stats.count("moe.load_cv"));
  StepCtx sc;
  m->after_step(sc);
  auto* moe = dynamic_cast<MoeImpl*>(m->blocks->ptr(0)->as<BlockImpl>()->ffn.get());
  EXPECT_GT(moe->balance_bias.abs().sum().item<double>(), 0.0) << "the step hook moves the bias";
  EXPECT_TRUE(sc.stats.count("moe.L0.bias_spread"));
}

TEST(Moe, CatalogRefusesWhatCannotRun) {
  const auto v = view_of(tiny_config());
  auto errors = [&](const std::map<std::string, std::string>& given) {
    return joined(catalog::check({test::module_args("moe", given)}, v, true));
  };
  EXPECT_EQ(errors({}), "");
  EXPECT_NE(errors({{"n_routed", "4"}, {"top_k", "6"}}).find("top_k 6 exceeds n_routed 4"), std::string::npos);
  EXPECT_NE(errors({{"score", "softmx"}}).find("did you mean 'softmax'"), std::string::npos);
  EXPECT_NE(errors({{"layers", "1,5"}}).find("layer 5 is beyond depth 3"), std::string::npos);
  EXPECT_NE(errors({{"layers", "1,1"}}).find("more than once"), std::string::npos);
  // Tensor parallelism splits each expert's hidden units: they must divide by tp (the default at
  // d_model 32: 4 x 32 / (2 + 2) = 32 hidden units divide by 2 and 4; 30 does not divide by 4), and
  // tp 8 is beyond what is tested.
  auto at_tp = [&](int tp, const std::map<std::string, std::string>& given) {
    auto w = v;
    w.tp = tp;
    return joined(catalog::check({test::module_args("moe", given)}, w, true));
  };
  EXPECT_EQ(at_tp(2, {}), "");
  EXPECT_EQ(at_tp(4, {}), "");
  EXPECT_NE(at_tp(4, {{"expert_hidden", "30"}}).find("expert hidden size 30 does not divide by tp 4"), std::string::npos);
  EXPECT_NE(at_tp(8, {}).find("module moe runs at tp <= 4 and the substrate has tp 8"), std::string::npos);
  std::vector<std::string> bad;
  catalog::resolve("moe", {{"capacity_factor", "-1"}}, bad);
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_NE(bad[0].find("capacity_factor is outside"), std::string::npos) << bad[0];
  // The init guard says the same for a configuration built by hand.
  MoeOptions o = small_options();
  o.top_k = 5;
  try {
    Moe m(o);
    ADD_FAILURE() << "top_k > n_routed must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_k 5 must be in 1..n_routed (4)"), std::string::npos) << e.what();
  }
}

TEST(Moe, RefusesALayerWhoseDenseMlpAnotherModuleOwns) {
  ModelConfig c = tiny_config();
  c.modules = {test::module_args("cbp", {{"layers", "1"}}), test::module_args("moe", {{"layers", "0,1"}})};
  try {
    GPT m(c);
    ADD_FAILURE() << "moe over cbp's layer must be refused, not silently replace it";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1 already has cbp"), std::string::npos) << e.what();
  }
}
