// Objective-aware metrics (eval/infill.h): infilling and edit bits per byte on held-out code.
#include <torch/torch.h>

#include <cmath>

#include <gtest/gtest.h>

#include "data/transforms.h"
#include "eval/bpb.h"
#include "eval/infill.h"
#include "test_model_util.h"
#include "test_paths.h"
#include "test_tolerance.h"
#include "test_util.h"

using namespace slm;

namespace {

struct Fixture {
  test::TempDir dir;
  std::string ds_dir = test::small_dataset(dir.path, 16, 5, 4, 300, 8000);
  data::DataSet ds{ds_dir};
  ModelConfig cfg;
  GPT model{nullptr};
  Fixture() {
    cfg = test::tiny_config(2);
    cfg.vocab = ds.tokenizer().vocab_size();
    cfg.context = 256;
    model = GPT(cfg);
    test::fill_normal(*model, 3, 0.05);
  }
};

Fixture& fx() {
  static Fixture f;
  return f;
}

const InfillMetric kAll[] = {InfillMetric::Fim, InfillMetric::Ifim, InfillMetric::IfimNoInst, InfillMetric::Sri};

}  // namespace

// The figure recomputed independently: the unfused head (logits, log_softmax) on each sample alone,
// no padding, the nats of exactly the scored middle's tokens, and its bytes counted from its text.
TEST(InfillBpb, CountsExactlyTheScoredBytesAndTheirNats) {
  Fixture& f = fx();
  const int64_t T = f.cfg.context;
  for (InfillMetric m : kAll) {
    SCOPED_TRACE(infill_metric_name(m));
    auto samples = infill_samples(f.ds, m, T, 6, 11);
    ASSERT_GE(samples.size(), 3u) << "the tiny validation split must give samples";
    const auto& tb = f.ds.tokenizer().token_bytes();
    double nats = 0, bytes = 0, bound = 0;
    torch::NoGradGuard ng;
    f.model->eval();
    for (auto& s : samples) {
      ASSERT_LE(s.tokens.size(), static_cast<size_t>(T + 1));
      ASSERT_LT(0, s.begin);
      ASSERT_LT(s.begin, s.end);
      // The scored tokens are exactly the middle: they decode to its bytes, and only they count.
      std::vector<int32_t> mid(s.tokens.begin() + s.begin, s.tokens.begin() + s.end);
      EXPECT_EQ(f.ds.tokenizer().decode(mid), s.scored);
      int64_t b = 0;
      for (int32_t id : mid) b += tb[id];
      EXPECT_EQ(b, static_cast<int64_t>(s.scored.size()));
      const int64_t n = static_cast<int64_t>(s.tokens.size()) - 1;
      std::vector<int64_t> ids(s.tokens.begin(), s.tokens.end());
      auto t = torch::tensor(ids, torch::kInt64).view({1, n + 1});
      auto lp = torch::log_softmax(f.model->logits(f.model->hidden(t.slice(1, 0, n), torch::zeros({1, n}, torch::kInt64))), -1);
      for (int64_t k = s.begin; k < s.end; ++k) {
        if (tb[ids[k]] == 0) continue;
        const double v = -lp[0][k - 1][ids[k]].item<double>();
        nats += v;
        bound += test::fp32_bound(f.cfg.n_layer * test::block_terms(f.cfg.d_model, f.cfg.head_dim, T, 4 * f.cfg.d_model) + f.cfg.vocab, v);
      }
      bytes += static_cast<double>(s.scored.size());
    }
    const double want = nats / (std::log(2.0) * bytes);
    const double got = infill_bpb(*f.model, f.ds, m, T, 6, 11, 4, false, torch::kCPU);  // 4 rows per batch: padding
    EXPECT_NEAR(got, want, bound / (std::log(2.0) * bytes));
    EXPECT_GT(std::fabs(got - val_bpb(*f.model, f.ds, T, 2 * T, 4, false, torch::kCPU)), 1e-6)
        << "a different figure from val_bpb";
  }
}

// Seeded and held out: the same seed gives the same samples, another seed others; every scored
// middle comes from a validation document; IFIM with and without its instruction score the same middles.
TEST(InfillBpb, SamplesAreSeededFromTheValidationSplit) {
  Fixture& f = fx();
  const auto& tok = f.ds.tokenizer();
  for (InfillMetric m : kAll) {
    SCOPED_TRACE(infill_metric_name(m));
    auto a = infill_samples(f.ds, m, 256, 8, 1), b = infill_samples(f.ds, m, 256, 8, 1), c = infill_samples(f.ds, m, 256, 8, 2);
    ASSERT_EQ(a.size(), b.size());
    bool differs = a.size() != c.size();
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].tokens, b[i].tokens);
      EXPECT_EQ(a[i].doc, b[i].doc);
      if (i < c.size() && (a[i].tokens != c[i].tokens)) differs = true;
      ASSERT_LT(a[i].doc, f.ds.docs(data::Split::Val).size());
      // The middle, or SRI's replacement (the region with the middle back in), is text of that document.
      EXPECT_NE(tok.decode(f.ds.doc_tokens(data::Split::Val, a[i].doc)).find(a[i].scored), std::string::npos);
    }
    EXPECT_TRUE(differs) << "another seed must choose other spans";
  }
  auto with = infill_samples(f.ds, InfillMetric::Ifim, 256, 8, 4), without = infill_samples(f.ds, InfillMetric::IfimNoInst, 256, 8, 4);
  ASSERT_FALSE(with.empty());
  ASSERT_EQ(with.size(), without.size());
  for (size_t i = 0; i < with.size(); ++i) {
    EXPECT_EQ(with[i].scored, without[i].scored);
    auto has_ins = [](const InfillSample& s) {
      return std::find(s.tokens.begin(), s.tokens.end(), TOK_FIM_INSTRUCTION) != s.tokens.end();
    };
    EXPECT_TRUE(has_ins(with[i]));
    EXPECT_FALSE(has_ins(without[i]));
    EXPECT_GT(with[i].tokens.size(), without[i].tokens.size());
  }
  EXPECT_THROW(parse_infill_metric("fimm"), slm::Error);
}

// Scoring an objective metric leaves val_bpb as it was, bit for bit (no state carried over).
TEST(InfillBpb, ValBpbIsUnchanged) {
  Fixture& f = fx();
  const double before = val_bpb(*f.model, f.ds, 256, 2 * 256, 4, false, torch::kCPU);
  f.model->train();
  for (InfillMetric m : kAll) infill_bpb(*f.model, f.ds, m, 256, 4, 3, 4, false, torch::kCPU);
  EXPECT_TRUE(f.model->is_training()) << "the model's mode is restored";
  EXPECT_EQ(before, val_bpb(*f.model, f.ds, 256, 2 * 256, 4, false, torch::kCPU));
}

// The trainer records every objective metric at every eval, whatever the run trains with, and
// `eval bpb --metric` scores the same samples: its figure is the recorded one at the same step.
TEST(InfillBpb, TrainerRecordsThemAndEvalBpbAgrees) {
  Fixture& f = fx();
  const std::string sub = f.dir / "tiny.toml";
  test::write(sub,
              "name = \"infill-tiny\"\ndepth = 1\naspect = 32\nhead_dim = 16\ncontext = 256\ntotal_batch = 1024\n"
              "device_batch = 4\nsteps = 6\neval_every = 3\neval_tokens = 2048\nckpt_every = 3\nthreads = 1\n");
  const std::string bin = SLMLAB_BIN, run = f.dir / "run";
  auto tr = test::run(bin + " train --quiet --data " + f.ds_dir + " --substrate " + sub + " --out " + run);
  ASSERT_EQ(tr.status, 0) << tr.out;
  nlohmann::json last;
  int evals = 0;
  for (auto& j : test::metrics(run))
    if (j.contains("val_bpb")) {
      ++evals;
      for (const char* k : {"fim_bpb", "ifim_bpb", "ifim_noinst_bpb", "sri_bpb"}) {
        ASSERT_TRUE(j.contains(k) && j[k].is_number()) << k << " in " << j.dump();
        EXPECT_GT(j[k].get<double>(), 0);
      }
      last = j;
    }
  EXPECT_GE(evals, 2);
  for (const char* m : {"fim", "ifim", "ifim_noinst", "sri"}) {
    auto e = test::run(bin + " eval bpb " + run + " --threads 1 --metric " + m);
    ASSERT_EQ(e.status, 0) << e.out;
    char want[64];
    std::snprintf(want, sizeof want, "%s_bpb %.4f |", m, last[std::string(m) + "_bpb"].get<double>());
    EXPECT_NE(e.out.find(want), std::string::npos) << want << " in " << e.out;
  }
  auto bad = test::run(bin + " eval bpb " + run + " --metric fimm");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("--metric 'fimm' is unknown; use bpb, fim, ifim, ifim_noinst or sri"), std::string::npos) << bad.out;
}
