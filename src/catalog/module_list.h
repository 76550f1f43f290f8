// The one list of catalog modules. The catalog table (catalog.cpp), the model registry
// (model/registry.cpp) and the loader's transform registry (data/transforms.cpp) are all built from
// it, so a module is named here once and nowhere else by hand. Plain macros, no includes: the
// Torch-free catalog and the LibTorch model side both include it.
//
// X(name, side): `name` is the catalog name; it must have a row `const ModuleSpec& spec_<name>()`
// in src/catalog/modules/ (catalog.cpp declares and lists it). `side` says where it acts:
//   MODEL  `void apply_<name>(const catalog::ModuleArgs&, const ModelConfig&, ModelPlan&)` in
//          src/model/<name>.cpp edits the model plan (model/module.h)
//   DATA   `void add_<name>(const catalog::ModuleArgs&, TransformSet&)` in src/data/ turns on a
//          loader transform (data/transforms.h); family "data"
//          (structure is a MODEL module of family "data": it reads the data set's columns, data/loader.h)
//   INFER  the inference lane only (Tier 3): read by `slmlab eval` and generation, never trained
// A missing spec_/apply_/add_ function is a link error; tests/test_modules.cpp checks that each
// row's name and family agree with its entry here.
#pragma once

#define SLM_MODULES(X) \
  X(mamba3, MODEL)     \
  X(dsa, MODEL)        \
  X(engram, MODEL)     \
  X(mhc, MODEL)        \
  X(mtp, MODEL)        \
  X(moe, MODEL)        \
  X(mod, MODEL)        \
  X(gateskip, MODEL)   \
  X(flexidepth, MODEL) \
  X(cbp, MODEL)        \
  X(top, MODEL)        \
  X(ncp, MODEL)        \
  X(jacobi_forcing, MODEL) \
  X(structure, MODEL)  \
  X(fim, DATA)         \
  X(ifim, DATA)        \
  X(sri, DATA)         \
  X(yarn, INFER)           \
  X(jacobi_decode, INFER)  \
  X(ring_attention, INFER) \
  X(eagle2, INFER)          \
  X(adept, INFER)

// SLM_MODULE_IF(side, WANT, text...) expands to `text` when side is WANT, else to nothing: the
// registries pick their side's entries with it, e.g. X(name, side) SLM_MODULE_IF(side, MODEL, ...).
#define SLM_MODULE_IF(side, want, ...) SLM_MODULE_IF_##want##_##side(__VA_ARGS__)
#define SLM_MODULE_IF_MODEL_MODEL(...) __VA_ARGS__
#define SLM_MODULE_IF_MODEL_DATA(...)
#define SLM_MODULE_IF_MODEL_INFER(...)
#define SLM_MODULE_IF_DATA_MODEL(...)
#define SLM_MODULE_IF_DATA_DATA(...) __VA_ARGS__
#define SLM_MODULE_IF_DATA_INFER(...)
#define SLM_MODULE_IF_INFER_MODEL(...)
#define SLM_MODULE_IF_INFER_DATA(...)
#define SLM_MODULE_IF_INFER_INFER(...) __VA_ARGS__

namespace slm::catalog {

// How many modules the list holds, in all and per side; each registry static_asserts its size.
#define SLM_MODULE_COUNT(name, side) +1
#define SLM_MODULE_COUNT_MODEL(name, side) SLM_MODULE_IF(side, MODEL, +1)
#define SLM_MODULE_COUNT_DATA(name, side) SLM_MODULE_IF(side, DATA, +1)
inline constexpr int kModuleCount = 0 SLM_MODULES(SLM_MODULE_COUNT);
inline constexpr int kModelModuleCount = 0 SLM_MODULES(SLM_MODULE_COUNT_MODEL);
inline constexpr int kDataModuleCount = 0 SLM_MODULES(SLM_MODULE_COUNT_DATA);
#undef SLM_MODULE_COUNT
#undef SLM_MODULE_COUNT_MODEL
#undef SLM_MODULE_COUNT_DATA

// The names in list order. No name twice: a constant expression, checked here.
#define SLM_MODULE_NAME(name, side) #name,
inline constexpr const char* kModuleNames[] = {SLM_MODULES(SLM_MODULE_NAME)};
#undef SLM_MODULE_NAME
constexpr bool module_names_distinct() {
  auto same = [](const char* a, const char* b) {
    while (*a && *a == *b) ++a, ++b;
    return *a == *b;
  };
  for (int i = 0; i < kModuleCount; ++i)
    for (int j = i + 1; j < kModuleCount; ++j)
      if (same(kModuleNames[i], kModuleNames[j])) return false;
  return true;
}
static_assert(module_names_distinct(), "module_list.h names a module twice");

}  // namespace slm::catalog
