// Objective-aware metrics on held-out code (issue 21 §1): the bits per byte of a held-out middle
// given its context, in the forms the code objectives train for (data/transforms.h):
//   fim          FIM_PREFIX P FIM_SUFFIX S FIM_MIDDLE M              M scored (spans as the fim transform cuts)
//   ifim         FIM_PREFIX P FIM_SUFFIX S FIM_INSTRUCTION I FIM_MIDDLE M   M scored (spans at documented
//                lines as the ifim transform cuts them, I its doc comment, lifted by the same rule)
//   ifim_noinst  the ifim samples without FIM_INSTRUCTION I: the same M, so ifim vs ifim_noinst is what
//                the instruction is worth
//   sri          prompt SRI_SEARCH region SRI_DIVIDER region' SRI_REPLACE    region' (the replacement) scored
// Counted exactly like val_bpb: nats summed over the scored targets that carry bytes, over ln 2 x
// their bytes; every other token is context only. The samples are built from the validation split
// only (never trained on), deterministically from `seed`: documents in a seeded order, each cut by
// the transform function itself with the catalog row's default options (the run's own options
// never enter, so every arm of a comparison is scored on the same samples) and PSM order (spm
// off: a fixed task). A document whose sample does not fit one row of `context` + 1 tokens is cut
// to a seeded window of whole lines, halved until it fits; a sample whose scored part is empty
// (or, for ifim, a window without a doc comment) is skipped.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/gpt.h"

namespace slm {

// The seed of the samples the trainer and `slmlab eval bpb --metric` score: one fixed set per data
// set and context, so every run (and every arm of a comparison) is scored on the same middles.
constexpr uint64_t kInfillSeed = 21;

enum class InfillMetric { Fim, Ifim, IfimNoInst, Sri };
const char* infill_metric_name(InfillMetric m);  // "fim" | "ifim" | "ifim_noinst" | "sri"
// Throws slm::Error naming the valid values.
InfillMetric parse_infill_metric(const std::string& name);

struct InfillSample {
  uint32_t doc = 0;             // validation document index
  std::vector<int32_t> tokens;  // the whole sample, <= context + 1 tokens
  int64_t begin = 0, end = 0;   // tokens[begin, end) are scored (as targets of the previous position)
  std::string scored;           // the bytes of the scored text (the middle or the replacement)
};

// The number of rows an eval budget of `tokens` gives: as many rows as val_bpb scores with it.
inline int64_t infill_rows(int64_t tokens, int64_t context) { return std::max<int64_t>(1, tokens / context); }

// At most `rows` samples (one row each), in the seeded document order, wrapping never.
std::vector<InfillSample> infill_samples(const data::DataSet& ds, InfillMetric m, int64_t context, int64_t rows,
                                         uint64_t seed);

// {nats, bytes} of each batch of `batch_rows` samples, in order, over their scored targets; rank
// `rank` of `world` data-parallel ranks computes batches b with b % world == rank and leaves the
// others 0 (as val_bpb_parts): summed over the ranks and folded by val_bpb_total, the figure is the
// single-process one bit for bit.
std::vector<double> infill_parts(GPTImpl& model, const data::DataSet& ds, const std::vector<InfillSample>& samples,
                                 int64_t context, int64_t batch_rows, bool bf16, torch::Device dev, int rank = 0,
                                 int world = 1);

// The metric: bits per scored byte over infill_samples(ds, m, context, rows, seed); infinity when
// no sample could be built. Cost: at most `rows` rows of `context`, i.e. no more than val_bpb over
// rows x context tokens.
double infill_bpb(GPTImpl& model, const data::DataSet& ds, InfillMetric m, int64_t context, int64_t rows,
                  uint64_t seed, int64_t batch_rows, bool bf16, torch::Device dev);

}  // namespace slm
