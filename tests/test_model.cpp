// The baseline model: shapes, causality, document masking, zero-init identity, RoPE, FLOPs,
// and the substrate table (parsing, --set, validation, id).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/error.h"
#include "model/fused_ce.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "test_paths.h"
#include "train/substrate.h"
#include "test_model_util.h"

using namespace slm;

namespace {
ModelConfig tiny() {
  ModelConfig c;
  c.vocab = 300;
  c.n_layer = 2;
  c.d_model = 32;
  c.n_head = 2;
  c.head_dim = 16;
  c.context = 24;
  return c;
}

// Gives every zero-initialized projection random weights so the blocks are not the identity.
void randomize(GPT& m) { slm::test::fill_normal(*m, 7, 0.2); }
}  // namespace

TEST(Model, ShapesAndPlan) {
  GPT m(tiny());
  auto idx = torch::randint(0, 300, {3, 24}, torch::kInt64);
  auto h = m->hidden(idx, {});
  EXPECT_EQ(h.sizes(), (std::vector<int64_t>{3, 24, 32}));
  auto z = m->logits(h);
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{3, 24, 300}));
  EXPECT_EQ(z.scalar_type(), torch::kFloat32);
  EXPECT_LE(z.abs().max().item<float>(), 15.0f);  // softcap
  EXPECT_NE(layer_plan(*m).find("layer 1: A attention"), std::string::npos);
  // 2-D block matrices go to Muon; embedding and head do not.
  auto mats = m->matrix_params();
  EXPECT_EQ(mats.size(), 2u * 6u);
  for (auto& n : mats) EXPECT_EQ(n.rfind("blocks.", 0), 0u);
}

TEST(Model, ZeroInitProjectionsMakeBlocksTheIdentity) {
  GPT m(tiny());
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64);
  auto h = m->hidden(idx, {});
  auto e = rms_norm(m->wte(idx));
  EXPECT_TRUE(torch::allclose(h, e));
}

TEST(Model, CausalChangingAFutureTokenChangesNoEarlierOutput) {
  GPT m(tiny());
  randomize(m);
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64);
  auto a = m->logits(m->hidden(idx, {}));
  for (int64_t t : {5, 13, 23}) {
    auto j = idx.clone();
    j.index_put_({torch::indexing::Slice(), t}, (j.index({torch::indexing::Slice(), t}) + 1) % 300);
    auto b = m->logits(m->hidden(j, {}));
    auto before = torch::indexing::Slice(0, t);
    EXPECT_TRUE(torch::equal(a.index({torch::indexing::Slice(), before}), b.index({torch::indexing::Slice(), before})))
        << "position " << t;
    EXPECT_FALSE(torch::equal(a.index({torch::indexing::Slice(), t}), b.index({torch::indexing::Slice(), t})));
  }
}

TEST(Model, DocumentMaskKeepsDocumentsApart) {
  GPT m(tiny());
  randomize(m);
  // Row: document 0 at [0, 10), document 1 at [10, 24). Document 1 alone must give the same outputs.
  auto idx = torch::randint(0, 300, {1, 24}, torch::kInt64);
  auto doc = torch::cat({torch::zeros({1, 10}, torch::kInt64), torch::ones({1, 14}, torch::kInt64)}, 1);
  auto packed = m->hidden(idx, doc);
  auto other = idx.clone();
  other.index_put_({0, torch::indexing::Slice(0, 10)}, (idx.index({0, torch::indexing::Slice(0, 10)}) + 7) % 300);
  auto changed = m->hidden(other, doc);
  // Changing document 0 leaves document 1's hidden states untouched. (Positions differ from a solo run,
  // as RoPE is relative only: the check is that no information crosses the boundary.)
  EXPECT_TRUE(torch::allclose(packed.index({0, torch::indexing::Slice(10, 24)}),
                              changed.index({0, torch::indexing::Slice(10, 24)}), 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(packed.index({0, torch::indexing::Slice(0, 10)}),
                               changed.index({0, torch::indexing::Slice(0, 10)})));
  // Without the mask, the same change does leak.
  auto c = tiny();
  c.doc_mask = false;
  GPT u(c);
  randomize(u);
  EXPECT_FALSE(torch::allclose(u->hidden(idx, doc).index({0, torch::indexing::Slice(10, 24)}),
                               u->hidden(other, doc).index({0, torch::indexing::Slice(10, 24)}), 1e-6, 1e-6));
}

TEST(Model, DocumentCausalMask) {
  auto doc = torch::tensor({0, 0, 1, 1, 1}, torch::kInt64).view({1, 5});
  auto m = document_causal_mask(doc).view({5, 5});
  auto expect = torch::tensor({1, 0, 0, 0, 0,  //
                               1, 1, 0, 0, 0,  //
                               0, 0, 1, 0, 0,  //
                               0, 0, 1, 1, 0,  //
                               0, 0, 1, 1, 1},
                              torch::kBool)
                    .view({5, 5});
  EXPECT_TRUE(torch::equal(m, expect));
}

TEST(Model, RopeDependsOnlyOnRelativePosition) {
  auto [c, s] = rope_tables(64, 16, 10000.0);
  torch::manual_seed(1);
  auto q = torch::randn({1, 1, 1, 16}), k = torch::randn({1, 1, 1, 16});
  auto at = [&](const torch::Tensor& x, int64_t pos) {
    return apply_rope(x, c.slice(0, pos, pos + 1), s.slice(0, pos, pos + 1));
  };
  double d1 = (at(q, 10) * at(k, 3)).sum().item<double>();
  double d2 = (at(q, 40) * at(k, 33)).sum().item<double>();
  EXPECT_NEAR(d1, d2, 1e-5);
  EXPECT_TRUE(torch::allclose(at(q, 0), q));  // position 0 is the identity
}

TEST(Model, FlopsPerToken) {
  GPT m(tiny());
  // matmul params: 2 layers x (4 C^2 + 8 C^2) + head C V
  const int64_t C = 32, V = 300;
  EXPECT_EQ(m->n_matmul_params(), 2 * 12 * C * C + C * V);
  EXPECT_DOUBLE_EQ(m->flops_per_token(24), 6.0 * m->n_matmul_params() + 12.0 * 2 * 2 * 16 * 24);
}

TEST(Model, UniformLogitsGiveLog2VBitsPerToken) {
  // spec 15(a): uniform logits -> bpb = log2(V) x counted tokens / bytes. With a zero head the logits are uniform.
  GPT m(tiny());
  {
    torch::NoGradGuard ng;
    m->lm_head->weight.zero_();
  }
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64);
  auto nats = m->token_nats(idx, idx, {});
  EXPECT_TRUE(torch::allclose(nats, torch::full_like(nats, std::log(300.0)), 1e-5, 1e-5));
}

TEST(Substrate, ParseSetValidateAndId) {
  Substrate s = parse_substrate("name = \"t\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 64\n"
                                "total_batch = 1024\ndevice_batch = 8\nsteps = 10\n",
                                "t.toml");
  EXPECT_EQ(s.model_dim(), 64);
  EXPECT_EQ(s.n_head(), 4);
  EXPECT_EQ(s.grad_accum(), 2);
  EXPECT_NO_THROW(s.validate());
  const std::string id = s.id();
  EXPECT_EQ(id.size(), 16u);
  Substrate renamed = s;
  renamed.name = "other";
  renamed.threads = 7;  // execution settings are not part of the id
  EXPECT_EQ(renamed.id(), id);
  set_field(s, "steps=11");
  EXPECT_EQ(s.steps, 11);
  EXPECT_NE(s.id(), id);
  // Rounding: depth x aspect rounds up to a multiple of head_dim.
  set_field(s, "aspect=20");
  EXPECT_EQ(s.model_dim(), 48);
}

TEST(Substrate, ErrorsAreClear) {
  Substrate s;
  try {
    set_field(s, "stesp=3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'steps'?"), std::string::npos) << e.what();
  }
  EXPECT_THROW(set_field(s, "steps=abc"), Error);
  EXPECT_THROW(set_field(s, "doc_mask=yes"), Error);
  EXPECT_THROW(parse_substrate("depth = \"four\"\n", "x.toml"), Error);
  EXPECT_THROW(parse_substrate("depht = 4\n", "x.toml"), Error);
  EXPECT_THROW(parse_substrate("depth = \n", "x.toml"), Error);
  Substrate b;
  b.total_batch = 1000;  // not a multiple of 8 x 256
  try {
    b.validate();
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("not a multiple of device_batch x context"), std::string::npos) << m;
  }
  Substrate c;
  c.precision = "fp8";
  c.optimizer = "sgd";
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {  // every problem at once
    std::string m = e.what();
    EXPECT_NE(m.find("fp8"), std::string::npos);
    EXPECT_NE(m.find("sgd"), std::string::npos);
  }
}

TEST(Substrate, ShippedSubstratesLoadAndValidate) {
  for (const char* n : {"cpu-tiny", "seed-v6e4-d16", "gpu-d12", "cpu-tp2dp2"}) {
    Substrate s = load_substrate(std::string(SLMLAB_SOURCE_DIR) + "/substrates/" + n + ".toml");
    EXPECT_NO_THROW(s.validate()) << n;
    EXPECT_EQ(s.name, n);
  }
  Substrate seed = load_substrate(std::string(SLMLAB_SOURCE_DIR) + "/substrates/seed-v6e4-d16.toml");
  EXPECT_EQ(seed.model_dim(), 1024);
  EXPECT_EQ(seed.n_head(), 16);
  EXPECT_EQ(seed.context, 4096);
  EXPECT_EQ(seed.total_batch, 131072);
  EXPECT_EQ(seed.tp * seed.dp, 4);
  // The article's topology on CPU processes (the production stack's test in test_dist.cpp).
  Substrate mesh = load_substrate(std::string(SLMLAB_SOURCE_DIR) + "/substrates/cpu-tp2dp2.toml");
  EXPECT_EQ(mesh.tp, 2);
  EXPECT_EQ(mesh.dp, 2);
  EXPECT_EQ(mesh.device, "cpu");
}

// The fused head + softcap + cross entropy against the plain composition of torch ops.
TEST(FusedCE, MatchesReferenceLossAndGradients) {
  torch::manual_seed(3);
  for (double cap : {15.0, 0.0}) {
    for (int64_t N : {1, 7, 300, 513}) {  // below, at and across the chunk size
      auto h = torch::randn({N, 24}, torch::requires_grad());
      auto w = (torch::randn({97, 24}) * 2).requires_grad_();
      auto y = torch::randint(0, 97, {N}, torch::kInt64);
      auto loss = fused_linear_ce_mean(h, w, y, cap, torch::kFloat32);
      loss.backward();
      auto h2 = h.detach().clone().requires_grad_(), w2 = w.detach().clone().requires_grad_();
      auto z = torch::matmul(h2, w2.t());
      if (cap > 0) z = torch::tanh(z / cap) * cap;
      auto ref = torch::nn::functional::cross_entropy(z, y);
      ref.backward();
      EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5) << "cap " << cap << " N " << N;
      EXPECT_TRUE(torch::allclose(h.grad(), h2.grad(), 1e-5, 1e-6)) << "cap " << cap << " N " << N;
      EXPECT_TRUE(torch::allclose(w.grad(), w2.grad(), 1e-5, 1e-6)) << "cap " << cap << " N " << N;
      auto nats = linear_ce_nats(h, w, y, cap, torch::kFloat32);
      auto ref_nats = torch::nn::functional::cross_entropy(z.detach(), y,
                                                           torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      EXPECT_TRUE(torch::allclose(nats, ref_nats, 1e-5, 1e-5));
    }
  }
}

TEST(FusedCE, ExtremeLogitsStayFinite) {
  auto h = torch::full({4, 8}, 100.0f), w = torch::full({50, 8}, 100.0f);
  w.index_put_({3}, -100.0f);
  auto y = torch::tensor({0, 3, 10, 49}, torch::kInt64);
  for (double cap : {15.0, 0.0}) {
    auto n = linear_ce_nats(h, w, y, cap, torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(n).all().item<bool>()) << cap;
  }
  EXPECT_THROW(linear_ce_nats(h, w, torch::tensor({0, 1, 2, 50}, torch::kInt64), 15.0, torch::kFloat32), slm::Error);
}

TEST(FusedCE, ModelLossEqualsMeanOfTokenNats) {
  GPT m(tiny());
  randomize(m);
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64);
  auto y = torch::randint(0, 300, {2, 24}, torch::kInt64);
  EXPECT_NEAR(m->loss(idx, y, {}).item<double>(), m->token_nats(idx, y, {}).mean().item<double>(), 1e-5);
}

TEST(Generate, CacheEqualsRecomputeAndSamplingIsSeeded) {
  ModelConfig c = tiny();
  c.context = 40;
  GPT m(c);
  randomize(m);
  std::vector<int32_t> prompt = {0, 17, 42, 99, 3};
  GenerateOptions g;
  g.max_tokens = 30;
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  auto full = generate(*m, prompt, g);
  EXPECT_EQ(cached.size(), 30u);
  EXPECT_EQ(cached, full) << "greedy generation with the KV cache must equal recomputing the sequence";
  g.temperature = 1.0;
  g.top_k = 20;
  g.seed = 9;
  g.use_cache = true;
  auto s1 = generate(*m, prompt, g), s2 = generate(*m, prompt, g);
  EXPECT_EQ(s1, s2);
  g.seed = 10;
  EXPECT_NE(generate(*m, prompt, g), s1);
  g.use_cache = false;
  g.seed = 9;
  EXPECT_EQ(generate(*m, prompt, g), s1);  // sampling agrees with and without the cache too
  g.stop = {s1[3]};
  auto stopped = generate(*m, prompt, g);
  EXPECT_LE(stopped.size(), 3u);
  g.max_tokens = 100;  // beyond the context
  EXPECT_THROW(generate(*m, prompt, g), slm::Error);
}
