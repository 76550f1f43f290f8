#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "catalog/modules.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

namespace {

// nanochat's init for input projections: uniform with the std of N(0, 1/fan_in).
void init_uniform(torch::nn::Linear& l, int64_t fan_in) {
  const double bound = std::sqrt(3.0) / std::sqrt(static_cast<double>(fan_in));
  torch::NoGradGuard ng;
  l->weight.uniform_(-bound, bound);
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// This layer's load statistics, and their means over the MoE layers of this forward.
void record(Ctx& ctx, int64_t layer, const MoeDispatch& d) {
  const std::string L = "moe.L" + std::to_string(layer);
  const auto E = static_cast<int64_t>(d.load.size());
  const int width = static_cast<int>(std::to_string(E - 1).size());  // load.03 sorts before load.10
  const double mean = static_cast<double>(d.picks) / static_cast<double>(E);
  double var = 0, top = 0, kept = 0;
  for (int64_t i = 0; i < E; ++i) {
    std::string id = std::to_string(i);
    id.insert(0, width - id.size(), '0');
    const double n = static_cast<double>(d.load[i]);
    ctx.stats[L + ".load." + id] = n / static_cast<double>(d.picks);  // share of the picks, before capacity
    var += (n - mean) * (n - mean) / static_cast<double>(E);
    top = std::max(top, n);
    kept += static_cast<double>(d.counts[i]);
  }
  const double cv = std::sqrt(var) / mean, max_load = top / mean, dropped = 1.0 - kept / static_cast<double>(d.picks);
  ctx.stats[L + ".load_cv"] = cv;         // 0 = perfectly balanced; sqrt(E - 1) = one expert takes all
  ctx.stats[L + ".max_load"] = max_load;  // busiest expert over the mean
  ctx.stats[L + ".dropped"] = dropped;    // share of picks over capacity (training only)
  double& n = ctx.stats["moe.n_layers"];
  auto running_mean = [&](const char* key, double v) { ctx.stats[key] = (ctx.stats[key] * n + v) / (n + 1); };
  running_mean("moe.load_cv", cv);
  running_mean("moe.max_load", max_load);
  running_mean("moe.dropped", dropped);
  n += 1;
}

}  // namespace

int64_t MoeOptions::hidden() const { return catalog::moe_expert_hidden(expert_hidden, d_model, n_shared, top_k); }

MoeOptions MoeOptions::from(const catalog::ModuleArgs& a, const ModelConfig& cfg, int64_t layer) {
  MoeOptions o;
  o.d_model = cfg.d_model;
  o.layer = layer;
  o.seed = cfg.seed;
  o.n_shared = a.i64("n_shared");
  o.n_routed = a.i64("n_routed");
  o.top_k = a.i64("top_k");
  o.expert_hidden = a.i64("expert_hidden");
  o.score = a.str("score");
  o.route_scale = a.f64("route_scale");
  o.z_loss = a.f64("z_loss");
  o.aux_loss = a.f64("aux_loss");
  o.bias_rate = a.f64("bias_rate");
  o.capacity_factor = a.f64("capacity_factor");
  return o;
}

MoeExpertImpl::MoeExpertImpl(int64_t d_model, int64_t hidden) {
  auto lin = [](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  c_fc = register_module("c_fc", lin(d_model, hidden));
  c_proj = register_module("c_proj", lin(hidden, d_model));
  init_uniform(c_fc, d_model);
  torch::NoGradGuard ng;
  c_proj->weight.zero_();  // every expert starts at 0, as the dense MLP does
}

torch::Tensor MoeExpertImpl::forward(const torch::Tensor& x) {
  auto h = torch::relu(c_fc(x));
  return c_proj(h * h);  // ReLU^2
}

torch::Tensor moe_z_loss(const torch::Tensor& logits) { return torch::logsumexp(logits, -1).pow(2).mean(); }

torch::Tensor moe_balance_loss(const torch::Tensor& probs, const torch::Tensor& experts, const TpGroupPtr& dp) {
  const int64_t E = probs.size(1);
  // f counts picks (no gradient: top-k is not differentiable); P carries the gradient.
  if (dp_active(dp)) {
    // Every rank's picks (integers: exact), so each rank's E sum_i f_i P_i has the global f and the
    // mean over the ranks (theirs are the same size) is one process's loss and gradient.
    auto n = torch::cat({torch::bincount(experts.reshape({-1}), {}, E), torch::full({1}, experts.numel(), torch::kInt64)});
    dp_sum(dp, n);
    auto f = n.slice(0, 0, E).to(probs.scalar_type()) / static_cast<double>(n[E].item<int64_t>());
    return static_cast<double>(E) * (f * probs.mean(0)).sum();
  }
  auto f = torch::bincount(experts.reshape({-1}), {}, E).to(probs.scalar_type()) / static_cast<double>(experts.numel());
  return static_cast<double>(E) * (f * probs.mean(0)).sum();
}

MoeImpl::MoeImpl(const MoeOptions& o) : opt(o), hidden(o.hidden()) {
  const int64_t C = o.d_model, E = o.n_routed;
  // Guards at init; the catalog check says the same before a plan runs.
  SLM_CHECK(C >= 1 && E >= 1 && o.n_shared >= 0, "[moe] layer ", o.layer, ": d_model (", C, ") and n_routed (", E,
            ") must be >= 1 and n_shared (", o.n_shared, ") >= 0");
  SLM_CHECK(o.top_k >= 1 && o.top_k <= E, "[moe] layer ", o.layer, ": top_k ", o.top_k,
            " must be in 1..n_routed (", E, "); lower top_k or raise n_routed");
  SLM_CHECK(o.score == "softmax" || o.score == "sigmoid", "[moe] layer ", o.layer, ": score '", o.score,
            "' is not softmax or sigmoid");
  SLM_CHECK(o.route_scale > 0 && o.z_loss >= 0 && o.aux_loss >= 0 && o.bias_rate >= 0 && o.capacity_factor >= 0,
            "[moe] layer ", o.layer, ": route_scale (", o.route_scale, ") must be > 0 and z_loss, aux_loss, bias_rate, ",
            "capacity_factor (", o.z_loss, ", ", o.aux_loss, ", ", o.bias_rate, ", ", o.capacity_factor, ") >= 0");
  {
    // Make the draws of the dense MLP this layer would have had, so every later layer initializes as
    // in the baseline (paired comparisons); the MoE then draws from its own seed.
    ModelConfig dense;
    dense.d_model = C;
    MLPImpl replaced(dense);
  }
  PrivateInit rng(o.seed * 1000003ULL + 7919ULL * static_cast<uint64_t>(o.layer) + 2);
  router = register_module("router", torch::nn::Linear(torch::nn::LinearOptions(C, E).bias(false)));
  init_uniform(router, C);
  if (o.n_shared > 0) shared = register_module("shared", MoeExpert(C, o.n_shared * hidden));
  experts = register_module("experts", torch::nn::ModuleList());
  for (int64_t i = 0; i < E; ++i) experts->push_back(MoeExpert(C, hidden));
  balance_bias = register_parameter("balance_bias", torch::zeros({E}), /*requires_grad=*/false);
  step_load = register_buffer("step_load", torch::zeros({E}, torch::kInt64));
}

MoeRouting MoeImpl::route(const torch::Tensor& xf) {
  MoeRouting r;
  // Routing in fp32: bf16 scores tie and flip the top-k. (Under autocast the matmul itself is bf16.)
  r.logits = router(xf).to(torch::kFloat32);  // (N, E)
  const bool sigmoid = opt.score == "sigmoid";
  auto s = sigmoid ? torch::sigmoid(r.logits) : torch::softmax(r.logits, -1);
  r.probs = sigmoid ? s / s.sum(-1, true) : s;
  {
    torch::NoGradGuard ng;  // the bias picks experts but never enters a gate: no gradient reaches it
    r.experts = std::get<1>((s + balance_bias.to(torch::kFloat32)).topk(opt.top_k, -1));  // (N, K)
  }
  auto g = s.gather(1, r.experts);  // the unbiased scores
  if (sigmoid) g = g / g.sum(-1, true);
  r.gates = g * opt.route_scale;
  return r;
}

MoeDispatch MoeImpl::dispatch(const MoeRouting& r, int64_t groups, bool drop) const {
  torch::NoGradGuard ng;
  const int64_t N = r.experts.size(0), K = r.experts.size(1), E = opt.n_routed, A = N * K;
  SLM_CHECK(groups >= 1 && N % groups == 0, "[moe] ", N, " tokens do not split into ", groups, " rows");
  MoeDispatch d;
  d.picks = A;
  auto e = r.experts.reshape({-1});  // (A) pick p = token p / K, slot p % K: position order within a row
  d.load = to_vector(torch::bincount(e, {}, E));
  // Sort key: the expert, and with capacity the (expert, row) group. Stable, so a group's picks stay
  // in position order and the earliest ones are kept. (The optional<bool> picks the stable overload:
  // a plain `true` would convert to the dim of sort(dim, descending).)
  const int64_t n = N / groups;  // tokens per row
  auto key = drop ? e * groups + torch::div(torch::arange(A, e.options()), n * K, "floor") : e;
  auto order = std::get<1>(key.sort(/*stable=*/true, 0, false));  // (A) picks grouped by expert
  if (drop) {
    d.capacity = static_cast<int64_t>(std::ceil(static_cast<double>(n * K) / E * opt.capacity_factor));
    auto counts = torch::bincount(key, {}, E * groups);
    auto start = counts.cumsum(0) - counts;  // first sorted slot of each group
    auto rank = torch::arange(A, e.options()) - start.index_select(0, key.index_select(0, order));
    order = order.masked_select(rank.lt(d.capacity));
  }
  d.pick = order;
  d.token = torch::div(order, K, "floor");
  d.counts = to_vector(torch::bincount(e.index_select(0, order), {}, E));
  return d;
}

torch::Tensor MoeImpl::run_experts(const torch::Tensor& xf, const MoeRouting& r, const MoeDispatch& d) {
  // One gather for every expert, split (not sliced: a slice's backward writes a zero-padded (A', C)
  // gradient per expert, a split's is one cat) into each expert's contiguous rows.
  auto xs = xf.index_select(0, d.token).split_with_sizes(d.counts);  // E x (counts[i], C)
  std::vector<torch::Tensor> ys;
  for (int64_t i = 0; i < opt.n_routed; ++i)  // experts, not tokens
    if (d.counts[i] > 0) ys.push_back(experts[i]->as<MoeExpertImpl>()->forward(xs[i]));
  if (ys.empty()) return torch::zeros_like(xf);
  auto y = tp_reduce_out(torch::cat(ys), tp);  // (A', C), whole under TP
  auto w = r.gates.reshape({-1}).index_select(0, d.pick).unsqueeze(1).to(y.scalar_type());
  return torch::zeros({xf.size(0), xf.size(1)}, y.options()).index_add(0, d.token, y * w);  // (N, C)
}

void MoeImpl::update_bias(const torch::Tensor& load) {
  torch::NoGradGuard ng;
  auto l = load.to(torch::kFloat64);
  auto gap = l.mean() - l;  // > 0: underloaded, its bias rises
  balance_bias.add_(gap.sign().to(balance_bias.scalar_type()), opt.bias_rate);
}

void MoeImpl::after_step(StepCtx& sc) {
  // The whole step's load, every rank's picks: all ranks move the biases alike (integers: exact).
  if (opt.bias_rate > 0) dp_sum(sc.dp, step_load);
  if (opt.bias_rate > 0 && step_load.sum().item<int64_t>() > 0) update_bias(step_load);
  step_load.zero_();
  auto b = balance_bias.to(torch::kFloat64);
  sc.stats["moe.L" + std::to_string(opt.layer) + ".bias_spread"] = (b.max() - b.min()).item<double>();
}

torch::Tensor MoeImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  SLM_CHECK(x.dim() >= 2 && x.size(-1) == opt.d_model, "[moe] layer ", opt.layer, " expects x of shape (B, T, ",
            opt.d_model, "), got ", x.sizes());
  auto xf = x.reshape({-1, opt.d_model});  // (N, C), row by row
  auto r = route(xf);
  auto d = dispatch(r, x.size(0), ctx.training && opt.capacity_factor > 0);
  const auto xin = tp_copy_in(xf, tp);  // the experts' input: its gradient summed over the TP shards
  auto y = run_experts(xin, r, d);
  if (shared) y = y + tp_reduce_out(shared->forward(xin), tp);
  if (ctx.training) {
    const std::string L = ".L" + std::to_string(opt.layer);
    if (opt.z_loss > 0) ctx.aux.push_back({"moe_z" + L, moe_z_loss(r.logits), opt.z_loss});
    if (opt.aux_loss > 0) ctx.aux.push_back({"moe_aux" + L, moe_balance_loss(r.probs, r.experts, ctx.dp), opt.aux_loss});
    if (opt.bias_rate > 0) {  // the step's load, for the bias update in after_step
      torch::NoGradGuard ng;
      step_load.add_(torch::tensor(d.load, torch::kInt64).to(step_load.device()));
    }
  }
  record(ctx, opt.layer, d);
  return y.view(x.sizes());
}

std::string MoeImpl::shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) {
  if (!g || g->size == 1) return "";
  if (tp) return "already split";
  if (hidden % g->size != 0)
    return "expert hidden size " + std::to_string(hidden) + " does not divide by tp " + std::to_string(g->size) +
           "; set moe.expert_hidden to a multiple of it";
  torch::NoGradGuard ng;
  auto split = [&](MoeExpertImpl& e, const std::string& name) {
    e.c_fc->weight.set_data(tp_shard(e.c_fc->weight.detach(), 0, *g));
    e.c_proj->weight.set_data(tp_shard(e.c_proj->weight.detach(), 1, *g));
    splits[name + ".c_fc.weight"] = 0;
    splits[name + ".c_proj.weight"] = 1;
  };
  if (shared) split(*shared, "shared");  // N_s h hidden units: divides when h does
  for (int64_t i = 0; i < opt.n_routed; ++i) split(*experts[i]->as<MoeExpertImpl>(), "experts." + std::to_string(i));
  tp = g;
  return "";
}

int64_t MoeImpl::active_params() const {
  const int64_t C = opt.d_model;
  return opt.n_routed * C + (opt.n_shared + opt.top_k) * 2 * C * hidden;
}

int64_t MoeImpl::total_params() const {
  const int64_t C = opt.d_model;
  return opt.n_routed * C + (opt.n_shared + opt.n_routed) * 2 * C * hidden;
}

double MoeImpl::flops_per_token(int64_t) const { return 6.0 * static_cast<double>(active_params()); }

std::string MoeImpl::describe() const {
  std::ostringstream os;
  os << "moe (" << opt.n_shared << " shared + " << opt.n_routed << " routed relu2 experts of " << hidden << ", top-"
     << opt.top_k << " " << opt.score;
  if (opt.route_scale != 1.0) os << " x" << opt.route_scale;
  os << ", z-loss " << opt.z_loss << ", aux " << opt.aux_loss << ", bias rate " << opt.bias_rate << ", capacity ";
  if (opt.capacity_factor > 0) os << opt.capacity_factor << " in training";
  else os << "unlimited";
  os << "; " << active_params() << " of " << total_params() << " params active)";
  return os.str();
}

void apply_moe(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const catalog::ModelView v = check_module(catalog::spec_moe(), args, cfg, plan);
  auto layers = args.list("layers");
  if (layers.empty())
    for (int64_t i = 0; i < v.depth; ++i) layers.push_back(i);
  for (int64_t l : layers) {
    const auto& mods = plan.layers[l].modules;
    // Both replace the dense FFN: the later one would silently discard the other.
    SLM_CHECK(std::find(mods.begin(), mods.end(), "cbp") == mods.end(), "[moe] layer ", l,
              " already has cbp, which renews the dense MLP that moe replaces; give moe.layers and cbp.layers "
              "disjoint layers");
    const MoeOptions o = MoeOptions::from(args, cfg, l);
    plan.layers[l].ffn = [o] { return Ffn(std::make_shared<MoeImpl>(o)); };
    plan.layers[l].modules.push_back("moe");
  }
}

}  // namespace slm
