#include "train/param_groups.h"

#include <cmath>
#include <cstdio>

#include "model/gpt.h"

namespace slm {

double adamw_lr_scale(int64_t d_model) { return std::pow(d_model / 768.0, -0.5); }

std::vector<ParamGroup> param_groups(const GPTImpl& model, const Substrate& s) {
  const double scale = adamw_lr_scale(s.model_dim());
  ParamGroup embed{"embed", "adamw", s.lr_embed * scale, 0.0, {}, {}};
  ParamGroup head{"head", "adamw", s.lr_head * scale, 0.0, {}, {}};
  ParamGroup matrix{"matrix", s.optimizer, s.optimizer == "muon" ? s.lr_matrix : s.lr_adamw, s.weight_decay, {}, {}};
  ParamGroup scalar{"scalar", "adamw", s.lr_scalar * scale, 0.0, {}, {}};
  const auto roles = model.param_roles();
  for (auto& p : model.named_parameters()) {
    ParamGroup* g = &scalar;
    switch (roles.at(p.key())) {
      case ParamRole::Embedding: g = &embed; break;
      case ParamRole::Head: g = &head; break;
      case ParamRole::Matrix: g = &matrix; break;
      case ParamRole::Scalar: g = &scalar; break;
    }
    g->names.push_back(p.key());
    g->params.push_back(p.value());
  }
  std::vector<ParamGroup> groups;
  for (auto* g : {&embed, &head, &matrix, &scalar})
    if (!g->params.empty()) groups.push_back(*g);
  return groups;
}

nlohmann::ordered_json param_groups_json(const std::vector<ParamGroup>& groups) {
  auto j = nlohmann::ordered_json::array();
  for (auto& g : groups)
    j.push_back({{"group", g.name},
                 {"optimizer", g.kind},
                 {"lr", g.base_lr},
                 {"weight_decay", g.weight_decay},
                 {"n_tensors", g.params.size()}});
  return j;
}

std::string describe_param_groups(const std::vector<ParamGroup>& groups, const Substrate& s) {
  const double scale = adamw_lr_scale(s.model_dim());
  std::string out = "lr (before the schedule):";
  char buf[160];
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    const char* why = "";
    if (g.name == "matrix") why = g.kind == "muon" ? "lr_matrix, not scaled" : "lr_adamw, not scaled";
    std::string reason = why;
    if (reason.empty()) {
      std::snprintf(buf, sizeof buf, "lr_%s %g x %.3g width scale", g.name.c_str(), scale == 0 ? 0.0 : g.base_lr / scale,
                    scale);
      reason = buf;
    }
    std::snprintf(buf, sizeof buf, "%s %s %s %.4g (%s, %zu tensors)", i ? "," : "", g.name.c_str(), g.kind.c_str(),
                  g.base_lr, reason.c_str(), g.params.size());
    out += buf;
  }
  return out + "; AdamW rates scale as 1/sqrt(d_model/768)\n";
}

}  // namespace slm
