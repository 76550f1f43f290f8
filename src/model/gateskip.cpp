#include "model/gateskip.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "catalog/modules.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

double gateskip_ratio(const GateSkipOptions& o, int64_t step) {
  if (step < o.warmup) return 0.0;
  const double t = o.ramp_steps > 0 ? std::min(1.0, static_cast<double>(step - o.warmup) / o.ramp_steps) : 1.0;
  return o.skip_start + (o.skip_final - o.skip_start) * t;
}

torch::Tensor gateskip_budget_mask(const torch::Tensor& importance, double ratio) {
  const int64_t T = importance.size(1);
  const int64_t k = std::min<int64_t>(T, std::llround(ratio * static_cast<double>(T)));
  auto mask = torch::zeros(importance.sizes(), importance.options().dtype(torch::kBool));
  if (k <= 0) return mask;
  // A stable sort: equal importances skip the earlier position first, the same on every run.
  auto order = std::get<1>(importance.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  return mask.scatter(1, order.slice(1, 0, k), true);
}

GateSkipWrapImpl::GateSkipWrapImpl(const GateSkipOptions& o) : opt(o) {
  SLM_CHECK(o.skip_start >= 0 && o.skip_final >= 0 && o.skip_start <= 1 && o.skip_final <= 1 && o.eval_skip >= 0 &&
                o.eval_skip < 1,
            "[gateskip] layer ", o.layer, ": skip_start (", o.skip_start, ") and skip_final (", o.skip_final,
            ") must be in [0, 1] and eval_skip (", o.eval_skip, ") in [0, 1)");
  PrivateInit init(o.seed * 1000003ULL + 0x67736bULL + 7919ULL * static_cast<uint64_t>(o.layer));
  auto lin = [&] { return torch::nn::Linear(torch::nn::LinearOptions(o.d_model, o.d_model).bias(true)); };
  mixer_gate = register_module("mixer_gate", lin());
  ffn_gate = register_module("ffn_gate", lin());
  {
    torch::NoGradGuard ng;
    for (auto* g : {&mixer_gate, &ffn_gate}) {
      (*g)->weight.normal_(0.0, 0.01);
      (*g)->bias.fill_(o.gate_bias);  // near-identity gates: sigmoid(5) = 0.993
    }
  }
  eval_threshold = register_buffer("eval_threshold", torch::full({2}, -1.0));
}

torch::Tensor GateSkipWrapImpl::gate(int64_t which, const torch::Tensor& x) {
  auto& lin = which == 0 ? mixer_gate : ffn_gate;
  return torch::sigmoid(lin(rms_norm(x).detach()));  // detached: the gate does not reshape the residual
}

torch::Tensor GateSkipWrapImpl::branch(int64_t which, const torch::Tensor& x,
                                       const std::function<torch::Tensor(const torch::Tensor&)>& f, Ctx& ctx,
                                       torch::Tensor* skipped, torch::Tensor* gate_out) {
  auto g = gate(which, x);  // (B, T, C)
  torch::Tensor skip;       // (B, T) bool, undefined = none
  {
    torch::NoGradGuard ng;
    auto imp = g.detach().to(torch::kFloat32).mean(-1);  // (B, T)
    if (ctx.training && !ctx.caches) {
      const double r = gateskip_ratio(opt, ctx.step);
      if (r > 0) skip = gateskip_budget_mask(imp, r);
      if (opt.eval_skip > 0) {  // calibrate the causal eval threshold on this batch's distribution
        // Data parallel (model/dp.h): the quantile of every rank's tokens, so every rank calibrates
        // the same threshold.
        auto flat = ctx.dp ? dp_gather_rows(ctx.dp, imp.flatten().contiguous()) : imp.flatten();
        const int64_t k = std::clamp<int64_t>(std::llround(opt.eval_skip * flat.numel()), 1, flat.numel());
        auto q = std::get<0>(flat.kthvalue(k)).to(eval_threshold.dtype());
        auto cur = eval_threshold[which];
        eval_threshold[which].copy_(
            torch::where(cur < 0, q, opt.threshold_ema * cur + (1.0 - opt.threshold_ema) * q));
      }
    } else if (opt.eval_skip > 0) {
      const double thr = eval_threshold[which].item<double>();
      if (thr >= 0) skip = imp.le(thr);  // per token against a fixed value: causal
    }
  }
  auto term = g.to(x.scalar_type()) * f(x);
  if (skip.defined()) term = term.masked_fill(skip.unsqueeze(-1), 0);
  if (skipped) *skipped = skip.defined() ? skip : torch::zeros({x.size(0), x.size(1)}, torch::kBool);
  if (gate_out) *gate_out = g;
  return x + term;
}

torch::Tensor GateSkipWrapImpl::forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) {
  SLM_CHECK(x.dim() == 3, "[gateskip] layer ", opt.layer, " expects the residual (B, T, C), got ", x.sizes(),
            "; gateskip cannot wrap a layer of residual streams (mhc)");
  torch::Tensor skip_m, skip_f, g_m, g_f;
  auto x1 = block.with_branches(x, ctx);
  auto h = branch(0, x1, [&](const torch::Tensor& u) { return block.mixer_delta(u, ctx); }, ctx, &skip_m, &g_m);
  auto out = branch(1, h, [&](const torch::Tensor& u) { return block.ffn_delta(u, ctx); }, ctx, &skip_f, &g_f);
  if (ctx.training && !ctx.caches && opt.sparsity > 0) {
    auto l2 = (g_m.to(torch::kFloat32).pow(2).mean() + g_f.to(torch::kFloat32).pow(2).mean()) / 2;
    ctx.aux.push_back({"gateskip.L" + std::to_string(opt.layer), l2, opt.aux_weight});
  }
  if (!ctx.caches) {  // what was skipped: training's budget, or evaluation's causal threshold
    torch::NoGradGuard ng;
    auto s = torch::stack({skip_m.to(torch::kFloat32).mean(), skip_f.to(torch::kFloat32).mean(),
                           g_m.to(torch::kFloat32).mean(), g_f.to(torch::kFloat32).mean()})
                 .to(torch::kCPU, torch::kFloat64);  // one transfer per layer
    auto v = s.accessor<double, 1>();
    const std::string L = "gateskip.L" + std::to_string(opt.layer);
    ctx.stats[L + ".skip_attn"] = v[0];
    ctx.stats[L + ".skip_ffn"] = v[1];
    ctx.stats[L + ".gate"] = (v[2] + v[3]) / 2;
    double& n = ctx.stats["gateskip.n_layers"];
    auto mean = [&](const char* key, double val) { ctx.stats[key] = (ctx.stats[key] * n + val) / (n + 1); };
    mean("gateskip.skipped", (v[0] + v[1]) / 2);
    mean("gateskip.gate", (v[2] + v[3]) / 2);
    n += 1;
  }
  return out;
}

double GateSkipWrapImpl::flops_per_token(int64_t) const {
  double n = 0;
  for (auto& p : parameters()) n += static_cast<double>(p.numel());
  return 4.0 * n;
}

std::string GateSkipWrapImpl::describe() const {
  std::ostringstream os;
  os << "gateskip (vector gates, skip " << opt.skip_start << " -> " << opt.skip_final << " over " << opt.ramp_steps
     << " steps after " << opt.warmup << ", eval " << opt.eval_skip << ", l2 " << opt.sparsity << ")";
  return os.str();
}

GateSkipOptions GateSkipOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg, int64_t n_gated_layers) {
  GateSkipOptions o;
  o.d_model = cfg.d_model;
  o.seed = cfg.seed;
  o.sparsity = args.f64("sparsity");
  o.aux_weight = o.sparsity / static_cast<double>(n_gated_layers);
  o.skip_start = args.f64("skip_start");
  o.skip_final = args.f64("skip_final");
  o.warmup = args.i64("warmup");
  o.ramp_steps = args.i64("ramp_steps");
  o.eval_skip = args.f64("eval_skip");
  o.threshold_ema = args.f64("threshold_ema");
  return o;
}

void apply_gateskip(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const catalog::ModelView v = check_module(catalog::spec_gateskip(), args, cfg, plan);
  auto layers = args.list("layers");
  if (layers.empty())
    for (int64_t i = 0; i < v.depth; ++i) layers.push_back(i);
  const GateSkipOptions base = GateSkipOptions::from(args, cfg, static_cast<int64_t>(layers.size()));
  for (int64_t l : layers) {
    auto& lp = plan.layers[l];
    if (lp.wrap) {
      std::string on;
      for (auto& name : lp.modules) on += (on.empty() ? "" : ", ") + name;
      fail("[gateskip] layer ", l, " already has a block wrapper (its modules: ", on,
           "); a layer takes one wrapper, so give gateskip.layers other layers");
    }
    GateSkipOptions o = base;
    o.layer = l;
    lp.wrap = [o] { return BlockWrap(std::make_shared<GateSkipWrapImpl>(o)); };
    lp.modules.push_back("gateskip");
  }
}

}  // namespace slm
