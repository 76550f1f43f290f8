#include "model/top.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

namespace {

constexpr int64_t kChunkRows = 256;  // (256 x V) fp32 logits per chunk, as the fused head

struct FusedLinearListNet : torch::autograd::Function<FusedLinearListNet> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& w,
                               const torch::Tensor& ids, const torch::Tensor& probs, int64_t compute) {
    const int64_t N = h.size(0), V = w.size(0);
    const auto ct = static_cast<torch::ScalarType>(compute);
    auto hc = h.to(ct), wc = w.to(ct);
    auto id = ids.to(torch::kInt64), p = probs.to(torch::kFloat32);
    auto rows = torch::empty({N}, h.options().dtype(torch::kFloat32));
    auto grad_h = torch::empty({N, h.size(1)}, h.options().dtype(torch::kFloat32));
    auto grad_w = torch::zeros({V, w.size(1)}, w.options().dtype(torch::kFloat32));
    for (int64_t r0 = 0; r0 < N; r0 += kChunkRows) {
      const int64_t r1 = std::min(N, r0 + kChunkRows);
      auto hs = hc.slice(0, r0, r1);
      auto ic = id.slice(0, r0, r1), pc = p.slice(0, r0, r1);
      auto z = torch::matmul(hs, wc.t()).to(torch::kFloat32);  // (n, V), the only logits that exist
      auto lse = z.logsumexp(1, /*keepdim=*/true);               // (n, 1)
      rows.slice(0, r0, r1).copy_(lse.squeeze(1) - (pc * z.gather(1, ic)).sum(1));
      // d loss_r / d z_r = softmax(z_r) - probs_r scattered onto its ids; the mean's 1/N applied here.
      auto dz = z.sub_(lse).exp_().scatter_add_(1, ic, -pc).mul_(1.0 / static_cast<double>(N)).to(ct);
      grad_h.slice(0, r0, r1).copy_(torch::matmul(dz, wc));
      grad_w.add_(torch::matmul(dz.t(), hs).to(torch::kFloat32));
    }
    ctx->saved_data["grad_h"] = grad_h.to(h.scalar_type());
    ctx->saved_data["grad_w"] = grad_w.to(w.scalar_type());
    return rows.mean();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto g = grad_out[0];
    return {ctx->saved_data["grad_h"].toTensor() * g, ctx->saved_data["grad_w"].toTensor() * g, torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

TopTarget top_target(const torch::Tensor& y, const torch::Tensor& doc_ids, int64_t window) {
  SLM_CHECK(y.dim() == 2, "[top] targets must be (B, T), got ", y.sizes());
  SLM_CHECK(window >= 1, "[top] window ", window, " must be at least 1; the paper uses the sequence length");
  SLM_CHECK(!doc_ids.defined() || doc_ids.sizes() == y.sizes(), "[top] doc ids ", doc_ids.sizes(),
            " do not match the targets ", y.sizes());
  const int64_t B = y.size(0), T = y.size(1), K = std::min({window, kTopMaxOffset, T - 1}) + 1;
  auto yl = y.to(torch::kInt64);
  auto lopts = yl.options();
  // prev[b, p]: the last position before p holding token y[b, p], or -1. A stable sort keeps equal
  // tokens in position order, so each one's predecessor in the sort is its previous occurrence.
  auto sorted = yl.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
  const auto& val = std::get<0>(sorted);
  const auto& order = std::get<1>(sorted);
  auto repeat = val.slice(1, 1).eq(val.slice(1, 0, -1));  // (B, T - 1)
  auto prev_sorted = torch::cat(
      {torch::full({B, 1}, -1, lopts), order.slice(1, 0, -1).masked_fill(repeat.logical_not(), -1)}, 1);
  auto prev = torch::empty_like(order).scatter_(1, order, prev_sorted);  // (B, T)
  auto t = torch::arange(T, lopts).view({1, T, 1});
  auto j = torch::arange(K, lopts).view({1, 1, K});
  auto pos = (t + j).expand({B, T, K});
  auto at = pos.clamp_max(T - 1).reshape({B, T * K});
  auto ids = yl.gather(1, at).view({B, T, K});
  // Offset j counts when t + j is inside the row and its token's first occurrence from t on ...
  auto counts = pos.lt(T).logical_and(prev.gather(1, at).view({B, T, K}).lt(t));
  if (doc_ids.defined()) {  // ... and inside t's document (documents are contiguous runs)
    auto d = doc_ids.to(torch::kInt64);
    counts = counts.logical_and(d.gather(1, at).view({B, T, K}).eq(d.unsqueeze(2)));
  }
  // softmax over the counted offsets of the score W - j: the constant W cancels; j = 0 always counts.
  auto score = (-j).to(torch::kFloat32).expand({B, T, K}).masked_fill(counts.logical_not(), -INFINITY);
  return {ids, torch::softmax(score, -1)};
}

torch::Tensor fused_linear_listnet_mean(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& ids,
                                        const torch::Tensor& probs, torch::ScalarType compute) {
  SLM_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && ids.dim() == 2 && ids.size(0) == h.size(0) &&
                probs.sizes() == ids.sizes(),
            "[top] fused head: shapes h ", h.sizes(), ", w ", w.sizes(), ", ids ", ids.sizes(), ", probs ",
            probs.sizes(), " do not agree");
  return FusedLinearListNet::apply(h, w, ids, probs, static_cast<int64_t>(compute));
}

TopObjectiveImpl::TopObjectiveImpl(const TopOptions& o) : opt(o) {
  SLM_CHECK(o.window >= 1, "[top] window ", o.window, " must be at least 1; the paper uses the sequence length");
  SLM_CHECK(o.weight >= 0, "[top] weight ", o.weight, " must be >= 0 (0 trains the head alone)");
  // Private draws: adding TOP leaves the main model's initialization identical to the baseline's.
  // Std 0.001 as lm_head.
  PrivateInit init(o.seed * 1000003ULL + 0x746f70ULL);
  head = register_parameter("head", torch::randn({o.vocab, o.d_model}) * 0.001);
}

void TopObjectiveImpl::add_loss(const torch::Tensor& h, GPTImpl&, Ctx& ctx) {
  SLM_CHECK(ctx.targets.defined(), "[top] needs the next-token targets: it is a training objective");
  const int64_t B = h.size(0), T = h.size(1);
  auto hn = rms_norm(h).reshape({B * T, -1});  // the normed state lm_head reads (the paper's choice)
  auto tg = top_target(ctx.targets, opt.doc_mask ? ctx.doc_ids : torch::Tensor(), opt.window);
  const int64_t K = tg.ids.size(2);
  auto probs = tg.probs.view({B * T, K});
  auto loss = fused_linear_listnet_mean(hn, head, tg.ids.view({B * T, K}), probs, device::matmul_dtype(hn));
  ctx.aux.push_back({"top", loss, opt.weight});
  // The target's entropy is the loss's floor: what is left over is how far the ranking is off.
  const double entropy = -torch::xlogy(probs, probs).sum(1).mean().item<double>();
  ctx.stats["top.kl"] = loss.item<double>() - entropy;
}

double TopObjectiveImpl::flops_per_token(int64_t) const {
  return 6.0 * static_cast<double>(opt.vocab) * static_cast<double>(opt.d_model);
}

std::string TopObjectiveImpl::describe() const {
  std::ostringstream os;
  os << "top (token order prediction: ListNet over the first occurrences in the next W=" << opt.window
     << " targets, offsets to " << std::min(opt.window, kTopMaxOffset) << " computed; own head " << opt.vocab << "x"
     << opt.d_model << ", weight " << opt.weight << (opt.doc_mask ? ", doc-bounded" : "") << ")";
  return os.str();
}

TopOptions TopOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  TopOptions o;
  o.d_model = cfg.d_model;
  o.vocab = cfg.vocab;
  o.doc_mask = cfg.doc_mask;
  o.seed = cfg.seed;
  o.window = args.i64("window");
  o.weight = args.f64("weight");
  return o;
}

void apply_top(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const TopOptions o = TopOptions::from(args, cfg);
  plan.objectives.push_back([o] { return Objective(std::make_shared<TopObjectiveImpl>(o)); });
}

}  // namespace slm
