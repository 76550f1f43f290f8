#include "model/mhc.h"

#include <cmath>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

torch::Tensor sinkhorn(const torch::Tensor& z, int64_t iters) {
  // Log-domain: dividing the rows (columns) of exp(u) by their sums is subtracting their logsumexp
  // from u, which neither overflows nor divides by an underflowed sum, however sharp the logits.
  auto u = z.to(torch::kFloat32);
  for (int64_t i = 0; i < iters; ++i) {  // iterations, not tokens: every matrix at once
    u = u - u.logsumexp(-1, true);
    u = u - u.logsumexp(-2, true);
  }
  return u.exp();
}

// ---- one sub-layer's map

MhcMapImpl::MhcMapImpl(int64_t d_model, int64_t streams, double a) : n(streams) {
  const int64_t m = n * n + 2 * n, nc = n * d_model;
  phi = register_module("phi", torch::nn::Linear(torch::nn::LinearOptions(nc, m).bias(false)));
  alpha = register_parameter("alpha", torch::full({3}, a));
  auto b = torch::zeros({m});
  b.slice(0, 2 * n).view({n, n}).diagonal().fill_(4.0);  // H_res near the identity (mhc.h)
  bias = register_parameter("bias", b);
  torch::NoGradGuard ng;
  const double bound = std::sqrt(3.0 / static_cast<double>(nc));  // the std of N(0, 1 / (n C))
  phi->weight.uniform_(-bound, bound);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> MhcMapImpl::coefficients(const torch::Tensor& x,
                                                                                  int64_t iters) {
  const int64_t B = x.size(0), T = x.size(1);
  auto z = phi(rms_norm(x.reshape({B, T, -1}))).to(torch::kFloat32);  // (B, T, m)
  auto a = alpha.to(torch::kFloat32), b = bias.to(torch::kFloat32);
  auto pre = torch::sigmoid(a[0] * z.slice(-1, 0, n) + b.slice(0, 0, n));
  auto post = 2.0 * torch::sigmoid(a[1] * z.slice(-1, n, 2 * n) + b.slice(0, n, 2 * n));
  auto res = sinkhorn((a[2] * z.slice(-1, 2 * n) + b.slice(0, 2 * n)).view({B, T, n, n}), iters);
  return {pre, post, res};
}

namespace {

// x'_i = sum_j H_res[i, j] x_j + H_post_i f(sum_j H_pre_j x_j). x: (B, T, n, C).
template <typename F>
torch::Tensor through_map(MhcMapImpl& map, const torch::Tensor& x, int64_t iters, F&& f,
                          std::vector<torch::Tensor>* stats) {
  auto [pre, post, res] = map.coefficients(x, iters);
  const auto dt = x.scalar_type();
  auto u = (pre.to(dt).unsqueeze(-1) * x).sum(2);  // (B, T, C)
  auto d = f(u);                                   // (B, T, C)
  torch::Tensor mixed;                             // (B, T, n, C)
  {
    // A batched matmul (11x faster on CPU than broadcasting to (B, T, n, n, C)), in the streams'
    // dtype: autocast would round the fp32 residual to bf16 here.
    device::AutocastOff fp32(x);
    mixed = torch::matmul(res.to(dt), x);
  }
  auto out = mixed + post.to(dt).unsqueeze(-1) * d.unsqueeze(2);
  if (stats) {
    torch::NoGradGuard ng;
    // H_res's diagonal: 1 keeps the streams apart, 1/n averages them (collapse to one stream).
    stats->push_back(torch::stack({res.diagonal(0, -2, -1).mean(), pre.mean(), post.mean(),
                                   (res.sum(-1) - 1).abs().max()}));
  }
  return out;
}

}  // namespace

// ---- the wrapper

MhcWrapImpl::MhcWrapImpl(const MhcOptions& o) : opt(o) {
  SLM_CHECK(o.streams >= 1, "[mhc] streams ", o.streams, " must be >= 1; use streams=4");
  SLM_CHECK(o.sinkhorn_iters >= 1, "[mhc] sinkhorn_iters ", o.sinkhorn_iters, " must be >= 1; use 20");
  PrivateInit init(o.seed * 1000003ULL + 0x6d6863ULL + 7919ULL * static_cast<uint64_t>(o.layer));
  mixer_map = register_module("mixer_map", MhcMap(o.d_model, o.streams, o.alpha));
  ffn_map = register_module("ffn_map", MhcMap(o.d_model, o.streams, o.alpha));
}

torch::Tensor MhcWrapImpl::forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) {
  SLM_CHECK(x.dim() == 4 && x.size(2) == opt.streams && x.size(3) == opt.d_model, "[mhc] layer ", opt.layer,
            " expects the streams (B, T, ", opt.streams, ", ", opt.d_model, "), got ", x.sizes(),
            "; the model must expand them (ModelPlan.streams)");
  const bool record = ctx.training && !ctx.caches;
  std::vector<torch::Tensor> st;
  auto x1 = block.with_branches(x, ctx);
  auto h = through_map(*mixer_map, x1, opt.sinkhorn_iters, [&](const torch::Tensor& u) { return block.mixer_delta(u, ctx); },
                       record ? &st : nullptr);
  auto out = through_map(*ffn_map, h, opt.sinkhorn_iters, [&](const torch::Tensor& u) { return block.ffn_delta(u, ctx); },
                         record ? &st : nullptr);
  if (record) {
    auto s = torch::stack(st).to(torch::kCPU, torch::kFloat64);  // (2, 4): one transfer per layer
    auto v = s.accessor<double, 2>();
    const std::string L = "mhc.L" + std::to_string(opt.layer);
    ctx.stats[L + ".res_diag"] = (v[0][0] + v[1][0]) / 2;
    double& n = ctx.stats["mhc.n_maps"];
    auto mean = [&](const char* key, double val) { ctx.stats[key] = (ctx.stats[key] * n + val) / (n + 1); };
    for (int i = 0; i < 2; ++i, n += 1) {
      mean("mhc.res_diag", v[i][0]);
      mean("mhc.pre", v[i][1]);
      mean("mhc.post", v[i][2]);
    }
    double& err = ctx.stats["mhc.sinkhorn_row_err"];  // the worst row sum of this forward; columns are exact
    err = std::max({err, v[0][3], v[1][3]});
  }
  return out;
}

double MhcWrapImpl::flops_per_token(int64_t) const {
  const double n = static_cast<double>(opt.streams), C = static_cast<double>(opt.d_model), m = n * n + 2 * n;
  const double per_map = 6.0 * (n * C * m + m * C) + 18.0 * static_cast<double>(opt.sinkhorn_iters) * n * n;
  return 2.0 * per_map;
}

std::string MhcWrapImpl::describe() const {
  std::ostringstream os;
  os << "mhc (" << opt.streams << " streams, sinkhorn " << opt.sinkhorn_iters << ", alpha " << opt.alpha << ")";
  return os.str();
}

// ---- the streams

torch::Tensor MhcStreamsImpl::expand(const torch::Tensor& x) {
  return x.unsqueeze(2).expand({x.size(0), x.size(1), n, x.size(2)});
}

torch::Tensor MhcStreamsImpl::collapse(const torch::Tensor& s) { return s.sum(2); }

double MhcStreamsImpl::flops_per_token(int64_t) const { return 2.0 * static_cast<double>(n * d_model); }

std::string MhcStreamsImpl::describe() const {
  return "mhc: " + std::to_string(n) + " residual streams (n copies after the embedding, summed before the head)";
}

// ---- the plan

MhcOptions MhcOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  MhcOptions o;
  o.d_model = cfg.d_model;
  o.seed = cfg.seed;
  o.streams = args.i64("streams");
  o.sinkhorn_iters = args.i64("sinkhorn_iters");
  o.alpha = args.f64("alpha");
  return o;
}

void apply_mhc(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const MhcOptions base = MhcOptions::from(args, cfg);
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    auto& lp = plan.layers[i];
    if (lp.wrap) {
      std::string on;
      for (auto& name : lp.modules) on += (on.empty() ? "" : ", ") + name;
      fail("[mhc] layer ", i, " already has a block wrapper (its modules: ", on,
           "); mhc wraps every layer, so use one of them");
    }
    MhcOptions o = base;
    o.layer = static_cast<int64_t>(i);
    lp.wrap = [o] { return BlockWrap(std::make_shared<MhcWrapImpl>(o)); };
    lp.modules.push_back("mhc");
  }
  const int64_t n = base.streams, C = cfg.d_model;
  plan.streams = [n, C] { return Streams(std::make_shared<MhcStreamsImpl>(n, C)); };
}

}  // namespace slm
