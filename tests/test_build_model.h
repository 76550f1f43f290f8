// A tiny model built from catalog modules as the CLI checks them (the Jacobi and EAGLE-2 tests run
// every mixer through it). Separate from test_model_util.h, which binaries without test_util.h use.
#pragma once
#include <string>
#include <vector>

#include "catalog/catalog.h"
#include "model/gpt.h"
#include "test_model_util.h"
#include "test_util.h"

namespace slm::test {

// A tiny model with the given catalog modules (checked as the CLI does), perturbed so that no
// zero-initialized projection hides a path.
inline GPT build_model(const std::vector<std::string>& texts, int64_t context, uint64_t seed, double scale) {
  std::vector<std::string> errors;
  std::vector<catalog::ModuleArgs> mods;
  for (auto& t : texts) mods.push_back(catalog::resolve_arg(t, errors));
  ModelConfig c = tiny_config();
  c.context = context;
  auto v = model_view(c.n_layer, c.d_model, c.n_head, c.head_dim, c.context);
  if (errors.empty()) errors = catalog::check(mods, v, /*training=*/true);
  EXPECT_TRUE(errors.empty()) << (errors.empty() ? "" : errors[0]);
  c.layer_pattern = catalog::adjusted(mods, v).layer_pattern;
  c.modules = mods;
  GPT m(c);
  perturb(*m, seed, scale, true);
  return m;
}

}  // namespace slm::test
