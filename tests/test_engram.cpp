// Engram (docs/modules.md section 2): the hash (deterministic, in range for every order and head, no
// full collision across heads, distinct primes), compression and the pad at document starts; the
// branch's causality, document isolation, zero gate, zero-initialized value (a GPT with Engram is the
// baseline exactly), gradients, cache-carried pieces equal to the whole, bf16 autocast, FLOPs; the
// model plan; and the catalog row's init guard (the article's Phase-1 bug: Engram on Mamba layers).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "common/device.h"
#include "common/error.h"
#include "model/engram.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "test_util.h"
#include "test_model_util.h"
#include "test_tolerance.h"


using namespace slm;
using torch::indexing::Slice;

namespace {

// The catalog's arguments for engram: defaults plus overrides given as text.
catalog::ModuleArgs engram_args(const std::map<std::string, std::string>& over = {}) {
  return slm::test::module_args("engram", over);
}

// "layers=0,2,table_size=257" -> overrides, a piece without '=' continuing the previous list (as
// catalog::resolve_arg reads a module's arguments).
std::map<std::string, std::string> parse_overrides(const std::string& text) {
  std::map<std::string, std::string> out;
  std::stringstream ss(text);
  std::string piece, last;
  while (std::getline(ss, piece, ',')) {
    auto eq = piece.find('=');
    if (eq == std::string::npos) {
      out[last] += "," + piece;
    } else {
      last = piece.substr(0, eq);
      out[last] = piece.substr(eq + 1);
    }
  }
  return out;
}

// The registry-wide tests' geometry: depth 3, d_model 32, 2 heads of 16, context 32.
using slm::test::tiny_config;

EngramOptions tiny_options() {
  ModelConfig c;
  c.d_model = 32;
  c.vocab = 300;
  return EngramOptions::from(slm::test::module_args("engram", {{"table_size", "257"}}), c);
}

catalog::ModelView view(int64_t depth, const std::string& pattern) {
  catalog::ModelView v;
  v.depth = depth;
  v.d_model = 256;
  v.n_head = 4;
  v.head_dim = 64;
  v.context = 256;
  v.layer_pattern = pattern;
  return v;
}

// Random weights everywhere, the zero-initialized value and conv included, so no path is hidden.
void randomize(torch::nn::Module& m, uint64_t seed) { slm::test::perturb(m, seed, 0.3); }

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// Puts Engram branches on an already built GPT, through apply_engram's builders: the backbone's
// weights stay those of the baseline (a GPT built with the module would draw them in another order).
std::vector<EngramImpl*> add_engram(GPT& m, const catalog::ModuleArgs& args) {
  ModelPlan plan = model_plan(m->cfg);
  apply_engram(args, m->cfg, plan);
  std::vector<EngramImpl*> out;
  for (int64_t i = 0; i < m->cfg.n_layer; ++i) {
    auto& blk = *m->blocks->ptr(i)->as<BlockImpl>();
    for (auto& build : plan.layers[i].branches) {
      Branch b = build();
      out.push_back(dynamic_cast<EngramImpl*>(b.get()));
      blk.branches.push_back(blk.register_module("branch" + std::to_string(blk.branches.size()), b));
    }
  }
  return out;
}

using slm::test::error_of;

}  // namespace

// ---- the hash

TEST(EngramHash, DeterministicAndInRangeForEveryOrderAndHead) {
  Engram a(tiny_options()), b(tiny_options());
  torch::manual_seed(1);
  auto idx = torch::randint(0, 300, {3, 40}, torch::kInt64);
  auto doc = (torch::arange(40) >= 17).to(torch::kInt64).unsqueeze(0).expand({3, 40});
  const int64_t M = 2;
  for (const torch::Tensor& seg : {torch::Tensor(), doc}) {
    auto prev = torch::full({3, M}, a->vc, torch::kInt64);
    auto ra = a->hash(a->compress(idx), seg, prev), rb = b->hash(b->compress(idx), seg, prev);
    ASSERT_EQ(ra.sizes(), (std::vector<int64_t>{3, 40, 8}));
    EXPECT_TRUE(torch::equal(ra, rb)) << "two branches with the same options hash differently";
    for (int64_t h = 0; h < 8; ++h) {
      auto local = ra.select(-1, h) - a->offsets[h];
      EXPECT_GE(local.min().item<int64_t>(), 0) << "head " << h;
      EXPECT_LT(local.max().item<int64_t>(), a->primes[h]) << "head " << h;
    }
  }
  // Another layer draws other multipliers: the same n-grams land elsewhere.
  EngramOptions o1 = tiny_options();
  o1.layer = 1;
  Engram c(o1);
  auto prev = torch::full({3, M}, a->vc, torch::kInt64);
  EXPECT_FALSE(torch::equal(a->hash(a->compress(idx), {}, prev), c->hash(c->compress(idx), {}, prev)));
}

TEST(EngramHash, NoTwoDistinctTrigramsCollideOnEveryHead) {
  // Spec test (e): with K heads of distinct prime sizes a collision on all of them is ~ 1/P^K.
  Engram e(tiny_options());
  torch::manual_seed(2);
  const int64_t T = 3000;
  auto ids = torch::randint(0, e->vc, {1, T}, torch::kInt64);
  auto rows = e->hash(ids, {}, torch::full({1, 2}, e->vc, torch::kInt64));  // (1, T, 8): order 3 is heads 4..7
  auto c = ids.view({-1}).contiguous();
  auto r = rows.view({T, 8}).contiguous();
  std::set<std::vector<int64_t>> grams, keys;
  std::set<int64_t> head0;
  for (int64_t t = 2; t < T; ++t) {
    grams.insert({c[t - 2].item<int64_t>(), c[t - 1].item<int64_t>(), c[t].item<int64_t>()});
    keys.insert({r[t][4].item<int64_t>(), r[t][5].item<int64_t>(), r[t][6].item<int64_t>(), r[t][7].item<int64_t>()});
    head0.insert(r[t][4].item<int64_t>());
  }
  EXPECT_LT(head0.size(), grams.size()) << "one head alone must collide here (more n-grams than rows)";
  EXPECT_EQ(keys.size(), grams.size()) << "two distinct trigrams share a row on every head";
}

TEST(EngramHash, PrimesCompressionAndMultipliers) {
  auto p = engram_primes(4099, 16);
  ASSERT_EQ(p.size(), 16u);
  EXPECT_EQ(p.front(), 4099);  // 4099 is prime: "at or above" the base
  for (size_t i = 0; i < p.size(); ++i) {
    for (int64_t d = 2; d * d <= p[i]; ++d) ASSERT_NE(p[i] % d, 0) << p[i] << " is not prime";
    if (i) {
      EXPECT_GT(p[i], p[i - 1]);
    }
  }
  EXPECT_EQ(engram_primes(16, 3), (std::vector<int64_t>{17, 19, 23}));
  EXPECT_EQ(engram_compressed_vocab(300), 229);  // largest prime <= 231 = 0.77 x 300

  Engram e(tiny_options());
  auto ids = torch::arange(0, 300, torch::kInt64).view({1, -1});
  auto c = e->compress(ids);
  EXPECT_TRUE(torch::equal(c, ids.remainder(229)));
  EXPECT_LT(c.max().item<int64_t>(), e->vc) << "a compressed id reached the pad id";

  const int64_t bound = std::numeric_limits<int64_t>::max() / (229 + 1);
  auto m0 = engram_multipliers(0, 3, 229);
  EXPECT_EQ(m0, engram_multipliers(0, 3, 229));
  EXPECT_NE(m0, engram_multipliers(1, 3, 229));
  for (int64_t m : m0) {
    EXPECT_EQ(m % 2, 1) << m;
    EXPECT_GE(m, 1);
    EXPECT_LE(m, bound) << "pad x m would overflow int64";
  }
}

TEST(EngramHash, ADocumentStartHashesWithThePadNotThePreviousDocument) {
  Engram e(tiny_options());
  torch::manual_seed(3);
  const int64_t T = 20, cut = 7;
  auto idx = torch::randint(0, 300, {1, T}, torch::kInt64);
  auto seg = (torch::arange(T) >= cut).to(torch::kInt64).unsqueeze(0);
  auto pad = torch::full({1, 2}, e->vc, torch::kInt64);
  auto packed = e->hash(e->compress(idx), seg, pad);
  auto alone = e->hash(e->compress(idx.index({Slice(), Slice(cut)})), {}, pad);
  EXPECT_TRUE(torch::equal(packed.index({Slice(), Slice(cut)}), alone));
  // Without the segments the first n-grams of document 2 would read document 1.
  auto leaky = e->hash(e->compress(idx), {}, pad);
  EXPECT_FALSE(torch::equal(leaky.index({Slice(), Slice(cut, cut + 2)}), alone.index({Slice(), Slice(0, 2)})));
}

// ---- the branch

TEST(EngramBranch, CausalChangingAFutureTokenChangesNoEarlierOutput) {
  Engram e(tiny_options());
  randomize(*e, 4);
  torch::NoGradGuard ng;
  const int64_t T = 24, t0 = 11;
  auto x = torch::randn({2, T, 32});
  auto idx = torch::randint(0, 300, {2, T}, torch::kInt64);
  auto x2 = x.clone(), idx2 = idx.clone();
  x2.index_put_({Slice(), Slice(t0)}, torch::randn({2, T - t0, 32}));
  idx2.index_put_({Slice(), Slice(t0)}, torch::randint(0, 300, {2, T - t0}, torch::kInt64));
  auto a = e->run(x, idx, {}), b = e->run(x2, idx2, {});
  EXPECT_EQ(max_diff(a.index({Slice(), Slice(0, t0)}), b.index({Slice(), Slice(0, t0)})), 0.0)
      << "changing tokens from " << t0 << " on changed an earlier output";
  EXPECT_GT(max_diff(a.index({Slice(), Slice(t0)}), b.index({Slice(), Slice(t0)})), 1e-3);
}

TEST(EngramBranch, DocumentsInAPackedRowSeeNothingOfEachOther) {
  Engram e(tiny_options());
  randomize(*e, 5);
  torch::NoGradGuard ng;
  // cut = 10 < (kernel - 1) x dilation + max order: the conv and the trigrams both reach across it.
  const int64_t T = 24, cut = 10;
  auto x = torch::randn({1, T, 32});
  auto idx = torch::randint(0, 300, {1, T}, torch::kInt64);
  auto doc = (torch::arange(T) >= cut).to(torch::kInt64).unsqueeze(0);
  auto packed = e->run(x, idx, doc);
  // Document 1's tokens and hidden states changed: document 2's output must not move.
  auto x2 = x.clone(), idx2 = idx.clone();
  x2.index_put_({Slice(), Slice(0, cut)}, torch::randn({1, cut, 32}));
  idx2.index_put_({Slice(), Slice(0, cut)}, torch::randint(0, 300, {1, cut}, torch::kInt64));
  auto changed = e->run(x2, idx2, doc);
  EXPECT_EQ(max_diff(packed.index({Slice(), Slice(cut)}), changed.index({Slice(), Slice(cut)})), 0.0);
  // And it equals document 2 run alone, from a sequence start.
  auto alone = e->run(x.index({Slice(), Slice(cut)}), idx.index({Slice(), Slice(cut)}), {});
  // Another row count may take another BLAS kernel (another summation order): the bound of fp32 sums
  // along the branch's path, each of its matrices' widest input plus the gate's norm and dot (2 C).
  int64_t widest = 0;
  for (auto& p : e->parameters())
    if (p.dim() >= 2) widest = std::max(widest, p.size(-1) * (p.dim() > 2 ? p.size(-2) : 1));
  EXPECT_TRUE(slm::test::fp32_close(packed.index({Slice(), Slice(cut)}), alone, 3 * widest + 2 * 32));
  // Without doc ids the second document does see the first: the test can fail.
  auto joined = e->run(x, idx, {});
  EXPECT_GT(max_diff(joined.index({Slice(), Slice(cut)}), alone), 1e-3);
}

TEST(EngramBranch, ZeroGateGivesZeroOutput) {
  // Spec test (d): g = 0 makes Y = 0 whatever the memory and the conv hold (no biases anywhere).
  Engram e(tiny_options());
  randomize(*e, 6);
  torch::NoGradGuard ng;
  auto v = torch::randn({2, 12, 32});
  auto g = torch::zeros({2, 12, 1});
  EngramState st;
  st.conv = torch::randn({2, 9, 32});
  st.ids = torch::zeros({2, 2}, torch::kInt64);
  EXPECT_TRUE(torch::equal(e->output(g, v, {}), torch::zeros({2, 12, 32})));
  // A carried state reaches the first (kernel - 1) x dilation outputs only; past them Y = 0 exactly.
  auto y = e->output(g, v, {}, &st);
  EXPECT_TRUE(torch::equal(y.index({Slice(), Slice(9)}), torch::zeros({2, 3, 32})));
  // The gate itself is a sigmoid of a bounded logit: strictly inside (0, 1).
  auto gx = e->gate(torch::randn({2, 12, 32}), torch::randn({2, 12, 32}));
  EXPECT_EQ(gx.sizes(), (std::vector<int64_t>{2, 12, 1}));
  EXPECT_GT(gx.min().item<double>(), 0.0);
  EXPECT_LT(gx.max().item<double>(), 1.0);
}

TEST(EngramBranch, ZeroInitValueMakesAGptWithEngramTheBaselineExactly) {
  ModelConfig c = tiny_config();
  GPT m(c);
  randomize(*m, 7);  // a non-trivial backbone (its output projections start at zero)
  m->eval();
  torch::NoGradGuard ng;
  auto idx = torch::randint(0, c.vocab, {2, c.context}, torch::kInt64);
  auto doc = (torch::arange(c.context) >= 13).to(torch::kInt64).unsqueeze(0).expand({2, c.context});
  auto base = m->hidden(idx, doc);
  auto branches = add_engram(m, engram_args({{"layers", "0,2"}, {"table_size", "257"}}));
  ASSERT_EQ(branches.size(), 2u);
  for (auto* b : branches) {
    EXPECT_EQ(b->w_v->weight.abs().max().item<double>(), 0.0) << "w_v must start at zero";
    EXPECT_EQ(b->conv_w.abs().max().item<double>(), 0.0) << "the conv must start at zero";
    // Tables, key and conv random: only the value's zero holds the branch at zero.
    torch::manual_seed(8);
    b->ngram_table.add_(torch::randn_like(b->ngram_table));
    b->w_k->weight.add_(torch::randn_like(b->w_k->weight));
    b->conv_w.add_(torch::randn_like(b->conv_w));
  }
  EXPECT_TRUE(torch::equal(m->hidden(idx, doc), base)) << "a GPT with a zero-valued Engram differs from the baseline";
  for (auto* b : branches) b->w_v->weight.add_(torch::randn_like(b->w_v->weight) * 0.3);
  EXPECT_GT(max_diff(m->hidden(idx, doc), base), 1e-3) << "a live Engram branch did not change the model";
}

TEST(EngramBranch, GradientReachesTablesProjectionsGateAndConv) {
  Engram e(tiny_options());
  randomize(*e, 9);
  auto x = torch::randn({2, 16, 32}, torch::requires_grad());
  auto idx = torch::randint(0, 300, {2, 16}, torch::kInt64);
  auto doc = (torch::arange(16) >= 6).to(torch::kInt64).unsqueeze(0).expand({2, 16});
  e->run(x, idx, doc).pow(2).sum().backward();
  std::set<std::string> names;
  for (auto& p : e->named_parameters()) {
    names.insert(p.key());
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key() << " gets a zero gradient";
  }
  EXPECT_EQ(names, (std::set<std::string>{"ngram_table", "w_k.weight", "w_v.weight", "conv_w"}));
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0) << "the gate does not read the hidden state";
  // Only the looked-up rows of the tables move (the gradient is a scatter of the gathers).
  auto touched = e->ngram_table.grad().abs().sum(1).gt(0).sum().item<int64_t>();
  EXPECT_LE(touched, 2 * 16 * 8);
}

TEST(EngramBranch, PiecesWithTheCacheEqualTheWhole) {
  EngramOptions wide = tiny_options();
  wide.orders = {2, 5};  // M = 4 carried ids, dilation 5
  wide.conv = 3;
  EngramOptions no_conv = tiny_options();
  no_conv.conv = 0;
  for (const EngramOptions& o : {tiny_options(), wide, no_conv}) {
    Engram e(o);
    randomize(*e, 10);
    torch::NoGradGuard ng;
    const int64_t T = 24;
    auto x = torch::randn({2, T, 32});
    auto idx = torch::randint(0, 300, {2, T}, torch::kInt64);
    auto whole = e->run(x, idx, {});
    EngramState st;
    std::vector<torch::Tensor> parts;
    int64_t t = 0;
    for (int64_t len : {5, 1, 1, 17}) {
      parts.push_back(e->run(x.index({Slice(), Slice(t, t + len)}), idx.index({Slice(), Slice(t, t + len)}), {}, &st));
      t += len;
    }
    EXPECT_LT(max_diff(torch::cat(parts, 1), whole), 1e-5) << e->describe();  // GEMM blocking differs with T
  }
}

TEST(EngramBranch, GptGenerationWithTheCacheEqualsWithout) {
  ModelConfig c = tiny_config();
  GPT m(c);
  add_engram(m, engram_args({{"layers", "0,2"}, {"table_size", "257"}}));
  randomize(*m, 11);
  std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42};
  GenerateOptions g;
  g.max_tokens = c.context - static_cast<int64_t>(prompt.size());
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  EXPECT_EQ(cached, generate(*m, prompt, g)) << "greedy generation with the cache differs from recomputing";
}

TEST(EngramBranch, StreamsShareTheValueAndGateEachStream) {
  // Under mHC a branch may see x (B, T, n, C): one memory value, one gate per stream.
  Engram e(tiny_options());
  randomize(*e, 12);
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 10, 3, 32});
  auto idx = torch::randint(0, 300, {2, 10}, torch::kInt64);
  auto y = e->run(x, idx, {});
  ASSERT_EQ(y.sizes(), x.sizes());
  for (int64_t s = 0; s < 3; ++s)
    EXPECT_LT(max_diff(y.select(2, s), e->run(x.select(2, s), idx, {})), 1e-6) << "stream " << s;
}

TEST(EngramBranch, Bf16AutocastRunsAndStaysCloseToFp32) {
  Engram e(tiny_options());
  randomize(*e, 13);
  auto x = torch::randn({2, 16, 32});
  auto idx = torch::randint(0, 300, {2, 16}, torch::kInt64);
  auto y32 = e->run(x, idx, {});
  const torch::Device cpu(torch::kCPU);
  device::set_autocast(cpu, true);
  auto y16 = e->run(x, idx, {});
  y16.pow(2).sum().backward();
  device::set_autocast(cpu, false);
  device::clear_autocast_cache();
  const double rel = max_diff(y16.to(torch::kFloat32), y32) / y32.abs().max().item<double>();
  EXPECT_LT(rel, 0.05);
  for (auto& p : e->named_parameters()) EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
}

TEST(EngramBranch, FlopsCountProjectionsConvAndGateAndDescribeSaysWhat) {
  Engram e(tiny_options());  // E = 2 orders x 4 heads x dim 4 = 32, C = 32, conv 4
  EXPECT_DOUBLE_EQ(e->flops_per_token(32), 6.0 * (2.0 * 32 * 32 + 4 * 32 + 32));
  EXPECT_EQ(e->describe(), "engram (orders 2,3 x 4 heads, tables 257..293, dim 4, vocab 300->229, conv 4 dil 3, doc-reset)");
  ModelConfig c = tiny_config();
  GPT m(c);
  const double base = m->flops_per_token(c.context);
  add_engram(m, engram_args({{"layers", "0,2"}, {"table_size", "257"}}));
  EXPECT_DOUBLE_EQ(m->flops_per_token(c.context) - base, 2 * e->flops_per_token(c.context));
}

// ---- the plan

TEST(EngramModel, ApplyPutsABranchOnEachListedLayerWithItsOwnPrimes) {
  ModelConfig c = tiny_config();
  ModelPlan plan = model_plan(c);
  apply_engram(engram_args({{"layers", "0,2"}, {"table_size", "257"}}), c, plan);
  std::set<int64_t> primes;
  for (int64_t i = 0; i < 3; ++i) {
    if (i == 1) {
      EXPECT_TRUE(plan.layers[i].branches.empty());
      EXPECT_TRUE(plan.layers[i].modules.empty());
      continue;
    }
    ASSERT_EQ(plan.layers[i].branches.size(), 1u) << "layer " << i;
    EXPECT_EQ(plan.layers[i].modules, std::vector<std::string>{"engram"});
    Branch b = plan.layers[i].branches[0]();
    auto* e = dynamic_cast<EngramImpl*>(b.get());
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->opt.layer, i);
    EXPECT_EQ(e->opt.head_dim(), 4);  // auto: 32 / (4 heads x 2 orders)
    for (int64_t p : e->primes) {
      EXPECT_GE(p, 257);
      EXPECT_TRUE(primes.insert(p).second) << "prime " << p << " reused across heads or layers";
    }
  }
  EXPECT_EQ(primes.size(), 16u);
}

TEST(EngramModel, ApplyRefusesAMambaLayerWithTheAttentionLayers) {
  ModelConfig c = tiny_config();
  c.layer_pattern = "AAM";
  ModelPlan plan = model_plan(c);
  const std::string msg = error_of([&] { apply_engram(engram_args({{"layers", "0,2"}}), c, plan); });
  EXPECT_EQ(msg.rfind("[engram] ", 0), 0u) << msg;
  EXPECT_NE(msg.find("engram goes on attention layers only; layer 2 is Mamba (M) under layer_pattern AAM; "
                     "attention layers are 0,1"),
            std::string::npos)
      << msg;
  EXPECT_TRUE(plan.layers[0].branches.empty()) << "a refused apply must leave the plan alone";
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "errors are one line";
}

// ---- the catalog row and its init guard

TEST(EngramCatalog, RowDefaultsAndTinyArgsFitTheTinyGeometry) {
  const auto& s = catalog::spec_engram();
  EXPECT_STREQ(s.name, "engram");
  EXPECT_EQ(s.tier, catalog::Tier::Training);
  EXPECT_STREQ(s.family, "memory");
  ASSERT_NE(s.check, nullptr);
  std::vector<std::string> names;
  for (auto& p : s.params) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"layers", "orders", "heads", "table_size", "dim", "conv"}));
  auto d = engram_args();
  EXPECT_EQ(d.list("layers"), std::vector<int64_t>{0});
  EXPECT_EQ(d.list("orders"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(d.i64("heads"), 4);
  EXPECT_EQ(d.i64("conv"), 4);
  EXPECT_EQ(d.i64("dim"), 0);
  EXPECT_TRUE(s.check(d, view(16, "A")).empty());
  auto tiny = engram_args(parse_overrides(s.tiny));
  EXPECT_TRUE(s.check(tiny, view(3, "A")).empty()) << s.tiny;
  EXPECT_EQ(tiny.list("layers"), (std::vector<int64_t>{0, 2}));
}

TEST(EngramCatalog, GuardRefusesThePhase1BugWithTheCorrectedLayerList) {
  // plans/seed-phase1-engram-bug.toml: Engram on 0,5,10 of a depth-16 AAM hybrid; 5 is a Mamba layer.
  const auto& s = catalog::spec_engram();
  auto e = s.check(engram_args({{"layers", "0,5,10"}}), view(16, "AAM"));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("engram goes on attention layers only"), std::string::npos) << e[0];
  EXPECT_NE(e[0].find("layer 5 is Mamba (M) under layer_pattern AAM"), std::string::npos) << e[0];
  EXPECT_NE(e[0].find("attention layers are 0,1,3,4,6,7,9,10,12,13,15"), std::string::npos) << e[0];
  // The same through the real path: mamba3's adjust sets the pattern the guard then sees.
  std::vector<std::string> errors;
  auto m3 = catalog::resolve_arg("mamba3.pattern=AAM", errors);
  ASSERT_TRUE(errors.empty()) << errors[0];
  auto adjusted = catalog::adjusted({m3}, view(16, "A"));
  EXPECT_EQ(s.check(engram_args({{"layers", "0,5,10"}}), adjusted), e);
  EXPECT_TRUE(s.check(engram_args({{"layers", "0,6,10"}}), adjusted).empty());
}

TEST(EngramCatalog, GuardNamesEveryOffendingLayerAndTheOtherRules) {
  const auto& s = catalog::spec_engram();
  auto e = s.check(engram_args({{"layers", "2,5,16,20"}}), view(16, "AAM"));
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0], "layers 16,20 are beyond depth 16 (layers run 0..15); drop them from engram.layers");
  EXPECT_EQ(e[1],
            "engram goes on attention layers only; layers 2,5 are Mamba (M) under layer_pattern AAM; attention "
            "layers are 0,1,3,4,6,7,9,10,12,13,15; pick engram.layers from them");
  e = s.check(engram_args({{"layers", "0,1,0"}, {"orders", "2,2"}}), view(4, "A"));
  ASSERT_EQ(e.size(), 2u);
  EXPECT_NE(e[0].find("layers lists 0 more than once"), std::string::npos) << e[0];
  EXPECT_NE(e[1].find("orders lists 2 more than once"), std::string::npos) << e[1];
  e = s.check(engram_args({{"layers", "0"}}), view(3, "M"));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("the pattern has no attention layer"), std::string::npos) << e[0];
}
