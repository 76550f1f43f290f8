// TOP (docs/modules.md section 9): the target on the spec's hand-worked example, at the row's end
// and at a document boundary; the sparse target against a dense port of the paper's seq_to_top (so
// computing offsets up to 32 only is exact for any window); the chunked ListNet loss and its
// gradients against dense autograd, in fp32 and bf16; the loss's minimum at logits = scores +
// const; weight 0 reproduces the baseline bit for bit; the head trains at the head's rate; the
// TOP loss learns; the catalog refuses a zero window.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "common/error.h"
#include "model/gpt.h"
#include "model/top.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;

namespace {

ModelConfig tiny_config() { return slm::test::tiny_config(2); }

ModelConfig with_top(const std::map<std::string, std::string>& args) {
  return slm::test::tiny_with("top", args, tiny_config());
}

// The paper's seq_to_top (zaydzuhri/token-order-prediction, seq_to_top_naive.py), ported as written:
// a loop backwards over time keeping each token's next occurrence; here positions past the row or in
// another document never occur. Returns the dense scores (B, T, V), -inf where a token is absent.
torch::Tensor dense_scores(const torch::Tensor& y, const torch::Tensor& doc, int64_t V, int64_t W) {
  const int64_t B = y.size(0), T = y.size(1), never = INT64_MAX / 2;
  auto out = torch::full({B, T, V}, -INFINITY);
  auto o = out.accessor<float, 3>();
  auto ya = y.accessor<int64_t, 2>();
  auto da = doc.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> next(V, never);
    for (int64_t t = T - 1; t >= 0; --t) {
      if (t + 1 < T && da[b][t + 1] != da[b][t]) std::fill(next.begin(), next.end(), never);
      next[ya[b][t]] = t;
      for (int64_t v = 0; v < V; ++v)
        if (next[v] - t <= W) o[b][t][v] = static_cast<float>(W - (next[v] - t));
    }
  }
  return out;
}

// The sparse target scattered into (B, T, V).
torch::Tensor dense_probs(const TopTarget& tg, int64_t V) {
  auto p = torch::zeros({tg.ids.size(0), tg.ids.size(1), V});
  return p.scatter_add_(2, tg.ids, tg.probs);
}

}  // namespace

TEST(Top, TargetOnTheSpecsHandWorkedExample) {
  // targets [b, a, c, a, d], W = 3. At t = 0 the window y_0..y_3 = b a c a: b at offset 0 scores 3,
  // a at 1 scores 2, c at 2 scores 1, the second a does not count, d (offset 4) is -inf:
  // softmax(3, 2, 1) = (0.665241, 0.244728, 0.090031).
  const int64_t a = 10, b = 11, c = 12, d = 13;
  auto y = torch::tensor({b, a, c, a, d}, torch::kInt64).view({1, 5});
  auto tg = top_target(y, {}, 3);
  ASSERT_EQ(tg.ids.sizes(), (std::vector<int64_t>{1, 5, 4}));  // offsets 0..3
  const std::vector<std::vector<int64_t>> ids = {{b, a, c, a}, {a, c, a, d}, {c, a, d, d}, {a, d, d, d}, {d, d, d, d}};
  // t = 1: a c a d -> a 3, c 2, d 0 (offset 3): softmax(3, 2, 0). t = 2: c a d and the row ends.
  // t = 3: a d -> softmax(3, 2). t = 4: d alone.
  const std::vector<std::vector<double>> probs = {{0.665241, 0.244728, 0.090031, 0},
                                                  {0.705385, 0.259496, 0, 0.035119},
                                                  {0.665241, 0.244728, 0.090031, 0},
                                                  {0.731059, 0.268941, 0, 0},
                                                  {1, 0, 0, 0}};
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t j = 0; j < 4; ++j) {
      EXPECT_EQ(tg.ids[0][t][j].item<int64_t>(), ids[t][j]) << "t " << t << " offset " << j;
      EXPECT_NEAR(tg.probs[0][t][j].item<double>(), probs[t][j], 1e-6) << "t " << t << " offset " << j;
    }
  // A document boundary after position 1: doc 0 = b a, doc 1 = c a d. t = 0 sees b a only, t = 1 a
  // alone; the second document's windows are unchanged.
  auto doc = torch::tensor({0, 0, 1, 1, 1}, torch::kInt64).view({1, 5});
  auto td = top_target(y, doc, 3);
  const std::vector<std::vector<double>> split = {{0.731059, 0.268941, 0, 0},
                                                  {1, 0, 0, 0},
                                                  {0.665241, 0.244728, 0.090031, 0},
                                                  {0.731059, 0.268941, 0, 0},
                                                  {1, 0, 0, 0}};
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_NEAR(td.probs[0][t][j].item<double>(), split[t][j], 1e-6) << "with documents: t " << t << " offset " << j;
}

TEST(Top, SparseTargetEqualsTheDensePaperTargetForAnyWindow) {
  torch::manual_seed(0);
  const int64_t B = 3, T = 48, V = 12;
  auto y = torch::randint(0, V, {B, T}, torch::kInt64);  // a small vocabulary: many repeats
  auto doc = torch::zeros({B, T}, torch::kInt64);
  doc.index_put_({0, torch::indexing::Slice(20)}, 1);
  doc.index_put_({0, torch::indexing::Slice(33)}, 2);
  doc.index_put_({2, torch::indexing::Slice(5)}, 1);
  // W = 100 > T: the sparse target stops at offset 32 (and at the row); the dense one does not.
  for (int64_t W : {1, 5, 100}) {
    auto dense = torch::softmax(dense_scores(y, doc, V, W), -1);
    auto sparse = dense_probs(top_target(y, doc, W), V);
    EXPECT_LT((dense - sparse).abs().max().item<double>(), 1e-6) << "W = " << W;
  }
}

TEST(Top, ChunkedLossAndGradientsEqualDenseAutograd) {
  torch::manual_seed(1);
  const int64_t B = 2, T = 150, C = 16, V = 40, W = 6;  // N = 300 rows: two chunks of 256
  auto y = torch::randint(0, V, {B, T}, torch::kInt64);
  auto tg = top_target(y, {}, W);
  const int64_t K = tg.ids.size(2);
  auto h = torch::randn({B * T, C}, torch::requires_grad());
  auto w = (torch::randn({V, C}) * 0.5).requires_grad_();
  auto loss = fused_linear_listnet_mean(h, w, tg.ids.view({-1, K}), tg.probs.view({-1, K}), torch::kFloat32);
  loss.backward();
  // The paper's listnet_loss on dense (N, V) tensors.
  auto h2 = h.detach().clone().requires_grad_(), w2 = w.detach().clone().requires_grad_();
  auto target = torch::softmax(dense_scores(y, torch::zeros({B, T}, torch::kInt64), V, W), -1).view({B * T, V});
  auto ref = -(target * torch::log_softmax(torch::matmul(h2, w2.t()), -1)).sum(-1).mean();
  ref.backward();
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5);
  EXPECT_TRUE(torch::allclose(h.grad(), h2.grad(), 1e-5, 1e-7)) << (h.grad() - h2.grad()).abs().max();
  EXPECT_TRUE(torch::allclose(w.grad(), w2.grad(), 1e-5, 1e-7)) << (w.grad() - w2.grad()).abs().max();
  // bf16 matmuls (autocast on a bf16 CPU) stay close to fp32.
  auto lb = fused_linear_listnet_mean(h.detach(), w.detach(), tg.ids.view({-1, K}), tg.probs.view({-1, K}),
                                      torch::kBFloat16);
  EXPECT_NEAR(lb.item<double>(), ref.item<double>(), 2e-2);
  // A zero head gives uniform logits: every row's loss is exactly ln V, whatever the target.
  auto l0 = fused_linear_listnet_mean(h.detach(), torch::zeros({V, C}), tg.ids.view({-1, K}), tg.probs.view({-1, K}),
                                      torch::kFloat32);
  EXPECT_NEAR(l0.item<double>(), std::log(static_cast<double>(V)), 1e-5);
}

TEST(Top, LossIsMinimalAtLogitsEqualToScoresPlusAConstant) {
  // With W_top = I the logits are h itself: h = scores + 7 (-1e4 for absent tokens) puts softmax(z)
  // on the target exactly, so the loss is the target's entropy and its gradient vanishes.
  const int64_t V = 14;
  auto y = torch::tensor({11, 10, 12, 10, 13, 1, 2, 1, 3, 11}, torch::kInt64).view({1, 10});
  auto tg = top_target(y, {}, 3);
  auto scores = dense_scores(y, torch::zeros({1, 10}, torch::kInt64), V, 3).view({10, V});
  auto z = torch::where(torch::isinf(scores), torch::full_like(scores, -1e4), scores + 7).requires_grad_();
  const int64_t K = tg.ids.size(2);
  auto probs = tg.probs.view({-1, K});
  auto loss = fused_linear_listnet_mean(z, torch::eye(V), tg.ids.view({-1, K}), probs, torch::kFloat32);
  loss.backward();
  const double entropy = -torch::xlogy(probs, probs).sum(1).mean().item<double>();
  EXPECT_NEAR(loss.item<double>(), entropy, 1e-5);
  EXPECT_LT(z.grad().abs().max().item<double>(), 1e-6);
  // Any other logits score worse.
  auto worse = fused_linear_listnet_mean(z.detach() + 0.3 * torch::randn_like(z), torch::eye(V), tg.ids.view({-1, K}),
                                         probs, torch::kFloat32);
  EXPECT_GT(worse.item<double>(), loss.item<double>() + 1e-4);
}

TEST(Top, WeightZeroIsTheBaselineBitForBit) {
  GPT base(tiny_config()), top(with_top({{"weight", "0"}}));
  base->train();
  top->train();
  torch::manual_seed(7);
  auto idx = torch::randint(0, 300, {2, 32}, torch::kInt64);
  auto doc = torch::zeros({2, 32}, torch::kInt64);
  doc.index_put_({0, torch::indexing::Slice(13)}, 1);
  GPTImpl::Parts parts;
  auto lb = base->loss(idx, idx.roll(-1, 1), doc);
  auto lt = top->loss(idx, idx.roll(-1, 1), doc, 0, &parts);
  ASSERT_EQ(parts.aux.size(), 1u);
  EXPECT_GT(parts.aux[0].value.item<double>(), 0.0);  // the TOP loss ran
  EXPECT_EQ(lb.item<double>(), lt.item<double>());
  lb.backward();
  lt.backward();
  auto tp = top->named_parameters();
  for (auto& p : base->named_parameters()) {
    ASSERT_TRUE(tp.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), tp[p.key()])) << p.key() << ": TOP changed the baseline's initialization";
    EXPECT_TRUE(torch::equal(p.value().grad(), tp[p.key()].grad())) << p.key() << ": weight 0 changed the gradient";
  }
}

TEST(Top, HeadTrainsAtTheHeadsRateAndTheLossLearns) {
  GPT m(with_top({{"window", "8"}}));
  const auto heads = m->head_params();
  EXPECT_NE(std::find(heads.begin(), heads.end(), "objective0.head"), heads.end());
  EXPECT_NE(std::find(heads.begin(), heads.end(), "lm_head.weight"), heads.end());
  EXPECT_EQ(m->named_parameters()["objective0.head"].sizes(), (std::vector<int64_t>{300, 32}));
  EXPECT_NE(layer_plan(*m).find("objective: top (token order prediction"), std::string::npos) << layer_plan(*m);
  // A fixed batch of a repeated phrase: 40 Adam steps must lower the TOP loss and its distance to the
  // target's entropy (top.kl).
  m->train();
  torch::manual_seed(3);
  auto phrase = torch::randint(0, 300, {1, 8}, torch::kInt64);
  auto idx = phrase.repeat({4, 5}).slice(1, 0, 32).contiguous();
  torch::optim::Adam opt(m->parameters(), torch::optim::AdamOptions(1e-2));
  double first = 0, last = 0, kl0 = 0, kl1 = 0;
  for (int s = 0; s < 40; ++s) {
    GPTImpl::Parts parts;
    opt.zero_grad();
    m->loss(idx, idx.roll(-1, 1), {}, s, &parts).backward();
    opt.step();
    (s == 0 ? first : last) = parts.aux.at(0).value.item<double>();
    (s == 0 ? kl0 : kl1) = parts.stats.at("top.kl");
  }
  EXPECT_GE(kl0, 0.0);
  EXPECT_LT(last, first - 1.0) << "the TOP loss did not fall";
  EXPECT_LT(kl1, 0.5 * kl0);
}

TEST(Top, CatalogRefusesAZeroWindow) {
  std::vector<std::string> errors;
  catalog::resolve_arg("top.window=0", errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("window"), std::string::npos) << errors[0];
  TopOptions o = TopOptions::from(slm::test::module_args("top"), ModelConfig{});
  o.window = 0;
  EXPECT_THROW(TopObjectiveImpl{o}, Error);  // the model's own guard, for a config built by hand
}
