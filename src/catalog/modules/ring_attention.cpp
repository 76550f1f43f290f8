// Ring attention's catalog row: Tier 3 (inference lane), `slmlab eval bpb --nproc P` (model/ring.h):
// context-parallel evaluation, one process's figure within fp32 rounding; never trained here.
#include "catalog/modules.h"

namespace slm::catalog {

const ModuleSpec& spec_ring_attention() {
  static const ModuleSpec s{
      "ring_attention",
      Tier::Inference,
      "inference",
      "Ring attention: each rank holds 1/P of the context (zigzag), K/V blocks pass around the ring, online softmax",
      "P - 1 K/V passes per attention layer; scores of Tl x Tl per block instead of T x T",
      {},  // the ranks are eval bpb's --nproc
      nullptr,
  };
  return s;
}

}  // namespace slm::catalog
