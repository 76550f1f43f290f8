// EAGLE-2 speculative decoding (model/eagle.h): greedy output unchanged for every mixer, trees
// verified where the model allows them and chains rolled back elsewhere, the draft head's loss.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fs.h"
#include "eval/decode.h"
#include "model/eagle.h"
#include "model/generate.h"
#include "train/safetensors.h"
#include "test_build_model.h"
#include "test_model_util.h"
#include "test_tolerance.h"
#include "test_util.h"

using namespace slm;
using slm::test::build_model;

namespace {

const std::vector<std::vector<int32_t>> kPrompts = {{0}, {0, 17, 42, 99, 3}, {0, 250, 7, 7, 7, 7, 11}, {0, 5, 123, 64, 200, 31, 9, 288, 1}};

// A draft head fitted for a few steps to the target's own greedy text from seeded starts, so that
// it guesses right often enough for the tests to reach acceptance, partial paths and rejections.
// Returns the head and its loss before and after.
struct Fitted {
  DraftHead head{nullptr};
  double before = 0, after = 0;
};
Fitted fit_draft(GPTImpl& m, int steps, uint64_t seed) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);  // the target is frozen
  torch::manual_seed(seed);
  Fitted f;
  f.head = DraftHead(m.cfg);
  std::vector<torch::Tensor> rows;
  for (int32_t s = 0; s < 12; ++s) {
    std::vector<int32_t> row = {0, (s * 37 + 5) % static_cast<int32_t>(m.cfg.vocab)};
    GenerateOptions g;
    g.max_tokens = m.cfg.context - 2;
    auto out = generate(m, row, g);
    row.insert(row.end(), out.begin(), out.end());
    rows.push_back(torch::tensor(std::vector<int64_t>(row.begin(), row.end()), torch::kInt64));
  }
  auto idx = torch::stack(rows);
  torch::Tensor feat;
  {
    torch::NoGradGuard ng;
    m.eval();
    feat = m.hidden(idx, {});
  }
  torch::optim::Adam opt(f.head->parameters(), torch::optim::AdamOptions(3e-3));
  for (int s = 0; s <= steps; ++s) {
    auto L = draft_loss(*f.head, m, idx, {}, feat, 0.1);
    if (s == 0) f.before = L.total.item<double>();
    if (s == steps) {
      f.after = L.total.item<double>();
      break;
    }
    opt.zero_grad();
    L.total.backward();
    opt.step();
  }
  return f;
}

struct Totals {
  int64_t tokens = 0, iterations = 0, drafted = 0, accepted = 0, replays = 0;
};

// EAGLE-2 at several tree shapes against cached greedy decoding, on every prompt.
Totals check_equal(GPTImpl& m, DraftHeadImpl& d, const std::string& what, int64_t max_tokens, bool expect_tree,
                   std::vector<EagleOptions> shapes = {EagleOptions{}, {3, 2, 4}, {1, 1, 1}, {4, 3, 10}}) {
  Totals tot;
  for (const auto& prompt : kPrompts) {
    GenerateOptions g;
    g.max_tokens = max_tokens;
    const auto greedy = generate(m, prompt, g);
    for (const auto& eo : shapes) {
      EagleStats st;
      const auto out = generate_eagle2(m, d, prompt, g, eo, &st);
      EXPECT_EQ(out, greedy) << what << ": depth " << eo.depth << " top_k " << eo.top_k << " total " << eo.total_tokens
                             << ", prompt of " << prompt.size();
      EXPECT_EQ(st.tree, expect_tree) << what;
      EXPECT_EQ(st.gen.tokens, static_cast<int64_t>(out.size()));
      EXPECT_LE(st.accepted, st.drafted);
      // Each verification emits its accepted draft tokens and one of the target's own.
      EXPECT_EQ(st.gen.tokens, st.accepted + st.gen.iterations) << what;
      EXPECT_EQ(st.gen.forwards, st.gen.iterations + st.gen.replays) << what;
      tot.tokens += st.gen.tokens;
      tot.iterations += st.gen.iterations;
      tot.drafted += st.drafted;
      tot.accepted += st.accepted;
      tot.replays += st.gen.replays;
    }
  }
  return tot;
}

}  // namespace

TEST(Eagle2, DraftLossTrainsTheHead) {
  GPT m = build_model({}, 40, 3, 0.3);
  Fitted f = fit_draft(*m, 40, 7);
  EXPECT_LT(f.after, f.before) << "the draft head's loss did not fall";
}

TEST(Eagle2, EqualsGreedyOnThePlainModelWithTrees) {
  GPT m = build_model({}, 40, 3, 0.3);
  EXPECT_TRUE(verifies_trees(*m));
  Fitted f = fit_draft(*m, 120, 7);
  const Totals t = check_equal(*m, *f.head, "plain", 30, true);
  EXPECT_GT(t.accepted, 0) << "no draft token was ever accepted: acceptance is untested";
  EXPECT_LT(t.accepted, t.drafted) << "every draft token was accepted: rejection is untested";
  EXPECT_EQ(t.replays, 0) << "attention caches keep the accepted path by selection";
  // An untrained head: nearly every guess rejected, the output still greedy's.
  torch::manual_seed(11);
  DraftHead raw(m->cfg);
  slm::test::perturb(*raw, 12, 0.3);
  check_equal(*m, *raw, "plain, untrained draft", 20, true);
}

TEST(Eagle2, EqualsGreedyWithEveryMixer) {
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
    EXPECT_FALSE(verifies_trees(*m)) << texts[0];
    Fitted f = fit_draft(*m, 40, 7);
    // Chains: top_k and total_tokens do not shape them, depth does.
    const Totals t = check_equal(*m, *f.head, texts[0], 16, false, {EagleOptions{}, {2, 1, 2}});
    EXPECT_GT(t.accepted, 0) << texts[0] << ": no draft token was ever accepted";
    // Running states (Mamba-3, Engram) cannot be truncated: restored and the accepted tokens re-run.
    const bool running = texts[0].rfind("mamba3", 0) == 0 || texts[0].rfind("engram", 0) == 0;
    if (running) EXPECT_GT(t.replays, 0) << texts[0];
    if (texts[0].rfind("dsa", 0) == 0) EXPECT_EQ(t.replays, 0) << "DSA's cache rolls back by truncation";
  }
}

TEST(Eagle2, StopsAtStopTokensAndMaxTokens) {
  GPT m = build_model({}, 40, 3, 0.3);
  Fitted f = fit_draft(*m, 60, 7);
  const std::vector<int32_t> prompt = {0, 17, 42, 99, 3};
  GenerateOptions g;
  g.max_tokens = 20;
  const auto greedy = generate(*m, prompt, g);
  ASSERT_EQ(greedy.size(), 20u);
  g.stop = {greedy[6]};
  const auto stopped = generate(*m, prompt, g);
  EXPECT_EQ(generate_eagle2(*m, *f.head, prompt, g, EagleOptions{}), stopped);
  g.stop.clear();
  for (int64_t n : {0, 1, 2, 11}) {
    g.max_tokens = n;
    EXPECT_EQ(generate_eagle2(*m, *f.head, prompt, g, EagleOptions{}), std::vector<int32_t>(greedy.begin(), greedy.begin() + n))
        << n;
  }
}

TEST(Eagle2, RefusesBadOptions) {
  GPT m = build_model({}, 40, 3, 0.3);
  torch::manual_seed(1);
  DraftHead d(m->cfg);
  const std::vector<int32_t> prompt = {0, 17};
  auto refuses = [&](GenerateOptions g, EagleOptions eo, const std::string& msg) {
    g.max_tokens = 8;
    try {
      generate_eagle2(*m, *d, prompt, g, eo);
      ADD_FAILURE() << "accepted: expected " << msg;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(msg), std::string::npos) << e.what();
    }
  };
  GenerateOptions hot;
  hot.temperature = 0.7;  // (max_tokens within the context: set by refuses)
  refuses(hot, {}, "is greedy");
  GenerateOptions nocache;
  nocache.use_cache = false;
  refuses(nocache, {}, "drop --no-cache");
  refuses({}, {0, 10, 60}, "must be >= 1");
  ModelConfig other = m->cfg;
  other.d_model = 64;
  other.n_head = 4;
  DraftHead wrong(other);
  GenerateOptions short_run;
  short_run.max_tokens = 8;
  try {
    generate_eagle2(*m, *wrong, prompt, short_run, {});
    ADD_FAILURE() << "a draft head of another width was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slmlab draft train"), std::string::npos) << e.what();
  }
}

// `draft train` on a finished run: a run folder of its own naming the target, metrics per step and
// eval, a resume that continues to the same head as one longer run; `generate --speculative
// eagle2` prints greedy's text with its cost; bad options refused in one line.
TEST(Eagle2, CliDraftTrainResumeAndGenerate) {
  const slm::test::TrainedRun& tr = slm::test::trained();
  ASSERT_EQ(tr.status, 0) << tr.out;
  slm::test::TempDir t;
  const std::string bin = SLMLAB_BIN;
  const std::string common = " --threads 1 --quiet --batch-rows 2 --eval-every 2 --eval-rows 2";
  const std::string straight = t / "straight", split = t / "split";
  auto a = slm::test::run(bin + " draft train " + tr.run + " --out " + straight + " --steps 6" + common);
  ASSERT_EQ(a.status, 0) << a.out;
  auto b1 = slm::test::run(bin + " draft train " + tr.run + " --out " + split + " --steps 4" + common);
  ASSERT_EQ(b1.status, 0) << b1.out;
  auto again = slm::test::run(bin + " draft train " + tr.run + " --out " + split + " --steps 6" + common);
  EXPECT_NE(again.status, 0);
  EXPECT_NE(again.out.find("pass --resume"), std::string::npos) << again.out;
  auto b2 = slm::test::run(bin + " draft train " + tr.run + " --out " + split + " --steps 6 --resume" + common);
  ASSERT_EQ(b2.status, 0) << b2.out;
  EXPECT_NE(b2.out.find("resuming"), std::string::npos) << b2.out;
  // Bad input: one line, nothing written.
  for (const auto& [opt, msg] : std::vector<std::pair<std::string, std::string>>{
           {" --steps 0", "--steps must be >= 1"}, {" --lr 0", "--lr must be > 0"}, {" --checkpoint 7", "has no 7 checkpoint"}}) {
    const std::string out = t / "bad";
    auto r = slm::test::run(bin + " draft train " + tr.run + " --out " + out + opt);
    EXPECT_NE(r.status, 0) << opt;
    EXPECT_NE(r.out.find(msg), std::string::npos) << opt << ": " << r.out;
    EXPECT_EQ(slm::test::count_lines(r.out), 1) << opt << ": " << r.out;
    EXPECT_FALSE(fs::exists(out)) << opt;
  }
  // The same head, bitwise, and the same curve.
  auto file_a = st::read(straight + "/draft_latest.safetensors"), file_b = st::read(split + "/draft_latest.safetensors");
  ASSERT_EQ(file_a.tensors.size(), file_b.tensors.size());
  for (size_t i = 0; i < file_a.tensors.size(); ++i) {
    EXPECT_EQ(file_a.tensors[i].first, file_b.tensors[i].first);
    EXPECT_TRUE(torch::equal(file_a.tensors[i].second, file_b.tensors[i].second)) << file_a.tensors[i].first;
  }
  EXPECT_EQ(slm::test::curve(straight), slm::test::curve(split));
  const auto cfg = nlohmann::json::parse(slm::fs::read_file(straight + "/config.json"));
  EXPECT_EQ(cfg["kind"], "eagle2_draft");
  EXPECT_EQ(cfg["target"]["run"], tr.run);
  EXPECT_EQ(cfg["target"]["step"], 6);
  EXPECT_NE(cfg["target"]["checkpoint"].get<std::string>().find("ckpt_latest.safetensors"), std::string::npos);
  int evals = 0;
  for (const auto& rec : slm::test::metrics(straight)) evals += rec.contains("val_top1_agree") ? 1 : 0;
  EXPECT_EQ(evals, 3);

  const std::string gen = bin + " generate " + tr.run + " --threads 1 --max-tokens 20 --prompt 'int main() {'";
  auto text = [](const std::string& out) {  // stdout and stderr together: the text is all but the cost line
    std::string s;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("generate: ", 0) != 0) s += line + "\n";
    return s;
  };
  auto greedy = slm::test::run(gen);
  ASSERT_EQ(greedy.status, 0) << greedy.out;
  for (const std::string shape : {"", " --draft-depth 3 --draft-top-k 2 --draft-tokens 5"}) {
    auto spec = slm::test::run(gen + " --speculative eagle2 --draft " + straight + shape);
    ASSERT_EQ(spec.status, 0) << spec.out;
    EXPECT_EQ(text(spec.out), text(greedy.out)) << shape;
    EXPECT_NE(spec.out.find(shape.empty() ? "generate: eagle2 tree depth 6 top_k 10 tokens 60" : "depth 3 top_k 2 tokens 5"),
              std::string::npos)
        << spec.out;
    EXPECT_NE(spec.out.find("tokens per iteration"), std::string::npos) << spec.out;
  }
  // eval decode: both lossless methods exact on held-out function prompts, in one table.
  auto dec = slm::test::run(bin + " eval decode " + tr.run + " --threads 1 --prompts 3 --max-tokens 12 --method jacobi.block=4" +
                            " --method eagle2.depth=4,top_k=3,total_tokens=8 --draft " + straight);
  ASSERT_EQ(dec.status, 0) << dec.out;
  for (const char* row : {"| greedy (cached) | 3/3 | 1.000 |", "| jacobi block 4 | 3/3 |", "| eagle2 4x3x8 | 3/3 |", "machine:", "1 threads"})
    EXPECT_NE(dec.out.find(row), std::string::npos) << row << "\n" << dec.out;
  auto bad = slm::test::run(bin + " eval decode " + tr.run + " --method beam");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("--method beam is not a method"), std::string::npos) << bad.out;
  for (const auto& [opt, msg] : std::vector<std::pair<std::string, std::string>>{
           {" --speculative eagle2 --draft " + straight + " --draft-depth 0", "eagle2: depth is outside [1, 64]"},
           {" --speculative eagle2 --draft " + straight + " --temperature 0.5", "is greedy"},
           {" --speculative eagle2 --draft " + t / "none", "holds no draft head"},
           {" --speculative medusa", "--speculative medusa is not a method"},
           {" --draft-depth 3", "--draft-depth is EAGLE-2's"}}) {
    auto r = slm::test::run(gen + opt);
    EXPECT_NE(r.status, 0) << opt;
    EXPECT_NE(r.out.find(msg), std::string::npos) << opt << ": " << r.out;
    EXPECT_EQ(slm::test::count_lines(r.out), 1) << opt << ": " << r.out;
  }
}

// The table marks a lossless method that was not exact INVALID, naming the first diverging prompt.
TEST(Eagle2, DecodeTableMarksInexactMethodsInvalid) {
  std::vector<eval::DecodeRow> rows(2);
  rows[0].method.kind = "greedy";
  rows[0].prompts = rows[0].exact = 4;
  rows[0].tokens = rows[0].iterations = 40;
  rows[0].seconds = 1;
  rows[1].method.kind = "eagle2";
  rows[1].prompts = 4;
  rows[1].exact = 3;
  rows[1].first_diverging = 2;
  rows[1].tokens = 40;
  rows[1].iterations = 10;
  rows[1].seconds = 0.5;
  EXPECT_FALSE(rows[1].valid());
  const std::string t = eval::decode_table(rows);
  EXPECT_NE(t.find("| greedy (cached) | 4/4 | 1.000 | 40.0 | 1.00x |"), std::string::npos) << t;
  EXPECT_NE(t.find("| eagle2 6x10x60 | 3/4 INVALID (first diverging prompt 2) | 4.000 | 80.0 | 2.00x |"), std::string::npos) << t;
}

// The tree mask's defining property, at the model: one forward over a token tree gives every node
// the hidden state its root-to-node path gets when run alone after the same cached prefix (within
// the fp32 bound of the different summation orders); a mask that lets a node see a sibling does not.
TEST(Eagle2, TreeForwardEqualsEachPathRunAlone) {
  GPT m = build_model({}, 40, 3, 0.3);
  m->eval();
  torch::NoGradGuard ng;
  const std::vector<int64_t> prefix = {0, 17, 42, 99, 3};
  // Tree: r -> a, r -> b, a -> c; flat order [r, a, b, c].
  const std::vector<int64_t> flat = {5, 77, 130, 9};
  const std::vector<int64_t> parent = {-1, 0, 0, 1};
  auto forward = [&](Caches& caches, const std::vector<int64_t>& ids, int64_t pos, const torch::Tensor& tree) {
    Ctx ctx;
    ctx.idx = torch::tensor(ids, torch::kInt64).view({1, -1});
    ctx.caches = &caches;
    ctx.pos = pos;
    ctx.tree = tree;
    return m->hidden(ctx).view({static_cast<int64_t>(ids.size()), -1});
  };
  Caches base;
  forward(base, prefix, 0, {});
  auto copy = [&] {
    Caches c(base.size());
    for (size_t l = 0; l < base.size(); ++l)
      for (auto& kv : base[l]) c[l][kv.first] = kv.second->clone();
    return c;
  };
  auto tree = torch::eye(4, torch::kBool);
  for (int64_t i = 1; i < 4; ++i) tree[i] = tree[i].logical_or(tree[parent[i]]);
  Caches tc = copy();
  const auto h_tree = forward(tc, flat, 5, tree);
  const int64_t terms = m->cfg.n_layer * slm::test::block_terms(32, 16, 9, 4 * 32);
  Caches p1 = copy(), p2 = copy();
  const auto h_rac = forward(p1, {flat[0], flat[1], flat[3]}, 5, {});  // r, a, c
  const auto h_rb = forward(p2, {flat[0], flat[2]}, 5, {});             // r, b
  EXPECT_TRUE(slm::test::fp32_close(h_tree.index_select(0, torch::tensor({0, 1, 3})), h_rac, terms));
  EXPECT_TRUE(slm::test::fp32_close(h_tree[2], h_rb[1], terms));
  // Planted: b also sees its sibling a. Its state moves by far more than the bound.
  auto leaky = tree.clone();
  leaky[2][1] = true;
  Caches lc = copy();
  const auto h_leak = forward(lc, flat, 5, leaky);
  EXPECT_FALSE(slm::test::fp32_close(h_leak[2], h_rb[1], terms));
}
