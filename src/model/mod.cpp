#include "model/mod.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "catalog/modules.h"
#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

namespace F = torch::nn::functional;

int64_t mod_capacity_tokens(double capacity, int64_t T) {
  // The epsilon keeps 0.125 x 256 at 32 whatever the rounding of the product.
  const auto k = static_cast<int64_t>(std::floor(capacity * static_cast<double>(T) + 1e-9));
  return std::clamp<int64_t>(k, 1, std::max<int64_t>(T, 1));
}

ModWrapImpl::ModWrapImpl(const ModOptions& o) : opt(o) {
  SLM_CHECK(o.capacity > 0 && o.capacity <= 1, "[mod] capacity ", o.capacity, " must be in (0, 1]; use 0.125");
  SLM_CHECK(o.predictor_hidden >= 1, "[mod] predictor_hidden ", o.predictor_hidden, " must be >= 1; use 64");
  PrivateInit init(o.seed * 1000003ULL + 0x6d6f64ULL + 7919ULL * static_cast<uint64_t>(o.layer));
  const int64_t C = o.d_model;
  // The std of N(0, 1/C): r starts at the scale of one coordinate of the (unit-RMS) residual, so
  // the top-k picks tokens with r ~ 1 and the block's output enters at about its own scale.
  const double bound = std::sqrt(3.0 / static_cast<double>(C));
  router = register_parameter("router", torch::empty({C}).uniform_(-bound, bound));
  if (o.predictor) {
    const int64_t h = o.predictor_hidden;
    pred_fc = register_module("pred_fc", torch::nn::Linear(torch::nn::LinearOptions(C, h).bias(true)));
    const double b2 = std::sqrt(3.0 / static_cast<double>(h));
    pred_out = register_parameter("pred_out", torch::empty({h}).uniform_(-b2, b2));
    pred_bias = register_parameter("pred_bias", torch::zeros({1}));
  }
}

torch::Tensor ModWrapImpl::router_logits(const torch::Tensor& x) const {
  // fp32 and outside autocast: routing flips on the sign and the order of r, which bf16 blurs.
  device::AutocastOff fp32(x);
  return torch::matmul(x.to(torch::kFloat32), router.to(torch::kFloat32));
}

torch::Tensor ModWrapImpl::predictor_logits(const torch::Tensor& x) {
  // Stop-gradient input (the paper's fix 2): the predictor learns from the model, never steers it.
  auto h = torch::relu(pred_fc(x.detach()));
  device::AutocastOff fp32(h);
  return torch::matmul(h.to(torch::kFloat32), pred_out.to(torch::kFloat32)) + pred_bias.to(torch::kFloat32);
}

torch::Tensor ModWrapImpl::forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) {
  SLM_CHECK(x.dim() == 3 && x.size(2) == opt.d_model, "[mod] layer ", opt.layer, " expects (B, T, ", opt.d_model,
            "), got ", x.sizes(), "; mod cannot route residual streams (mhc), drop one of them");
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  const std::string L = "mod.L" + std::to_string(opt.layer);
  auto x1 = block.branches.empty() ? x : block.with_branches(x, ctx);  // branches read the whole sequence
  auto r = router_logits(x);                                            // (B, T)

  torch::Tensor routed;  // (B, T) bool
  if (ctx.training && !ctx.caches) {
    // The paper's expert-choice top-k over each row: exactly k tokens per row run the block.
    const int64_t k = mod_capacity_tokens(opt.capacity, T);
    auto top = std::get<1>(r.detach().topk(k, 1, /*largest=*/true, /*sorted=*/false));
    routed = torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).scatter_(1, top, true);
    auto target = routed.to(torch::kFloat32);
    torch::Tensor causal = r.detach() > 0;
    if (opt.aux_loss > 0)
      ctx.aux.push_back({"mod_bce.L" + std::to_string(opt.layer), F::binary_cross_entropy_with_logits(r, target),
                         opt.aux_loss});
    if (opt.predictor) {
      auto p = predictor_logits(x);
      ctx.aux.push_back({"mod_pred.L" + std::to_string(opt.layer), F::binary_cross_entropy_with_logits(p, target),
                         opt.predictor_loss});
      causal = p.detach() > 0;
    }
    // What evaluation will route on this batch, and how often that agrees with the top-k.
    auto s = torch::stack({causal.to(torch::kFloat32).mean(), causal.eq(routed).to(torch::kFloat32).mean()})
                 .to(torch::kCPU, torch::kFloat64);
    auto v = s.accessor<double, 1>();
    ctx.stats[L + ".causal_routed"] = v[0];
    ctx.stats[L + ".causal_acc"] = v[1];
    double& n = ctx.stats["mod.n_layers"];
    auto mean = [&](const char* key, double val) { ctx.stats[key] = (ctx.stats[key] * n + val) / (n + 1); };
    mean("mod.causal_routed", v[0]);
    mean("mod.causal_acc", v[1]);
    n += 1;
  } else {
    // Evaluation and generation: per token, from this token's input only (causal).
    torch::NoGradGuard ng;
    routed = (opt.predictor ? predictor_logits(x) : r) > 0;
    if (!ctx.caches) ctx.stats[L + ".routed"] = routed.to(torch::kFloat32).mean().item<double>();
  }
  last_routed = routed;

  auto flat = routed.reshape({B * T}).nonzero().squeeze(1);  // (N) row-major: rows, then positions, in order
  const int64_t N = flat.size(0);
  if (N == 0) return x;
  auto rows = flat.div(T, "floor"), pos = flat.remainder(T);
  auto xs = x.reshape({B * T, C}).index_select(0, flat);      // (N, C) the residual of the routed tokens
  auto xin = x1.reshape({B * T, C}).index_select(0, flat);    // the block's input (with the branches)
  auto rs = r.reshape({B * T}).index_select(0, flat);         // (N)

  // Rows are packed into gathered calls of at most ~T tokens (one row per call on Mamba layers,
  // whose scan takes no mask): a few large matmuls, and attention no wider than a plain row's.
  auto counts_t = routed.sum(1).to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* counts = counts_t.data_ptr<int64_t>();
  struct Chunk {
    int64_t a, b, rows;  // token range [a, b) in the gathered list; rows with tokens in it
  };
  std::vector<Chunk> chunks;
  int64_t at = 0;
  for (int64_t row = 0; row < B; ++row) {
    const int64_t c = counts[row];
    if (c == 0) continue;
    const bool join = !chunks.empty() && opt.kind != 'M' && !ctx.caches && chunks.back().b - chunks.back().a + c <= T;
    if (join) {
      chunks.back().b += c;
      chunks.back().rows += 1;
    } else {
      chunks.push_back({at, at + c, 1});
    }
    at += c;
  }

  std::vector<torch::Tensor> deltas;
  std::map<std::string, std::pair<torch::Tensor, double>> aux;  // name -> (token-weighted value, weight)
  std::vector<std::string> aux_order;
  for (auto& ch : chunks) {
    const int64_t n = ch.b - ch.a;
    auto fc = flat.slice(0, ch.a, ch.b), rc = rows.slice(0, ch.a, ch.b), pc = pos.slice(0, ch.a, ch.b);
    Ctx sub;
    if (ctx.idx.defined()) sub.idx = ctx.idx.reshape({B * T}).index_select(0, fc).view({1, n});
    if (ctx.doc_ids.defined())  // documents of different rows must differ too
      sub.doc_ids = (ctx.doc_ids.reshape({B * T}).index_select(0, fc) + rc * T).view({1, n});
    else if (ch.rows > 1)
      sub.doc_ids = rc.view({1, n});
    if (!ctx.caches) {  // with a cache the mixer builds its own mask over the cached (routed) keys
      auto same_row = rc.unsqueeze(1).eq(rc.unsqueeze(0));
      if (ctx.allowed.defined()) {
        auto m = ctx.allowed.select(1, 0).index({rc.unsqueeze(1), pc.unsqueeze(1), pc.unsqueeze(0)});  // (n, n)
        if (ch.rows > 1) m = m.logical_and(same_row);
        sub.allowed = m.view({1, 1, n, n});
      } else if (ch.rows > 1) {
        sub.allowed = same_row.logical_and(pc.unsqueeze(0).le(pc.unsqueeze(1))).view({1, 1, n, n});
      }
    }
    sub.cos = ctx.cos.index_select(0, pc);  // RoPE at the original positions
    sub.sin = ctx.sin.index_select(0, pc);
    sub.positions = pc + ctx.pos;  // for position tables of the block's own (DSA's indexer)
    sub.attn_logit_scale = ctx.attn_logit_scale;
    sub.step = ctx.step;
    sub.training = ctx.training;
    sub.pos = ctx.pos;
    sub.caches = ctx.caches;
    sub.layer = ctx.layer;
    auto u = xin.slice(0, ch.a, ch.b).unsqueeze(0);  // (1, n, C)
    auto h = u + block.mixer_delta(u, sub);
    auto out = h + block.ffn_delta(h, sub);
    deltas.push_back(out.squeeze(0) - xs.slice(0, ch.a, ch.b));  // f = block(x~) - x
    // A component's auxiliary loss is a mean over its tokens: weight each call by its share.
    const double share = static_cast<double>(n) / static_cast<double>(N);
    for (auto& a : sub.aux) {
      auto it = aux.find(a.name);
      if (it == aux.end()) {
        aux[a.name] = {a.value * share, a.weight};
        aux_order.push_back(a.name);
      } else {
        it->second.first = it->second.first + a.value * share;
      }
    }
    for (auto& s : sub.stats) ctx.stats[s.first] = s.second;
  }
  for (auto& name : aux_order) ctx.aux.push_back({name, aux[name].first, aux[name].second});

  auto delta = deltas.size() == 1 ? deltas[0] : torch::cat(deltas, 0);  // (N, C)
  auto updated = (xs + rs.unsqueeze(1) * delta).to(x.scalar_type());
  // index_copy leaves every other token's residual as it was, bit for bit.
  return x.reshape({B * T, C}).index_copy(0, flat, updated).view({B, T, C});
}

double ModWrapImpl::flops_per_token(int64_t T) const {
  const double C = static_cast<double>(opt.d_model), h = static_cast<double>(opt.predictor_hidden);
  double own = 6.0 * C;  // the router
  if (opt.predictor) own += 6.0 * (C * h + h);
  double block = 6.0 * 8.0 * C * C;  // the default MLP (4C hidden)
  // The default attention: matmuls and, per gathered call of ~T keys, its scores and values.
  if (opt.kind == 'A') block += 6.0 * 4.0 * C * C + 12.0 * C * static_cast<double>(T);
  return own - (1.0 - opt.capacity) * block;
}

std::string ModWrapImpl::describe() const {
  std::ostringstream os;
  os << "mod (capacity " << opt.capacity << ", router bce " << opt.aux_loss << ", eval routes by ";
  if (opt.predictor)
    os << "predictor (" << opt.predictor_hidden << ") > 0.5)";
  else
    os << "sigmoid(r) > 0.5)";
  return os.str();
}

ModOptions ModOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  ModOptions o;
  o.d_model = cfg.d_model;
  o.seed = cfg.seed;
  o.capacity = args.f64("capacity");
  o.aux_loss = args.f64("aux_loss");
  o.predictor = args.flag("predictor");
  o.predictor_hidden = args.i64("predictor_hidden");
  o.predictor_loss = args.f64("predictor_loss");
  return o;
}

void apply_mod(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  // The catalog's checks again, on the plan's own kinds (a hand-assembled ModelConfig meets them too).
  const catalog::ModelView v = check_module(catalog::spec_mod(), args, cfg, plan);

  const ModOptions base = ModOptions::from(args, cfg);
  for (int64_t l : catalog::mod_layers(args, v)) {
    auto& lp = plan.layers[l];
    std::string on;
    for (auto& name : lp.modules) on += (on.empty() ? "" : ", ") + name;
    if (lp.wrap)
      fail("[mod] layer ", l, " already has a block wrapper (its modules: ", on,
           "); a layer takes one wrapper, so leave it out of mod.layers or drop the other module");
    ModOptions o = base;
    o.layer = l;
    o.kind = lp.kind;
    lp.wrap = [o] { return BlockWrap(std::make_shared<ModWrapImpl>(o)); };
    lp.modules.push_back("mod");
  }
}

}  // namespace slm
