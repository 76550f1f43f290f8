// The model side of every catalog module, by catalog name. A module's file defines its apply; this
// table lists it. tests/test_modules.cpp checks that every Tier 1-2 catalog module that is not a
// data transform has exactly one entry here, and runs the registry-wide checks on each.
#include "model/module.h"

#include "model/cbp.h"
#include "model/dsa.h"
#include "model/engram.h"
#include "model/mamba3.h"
#include "model/mhc.h"
#include "model/moe.h"
#include "model/mod.h"
#include "model/gateskip.h"
#include "model/flexidepth.h"
#include "model/mtp.h"
#include "model/ncp.h"
#include "model/top.h"

namespace slm {

const std::vector<ModelModule>& model_modules() {
  static const std::vector<ModelModule> t = {
      {"mamba3", apply_mamba3},
      {"dsa", apply_dsa},
      {"engram", apply_engram},
      {"mhc", apply_mhc},
      {"mtp", apply_mtp},
      {"moe", apply_moe},
      {"mod", apply_mod},
      {"gateskip", apply_gateskip},
      {"flexidepth", apply_flexidepth},
      {"cbp", apply_cbp},
      {"top", apply_top},
      {"ncp", apply_ncp},
  };
  return t;
}

const ModelModule* find_model_module(const std::string& name) {
  for (auto& m : model_modules())
    if (name == m.name) return &m;
  return nullptr;
}

}  // namespace slm
