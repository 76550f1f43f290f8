// The optimizer's parameter groups, built from the roles the model's parameters carry
// (model/module.h ParamRole): which rule and which learning rate each parameter trains with.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/optim.h"
#include "train/substrate.h"

namespace slm {

struct GPTImpl;

// AdamW rates are given for a model of width 768 and scale as 1/sqrt(d_model / 768) (nanochat);
// Muon's are not scaled. The factor for width d.
double adamw_lr_scale(int64_t d_model);

// Groups in order embed, head, matrix, scalar (empty ones left out), each parameter in
// named_parameters order:
//   embed  (Embedding) adamw, lr_embed x scale, no decay
//   head   (Head)      adamw, lr_head x scale, no decay
//   matrix (Matrix)    the substrate's optimizer: muon at lr_matrix, or adamw at lr_adamw; weight_decay
//   scalar (Scalar)    adamw, lr_scalar x scale, no decay
std::vector<ParamGroup> param_groups(const GPTImpl& model, const Substrate& s);

// The groups as the run records them: [{"group", "optimizer", "lr", "weight_decay", "n_tensors"}],
// lr the effective base rate (before the schedule's factor).
nlohmann::ordered_json param_groups_json(const std::vector<ParamGroup>& groups);
// One line for the start of a run: "lr: embed adamw 0.0566 (lr_embed 0.2 x 0.283 width scale), ...".
std::string describe_param_groups(const std::vector<ParamGroup>& groups, const Substrate& s);

}  // namespace slm
