// The catalog row of MTP (docs/modules.md section 5; docs/decisions.md row "MTP"; model side in
// model/mtp.{h,cpp}): DeepSeek-V3's D sequential prediction modules, an auxiliary loss only.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_mtp(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const int64_t d = a.i64("depth");
  if (m.context > 0 && d >= m.context)
    e.push_back("depth " + std::to_string(d) + " leaves no position at context " + std::to_string(m.context) +
                " (depth k predicts k + 1 tokens ahead); use depth=1");
  return e;
}

}  // namespace

const ModuleSpec& spec_mtp() {
  static const ModuleSpec s{
      "mtp",
      Tier::Training,
      "objective",
      "multi-token prediction (DeepSeek-V3): D sequential modules, each a projection of [emb(t_{i+k}); h] and a "
      "transformer block, predicting token i+k+1 through the shared embedding and head; auxiliary loss only, "
      "never part of val_bpb",
      "per depth 2 C^2 + one block's matrix params; ~6 (2 C^2 + block + V C) flops/token each (the head's V C "
      "dominates at small C)",
      {
          {"depth", ParamType::Int, "1", 1, 8, "D sequential modules; depth k predicts the token k + 1 ahead (V3: 1)"},
          {"weight", ParamType::Float, "0.3", 0, 10, "loss weight lambda; L_MTP = lambda / D x sum of the depths' losses"},
          {"weight_after", ParamType::Float, "0.1", 0, 10, "lambda from switch_step on (V3: 0.3, then 0.1)"},
          {"switch_step", ParamType::Int, "0", 0, 1 << 30, "step at which lambda becomes weight_after; 0 = never"},
      },
      check_mtp,
      nullptr,
      "depth=2",
      nullptr,
      2,  // tensor parallel: its blocks split as the model's, its projection and the shared head replicated
  };
  return s;
}

}  // namespace slm::catalog
