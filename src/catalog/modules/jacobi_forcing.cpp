// The catalog row of Jacobi forcing (docs/modules.md, the inference lane; model side in
// model/jacobi_forcing.{h,cpp}): a Tier-2 training objective, a consistency loss on the model's own
// Jacobi trajectories beside the next-token loss, so that `generate --decode jacobi` commits more
// tokens per forward. Auxiliary only, never part of val_bpb.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_jacobi_forcing(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const int64_t L = a.i64("prompt") + 2 * a.i64("blocks") * a.i64("block");
  if (m.context > 0 && L > m.context)
    e.push_back("the packed row (prompt + 2 x blocks x block = " + std::to_string(L) + " tokens) exceeds the context " +
                std::to_string(m.context) + "; lower prompt or blocks");
  for (int64_t l = 0; l < m.depth; ++l)
    if (m.kind(l) != 'A') {
      e.push_back("layer " + std::to_string(l) + " is not attention; the noise-aware mask needs attention on every layer");
      break;
    }
  return e;
}

}  // namespace

const ModuleSpec& spec_jacobi_forcing() {
  static const ModuleSpec s{
      "jacobi_forcing",
      Tier::Integrated,
      "objective",
      "Jacobi forcing (Hu, Kou et al. 2025): the model's own Jacobi trajectories on training data, a progressive "
      "noise schedule and a noise-aware causal mask, a consistency loss pulling noisy blocks to their fixed point "
      "beside the next-token loss; more tokens per forward under generate --decode jacobi; never part of val_bpb",
      "no parameters; per used row, the trajectories (forward only: the prompt, at most block forwards of block "
      "tokens per block) and one forward + backward over prompt + 2 x blocks x block tokens",
      {
          {"block", ParamType::Int, "8", 2, 256, "N: tokens refined together (as generate --decode jacobi --block N)"},
          {"blocks", ParamType::Int, "4", 1, 256, "T: blocks decoded after each prompt; block j's noise is (j+1)/T"},
          {"prompt", ParamType::Int, "64", 1, 1 << 20, "P: a row's first P tokens are the prompt"},
          {"row_every", ParamType::Int, "4", 1, 1 << 20, "prompts from one row in row_every of each micro-batch (cost)"},
          {"weight", ParamType::Float, "1.0", 0, 100, "weight of the consistency loss beside the next-token loss"},
      },
      check_jacobi_forcing,
      nullptr,
      "block=4,blocks=2,prompt=8,row_every=1",
      nullptr,
      1,  // tensor parallel: not run under a split model yet (no test); no parameters of its own
  };
  return s;
}

}  // namespace slm::catalog
