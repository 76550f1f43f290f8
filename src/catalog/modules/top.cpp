// The catalog row of TOP (docs/modules.md section 9; docs/decisions.md row "TOP"; model side in
// model/top.{h,cpp}): token order prediction, an auxiliary ListNet loss through its own head.
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_top() {
  static const ModuleSpec s{
      "top",
      Tier::Training,
      "objective",
      "token order prediction (Zuhri et al. 2025): a separate unembedding ranks the upcoming tokens by how soon they "
      "appear within a window (ListNet over scores W - offset of each token's first occurrence, bounded by the "
      "document); batched and chunked, no (B, T, V) tensor; auxiliary loss only, never part of val_bpb",
      "V C params (the head, dropped at inference); 6 V C flops/token, as much as lm_head, plus a softmax over V "
      "per token",
      {
          {"window", ParamType::Int, "4096", 1, 65536,
           "W, the lookahead in targets (the paper: 4096, the sequence length); target weights fall as e^-offset, "
           "so offsets past 32 (< 1e-14 of the mass) are not computed"},
          {"weight", ParamType::Float, "1", 0, 10, "weight of L_TOP beside the next-token loss (the paper: 1)"},
      },
      nullptr,
      nullptr,
      "window=4",
      nullptr,
      4,  // tensor parallel: the head and the loss replicated (read the replicated final hidden state)
  };
  return s;
}

}  // namespace slm::catalog
