// The catalog row of NCP (docs/modules.md section 10; docs/decisions.md row "NCP"; model side in
// model/ncp.{h,cpp}): next concept prediction, an auxiliary loss over a stop-gradient VQ codebook.
#include <cmath>
#include <string>
#include <vector>

#include "catalog/modules.h"

namespace slm::catalog {

namespace {

std::vector<std::string> check_ncp(const ModuleArgs& a, const ModelView& m) {
  std::vector<std::string> e;
  const int64_t span = a.i64("span"), segments = a.i64("segments"), codes = a.i64("codes");
  if (std::log2(static_cast<double>(codes)) * static_cast<double>(segments) >= 62)
    e.push_back("codes^segments = " + std::to_string(codes) + "^" + std::to_string(segments) +
                " concept ids overflow 62 bits; lower codes or segments (the spec: 2-4 x 64-256)");
  if (m.d_model > 0 && m.d_model % segments != 0) {
    std::string divisors;
    for (int64_t s = 1; s <= 8; ++s)
      if (m.d_model % s == 0) divisors += (divisors.empty() ? "" : ",") + std::to_string(s);
    e.push_back("segments " + std::to_string(segments) + " does not divide d_model " + std::to_string(m.d_model) +
                "; pick segments from " + divisors);
  }
  if (m.context > 0 && 2 * span > m.context)
    e.push_back("span " + std::to_string(span) + " leaves no concept pair in a context of " + std::to_string(m.context) +
                " (a pair needs 2 x span tokens); use span <= " + std::to_string(m.context / 2));
  return e;
}

}  // namespace

const ModuleSpec& spec_ncp() {
  static const ModuleSpec s{
      "ncp",
      Tier::Training,
      "objective",
      "next concept prediction (Liu et al. 2026): every span tokens of a document pooled into a concept, "
      "vector-quantized (segments x codes, stop-gradient EMA codebook with dead-code restart), the next concept's "
      "code predicted from the current one; codebook use logged; auxiliary loss only, never part of val_bpb",
      "segments x codes x C params (the predictor) + the codebook buffers; ~(6 segments + 2) codes C / span "
      "flops/token",
      {
          {"span", ParamType::Int, "4", 1, 64, "k, tokens per concept, counted from each document's start (spec: 4-8)"},
          {"segments", ParamType::Int, "2", 1, 8, "S codebook segments, each over C / S dims (spec: 2-4)"},
          {"codes", ParamType::Int, "64", 2, 65536, "N codes per segment; N^S concepts in all (spec: 64-256)"},
          {"decay", ParamType::Float, "0.95", 0, 0.9999, "EMA decay of the codebook (0.95 follows a 100-step run)"},
          {"weight", ParamType::Float, "1", 0, 10, "weight of L_NCP beside the next-token loss"},
      },
      check_ncp,
      nullptr,
      "codes=8",
      nullptr,
      // Tensor parallel, replicated (as lm_head): it reads the final hidden state, whole on every TP
      // rank, and its head and codebook are the same on every rank, so every rank computes the same
      // loss and codebook update; the trunk's split blocks take its gradient as they take lm_head's.
      0,
  };
  return s;
}

}  // namespace slm::catalog
