#include "model/gpt.h"

#include <typeinfo>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/fused_ce.h"

namespace slm {

namespace F = torch::nn::functional;

double ComponentImpl::flops_per_token(int64_t) const {
  double n = 0;
  for (auto& p : parameters())
    if (p.dim() == 2) n += static_cast<double>(p.numel());
  return 6.0 * n;
}

ModelPlan model_plan(const ModelConfig& c) {
  ModelPlan plan;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    LayerPlan lp;
    lp.kind = c.layer_kind(i);
    lp.mixer = [c] { return Mixer(std::make_shared<CausalSelfAttentionImpl>(c)); };
    lp.ffn = [c] { return Ffn(std::make_shared<MLPImpl>(c)); };
    plan.layers.push_back(std::move(lp));
  }
  for (auto& m : c.modules) {
    const ModelModule* mm = find_model_module(m.name);
    if (mm) mm->apply(m, c, plan);
  }
  return plan;
}

catalog::ModelView plan_view(const ModelConfig& c, const ModelPlan& plan) {
  catalog::ModelView v;
  v.depth = static_cast<int64_t>(plan.layers.size());
  v.d_model = c.d_model;
  v.n_head = c.n_head;
  v.head_dim = c.head_dim;
  v.context = c.context;
  v.layer_pattern = c.layer_pattern;
  bool agrees = !v.layer_pattern.empty();
  for (int64_t i = 0; agrees && i < v.depth; ++i) agrees = plan.layers[i].kind == v.kind(i);
  if (!agrees) {  // a module changed kinds in the plan: spell the pattern out per layer
    v.layer_pattern.clear();
    for (auto& lp : plan.layers) v.layer_pattern += lp.kind;
  }
  return v;
}

catalog::ModelView check_module(const catalog::ModuleSpec& spec, const catalog::ModuleArgs& args,
                                const ModelConfig& c, const ModelPlan& plan) {
  catalog::ModelView v = plan_view(c, plan);
  auto errors = spec.check(args, v);
  std::string all;
  for (auto& e : errors) all += (all.empty() ? "" : "; ") + e;
  SLM_CHECK(errors.empty(), "[", spec.name, "] ", all);
  return v;
}

std::string layer_plan(const GPTImpl& m) {
  std::ostringstream os;
  for (int64_t i = 0; i < m.cfg.n_layer; ++i) {
    const auto& b = *m.blocks->ptr(i)->as<BlockImpl>();
    os << "layer " << i << ": " << b.kind << " " << b.mixer->describe() << " + " << b.ffn->describe();
    for (auto& br : b.branches) os << " + " << br->describe();
    if (b.wrap) os << " | " << b.wrap->describe();
    if (!m.plan.layers[i].modules.empty()) {
      os << " [";
      for (size_t j = 0; j < m.plan.layers[i].modules.size(); ++j) os << (j ? ", " : "") << m.plan.layers[i].modules[j];
      os << "]";
    }
    os << "\n";
  }
  for (auto& o : m.objectives) os << "objective: " << o->describe() << "\n";
  if (m.streams) os << "streams: " << m.streams->describe() << "\n";
  if (m.input) os << "input: " << m.input->describe() << "\n";
  for (auto& n : m.plan.notes) os << "note: " << n << "\n";
  return os.str();
}

torch::Tensor rms_norm(const torch::Tensor& x) {
  // Statistics in fp32: bf16 mean of squares loses the small components.
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6);
  return y.to(x.scalar_type());
}

PrivateInit::PrivateInit(uint64_t seed) {
  auto g = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(g.mutex());
  saved_ = g.get_state();
  g.set_current_seed(seed);
}

PrivateInit::~PrivateInit() {
  auto g = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_state(saved_);
}

std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t T, int64_t head_dim, double base) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto i = torch::arange(0, head_dim / 2, opts);
  auto inv_freq = torch::pow(base, -2.0 * i / static_cast<double>(head_dim));
  auto pos = torch::arange(0, T, opts);
  auto ang = torch::outer(pos, inv_freq);  // (T, D/2), computed in fp64 so long contexts stay exact
  return {ang.cos().to(torch::kFloat32), ang.sin().to(torch::kFloat32)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t T = x.size(1), half = x.size(3) / 2;
  auto c = cos.slice(0, 0, T).view({1, T, 1, half}).to(x.scalar_type());
  auto s = sin.slice(0, 0, T).view({1, T, 1, half}).to(x.scalar_type());
  auto x1 = x.slice(3, 0, half), x2 = x.slice(3, half);
  return torch::cat({x1 * c - x2 * s, x1 * s + x2 * c}, 3);
}

torch::Tensor cached_causal_mask(int64_t T_new, int64_t T_all, torch::Device dev) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  auto q = torch::arange(T_all - T_new, T_all, opts).unsqueeze(1);  // absolute positions of the queries
  auto k = torch::arange(0, T_all, opts).unsqueeze(0);
  return k.le(q).view({1, 1, T_new, T_all});
}

void set_tree_positions(Ctx& ctx, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t T = ctx.tree.size(0);
  SLM_CHECK(ctx.tree.dim() == 2 && ctx.tree.size(1) == T, "[model] a token tree's mask must be (T, T)");
  auto positions = ctx.tree.to(torch::kCPU).sum(1).to(torch::kInt64).sub(1).add(ctx.pos);  // depth 0 sits at pos
  SLM_CHECK(positions.max().item<int64_t>() < cos.size(0), "[model] a token tree reaches position ",
            positions.max().item<int64_t>(), ", past the context (", cos.size(0), " tokens); shorten the prompt or --max-tokens");
  ctx.positions = positions.to(cos.device());
  ctx.cos = cos.index_select(0, ctx.positions);
  ctx.sin = sin.index_select(0, ctx.positions);
  auto cached = torch::ones({T, ctx.pos}, ctx.tree.options());
  ctx.allowed = torch::cat({cached, ctx.tree}, 1).view({1, 1, T, ctx.pos + T}).to(cos.device());
}

torch::Tensor document_causal_mask(const torch::Tensor& doc_ids) {
  if (!doc_ids.defined()) return {};
  const int64_t T = doc_ids.size(1);
  auto same = doc_ids.unsqueeze(2).eq(doc_ids.unsqueeze(1));  // (B, T, T)
  auto causal = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(doc_ids.device())).tril();
  return same.logical_and(causal).unsqueeze(1);
}

namespace {
// nanochat's init: uniform with the std of N(0, 1/C), bounded.
void init_linear(torch::nn::Linear& l, int64_t fan_in) {
  const double bound = std::sqrt(3.0) / std::sqrt(static_cast<double>(fan_in));
  torch::NoGradGuard ng;
  l->weight.uniform_(-bound, bound);
}
}  // namespace

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const ModelConfig& c)
    : n_head(c.n_head), head_dim(c.head_dim), doc_mask(c.doc_mask) {
  const int64_t C = c.d_model;
  auto lin = [&](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  c_q = register_module("c_q", lin(C, C));
  c_k = register_module("c_k", lin(C, C));
  c_v = register_module("c_v", lin(C, C));
  c_proj = register_module("c_proj", lin(C, C));
  init_linear(c_q, C);
  init_linear(c_k, C);
  init_linear(c_v, C);
  torch::NoGradGuard ng;
  c_proj->weight.zero_();  // the block starts as the identity
}

CausalSelfAttentionImpl::Projected CausalSelfAttentionImpl::project_qkv(const torch::Tensor& xin, Ctx& ctx) {
  const int64_t B = xin.size(0), T = xin.size(1);
  Projected p;
  p.q = c_q(xin).view({B, T, n_head, head_dim});
  p.k = c_k(xin).view({B, T, n_head, head_dim});
  p.v = c_v(xin).view({B, T, n_head, head_dim});
  p.q = rms_norm(apply_rope(p.q, ctx.cos, ctx.sin));  // QK-norm after RoPE, as nanochat
  p.k = rms_norm(apply_rope(p.k, ctx.cos, ctx.sin));
  if (ctx.attn_logit_scale != 1.0) p.q = p.q * ctx.attn_logit_scale;  // YaRN's temperature on q.k
  p.allowed = ctx.allowed;
  if (ctx.caches) {  // generation: attend to the cached keys too; query i sits at position pos + i
    auto& kv = ctx.cache<KVCache>("attn");
    if (kv.k.defined()) {
      p.k = torch::cat({kv.k, p.k}, 1);
      p.v = torch::cat({kv.v, p.v}, 1);
    }
    kv.k = p.k;
    kv.v = p.v;
    // A token tree brings its own mask (set_tree_positions); the cache holds exactly the positions before it.
    p.allowed = ctx.tree.defined() ? ctx.allowed : cached_causal_mask(T, p.k.size(1), xin.device());
  }
  return p;
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  const int64_t B = x.size(0), T = x.size(1);
  const torch::Tensor xin = tp_copy_in(x, tp);  // one gradient all-reduce for q, k and v together
  const Projected p = project_qkv(xin, ctx);
  torch::Tensor y;
  if (ctx.ring)  // context parallel: this rank's tokens at ctx.positions, the rest through the ring
    y = ring_attention(p.q.transpose(1, 2), p.k.transpose(1, 2), p.v.transpose(1, 2), ctx.positions,
                       doc_mask ? ctx.doc_ids : torch::Tensor(), *ctx.ring);
  else
    y = device::attention(p.q.transpose(1, 2), p.k.transpose(1, 2), p.v.transpose(1, 2), p.allowed);  // (B, H, T, D)
  y = y.transpose(1, 2).contiguous().view({B, T, n_head * head_dim});
  return tp_reduce_out(c_proj(y), tp);
}

double CausalSelfAttentionImpl::flops_per_token(int64_t T) const {
  return ComponentImpl::flops_per_token(T) + 12.0 * n_head * head_dim * static_cast<double>(T);
}

std::string CausalSelfAttentionImpl::describe() const {
  std::ostringstream os;
  os << "attention (H=" << n_head << ", D=" << head_dim << ", rope, qk-norm" << (doc_mask ? ", doc-mask" : "") << ")";
  return os.str();
}

MLPImpl::MLPImpl(const ModelConfig& c) {
  const int64_t C = c.d_model;
  c_fc = register_module("c_fc", torch::nn::Linear(torch::nn::LinearOptions(C, 4 * C).bias(false)));
  c_proj = register_module("c_proj", torch::nn::Linear(torch::nn::LinearOptions(4 * C, C).bias(false)));
  init_linear(c_fc, C);
  torch::NoGradGuard ng;
  c_proj->weight.zero_();
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x, Ctx&) {
  auto h = torch::relu(c_fc(tp_copy_in(x, tp)));
  return tp_reduce_out(c_proj(h * h), tp);  // ReLU^2
}

std::string MLPImpl::describe() const { return "relu2 mlp (" + std::to_string(c_fc->weight.size(0)) + ")"; }

namespace {
// Megatron's split of a linear: this rank's shard of the weight, recorded in `splits` under `name`.
void split_linear(torch::nn::Linear& lin, int64_t dim, const std::string& name, const TpGroup& g, TpSplits& splits) {
  torch::NoGradGuard ng;
  lin->weight.set_data(tp_shard(lin->weight.detach(), dim, g));
  splits[name + ".weight"] = dim;
}
}  // namespace

std::string CausalSelfAttentionImpl::shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) {
  // A subclass runs its own forward, which must read `tp`: it says so by overriding this.
  if (typeid(*this) != typeid(CausalSelfAttentionImpl)) return describe() + " does not split its forward";
  return split_heads(g, splits);
}

std::string CausalSelfAttentionImpl::split_heads(const TpGroupPtr& g, TpSplits& splits) {
  if (n_head % g->size != 0)
    return std::to_string(n_head) + " heads do not divide by it; use a tp that divides the heads";
  split_linear(c_q, 0, "c_q", *g, splits);  // rows are heads: rank r keeps heads [r H/tp, (r+1) H/tp)
  split_linear(c_k, 0, "c_k", *g, splits);
  split_linear(c_v, 0, "c_v", *g, splits);
  split_linear(c_proj, 1, "c_proj", *g, splits);
  n_head /= g->size;
  tp = g;
  return "";
}

std::string MLPImpl::shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) {
  // A subclass (continual backprop's MLP) indexes units of the whole: it must split itself.
  if (typeid(*this) != typeid(MLPImpl)) return describe() + " does not split its units";
  return split_units(g, splits);
}

std::string MLPImpl::split_units(const TpGroupPtr& g, TpSplits& splits) {
  if (c_fc->weight.size(0) % g->size != 0)
    return std::to_string(c_fc->weight.size(0)) + " hidden units do not divide by it";
  split_linear(c_fc, 0, "c_fc", *g, splits);
  split_linear(c_proj, 1, "c_proj", *g, splits);
  tp = g;
  return "";
}

BlockImpl::BlockImpl(const LayerPlan& lp) : kind(lp.kind) {
  mixer = register_module("mixer", lp.mixer());
  ffn = register_module("ffn", lp.ffn());
  for (size_t i = 0; i < lp.branches.size(); ++i)
    branches.push_back(register_module("branch" + std::to_string(i), lp.branches[i]()));
  if (lp.wrap) wrap = register_module("wrap", lp.wrap());
}

torch::Tensor BlockImpl::with_branches(const torch::Tensor& x, Ctx& ctx) {
  torch::Tensor y = x;
  for (auto& b : branches) y = y + b->forward(x, ctx);
  return y;
}

torch::Tensor BlockImpl::mixer_delta(const torch::Tensor& x, Ctx& ctx) { return mixer->forward(rms_norm(x), ctx); }

torch::Tensor BlockImpl::ffn_delta(const torch::Tensor& h, Ctx& ctx) { return ffn->forward(rms_norm(h), ctx); }

torch::Tensor BlockImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  if (wrap) return wrap->forward(*this, x, ctx);
  auto x1 = with_branches(x, ctx);
  auto h = x1 + mixer_delta(x1, ctx);
  return h + ffn_delta(h, ctx);
}

double BlockImpl::flops_per_token(int64_t T) const {
  double f = mixer->flops_per_token(T) + ffn->flops_per_token(T);
  for (auto& b : branches) f += b->flops_per_token(T);
  if (wrap) f += wrap->flops_per_token(T);
  return f;
}

GPTImpl::GPTImpl(const ModelConfig& c) : cfg(c), trained_context(c.context) {
  SLM_CHECK(c.n_head * c.head_dim == c.d_model, "[model] n_head x head_dim = ", c.n_head * c.head_dim,
            " differs from d_model ", c.d_model);
  SLM_CHECK(!c.layer_pattern.empty(), "[model] empty layer pattern; use e.g. A");
  torch::manual_seed(c.seed);
  wte = register_module("wte", torch::nn::Embedding(c.vocab, c.d_model));
  plan = model_plan(c);
  for (int64_t i = 0; plan.streams && i < c.n_layer; ++i)  // a plain block cannot read (B, T, n, C) streams
    SLM_CHECK(plan.layers[i].wrap, "[model] layer ", i, " has no block wrapper but the residual is split into "
              "streams; the module that sets ModelPlan.streams must wrap every layer");
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layer; ++i) blocks->push_back(Block(plan.layers[i]));
  for (size_t i = 0; i < plan.objectives.size(); ++i)
    objectives.push_back(register_module("objective" + std::to_string(i), plan.objectives[i]()));
  if (plan.streams) streams = register_module("streams", plan.streams());
  lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)));
  {
    torch::NoGradGuard ng;
    wte->weight.normal_(0.0, 1.0);
    lm_head->weight.normal_(0.0, 0.001);
  }
  // Built last: the baseline's parameters draw the same numbers with or without it.
  if (plan.input) input = register_module("input", plan.input());
  auto [cs, sn] = rope_tables(c.context, c.head_dim, c.rope_base);
  rope_cos = register_buffer("rope_cos", cs);
  rope_sin = register_buffer("rope_sin", sn);
}

torch::Tensor GPTImpl::hidden(const torch::Tensor& idx, const torch::Tensor& doc_ids) {
  Ctx ctx;
  ctx.idx = idx;
  ctx.doc_ids = doc_ids;
  ctx.training = is_training();
  ctx.step = step;
  return hidden(ctx);
}

torch::Tensor GPTImpl::hidden(Ctx& ctx) {
  SLM_CHECK(ctx.tree.defined() || ctx.idx.size(1) <= cfg.context, "[model] sequence of ", ctx.idx.size(1), " tokens exceeds the context ",
            cfg.context);
  // A packed layout of the caller's own (Jacobi forcing's noisy and clean blocks): `allowed` and
  // `positions` preset and kept, RoPE read at the positions.
  const bool packed = ctx.allowed.defined() && ctx.positions.defined();
  SLM_CHECK(!packed || (!ctx.caches && !(ring && ring->size > 1)),
            "[model] a preset mask and positions run whole rows, without the cache or the ring");
  if (!packed) ctx.allowed = cfg.doc_mask ? document_causal_mask(ctx.doc_ids) : torch::Tensor();
  ctx.cos = packed ? rope_cos.index_select(0, ctx.positions) : rope_cos;
  ctx.sin = packed ? rope_sin.index_select(0, ctx.positions) : rope_sin;
  if (ring && ring->size > 1) {  // this rank's share of each row: the ring sees the rest
    SLM_CHECK(!ctx.caches, "[model] ring attention evaluates whole rows; generate without it");
    const int64_t T = ctx.idx.size(1) * ring->size;
    SLM_CHECK(T <= cfg.context, "[model] sequence of ", T, " tokens (over the ring) exceeds the context ", cfg.context);
    ctx.positions = zigzag_positions(T, ring->rank, ring->size).to(ctx.idx.device());
    ctx.cos = rope_cos.index_select(0, ctx.positions);
    ctx.sin = rope_sin.index_select(0, ctx.positions);
    ctx.allowed = torch::Tensor();  // the ring masks by positions and document ids
    ctx.ring = ring.get();
  }
  if (ctx.caches) {  // generation: one sequence, positions [pos, pos + T)
    const int64_t T = ctx.idx.size(1);
    SLM_CHECK(ctx.tree.defined() || ctx.pos + T <= cfg.context, "[model] generation reached the context (", cfg.context,
              " tokens); shorten the prompt or --max-tokens");  // a tree checks its deepest position itself
    SLM_CHECK(!ctx.doc_ids.defined(), "[model] generation runs one document; pass no doc ids");
    if (ctx.caches->empty()) ctx.caches->resize(cfg.n_layer);
    ctx.cos = rope_cos.slice(0, ctx.pos, ctx.pos + T);
    ctx.sin = rope_sin.slice(0, ctx.pos, ctx.pos + T);
    if (ctx.tree.defined()) set_tree_positions(ctx, rope_cos, rope_sin);
  }
  ctx.attn_logit_scale = attn_logit_scale;
  auto x = wte(ctx.idx);  // (B, T, C)
  if (input) x = input->forward(x, ctx);
  x = rms_norm(x);
  if (streams) x = streams->expand(x);
  if (layer_runner) {  // the inference lane's own pass over the blocks (early exit)
    x = layer_runner->run(*this, x, ctx);
  } else {
    ctx.layer = 0;
    for (auto& m : *blocks) {
      x = m->as<Block>()->forward(x, ctx);
      ++ctx.layer;
    }
  }
  if (streams) x = streams->collapse(x);
  return x;
}

void GPTImpl::shard_tensor_parallel(const TpGroupPtr& g) {
  SLM_CHECK(g && g->size >= 1 && g->rank >= 0 && g->rank < g->size, "[tp] invalid tensor-parallel group");
  SLM_CHECK(!tp, "[tp] the model is already split across ranks");
  if (g->size == 1) return;
  torch::NoGradGuard ng;
  for (auto& m : named_modules("", /*include_self=*/false)) {
    auto c = std::dynamic_pointer_cast<ComponentImpl>(m.value());
    if (!c) continue;
    TpSplits own;
    const std::string why = c->shard_tensor_parallel(g, own);
    SLM_CHECK(why.empty(), "[tp] ", m.key(), " (", c->describe(), ") does not split over tp ", g->size, ": ", why);
    for (auto& [name, split] : own) tp_splits[m.key() + "." + name] = split;
  }
  tp = g;
  // Every name above must be a parameter of this model (a rename would silently unshard a checkpoint).
  auto params = named_parameters();
  for (auto& [name, split] : tp_splits)
    SLM_CHECK(params.contains(name), "[tp] internal: ", name, " is not a parameter of the model");
}

int64_t GPTImpl::check_tp_replicas() {
  if (!tp) return 0;
  torch::NoGradGuard ng;
  std::vector<std::string> names;
  std::vector<torch::Tensor> hashes;
  auto add = [&](const std::string& name, const torch::Tensor& t) {
    if (tp_splits.count(name) || t.numel() == 0) return;
    // The bytes weighted by position (mod a prime, so a swap of two values shows), summed exactly in
    // int64, a few MB at a time (an embedding's bytes as int64 would be 8 times its size).
    auto bytes = t.detach().contiguous().reshape({-1}).view(torch::kUInt8);
    const int64_t n = bytes.numel(), chunk = int64_t{1} << 22;
    auto h = torch::zeros({}, bytes.options().dtype(torch::kInt64));
    for (int64_t i = 0; i < n; i += chunk) {
      auto b = bytes.slice(0, i, std::min(n, i + chunk)).to(torch::kInt64);
      h += (b * torch::arange(i, i + b.numel(), b.options()).remainder(65521).add_(1)).sum();
    }
    names.push_back(name);
    hashes.push_back(h);
  };
  for (auto& p : named_parameters()) add(p.key(), p.value());
  for (auto& b : named_buffers()) add(b.key(), b.value());
  if (names.empty()) return 0;
  auto mine = torch::stack(hashes);
  auto all = tp->all_gather(mine);
  for (size_t r = 0; r < all.size(); ++r) {
    auto differ = all[r].ne(mine).nonzero();
    SLM_CHECK(differ.numel() == 0, "[tp] replicated ", names[differ[0].item<int64_t>()],
              " differs between tensor-parallel ranks ", tp->rank, " and ", r,
              ": the replicas drifted apart (a gradient or a statistic not the same on every rank)");
  }
  return static_cast<int64_t>(names.size());
}

void GPTImpl::use_ring(const RingGroupPtr& g) {
  SLM_CHECK(g && g->size >= 1 && g->rank >= 0 && g->rank < g->size, "[ring] invalid ring group");
  SLM_CHECK(!tp, "[ring] the model is split by tensor parallelism; ring attention runs on whole models");
  SLM_CHECK(!streams, "[ring] the model has residual streams; ring attention runs the baseline blocks only");
  SLM_CHECK(cfg.modules.empty(), "[ring] the model has module ", cfg.modules.empty() ? "" : cfg.modules[0].name,
              "; ring attention runs the baseline blocks (attention + relu2 MLP) only, so evaluate it in one process");
  for (size_t i = 0; i < blocks->size(); ++i) {
    auto b = blocks[i]->as<BlockImpl>();
    const bool ok = std::dynamic_pointer_cast<CausalSelfAttentionImpl>(b->mixer) &&
                    std::dynamic_pointer_cast<MLPImpl>(b->ffn) && b->branches.empty() && !b->wrap;
    SLM_CHECK(ok, "[ring] layer ", i, " is ", b->mixer->describe(), " + ", b->ffn->describe(),
              "; ring attention runs attention layers only, so evaluate this model in one process");
  }
  ring = g;
}

torch::Tensor GPTImpl::logits(const torch::Tensor& h) {
  auto z = lm_head(rms_norm(h)).to(torch::kFloat32);  // softcap in fp32: bf16 tanh saturates early
  if (cfg.softcap > 0) z = torch::tanh(z / cfg.softcap) * cfg.softcap;
  return z;
}

torch::Tensor GPTImpl::token_nats(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids,
                                  std::map<std::string, double>* stats, const torch::Tensor& structure) {
  torch::NoGradGuard ng;
  Ctx ctx;
  ctx.idx = idx;
  ctx.doc_ids = doc_ids;
  ctx.structure = structure;
  ctx.training = is_training();
  ctx.step = step;
  auto h = rms_norm(hidden(ctx));
  if (stats) *stats = ctx.stats;
  const int64_t B = h.size(0), T = h.size(1);
  auto n = linear_ce_nats(h.reshape({B * T, -1}), lm_head->weight, targets.reshape({B * T}), cfg.softcap,
                          device::matmul_dtype(h));
  return n.view({B, T});
}

torch::Tensor GPTImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids,
                           int64_t step, Parts* parts, const torch::Tensor& structure) {
  Ctx ctx;
  ctx.idx = idx;
  ctx.targets = targets;
  ctx.doc_ids = doc_ids;
  ctx.structure = structure;
  ctx.step = step;
  this->step = step;
  ctx.training = is_training();
  if (ctx.training) ctx.dp = dp;  // evaluation never reduces: ranks score different batches
  auto h = hidden(ctx);
  for (auto& o : objectives) o->add_loss(h, *this, ctx);
  auto hn = rms_norm(h);
  const int64_t B = hn.size(0), T = hn.size(1);
  auto main = fused_linear_ce_mean(hn.reshape({B * T, -1}), lm_head->weight, targets.reshape({B * T}), cfg.softcap,
                                   device::matmul_dtype(hn));
  auto total = main;
  for (auto& a : ctx.aux) total = total + a.weight * a.value;
  if (parts) {
    parts->main = main;
    parts->aux = ctx.aux;
    parts->stats = ctx.stats;
  }
  return total;
}

std::map<std::string, ParamRole> GPTImpl::param_roles() const {
  std::map<std::string, ParamRole> declared;
  for (auto& m : named_modules("", /*include_self=*/false)) {
    const auto* c = dynamic_cast<const ComponentImpl*>(m.value().get());
    if (!c) continue;
    for (auto& [name, role] : c->param_roles()) declared[m.key().empty() ? name : m.key() + "." + name] = role;
  }
  std::map<std::string, ParamRole> out;
  for (auto& p : named_parameters()) {
    const std::string& k = p.key();
    // The model's blocks, and blocks a module stacks of its own (MTP's "objective0.blocks.")
    const bool in_blocks = k.rfind("blocks.", 0) == 0 || k.find(".blocks.") != std::string::npos;
    ParamRole role = ParamRole::Scalar;
    if (auto it = declared.find(k); it != declared.end()) role = it->second;
    else if (k == "wte.weight") role = ParamRole::Embedding;
    else if (k == "lm_head.weight") role = ParamRole::Head;
    else if (in_blocks && p.value().dim() == 2) role = ParamRole::Matrix;
    out[k] = role;
  }
  return out;
}

std::vector<std::string> GPTImpl::params_of(ParamRole role) const {
  const auto roles = param_roles();
  std::vector<std::string> out;
  for (auto& p : named_parameters())
    if (roles.at(p.key()) == role) out.push_back(p.key());
  return out;
}

int64_t GPTImpl::n_params() const {
  int64_t n = 0;
  for (auto& p : parameters()) n += p.numel();
  return n;
}

int64_t GPTImpl::n_matmul_params() const {
  int64_t looked_up = wte->weight.numel();  // embeddings are gathered, not multiplied
  if (input)
    for (auto& p : input->parameters()) looked_up += p.numel();
  return n_params() - looked_up;
}

void GPTImpl::set_context(int64_t T, const YarnConfig* yarn) {
  SLM_CHECK(T > 0, "[model] context must be positive");
  torch::NoGradGuard ng;
  std::pair<torch::Tensor, torch::Tensor> tabs;
  if (yarn) {
    YarnConfig y = *yarn;
    if (y.original_context == 0) y.original_context = trained_context;
    tabs = yarn_rope_tables(T, cfg.head_dim, cfg.rope_base, y);
    attn_logit_scale = yarn_logit_scale(y);
  } else {
    tabs = rope_tables(T, cfg.head_dim, cfg.rope_base);
    attn_logit_scale = 1.0;
  }
  rope_cos.set_data(tabs.first.to(rope_cos.device()));
  rope_sin.set_data(tabs.second.to(rope_sin.device()));
  cfg.context = T;
  YarnConfig resolved = yarn ? *yarn : YarnConfig{};
  if (yarn && resolved.original_context == 0) resolved.original_context = trained_context;
  for (auto& m : modules(/*include_self=*/false))
    if (auto c = std::dynamic_pointer_cast<ComponentImpl>(m)) c->set_context(T, yarn ? &resolved : nullptr);
}

void GPTImpl::after_step(StepCtx& sctx) {
  torch::NoGradGuard ng;
  sctx.dp = dp;
  for (auto& m : modules(/*include_self=*/false))
    if (auto c = std::dynamic_pointer_cast<ComponentImpl>(m)) c->after_step(sctx);
}

double GPTImpl::flops_per_token(int64_t T) const {
  double f = 6.0 * static_cast<double>(lm_head->weight.numel());
  for (auto& m : *blocks) f += m->as<Block>()->flops_per_token(T);
  for (auto& o : objectives) f += o->flops_per_token(T);
  if (streams) f += streams->flops_per_token(T);
  if (input) f += input->flops_per_token(T);
  return f;
}

}  // namespace slm
