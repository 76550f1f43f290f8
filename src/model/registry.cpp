// The model side of every catalog module, by catalog name: one entry per MODEL module of
// catalog/module_list.h, whose file src/model/<name>.cpp defines apply_<name>. tests/test_modules.cpp
// runs the registry-wide checks on each.
#include "catalog/module_list.h"
#include "model/module.h"

namespace slm {

// The applies, declared here from the list so the registry needs no header per module.
#define SLM_MODULE_APPLY(name, side) \
  SLM_MODULE_IF(side, MODEL, void apply_##name(const catalog::ModuleArgs&, const ModelConfig&, ModelPlan&);)
SLM_MODULES(SLM_MODULE_APPLY)
#undef SLM_MODULE_APPLY

const std::vector<ModelModule>& model_modules() {
#define SLM_MODULE_ENTRY(name, side) SLM_MODULE_IF(side, MODEL, ModelModule{#name, apply_##name},)
  static const std::vector<ModelModule> t = {SLM_MODULES(SLM_MODULE_ENTRY)};
#undef SLM_MODULE_ENTRY
  return t;
}

const ModelModule* find_model_module(const std::string& name) {
  for (auto& m : model_modules())
    if (name == m.name) return &m;
  return nullptr;
}

}  // namespace slm
