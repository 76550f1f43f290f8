#include "train/optim.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "common/device.h"
#include "common/error.h"

namespace slm {

namespace {

// Keller Jordan's quintic coefficients: they maximize the slope at 0 so small singular values
// grow fast, at the price of converging to a band around 1 (about [0.7, 1.2]) rather than to 1.
constexpr double kNsA = 3.4445, kNsB = -4.7750, kNsC = 2.0315;

// Every state tensor under its checkpoint name, sharing storage with the optimizer's own tensors.
std::map<std::string, torch::Tensor> live_state(const std::map<std::string, torch::Tensor>& exp_avg,
                                                const std::map<std::string, torch::Tensor>& exp_avg_sq,
                                                const std::map<std::string, torch::Tensor>& momentum) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : exp_avg) out[name + ".exp_avg"] = t;
  for (const auto& [name, t] : exp_avg_sq) out[name + ".exp_avg_sq"] = t;
  for (const auto& [name, t] : momentum) out[name + ".momentum"] = t;
  return out;
}

// Whether PyTorch's fused AdamW kernel takes these lists: a device and LibTorch that have it, and
// fp32 params and grads shaped and strided like their (contiguous fp32) state. Metadata only.
bool fusable(const std::vector<torch::Tensor>& ps, const std::vector<torch::Tensor>& grads,
             const std::vector<torch::Tensor>& ms) {
  if (!device::fused_adamw_available(ps[0].device())) return false;
  for (size_t i = 0; i < ps.size(); ++i) {
    const torch::Tensor &p = ps[i], &g = grads[i], &m = ms[i];
    if (p.scalar_type() != torch::kFloat || g.scalar_type() != torch::kFloat || p.device() != ps[0].device() ||
        g.device() != p.device() || p.numel() == 0 || p.strides() != m.strides() || g.strides() != m.strides() ||
        p.sizes() != g.sizes())
      return false;
  }
  return true;
}

// An fp32 zero tensor shaped and placed like p: optimizer state stays fp32 whatever p's dtype.
torch::Tensor fp32_zeros_like(const torch::Tensor& p) {
  return torch::zeros(p.sizes(), p.options().dtype(torch::kFloat));
}

}  // namespace

// Validates the groups once, so step() can trust them, and allocates all state up front:
// state() then has the same names from step 0, which keeps checkpoints of any step restorable.
Optimizer::Optimizer(std::vector<ParamGroup> groups, OptimOptions opt) : groups_(std::move(groups)), opt_(opt) {
  SLM_CHECK(opt_.beta1 >= 0 && opt_.beta1 < 1 && opt_.beta2 >= 0 && opt_.beta2 < 1,
            "[optim] adam betas (", opt_.beta1, ", ", opt_.beta2, ") must lie in [0, 1); fix adam_beta1/adam_beta2");
  SLM_CHECK(opt_.momentum >= 0 && opt_.momentum < 1,
            "[optim] muon momentum ", opt_.momentum, " must lie in [0, 1); fix muon_momentum");
  SLM_CHECK(opt_.eps >= 0, "[optim] adam eps ", opt_.eps, " is negative; use a small positive eps");
  SLM_CHECK(opt_.ns_steps >= 1, "[optim] ns_steps ", opt_.ns_steps, " must be at least 1 (5 is usual)");
  torch::NoGradGuard no_grad;
  std::set<std::string> seen;
  for (const ParamGroup& g : groups_) {
    SLM_CHECK(g.kind == "adamw" || g.kind == "muon",
              "[optim] group '", g.name, "' has kind '", g.kind, "'; use \"adamw\" or \"muon\"");
    SLM_CHECK(g.names.size() == g.params.size(), "[optim] group '", g.name, "' has ", g.names.size(), " names for ",
              g.params.size(), " params; give exactly one name per parameter");
    SLM_CHECK(std::isfinite(g.base_lr) && g.base_lr >= 0 && std::isfinite(g.weight_decay) && g.weight_decay >= 0,
              "[optim] group '", g.name, "' has lr ", g.base_lr, " and weight decay ", g.weight_decay,
              "; both must be finite and non-negative");
    for (size_t i = 0; i < g.params.size(); ++i) {
      const std::string& name = g.names[i];
      const torch::Tensor& p = g.params[i];
      SLM_CHECK(seen.insert(name).second, "[optim] parameter '", name,
                "' appears twice; put each parameter in exactly one group");
      SLM_CHECK(p.defined() && p.is_floating_point(), "[optim] parameter '", name,
                "' is undefined or not floating point; only float tensors can be optimized");
      if (g.kind == "muon") {
        SLM_CHECK(p.dim() == 2, "[optim] parameter '", name, "' has shape ", p.sizes(), " in muon group '", g.name,
                  "'; Muon takes 2-D matrices only, put it in an adamw group");
        momentum_[name] = fp32_zeros_like(p);
      } else {
        exp_avg_[name] = fp32_zeros_like(p);
        exp_avg_sq_[name] = fp32_zeros_like(p);
      }
    }
  }
}

// One update of every parameter that has a gradient. The step counter (and so Adam's bias
// correction) is global: a parameter skipped on some steps is corrected as if it had been updated.
// Nothing here waits for the device: learning rates and corrections are host numbers, the fused
// kernel's step count is written into a device tensor without reading anything back.
void Optimizer::step(double lr_factor, prof::Phases* phases) {
  SLM_CHECK(std::isfinite(lr_factor) && lr_factor >= 0, "[optim] lr factor ", lr_factor,
            " is not a finite non-negative number; check the lr schedule");
  torch::NoGradGuard no_grad;
  ++step_;
  for (ParamGroup& g : groups_) {
    const double lr = g.base_lr * lr_factor;
    if (g.kind == "adamw") {
      prof::Scope ps(phases, "adamw");
      adamw_step(g, lr);
      continue;
    }
    prof::Scope ps(phases, "muon");
    for (size_t i = 0; i < g.params.size(); ++i) {
      torch::Tensor& p = g.params[i];
      if (!p.grad().defined()) continue;
      // State is fp32; .to() is free when the grad already is.
      const torch::Tensor grad = p.grad().to(torch::kFloat);
      torch::Tensor& buf = momentum_.at(g.names[i]);
      buf.lerp_(grad, 1 - opt_.momentum);
      // Nesterov: step along the gradient pushed further toward the updated momentum.
      const torch::Tensor update = grad.lerp(buf, opt_.momentum);
      // bf16 Newton-Schulz is what GPU Muon uses (fast tensor cores, accuracy is ample for a band
      // around 1). On CPU we stay in fp32: bf16 matmul there is slow or emulated, and fp32 keeps
      // CPU runs reproducible against the fp32 reference in the tests.
      auto shard = tp_ ? tp_splits_.find(g.names[i]) : tp_splits_.end();
      const bool split = shard != tp_splits_.end();
      const torch::Tensor whole = split ? tp_unshard(update, shard->second, *tp_) : update;
      torch::Tensor x;
      {
        prof::Scope ns(phases, "muon_ns");
        x = zeropower_newton_schulz(whole, opt_.ns_steps, p.is_cuda());
      }
      // Orthogonalized updates have unit spectral norm; tall matrices get a larger step so their
      // per-element update RMS matches that of square ones.
      const double scale = std::sqrt(std::max(1.0, static_cast<double>(whole.size(0)) / whole.size(1)));
      if (split) x = tp_shard(x, shard->second, *tp_);
      if (g.weight_decay > 0) p.mul_(1 - lr * g.weight_decay);
      p.add_(x, -lr * scale);
    }
  }
}

// AdamW on a whole group at once: every parameter with a gradient goes through each operation
// together (multi-tensor _foreach_ ops: a few kernel launches per group on a GPU instead of a few per
// parameter). On CPU the _foreach_ ops are the per-tensor kernels in a loop, so the bits are those of
// the per-parameter formula; tests/test_optim.cpp keeps that formula and checks it. On CUDA with
// LibTorch >= 2.0, fp32 groups take PyTorch's fused AdamW kernel instead: the same formula (decoupled
// decay, bias corrections, eps outside the square root), one launch, other rounding.
void Optimizer::adamw_step(ParamGroup& g, double lr) {
  std::vector<torch::Tensor> ps, grads, ms, vs;
  for (size_t i = 0; i < g.params.size(); ++i) {
    const torch::Tensor& p = g.params[i];
    if (!p.grad().defined()) continue;
    ps.push_back(p);
    grads.push_back(p.grad().to(torch::kFloat));  // state is fp32; free when the grad already is
    ms.push_back(exp_avg_.at(g.names[i]));
    vs.push_back(exp_avg_sq_.at(g.names[i]));
  }
  if (ps.empty()) return;
  const double t = static_cast<double>(step_);
  if (opt_.fused && fusable(ps, grads, ms)) {
    // The kernel reads t from a float32 device tensor and does not advance it: fill_ writes our
    // global count (exact below 2^24 steps) with no read back to the host.
    if (!fused_step_.defined() || fused_step_.device() != ps[0].device())
      fused_step_ = torch::zeros({}, ps[0].options().dtype(torch::kFloat));
    fused_step_.fill_(t);
    device::fused_adamw_(ps, grads, ms, vs, fused_step_, lr, opt_.beta1, opt_.beta2, g.weight_decay, opt_.eps);
    return;
  }
  const double bc1 = 1 - std::pow(opt_.beta1, t), bc2 = 1 - std::pow(opt_.beta2, t);
  device::foreach_lerp_(ms, grads, 1 - opt_.beta1);
  at::_foreach_mul_(vs, opt_.beta2);
  at::_foreach_addcmul_(vs, grads, grads, 1 - opt_.beta2);
  grads.clear();
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(vs);
  at::_foreach_div_(denom, std::sqrt(bc2));
  at::_foreach_add_(denom, opt_.eps);
  // m / denom, then add_: unlike addcdiv_, add_ accepts a p whose dtype differs from the fp32 state
  // (addcdiv_ asserts on mixed dtypes in LibTorch 1.13 CPU), and it rounds as the per-parameter
  // formula does (addcdiv_ multiplies by the step size before dividing).
  const std::vector<torch::Tensor> update = at::_foreach_div(ms, denom);
  denom.clear();
  // Decoupled decay: shrinks p directly, never enters the moments.
  if (g.weight_decay > 0) at::_foreach_mul_(ps, 1 - lr * g.weight_decay);
  at::_foreach_add_(ps, update, -lr / bc1);
}
// Drops the gradients instead of zeroing them: no memset, the next backward writes fresh ones
// (same values as accumulating into zeros), and a parameter the next backward does not reach
// stays without grad, so step() skips it rather than decaying it on a zero gradient.
void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (torch::Tensor& p : g.params) p.mutable_grad() = torch::Tensor();
}

// Clones, not the live tensors: a caller may hold the map (e.g. while writing a checkpoint)
// across later steps without the snapshot changing under it, or write into it without
// corrupting training. The cost is one copy of the state, paid only when checkpointing.
std::map<std::string, torch::Tensor> Optimizer::state() const {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> out = live_state(exp_avg_, exp_avg_sq_, momentum_);
  for (auto& [name, t] : out) t = t.clone();
  out["step"] = torch::scalar_tensor(step_, torch::kInt64);
  return out;
}

// Checks the whole map before copying anything, so a rejected map leaves the optimizer as it was.
// Values are copied into the existing tensors (device and dtype kept) for a bitwise-exact resume.
void Optimizer::restore(const std::map<std::string, torch::Tensor>& state) {
  torch::NoGradGuard no_grad;
  const char* fix = "; the checkpoint was written for another model or optimizer setup, resume with the same config";
  std::map<std::string, torch::Tensor> live = live_state(exp_avg_, exp_avg_sq_, momentum_);
  for (const auto& [key, dst] : live) {
    auto it = state.find(key);
    SLM_CHECK(it != state.end(), "[optim] optimizer state '", key, "' is missing", fix);
    const torch::Tensor& src = it->second;
    SLM_CHECK(src.defined() && src.sizes() == dst.sizes(), "[optim] optimizer state '", key, "' has shape ",
              src.defined() ? src.sizes() : torch::IntArrayRef{}, ", expected ", dst.sizes(), fix);
    SLM_CHECK(src.scalar_type() == dst.scalar_type(), "[optim] optimizer state '", key, "' is ", src.scalar_type(),
              ", expected ", dst.scalar_type(), "; a converted copy would not resume bitwise, save it unconverted");
  }
  auto step = state.find("step");
  SLM_CHECK(step != state.end(), "[optim] optimizer state 'step' is missing", fix);
  SLM_CHECK(step->second.defined() && step->second.numel() == 1 && step->second.scalar_type() == torch::kInt64 &&
                step->second.item<int64_t>() >= 0,
            "[optim] optimizer state 'step' must be one non-negative int64; the checkpoint is corrupt, use another");
  for (const auto& [key, src] : state)
    SLM_CHECK(key == "step" || live.count(key), "[optim] optimizer state '", key, "' is unknown to this optimizer",
              fix);
  for (auto& [key, dst] : live) dst.copy_(state.at(key));
  step_ = step->second.item<int64_t>();
}

// By identity (is_same), not by value or name: the caller holds the model's own parameter tensor.
std::map<std::string, torch::Tensor> Optimizer::state_of(const torch::Tensor& p) const {
  for (const ParamGroup& g : groups_)
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!g.params[i].is_same(p)) continue;
      const std::string& name = g.names[i];
      if (g.kind == "muon") return {{"momentum", momentum_.at(name)}};
      return {{"exp_avg", exp_avg_.at(name)}, {"exp_avg_sq", exp_avg_sq_.at(name)}};
    }
  return {};
}

// G / ||G||_F puts every singular value in (0, 1]; each quintic step p(s) = a s + b s^3 + c s^5
// (applied to all singular values at once via X X^T) pushes them toward 1 while keeping U and V.
torch::Tensor zeropower_newton_schulz(const torch::Tensor& g, int steps, bool use_bf16) {
  SLM_CHECK(g.dim() == 2, "[optim] Newton-Schulz needs a 2-D matrix, got shape ", g.sizes());
  SLM_CHECK(steps >= 0, "[optim] Newton-Schulz steps ", steps, " is negative; use 5");
  torch::NoGradGuard no_grad;
  torch::Tensor x = g.to(use_bf16 ? torch::kBFloat16 : torch::kFloat);
  // Iterate on the wide orientation so X X^T is the smaller Gram matrix.
  const bool tall = g.size(0) > g.size(1);
  if (tall) x = x.t();
  // The 1e-7 keeps a zero matrix at zero instead of 0/0.
  x = x / (x.norm() + 1e-7);
  for (int i = 0; i < steps; ++i) {
    const torch::Tensor a = torch::mm(x, x.t());
    const torch::Tensor b = torch::addmm(a, a, a, kNsB, kNsC);  // b*A + c*A*A
    x = torch::addmm(x, b, x, kNsA, 1.0);                      // a*X + B*X
  }
  if (tall) x = x.t();
  return x.to(g.scalar_type());
}

void Optimizer::set_tensor_parallel(TpGroupPtr g, TpSplits dims) {
  tp_ = std::move(g);
  tp_splits_ = std::move(dims);
}

}  // namespace slm
