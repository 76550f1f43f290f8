#include "model/cbp.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "catalog/modules.h"
#include "common/error.h"
#include "common/hash.h"

namespace slm {

CbpMlpImpl::CbpMlpImpl(const ModelConfig& c, const CbpOptions& o) : MLPImpl(c), opt(o) {
  SLM_CHECK(o.rate > 0 && o.rate <= 1, "[cbp] rate ", o.rate,
            " must lie in (0, 1] (replacements per eligible unit per step); the paper uses 1e-4");
  SLM_CHECK(o.maturity >= 0, "[cbp] maturity ", o.maturity, " is negative; use a number of steps such as 100");
  SLM_CHECK(o.decay >= 0 && o.decay < 1, "[cbp] decay ", o.decay, " must lie in [0, 1); the paper uses 0.99");
  SLM_CHECK(o.every >= 1, "[cbp] every ", o.every, " must be at least 1 (replace every step)");
  const int64_t H = c_fc->weight.size(0);
  // Buffers: no gradient and no optimizer, but checkpoints carry them. Zeros draw nothing from the
  // global generator, so the model initializes exactly as the baseline does.
  utility = register_buffer("utility", torch::zeros({H}, torch::kFloat));
  age = register_buffer("age", torch::zeros({H}, torch::kInt64));
  due = register_buffer("due", torch::zeros({}, torch::kFloat64));
  replaced = register_buffer("replaced", torch::zeros({}, torch::kInt64));
}

torch::Tensor CbpMlpImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  auto h = torch::relu(c_fc(tp_copy_in(x, tp)));
  auto a = h * h;  // ReLU^2, as MLPImpl::forward: (B, T, H), this rank's H / tp units under TP
  if (ctx.training) {
    torch::NoGradGuard ng;
    // a >= 0, so |a| = a. Summed in fp32 (bf16 under autocast) without an fp32 copy of a.
    auto s = a.detach().reshape({-1, a.size(-1)}).sum({0}, false, torch::kFloat);
    act_sum = act_sum.defined() ? act_sum.add_(s) : s;
    act_tokens += a.numel() / a.size(-1);
  }
  return tp_reduce_out(c_proj(a), tp);
}

void CbpMlpImpl::after_step(StepCtx& sctx) {
  torch::NoGradGuard ng;
  if (dp_active(sctx.dp)) {
    // The whole step's activations, every rank's rows: all ranks rank the same utilities and replace
    // the same units (the redraw's generator is already the same everywhere). Every rank has made the
    // same training forwards, so all have a sum or none has.
    auto n = torch::full({1}, act_tokens, torch::kInt64);
    dp_sum(sctx.dp, n);
    act_tokens = n.item<int64_t>();
    if (act_tokens > 0) {
      if (!act_sum.defined()) act_sum = torch::zeros({utility.size(0)}, utility.options());
      dp_sum(sctx.dp, act_sum);
    }
  }
  if (act_tokens > 0) {  // no training forward this step (a test calling the hook alone): no new evidence
    auto out_mag = c_proj->weight.abs().sum({0}, false, torch::kFloat);  // (H,) sum_k |W_proj[k, i]|
    if (tp && tp->size > 1) {  // every unit's numbers on every shard: all rank the same units
      act_sum = tp_unshard(act_sum, 0, *tp);
      out_mag = tp_unshard(out_mag, 0, *tp);
    }
    utility.mul_(opt.decay).add_(act_sum / static_cast<double>(act_tokens) * out_mag, 1 - opt.decay);
    act_sum = torch::Tensor();
    act_tokens = 0;
  }
  age.add_(1);
  const auto eligible = age > opt.maturity;
  const int64_t n_eligible = eligible.sum().item<int64_t>();
  due.add_(opt.rate * static_cast<double>(n_eligible));
  if (sctx.step % opt.every == 0) {
    const int64_t n = std::min(static_cast<int64_t>(std::floor(due.item<double>())), n_eligible);
    if (n > 0) {
      // Bias-corrected utility in fp64; units not eligible rank last (their 0/0 at age 0 too).
      auto ranked = (utility.to(torch::kFloat64) / (1 - torch::pow(opt.decay, age.to(torch::kFloat64))))
                        .masked_fill(eligible.logical_not(), std::numeric_limits<double>::infinity());
      // Stable: ties go to the lower index, the same on every run.
      auto order = std::get<1>(torch::sort(ranked, /*stable=*/true, /*dim=*/0, /*descending=*/false));
      replace(order.slice(0, 0, n), sctx.step, sctx);
      due.sub_(static_cast<double>(n));
    }
  }
  const std::string L = "cbp.L" + std::to_string(opt.layer);
  const double total = replaced.item<double>();
  sctx.stats[L + ".replaced"] = total;
  sctx.stats[L + ".utility"] = utility.mean().item<double>();
  sctx.stats["cbp.replaced"] += total;  // summed over the cbp layers
}

void CbpMlpImpl::replace(const torch::Tensor& idx, int64_t step, const StepCtx& sctx) {
  torch::NoGradGuard ng;
  const int64_t n = idx.numel(), C = c_fc->weight.size(1);
  // A generator of its own per (model seed, layer, step): nothing to save for a resume, and the
  // global generator (dropout, sampling) is left alone.
  const uint64_t key[2] = {static_cast<uint64_t>(opt.layer), static_cast<uint64_t>(step)};
  auto gen = at::detail::createCPUGenerator(hash64({reinterpret_cast<const char*>(key), sizeof key}, opt.seed));
  const double bound = std::sqrt(3.0 / static_cast<double>(C));  // MLPImpl's c_fc init (gpt.cpp init_linear)
  auto fresh = torch::empty({n, C}, torch::kFloat).uniform_(-bound, bound, gen);
  auto i = idx.to(c_fc->weight.device(), torch::kInt64);
  utility.index_fill_(0, i, 0.0);  // every unit's, on every shard
  age.index_fill_(0, i, 0);
  replaced.add_(n);
  if (tp && tp->size > 1) {  // this shard's units of the n, at their local rows, with their draws
    const int64_t lo = tp->rank * c_fc->weight.size(0), hi = lo + c_fc->weight.size(0);
    auto mine = i.ge(lo).logical_and(i.lt(hi));
    fresh = fresh.index_select(0, mine.nonzero().squeeze(1).to(torch::kCPU));
    i = i.masked_select(mine) - lo;
  }
  c_fc->weight.index_copy_(0, i, fresh.to(c_fc->weight.options()));  // incoming: rows
  c_proj->weight.index_fill_(1, i, 0.0);                              // outgoing: columns
  if (!sctx.optim_state) return;
  for (auto& [name, s] : sctx.optim_state(c_fc->weight)) s.index_fill_(0, i, 0.0);
  for (auto& [name, s] : sctx.optim_state(c_proj->weight)) s.index_fill_(1, i, 0.0);
}

double CbpMlpImpl::flops_per_token(int64_t T) const {
  return MLPImpl::flops_per_token(T) + static_cast<double>(c_fc->weight.size(0));
}

std::string CbpMlpImpl::describe() const {
  std::ostringstream os;
  os << MLPImpl::describe() << " + continual backprop (rate " << opt.rate << ", maturity " << opt.maturity
     << ", decay " << opt.decay << ", every " << opt.every << ")";
  return os.str();
}

CbpOptions CbpOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  CbpOptions o;
  o.seed = cfg.seed;
  o.rate = args.f64("rate");
  o.maturity = args.i64("maturity");
  o.decay = args.f64("decay");
  o.every = args.i64("every");
  return o;
}

void apply_cbp(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  // The catalog's checks again, for a ModelConfig assembled by hand; same messages.
  const catalog::ModelView v = check_module(catalog::spec_cbp(), args, cfg, plan);

  const CbpOptions base = CbpOptions::from(args, cfg);
  std::vector<int64_t> layers = args.list("layers");
  if (layers.empty())
    for (int64_t i = 0; i < v.depth; ++i) layers.push_back(i);
  for (int64_t l : layers) {
    CbpOptions o = base;
    o.layer = l;
    plan.layers[l].ffn = [cfg, o] { return Ffn(std::make_shared<CbpMlpImpl>(cfg, o)); };
    plan.layers[l].modules.push_back("cbp");
  }
}

}  // namespace slm
