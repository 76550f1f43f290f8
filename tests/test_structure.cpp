// The structure module (issue 23 §3): embeddings of the enrichment columns added to the token
// embedding. Its defining properties: at its zero initialization the model is the baseline bit for
// bit; it changes the forward only through the embedding it adds; the loader feeds the columns; a run
// on a data set without them is refused before anything is written; and it trains.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "catalog/catalog.h"
#include "common/fs.h"
#include "data/dataset.h"
#include "data/enrich.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "model/gpt.h"
#include "test_model_util.h"
#include "test_util.h"

using namespace slm;
using slm::test::TempDir;
using json = nlohmann::json;

namespace {

ModelConfig with_structure(const std::map<std::string, std::string>& given = {{"depth_max", "8"}}) {
  ModelConfig c = test::tiny_config();
  c.modules = {test::module_args("structure", given)};
  return c;
}

// Codes from a function of the token id (category idx % 9, role idx % 4, depth idx % 9).
torch::Tensor codes_of(const torch::Tensor& idx) {
  return idx.remainder(9) + 16 * idx.remainder(4) + 256 * idx.remainder(9);
}

torch::Tensor random_idx(int64_t B, int64_t T, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(3, 300, {B, T}, torch::kInt64);
}

std::string tiny_substrate(const std::string& path) {
  test::write(path,
              "name = \"structure-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
              "total_batch = 256\ndevice_batch = 8\nsteps = 30\neval_every = 15\neval_tokens = 256\n"
              "ckpt_every = 30\nthreads = 1\nprecision = \"fp32\"\nlr_matrix = 0.05\n");
  return path;
}

std::string enriched_dataset(const TempDir& t, bool enrich) {
  const std::string p = test::make_project(t / "proj", 10, true);
  auto r = test::run(std::string(SLMLAB_BIN) + " data build --project " + p + (enrich ? " --enrich" : "") + " --out " +
                     (t / "ds") + " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 2");
  EXPECT_EQ(r.status, 0) << r.out;
  return t / "ds";
}

}  // namespace

TEST(Structure, ZeroInitializedIsTheBaselineBitwise) {
  GPT base(test::tiny_config()), m(with_structure());
  // The baseline's parameters draw the same numbers with the module present.
  auto mp = m->named_parameters();
  for (auto& p : base->named_parameters()) {
    ASSERT_TRUE(mp.contains(p.key())) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), mp[p.key()])) << p.key();
  }
  base->eval();
  m->eval();
  auto idx = random_idx(2, 32, 1);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(base->hidden(idx, {}), m->hidden(idx, {})));  // no parse: code 0
  Ctx ctx;
  ctx.idx = idx;
  ctx.structure = codes_of(idx);
  EXPECT_TRUE(torch::equal(base->hidden(idx, {}), m->hidden(ctx)));
  EXPECT_TRUE(torch::equal(base->token_nats(idx, idx.roll(-1, 1), {}), m->token_nats(idx, idx.roll(-1, 1), {}, nullptr, codes_of(idx))));
}

TEST(Structure, ChangesTheForwardOnlyThroughTheAddedEmbedding) {
  GPT m(with_structure());
  test::fill_normal(*m, 7, 0.1);
  m->eval();
  // Codes that are a function of the token id c(v): the model equals a baseline whose embedding row
  // v is wte[v] + E_cat[c] + E_role[r] + E_depth[d], added in the module's order: bitwise.
  GPT base(test::tiny_config());
  {
    torch::NoGradGuard ng;
    auto bp = base->named_parameters();
    for (auto& p : m->named_parameters())
      if (bp.contains(p.key())) bp[p.key()].copy_(p.value());
    auto v = torch::arange(300, torch::kInt64);
    auto c = codes_of(v);
    auto params = m->named_parameters();
    auto w = params["wte.weight"].index_select(0, v);
    w = w + params["input.category"].index_select(0, c.remainder(16));
    w = w + params["input.role"].index_select(0, torch::div(c, 16, "floor").remainder(16));
    w = w + params["input.depth"].index_select(0, torch::div(c, 256, "floor").clamp_max(8));
    bp["wte.weight"].copy_(w);
  }
  base->eval();
  auto idx = random_idx(2, 32, 2);
  torch::NoGradGuard ng;
  Ctx ctx;
  ctx.idx = idx;
  ctx.structure = codes_of(idx);
  EXPECT_TRUE(torch::equal(base->hidden(idx, {}), m->hidden(ctx)));
  // Per position: another code at position 20 changes the output there and nothing before it.
  auto other = ctx.structure.clone();
  other.index_put_({0, 20}, (other.index({0, 20}) + 1).remainder(9));
  Ctx c2;
  c2.idx = idx;
  c2.structure = other;
  auto a = m->hidden(ctx), b = m->hidden(c2);
  EXPECT_TRUE(torch::equal(a.index({0, torch::indexing::Slice(0, 20)}), b.index({0, torch::indexing::Slice(0, 20)})));
  EXPECT_FALSE(torch::equal(a.index({0, 20}), b.index({0, 20})));
  EXPECT_TRUE(torch::equal(a.index({1}), b.index({1})));
}

TEST(Structure, ZeroTablesLearnTheRowsTheBatchUses) {
  GPT m(with_structure({{"columns", "category"}}));
  auto idx = random_idx(2, 32, 3);
  auto codes = torch::full_like(idx, data::kDeclaration);
  codes.index_put_({0, torch::indexing::Slice(0, 8)}, data::kComment);
  m->loss(idx, idx.roll(-1, 1), {}, 0, nullptr, codes).backward();
  auto g = m->named_parameters()["input.category"].grad();
  ASSERT_TRUE(g.defined());
  EXPECT_EQ(g.size(0), data::kCategories);
  for (int c = 0; c < data::kCategories; ++c)
    EXPECT_EQ(g[c].abs().sum().item<double>() > 0, c == data::kDeclaration || c == data::kComment) << data::category_name(c);
  EXPECT_EQ(m->param_roles().at("input.category"), ParamRole::Embedding);
}

TEST(Structure, CatalogRefusesBadColumnsTransformsAndTensorParallel) {
  std::vector<std::string> errs;
  auto bad = catalog::resolve_arg("structure.columns=category:ast", errs);
  ASSERT_TRUE(errs.empty());
  auto e = catalog::check({bad}, test::model_view(2, 64, 4, 16, 32), true);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("columns lists 'ast'"), std::string::npos) << e[0];
  auto e2 = catalog::check({test::module_args("structure"), test::module_args("fim")}, test::model_view(2, 64, 4, 16, 32), true);
  ASSERT_EQ(e2.size(), 1u);
  EXPECT_NE(e2[0].find("drop one of them"), std::string::npos) << e2[0];
  auto v = test::model_view(2, 64, 4, 16, 32);
  v.tp = 2;
  auto e3 = catalog::check({test::module_args("structure")}, v, true);
  ASSERT_EQ(e3.size(), 1u);
  EXPECT_NE(e3[0].find("runs at tp <= 1"), std::string::npos) << e3[0];
}

TEST(Structure, LoaderFeedsTheColumnsAndRefusesRawData) {
  if (!data::enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  data::DataSet ds(enriched_dataset(t, true));
  const auto& d0 = ds.docs(data::Split::Train)[0];
  data::Loader l(ds, data::Split::Train, static_cast<int64_t>(d0.n_tokens) + 1, 0, false);
  l.feed_structure();
  std::vector<int32_t> tok(l.row_len()), doc(l.row_len()), sc(l.row_len());
  l.next(tok.data(), doc.data(), sc.data());
  const auto cat = ds.doc_column(data::Split::Train, 0, data::DataSet::Category);
  const auto dep = ds.doc_column(data::Split::Train, 0, data::DataSet::Depth);
  const auto rol = ds.doc_column(data::Split::Train, 0, data::DataSet::Role);
  EXPECT_EQ(sc[0], 0);  // the BOS
  int parsed_codes = 0;
  for (size_t k = 0; k < d0.n_tokens; ++k) {
    EXPECT_EQ(sc[k + 1], data::structure_code(cat[k], dep[k], rol[k])) << k;
    parsed_codes += sc[k + 1] != 0;
  }
  EXPECT_GT(parsed_codes, 0);
  // FIM after the columns, and the columns of a data set without enrichment, are refused.
  auto e1 = test::error_of([&] { l.set_transforms(data::transform_set({test::module_args("fim")})); });
  EXPECT_NE(e1.find("cannot follow FIM"), std::string::npos) << e1;
  TempDir t2;
  data::DataSet raw(enriched_dataset(t2, false));
  data::Loader lr(raw, data::Split::Train, 32, 0, true);
  auto e2 = test::error_of([&] { lr.feed_structure(); });
  EXPECT_NE(e2.find("has no structure columns; build it with slmlab data build --enrich"), std::string::npos) << e2;
}

TEST(Structure, RefusedOnRawDataBeforeAnythingIsWritten) {
  TempDir t;
  const std::string ds = enriched_dataset(t, false), run = t / "run";
  auto r = test::run(std::string(SLMLAB_BIN) + " train --quiet --data " + ds + " --substrate " +
                     tiny_substrate(t / "sub.toml") + " --out " + run + " --module structure");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("train: module structure reads the structure columns of an enriched data set and " + ds +
                       " has none; build one with slmlab data build --enrich"),
            std::string::npos) << r.out;
  EXPECT_EQ(test::count_lines(r.out), 1) << r.out;
  EXPECT_FALSE(std::filesystem::exists(run));
}

TEST(Structure, TrainsFromTheBaselinesStartingPoint) {
  if (!data::enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  const std::string ds = enriched_dataset(t, true), sub = tiny_substrate(t / "sub.toml");
  auto base = test::run(std::string(SLMLAB_BIN) + " train --quiet --data " + ds + " --substrate " + sub + " --out " + (t / "base"));
  ASSERT_EQ(base.status, 0) << base.out;
  auto st = test::run(std::string(SLMLAB_BIN) + " train --quiet --data " + ds + " --substrate " + sub + " --out " +
                      (t / "st") + " --module structure");
  ASSERT_EQ(st.status, 0) << st.out;
  auto evals = [](const std::string& run) {
    std::vector<double> v;
    for (auto& j : test::metrics(run))
      if (j.contains("val_bpb")) v.push_back(j["val_bpb"].get<double>());
    return v;
  };
  const auto b = evals(t / "base"), s = evals(t / "st");
  ASSERT_EQ(b.size(), 3u);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0], b[0]);  // step 0: zero tables, the same model on the same tokens
  EXPECT_NE(s[2], b[2]);  // the tables trained: the inputs differ
  EXPECT_LT(s[2], s[0]);
  const json cfg = json::parse(slm::fs::read_file(t / "st/config.json"));
  EXPECT_NE(cfg["layer_plan"].get<std::string>().find("input: structure embeddings (category:role:depth"), std::string::npos);
}

// Data parallel: each rank's loader feeds the columns of its own rows. Two ranks start from the
// single process's model on the same validation rows (eval is bitwise across world sizes), and follow
// its losses to the bound tests/test_dist.cpp documents for the baseline (only the order of the
// floating-point sums differs: 1e-4 nats absolute).
TEST(Structure, TwoDataParallelRanksFollowOneProcess) {
  if (!data::enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  const std::string ds = enriched_dataset(t, true), sub = tiny_substrate(t / "sub.toml");
  const std::string cmd = std::string(SLMLAB_BIN) + " train --quiet --data " + ds + " --substrate " + sub + " --module structure --set steps=6 --out ";
  auto one = test::run(cmd + (t / "one"));
  ASSERT_EQ(one.status, 0) << one.out;
  auto two = test::run(cmd + (t / "two") + " --nproc 2");
  ASSERT_EQ(two.status, 0) << two.out;
  std::map<int64_t, double> l1, l2, v1, v2;
  auto read = [](const std::string& run, std::map<int64_t, double>& loss, std::map<int64_t, double>& val) {
    for (auto& j : test::metrics(run)) {
      if (j.contains("loss")) loss[j["step"]] = j["loss"].get<double>();
      if (j.contains("val_bpb")) val[j["step"]] = j["val_bpb"].get<double>();
    }
  };
  read(t / "one", l1, v1);
  read(t / "two", l2, v2);
  ASSERT_EQ(l1.size(), 6u);
  ASSERT_EQ(l2.size(), 6u);
  EXPECT_EQ(v1.at(0), v2.at(0));
  for (auto& [step, loss] : l1) EXPECT_NEAR(l2.at(step), loss, 1e-4) << "step " << step;
  EXPECT_EQ(json::parse(slm::fs::read_file(t / "two/summary.json"))["world_size"], 2);
}
