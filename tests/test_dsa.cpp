// DSA (docs/modules.md section 1): the tiny tests of the spec (k >= T equals dense attention,
// causality, gradient separation between the indexer and the main model, indexer training raises
// recall@k), the sparse path and the chunked indexer scores against their references, the selection
// rules (local window, masked keys, ties), generation with the cache, stats, warm-up, bf16 autocast,
// the model-side apply and initialization, FLOPs, and the catalog row and check.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <sstream>
#include <string>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "common/device.h"
#include "common/error.h"
#include "model/dsa.h"
#include "model/gpt.h"
#include "test_tolerance.h"
#include "test_util.h"
#include "test_model_util.h"


using namespace slm;
using torch::indexing::Slice;

namespace {

// The catalog's arguments for dsa: defaults plus overrides given as text.
catalog::ModuleArgs dsa_args(const std::map<std::string, std::string>& given = {}) {
  return slm::test::module_args("dsa", given);
}

ModelConfig tiny() {
  ModelConfig c;
  c.vocab = 64;
  c.n_layer = 2;
  c.d_model = 32;
  c.n_head = 2;
  c.head_dim = 16;
  c.context = 64;
  return c;
}

// Layer 0's options through the catalog row: a small indexer, k and window as given.
DsaOptions opts(int64_t k, int64_t window, const std::string& path = "auto", int64_t warmup = 0) {
  const catalog::ModuleArgs a = slm::test::module_args(
      "dsa", {{"index_heads", "2"}, {"index_dim", "8"}, {"rope_dims", "4"}, {"topk", std::to_string(k)},
              {"window", std::to_string(window)}, {"path", path}, {"warmup_steps", std::to_string(warmup)}});
  return DsaOptions::from(a, /*context=*/1 << 20, /*layer=*/0);  // k and window given: no context rule
}

Ctx make_ctx(const ModelConfig& c, const torch::Tensor& doc_ids, bool training, int64_t step = 0) {
  Ctx ctx;
  std::tie(ctx.cos, ctx.sin) = rope_tables(c.context, c.head_dim, c.rope_base);
  ctx.doc_ids = doc_ids;
  ctx.allowed = document_causal_mask(doc_ids);
  ctx.training = training;
  ctx.step = step;
  return ctx;
}

// Two documents in each row: [0, cut) and [cut, T).
torch::Tensor two_docs(int64_t B, int64_t T, int64_t cut) {
  return torch::cat({torch::zeros({B, cut}, torch::kInt64), torch::ones({B, T - cut}, torch::kInt64)}, 1);
}

// Random weights everywhere: c_proj starts at zero, which would hide every difference.
void randomize(torch::nn::Module& m, uint64_t seed, double std = 0.1) { slm::test::fill_normal(m, seed, std); }

// A baseline attention with the main weights of `d`.
CausalSelfAttention baseline_of(const ModelConfig& c, DsaAttention& d) {
  CausalSelfAttention base(c);
  torch::NoGradGuard ng;
  base->c_q->weight.copy_(d->c_q->weight);
  base->c_k->weight.copy_(d->c_k->weight);
  base->c_v->weight.copy_(d->c_v->weight);
  base->c_proj->weight.copy_(d->c_proj->weight);
  return base;
}

bool is_indexer(const std::string& name) { return name.rfind("indexer", 0) == 0; }

double max_abs(const torch::Tensor& t) { return t.defined() ? t.abs().max().item<double>() : 0.0; }

// Main attention distribution of `d` summed over heads and L1-normalized: (B, T, T), plain causal.
torch::Tensor main_attention(DsaAttention& d, const torch::Tensor& x, const Ctx& ctx) {
  torch::NoGradGuard ng;
  const int64_t B = x.size(0), T = x.size(1), H = d->n_head, D = d->head_dim;
  auto q = rms_norm(apply_rope(d->c_q(x).view({B, T, H, D}), ctx.cos, ctx.sin)).transpose(1, 2);
  auto k = rms_norm(apply_rope(d->c_k(x).view({B, T, H, D}), ctx.cos, ctx.sin)).transpose(1, 2);
  auto s = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(D));
  s.masked_fill_(torch::ones({T, T}, torch::kBool).tril().logical_not(), -1e30);
  auto p = torch::softmax(s, -1).sum(1);
  return p / p.sum(-1, true);
}

// Mean over queries t >= k of the attention mass p that the top-k of `scores` captures: (B, T, T) each.
double recall_at_k(const torch::Tensor& scores, const torch::Tensor& p, int64_t k) {
  const int64_t T = p.size(1);
  auto s = scores.masked_fill(torch::ones({T, T}, torch::kBool).tril().logical_not(), -1e30);
  auto idx = std::get<1>(s.topk(k, -1));
  auto mass = p.gather(2, idx).sum(-1);  // (B, T)
  return mass.index({Slice(), Slice(k, T)}).mean().item<double>();
}

// Autocast on for a scope, off again even when an expectation fails.
struct AutocastScope {
  AutocastScope() { device::set_autocast(torch::Device(torch::kCPU), true); }
  ~AutocastScope() { device::set_autocast(torch::Device(torch::kCPU), false); }
};

}  // namespace

TEST(Dsa, KCoveringTEqualsDenseAttention) {
  // spec (a): with k >= T every visible key is selected, so DSA is dense causal attention.
  const auto c = tiny();
  const int64_t B = 2, T = 24;
  for (auto dtype : {torch::kFloat32, torch::kFloat64})
    for (const char* path : {"auto", "sparse", "dense_masked"})
      for (bool docs : {false, true})
        for (bool training : {false, true}) {
          torch::manual_seed(1);
          DsaAttention d(c, opts(T, 4, path));
          randomize(*d, 2);
          auto base = baseline_of(c, d);
          d->to(dtype);
          base->to(dtype);
          torch::manual_seed(3);
          auto x = torch::randn({B, T, c.d_model}, dtype);
          auto doc = docs ? two_docs(B, T, 9) : torch::Tensor();
          auto ctx0 = make_ctx(c, doc, training), ctx1 = make_ctx(c, doc, training);
          auto y0 = base->forward(x, ctx0), y1 = d->forward(x, ctx1);
          EXPECT_LT(max_abs(y1 - y0), 1e-6) << path << " docs " << docs << " training " << training << " " << dtype;
          EXPECT_DOUBLE_EQ(ctx1.stats.at("dsa.L0.density"), 1.0);
          EXPECT_EQ(ctx1.aux.size(), training ? 1u : 0u);
        }
}

TEST(Dsa, AttentionLogitScaleActsAsInTheBaseline) {
  // YaRN's temperature multiplies the main attention logits in DSA as in the baseline.
  const auto c = tiny();
  const int64_t B = 2, T = 24;
  for (const char* path : {"sparse", "dense_masked"}) {
    torch::manual_seed(1);
    DsaAttention d(c, opts(T, 4, path));
    randomize(*d, 2);
    auto base = baseline_of(c, d);
    torch::manual_seed(3);
    auto x = torch::randn({B, T, c.d_model});
    auto ctx0 = make_ctx(c, {}, false), ctx1 = make_ctx(c, {}, false), plain = make_ctx(c, {}, false);
    ctx0.attn_logit_scale = ctx1.attn_logit_scale = 1.5;
    auto y0 = base->forward(x, ctx0), y1 = d->forward(x, ctx1);
    EXPECT_LT(max_abs(y1 - y0), 1e-6) << path;
    EXPECT_GT(max_abs(y1 - d->forward(x, plain)), 1e-4) << path;
  }
}

TEST(Dsa, CachedGenerationEqualsTheWholeSequence) {
  // Generation runs a sequence in pieces with a cache (model/module.h): the same outputs as running
  // it whole, in the warm-up and the sparse stage, on both paths.
  const auto c = tiny();
  const int64_t T = 40;
  auto [cs, sn] = rope_tables(c.context, c.head_dim, c.rope_base);
  for (int64_t warmup : {0, 100})
    for (const char* path : {"sparse", "dense_masked"}) {
      torch::manual_seed(1);
      DsaAttention d(c, opts(8, 2, path, warmup));
      randomize(*d, 2);
      torch::manual_seed(3);
      auto x = torch::randn({1, T, c.d_model});
      Ctx whole;
      whole.cos = cs;
      whole.sin = sn;
      auto y = d->forward(x, whole);
      Caches caches(1);
      std::vector<torch::Tensor> pieces;
      int64_t pos = 0;
      for (int64_t n : {5, 1, 14, 1, 19}) {
        Ctx ctx;
        ctx.caches = &caches;
        ctx.pos = pos;
        ctx.cos = cs.slice(0, pos, pos + n);
        ctx.sin = sn.slice(0, pos, pos + n);
        pieces.push_back(d->forward(x.slice(1, pos, pos + n), ctx));
        EXPECT_EQ(ctx.stats.at("dsa.warmup"), warmup > 0 ? 1.0 : 0.0);
        pos += n;
      }
      EXPECT_LT(max_abs(torch::cat(pieces, 1) - y), 1e-5) << path << " warmup " << warmup;
    }
}

TEST(Dsa, CausalAndDocumentsIsolated) {
  // spec (b): a change at s > t changes neither output t nor the index scores I_{t, <=t}.
  const auto c = tiny();
  const int64_t B = 2, T = 32;
  for (const char* path : {"sparse", "dense_masked"}) {
    torch::manual_seed(1);
    DsaAttention d(c, opts(8, 2, path));
    randomize(*d, 2);
    torch::manual_seed(3);
    auto x = torch::randn({B, T, c.d_model});
    auto ctx = make_ctx(c, {}, false);
    auto y = d->forward(x, ctx);
    auto I = d->index_scores(x);
    for (int64_t t : {3, 10, 20}) {
      auto x2 = x.clone();
      x2.index_put_({Slice(), Slice(t + 1)}, torch::randn({B, T - t - 1, c.d_model}));
      auto ctx2 = make_ctx(c, {}, false);
      auto y2 = d->forward(x2, ctx2);
      auto I2 = d->index_scores(x2);
      EXPECT_TRUE(torch::equal(y.index({Slice(), Slice(0, t + 1)}), y2.index({Slice(), Slice(0, t + 1)})))
          << path << " t " << t;
      EXPECT_TRUE(torch::equal(I.index({Slice(), Slice(0, t + 1), Slice(0, t + 1)}),
                               I2.index({Slice(), Slice(0, t + 1), Slice(0, t + 1)})))
          << path << " t " << t;
      EXPECT_FALSE(torch::equal(y.index({Slice(), Slice(t + 1)}), y2.index({Slice(), Slice(t + 1)})));
    }
    // Packed row: changing document 0 leaves document 1 untouched, and no key of another document
    // is ever among the valid selections.
    auto doc = two_docs(B, T, 12);
    auto ctxd = make_ctx(c, doc, false);
    auto yd = d->forward(x, ctxd);
    auto x3 = x.clone();
    x3.index_put_({Slice(), Slice(0, 12)}, torch::randn({B, 12, c.d_model}));
    auto ctx3 = make_ctx(c, doc, false);
    auto y3 = d->forward(x3, ctx3);
    EXPECT_TRUE(torch::allclose(yd.index({Slice(), Slice(12)}), y3.index({Slice(), Slice(12)}), 0, 1e-7)) << path;
    EXPECT_FALSE(torch::allclose(yd.index({Slice(), Slice(0, 12)}), y3.index({Slice(), Slice(0, 12)})));
    auto [idx, valid] = d->select(d->index_scores(x), ctxd.allowed.select(1, 0));
    auto key_doc = doc.unsqueeze(1).expand({B, T, T}).gather(2, idx);  // (B, T, K)
    auto query_doc = doc.unsqueeze(2).expand_as(key_doc);
    EXPECT_TRUE(key_doc.eq(query_doc).logical_or(valid.logical_not()).all().item<bool>()) << path;
  }
}

TEST(Dsa, IndexerLearnsOnlyFromKlAndMainModelOnlyFromLm) {
  // spec (c), in both stages: the KL reaches only the indexer; the LM loss never reaches it.
  const auto c = tiny();
  const int64_t B = 2, T = 32;
  for (int64_t warmup : {100, 0}) {
    for (const char* path : {"sparse", "dense_masked"}) {
      torch::manual_seed(1);
      DsaAttention d(c, opts(8, 2, path, warmup));
      randomize(*d, 2);
      torch::manual_seed(3);
      auto x = torch::randn({B, T, c.d_model}, torch::requires_grad());
      auto doc = two_docs(B, T, 11);
      auto ctx = make_ctx(c, doc, true);
      d->forward(x, ctx);
      ASSERT_EQ(ctx.aux.size(), 1u);
      EXPECT_EQ(ctx.aux[0].name, "dsa_kl.L0");
      ctx.aux[0].value.backward();
      for (auto& p : d->named_parameters()) {
        if (is_indexer(p.key()))
          EXPECT_GT(max_abs(p.value().grad()), 0) << p.key() << " warmup " << warmup << " " << path;
        else
          EXPECT_EQ(max_abs(p.value().grad()), 0) << p.key() << " warmup " << warmup << " " << path;
      }
      EXPECT_EQ(max_abs(x.grad()), 0);  // the indexer's input is detached
      d->zero_grad();
      auto ctx2 = make_ctx(c, doc, true);
      auto y = d->forward(x, ctx2);
      (y * torch::randn_like(y)).sum().backward();
      for (auto& p : d->named_parameters()) {
        if (is_indexer(p.key()))
          EXPECT_EQ(max_abs(p.value().grad()), 0) << p.key() << " warmup " << warmup << " " << path;
        else
          EXPECT_GT(max_abs(p.value().grad()), 0) << p.key() << " warmup " << warmup << " " << path;
      }
    }
  }
}

TEST(Dsa, TrainingTheIndexerRaisesRecall) {
  // spec (d): fit only the indexer, by its KL, to a fixed synthetic attention pattern: tokens are
  // noisy copies of 8 prototypes and W_k = W_q, so each query attends to the earlier tokens of its
  // prototype (RoPE blurs it with distance). Main weights stay frozen.
  auto c = tiny();
  c.d_model = 64;
  c.head_dim = 32;
  const int64_t B = 4, T = 64, k = 8;
  torch::manual_seed(1);
  auto o = opts(k, 0, "auto", /*warmup=*/1 << 20);  // dense stage: KL over the full distribution
  o.index_heads = 4;
  o.index_dim = 16;
  o.rope_dims = 8;
  DsaAttention d(c, o);
  randomize(*d, 2, 0.3);
  {
    torch::NoGradGuard ng;
    d->c_k->weight.copy_(d->c_q->weight);
  }
  torch::manual_seed(3);
  auto prototypes = torch::randn({8, c.d_model});
  auto x = prototypes.index({torch::randint(0, 8, {B, T})}) + 0.3 * torch::randn({B, T, c.d_model});
  auto p = main_attention(d, x, make_ctx(c, {}, false));
  std::vector<torch::Tensor> params;
  for (auto& q : d->named_parameters())
    if (is_indexer(q.key())) params.push_back(q.value());
  torch::optim::Adam opt(params, torch::optim::AdamOptions(1e-2));
  const double before = recall_at_k(d->index_scores(x).detach(), p, k);
  double first_kl = 0, last_kl = 0;
  for (int step = 0; step < 150; ++step) {
    auto ctx = make_ctx(c, {}, true, step);
    d->forward(x, ctx);
    opt.zero_grad();
    ctx.aux[0].value.backward();
    opt.step();
    (step == 0 ? first_kl : last_kl) = ctx.aux[0].value.item<double>();
  }
  const double after = recall_at_k(d->index_scores(x).detach(), p, k);
  const double oracle = recall_at_k(p, p, k);  // the best any selection of k keys can do
  double chance = 0;  // a uniformly random choice of k among t + 1 keys keeps k / (t + 1) of the mass
  for (int64_t t = k; t < T; ++t) chance += static_cast<double>(k) / static_cast<double>(t + 1) / (T - k);
  EXPECT_LT(last_kl, 0.5 * first_kl);
  EXPECT_GT(after, 2.5 * chance) << "before " << before << " oracle " << oracle;
  EXPECT_GT(after, 0.9 * oracle) << "before " << before << " chance " << chance;
  EXPECT_GT(after, before + 0.3);
}

TEST(Dsa, SparsePathEqualsDenseMaskedPath) {
  // Same selection, three computations (the CPU loop kernels, the chunked gather other devices
  // run, dense scores under the selection mask): outputs, KL and every gradient agree; the sparse
  // path is bitwise deterministic.
  const auto c = tiny();
  const int64_t B = 2, T = 40;
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    // rms_norm (the model's QK-norm) runs in fp32 even for fp64 inputs, so gradients agree to fp32
    // precision, relative to their size.
    const double tol = dtype == torch::kFloat64 ? 1e-6 : 1e-5;
    auto run = [&](const char* path, bool cpu_kernels = true) {
      torch::manual_seed(1);
      auto o = opts(8, 3, path);
      o.chunk_values = 7 * 8 * 16;  // 7 queries per chunk: many chunks and a ragged last one
      o.cpu_kernels = cpu_kernels;
      DsaAttention d(c, o);
      randomize(*d, 2, 0.3);
      d->to(dtype);
      torch::manual_seed(3);
      auto x = torch::randn({B, T, c.d_model}, torch::TensorOptions().dtype(dtype).requires_grad(true));
      auto ctx = make_ctx(c, two_docs(B, T, 13), true);
      auto y = d->forward(x, ctx);
      torch::manual_seed(4);
      auto loss = (y * torch::randn_like(y)).sum() + ctx.aux[0].value;
      loss.backward();
      std::map<std::string, torch::Tensor> g;
      for (auto& p : d->named_parameters())
        g[p.key()] = p.value().grad().defined() ? p.value().grad() : torch::zeros_like(p.value());
      g["x"] = x.grad();
      g["y"] = y.detach();
      g["kl"] = ctx.aux[0].value.detach();
      EXPECT_DOUBLE_EQ(ctx.stats.at("dsa.L0.sparse"), std::string(path) == "sparse" ? 1.0 : 0.0);
      return g;
    };
    auto a = run("sparse"), b = run("dense_masked"), again = run("sparse"), gathered = run("sparse", false);
    for (auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, again.at(name))) << "deterministic: " << name;
    for (auto& [name, t] : a) {
      EXPECT_LT(max_abs(t - b.at(name)), tol * std::max(1.0, max_abs(t))) << name << " " << dtype;
      EXPECT_LT(max_abs(t - gathered.at(name)), tol * std::max(1.0, max_abs(t))) << name << " " << dtype;
    }
    EXPECT_GT(max_abs(a.at("indexer_q.weight")), 0);
  }
}

TEST(Dsa, SelectedIndexScoresMatchFullScores) {
  // The sparse-stage KL scores only the selected keys, by a custom autograd function (CPU loop
  // kernels, or the chunked gather of other devices): values and indexer gradients equal those of
  // the full scores gathered at the same keys.
  const auto c = tiny();
  const int64_t B = 2, T = 24, K = 6;
  for (bool cpu_kernels : {true, false}) {
    auto o = opts(K, 2);
    o.chunk_values = 5 * o.index_heads * K * o.index_dim;  // 5 queries per chunk, the last one short
    o.cpu_kernels = cpu_kernels;
    torch::manual_seed(1);
    DsaAttention d(c, o);
    randomize(*d, 2, 0.3);
    d->to(torch::kFloat64);
    torch::manual_seed(3);
    auto x = torch::randn({B, T, c.d_model}, torch::kFloat64);
    auto visible = document_causal_mask(two_docs(B, T, 7)).select(1, 0);
    auto idx = d->select(d->index_scores(x), visible).first;
    auto a = d->index_scores_at(x, idx);
    auto b = d->index_scores(x).gather(2, idx);
    EXPECT_LT(max_abs(a - b), 1e-12);
    std::vector<torch::Tensor> params;
    for (auto& p : d->named_parameters())
      if (is_indexer(p.key())) params.push_back(p.value());
    auto g = torch::randn_like(a);
    auto ga = torch::autograd::grad({(a * g).sum()}, params);
    auto gb = torch::autograd::grad({(b * g).sum()}, params);
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_GT(max_abs(gb[i]), 0) << i;
      EXPECT_LT(max_abs(ga[i] - gb[i]), 1e-10 * std::max(1.0, max_abs(gb[i]))) << i << " cpu_kernels " << cpu_kernels;
    }
  }
}

TEST(Dsa, LocalWindowAlwaysSelected) {
  const auto c = tiny();
  const int64_t B = 2, T = 32, w = 5, k = 8;
  DsaAttention d(c, opts(k, w));
  // Adversarial scores: the window's keys score lowest of all.
  torch::manual_seed(5);
  auto scores = torch::randn({B, T, T});
  auto pos = torch::arange(T);
  auto back = pos.view({T, 1}) - pos.view({1, T});
  scores.masked_fill_(back.ge(0).logical_and(back.lt(w)), -1e4);
  auto visible = torch::ones({T, T}, torch::kBool).tril().expand({B, T, T});
  auto [idx, valid] = d->select(scores, visible);
  auto chosen = torch::zeros({B, T, T}, torch::kBool).scatter_(2, idx, valid);
  auto window = back.ge(0).logical_and(back.lt(w)).expand({B, T, T});
  EXPECT_TRUE(chosen.logical_or(window.logical_not()).all().item<bool>());
  // And the rest of k went to the best-scored keys, not to more of the window.
  EXPECT_EQ(chosen.sum().item<int64_t>(), visible.sum(-1).clamp_max(k).sum().item<int64_t>());
}

TEST(Dsa, TiesGoToTheEarliestKeys) {
  // ReLU makes exact ties common (every key at 0): they resolve by position, however the row is cut.
  // Both selections: the CPU kernel and the top-k other devices run.
  const auto c = tiny();
  const int64_t T = 20, k = 6;
  for (bool cpu_kernels : {true, false}) {
    auto o = opts(k, 0);
    o.cpu_kernels = cpu_kernels;
    DsaAttention d(c, o);
    auto visible = torch::ones({T, T}, torch::kBool).tril().unsqueeze(0);
    auto [idx, valid] = d->select(torch::zeros({1, T, T}), visible);
    auto first = std::get<0>(idx.sort(-1));  // (1, T, k)
    for (int64_t t = k; t < T; ++t) EXPECT_TRUE(torch::equal(first[0][t], torch::arange(k))) << t;
    // A row cut at t + 1 keys (generation) selects the same keys.
    auto [cut, cut_valid] = d->select(torch::zeros({1, 1, 12}), torch::ones({1, 1, 12}, torch::kBool), 11);
    EXPECT_TRUE(torch::equal(std::get<0>(cut.sort(-1))[0][0], torch::arange(k)));
    // Only the tie at the cut is resolved by position; higher scores win wherever they are.
    auto scores = torch::zeros({1, 1, T});
    scores[0][0][15] = 2.0;
    scores[0][0][17] = 1.0;
    auto [mixed, mixed_valid] = d->select(scores, torch::ones({1, 1, T}, torch::kBool), T - 1);
    EXPECT_TRUE(torch::equal(std::get<0>(mixed.sort(-1))[0][0], torch::tensor({0, 1, 2, 3, 15, 17})));
  }
}

TEST(Dsa, CpuSelectionEqualsTopK) {
  // The CPU selection kernel picks the same visible keys as the top-k path, on scores with many
  // exact ties, document masks and a window, for queries at an offset (as in blockwise selection).
  const auto c = tiny();
  const int64_t B = 2, T = 48, k = 12;
  auto visible = document_causal_mask(two_docs(B, T, 17)).select(1, 0);
  torch::manual_seed(5);
  auto scores = torch::randint(0, 4, {B, T, T}).to(torch::kFloat32);  // 4 levels: ties everywhere
  for (int64_t window : {0, 3}) {
    auto o = opts(k, window);
    DsaAttention kern(c, o);
    o.cpu_kernels = false;
    DsaAttention topk(c, o);
    for (int64_t t0 : {0, 20}) {
      auto s = scores.slice(1, t0, T), v = visible.slice(1, t0, T);
      auto [i0, v0] = kern->select(s, v, t0);
      auto [i1, v1] = topk->select(s, v, t0);
      EXPECT_TRUE(torch::equal(std::get<0>(i0.sort(-1)), i0)) << "ascending";
      auto chosen = [&](const torch::Tensor& i, const torch::Tensor& ok) {
        return torch::zeros({B, T - t0, T}, torch::kBool).scatter_(2, i, ok);
      };
      EXPECT_TRUE(torch::equal(chosen(i0, v0), chosen(i1, v1))) << "window " << window << " t0 " << t0;
      EXPECT_TRUE(torch::equal(v0, visible.slice(1, t0, T).gather(2, i0)));
    }
  }
}

TEST(Dsa, MaskedKeysNeverSelectedWhenFewerThanKVisible) {
  // With t + 1 < k, top-k returns masked keys: they must come back invalid and get no weight.
  const auto c = tiny();
  const int64_t B = 2, T = 24, k = 10;
  torch::manual_seed(1);
  DsaAttention d(c, opts(k, 2, "sparse"));
  randomize(*d, 2);
  torch::manual_seed(3);
  auto x = torch::randn({B, T, c.d_model});
  auto doc = two_docs(B, T, 7);  // document 1 starts at 7: its first queries see fewer than k keys
  auto visible = document_causal_mask(doc).select(1, 0);
  auto [idx, valid] = d->select(d->index_scores(x), visible);
  EXPECT_TRUE(torch::equal(valid, visible.gather(2, idx)));
  EXPECT_TRUE(torch::equal(valid.sum(-1), visible.sum(-1).clamp_max(k)));
  // Where every visible key fits in k, the output is exactly dense attention.
  auto base = baseline_of(c, d);
  auto ctx0 = make_ctx(c, doc, false), ctx1 = make_ctx(c, doc, false);
  auto y0 = base->forward(x, ctx0), y1 = d->forward(x, ctx1);
  auto fits = visible.sum(-1).le(k);  // (B, T)
  EXPECT_LT(max_abs((y1 - y0).index({fits})), 1e-6);
  EXPECT_GT(max_abs((y1 - y0).index({fits.logical_not()})), 1e-4);  // elsewhere top-k really dropped keys
}

TEST(Dsa, StatsReportPathAndDensity) {
  const auto c = tiny();
  const int64_t B = 2, T = 32, k = 8;
  DsaOptions o0 = opts(k, 2, "sparse"), o1 = opts(k, 2, "dense_masked");
  o1.layer = 1;
  DsaAttention a(c, o0), b(c, o1);
  auto x = torch::randn({B, T, c.d_model});
  auto ctx = make_ctx(c, {}, false);
  a->forward(x, ctx);
  b->forward(x, ctx);
  // Plain causal: query t keeps min(k, t + 1) of its t + 1 keys.
  double kept = 0, seen = 0;
  for (int64_t t = 0; t < T; ++t) kept += std::min<int64_t>(k, t + 1), seen += t + 1;
  EXPECT_NEAR(ctx.stats.at("dsa.L0.density"), kept / seen, 1e-12);
  EXPECT_NEAR(ctx.stats.at("dsa.L1.density"), kept / seen, 1e-12);
  EXPECT_EQ(ctx.stats.at("dsa.L0.sparse"), 1.0);
  EXPECT_EQ(ctx.stats.at("dsa.L1.sparse"), 0.0);
  EXPECT_EQ(ctx.stats.at("dsa.sparse"), 0.5);
  EXPECT_EQ(ctx.stats.at("dsa.n_layers"), 2.0);
  EXPECT_EQ(ctx.stats.at("dsa.warmup"), 0.0);
  // auto gathers where it pays on CPU: T >= 512 and k <= T/4; elsewhere dense scores are cheaper,
  // and the stats say which ran.
  DsaAttention at(c, opts(64, 2, "auto"));
  EXPECT_TRUE(at->sparse_path(512));
  EXPECT_TRUE(at->sparse_path(4096));
  EXPECT_FALSE(at->sparse_path(256));
  DsaAttention wide(c, opts(512, 2, "auto"));
  EXPECT_FALSE(wide->sparse_path(1024));
  EXPECT_TRUE(wide->sparse_path(2048));
}

TEST(Dsa, BlockwiseSelectionEqualsWholeSelection) {
  // The forward's selection (CPU: scores and top-k fused per row; elsewhere: blocks of rows) picks
  // what select() picks from the whole score matrix. fp64, so the two score computations agree.
  const auto c = tiny();
  const int64_t B = 2, T = 32;
  for (bool cpu_kernels : {true, false}) {
    auto o = opts(8, 2);
    o.chunk_values = 5 * B * o.index_heads * T;  // 5 queries per block: 7 blocks, the last one short
    o.cpu_kernels = cpu_kernels;
    torch::manual_seed(1);
    DsaAttention d(c, o);
    randomize(*d, 2);
    d->to(torch::kFloat64);
    torch::manual_seed(3);
    auto x = torch::randn({B, T, c.d_model}, torch::kFloat64);
    auto visible = document_causal_mask(two_docs(B, T, 9)).select(1, 0);
    auto [i0, v0] = d->select(d->index_scores(x), visible);
    auto [i1, v1] = d->select_keys(x, visible);
    auto chosen = [&](const torch::Tensor& i, const torch::Tensor& ok) {
      return torch::zeros({B, T, T}, torch::kBool).scatter_(2, i, ok);
    };
    EXPECT_TRUE(torch::equal(chosen(i0, v0), chosen(i1, v1))) << "cpu_kernels " << cpu_kernels;
    EXPECT_TRUE(torch::equal(v0.sum(-1), v1.sum(-1)));
    EXPECT_GT(v1.sum().item<int64_t>(), B * T) << "rows select several keys";
  }
}

TEST(Dsa, WarmupRunsDenseThenSparse) {
  const auto c = tiny();
  const int64_t B = 2, T = 32;
  torch::manual_seed(1);
  DsaAttention d(c, opts(8, 2, "auto", /*warmup=*/5));
  randomize(*d, 2);
  auto base = baseline_of(c, d);
  torch::manual_seed(3);
  auto x = torch::randn({B, T, c.d_model});
  auto ctxb = make_ctx(c, {}, false);
  auto dense = base->forward(x, ctxb);
  const double f_dense = d->flops_per_token(T);

  auto ctx4 = make_ctx(c, {}, true, 4);
  auto y4 = d->forward(x, ctx4);
  EXPECT_EQ(ctx4.stats.at("dsa.warmup"), 1.0);
  EXPECT_EQ(ctx4.stats.at("dsa.density"), 1.0);
  EXPECT_LT(max_abs(y4 - dense), 1e-6);
  auto ctxe = make_ctx(c, {}, false);  // evaluation carries step 0: runs the stage training reached
  d->forward(x, ctxe);
  EXPECT_EQ(ctxe.stats.at("dsa.warmup"), 1.0);

  auto ctx5 = make_ctx(c, {}, true, 5);
  auto y5 = d->forward(x, ctx5);
  EXPECT_EQ(ctx5.stats.at("dsa.warmup"), 0.0);
  EXPECT_LT(ctx5.stats.at("dsa.density"), 1.0);
  EXPECT_GT(max_abs(y5 - dense), 1e-4);
  auto ctxe2 = make_ctx(c, {}, false);
  auto ye = d->forward(x, ctxe2);
  EXPECT_EQ(ctxe2.stats.at("dsa.warmup"), 0.0);
  // The same sparse stage; evaluation takes attention() (the fused kernel), training the path that
  // also returns the probabilities for the KL: equal up to their summation orders (q.k, softmax,
  // values, output projection).
  EXPECT_TRUE(slm::test::fp32_close(ye, y5.detach(), c.head_dim + 2 * T + c.d_model));
  EXPECT_LT(d->flops_per_token(T), f_dense);  // FLOPs follow the stage that runs
}

TEST(Dsa, Bf16AutocastRuns) {
  const auto c = tiny();
  const int64_t B = 2, T = 32;
  for (int64_t warmup : {0, 100})
    for (const char* path : {"sparse", "dense_masked"}) {
      torch::manual_seed(1);
      DsaAttention d(c, opts(8, 2, path, warmup));
      randomize(*d, 2);
      torch::manual_seed(3);
      auto x = torch::randn({B, T, c.d_model});
      AutocastScope ac;
      auto ctx = make_ctx(c, two_docs(B, T, 10), true);
      auto y = d->forward(x, ctx);
      EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
      auto loss = y.to(torch::kFloat32).pow(2).mean() + ctx.aux[0].value;
      loss.backward();
      EXPECT_TRUE(std::isfinite(loss.item<double>())) << path;
      for (auto& p : d->named_parameters()) {
        if (p.value().grad().defined()) {
          EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key() << " " << path;
        }
      }
      EXPECT_GT(max_abs(d->indexer_q->weight.grad()), 0) << path;
    }
}

TEST(Dsa, ApplyMakesAttentionLayersFromStartLayerDsa) {
  auto c = tiny();
  c.n_layer = 6;
  c.layer_pattern = "AAM";  // attention layers 0, 1, 3, 4
  c.context = 256;
  auto plan = model_plan(c);
  apply_dsa(dsa_args({{"start_layer", "1"}}), c, plan);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const bool dsa = i == 1 || i == 3 || i == 4;
    EXPECT_EQ(plan.layers[i].modules, dsa ? std::vector<std::string>{"dsa"} : std::vector<std::string>{}) << i;
    auto m = plan.layers[i].mixer();
    EXPECT_EQ(m->describe().rfind("dsa (", 0) == 0, dsa) << i << ": " << m->describe();
  }
  auto m3 = std::dynamic_pointer_cast<DsaAttentionImpl>(plan.layers[3].mixer());
  ASSERT_TRUE(m3);
  EXPECT_EQ(m3->opt.layer, 3);
  EXPECT_EQ(m3->opt.topk, 64);   // max(topk_min 64, 256 / 8)
  EXPECT_EQ(m3->opt.window, 32);  // auto: min(128, k / 2)
  EXPECT_NE(m3->describe().find("top-k 64 incl. window 32, warm-up 50, path auto -> dense_masked at T=256"),
            std::string::npos)
      << m3->describe();
  // A start layer past every attention layer is refused with the attention layers named.
  auto plan2 = model_plan(c);
  try {
    apply_dsa(dsa_args({{"start_layer", "5"}}), c, plan2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention layers are 0, 1, 3, 4"), std::string::npos) << e.what();
  }
}

TEST(Dsa, MainInitializationMatchesTheBaseline) {
  // The indexer draws from its own generator, so the main weights of a DSA model, later layers'
  // included, are those of the baseline at the same seed: the comparison is paired.
  auto c = tiny();
  auto base = model_plan(c), dsa = model_plan(c);
  apply_dsa(dsa_args({{"topk", "16"}}), c, dsa);
  torch::manual_seed(5);
  std::vector<Mixer> b = {base.layers[0].mixer(), base.layers[1].mixer()};
  auto after_base = torch::rand({4});
  torch::manual_seed(5);
  std::vector<Mixer> d = {dsa.layers[0].mixer(), dsa.layers[1].mixer()};
  auto after_dsa = torch::rand({4});
  for (int i = 0; i < 2; ++i) {
    auto bi = std::dynamic_pointer_cast<CausalSelfAttentionImpl>(b[i]);
    auto di = std::dynamic_pointer_cast<DsaAttentionImpl>(d[i]);
    ASSERT_TRUE(bi && di);
    EXPECT_TRUE(torch::equal(bi->c_q->weight, di->c_q->weight)) << i;
    EXPECT_TRUE(torch::equal(bi->c_v->weight, di->c_v->weight)) << i;
  }
  EXPECT_TRUE(torch::equal(after_base, after_dsa));
  // Layers get different indexers.
  auto d0 = std::dynamic_pointer_cast<DsaAttentionImpl>(d[0]), d1 = std::dynamic_pointer_cast<DsaAttentionImpl>(d[1]);
  EXPECT_FALSE(torch::equal(d0->indexer_q->weight, d1->indexer_q->weight));
}

TEST(Dsa, FlopsCountWhatRuns) {
  auto c = tiny();
  c.context = 1024;
  const int64_t T = 1024;
  DsaOptions o = opts(128, 32, "auto", 10);
  DsaAttention d(c, o);
  const double H = 2, D = 16, HI = 2, DI = 8, C = 32;
  const double main = 6.0 * 4 * C * C, indexer = 4.0 * C * (HI * DI + DI + HI);
  EXPECT_DOUBLE_EQ(d->flops_per_token(T), main + indexer + 12 * H * D * T + 6 * HI * DI * T);  // warm-up: dense
  d->steps_seen = 10;
  EXPECT_DOUBLE_EQ(d->flops_per_token(T), main + indexer + 12 * H * D * 128 + 2 * HI * DI * T + 6 * HI * DI * 128);
  auto dm = opts(128, 32, "dense_masked", 0);
  DsaAttention e(c, dm);
  EXPECT_DOUBLE_EQ(e->flops_per_token(T), main + indexer + 12 * H * D * T + 2 * HI * DI * T + 6 * HI * DI * 128);
}

TEST(Dsa, CatalogResolvesKAndWindow) {
  EXPECT_EQ(catalog::dsa_topk(dsa_args(), 4096), 512);  // 1/8 of the context
  EXPECT_EQ(catalog::dsa_window(dsa_args(), 4096), 128);
  EXPECT_EQ(catalog::dsa_topk(dsa_args(), 256), 64);  // the minimum
  EXPECT_EQ(catalog::dsa_window(dsa_args(), 256), 32);
  EXPECT_EQ(catalog::dsa_topk(dsa_args({{"topk", "100"}}), 4096), 100);
  EXPECT_EQ(catalog::dsa_window(dsa_args({{"window", "16"}}), 4096), 16);
  const auto& s = catalog::spec_dsa();
  // The registry-wide tests' tiny arguments pass the check at their geometry (model/module.h).
  catalog::ModelView tiny_view;
  tiny_view.depth = 3;
  tiny_view.d_model = 32;
  tiny_view.n_head = 2;
  tiny_view.head_dim = 16;
  tiny_view.context = 32;
  std::map<std::string, std::string> given;  // "k=v,k=v" (the table's resolve_arg once dsa has its row)
  std::stringstream ss(s.tiny);
  for (std::string piece; std::getline(ss, piece, ',');)
    given[piece.substr(0, piece.find('='))] = piece.substr(piece.find('=') + 1);
  EXPECT_EQ(given.size(), 4u);
  EXPECT_TRUE(s.check(dsa_args(given), tiny_view).empty());
  EXPECT_FALSE(s.check(dsa_args(), tiny_view).empty());  // the defaults need a longer context
  EXPECT_STREQ(s.name, "dsa");
  EXPECT_EQ(s.tier, catalog::Tier::Training);
  EXPECT_STREQ(s.family, "mixer");
}

TEST(Dsa, CatalogCheckMessages) {
  catalog::ModelView m;  // cpu-tiny: 4 x 128, 4 heads of 32, context 256
  m.depth = 4;
  m.d_model = 128;
  m.n_head = 4;
  m.head_dim = 32;
  m.context = 256;
  const auto check = catalog::spec_dsa().check;
  auto errors = [&](const std::map<std::string, std::string>& given, const catalog::ModelView& v) {
    return check(dsa_args(given), v);
  };
  auto one = [&](const std::map<std::string, std::string>& given, const catalog::ModelView& v) {
    auto e = errors(given, v);
    EXPECT_EQ(e.size(), 1u);
    return e.empty() ? std::string() : e[0];
  };
  EXPECT_TRUE(errors({}, m).empty());  // the defaults fit cpu-tiny
  EXPECT_NE(one({{"start_layer", "4"}}, m).find("start_layer 4 is outside the model's depth 4; use 0..3"),
            std::string::npos);
  auto hybrid = m;
  hybrid.depth = 3;
  hybrid.layer_pattern = "AAM";
  EXPECT_NE(one({{"start_layer", "2"}}, hybrid).find("no attention layer at or after start_layer 2 (attention layers: 0, 1)"),
            std::string::npos);
  EXPECT_TRUE(errors({{"start_layer", "1"}}, hybrid).empty());
  EXPECT_NE(one({{"index_dim", "31"}, {"rope_dims", "16"}}, m).find("index_dim 31 must be even"), std::string::npos);
  EXPECT_NE(one({{"index_dim", "16"}, {"rope_dims", "18"}}, m).find("rope_dims 18 must be even and at most index_dim 16"),
            std::string::npos);
  EXPECT_EQ(one({{"window", "128"}}, m),
            "top-k must be at least the local window: k=64 < window=128; lower window or raise topk");
  auto wide = errors({{"window", "256"}}, m);  // also larger than k
  ASSERT_EQ(wide.size(), 2u);
  EXPECT_EQ(wide[1], "window 256 must be below the context 256; lower window");
  EXPECT_NE(one({{"topk", "256"}}, m).find("k=256 keys per query at context 256 keeps every key"), std::string::npos);
  EXPECT_NE(one({{"path", "sprase"}}, m).find("path 'sprase' is not one of auto, sparse, dense_masked; did you mean 'sparse'?"),
            std::string::npos);
  auto tp = m;
  tp.tp = 3;
  auto e = errors({}, tp);
  ASSERT_EQ(e.size(), 1u) << "the indexer is replicated under tensor parallelism: its heads need not divide";
  EXPECT_NE(e[0].find("n_head 4 is not divisible by tp 3"), std::string::npos);
}

