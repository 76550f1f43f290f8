// val_bpb, the headline metric (docs/decisions.md): the model's summed nats over held-out targets
// that carry bytes, over ln 2 x those bytes, special tokens excluded by id, never transformed data.
// The trainer's evaluations, `slmlab eval bpb` and data-parallel ranks all call these functions.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/gpt.h"

namespace slm {

// val_bpb: nats summed over targets that carry bytes / (ln 2 x their bytes), over a budget of
// `tokens` targets in rows of `context` spread evenly over the whole validation split, no token
// scored twice (data::eval_rows; fixed rows, fixed order, never transformed), `batch_rows` rows per
// forward pass.
// `stats`, when given, receives the means over the batches of what modules report in evaluation.
double val_bpb(GPTImpl& model, const data::DataSet& ds, int64_t context, int64_t tokens, int64_t batch_rows, bool bf16,
               torch::Device dev, std::map<std::string, double>* stats = nullptr);
// Sums from val_bpb_parts (with "eval.batches") turned into means.
std::map<std::string, double> eval_stat_means(const std::map<std::string, double>& sums);
// The same evaluation split between data-parallel ranks: {nats, bytes} of each batch of batch_rows,
// in order, where rank `rank` of `world` computes batches b with b % world == rank and leaves the
// others 0. Summed over the ranks (x + 0 is exact) and folded by val_bpb_total in batch order, it
// gives val_bpb's figure bit for bit.
// `stats`, when given, receives the sums over this rank's batches of what modules report in
// evaluation, plus "eval.batches", their count: divide to get means (sum over ranks first).
std::vector<double> val_bpb_parts(GPTImpl& model, const data::DataSet& ds, int64_t context, int64_t tokens,
                                  int64_t batch_rows, bool bf16, torch::Device dev, int rank = 0, int world = 1,
                                  std::map<std::string, double>* stats = nullptr);
double val_bpb_total(const std::vector<double>& parts);
// With ring attention on (GPTImpl::use_ring), every rank runs every batch (world 1) on its zigzag
// share of each row and returns the {nats, bytes} of its own targets; summed over the ring's ranks,
// they are the whole rows' (summation order aside: a tolerance, not bit for bit).

}  // namespace slm
