#include "model/gpt.h"

#include <cmath>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/fused_ce.h"

namespace slm {

namespace F = torch::nn::functional;

std::string layer_plan(const ModelConfig& c) {
  std::ostringstream os;
  for (int64_t i = 0; i < c.n_layer; ++i) {
    os << "layer " << i << ": " << c.layer_kind(i);
    if (c.layer_kind(i) == 'A') os << " attention (H=" << c.n_head << ", D=" << c.head_dim << ", rope, qk-norm"
                                   << (c.doc_mask ? ", doc-mask" : "") << ") + relu2 mlp (" << 4 * c.d_model << ")";
    os << "\n";
  }
  return os.str();
}

torch::Tensor rms_norm(const torch::Tensor& x) {
  // Statistics in fp32: bf16 mean of squares loses the small components.
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6);
  return y.to(x.scalar_type());
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

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const ModelConfig& c) : n_head(c.n_head), head_dim(c.head_dim) {
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

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                               const torch::Tensor& allowed) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
  auto q = c_q(x).view({B, T, n_head, head_dim});
  auto k = c_k(x).view({B, T, n_head, head_dim});
  auto v = c_v(x).view({B, T, n_head, head_dim});
  q = rms_norm(apply_rope(q, cos, sin));  // QK-norm after RoPE, as nanochat
  k = rms_norm(apply_rope(k, cos, sin));
  auto y = device::attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), allowed);  // (B, H, T, D)
  y = y.transpose(1, 2).contiguous().view({B, T, C});
  return c_proj(y);
}

MLPImpl::MLPImpl(const ModelConfig& c) {
  const int64_t C = c.d_model;
  c_fc = register_module("c_fc", torch::nn::Linear(torch::nn::LinearOptions(C, 4 * C).bias(false)));
  c_proj = register_module("c_proj", torch::nn::Linear(torch::nn::LinearOptions(4 * C, C).bias(false)));
  init_linear(c_fc, C);
  torch::NoGradGuard ng;
  c_proj->weight.zero_();
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  auto h = torch::relu(c_fc(x));
  return c_proj(h * h);  // ReLU^2
}

BlockImpl::BlockImpl(const ModelConfig& c, int64_t layer) {
  SLM_CHECK(c.layer_kind(layer) == 'A', "[model] layer ", layer, " has kind '", c.layer_kind(layer),
            "', which this build does not provide; use layer_pattern A");
  attn = register_module("attn", CausalSelfAttention(c));
  mlp = register_module("mlp", MLP(c));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                 const torch::Tensor& allowed) {
  auto h = x + attn(rms_norm(x), cos, sin, allowed);
  return h + mlp(rms_norm(h));
}

GPTImpl::GPTImpl(const ModelConfig& c) : cfg(c) {
  SLM_CHECK(c.n_head * c.head_dim == c.d_model, "[model] n_head x head_dim = ", c.n_head * c.head_dim,
            " differs from d_model ", c.d_model);
  SLM_CHECK(!c.layer_pattern.empty(), "[model] empty layer pattern; use e.g. A");
  torch::manual_seed(c.seed);
  wte = register_module("wte", torch::nn::Embedding(c.vocab, c.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layer; ++i) blocks->push_back(Block(c, i));
  lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)));
  {
    torch::NoGradGuard ng;
    wte->weight.normal_(0.0, 1.0);
    lm_head->weight.normal_(0.0, 0.001);
  }
  auto [cs, sn] = rope_tables(c.context, c.head_dim, c.rope_base);
  rope_cos = register_buffer("rope_cos", cs);
  rope_sin = register_buffer("rope_sin", sn);
}

torch::Tensor GPTImpl::hidden(const torch::Tensor& idx, const torch::Tensor& doc_ids) {
  SLM_CHECK(idx.size(1) <= cfg.context, "[model] sequence of ", idx.size(1), " tokens exceeds the context ", cfg.context);
  auto allowed = cfg.doc_mask ? document_causal_mask(doc_ids) : torch::Tensor();
  auto x = rms_norm(wte(idx));  // (B, T, C)
  for (auto& m : *blocks) x = m->as<Block>()->forward(x, rope_cos, rope_sin, allowed);
  return x;
}

torch::Tensor GPTImpl::logits(const torch::Tensor& h) {
  auto z = lm_head(rms_norm(h)).to(torch::kFloat32);  // softcap in fp32: bf16 tanh saturates early
  if (cfg.softcap > 0) z = torch::tanh(z / cfg.softcap) * cfg.softcap;
  return z;
}

torch::Tensor GPTImpl::token_nats(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids) {
  torch::NoGradGuard ng;
  auto h = rms_norm(hidden(idx, doc_ids));
  const int64_t B = h.size(0), T = h.size(1);
  auto n = linear_ce_nats(h.reshape({B * T, -1}), lm_head->weight, targets.reshape({B * T}), cfg.softcap,
                          device::matmul_dtype(h));
  return n.view({B, T});
}

torch::Tensor GPTImpl::loss(const torch::Tensor& idx, const torch::Tensor& targets, const torch::Tensor& doc_ids) {
  auto h = rms_norm(hidden(idx, doc_ids));
  const int64_t B = h.size(0), T = h.size(1);
  return fused_linear_ce_mean(h.reshape({B * T, -1}), lm_head->weight, targets.reshape({B * T}), cfg.softcap,
                              device::matmul_dtype(h));
}

std::vector<std::string> GPTImpl::matrix_params() const {
  std::vector<std::string> out;
  for (auto& p : named_parameters())
    if (p.key().rfind("blocks.", 0) == 0 && p.value().dim() == 2) out.push_back(p.key());
  return out;
}

int64_t GPTImpl::n_params() const {
  int64_t n = 0;
  for (auto& p : parameters()) n += p.numel();
  return n;
}

int64_t GPTImpl::n_matmul_params() const { return n_params() - wte->weight.numel(); }

double GPTImpl::flops_per_token(int64_t T) const {
  // 6N for the matmuls (2 forward, 4 backward) + 12 L H D T for the attention scores and values.
  double attn = 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * static_cast<double>(T);
  return 6.0 * static_cast<double>(n_matmul_params()) + attn;
}

}  // namespace slm
