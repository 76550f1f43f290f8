// The parameter counter of engine/control.h: the model as the trainer would build it, counted. Here,
// in slmlab_core, because it needs LibTorch; the engine's search gets it as a function.
#include "engine/control.h"
#include "model/gpt.h"

namespace slm::engine {

int64_t model_params(const Substrate& s, const std::vector<catalog::ModuleArgs>& mods) {
  torch::NoGradGuard ng;
  return GPT(s.model_config(mods))->n_params();
}

}  // namespace slm::engine
