// Fixtures shared by the model and module tests (LibTorch): the registry-wide tiny geometry and
// seeded weight noise, so that zero-initialized projections do not hide a broken path.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>

#include "model/gpt.h"
#include "test_util.h"

namespace slm::test {

// The catalog rows' tiny geometry (their `tiny` arguments are checked against it): n_layer x 32,
// 2 heads of 16, context 32, vocabulary 300.
inline ModelConfig tiny_config(int64_t n_layer = 3) {
  ModelConfig c;
  c.vocab = 300;
  c.n_layer = n_layer;
  c.d_model = 32;
  c.n_head = 2;
  c.head_dim = 16;
  c.context = 32;
  return c;
}

// The tiny geometry (or `c`) with one catalog module on, given these arguments over its defaults.
inline ModelConfig tiny_with(const std::string& module, const std::map<std::string, std::string>& given = {},
                             ModelConfig c = tiny_config()) {
  c.modules = {module_args(module, given)};
  return c;
}

// Adds seeded N(0, scale^2) noise to every parameter; `skip_scalars` leaves 0-dimensional ones
// (gates' biases, scalar factors) as initialized.
inline void perturb(torch::nn::Module& m, uint64_t seed, double scale, bool skip_scalars = false) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& p : m.parameters())
    if (!skip_scalars || p.dim() >= 1) p.add_(torch::randn_like(p) * scale);
}

// Replaces every parameter by seeded N(0, std^2) values.
inline void fill_normal(torch::nn::Module& m, uint64_t seed, double std) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& p : m.parameters()) p.normal_(0, std);
}

}  // namespace slm::test
