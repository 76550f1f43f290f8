// Jacobi forcing (model/jacobi_forcing.h): the trajectories are the model's own Jacobi decoding and
// end in greedy's continuation; the noise-aware causal mask is the paper's (checked cell by cell
// against the rules, and by what it computes: the clean stream is the plain sequence [prompt, clean
// blocks], the noisy stream the plain sequence [prompt, noisy blocks]); the progressive schedule picks
// the state nearest its noise; the consistency loss pulls noisy blocks to their fixed point, so the
// model needs fewer Jacobi forwards; weight 0 is the baseline bitwise; the refusals and the catalog row.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "model/jacobi_forcing.h"
#include "test_model_util.h"
#include "test_tolerance.h"
#include "test_util.h"

using namespace slm;
using slm::test::tiny_config;
using torch::indexing::Slice;

namespace {

ModelConfig with_jf(const std::map<std::string, std::string>& over = {}) {
  ModelConfig c = tiny_config();
  std::map<std::string, std::string> given = {{"block", "4"}, {"blocks", "2"}, {"prompt", "8"}, {"row_every", "1"}};
  for (auto& [k, v] : over) given[k] = v;
  c.modules = {slm::test::module_args("jacobi_forcing", given)};
  return c;
}

JacobiForcingImpl& jf_of(GPT& m) {
  auto* o = dynamic_cast<JacobiForcingImpl*>(m->objectives.at(0).get());
  EXPECT_NE(o, nullptr);
  return *o;
}

// A model with a live, peaked next-token distribution: Jacobi then has something to converge to.
GPT random_model(const ModelConfig& c, uint64_t seed) {
  GPT m(c);
  slm::test::perturb(*m, seed, 0.3);
  return m;
}

Ctx run_objective(GPT& m, const torch::Tensor& idx) {
  Ctx ctx;
  ctx.idx = idx;
  ctx.training = true;
  jf_of(m).add_loss(m->hidden(idx, {}), *m, ctx);
  return ctx;
}

}  // namespace

TEST(JacobiForcing, TheMaskIsThePapersCellByCell) {
  const int64_t P = 3, T = 3, N = 2, L = P + 2 * T * N;
  auto mask = noise_aware_mask(P, T, N);
  auto pos = packed_positions(P, T, N);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{L, L}));
  // The layout written out: index -> (stream, block, offset).
  auto where = [&](int64_t i) {
    struct W {
      char s;
      int64_t b, o;
    };
    if (i < P) return W{'p', -1, i};
    const int64_t r = i - P, pair = r / (2 * N), in_pair = r % (2 * N);
    return W{in_pair < N ? 'n' : 'c', pair, in_pair % N};
  };
  for (int64_t q = 0; q < L; ++q) {
    const auto wq = where(q);
    EXPECT_EQ(pos[q].item<int64_t>(), wq.s == 'p' ? q : P + wq.b * N + wq.o) << q;
    for (int64_t k = 0; k < L; ++k) {
      const auto wk = where(k);
      bool want;
      if (wq.s == 'p') want = wk.s == 'p' && k <= q;                      // the prompt: causal
      else if (wk.s == 'p') want = true;                                // every block sees the prompt
      else if (wk.s != wq.s) want = false;                              // noisy never sees clean, nor back
      else want = wk.b < wq.b || (wk.b == wq.b && wk.o <= wq.o);        // earlier blocks, own block causally
      EXPECT_EQ(mask[q][k].item<bool>(), want) << "query " << q << " key " << k;
    }
  }
}

TEST(JacobiForcing, EachStreamComputesItsPlainSequence) {
  // What the mask and shared positions mean: the clean stream of the packed row is the plain causal
  // sequence [prompt, clean blocks], the noisy stream [prompt, noisy blocks] (noisy context).
  ModelConfig c = tiny_config();
  GPT m = random_model(c, 1);
  m->eval();
  torch::NoGradGuard ng;
  const int64_t P = 5, T = 3, N = 4, L = P + 2 * T * N;
  torch::manual_seed(2);
  auto packed = torch::randint(0, c.vocab, {2, L}, torch::kInt64);
  Ctx ctx;
  ctx.idx = packed;
  ctx.allowed = noise_aware_mask(P, T, N).view({1, 1, L, L}).expand({2, 1, L, L});
  ctx.positions = packed_positions(P, T, N);
  auto h = m->hidden(ctx);
  for (int64_t stream = 0; stream < 2; ++stream) {  // 0 noisy, 1 clean
    std::vector<int64_t> at;
    for (int64_t i = 0; i < P; ++i) at.push_back(i);
    for (int64_t j = 0; j < T; ++j)
      for (int64_t o = 0; o < N; ++o) at.push_back(P + (2 * j + stream) * N + o);
    auto idx = torch::tensor(at, torch::kInt64);
    auto plain = m->hidden(packed.index_select(1, idx), {});
    const int64_t terms = c.n_layer * slm::test::block_terms(c.d_model, c.head_dim, L, 4 * c.d_model);
    EXPECT_TRUE(slm::test::fp32_close(h.index_select(1, idx), plain, terms)) << (stream ? "clean" : "noisy");
  }
}

TEST(JacobiForcing, TrajectoriesAreJacobiAndEndInGreedysContinuation) {
  ModelConfig c = tiny_config();
  GPT m = random_model(c, 3);
  m->eval();
  const int64_t P = 6, T = 3, N = 5;
  torch::manual_seed(4);
  auto prompt = torch::randint(0, c.vocab, {3, P}, torch::kInt64);
  auto tr = collect_jacobi_trajectories(*m, prompt, N, T);
  ASSERT_EQ(tr.states.size(), 3u);
  EXPECT_LE(tr.forwards, T * N) << "a block converges in at most N forwards";
  for (int64_t r = 0; r < 3; ++r) {
    std::vector<int32_t> p(P), fixed;
    for (int64_t i = 0; i < P; ++i) p[i] = static_cast<int32_t>(prompt[r][i].item<int64_t>());
    for (int64_t j = 0; j < T; ++j) {
      const auto& traj = tr.states[r][j];
      ASSERT_GE(traj.size(), 1u);
      ASSERT_LE(static_cast<int64_t>(traj.size()), N + 1);
      // Jacobi: after k updates the first k tokens are already the fixed point's.
      for (size_t k = 0; k < traj.size(); ++k)
        for (size_t t = 0; t < std::min<size_t>(k, N); ++t) EXPECT_EQ(traj[k][t], traj.back()[t]) << r << " " << j << " " << k;
      for (auto t : traj.back()) fixed.push_back(static_cast<int32_t>(t));
    }
    GenerateOptions g;
    g.max_tokens = T * N;
    EXPECT_EQ(fixed, generate(*m, p, g)) << "row " << r << ": the fixed points are not greedy's continuation";
  }
}

TEST(JacobiForcing, ProgressiveScheduleTakesTheStateNearestItsNoise) {
  const std::vector<std::vector<int64_t>> traj = {{9, 9, 9, 9}, {1, 9, 9, 9}, {1, 2, 9, 4}, {1, 2, 3, 4}};
  EXPECT_EQ(state_at_noise(traj, 1.0), 0);   // 4 of 4 differ
  EXPECT_EQ(state_at_noise(traj, 0.75), 1);  // 3 of 4
  EXPECT_EQ(state_at_noise(traj, 0.25), 2);  // 1 of 4
  EXPECT_EQ(state_at_noise(traj, 0.5), 1);   // 3/4 and 1/4 equally near: the noisier
  EXPECT_EQ(state_at_noise(traj, 0.0), 3);
}

TEST(JacobiForcing, TheLossPullsNoisyBlocksToTheirFixedPointAndJacobiSpeedsUp) {
  // The defining property, end to end: minimizing the consistency loss alone on a fixed set of
  // prompts lowers it and raises the tokens per forward of Jacobi decoding on those prompts.
  ModelConfig c = with_jf({{"block", "6"}, {"blocks", "2"}, {"prompt", "6"}});
  GPT m = random_model(c, 5);
  torch::manual_seed(6);
  auto idx = torch::randint(0, 40, {6, c.context}, torch::kInt64);
  m->train();
  auto first = run_objective(m, idx);
  const double kl0 = first.aux.at(0).value.item<double>(), tpf0 = first.stats.at("jacobi_forcing.tokens_per_forward");
  torch::optim::Adam opt(m->parameters(), torch::optim::AdamOptions(3e-3));
  double kl = kl0, tpf = tpf0;
  for (int s = 0; s < 40; ++s) {
    opt.zero_grad();
    auto ctx = run_objective(m, idx);
    ctx.aux.at(0).value.backward();
    opt.step();
    kl = ctx.aux.at(0).value.item<double>();
    tpf = ctx.stats.at("jacobi_forcing.tokens_per_forward");
  }
  std::printf("consistency loss %.4f -> %.4f, tokens per forward %.3f -> %.3f\n", kl0, kl, tpf0, tpf);
  EXPECT_LT(kl, 0.5 * kl0) << "the consistency loss did not fall";
  EXPECT_GT(tpf, tpf0) << "Jacobi decoding did not get faster: " << tpf0 << " -> " << tpf << " tokens per forward";
}

TEST(JacobiForcing, WeightZeroGivesTheBaselineLossAndGradientsBitwise) {
  GPT base(tiny_config());
  GPT m(with_jf({{"weight", "0"}}));
  {
    torch::NoGradGuard ng;
    slm::test::perturb(*m, 7, 0.3);
    auto mp = m->named_parameters();
    for (auto& p : base->named_parameters()) p.value().copy_(mp[p.key()]);
  }
  base->train();
  m->train();
  torch::manual_seed(8);
  auto s = torch::randint(0, 300, {2, 33}, torch::kInt64);
  auto x = s.slice(1, 0, 32), y = s.slice(1, 1);
  GPTImpl::Parts parts;
  auto lb = base->loss(x, y, {});
  auto lm = m->loss(x, y, {}, 0, &parts);
  ASSERT_EQ(parts.aux.size(), 1u);
  EXPECT_GT(parts.aux[0].value.item<double>(), 0.0) << "the consistency loss ran";
  EXPECT_EQ(lb.item<double>(), lm.item<double>());
  lb.backward();
  lm.backward();
  auto bp = base->named_parameters();
  for (auto& p : m->named_parameters())
    EXPECT_TRUE(torch::equal(p.value().grad(), bp[p.key()].grad())) << p.key() << " gets another gradient";
  // Never part of val_bpb.
  EXPECT_TRUE(torch::equal(m->token_nats(x, y, {}), base->token_nats(x, y, {})));
}

TEST(JacobiForcing, RefusesWhatTheMaskCannotSteerAndTheCatalogRow) {
  ModelConfig c = with_jf();
  c.modules.push_back(slm::test::module_args("engram"));
  EXPECT_NE(slm::test::error_of([&] { GPT m(c); }).find("[jacobi_forcing] engram"), std::string::npos);
  const auto* spec = catalog::find("jacobi_forcing");
  ASSERT_NE(spec, nullptr);
  EXPECT_EQ(spec->tier, catalog::Tier::Integrated);
  EXPECT_EQ(spec->max_tp, 1);
  catalog::ModelView v;
  v.depth = 2;
  v.context = 32;
  std::vector<std::string> errors;
  auto args = catalog::resolve_arg("jacobi_forcing.prompt=20,blocks=2,block=4", errors);
  ASSERT_TRUE(errors.empty());
  auto e = catalog::check({args}, v, true);
  ASSERT_FALSE(e.empty());
  EXPECT_NE(e[0].find("exceeds the context 32"), std::string::npos) << e[0];
  v.layer_pattern = "AM";
  args = catalog::resolve_arg("jacobi_forcing.prompt=8,blocks=2,block=4", errors);
  e = catalog::check({args}, v, true);
  ASSERT_FALSE(e.empty());
  EXPECT_NE(e[0].find("layer 1 is not attention"), std::string::npos) << e[0];
}
