// Registry-wide checks: every Tier 1-2 catalog module is implemented (a model side in the registry
// or a data transform in the loader), and every model module, at its catalog row's tiny arguments,
// builds a GPT that: has the right shapes; is causal in evaluation (changing a future token changes
// no earlier output); keeps documents of a packed row apart; passes gradient to every parameter;
// trains a few steps with a finite, falling loss; is bitwise deterministic; reports its FLOPs and
// shows up in the layer plan; and generates the same greedy text with its cache as without. A new module is tested by these without a line added here.
#include <gtest/gtest.h>

#include <set>

#include "catalog/catalog.h"
#include "catalog/module_list.h"
#include "data/transforms.h"
#include "engine/plan.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "model/module.h"
#include "test_model_util.h"

using namespace slm;

namespace {

using slm::test::tiny_config;

// The module's tiny arguments, resolved and checked at the tiny geometry; the config it yields.
ModelConfig config_with(const std::string& name) {
  const catalog::ModuleSpec* spec = catalog::find(name);
  EXPECT_NE(spec, nullptr) << name << " is in the model registry but not in the catalog";
  std::vector<std::string> errors;
  std::string text = name + (spec && *spec->tiny ? std::string(".") + spec->tiny : "");
  auto args = catalog::resolve_arg(text, errors);
  ModelConfig c = tiny_config();
  catalog::ModelView v;
  v.depth = c.n_layer;
  v.d_model = c.d_model;
  v.n_head = c.n_head;
  v.head_dim = c.head_dim;
  v.context = c.context;
  v.layer_pattern = c.layer_pattern;
  if (errors.empty()) errors = catalog::check({args}, v, /*training=*/true);
  for (auto& e : errors) ADD_FAILURE() << name << " tiny args '" << text << "': " << e;
  c.layer_pattern = catalog::adjusted({args}, v).layer_pattern;
  c.modules = {args};
  return c;
}

std::vector<std::string> model_module_names() {
  std::vector<std::string> out;
  for (auto& m : model_modules()) out.push_back(m.name);
  return out;
}

// Random weights everywhere, so zero-initialized projections do not hide a broken path.
void randomize(GPT& m, uint64_t seed) { slm::test::perturb(*m, seed, 0.05, true); }

}  // namespace

TEST(Modules, EveryTrainableCatalogModuleIsImplemented) {
  for (auto& spec : catalog::modules()) {
    if (spec.tier == catalog::Tier::Inference) continue;
    const bool model_side = find_model_module(spec.name) != nullptr;
    const bool data_side = data::find_data_module(spec.name) != nullptr;
    EXPECT_TRUE(model_side || data_side) << spec.name << " is in the catalog but neither the model registry "
                                         << "(model/registry.cpp) nor the data transforms implement it";
  }
  // Each entry of catalog/module_list.h: its row, and the side it is marked with.
  ASSERT_EQ(catalog::modules().size(), static_cast<size_t>(catalog::kModuleCount));
  EXPECT_EQ(model_modules().size(), static_cast<size_t>(catalog::kModelModuleCount));
  EXPECT_EQ(data::data_modules().size(), static_cast<size_t>(catalog::kDataModuleCount));
  auto side_of = [](const std::string& name) -> std::string {
#define SLM_MODULE_SIDE(n, side) \
  if (name == #n) return #side;
    SLM_MODULES(SLM_MODULE_SIDE)
#undef SLM_MODULE_SIDE
    return "";
  };
  for (auto& spec : catalog::modules()) {
    const std::string side = side_of(spec.name), family = spec.family;
    EXPECT_EQ(side == "MODEL", find_model_module(spec.name) != nullptr) << spec.name;
    // Family "data": a loader transform (DATA), or a model side that reads the data set's columns (structure).
    if (side == "DATA" || family == "data")
      EXPECT_TRUE(side == "DATA" ? family == "data" : side == "MODEL" && spec.reads_structure)
          << spec.name << " is marked " << side << " but its family is " << family;
    if (side == "MODEL") EXPECT_EQ(GPT(config_with(spec.name))->reads_structure(), spec.reads_structure) << spec.name;
    EXPECT_EQ(side == "INFER", spec.tier == catalog::Tier::Inference) << spec.name << " is marked " << side;
  }
  std::set<std::string> names;
  for (auto& m : model_modules()) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name << " is registered twice";
    EXPECT_NE(catalog::find(m.name), nullptr) << m.name << " has no catalog row";
  }
}

class ModuleContract : public ::testing::TestWithParam<std::string> {};

TEST_P(ModuleContract, ShapesPlanAndFlops) {
  ModelConfig c = config_with(GetParam());
  GPT m(c);
  GPT base(tiny_config());
  auto idx = torch::randint(0, c.vocab, {2, c.context}, torch::kInt64);
  auto h = m->hidden(idx, {});
  EXPECT_EQ(h.sizes(), (std::vector<int64_t>{2, c.context, c.d_model}));
  EXPECT_NE(layer_plan(*m).find(GetParam()), std::string::npos) << layer_plan(*m);
  EXPECT_GT(m->flops_per_token(c.context), 0.0);
  EXPECT_NE(m->flops_per_token(c.context), base->flops_per_token(c.context))
      << "FLOPs must count what the module runs";
}

TEST_P(ModuleContract, CausalInEvaluation) {
  ModelConfig c = config_with(GetParam());
  GPT m(c);
  randomize(m, 1);
  m->eval();
  torch::NoGradGuard ng;
  auto idx = torch::randint(0, c.vocab, {2, c.context}, torch::kInt64);
  auto other = idx.clone();
  const int64_t t0 = c.context / 2;
  other.index_put_({torch::indexing::Slice(), torch::indexing::Slice(t0)},
                   torch::randint(0, c.vocab, {2, c.context - t0}, torch::kInt64));
  auto a = m->hidden(idx, {}), b = m->hidden(other, {});
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::allclose(a.index({Slice(), Slice(0, t0)}), b.index({Slice(), Slice(0, t0)}), 1e-5, 1e-5))
      << "changing tokens from " << t0 << " on changed an earlier output";
  EXPECT_FALSE(torch::allclose(a.index({Slice(), Slice(t0)}), b.index({Slice(), Slice(t0)}), 1e-5, 1e-5));
}

TEST_P(ModuleContract, DocumentsInAPackedRowStayApart) {
  ModelConfig c = config_with(GetParam());
  GPT m(c);
  randomize(m, 2);
  m->eval();
  torch::NoGradGuard ng;
  using torch::indexing::Slice;
  const int64_t T = c.context, cut = T / 2 - 3;
  auto idx = torch::randint(0, c.vocab, {1, T}, torch::kInt64);
  auto doc = torch::zeros({1, T}, torch::kInt64);
  doc.index_put_({0, Slice(cut)}, 1);
  auto packed = m->hidden(idx, doc);
  // The second document alone, in a row of its own.
  auto alone = m->hidden(idx.index({Slice(), Slice(cut)}), {});
  EXPECT_TRUE(torch::allclose(packed.index({Slice(), Slice(cut)}), alone, 1e-4, 1e-4))
      << "the second document of a packed row sees the first (max diff "
      << (packed.index({Slice(), Slice(cut)}) - alone).abs().max().item<double>() << ")";
}

TEST_P(ModuleContract, GradientReachesEveryParameterAndTrainingLearns) {
  ModelConfig c = config_with(GetParam());
  GPT m(c);
  randomize(m, 3);
  m->train();
  torch::manual_seed(4);
  auto idx = torch::randint(0, 16, {4, c.context}, torch::kInt64);  // a small alphabet: learnable fast
  auto y = idx.roll(-1, 1);
  GPTImpl::Parts parts;
  auto loss = m->loss(idx, y, {}, /*step=*/1000000, &parts);  // past any warm-up: the trained path
  ASSERT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  for (auto& p : m->named_parameters()) {
    if (!p.value().requires_grad()) continue;  // state that travels with the weights (MoE's balancing bias)
    ASSERT_TRUE(p.value().grad().defined()) << p.key() << " gets no gradient";
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key() << " gets a zero gradient";
  }
  torch::optim::Adam opt(m->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0, last = 0;
  for (int s = 0; s < 30; ++s) {
    opt.zero_grad();
    auto l = m->loss(idx, y, {}, 1000000 + s);
    l.backward();
    opt.step();
    (s == 0 ? first : last) = l.item<double>();
  }
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, first) << "30 Adam steps on a fixed batch did not lower the loss";
}

TEST_P(ModuleContract, BitwiseDeterministic) {
  ModelConfig c = config_with(GetParam());
  auto run = [&] {
    GPT m(c);
    m->train();
    torch::manual_seed(5);
    auto idx = torch::randint(0, c.vocab, {2, c.context}, torch::kInt64);
    auto loss = m->loss(idx, idx.roll(-1, 1), {}, 0);
    loss.backward();
    return std::make_pair(loss.item<double>(), m->parameters()[1].grad().sum().item<double>());
  };
  EXPECT_EQ(run(), run());
}

TEST_P(ModuleContract, GenerationWithTheCacheEqualsWithout) {
  ModelConfig c = config_with(GetParam());
  GPT m(c);
  randomize(m, 6);
  std::vector<int32_t> prompt = {0, 11, 23, 5, 7, 250, 42};
  GenerateOptions g;
  g.max_tokens = c.context - static_cast<int64_t>(prompt.size());
  auto cached = generate(*m, prompt, g);
  g.use_cache = false;
  EXPECT_EQ(cached, generate(*m, prompt, g)) << "greedy generation with the cache differs from recomputing";
}

INSTANTIATE_TEST_SUITE_P(Registry, ModuleContract, ::testing::ValuesIn(model_module_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ModuleContract);
