// The inference lane: Jacobi decoding (model/generate.h) equals greedy decoding token for token,
// for every mixer and block module generation supports, with and without the cache; ring attention (model/ring.h)
// over 2, 3 and 4 ranks equals one process's attention, causal and document masks included, in the
// model too, and `eval bpb --nproc 2` gives one process's val_bpb.
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "catalog/catalog.h"
#include "common/error.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "test_dist_util.h"
#include "test_build_model.h"
#include "test_model_util.h"
#include "test_tolerance.h"
#include "test_util.h"
#include "common/device.h"
#include "train/dist.h"

using namespace slm;
using slm::test::tiny_config;

namespace {

using slm::test::build_model;

const std::vector<std::vector<int32_t>> kPrompts = {{0}, {0, 17, 42, 99, 3}, {0, 250, 7, 7, 7, 7, 11}, {0, 5, 123, 64, 200, 31, 9, 288, 1}};

// Jacobi at several block sizes, with and without the cache, against cached greedy decoding.
// Returns tokens, iterations and state re-runs summed over the cached runs of blocks > 1.
struct Totals {
  int64_t tokens = 0, iterations = 0, replays = 0;
};
Totals check_equal(GPTImpl& m, const std::string& what, int64_t max_tokens, const std::vector<int64_t>& blocks,
                   size_t n_prompts) {
  Totals tot;
  for (size_t pi = 0; pi < n_prompts; ++pi) {
    const auto& prompt = kPrompts[pi];
    GenerateOptions g;
    g.max_tokens = max_tokens;
    GenerateStats gs;
    const auto greedy = generate(m, prompt, g, &gs);
    EXPECT_EQ(gs.tokens, static_cast<int64_t>(greedy.size()));
    EXPECT_EQ(gs.iterations, gs.tokens);  // plain decoding: one token per forward
    for (int64_t block : blocks) {
      for (bool cache : {true, false}) {
        g.jacobi = true;
        g.block = block;
        g.use_cache = cache;
        GenerateStats st;
        const auto out = generate(m, prompt, g, &st);
        EXPECT_EQ(out, greedy) << what << ": block " << block << (cache ? " cached" : " recomputed") << ", prompt of "
                               << prompt.size();
        EXPECT_EQ(st.tokens, static_cast<int64_t>(out.size()));
        EXPECT_GE(st.iterations, 1);
        EXPECT_LE(st.iterations, st.tokens);  // at least one token per iteration
        if (block == 1) {
          EXPECT_EQ(st.iterations, st.tokens) << what;
        }
        if (!cache) {
          EXPECT_EQ(st.forwards, st.iterations);
        }
        if (block > 1 && cache) {
          tot.tokens += st.tokens;
          tot.iterations += st.iterations;
          tot.replays += st.replays;
        }
      }
    }
  }
  return tot;
}

}  // namespace

TEST(Jacobi, EqualsGreedyOnThePlainModel) {
  GPT m = build_model({}, 40, 3, 0.3);
  const Totals t = check_equal(*m, "plain", 30, {1, 2, 3, 5, 8}, kPrompts.size());
  // The fixture's greedy text repeats itself, so some blocks converge past their first token.
  EXPECT_LT(t.iterations, t.tokens) << "no iteration accepted more than one token";
  EXPECT_EQ(t.replays, 0) << "attention caches roll back by truncation";
}

TEST(Jacobi, EqualsGreedyWithEveryMixer) {
  const std::vector<std::vector<std::string>> stacks = {
      {"mamba3.pattern=AAM,d_state=16,headdim=16,chunk=8"},
      {"dsa.topk=8,window=2,path=sparse,warmup_steps=0"},
      {"engram.layers=0,1,table_size=257"},
      {"mod.every=1,skip_first=1"},
      {"gateskip"},
      {"mhc.streams=2"},
      {"flexidepth.router_bias=0,adapter_hidden=8,alpha=0.01"},
      {"moe.n_shared=1,n_routed=4,top_k=2,expert_hidden=24,score=sigmoid,bias_rate=0.01,capacity_factor=1.0,layers=0,2"},
  };
  for (const auto& texts : stacks) {
    GPT m = build_model(texts, 40, 9, 0.3);
    const Totals t = check_equal(*m, texts[0], 16, {1, 3, 8}, 3);
    // Running states (Mamba-3, Engram) cannot be truncated: they are restored and re-run.
    if (texts[0].rfind("mamba3", 0) == 0 || texts[0].rfind("engram", 0) == 0) {
      EXPECT_GT(t.replays, 0) << texts[0];
    }
  }
}

TEST(Jacobi, StopsAtStopTokensAndMaxTokens) {
  GPT m = build_model({}, 40, 3, 0.3);
  const std::vector<int32_t> prompt = {0, 17, 42, 99, 3};
  GenerateOptions g;
  g.max_tokens = 20;
  const auto greedy = generate(*m, prompt, g);
  ASSERT_EQ(greedy.size(), 20u);
  g.stop = {greedy[6]};
  const auto stopped = generate(*m, prompt, g);
  g.jacobi = true;
  for (int64_t block : {2, 4, 7}) {
    g.block = block;
    EXPECT_EQ(generate(*m, prompt, g), stopped) << "block " << block;
  }
  g.stop.clear();
  g.max_tokens = 11;  // not a multiple of the block
  EXPECT_EQ(generate(*m, prompt, g), std::vector<int32_t>(greedy.begin(), greedy.begin() + 11));
}

TEST(Jacobi, RefusesBadOptions) {
  GPT m = build_model({}, 40, 3, 0.3);
  GenerateOptions g;
  g.max_tokens = 5;
  g.jacobi = true;
  g.block = 0;
  EXPECT_NE(slm::test::error_of([&] { generate(*m, {0, 1}, g); }).find("block must be >= 1"), std::string::npos);
  g.block = 4;
  g.temperature = 0.8;
  EXPECT_NE(slm::test::error_of([&] { generate(*m, {0, 1}, g); }).find("jacobi decoding is greedy"), std::string::npos);
}

// ---- ring attention

namespace {

using slm::test::with_group;

// Two rows of three and two documents, boundaries off the zigzag chunks' edges.
torch::Tensor doc_ids(int64_t T) {
  auto t = torch::arange(T, torch::kInt64);
  auto a = (t >= 5).to(torch::kInt64) + (t >= 14).to(torch::kInt64);
  auto b = (t >= T / 2 + 1).to(torch::kInt64);
  return torch::stack({a, b});
}

}  // namespace

TEST(Ring, ZigzagLayoutCoversTheRowAndBalancesCausalWork) {
  for (int n : {1, 2, 3, 4}) {
    std::vector<int64_t> all;
    int64_t work0 = -1;
    for (int r = 0; r < n; ++r) {
      auto p = zigzag_positions(24, r, n);
      ASSERT_EQ(p.numel(), 24 / n);
      all.insert(all.end(), p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
      const int64_t work = (p + 1).sum().item<int64_t>();  // causal keys its queries see
      if (r == 0) work0 = work;
      EXPECT_EQ(work, work0) << "rank " << r << " of " << n << ": causal work unbalanced";
    }
    std::sort(all.begin(), all.end());
    for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(all[i], i);
  }
  EXPECT_NE(slm::test::error_of([] { zigzag_positions(20, 0, 3); }).find("use a context divisible by 6"), std::string::npos);
}

TEST(Ring, AttentionEqualsOneProcessCausalAndDocuments) {
  const int64_t B = 2, H = 2, T = 24, D = 8;
  torch::manual_seed(5);
  auto q = torch::randn({B, H, T, D}), k = torch::randn({B, H, T, D}), v = torch::randn({B, H, T, D});
  const auto doc = doc_ids(T);
  const auto want_causal = device::attention(q, k, v, torch::Tensor());
  const auto want_docs = device::attention(q, k, v, document_causal_mask(doc));
  ASSERT_GT((want_causal - want_docs).abs().max().item<double>(), 0.1) << "the documents must matter";
  for (int n : {2, 3, 4}) {
    with_group(n, [&](dist::Comm& comm) {
      auto g = comm.as_ring_group();
      const int r = g->rank;
      auto pos = zigzag_positions(T, r, n);
      auto sh = [&](const torch::Tensor& x) { return zigzag_shard(x, 2, r, n); };
      // Terms accumulated along the longest path: q.k (D), the softmax's sum and the weighted sum of
      // values (2 T), and per ring step one rescale of the running sum and output (3 n).
      const int64_t terms = D + 2 * T + 3 * n;
      auto causal = ring_attention(sh(q), sh(k), sh(v), pos, torch::Tensor(), *g);
      EXPECT_TRUE(slm::test::fp32_close(causal, sh(want_causal), terms)) << n << " ranks, rank " << r << ", causal";
      auto docs = ring_attention(sh(q), sh(k), sh(v), pos, zigzag_shard(doc, 1, r, n), *g);
      EXPECT_TRUE(slm::test::fp32_close(docs, sh(want_docs), terms)) << n << " ranks, rank " << r << ", documents";
    });
  }
}

TEST(Ring, ModelTokenNatsEqualOneProcess) {
  ModelConfig c = tiny_config(2);
  c.context = 24;
  GPT whole(c);
  slm::test::perturb(*whole, 4, 0.3, true);
  torch::manual_seed(6);
  auto idx = torch::randint(0, 300, {2, 24}, torch::kInt64), y = torch::randint(0, 300, {2, 24}, torch::kInt64);
  const auto doc = doc_ids(24);
  whole->eval();
  const auto want = whole->token_nats(idx, y, doc);
  for (int n : {2, 3}) {
    std::vector<GPT> models;  // built here: initialization draws from the global generator
    for (int r = 0; r < n; ++r) {
      models.emplace_back(c);
      slm::test::perturb(*models.back(), 4, 0.3, true);  // the same weights on every rank
      models.back()->eval();
    }
    with_group(n, [&](dist::Comm& comm) {
      const int r = comm.world().rank;
      GPT m = models[r];
      m->use_ring(comm.as_ring_group());
      auto got = m->token_nats(zigzag_shard(idx, 1, r, n), zigzag_shard(y, 1, r, n), zigzag_shard(doc, 1, r, n));
      // Nats through every block's longest path, the head's dot product (d) and its log-sum-exp (V).
      const int64_t terms = c.n_layer * slm::test::block_terms(c.d_model, c.head_dim, c.context, 4 * c.d_model) + c.d_model + c.vocab;
      EXPECT_TRUE(slm::test::fp32_close(got, zigzag_shard(want, 1, r, n), terms)) << n << " ranks, rank " << r;
    });
  }
}

TEST(Ring, RefusesModelsItCannotSplit) {
  ModelConfig c = tiny_config(3);
  c.layer_pattern = "AAM";
  c.modules = {slm::test::module_args("mamba3", {{"pattern", "AAM"}, {"d_state", "16"}, {"headdim", "16"}, {"chunk", "8"}})};
  GPT m(c);
  auto g = std::make_shared<RingGroup>();
  g->size = 2;
  EXPECT_NE(slm::test::error_of([&] { m->use_ring(g); }).find("[ring] the model has module mamba3"), std::string::npos);
}

using slm::test::TrainedRun;
using slm::test::trained;

// `eval bpb --nproc 2` on a trained run: the same val_bpb as one process, within the bound on the
// nats of each target (their sum's error over ln 2 x bytes is at most the per-target bound / ln 2,
// every scored target carrying at least one byte); the plain-RoPE context that fits one process.
TEST(Ring, EvalBpbThroughTheRingEqualsOneProcess) {
  const TrainedRun& tr = trained();
  ASSERT_EQ(tr.status, 0) << tr.out;
  auto figure = [](const std::string& out) {
    auto at = out.find("  val_bpb ");
    return at == std::string::npos ? -1.0 : std::stod(out.substr(at + 10));
  };
  const std::string eval = std::string(SLMLAB_BIN) + " eval bpb " + tr.run + " --threads 2 --tokens 512";
  auto one = slm::test::run(eval);
  ASSERT_EQ(one.status, 0) << one.out;
  auto two = slm::test::run(eval + " --nproc 2");
  ASSERT_EQ(two.status, 0) << two.out;
  EXPECT_NE(two.out.find("ring attention over 2 processes"), std::string::npos) << two.out;
  const double a = figure(one.out), b = figure(two.out);
  ASSERT_GT(a, 0) << one.out;
  const int64_t d = 64, hd = 16, T = 32, V = 512, L = 2;
  const int64_t terms = L * slm::test::block_terms(d, hd, T, 4 * d) + d + V;
  EXPECT_LE(std::abs(a - b), slm::test::fp32_bound(terms, 15.0) / std::log(2.0)) << one.out << "\n" << two.out;
  // At twice the trained context with YaRN (new RoPE tables, a logit scale on q), the same.
  const std::string yarn = " --context 64 --module yarn";
  auto one_y = slm::test::run(eval + yarn), two_y = slm::test::run(eval + yarn + " --nproc 2");
  ASSERT_EQ(one_y.status, 0) << one_y.out;
  ASSERT_EQ(two_y.status, 0) << two_y.out;
  const int64_t terms_y = L * slm::test::block_terms(d, hd, 2 * T, 4 * d) + d + V;
  EXPECT_LE(std::abs(figure(one_y.out) - figure(two_y.out)), slm::test::fp32_bound(terms_y, 15.0) / std::log(2.0))
      << one_y.out << "\n" << two_y.out;
  // A context the zigzag layout cannot split is refused before any rank starts; the ring is --nproc.
  auto bad = slm::test::run(eval + " --nproc 3 --context 32");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("does not split over 3 ring ranks"), std::string::npos) << bad.out;
  auto mod = slm::test::run(eval + " --module ring_attention");
  EXPECT_NE(mod.status, 0);
  EXPECT_NE(mod.out.find("is eval bpb's --nproc P"), std::string::npos) << mod.out;
}

// `generate --decode jacobi`: greedy's text, with its cost on stderr; bad options refused in one line.
TEST(Jacobi, CliEqualsGreedyAndReportsTokensPerForward) {
  const TrainedRun& tr = trained();
  ASSERT_EQ(tr.status, 0) << tr.out;
  const std::string gen = std::string(SLMLAB_BIN) + " generate " + tr.run + " --threads 1 --max-tokens 20 --prompt 'int main() {'";
  // run() captures stdout and stderr together: the text is everything but the cost line.
  auto text = [](const std::string& out) {
    std::string t;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("generate: ", 0) != 0) t += line + "\n";
    return t;
  };
  auto greedy = slm::test::run(gen);
  ASSERT_EQ(greedy.status, 0) << greedy.out;
  EXPECT_NE(greedy.out.find("generate: greedy, 20 tokens, 1.000 tokens per forward (20 decoding forwards; 20 forwards in all"),
            std::string::npos) << greedy.out;
  for (const char* block : {"", " --block 3"}) {
    auto jac = slm::test::run(gen + " --decode jacobi" + block);
    ASSERT_EQ(jac.status, 0) << jac.out;
    EXPECT_EQ(text(jac.out), text(greedy.out)) << "block" << block;
    EXPECT_NE(jac.out.find(std::string("generate: jacobi block ") + (block[0] ? "3" : "8")), std::string::npos) << jac.out;
    EXPECT_NE(jac.out.find("tokens per forward ("), std::string::npos) << jac.out;
  }
  for (const auto& [opt, msg] : std::vector<std::pair<std::string, std::string>>{
           {" --decode jacobi --block 0", "jacobi_decode: block is outside [1, 1024]"},
           {" --decode jacobi --block two", "jacobi_decode: block"},
           {" --decode jacobi --temperature 0.7", "--decode jacobi is greedy"},
           {" --block 4", "--block is Jacobi decoding's"},
           {" --decode beam", "--decode beam is not a method"}}) {
    auto r = slm::test::run(gen + opt);
    EXPECT_NE(r.status, 0) << opt;
    EXPECT_NE(r.out.find(msg), std::string::npos) << opt << ": " << r.out;
    EXPECT_EQ(slm::test::count_lines(r.out), 1) << opt << ": " << r.out;
  }
}

// `--module adept` (model/adept.h) from the CLI: exits off, eval bpb's figure and generate's text are
// the plain model's; a threshold above every update exits every token after its first layer and
// changes the figure; the compute line; bad uses refused in one line.
TEST(Adept, CliExitsOffIsThePlainModelAndReportsLayersPerToken) {
  const TrainedRun& tr = trained();
  ASSERT_EQ(tr.status, 0) << tr.out;
  auto figure = [](const std::string& out) {
    auto at = out.find("  val_bpb ");
    return at == std::string::npos ? std::string() : out.substr(at + 10, out.find('\n', at) - at - 10);
  };
  const std::string eval = std::string(SLMLAB_BIN) + " eval bpb " + tr.run + " --threads 1 --tokens 512";
  auto plain = slm::test::run(eval), off = slm::test::run(eval + " --module adept.threshold=0"),
       all = slm::test::run(eval + " --module adept.threshold=10");
  ASSERT_EQ(plain.status, 0) << plain.out;
  ASSERT_EQ(off.status, 0) << off.out;
  ASSERT_EQ(all.status, 0) << all.out;
  EXPECT_FALSE(figure(plain.out).empty()) << plain.out;
  EXPECT_EQ(figure(off.out), figure(plain.out)) << off.out;
  EXPECT_NE(off.out.find("adept threshold 0 (min_layers 1): 2.000 of 2 layers per token"), std::string::npos) << off.out;
  EXPECT_NE(all.out.find("1.000 of 2 layers per token"), std::string::npos) << all.out;
  EXPECT_NE(figure(all.out), figure(plain.out)) << "early exit is lossy";

  const std::string gen = std::string(SLMLAB_BIN) + " generate " + tr.run + " --threads 1 --max-tokens 20 --prompt 'int main() {'";
  auto g_plain = slm::test::run(gen), g_off = slm::test::run(gen + " --module adept.threshold=0");
  ASSERT_EQ(g_off.status, 0) << g_off.out;
  auto text = [](const std::string& out) { return out.substr(0, out.find("generate: ")); };
  EXPECT_EQ(text(g_off.out), text(g_plain.out));
  EXPECT_NE(g_off.out.find("generate: adept threshold 0"), std::string::npos) << g_off.out;
  for (const auto& [cmd, msg] : std::vector<std::pair<std::string, std::string>>{
           {eval + " --module adept.threshold=-1", "adept: threshold is outside"},
           {eval + " --module adept --nproc 2", "--module adept runs in one process"},
           {gen + " --module yarn", "module yarn does not act in generate"}}) {
    auto r = slm::test::run(cmd);
    EXPECT_NE(r.status, 0) << cmd;
    EXPECT_NE(r.out.find(msg), std::string::npos) << cmd << ": " << r.out;
    EXPECT_EQ(slm::test::count_lines(r.out), 1) << cmd << ": " << r.out;
  }
}
