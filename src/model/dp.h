// Data parallelism as model code sees it. Every data-parallel rank holds the same model and trains it
// on its own rows while the trainer averages the gradients. A module whose state follows statistics
// of the batch (continual backprop's utilities, MoE's expert load, NCP's codebook, GateSkip's eval
// threshold) must take its decisions from the whole step's numbers, or the replicas drift apart. So
// the trainer hands the model its data-parallel group (GPTImpl::dp, passed on in Ctx::dp and
// StepCtx::dp), the same two collectives as the tensor-parallel group (model/tp.h), and a module
// reduces its statistics through these functions before it uses them. Without a group (one process,
// the tests) they do nothing, so single-process numerics are untouched.
//
// Collective: every rank of the group makes the same calls in the same order, so a module calls them
// only on paths every rank takes in step (training forwards and after_step), never in evaluation,
// where ranks score different numbers of batches.
#pragma once
#include <torch/torch.h>

#include "model/tp.h"

namespace slm {

// Sums t over the group, in place (t contiguous); nothing when g is null or of one rank.
void dp_sum(const TpGroupPtr& g, torch::Tensor& t);
// Every rank's rows of t (n_r, ...), concatenated in rank order; n_r may differ between ranks (the
// trailing dims may not). t itself when g is null or of one rank.
torch::Tensor dp_gather_rows(const TpGroupPtr& g, const torch::Tensor& t);
// True when g spans more than one rank (the module must reduce).
inline bool dp_active(const TpGroupPtr& g) { return g && g->size > 1; }

}  // namespace slm
