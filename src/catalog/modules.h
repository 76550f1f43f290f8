// The catalog rows, one per entry of catalog/module_list.h, each defined in
// src/catalog/modules/<name>.cpp beside its parameter checks. catalog.cpp lists them in one table.
#pragma once
#include "catalog/catalog.h"
#include "catalog/module_list.h"

namespace slm::catalog {

// One row per entry of the list: spec_mamba3(), spec_dsa(), ...
#define SLM_MODULE_SPEC(name, side) const ModuleSpec& spec_##name();
SLM_MODULES(SLM_MODULE_SPEC)
#undef SLM_MODULE_SPEC

// The shared rule for a module's "layers" parameter: no layer listed twice, none at or beyond the
// model's depth (skipped while the depth is unknown). `empty_means` is what an empty list does ("every
// layer"), or nullptr when the list must not be empty. Appends one message per violation to `e`.
void check_layers(const ModuleArgs& args, const ModelView& model, const char* empty_means,
                  std::vector<std::string>& e);

// MoD's routed layers for its resolved arguments at a geometry (shared by its check and its apply).
std::vector<int64_t> mod_layers(const ModuleArgs& args, const ModelView& model);

// MoE's expert hidden size h for its resolved arguments: expert_hidden, or 0 = 4 d_model /
// (n_shared + top_k), at least 1 (shared by its check, which splits h over tp, and the model side).
int64_t moe_expert_hidden(int64_t expert_hidden, int64_t d_model, int64_t n_shared, int64_t top_k);

}  // namespace slm::catalog
