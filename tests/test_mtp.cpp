// MTP (docs/modules.md section 5): weight 0 gives the baseline's loss and gradients bitwise; each
// depth k at position i is scored against t_{i+k+1} (checked against a reference that indexes the
// row's tokens directly); depth k at i reads tokens <= i + k only; targets whose chain crosses a
// document boundary are not counted and a document of a packed row is scored as if alone; the
// embedding and head learn from both losses; the weight schedule; never part of val_bpb; adding it
// leaves the backbone's init unchanged; FLOPs, describe, optimizer groups and the catalog row.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "catalog/modules.h"
#include "model/gpt.h"
#include "model/mtp.h"
#include "test_util.h"
#include "test_model_util.h"

using namespace slm;
using torch::indexing::Slice;

namespace {

// The registry-wide tests' geometry: depth 3, d_model 32, 2 heads of 16, context 32.
using slm::test::tiny_config;

ModelConfig with_mtp(const std::map<std::string, std::string>& over = {}) { return slm::test::tiny_with("mtp", over); }

MtpImpl& mtp_of(GPT& m) {
  auto* o = dynamic_cast<MtpImpl*>(m->objectives.at(0).get());
  EXPECT_NE(o, nullptr);
  return *o;
}

// Random weights everywhere, so zero-initialized output projections do not hide a path.
void randomize(torch::nn::Module& m, uint64_t seed) { slm::test::perturb(m, seed, 0.1); }

// A row of T + 1 tokens: inputs s[0..T), targets s[1..T].
struct Row {
  torch::Tensor s, idx, targets;
};
Row make_row(int64_t B, int64_t T, uint64_t seed) {
  torch::manual_seed(seed);
  Row r;
  r.s = torch::randint(0, 300, {B, T + 1}, torch::kInt64);
  r.idx = r.s.slice(1, 0, T);
  r.targets = r.s.slice(1, 1, T + 1);
  return r;
}

// Runs the objective alone on the model's hidden state; returns ctx (aux and stats).
Ctx run_mtp(GPT& m, const Row& r, const torch::Tensor& doc, int64_t step = 0) {
  Ctx ctx;
  ctx.idx = r.idx;
  ctx.targets = r.targets;
  ctx.doc_ids = doc;
  ctx.step = step;
  ctx.training = true;
  auto h = m->hidden(ctx);
  mtp_of(m).add_loss(h, *m, ctx);
  return ctx;
}

// The reference: depth 1..D by explicit token indexing of the row, per position, nats (B, T - k)
// of s[i + k + 1 + shift] (shift = 0 is the definition; the test uses 1 to show it can fail).
std::vector<torch::Tensor> reference_nats(GPT& m, const Row& r, const torch::Tensor& doc, int64_t shift) {
  const int64_t T = r.idx.size(1);
  auto h = m->hidden(r.idx, doc);
  auto& mtp = mtp_of(m);
  std::vector<torch::Tensor> out;
  for (int64_t k = 1; k <= mtp.opt.depth; ++k) {
    auto& d = *mtp.blocks->ptr(k - 1)->as<MtpDepthImpl>();
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < T - k; ++i) rows.push_back(r.s.select(1, i + k));  // Emb(t_{i+k})
    auto e = rms_norm(m->wte(torch::stack(rows, 1)));
    auto x = d.proj(torch::cat({e, rms_norm(h.slice(1, 0, T - k))}, -1));
    Ctx sub;
    sub.cos = m->rope_cos;
    sub.sin = m->rope_sin;
    if (doc.defined()) sub.allowed = document_causal_mask(doc.slice(1, 0, T - k));
    h = d.block->forward(x, sub);
    auto logp = torch::log_softmax(m->logits(h), -1);  // (B, T - k, V)
    std::vector<torch::Tensor> nats;
    for (int64_t i = 0; i < T - k; ++i) {
      const int64_t j = std::min(i + k + 1 + shift, T);
      nats.push_back(-logp.select(1, i).gather(1, r.s.select(1, j).unsqueeze(1)).squeeze(1));
    }
    out.push_back(torch::stack(nats, 1));
  }
  return out;
}

}  // namespace

TEST(Mtp, WeightZeroGivesTheBaselineLossAndGradientsBitwise) {
  GPT base(tiny_config());
  GPT m(with_mtp({{"weight", "0"}, {"depth", "2"}}));
  {
    torch::NoGradGuard ng;
    randomize(*m, 1);  // a live MTP path, and a live backbone copied to the baseline
    auto mp = m->named_parameters();
    for (auto& p : base->named_parameters()) p.value().copy_(mp[p.key()]);
  }
  base->train();
  m->train();
  auto r = make_row(2, 32, 2);
  auto doc = (torch::arange(32) >= 19).to(torch::kInt64).unsqueeze(0).expand({2, 32}).contiguous();
  GPTImpl::Parts parts;
  auto lb = base->loss(r.idx, r.targets, doc);
  auto lm = m->loss(r.idx, r.targets, doc, 0, &parts);
  ASSERT_EQ(parts.aux.size(), 2u);
  EXPECT_GT(parts.aux[0].value.item<double>(), 0.0) << "the MTP loss ran";
  EXPECT_EQ(parts.aux[0].weight, 0.0);
  EXPECT_EQ(lb.item<double>(), lm.item<double>());
  lb.backward();
  lm.backward();
  auto bp = base->named_parameters();
  for (auto& p : m->named_parameters()) {
    if (!bp.contains(p.key())) {
      EXPECT_EQ(p.value().grad().abs().max().item<double>(), 0.0) << p.key();  // MTP's own, at weight 0
      continue;
    }
    EXPECT_TRUE(torch::equal(p.value().grad(), bp[p.key()].grad())) << p.key() << " gets another gradient";
  }
}

TEST(Mtp, EachDepthIsScoredAgainstTheTokenKPlusOneAhead) {
  GPT m(with_mtp({{"depth", "3"}}));
  randomize(*m, 3);
  m->train();
  auto r = make_row(2, 32, 4);
  Ctx ctx = run_mtp(m, r, {});
  ASSERT_EQ(ctx.aux.size(), 3u);
  auto ref = reference_nats(m, r, {}, 0);
  auto off = reference_nats(m, r, {}, 1);
  for (int64_t k = 1; k <= 3; ++k) {
    const auto& a = ctx.aux[k - 1];
    EXPECT_EQ(a.name, "mtp.d" + std::to_string(k));
    EXPECT_DOUBLE_EQ(a.weight, 0.3 / 3);
    EXPECT_NEAR(a.value.item<double>(), ref[k - 1].mean().item<double>(), 1e-5) << "depth " << k;
    EXPECT_GT(std::abs(a.value.item<double>() - off[k - 1].mean().item<double>()), 1e-3)
        << "depth " << k << " matches the token k + 2 ahead too: the test cannot tell";
    EXPECT_EQ(ctx.stats.at("mtp.d" + std::to_string(k) + ".counted"), 1.0);
  }
}

TEST(Mtp, DepthKAtPositionIReadsTokensUpToIPlusKOnly) {
  // Spec test b: the depth-k loss at i depends on tokens <= i + k (inputs) and scores t_{i+k+1}.
  // Perturb the row from token j on: the per-position reference nats of depth k before j - k - 1 stay.
  GPT m(with_mtp({{"depth", "2"}}));
  randomize(*m, 5);
  m->eval();
  torch::NoGradGuard ng;
  auto r = make_row(1, 32, 6);
  Row p;
  p.s = r.s.clone();
  const int64_t j = 20;
  p.s.index_put_({Slice(), Slice(j)}, (p.s.index({Slice(), Slice(j)}) + 1).remainder(300));
  p.idx = p.s.slice(1, 0, 32);
  p.targets = p.s.slice(1, 1, 33);
  auto a = reference_nats(m, r, {}, 0), b = reference_nats(m, p, {}, 0);
  for (int64_t k = 1; k <= 2; ++k) {
    const int64_t last_same = j - k - 1;  // position i scores t_{i+k+1}: unchanged for i + k + 1 < j
    EXPECT_TRUE(torch::allclose(a[k - 1].slice(1, 0, last_same), b[k - 1].slice(1, 0, last_same), 1e-5, 1e-5))
        << "depth " << k << " sees a later token";
    EXPECT_FALSE(torch::allclose(a[k - 1].slice(1, last_same, last_same + 1), b[k - 1].slice(1, last_same, last_same + 1)))
        << "depth " << k << " does not score t_{i+k+1}";
  }
  // And the objective's value equals the reference's mean, so the property holds for what trains.
  Ctx ctx = run_mtp(m, r, {});
  EXPECT_NEAR(ctx.aux[1].value.item<double>(), a[1].mean().item<double>(), 1e-5);
}

TEST(Mtp, TargetsAcrossADocumentBoundaryAreNotCounted) {
  GPT m(with_mtp({{"depth", "2"}}));
  randomize(*m, 7);
  m->train();
  auto& mtp = mtp_of(m);
  // Documents [0, 10), [10, 11), [11, 32): a one-token document in the middle.
  auto doc = torch::zeros({1, 32}, torch::kInt64);
  doc.index_put_({0, Slice(10)}, 1);
  doc.index_put_({0, Slice(11)}, 2);
  auto c1 = mtp.counted(doc, 32, 1), c2 = mtp.counted(doc, 32, 2);
  ASSERT_EQ(c1.sizes(), (std::vector<int64_t>{1, 31}));
  ASSERT_EQ(c2.sizes(), (std::vector<int64_t>{1, 30}));
  // Depth 1 at i reads t_{i+1}: not counted where i and i + 1 differ in document (i = 9, 10).
  for (int64_t i = 0; i < 31; ++i) EXPECT_EQ(c1[0][i].item<bool>(), i != 9 && i != 10) << "depth 1, i " << i;
  // Depth 2 at i reads t_{i+1}, t_{i+2}: i = 8, 9 (into the middle document), 10 (out of it).
  for (int64_t i = 0; i < 30; ++i) EXPECT_EQ(c2[0][i].item<bool>(), i < 8 || i > 10) << "depth 2, i " << i;
  EXPECT_FALSE(mtp.counted({}, 32, 1).defined()) << "without doc ids every target counts";

  // The loss is the mean over the counted targets of the reference, which masks attention per document.
  auto r = make_row(1, 32, 8);
  Ctx ctx = run_mtp(m, r, doc);
  auto ref = reference_nats(m, r, doc, 0);
  EXPECT_NEAR(ctx.aux[0].value.item<double>(), ref[0].masked_select(c1).mean().item<double>(), 1e-5);
  EXPECT_NEAR(ctx.aux[1].value.item<double>(), ref[1].masked_select(c2).mean().item<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(ctx.stats.at("mtp.d1.counted"), 29.0 / 31.0);
  EXPECT_DOUBLE_EQ(ctx.stats.at("mtp.d2.counted"), 27.0 / 30.0);
}

TEST(Mtp, ADocumentOfAPackedRowIsScoredAsIfAlone) {
  // Two documents in one row: depth k's per-position nats of the second equal those of the second
  // document run alone (same positions relative to its start: RoPE is relative).
  GPT m(with_mtp({{"depth", "2"}}));
  randomize(*m, 9);
  m->eval();
  torch::NoGradGuard ng;
  const int64_t cut = 13;
  auto r = make_row(1, 32, 10);
  auto doc = (torch::arange(32) >= cut).to(torch::kInt64).unsqueeze(0);
  auto packed = reference_nats(m, r, doc, 0);
  Row alone;
  alone.s = r.s.slice(1, cut);
  alone.idx = alone.s.slice(1, 0, 32 - cut);
  alone.targets = alone.s.slice(1, 1);
  auto solo = reference_nats(m, alone, {}, 0);
  for (int64_t k = 1; k <= 2; ++k)
    EXPECT_TRUE(torch::allclose(packed[k - 1].slice(1, cut), solo[k - 1], 1e-4, 1e-4)) << "depth " << k;
}

TEST(Mtp, EmbeddingAndHeadLearnFromBothLosses) {
  // Spec test d: with weight > 0 the shared embedding and head get gradient from the MTP loss too.
  GPT m0(with_mtp({{"weight", "0"}})), m1(with_mtp({{"weight", "0.5"}}));
  randomize(*m0, 11);
  randomize(*m1, 11);
  auto r = make_row(2, 32, 12);
  m0->loss(r.idx, r.targets, {}).backward();
  m1->loss(r.idx, r.targets, {}).backward();
  for (const char* k : {"wte.weight", "lm_head.weight"}) {
    auto g0 = m0->named_parameters()[k].grad(), g1 = m1->named_parameters()[k].grad();
    EXPECT_GT((g1 - g0).abs().max().item<double>(), 1e-6) << k << " gets nothing from the MTP loss";
  }
  for (auto& p : m1->named_parameters()) {
    if (p.key().rfind("objective0.", 0) == 0) {
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
  }
}

TEST(Mtp, WeightScheduleSwitchesAtItsStep) {
  GPT m(with_mtp({{"depth", "2"}, {"weight", "0.3"}, {"weight_after", "0.1"}, {"switch_step", "100"}}));
  auto r = make_row(1, 32, 13);
  for (auto [step, w] : std::vector<std::pair<int64_t, double>>{{0, 0.3}, {99, 0.3}, {100, 0.1}, {5000, 0.1}}) {
    Ctx ctx = run_mtp(m, r, {}, step);
    EXPECT_DOUBLE_EQ(ctx.stats.at("mtp.weight"), w) << "step " << step;
    for (auto& a : ctx.aux) EXPECT_DOUBLE_EQ(a.weight, w / 2) << "step " << step;
  }
  const MtpOptions o = MtpOptions::from(slm::test::module_args("mtp"));
  EXPECT_EQ(o.weight_at(1000000), o.weight) << "switch_step 0 never switches";
  // GPT::loss adds it: total = main + sum of weight x value.
  GPTImpl::Parts parts;
  auto total = m->loss(r.idx, r.targets, {}, 100, &parts);
  EXPECT_NEAR(total.item<double>(),
              parts.main.item<double>() + 0.05 * (parts.aux[0].value + parts.aux[1].value).item<double>(), 1e-6);
}

TEST(Mtp, NeverPartOfValBpbAndTheBackboneInitIsTheBaselines) {
  GPT base(tiny_config());
  GPT m(with_mtp({{"depth", "2"}}));
  auto bp = base->named_parameters();
  for (auto& p : m->named_parameters()) {
    if (p.key().rfind("objective0.", 0) != 0) {
      EXPECT_TRUE(torch::equal(p.value(), bp[p.key()])) << p.key();
    }
  }
  auto r = make_row(2, 32, 14);
  EXPECT_TRUE(torch::equal(m->token_nats(r.idx, r.targets, {}), base->token_nats(r.idx, r.targets, {})));
}

TEST(Mtp, FlopsDescribeAndOptimizerGroups) {
  GPT m(with_mtp({{"depth", "2"}, {"switch_step", "70"}}));
  GPT base(tiny_config());
  const double C = 32, V = 300, T = 32;
  auto& mtp = mtp_of(m);
  double expect = 0;
  for (int64_t k = 1; k <= 2; ++k) {
    const auto& blk = *mtp.blocks->ptr(k - 1)->as<MtpDepthImpl>()->block;
    const double attn = 6 * 4 * C * C + 12 * 2 * 16 * (T - k), mlp = 6 * 8 * C * C;
    EXPECT_DOUBLE_EQ(blk.flops_per_token(T - k), attn + mlp);
    expect += (T - k) / T * (6 * 2 * C * C + attn + mlp + 6 * V * C);
  }
  EXPECT_DOUBLE_EQ(m->flops_per_token(32) - base->flops_per_token(32), expect);
  const std::string plan = layer_plan(*m);
  EXPECT_NE(plan.find("objective: mtp (depth 2, weight 0.3 then 0.1 from step 70; shared embedding and head"),
            std::string::npos)
      << plan;
  // MTP's projections and block matrices train as the model's block matrices do (Muon).
  auto mats = m->matrix_params();
  for (const char* k : {"objective0.blocks.0.proj.weight", "objective0.blocks.1.block.mixer.c_q.weight",
                        "objective0.blocks.1.block.ffn.c_fc.weight"})
    EXPECT_NE(std::find(mats.begin(), mats.end(), k), mats.end()) << k;
  EXPECT_EQ(std::find(mats.begin(), mats.end(), "lm_head.weight"), mats.end());
}

TEST(MtpCatalog, RowDefaultsRangesAndTheDepthGuard) {
  const auto& s = catalog::spec_mtp();
  EXPECT_STREQ(s.name, "mtp");
  EXPECT_EQ(s.tier, catalog::Tier::Training);
  EXPECT_STREQ(s.family, "objective");
  auto d = slm::test::module_args("mtp");
  EXPECT_EQ(d.i64("depth"), 1);
  EXPECT_EQ(d.f64("weight"), 0.3);
  EXPECT_EQ(d.f64("weight_after"), 0.1);
  EXPECT_EQ(d.i64("switch_step"), 0);
  catalog::ModelView v;
  v.depth = 4;
  v.d_model = 128;
  v.context = 8;
  EXPECT_TRUE(s.check(d, v).empty());
  auto e = s.check(slm::test::module_args("mtp", {{"depth", "8"}}), v);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("depth 8 leaves no position at context 8"), std::string::npos) << e[0];
  for (const char* bad : {"mtp.depth=0", "mtp.weight=-1", "mtp.weight_after=11", "mtp.dept=2"}) {
    std::vector<std::string> errors;
    catalog::resolve_arg(bad, errors);
    EXPECT_FALSE(errors.empty()) << bad << " was accepted";
  }
}
