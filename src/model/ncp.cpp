#include "model/ncp.h"

#include <sstream>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

namespace {

// Perplexity exp(H) of the distributions given by non-negative counts along the last dim.
torch::Tensor perplexity(const torch::Tensor& counts) {
  auto f = counts.to(torch::kFloat64);
  f = f / f.sum(-1, true);
  return (-torch::xlogy(f, f).sum(-1)).exp();
}

// Squared distances of z (P, S, D) to every code of its segment: (P, S, N), fp32 (bf16 distances of
// unit-RMS vectors round to 0.25 and tie).
torch::Tensor code_distances(const torch::Tensor& z, const torch::Tensor& e) {
  device::AutocastOff fp32(z);
  return z.pow(2).sum(-1, true) - 2 * torch::einsum("psd,snd->psn", {z, e}) + e.pow(2).sum(-1).unsqueeze(0);
}

}  // namespace

torch::Tensor ncp_pair_ends(int64_t B, int64_t T, int64_t span, const torch::Tensor& doc_ids, torch::Device dev) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  auto pos = torch::arange(T, opts).view({1, T}).expand({B, T});
  auto start = torch::zeros({B, T}, opts);  // each position's document start
  if (doc_ids.defined()) {
    SLM_CHECK(doc_ids.sizes() == pos.sizes(), "[ncp] doc ids ", doc_ids.sizes(), " do not match the batch (", B, ", ",
              T, ")");
    auto d = doc_ids.to(torch::kInt64);
    auto opens = torch::cat({torch::ones({B, 1}, opts.dtype(torch::kBool)), d.slice(1, 1).ne(d.slice(1, 0, -1))}, 1);
    start = std::get<0>(torch::where(opens, pos, torch::zeros_like(pos)).cummax(1));
  }
  // p ends a complete concept when its offset in the document is k - 1 mod k; the next concept,
  // p + 1 .. p + k, is complete when p + k lies in the row and in the same document.
  auto ahead = (pos + span).clamp_max(T - 1);
  auto ends = (pos - start).remainder(span).eq(span - 1).logical_and(pos.lt(T - span)).logical_and(
      start.gather(1, ahead).eq(start));
  return ends.reshape(-1).nonzero().squeeze(1);
}

NcpObjectiveImpl::NcpObjectiveImpl(const NcpOptions& o) : opt(o) {
  SLM_CHECK(o.span >= 1, "[ncp] span ", o.span, " must be at least 1 token per concept (the spec: 4-8)");
  SLM_CHECK(o.segments >= 1 && o.d_model % o.segments == 0, "[ncp] segments ", o.segments, " must divide d_model ",
            o.d_model, "; pick a divisor such as 2 or 4");
  SLM_CHECK(o.codes >= 2, "[ncp] codes ", o.codes, " must be at least 2 per segment (the spec: 64-256)");
  SLM_CHECK(o.decay >= 0 && o.decay < 1, "[ncp] decay ", o.decay, " must be in [0, 1); 0.95 follows a short run");
  SLM_CHECK(o.weight >= 0, "[ncp] weight ", o.weight, " must be >= 0");
  const int64_t S = o.segments, N = o.codes, C = o.d_model;
  // Private draws: adding NCP leaves the main model's initialization identical to the baseline's.
  // The codes start at unit scale like the rms-normed concepts, each counted once; the head as lm_head.
  PrivateInit init(o.seed * 1000003ULL + 0x6e6370ULL);
  ema_count = register_buffer("ema_count", torch::ones({S, N}));
  ema_sum = register_buffer("ema_sum", torch::randn({S, N, C / S}));
  mean_sum = register_buffer("mean_sum", torch::zeros({C}));
  mean_weight = register_buffer("mean_weight", torch::zeros({}));
  head = register_parameter("head", torch::randn({S * N, C}) * 0.001);
}

torch::Tensor NcpObjectiveImpl::codes() const { return ema_sum / ema_count.unsqueeze(-1); }

torch::Tensor NcpObjectiveImpl::assign(const torch::Tensor& z) const {
  torch::NoGradGuard ng;
  return code_distances(z, codes()).argmin(-1);
}

void NcpObjectiveImpl::add_loss(const torch::Tensor& h, GPTImpl&, Ctx& ctx) {
  const int64_t B = h.size(0), T = h.size(1), C = h.size(2), k = opt.span, S = opt.segments, N = opt.codes;
  const int64_t D = C / S;
  auto ends = ncp_pair_ends(B, T, k, opt.doc_mask ? ctx.doc_ids : torch::Tensor(), h.device());  // (P)
  const int64_t P = ends.size(0);
  // Data parallel (model/dp.h): the codebook follows the whole step's concepts, every rank's pairs,
  // so every sum below is reduced over the ranks before it is used, and a rank without a pair of its
  // own still takes part (with empty tensors) while any rank has one.
  const bool dp = ctx.training && dp_active(ctx.dp);
  int64_t P_all = P;  // pairs over the data-parallel ranks
  if (dp) {
    auto n = torch::full({1}, P, torch::kInt64);
    dp_sum(ctx.dp, n);
    P_all = n.item<int64_t>();
  }
  ctx.stats["ncp.pairs"] = static_cast<double>(P_all);
  if (P_all == 0) return;
  auto hn = rms_norm(h).reshape({B * T, C});
  auto back = torch::arange(k, ends.options());
  // embedding, not index_select: its CUDA backward sorts the rows instead of adding atomically (deterministic)
  auto u = torch::embedding(hn, ends.unsqueeze(1) - back).mean(1);  // (P, C) concept c: p - k + 1 .. p
  torch::Tensor q;  // (P, S) the target codes
  {
    torch::NoGradGuard ng;
    auto next = torch::embedding(hn, ends.unsqueeze(1) + 1 + back).mean(1).to(torch::kFloat32);  // (P, C) c + 1
    if (ctx.training) {
      torch::Tensor batch_mean;  // (C) the concepts' mean
      if (dp) {
        batch_mean = next.sum(0);
        dp_sum(ctx.dp, batch_mean);
        batch_mean = batch_mean / static_cast<double>(P_all);
      } else {
        batch_mean = next.mean(0);
      }
      mean_sum.mul_(opt.decay).add_(batch_mean, 1 - opt.decay);
      mean_weight.mul_(opt.decay).add_(1 - opt.decay);
    }
    // Hidden states share a large common direction: quantized as they are, the concepts crowd onto a
    // few codes (cpu-tiny, step 40: usage 0.14; centered 0.22). Centered, the codes split what tells
    // concepts apart.
    auto mean = mean_weight.item<double>() > 0 ? mean_sum / mean_weight : torch::zeros_like(mean_sum);
    auto z = rms_norm((next - mean).view({P, S, D}));  // (P, S, D)
    auto dist = code_distances(z, codes());             // (P, S, N)
    q = dist.argmin(-1);
    auto onehot = torch::one_hot(q, N).to(torch::kFloat32);  // (P, S, N)
    auto counts = onehot.sum(0);                              // (S, N)
    if (dp) dp_sum(ctx.dp, counts);
    // Collapse shows here: the assignments under the codebook as this step found it.
    ctx.stats["ncp.usage"] = perplexity(counts).mean().item<double>() / static_cast<double>(N);
    ctx.stats["ncp.codes_used"] = counts.gt(0).to(torch::kFloat64).mean().item<double>();
    std::vector<int64_t> place(S, 1);  // N^s: the joint concept id is sum_s q_s N^s (N^S < 2^63: the catalog)
    for (int64_t s = 1; s < S; ++s) place[s] = place[s - 1] * N;
    auto joint = std::get<2>(torch::_unique2((q * torch::tensor(place, q.options())).sum(1), /*sorted=*/true,
                                             /*return_inverse=*/false, /*return_counts=*/true));
    ctx.stats["ncp.concept_ppl"] = perplexity(joint).item<double>();
    int64_t restarted = 0;
    if (ctx.training) {
      device::AutocastOff fp32(z);
      const double g = opt.decay;
      ema_count.mul_(g).add_(counts, 1 - g);
      auto sums = torch::einsum("psn,psd->snd", {onehot, z});  // (S, N, D) a matmul: deterministic
      if (dp) {
        sums = sums.contiguous();
        dp_sum(ctx.dp, sums);
      }
      ema_sum.mul_(g).add_(sums, 1 - g);
      auto dead = ema_count.lt(1.0);  // chosen by less than one concept per batch, on average
      restarted = dead.sum().item<int64_t>();
      if (restarted > 0) {
        // The i-th dead code of a segment restarts at the segment's i-th worst-quantized concept.
        // Data parallel: among every rank's concepts, in rank order (the same on every rank).
        auto err = std::get<0>(dist.min(-1));  // (P, S)
        auto zs = z;                           // (P, S, D)
        if (dp) {
          err = dp_gather_rows(ctx.dp, err.contiguous());  // (P_all, S)
          zs = dp_gather_rows(ctx.dp, z.contiguous());     // (P_all, S, D)
        }
        auto worst = std::get<1>(err.t().sort(/*stable=*/true, /*dim=*/1, /*descending=*/true));  // (S, P_all)
        auto rank = (dead.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).remainder(P_all);         // (S, N)
        auto fresh = zs.transpose(0, 1).gather(1, worst.gather(1, rank).unsqueeze(-1).expand({S, N, D}));
        ema_sum.copy_(torch::where(dead.unsqueeze(-1), fresh, ema_sum));
        ema_count.masked_fill_(dead, 1.0);
      }
    }
    ctx.stats["ncp.restarted"] = static_cast<double>(restarted);
  }
  auto logits = torch::matmul(u, head.t()).to(torch::kFloat32).view({P * S, N});
  torch::Tensor loss;
  if (dp) {
    // This rank's share of the mean over every rank's pairs, times the ranks (the trainer averages
    // gradients over them): the gradient and the logged mean are one process's, however the pairs
    // fall on the ranks (their counts differ with the documents).
    namespace F = torch::nn::functional;
    loss = F::cross_entropy(logits, q.view({P * S}), F::CrossEntropyFuncOptions().reduction(torch::kSum)) *
           (static_cast<double>(ctx.dp->size) / static_cast<double>(P_all * S));
  } else {
    loss = torch::nn::functional::cross_entropy(logits, q.view({P * S}));
  }
  ctx.aux.push_back({"ncp", loss, opt.weight});
  if (P > 0)
    ctx.stats["ncp.acc"] = logits.detach().argmax(-1).eq(q.view({P * S})).to(torch::kFloat64).mean().item<double>();
}

double NcpObjectiveImpl::flops_per_token(int64_t) const {
  const double C = static_cast<double>(opt.d_model), N = static_cast<double>(opt.codes);
  return (6.0 * static_cast<double>(opt.segments) * N * C + 2.0 * N * C) / static_cast<double>(opt.span);
}

std::string NcpObjectiveImpl::describe() const {
  std::ostringstream os;
  os << "ncp (next concept prediction: concepts of " << opt.span << " tokens, " << opt.segments << " x " << opt.codes
     << " codes, stop-gradient EMA codebook (decay " << opt.decay << ", dead-code restart), weight " << opt.weight
     << (opt.doc_mask ? ", per document" : "") << ")";
  return os.str();
}

NcpOptions NcpOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  NcpOptions o;
  o.d_model = cfg.d_model;
  o.doc_mask = cfg.doc_mask;
  o.seed = cfg.seed;
  o.span = args.i64("span");
  o.segments = args.i64("segments");
  o.codes = args.i64("codes");
  o.decay = args.f64("decay");
  o.weight = args.f64("weight");
  return o;
}

void apply_ncp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const NcpOptions o = NcpOptions::from(args, cfg);
  plan.objectives.push_back([o] { return Objective(std::make_shared<NcpObjectiveImpl>(o)); });
}

}  // namespace slm
