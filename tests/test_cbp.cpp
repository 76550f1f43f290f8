// Continual backprop (docs/modules.md section 14): a GPT with cbp starts as the baseline and its
// utility tracking changes neither outputs nor gradients; utility and age follow the definition
// (gradient accumulation included); the model output is unchanged right after a replacement (the
// new unit contributes nothing; a live unit's removal is exactly its column's contribution); only
// mature units are replaced, lowest utility first, as many as the accumulated rate says; the
// optimizer state (Muon and AdamW) is reset for exactly the replaced rows and columns; everything is
// bitwise deterministic; and the catalog refuses bad parameters. Resuming: test_cbp_resume.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "common/error.h"
#include "model/cbp.h"
#include "model/gpt.h"
#include "test_util.h"
#include "train/optim.h"
#include "test_model_util.h"

using namespace slm;

namespace {

// The registry-wide tests' geometry: depth 3, d_model 32 (H = 128 hidden units), context 32.
using slm::test::tiny_config;

ModelConfig with_cbp(const std::map<std::string, std::string>& given) { return slm::test::tiny_with("cbp", given); }

std::shared_ptr<CbpMlpImpl> cbp_layer(GPT& m, int64_t layer) {
  auto f = std::dynamic_pointer_cast<CbpMlpImpl>(m->blocks->ptr(layer)->as<BlockImpl>()->ffn);
  EXPECT_TRUE(f) << "layer " << layer << " has no cbp MLP";
  return f;
}

// Random weights everywhere (as the registry tests do), so no zero-initialized projection hides a path.
void randomize(GPT& m, uint64_t seed) { slm::test::perturb(*m, seed, 0.05); }

StepCtx step_ctx(int64_t step, Optimizer* opt = nullptr) {
  StepCtx s;
  s.step = step;
  if (opt) s.optim_state = [opt](const torch::Tensor& p) { return opt->state_of(p); };
  return s;
}

// Muon (or AdamW) for the block matrices, AdamW for the rest, as the trainer groups them.
Optimizer make_optimizer(GPT& m, const std::string& matrix_kind) {
  ParamGroup mat{"matrix", matrix_kind, 0.02, 0.0, {}, {}}, rest{"rest", "adamw", 0.01, 0.0, {}, {}};
  for (auto& p : m->named_parameters()) {
    ParamGroup& g = p.key().rfind("blocks.", 0) == 0 && p.value().dim() == 2 ? mat : rest;
    g.names.push_back(p.key());
    g.params.push_back(p.value());
  }
  return Optimizer({mat, rest}, OptimOptions{});
}

// Units whose age is 0 after a step: the ones replaced in it.
std::vector<int64_t> newborn(const CbpMlpImpl& f) {
  auto i = f.age.eq(0).nonzero().flatten();
  return std::vector<int64_t>(i.data_ptr<int64_t>(), i.data_ptr<int64_t>() + i.numel());
}

}  // namespace

TEST(Cbp, StartsAsTheBaselineAndTrackingChangesNothing) {
  GPT base(tiny_config()), cbp(with_cbp({}));
  auto bp = base->named_parameters(), cp = cbp->named_parameters();
  ASSERT_EQ(bp.size(), cp.size()) << "cbp adds no parameter";
  for (auto& p : bp) EXPECT_TRUE(torch::equal(p.value(), cp[p.key()])) << p.key() << " differs at init";
  randomize(base, 1);
  randomize(cbp, 1);
  base->train();
  cbp->train();
  torch::manual_seed(2);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto lb = base->loss(idx, idx.roll(-1, 1), {}), lc = cbp->loss(idx, idx.roll(-1, 1), {});
  EXPECT_EQ(lb.item<double>(), lc.item<double>());
  lb.backward();
  lc.backward();
  for (auto& p : bp) EXPECT_TRUE(torch::equal(p.value().grad(), cp[p.key()].grad())) << p.key() << " gradient differs";
  for (int64_t l = 0; l < 3; ++l) EXPECT_EQ(cbp_layer(cbp, l)->act_tokens, 2 * 32) << "layer " << l << " tracked nothing";
  EXPECT_NE(layer_plan(*cbp).find("continual backprop (rate 0.0001, maturity 100, decay 0.99, every 1)"),
            std::string::npos)
      << layer_plan(*cbp);
  EXPECT_DOUBLE_EQ(cbp->flops_per_token(32) - base->flops_per_token(32), 3.0 * 128) << "one add per unit per token";
}

TEST(Cbp, UtilityAndAgeFollowTheDefinition) {
  CbpOptions o = CbpOptions::from(slm::test::module_args("cbp"), tiny_config());
  o.decay = 0.9;
  o.maturity = 1000;  // nothing replaced here
  CbpMlpImpl f(tiny_config(), o);
  {
    torch::NoGradGuard ng;
    torch::manual_seed(3);
    f.c_proj->weight.normal_();
  }
  auto a_of = [&](const torch::Tensor& x) { return torch::relu(torch::matmul(x, f.c_fc->weight.t())).pow(2); };
  auto mag = f.c_proj->weight.abs().sum(0).detach();
  Ctx ctx;
  ctx.training = true;
  auto x1 = torch::randn({2, 5, 32}), x2 = torch::randn({1, 7, 32});
  f.forward(x1, ctx);
  auto sc = step_ctx(1);
  f.after_step(sc);
  auto u1 = 0.1 * a_of(x1).reshape({-1, 128}).mean(0) * mag;
  EXPECT_TRUE(torch::allclose(f.utility, u1, 1e-5, 1e-7));
  EXPECT_TRUE(torch::equal(f.age, torch::ones({128}, torch::kInt64)));
  // Two micro-batches of one step: one average over all their tokens.
  f.forward(x1, ctx);
  f.forward(x2, ctx);
  sc = step_ctx(2);
  f.after_step(sc);
  auto both = torch::cat({a_of(x1).reshape({-1, 128}), a_of(x2).reshape({-1, 128})});
  auto u2 = 0.9 * u1 + 0.1 * both.mean(0) * mag;
  EXPECT_TRUE(torch::allclose(f.utility, u2, 1e-5, 1e-7));
  EXPECT_EQ(f.age[0].item<int64_t>(), 2);
  // Evaluation reads nothing.
  ctx.training = false;
  f.forward(x1, ctx);
  EXPECT_EQ(f.act_tokens, 0);
  EXPECT_DOUBLE_EQ(sc.stats.at("cbp.L0.utility"), f.utility.mean().item<double>());
  EXPECT_EQ(sc.stats.at("cbp.L0.replaced"), 0.0);
}

TEST(Cbp, OutputUnchangedRightAfterAReplacement) {
  // rate x eligible = 3/128 x 128 = 3 units due at the first step (all mature at maturity 0).
  GPT m(with_cbp({{"layers", "1"}, {"rate", "0.0234375"}, {"maturity", "0"}}));
  randomize(m, 4);
  auto f = cbp_layer(m, 1);
  const std::vector<int64_t> dead = {3, 17, 40};
  {
    torch::NoGradGuard ng;  // units that contribute nothing: utility 0, the lowest
    for (int64_t i : dead) f->c_proj->weight.select(1, i).zero_();
  }
  torch::manual_seed(5);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  m->eval();
  auto before = m->hidden(idx, {}).detach();
  auto fc_before = f->c_fc->weight.detach().clone(), proj_before = f->c_proj->weight.detach().clone();
  m->train();
  m->hidden(idx, {});  // the step's forward: utilities from these activations
  auto sc = step_ctx(1);
  m->after_step(sc);
  EXPECT_EQ(newborn(*f), dead);
  EXPECT_EQ(sc.stats.at("cbp.replaced"), 3.0);
  m->eval();
  EXPECT_TRUE(torch::equal(m->hidden(idx, {}), before)) << "the output changed at the replacement";
  EXPECT_TRUE(torch::equal(f->c_proj->weight, proj_before));
  for (int64_t i = 0; i < 128; ++i) {
    const bool fresh = std::find(dead.begin(), dead.end(), i) != dead.end();
    EXPECT_EQ(torch::equal(f->c_fc->weight[i], fc_before[i]), !fresh) << "unit " << i;
  }
  // Fresh input weights come from the init distribution U(-sqrt(3/C), sqrt(3/C)).
  auto fresh_rows = f->c_fc->weight.index({torch::tensor(dead)});
  EXPECT_LE(fresh_rows.abs().max().item<double>(), std::sqrt(3.0 / 32));
  EXPECT_GT(fresh_rows.std().item<double>(), 0.5 * std::sqrt(1.0 / 32));

  // A live unit: the output changes by exactly its removal, and not at all through its new weights.
  GPT live(with_cbp({{"layers", "1"}, {"rate", "0.0078125"}, {"maturity", "0"}}));  // 1 unit due
  randomize(live, 4);
  auto g = cbp_layer(live, 1);
  live->eval();
  auto live_before = live->hidden(idx, {}).detach();
  GPT masked(with_cbp({{"layers", "1"}}));
  randomize(masked, 4);
  live->train();
  live->hidden(idx, {});
  sc = step_ctx(1);
  live->after_step(sc);
  const auto gone = newborn(*g);
  ASSERT_EQ(gone.size(), 1u);
  {
    torch::NoGradGuard ng;
    cbp_layer(masked, 1)->c_proj->weight.select(1, gone[0]).zero_();
  }
  live->eval();
  masked->eval();
  auto after = live->hidden(idx, {});
  EXPECT_TRUE(torch::equal(after, masked->hidden(idx, {})));
  EXPECT_FALSE(torch::equal(after, live_before)) << "a unit with outgoing weights was removed";
}

TEST(Cbp, OnlyMatureUnitsAreReplacedLowestUtilityFirstAtTheRate) {
  CbpOptions o = CbpOptions::from(slm::test::module_args("cbp"), tiny_config());
  o.rate = 0.1;
  o.maturity = 50;  // the young units stay young through every step below
  CbpMlpImpl f(tiny_config(), o);
  {
    torch::NoGradGuard ng;
    // Units 0..63 mature with utility 1 + i; 64..127 young with utility 0: the least useful, but
    // not eligible.
    f.age.slice(0, 0, 64).fill_(100);
    f.utility.slice(0, 0, 64).copy_(torch::arange(1, 65, torch::kFloat));
  }
  auto young_fc = f.c_fc->weight.slice(0, 64).detach().clone();
  auto sc = step_ctx(1);
  f.after_step(sc);  // 64 eligible x 0.1 = 6.4 due: 6 replaced, 0.4 carried
  EXPECT_EQ(newborn(f), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_NEAR(f.due.item<double>(), 0.4, 1e-12);
  EXPECT_TRUE(torch::equal(f.utility.slice(0, 0, 6), torch::zeros({6})));
  sc = step_ctx(2);
  f.after_step(sc);  // 58 eligible: 0.4 + 5.8 = 6.2 due
  EXPECT_EQ(newborn(f), (std::vector<int64_t>{6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(f.replaced.item<int64_t>(), 12);
  EXPECT_EQ(sc.stats.at("cbp.L0.replaced"), 12.0);
  EXPECT_TRUE(torch::equal(f.c_fc->weight.slice(0, 64), young_fc)) << "a young unit was replaced";

  // A fractional rate accumulates until a whole unit is due: 64 x 1/1024 per step, one at step 16.
  o.rate = 1.0 / 1024;
  CbpMlpImpl slow(tiny_config(), o);
  {
    torch::NoGradGuard ng;
    slow.age.slice(0, 0, 64).fill_(100);
  }
  for (int64_t s = 1; s <= 16; ++s) {
    sc = step_ctx(s);
    slow.after_step(sc);
    EXPECT_EQ(slow.replaced.item<int64_t>(), s < 16 ? 0 : 1) << "step " << s;
  }
  // `every`: the count due accumulates between replacement steps.
  o.rate = 0.1;
  o.every = 3;
  CbpMlpImpl sparse(tiny_config(), o);
  {
    torch::NoGradGuard ng;
    sparse.age.slice(0, 0, 64).fill_(100);
  }
  for (int64_t s = 1; s <= 3; ++s) {
    sc = step_ctx(s);
    sparse.after_step(sc);
    EXPECT_EQ(sparse.replaced.item<int64_t>(), s < 3 ? 0 : 19) << "step " << s;  // floor(3 x 6.4)
  }
}

TEST(Cbp, OptimizerStateIsResetForExactlyTheReplacedRowsAndColumns) {
  for (const std::string kind : {"muon", "adamw"}) {
    GPT m(with_cbp({{"layers", "0"}, {"rate", "0.03125"}, {"maturity", "0"}}));  // 4 units due
    randomize(m, 6);
    Optimizer opt = make_optimizer(m, kind);
    m->train();
    torch::manual_seed(7);
    auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
    m->loss(idx, idx.roll(-1, 1), {}).backward();
    opt.step(1.0);
    auto state_before = opt.state();
    auto params_before = m->named_parameters();
    std::map<std::string, torch::Tensor> weights_before;
    for (auto& p : params_before) weights_before[p.key()] = p.value().detach().clone();
    auto sc = step_ctx(1, &opt);
    m->after_step(sc);
    auto f = cbp_layer(m, 0);
    const auto gone = newborn(*f);
    ASSERT_EQ(gone.size(), 4u) << kind;
    auto rows = torch::zeros({128}, torch::kBool);
    for (int64_t i : gone) rows[i] = true;
    auto state_after = opt.state();
    int checked = 0;
    for (auto& [key, after] : state_after) {
      const auto& before = state_before.at(key);
      const bool fc = key.rfind("blocks.0.ffn.c_fc.weight.", 0) == 0, proj = key.rfind("blocks.0.ffn.c_proj.weight.", 0) == 0;
      if (!fc && !proj) {
        EXPECT_TRUE(torch::equal(after, before)) << kind << ": " << key << " changed";
        continue;
      }
      ++checked;
      ASSERT_GT(before.abs().sum().item<double>(), 0.0) << key << " had no state to reset";
      // c_fc rows (H, C) are the units' inputs; c_proj columns (C, H) their outputs.
      auto a = fc ? after : after.t(), b = fc ? before : before.t();
      EXPECT_TRUE(torch::equal(a.index({rows}), torch::zeros_like(a.index({rows})))) << kind << ": " << key;
      EXPECT_TRUE(torch::equal(a.index({rows.logical_not()}), b.index({rows.logical_not()}))) << kind << ": " << key;
    }
    EXPECT_EQ(checked, kind == "muon" ? 2 : 4) << "momentum, or exp_avg and exp_avg_sq, of both matrices";
    for (auto& p : m->named_parameters()) {
      const auto& w = weights_before.at(p.key());
      if (p.key() == "blocks.0.ffn.c_fc.weight") {
        EXPECT_TRUE(torch::equal(p.value().index({rows.logical_not()}), w.index({rows.logical_not()})));
        EXPECT_FALSE(torch::equal(p.value().index({rows}), w.index({rows})));
      } else if (p.key() == "blocks.0.ffn.c_proj.weight") {
        EXPECT_TRUE(torch::equal(p.value().t().index({rows.logical_not()}), w.t().index({rows.logical_not()})));
        EXPECT_EQ(p.value().t().index({rows}).abs().sum().item<double>(), 0.0);
      } else {
        EXPECT_TRUE(torch::equal(p.value(), w)) << p.key();
      }
    }
  }
}

TEST(Cbp, TrainingWithReplacementsIsBitwiseDeterministic) {
  auto run = [] {
    GPT m(with_cbp({{"rate", "0.05"}, {"maturity", "1"}}));  // every layer
    Optimizer opt = make_optimizer(m, "muon");
    m->train();
    torch::manual_seed(8);
    std::map<std::string, double> stats;
    for (int64_t s = 1; s <= 4; ++s) {
      auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
      m->loss(idx, idx.roll(-1, 1), {}, s - 1).backward();
      opt.step(1.0);
      opt.zero_grad();
      auto sc = step_ctx(s, &opt);
      m->after_step(sc);
      stats = sc.stats;
    }
    std::vector<torch::Tensor> all;
    for (auto& p : m->named_parameters()) all.push_back(p.value().detach().clone());
    for (auto& b : m->named_buffers()) all.push_back(b.value().clone());
    return std::make_pair(all, stats);
  };
  auto [a, sa] = run();
  auto [b, sb] = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "tensor " << i;
  EXPECT_EQ(sa, sb);
  // Steps 2..4 replace floor(due) of 128 units in each of the 3 layers: 6, 6, 7 (or so) per layer.
  EXPECT_GT(sa.at("cbp.replaced"), 30.0);
  EXPECT_EQ(sa.at("cbp.replaced"), sa.at("cbp.L0.replaced") + sa.at("cbp.L1.replaced") + sa.at("cbp.L2.replaced"));

  // The redraw depends on the step (its own generator), and leaves the global generator alone.
  const CbpOptions o = CbpOptions::from(slm::test::module_args("cbp"), tiny_config());
  CbpMlpImpl f(tiny_config(), o), g(tiny_config(), o);
  const auto global = at::detail::getDefaultCPUGenerator().get_state();
  auto i = torch::tensor({2, 9}, torch::kInt64);
  StepCtx none;
  f.replace(i, 5, none);
  g.replace(i, 6, none);
  EXPECT_TRUE(torch::equal(at::detail::getDefaultCPUGenerator().get_state(), global));
  EXPECT_FALSE(torch::equal(f.c_fc->weight[2], g.c_fc->weight[2]));
  EXPECT_FALSE(torch::equal(f.c_fc->weight[2], f.c_fc->weight[9]));
}

TEST(Cbp, BadParametersAreRefusedWithTheFix) {
  catalog::ModelView v;
  v.depth = 3;
  auto errors = [&](const std::map<std::string, std::string>& given) {
    return catalog::check({slm::test::module_args("cbp", given)}, v, /*training=*/true);
  };
  EXPECT_TRUE(errors({}).empty());
  auto one = [&](const std::map<std::string, std::string>& given, const std::string& want) {
    auto e = errors(given);
    ASSERT_EQ(e.size(), 1u) << ::testing::PrintToString(e);
    EXPECT_NE(e[0].find(want), std::string::npos) << e[0];
  };
  one({{"rate", "0"}}, "use the paper's 1e-4 or drop cbp");
  one({{"decay", "1"}}, "use the paper's 0.99");
  one({{"layers", "1,5"}}, "layer 5 is beyond depth 3 (layers run 0..2)");
  one({{"layers", "1,1"}}, "layers lists 1 more than once");
  std::vector<std::string> range;
  catalog::resolve("cbp", {{"rate", "2"}}, range);
  ASSERT_EQ(range.size(), 1u);
  EXPECT_NE(range[0].find("rate is outside [0, 1]"), std::string::npos) << range[0];
  // A configuration built by hand meets the same rules at model init.
  ModelConfig c = tiny_config();
  c.modules = {slm::test::module_args("cbp", {{"layers", "4"}})};
  try {
    GPT m(c);
    ADD_FAILURE() << "cbp on layer 4 of 3 was built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[cbp] layer 4 is beyond depth 3"), std::string::npos) << e.what();
  }
  CbpOptions o = CbpOptions::from(slm::test::module_args("cbp"), tiny_config());
  o.decay = 1.0;
  EXPECT_THROW(CbpMlpImpl(tiny_config(), o), Error);
}
