#include "model/flexidepth.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "catalog/modules.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

FlexiDepthWrapImpl::FlexiDepthWrapImpl(const FlexiDepthOptions& o) : opt(o) {
  SLM_CHECK(o.adapter_hidden >= 1 && o.tau >= 0 && o.tau < 1 && o.alpha >= 0, "[flexidepth] layer ", o.layer,
            ": adapter_hidden (", o.adapter_hidden, ") must be >= 1, tau (", o.tau, ") in [0, 1), alpha (", o.alpha,
            ") >= 0");
  PrivateInit init(o.seed * 1000003ULL + 0x666c78ULL + 7919ULL * static_cast<uint64_t>(o.layer));
  const int64_t C = o.d_model;
  router = register_module("router", torch::nn::Linear(torch::nn::LinearOptions(C, 1).bias(true)));
  adapter_fc = register_module("adapter_fc", torch::nn::Linear(torch::nn::LinearOptions(C, o.adapter_hidden).bias(false)));
  adapter_proj =
      register_module("adapter_proj", torch::nn::Linear(torch::nn::LinearOptions(o.adapter_hidden, C).bias(false)));
  torch::NoGradGuard ng;
  router->weight.normal_(0.0, 0.01);
  router->bias.fill_(o.router_bias);
  const double bound = std::sqrt(3.0 / static_cast<double>(C));
  adapter_fc->weight.uniform_(-bound, bound);
  adapter_proj->weight.zero_();  // a skipped token starts as the identity
}

torch::Tensor FlexiDepthWrapImpl::gate(const torch::Tensor& x) {
  return torch::sigmoid(router(rms_norm(x)).to(torch::kFloat32));
}

torch::Tensor FlexiDepthWrapImpl::forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) {
  SLM_CHECK(x.dim() == 3, "[flexidepth] layer ", opt.layer, " expects the residual (B, T, C), got ", x.sizes(),
            "; flexidepth cannot wrap a layer of residual streams (mhc)");
  const auto dt = x.scalar_type();
  auto G = gate(x);                // (B, T, 1)
  auto full = G.gt(opt.tau);       // (B, T, 1) bool
  // The full block for every token (attention needs every token's K/V); masked below.
  auto x1 = block.with_branches(x, ctx);
  auto md = block.mixer_delta(x1, ctx);
  auto h = x1 + md;
  auto delta = (x1 - x) + md + block.ffn_delta(h, ctx);  // block(x) - x, (B, T, C)
  auto a = torch::relu(adapter_fc(rms_norm(x)));
  auto light = adapter_proj(a * a);  // ReLU^2, (B, T, C)
  auto out = x + torch::where(full, G.to(dt) * delta, (1.0 - G).to(dt) * light);

  if (ctx.training && !ctx.caches) {
    if (opt.alpha > 0) {
      auto g = G.squeeze(-1);  // (B, T)
      // The first FlexiDepth layer of a forward starts the sum (Ctx::carry is per forward).
      auto& sum = ctx.carry["flexidepth.gate_sum"];
      sum = sum.defined() ? sum + g : g;
      if (opt.last) {
        ctx.aux.push_back({"flexidepth_skip", sum.pow(2).mean(), opt.alpha});
        ctx.carry.erase("flexidepth.gate_sum");  // release the graph
      }
    }
    torch::NoGradGuard ng;
    auto s = torch::stack({full.to(torch::kFloat32).mean(), G.mean()}).to(torch::kCPU, torch::kFloat64);
    auto v = s.accessor<double, 1>();
    const std::string L = "flexidepth.L" + std::to_string(opt.layer);
    ctx.stats[L + ".full"] = v[0];
    ctx.stats[L + ".gate"] = v[1];
    ctx.stats["flexidepth.layers_used"] += v[0];
    double& n = ctx.stats["flexidepth.n_layers"];
    ctx.stats["flexidepth.gate"] = (ctx.stats["flexidepth.gate"] * n + v[1]) / (n + 1);
    n += 1;
  }
  return out;
}

std::string FlexiDepthWrapImpl::describe() const {
  std::ostringstream os;
  os << "flexidepth (router tau " << opt.tau << ", adapter " << opt.adapter_hidden << ", skip loss " << opt.alpha
     << ")";
  return os.str();
}

FlexiDepthOptions FlexiDepthOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  FlexiDepthOptions o;
  o.d_model = cfg.d_model;
  o.seed = cfg.seed;
  o.tau = args.f64("tau");
  o.alpha = args.f64("alpha");
  o.adapter_hidden = args.i64("adapter_hidden");
  o.router_bias = args.f64("router_bias");
  return o;
}

void apply_flexidepth(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const catalog::ModelView v = check_module(catalog::spec_flexidepth(), args, cfg, plan);
  auto layers = args.list("layers");
  if (layers.empty())
    for (int64_t i = 0; i < v.depth; ++i) layers.push_back(i);
  const int64_t last = *std::max_element(layers.begin(), layers.end());
  for (int64_t l : layers) {
    auto& lp = plan.layers[l];
    if (lp.wrap) {
      std::string on;
      for (auto& name : lp.modules) on += (on.empty() ? "" : ", ") + name;
      fail("[flexidepth] layer ", l, " already has a block wrapper (its modules: ", on,
           "); a layer takes one wrapper, so give flexidepth.layers other layers");
    }
    FlexiDepthOptions o = FlexiDepthOptions::from(args, cfg);
    o.layer = l;
    o.last = l == last;
    lp.wrap = [o] { return BlockWrap(std::make_shared<FlexiDepthWrapImpl>(o)); };
    lp.modules.push_back("flexidepth");
  }
}

}  // namespace slm
