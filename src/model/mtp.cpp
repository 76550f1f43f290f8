#include "model/mtp.h"

#include <cmath>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/fused_ce.h"

namespace slm {

MtpDepthImpl::MtpDepthImpl(const ModelConfig& c) {
  const int64_t C = c.d_model;
  proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(2 * C, C).bias(false)));
  {
    torch::NoGradGuard ng;
    const double bound = std::sqrt(3.0 / static_cast<double>(2 * C));  // the std of N(0, 1/(2C))
    proj->weight.uniform_(-bound, bound);
  }
  // The baseline's block, as model_plan builds it without modules.
  ModelConfig plain = c;
  plain.modules.clear();
  plain.n_layer = 1;
  block = register_module("block", Block(model_plan(plain).layers[0]));
}

MtpImpl::MtpImpl(const MtpOptions& o, const ModelConfig& c)
    : opt(o), d_model(c.d_model), vocab(c.vocab), doc_mask(c.doc_mask) {
  SLM_CHECK(o.depth >= 1 && o.depth < c.context, "[mtp] depth ", o.depth, " must be in 1..", c.context - 1,
            " (the context is ", c.context, "); use depth=1");
  SLM_CHECK(o.weight >= 0 && o.weight_after >= 0 && o.switch_step >= 0, "[mtp] weight ", o.weight,
            ", weight_after ", o.weight_after, " and switch_step ", o.switch_step, " must be >= 0");
  PrivateInit init(c.seed * 1000003ULL + 0x6d7470ULL);
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t k = 0; k < o.depth; ++k) blocks->push_back(MtpDepth(c));
}

torch::Tensor MtpImpl::counted(const torch::Tensor& doc_ids, int64_t T, int64_t k) const {
  if (!doc_mask || !doc_ids.defined()) return {};
  return doc_ids.slice(1, 0, T - k).eq(doc_ids.slice(1, k, T));  // documents are contiguous runs
}

void MtpImpl::add_loss(const torch::Tensor& h, GPTImpl& model, Ctx& ctx) {
  SLM_CHECK(ctx.targets.defined() && ctx.idx.defined(), "[mtp] needs the input ids and targets of the batch");
  const int64_t B = h.size(0), T = h.size(1), C = h.size(2), D = opt.depth;
  SLM_CHECK(T > D, "[mtp] a sequence of ", T, " tokens leaves no position for depth ", D,
            "; use sequences longer than mtp.depth");
  const double w = opt.weight_at(ctx.step);
  ctx.stats["mtp.weight"] = w;
  torch::Tensor prev = h;  // h^{k-1}: (B, T - k + 1, C)
  for (int64_t k = 1; k <= D; ++k) {
    const int64_t Tk = T - k;
    auto& m = *blocks->ptr(k - 1)->as<MtpDepthImpl>();
    auto e = rms_norm(model.wte(ctx.idx.slice(1, k)));  // (B, Tk, C): Emb(t_{i+k})
    auto x = m.proj(torch::cat({e, rms_norm(prev.slice(1, 0, Tk))}, -1)).to(h.scalar_type());
    // TRM_k over positions 0..Tk-1: the model's RoPE tables and document mask, cut to Tk.
    Ctx sub;
    sub.idx = ctx.idx.slice(1, k);
    if (ctx.doc_ids.defined()) sub.doc_ids = ctx.doc_ids.slice(1, 0, Tk);
    if (ctx.allowed.defined()) sub.allowed = ctx.allowed.slice(2, 0, Tk).slice(3, 0, Tk);
    sub.cos = ctx.cos;
    sub.sin = ctx.sin;
    sub.attn_logit_scale = ctx.attn_logit_scale;
    sub.step = ctx.step;
    sub.training = ctx.training;
    x = m.block->forward(x, sub);  // (B, Tk, C): h^k
    prev = x;

    auto hn = rms_norm(x).reshape({B * Tk, C});
    auto tg = ctx.targets.slice(1, k).reshape({B * Tk});  // t_{i+k+1}
    double frac = 1.0;
    auto keep = counted(ctx.doc_ids, T, k);
    if (keep.defined()) {
      auto rows = keep.reshape({B * Tk}).nonzero().squeeze(1);  // unique rows: index_select's backward adds once each
      frac = static_cast<double>(rows.size(0)) / static_cast<double>(B * Tk);
      hn = hn.index_select(0, rows);
      tg = tg.index_select(0, rows);
    }
    const std::string name = "mtp.d" + std::to_string(k);
    ctx.stats[name + ".counted"] = frac;
    // No counted target (every position k tokens before a boundary): a zero loss, not a mean over nothing.
    auto loss = hn.size(0) == 0 ? torch::zeros({}, h.options().dtype(torch::kFloat32))
                                : fused_linear_ce_mean(hn, model.lm_head->weight, tg, model.cfg.softcap,
                                                       device::matmul_dtype(hn));
    ctx.aux.push_back({name, loss, w / static_cast<double>(D)});
  }
}

double MtpImpl::flops_per_token(int64_t T) const {
  const double C = static_cast<double>(d_model), V = static_cast<double>(vocab);
  double f = 0;
  for (int64_t k = 1; k <= opt.depth && k < T; ++k) {
    const auto& m = *blocks->ptr(k - 1)->as<MtpDepthImpl>();
    const double share = static_cast<double>(T - k) / static_cast<double>(T);  // depth k runs T - k positions
    f += share * (6.0 * 2.0 * C * C + m.block->flops_per_token(T - k) + 6.0 * V * C);
  }
  return f;
}

std::string MtpImpl::describe() const {
  std::ostringstream os;
  const auto& b = *blocks->ptr(0)->as<MtpDepthImpl>()->block;
  os << "mtp (depth " << opt.depth << ", weight " << opt.weight;
  if (opt.switch_step > 0) os << " then " << opt.weight_after << " from step " << opt.switch_step;
  os << "; shared embedding and head; per depth a 2C->C projection + " << b.mixer->describe() << " + "
     << b.ffn->describe() << (doc_mask ? "; targets within the document" : "") << ")";
  return os.str();
}

MtpOptions MtpOptions::from(const catalog::ModuleArgs& args) {
  MtpOptions o;
  o.depth = args.i64("depth");
  o.weight = args.f64("weight");
  o.weight_after = args.f64("weight_after");
  o.switch_step = args.i64("switch_step");
  return o;
}

void apply_mtp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const MtpOptions o = MtpOptions::from(args);
  plan.objectives.push_back([o, cfg] { return Objective(std::make_shared<MtpImpl>(o, cfg)); });
}

}  // namespace slm
