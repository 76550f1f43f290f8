// EAGLE-2's catalog row: Tier 3 (inference lane), `slmlab generate --speculative eagle2 --draft
// DRAFT_DIR` with a draft head from `slmlab draft train RUN_DIR` (model/eagle.h, train/draft.h);
// greedy's output, never part of a training ablation. Defaults: the paper's (60 draft tokens,
// depth 6, top-k 10).
#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_eagle2() {
  static const ModuleSpec s{
      "eagle2",
      Tier::Inference,
      "inference",
      "EAGLE-2 speculative decoding: a one-layer draft head on the target's features drafts a dynamic tree (global "
      "confidence), one target forward verifies it with a tree mask (lossless)",
      "per cycle: depth draft-head forwards and one target forward over 1 + total_tokens tokens; the accepted path "
      "plus one token emitted",
      {
          {"depth", ParamType::Int, "6", 1, 64, "levels of draft tokens below the root (draft forwards per cycle)"},
          {"top_k", ParamType::Int, "10", 1, 256, "children per expanded node, and nodes expanded per level"},
          {"total_tokens", ParamType::Int, "60", 1, 1024, "draft tokens verified per target forward"},
      },
      nullptr,
  };
  return s;
}

}  // namespace slm::catalog
