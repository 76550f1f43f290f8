// The catalog rows, one per module, each defined in src/catalog/modules/<name>.cpp beside its
// parameter checks. catalog.cpp lists them in one table.
#pragma once
#include "catalog/catalog.h"

namespace slm::catalog {

const ModuleSpec& spec_mamba3();  // mixers
const ModuleSpec& spec_dsa();
const ModuleSpec& spec_engram();  // memory
const ModuleSpec& spec_mhc();     // residual (catalog/modules/mhc.cpp)
const ModuleSpec& spec_mtp();     // objective (catalog/modules/mtp.cpp)
const ModuleSpec& spec_moe();     // routing (catalog/modules/moe.cpp)
const ModuleSpec& spec_mod();     // routing (catalog/modules/mod.cpp)
const ModuleSpec& spec_gateskip();  // depth (catalog/modules/gateskip.cpp)
const ModuleSpec& spec_flexidepth();  // depth (catalog/modules/flexidepth.cpp)
// MoD's routed layers for its resolved arguments at a geometry (shared by its check and its apply).
std::vector<int64_t> mod_layers(const ModuleArgs& args, const ModelView& model);
const ModuleSpec& spec_cbp();     // plasticity (catalog/modules/cbp.cpp)
const ModuleSpec& spec_top();     // objective (catalog/modules/top.cpp)
const ModuleSpec& spec_ncp();     // objective (catalog/modules/ncp.cpp)
const ModuleSpec& spec_fim();      // data transforms (catalog/modules/fim.cpp)
const ModuleSpec& spec_ifim();
const ModuleSpec& spec_sri();
const ModuleSpec& spec_yarn();

}  // namespace slm::catalog
