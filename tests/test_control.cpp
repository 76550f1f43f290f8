// Parameter-matched controls (issue 21 section 2, engine/control.h): the base widened or deepened to
// the experiment's parameter count lands within the stated tolerance and no neighbouring geometry
// is closer; the derived substrate's id differs from the base's and is stable; bad input is refused
// in one line naming the nearest geometry.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "catalog/catalog.h"
#include "common/error.h"
#include "engine/control.h"
#include "engine/plan.h"
#include "test_paths.h"
#include "test_util.h"

using namespace slm;
using namespace slm::engine;

namespace {

Substrate tiny() {
  Substrate s = load_substrate(std::string(SLMLAB_SOURCE_DIR) + "/substrates/cpu-tiny.toml");
  s.vocab = 512;  // a small vocabulary: the blocks, not the embedding, hold most parameters
  return s;
}

catalog::ModuleArgs module(const std::string& name, const std::map<std::string, std::string>& args = {}) {
  std::vector<std::string> errs;
  auto m = catalog::resolve(name, args, errs);
  EXPECT_TRUE(errs.empty()) << errs[0];
  return m;
}

// The geometry one step away from `s` along `kind` (-1 smaller, +1 larger), as the search builds it.
Substrate neighbour(const Substrate& s, const std::string& kind, int dir) {
  Substrate n = s;
  if (kind == "widen") {
    const int64_t want = s.model_dim() + dir * s.head_dim;
    n.aspect = (want + n.depth - 1) / n.depth;
  } else {
    n.depth += dir;
    n.aspect = (s.model_dim() + n.depth - 1) / n.depth;
    if (n.model_dim() != s.model_dim()) n.aspect = s.model_dim() / n.depth;
  }
  return n;
}

}  // namespace

TEST(Control, WidenedAndDeepenedBasesMatchTheExperimentsParameters) {
  const Substrate s = tiny();
  const auto engram = module("engram", {{"layers", "1,3"}});
  const int64_t base = model_params(s, {}), target = model_params(s, {engram});
  ASSERT_GT(double(target) / base - 1, 0.10) << "engram must add more than the default share for this test";
  for (const std::string kind : {"widen", "deepen"}) {
    const double tol = 0.10;  // the plan's stated tolerance; a widening step here is one 32-wide head
    const ControlArm a = match_params(s, {}, target, kind, tol, model_params);
    EXPECT_EQ(a.params, model_params(a.substrate, {})) << kind;  // the count is the model's
    EXPECT_LE(std::fabs(double(a.params - target)) / target, tol) << kind << ": " << a.describe();
    EXPECT_NEAR(a.gap, double(a.params - target) / target, 1e-15);
    EXPECT_EQ(a.base_params, base);
    // Closest: neither neighbouring geometry is nearer the target.
    for (int dir : {-1, 1}) {
      const Substrate n = neighbour(a.substrate, kind, dir);
      if (n.depth < s.depth || n.model_dim() < s.model_dim()) continue;
      EXPECT_GE(std::llabs(model_params(n, {}) - target), std::llabs(a.params - target)) << kind << " " << dir;
    }
    // Only the geometry moved: widen keeps the depth, deepen the width.
    if (kind == "widen") {
      EXPECT_EQ(a.substrate.depth, s.depth);
      EXPECT_GT(a.substrate.model_dim(), s.model_dim());
      EXPECT_EQ(a.substrate.head_dim, s.head_dim);
    } else {
      EXPECT_EQ(a.substrate.model_dim(), s.model_dim());
      EXPECT_GT(a.substrate.depth, s.depth);
    }
    EXPECT_EQ(a.substrate.total_batch, s.total_batch);
    EXPECT_EQ(a.substrate.steps, s.steps);
    // Its own id, the same every time it is derived; labelled as the control it is.
    EXPECT_NE(a.substrate.id(), s.id());
    EXPECT_EQ(a.substrate.id(), match_params(s, {}, target, kind, tol, model_params).substrate.id());
    EXPECT_EQ(a.substrate.name.rfind("cpu-tiny." + kind + "-", 0), 0u) << a.substrate.name;
    // The written substrate reads back to the same id.
    EXPECT_EQ(parse_substrate(a.substrate.to_toml(), "derived").id(), a.substrate.id());
  }
}

TEST(Control, BadInputIsRefusedNamingTheNearestGeometry) {
  const Substrate s = tiny();
  const int64_t base = model_params(s, {});
  try {
    // One parameter more than the base: no widening comes within 0.0001%.
    match_params(s, {}, base + 1, "widen", 1e-6, model_params);
    FAIL() << "an unreachable tolerance was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("the nearest is d_model 160 (5 heads of 32), depth 4"), std::string::npos) << m;
    EXPECT_NE(m.find("try param_control = \"deepen\""), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos);
  }
  EXPECT_THROW(match_params(s, {}, base * 2, "sideways", 0.05, model_params), Error);
  EXPECT_THROW(match_params(s, {}, 0, "widen", 0.05, model_params), Error);
  EXPECT_THROW(match_params(s, {}, base * 2, "widen", 0, model_params), Error);
}

TEST(Control, APlanGetsAControlArmForEachExperimentOverTheShare) {
  slm::test::TempDir t;
  const std::string head = "name = \"p\"\nsubstrate = \"" + std::string(SLMLAB_SOURCE_DIR) + "/substrates/cpu-tiny.toml\"\n"
                           "[rule]\nparam_control = \"widen\"\nparam_tolerance = 0.10\n[[phases]]\nname = \"a\"\n"
                           "[[phases.experiments]]\nid = \"baseline\"\nseeds = [1, 2]\n";
  slm::test::write(t / "p.toml", head + R"(
[[phases.experiments]]
id = "mem"
base = "baseline"
seeds = [1, 2]
modules = [{ name = "engram", layers = [1, 3] }]
[[phases.experiments]]
id = "memdeep"
base = "baseline"
seeds = [3]
modules = [{ name = "engram", layers = [1, 3] }]
param_control = "deepen"
[[phases.experiments]]
id = "fim"
base = "baseline"
seeds = [1, 2]
modules = ["fim"]
[[phases.experiments]]
id = "memnone"
base = "baseline"
seeds = [1]
modules = [{ name = "engram", layers = [1, 3] }]
param_control = "none"
)");
  Plan p = load_plan(t / "p.toml");
  const auto arms = plan_controls(p, 512, model_params);
  ASSERT_EQ(arms.size(), 2u);  // fim adds no parameters; memnone opts out
  EXPECT_EQ(arms[0].id, "mem.widen");
  EXPECT_EQ(arms[1].id, "memdeep.deepen");
  EXPECT_NEAR(added_share(p, *p.find("mem"), 512, model_params), double(arms[0].target) / arms[0].base_params - 1, 1e-12);
  add_controls(p, arms);
  const Experiment* c = p.find("memdeep.deepen");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->control_of, "memdeep");
  EXPECT_EQ(c->base, "");
  EXPECT_EQ(c->seeds, (std::vector<int64_t>{3}));
  EXPECT_TRUE(c->effective.empty());  // the base's modules: none
  EXPECT_EQ(control_kind(p, *c), "none");  // a control gets no control of its own
  // An id taken by the plan, and a tolerance no geometry meets: every problem in one line.
  slm::test::write(t / "q.toml", head + R"(
[[phases.experiments]]
id = "mem"
base = "baseline"
seeds = [1]
modules = [{ name = "engram", layers = [1, 3] }]
[[phases.experiments]]
id = "mem.widen"
base = "baseline"
seeds = [1]
)");
  try {
    plan_controls(load_plan(t / "q.toml"), 512, model_params);
    FAIL() << "a taken control id was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("control arm id 'mem.widen' is taken"), std::string::npos) << e.what();
  }
}
