// The structure module (issue 23 §3; catalog row in catalog/modules/structure.cpp): the compiler
// structure of each input token, from an enriched data set (data build --enrich, data/enrich.h), as
// embeddings added to the token embedding before the first norm:
//   x = wte(idx) + E_cat[category] + E_role[role] + E_depth[min(depth, depth_max)]
// The tables start at zero, so the untrained module is the baseline bit for bit (the blocks see
// exactly rms_norm(wte(idx))); training moves them. Only the inputs change: the targets, the loss and
// val_bpb (next-token bits per byte on the same tokens) are the baseline's.
//   training    the loader feeds the columns of every position (Ctx::structure); the trainer refuses a
//               data set without them before any step
//   evaluation  val_bpb reads the validation documents' columns from the data set
//   generation  runs without a parse: every position reads as unparsed (code 0: category unknown, no
//               role, depth 0), the rows a file libclang could not parse trains
// Tensor parallel: refused at tp > 1 (catalog row); data parallel needs nothing of its own (each rank's
// loader feeds its own rows' columns; tests/test_structure.cpp checks dp 2 against one process).
//
// Shapes: B batch rows, T tokens, C model dim.
#include "catalog/modules.h"
#include "common/error.h"
#include "data/enrich.h"
#include "model/gpt.h"
#include "model/module.h"

#include <sstream>

namespace slm {

namespace {

struct StructureImpl : InputImpl {
  StructureImpl(int64_t C, const std::string& columns, int64_t depth_max) : columns(columns), depth_max(depth_max) {
    std::stringstream ss(columns);
    for (std::string c; std::getline(ss, c, ':');) {
      const int64_t rows = c == "category" ? data::kCategories : c == "role" ? data::kRoles : depth_max + 1;
      tables.push_back({c, register_parameter(c, torch::zeros({rows, C}))});
    }
  }
  // x: (B, T, C) token embeddings; ctx.structure: (B, T) codes or undefined (no parse: code 0).
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override {
    const torch::Tensor code = ctx.structure.defined()
                                   ? ctx.structure
                                   : torch::zeros({x.size(0), x.size(1)}, torch::TensorOptions().dtype(torch::kInt64).device(x.device()));
    SLM_CHECK(code.size(0) == x.size(0) && code.size(1) == x.size(1), "[structure] structure codes of shape ",
              code.sizes(), " for inputs of ", x.size(0), " x ", x.size(1), " tokens");
    auto y = x;
    for (auto& [name, w] : tables) {
      torch::Tensor i;  // (B, T) row of this column (the fields of data/loader.h structure_code)
      if (name == "category") i = code.remainder(16);
      else if (name == "role") i = torch::div(code, 16, "floor").remainder(16);
      else i = torch::div(code, 256, "floor").clamp_max(depth_max);
      y = y + torch::embedding(w, i).to(x.scalar_type());
    }
    return y;
  }
  std::map<std::string, ParamRole> param_roles() const override {
    std::map<std::string, ParamRole> r;
    for (auto& t : tables) r[t.first] = ParamRole::Embedding;  // rows looked up, like wte
    return r;
  }
  // No matmul: per table a gathered row added (C flops) and its gradient scattered back (C flops).
  double flops_per_token(int64_t) const override {
    return tables.empty() ? 0.0 : 2.0 * static_cast<double>(tables.size() * tables[0].second.size(1));
  }
  std::string describe() const override {
    return "structure embeddings (" + columns + ", depth_max " + std::to_string(depth_max) + ") added to the token embedding";
  }
  std::string columns;
  int64_t depth_max;
  std::vector<std::pair<std::string, torch::Tensor>> tables;
};

}  // namespace

void apply_structure(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  check_module(catalog::spec_structure(), args, cfg, plan);
  SLM_CHECK(!plan.input, "[structure] the model already has an input embedding module");
  const std::string columns = args.str("columns");
  const int64_t depth_max = args.i64("depth_max"), C = cfg.d_model;
  plan.input = [=] { return Input(std::make_shared<StructureImpl>(C, columns, depth_max)); };
}

}  // namespace slm
