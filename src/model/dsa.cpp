#include "model/dsa.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "model/dsa_cpu.h"

namespace slm {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// The auto path gathers from this sequence length on, when k <= T/4 (see sparse_path).
constexpr int64_t kGatherMinT = 512;

// Scores and softmax in fp32 (bf16 softmax loses too much), fp64 kept for reference tests.
torch::ScalarType wide_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}
torch::Tensor at_least_fp32(const torch::Tensor& t) { return t.to(wide_type(t)); }

// (B, Tq, Tk) bool: key s is visible to query t (causal, same document). allowed is (B or 1, 1, Tq, Tk),
// or undefined for plain causal (then Tq = Tk).
torch::Tensor visible_keys(const torch::Tensor& allowed, int64_t B, int64_t T, const torch::Device& dev) {
  if (allowed.defined()) return allowed.select(1, 0).expand({B, T, allowed.size(-1)});
  auto causal = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(dev)).tril();
  return causal.expand({B, T, T});
}

// DSA's generation cache: the main keys and values (B, T, H, D) and the indexer's keys (B, T, DI)
// of every position so far.
// Replaced, never written in place: a copy of the handles is an independent copy.
struct DsaCache : LayerCache {
  torch::Tensor k, v, index_k;
  std::shared_ptr<LayerCache> clone() const override { return std::make_shared<DsaCache>(*this); }
  int64_t length() const override { return k.defined() ? k.size(1) : 0; }
  void truncate(int64_t n) override {
    k = k.slice(1, 0, n);
    v = v.slice(1, 0, n);
    index_k = index_k.slice(1, 0, n);
  }
};

// Dense attention that also returns its probabilities, for the KL target. Same arithmetic as
// device::attention's explicit path (scores and softmax in fp32), which the fused kernel of
// LibTorch 2.x cannot return. q, k, v: (B, H, T, D); allowed: (B, T, T) bool.
// Returns y: (B, H, T, D) and probs: (B, H, T, T) fp32.
std::pair<torch::Tensor, torch::Tensor> attention_with_probs(const torch::Tensor& q, const torch::Tensor& k,
                                                             const torch::Tensor& v, const torch::Tensor& allowed) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto s = at_least_fp32(torch::matmul(q, k.transpose(-2, -1))).mul_(scale);  // (B, H, T, T)
  s.masked_fill_(allowed.unsqueeze(1).logical_not(), -kInf);
  auto p = torch::softmax(s, -1);
  return {torch::matmul(p.to(v.scalar_type()), v), p};
}

// The sparse path: each query attends to its K selected keys only; no T x T score matrix exists.
// A custom autograd function that gathers the selected keys and values a chunk of queries at a time
// and gathers them again in backward (as flash attention recomputes), so the (B, H, T, K, D)
// gathered tensors never exist whole: materialized, the gather path ran 2-4x slower than dense
// attention on CPU at T = 256-1024; chunked, it is 6x faster at T = 1024 (see sparse_path). CPU
// runs the loop kernels of model/dsa_cpu.h instead (SparseAttentionCpuFn); this is the path of
// other devices, and tests compare the two on CPU.
// q: (B, H, Tq, D); k, v: (B, H, Tk, D) (Tk > Tq in cached generation); rows: (B*H*Tq, K) int64
// rows of the flattened keys; ok: (B*H*Tq, K) bool; chunk: gathered values per chunk (about 256K
// keeps a chunk's keys and values in cache).
// Returns y: (B, H, Tq, D) and probs: (B*H*Tq, K) (fp32, fp64 for fp64 inputs; no gradient).
struct SparseAttentionFn : torch::autograd::Function<SparseAttentionFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& rows,
                                                const torch::Tensor& ok, int64_t chunk) {
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), N = B * H * T, K = rows.size(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    // A chunk computes in fp32 (fp64 for fp64 inputs), as a bf16 GEMM accumulates in fp32.
    const auto acc = wide_type(q);
    auto qf = q.reshape({N, D}), kf = k.reshape({-1, D}), vf = v.reshape({-1, D});
    auto y = torch::empty({N, D}, v.options());
    auto probs = torch::empty({N, K}, q.options().dtype(acc));
    const int64_t R = std::max<int64_t>(1, chunk / (K * D));  // queries per chunk
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r1 = std::min(N, r0 + R), n = r1 - r0;
      auto rr = rows.slice(0, r0, r1).reshape({-1});
      auto ks = kf.index_select(0, rr).view({n, K, D}).to(acc);  // (n, K, D)
      auto vs = vf.index_select(0, rr).view({n, K, D}).to(acc);
      // Products and sums, not bmm: CPU bmm over n tiny matrices dispatches one GEMM per query.
      auto s = (ks * qf.slice(0, r0, r1).to(acc).unsqueeze(1)).sum(-1).mul_(scale);  // (n, K)
      // Top-k returns masked keys when fewer than K are visible: they stay masked.
      s.masked_fill_(ok.slice(0, r0, r1).logical_not(), -kInf);
      auto p = torch::softmax(s, -1);
      probs.slice(0, r0, r1).copy_(p);
      y.slice(0, r0, r1).copy_((p.unsqueeze(-1) * vs).sum(1));
    }
    ctx->save_for_backward({q, k, v, rows, probs});
    ctx->saved_data["R"] = R;
    ctx->mark_non_differentiable({probs});
    return {y.view({B, H, T, D}), probs};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &rows = saved[3], &probs = saved[4];
    const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), N = B * H * T, K = rows.size(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const auto acc = probs.scalar_type();
    auto qf = q.reshape({N, D}), kf = k.reshape({-1, D}), vf = v.reshape({-1, D});
    auto gy = grads[0].reshape({N, D}).to(acc);
    // Keys and values are hit by many queries: their gradients accumulate in fp32 at least.
    auto dq = torch::empty({N, D}, q.options());
    auto dk = torch::zeros_like(kf, kf.options().dtype(acc)), dv = torch::zeros_like(vf, vf.options().dtype(acc));
    const int64_t R = ctx->saved_data["R"].toInt();
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r1 = std::min(N, r0 + R), n = r1 - r0;
      auto rr = rows.slice(0, r0, r1).reshape({-1});
      auto ks = kf.index_select(0, rr).view({n, K, D}).to(acc);
      auto vs = vf.index_select(0, rr).view({n, K, D}).to(acc);
      auto p = probs.slice(0, r0, r1).unsqueeze(-1);  // (n, K, 1)
      auto go = gy.slice(0, r0, r1).unsqueeze(1);     // (n, 1, D)
      auto dp = (vs * go).sum(-1, true);              // (n, K, 1)
      // index_add_ is a sequential scatter-add on CPU: deterministic.
      dv.index_add_(0, rr, (p * go).view({n * K, D}));
      auto ds = (p * (dp - (p * dp).sum(1, true))).mul_(scale);  // through the softmax: (n, K, 1)
      dq.slice(0, r0, r1).copy_((ds * ks).sum(1));
      dk.index_add_(0, rr, (ds * qf.slice(0, r0, r1).to(acc).unsqueeze(1)).view({n * K, D}));
    }
    return {dq.view(q.sizes()), dk.to(k.scalar_type()).view(k.sizes()), dv.to(v.scalar_type()).view(v.sizes()),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// The CPU kernels of model/dsa_cpu.h, in the (B, T, H, D) layout; probs are returned, not differentiated.
struct SparseAttentionCpuFn : torch::autograd::Function<SparseAttentionCpuFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx,
                                                const torch::Tensor& ok) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
    auto [y, p] = dsa_cpu::attention_forward(q, k, v, idx, ok, scale);
    ctx->save_for_backward({q, k, v, idx, ok, p});
    ctx->mark_non_differentiable({p});
    return {y, p};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const double scale = 1.0 / std::sqrt(static_cast<double>(s[0].size(-1)));
    auto [dq, dk, dv] = dsa_cpu::attention_backward(grads[0], s[0], s[1], s[2], s[3], s[4], s[5], scale);
    return {dq, dk, dv, torch::Tensor(), torch::Tensor()};
  }
};

// q: (B, H, Tq, D); k, v: (B, H, Tk, D); idx: (B, Tq, K) int64; valid: (B, Tq, K) bool; chunk as above.
// Returns y: (B, H, Tq, D) and probs: (B, H, Tq, K). On CPU the loop kernels run (no gathered
// tensors at all); elsewhere the chunked gather of SparseAttentionFn.
std::pair<torch::Tensor, torch::Tensor> sparse_attention(const torch::Tensor& q, const torch::Tensor& k,
                                                         const torch::Tensor& v, const torch::Tensor& idx,
                                                         const torch::Tensor& valid, int64_t chunk, bool cpu_kernels) {
  if (cpu_kernels && q.is_cpu()) {
    auto out = SparseAttentionCpuFn::apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), idx, valid);
    return {out[0].transpose(1, 2), out[1].permute({0, 2, 1, 3})};
  }
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), Tk = k.size(2), K = idx.size(2);
  // Row of key s of head h in batch row b among the flattened (B*H*Tk, D) keys; the selection is
  // shared by the heads.
  auto rows = (torch::arange(B * H, idx.options()).view({B, H, 1, 1}) * Tk + idx.unsqueeze(1)).reshape({B * H * T, K});
  auto ok = valid.unsqueeze(1).expand({B, H, T, K}).reshape({B * H * T, K});
  auto out = SparseAttentionFn::apply(q.contiguous(), k.contiguous(), v.contiguous(), rows, ok, chunk);
  return {out[0], out[1].view({B, H, T, K})};
}

// Mean over queries of KL(p || softmax(logits)) restricted to `valid`. p: (B, T, N) rows summing to 1
// over valid entries (zero elsewhere), no gradient; logits: (B, T, N) fp32; valid: (B, T, N) bool.
torch::Tensor kl_loss(const torch::Tensor& p, const torch::Tensor& logits, const torch::Tensor& valid) {
  auto logq = torch::log_softmax(logits.masked_fill(valid.logical_not(), -kInf), -1);
  logq = logq.masked_fill(valid.logical_not(), 0.0);  // 0 x (-inf) would be NaN where p = 0
  auto kl = (torch::xlogy(p, p) - p * logq).sum(-1);  // (B, T)
  return kl.mean();
}

// Sum over heads of the main attention probabilities, L1-normalized per query: (B, H, T, N) -> (B, T, N).
// The target over every head: under tensor parallelism each rank holds its heads' share, summed over
// the group (no gradient) so that every rank trains its replica of the indexer on the same target.
torch::Tensor kl_target(const torch::Tensor& probs, const TpGroupPtr& tp) {
  auto p = tp_reduce_out(probs.detach().sum(1), tp);
  return p / p.sum(-1, true).clamp_min(1e-30);
}

// The indexer's init: uniform with the std of N(0, 1/fan_in), as the model's linears, drawn from a
// private generator so adding DSA leaves the main model's initialization identical to the baseline's.
void init_uniform(torch::Tensor w, int64_t fan_in, at::Generator& gen) {
  const double bound = std::sqrt(3.0) / std::sqrt(static_cast<double>(fan_in));
  torch::NoGradGuard ng;
  auto r = torch::rand(w.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
  w.copy_(r.mul_(2 * bound).sub_(bound));
}

// The indexer's projections of xi: (B, Tq, C) at positions [pos, pos + Tq): q: (B, Tq, HI, DI),
// k: (B, Tk, DI) (Tk = Tq, or the cached keys too in generation), w: (B, Tq, HI) fp32.
struct IndexerProj {
  torch::Tensor q, k, w;
};

// Positions: `positions` (T) when the tokens were gathered (Ctx::positions), else pos..pos + T.
IndexerProj project(DsaAttentionImpl& m, const torch::Tensor& xi, int64_t pos = 0,
                    const torch::Tensor& positions = {}) {
  const int64_t B = xi.size(0), T = xi.size(1), HI = m.opt.index_heads, DI = m.opt.index_dim, R = m.opt.rope_dims;
  auto q = m.indexer_q->forward(xi).view({B, T, HI, DI});
  // LayerNorm in fp32: statistics of a bf16 key lose the small components (and 1.13's CPU kernel
  // refuses a bf16 input with fp32 weights under autocast).
  auto k = m.indexer_norm->forward(at_least_fp32(m.indexer_k->forward(xi))).view({B, T, 1, DI});
  if (R > 0) {  // RoPE on the leading R dims only, half-split like the model (not interleaved)
    auto cs = positions.defined() ? m.indexer_cos.index_select(0, positions) : m.indexer_cos.slice(0, pos, pos + T);
    auto sn = positions.defined() ? m.indexer_sin.index_select(0, positions) : m.indexer_sin.slice(0, pos, pos + T);
    q = torch::cat({apply_rope(q.slice(3, 0, R), cs, sn), q.slice(3, R)}, 3);
    k = torch::cat({apply_rope(k.slice(3, 0, R), cs, sn), k.slice(3, R)}, 3);
  }
  // The per-head weights carry the (HI)^-1/2 of the paper and the DI^-1/2 softmax scale that the
  // reference folds into them; kept in fp32 as the reference does.
  const double scale = 1.0 / std::sqrt(static_cast<double>(HI * DI));
  auto w = at_least_fp32(m.indexer_w->forward(xi)) * scale;
  return {q, k.view({B, T, DI}), w};
}

// I at the selected keys only, with gradient into the indexer (for the sparse-stage KL):
//   I_{t,j} = sum_h w_{t,h} ReLU(q_{t,h} . k_{idx(t,j)})
// A custom autograd function for the same reasons as SparseAttentionFn: autograd over a gathered
// (B, T, K, DI) key tensor and a bmm of B*T tiny matrices made this KL's backward cost more than the
// whole sparse attention at T = 1024. q: (N, HI, DI), k: (B*Tk, DI), w: (N, HI) fp32, rows: (N, K)
// int64 rows of k, with N = B*Tq. Returns (N, K) in w's dtype.
struct IndexerScoresFn : torch::autograd::Function<IndexerScoresFn> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q,
                                                const torch::Tensor& k, const torch::Tensor& w, const torch::Tensor& rows,
                                                int64_t chunk) {
    const int64_t N = q.size(0), HI = q.size(1), DI = q.size(2), K = rows.size(1);
    const auto acc = w.scalar_type();
    auto out = torch::empty({N, K}, w.options());
    const int64_t R = std::max<int64_t>(1, chunk / (HI * K * DI));  // queries per chunk
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r1 = std::min(N, r0 + R), n = r1 - r0;
      auto ks = k.index_select(0, rows.slice(0, r0, r1).reshape({-1})).view({n, 1, K, DI}).to(acc);
      auto s = (q.slice(0, r0, r1).to(acc).unsqueeze(2) * ks).sum(-1);  // (n, HI, K)
      out.slice(0, r0, r1).copy_((s.relu_() * w.slice(0, r0, r1).unsqueeze(-1)).sum(1));
    }
    ctx->save_for_backward({q, k, w, rows});
    ctx->saved_data["R"] = R;
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &w = saved[2], &rows = saved[3];
    const int64_t N = q.size(0), HI = q.size(1), DI = q.size(2), K = rows.size(1);
    const int64_t R = ctx->saved_data["R"].toInt();
    const auto acc = w.scalar_type();
    auto g = grads[0].to(acc);
    auto dq = torch::empty({N, HI, DI}, q.options().dtype(acc)), dw = torch::empty({N, HI}, w.options());
    auto dk = torch::zeros_like(k, k.options().dtype(acc));
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r1 = std::min(N, r0 + R), n = r1 - r0;
      auto rr = rows.slice(0, r0, r1).reshape({-1});
      auto ks = k.index_select(0, rr).view({n, 1, K, DI}).to(acc);
      auto qc = q.slice(0, r0, r1).to(acc).unsqueeze(2);  // (n, HI, 1, DI)
      auto s = (qc * ks).sum(-1);                          // (n, HI, K)
      auto gc = g.slice(0, r0, r1).unsqueeze(1);           // (n, 1, K)
      dw.slice(0, r0, r1).copy_((gc * s.relu()).sum(-1));
      auto ds = (gc * w.slice(0, r0, r1).unsqueeze(-1)).mul_(s.gt(0));  // through the ReLU: (n, HI, K)
      dq.slice(0, r0, r1).copy_((ds.unsqueeze(-1) * ks).sum(2));
      dk.index_add_(0, rr, (ds.unsqueeze(-1) * qc).sum(1).view({n * K, DI}));  // sequential on CPU: deterministic
    }
    return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dw, torch::Tensor(), torch::Tensor()};
  }
};

// The CPU kernels of model/dsa_cpu.h for the same scores.
struct IndexerScoresCpuFn : torch::autograd::Function<IndexerScoresCpuFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& w, const torch::Tensor& idx) {
    ctx->save_for_backward({q, k, w, idx});
    return dsa_cpu::index_forward(q, k, w, idx);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [dq, dk, dw] = dsa_cpu::index_backward(grads[0], s[0], s[1], s[2], s[3]);
    return {dq, dk, dw, torch::Tensor()};
  }
};

// I at idx: (B, Tq, K) int64 -> (B, Tq, K) fp32, with gradient into the indexer.
torch::Tensor selected_scores(const IndexerProj& p, const torch::Tensor& idx, int64_t chunk, bool cpu_kernels) {
  if (cpu_kernels && p.q.is_cpu()) return IndexerScoresCpuFn::apply(p.q, p.k, p.w, idx);
  const int64_t B = p.q.size(0), T = p.q.size(1), HI = p.q.size(2), DI = p.q.size(3), K = idx.size(2);
  const int64_t Tk = p.k.size(1);
  auto rows = (torch::arange(B, idx.options()).view({B, 1, 1}) * Tk + idx).reshape({B * T, K});
  auto out = IndexerScoresFn::apply(p.q.reshape({B * T, HI, DI}), p.k.reshape({B * Tk, DI}).contiguous(),
                                    p.w.reshape({B * T, HI}).contiguous(), rows, chunk);
  return out[0].view({B, T, K});
}

// I of query rows [t0, t1) over every key: (B, t1 - t0, Tk) fp32.
torch::Tensor row_scores(const IndexerProj& p, int64_t t0, int64_t t1) {
  const int64_t B = p.q.size(0), HI = p.q.size(2), DI = p.q.size(3), Tk = p.k.size(1), n = t1 - t0;
  auto q = p.q.slice(1, t0, t1).reshape({B, n * HI, DI});
  auto s = at_least_fp32(torch::matmul(q, p.k.transpose(1, 2)).view({B, n, HI, Tk}));
  return (torch::relu(s) * p.w.slice(1, t0, t1).unsqueeze(-1)).sum(2);
}

// Top-k selection without gradient, so the (B, T, HI, T) per-head scores never exist whole (at
// T = 1024 they made the indexer cost more than the attention it sparsifies): on CPU fused per
// query row (model/dsa_cpu.h), elsewhere a block of queries at a time. visible: (B, Tq, Tk) ->
// indices (B, Tq, K), valid (B, Tq, K). The queries are the last Tq of the Tk positions.
std::pair<torch::Tensor, torch::Tensor> select_blockwise(const DsaAttentionImpl& m, const IndexerProj& p,
                                                         const torch::Tensor& visible) {
  torch::NoGradGuard ng;
  const int64_t B = p.q.size(0), T = p.q.size(1), HI = p.q.size(2), Tk = p.k.size(1);
  if (m.opt.cpu_kernels && p.q.is_cpu())  // scores and top-k fused per query row
    return dsa_cpu::index_select_topk(p.q, p.k, p.w, visible, std::min(m.opt.topk, Tk), m.opt.window, Tk - T);
  const int64_t rows = std::max<int64_t>(1, m.opt.chunk_values / (B * HI * Tk));
  std::vector<torch::Tensor> idx, valid;
  for (int64_t t0 = 0; t0 < T; t0 += rows) {
    const int64_t t1 = std::min(T, t0 + rows);
    auto [i, v] = m.select(row_scores(p, t0, t1), visible.slice(1, t0, t1), Tk - T + t0);
    idx.push_back(i);
    valid.push_back(v);
  }
  return {torch::cat(idx, 1), torch::cat(valid, 1)};
}

// Writes this layer's stats and the means over the DSA layers of this forward.
void record(Ctx& ctx, int64_t layer, double density, bool gathered, bool warmup) {
  const std::string L = "dsa.L" + std::to_string(layer);
  ctx.stats[L + ".density"] = density;  // selected / visible keys (1 in warm-up)
  ctx.stats[L + ".sparse"] = gathered ? 1.0 : 0.0;  // 1: the gather path ran; 0: dense scores
  double& n = ctx.stats["dsa.n_layers"];
  auto mean = [&](const char* key, double v) { ctx.stats[key] = (ctx.stats[key] * n + v) / (n + 1); };
  mean("dsa.density", density);
  mean("dsa.sparse", gathered ? 1.0 : 0.0);
  mean("dsa.warmup", warmup ? 1.0 : 0.0);
  n += 1;
}

}  // namespace

DsaOptions DsaOptions::from(const catalog::ModuleArgs& a, int64_t context, int64_t layer) {
  DsaOptions o;
  o.layer = layer;
  o.index_heads = a.i64("index_heads");
  o.index_dim = a.i64("index_dim");
  o.rope_dims = a.i64("rope_dims");
  o.topk = catalog::dsa_topk(a, context);
  o.window = catalog::dsa_window(a, context);
  o.warmup_steps = a.i64("warmup_steps");
  o.kl_weight = a.f64("kl_weight");
  o.path = a.str("path");
  return o;
}

DsaAttentionImpl::DsaAttentionImpl(const ModelConfig& c, const DsaOptions& o)
    : CausalSelfAttentionImpl(c), opt(o), context(c.context), rope_base(c.rope_base) {
  const int64_t C = c.d_model, HI = o.index_heads, DI = o.index_dim, R = o.rope_dims;
  // Guards at init: the catalog check says the same with the fix; these hold for direct construction.
  SLM_CHECK(HI >= 1 && DI >= 2 && DI % 2 == 0, "[dsa] layer ", o.layer, ": index_dim ", DI,
            " must be even and index_heads ", HI, " at least 1");
  SLM_CHECK(R >= 0 && R % 2 == 0 && R <= DI, "[dsa] layer ", o.layer, ": rope_dims ", R,
            " must be even and at most index_dim ", DI);
  SLM_CHECK(o.topk >= 1, "[dsa] layer ", o.layer, ": top-k ", o.topk, " must be at least 1");
  SLM_CHECK(o.window >= 0 && o.window <= o.topk, "[dsa] layer ", o.layer,
            ": top-k must be at least the local window: k=", o.topk, " < window=", o.window,
            "; lower window or raise topk");
  SLM_CHECK(o.chunk_values >= 1, "[dsa] layer ", o.layer, ": chunk_values ", o.chunk_values, " must be at least 1");
  SLM_CHECK(o.path == "auto" || o.path == "sparse" || o.path == "dense_masked", "[dsa] path '", o.path,
            "' is not one of auto, sparse, dense_masked");
  // Linear's constructor draws a default init from the global generator: restore its state after,
  // so adding DSA leaves the main model's initialization, every later layer's included, identical
  // to the baseline's (paired comparisons). The indexer draws from its own generator below.
  auto global = at::detail::getDefaultCPUGenerator();
  torch::Tensor rng_state;
  {
    std::lock_guard<std::mutex> lock(global.mutex());
    rng_state = global.get_state();
  }
  auto lin = [&](int64_t in, int64_t out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); };
  indexer_q = register_module("indexer_q", lin(C, HI * DI));
  indexer_k = register_module("indexer_k", lin(C, DI));
  indexer_w = register_module("indexer_w", lin(C, HI));
  indexer_norm = register_module("indexer_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({DI})));
  {
    std::lock_guard<std::mutex> lock(global.mutex());
    global.set_state(rng_state);
  }
  auto gen = at::detail::createCPUGenerator(c.seed * 1000003ULL + 7919ULL * static_cast<uint64_t>(o.layer) + 1);
  init_uniform(indexer_q->weight, C, gen);
  init_uniform(indexer_k->weight, C, gen);
  init_uniform(indexer_w->weight, C, gen);
  auto [cs, sn] = rope_tables(c.context, std::max<int64_t>(R, 2), c.rope_base);
  indexer_cos = register_buffer("indexer_cos", cs);
  indexer_sin = register_buffer("indexer_sin", sn);
}

void DsaAttentionImpl::set_context(int64_t T, const YarnConfig* yarn) {
  torch::NoGradGuard ng;
  const int64_t dims = std::max<int64_t>(opt.rope_dims, 2);
  auto [cs, sn] = yarn ? yarn_rope_tables(T, dims, rope_base, *yarn) : rope_tables(T, dims, rope_base);
  indexer_cos.set_data(cs.to(indexer_cos.device()));
  indexer_sin.set_data(sn.to(indexer_sin.device()));
  context = T;
}

torch::Tensor DsaAttentionImpl::index_scores(const torch::Tensor& xi) {
  const int64_t T = xi.size(1);
  return row_scores(project(*this, xi), 0, T);
}

torch::Tensor DsaAttentionImpl::index_scores_at(const torch::Tensor& xi, const torch::Tensor& idx) {
  return selected_scores(project(*this, xi), idx, opt.chunk_values, opt.cpu_kernels);
}

std::pair<torch::Tensor, torch::Tensor> DsaAttentionImpl::select_keys(const torch::Tensor& xi,
                                                                      const torch::Tensor& visible) {
  torch::NoGradGuard ng;
  return select_blockwise(*this, project(*this, xi), visible);
}

std::pair<torch::Tensor, torch::Tensor> DsaAttentionImpl::select(const torch::Tensor& scores, const torch::Tensor& visible,
                                                                 int64_t t0) const {
  const int64_t n = scores.size(1), T = scores.size(2), K = std::min(opt.topk, T);
  if (opt.cpu_kernels && scores.is_cpu())
    return dsa_cpu::select_topk(at_least_fp32(scores.detach()), visible.expand(scores.sizes()), K, opt.window, t0);
  auto s = at_least_fp32(scores.detach()).masked_fill(visible.logical_not(), -kInf);
  if (opt.window > 0) {
    // The window wins every comparison: +inf on the latest `window` visible keys (window <= k).
    auto opts = torch::TensorOptions().dtype(torch::kLong).device(s.device());
    auto back = torch::arange(t0, t0 + n, opts).view({n, 1}) - torch::arange(T, opts).view({1, T});  // t - s
    auto win = back.ge(0).logical_and(back.lt(opt.window));
    s.masked_fill_(win.logical_and(visible), kInf);
  }
  auto [top, idx] = s.topk(K, -1, /*largest=*/true, /*sorted=*/false);  // (B, n, K)
  // Ties at the k-th score go to the earliest keys. ReLU scores many keys exactly 0, and topk breaks
  // ties in an order that depends on the row length, so generation (rows cut at the cache) would
  // select differently from the whole sequence. The few rows with a tie across the cut are redone
  // with a stable sort (a sort of every row made selection 3x slower at T = 1024).
  auto kth = std::get<0>(top.min(-1, true));  // (B, n, 1); -inf: fewer than K visible, nothing to break
  auto cut = s.ge(kth).sum(-1).gt(K).logical_and(kth.squeeze(-1).gt(-kInf)).reshape({-1});
  if (cut.any().item<bool>()) {
    auto rows = cut.nonzero().squeeze(1);
    auto redo = s.reshape({-1, T}).index_select(0, rows);
    auto fixed = std::get<1>(redo.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true)).slice(-1, 0, K);
    idx = idx.reshape({-1, K}).index_copy(0, rows, fixed).view(idx.sizes());
  }
  // Re-apply the mask after selection: with fewer than K visible keys top-k returns masked ones.
  auto valid = visible.gather(2, idx);
  return {idx, valid};
}

bool DsaAttentionImpl::sparse_path(int64_t T) const {
  if (opt.path == "sparse") return true;
  if (opt.path == "dense_masked") return false;
  // auto: gathering costs several times more per attended key than dense scores do, which stay
  // cache-friendly until the T x T scores outgrow the cache. Attention alone, forward + backward,
  // B=4 H=4 D=32 k=T/8, one thread of this project's 2-core EPYC, with the chunked gather (before
  // the CPU kernels of model/dsa_cpu.h, which are faster; the threshold was not re-measured):
  // T=256 dense 9-10 ms vs gather 15-18; T=512 88-116 vs 61-67; T=1024 1360-1550 vs 240-260.
  return T >= kGatherMinT && 4 * std::min(opt.topk, T) <= T;
}

torch::Tensor DsaAttentionImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  const int64_t B = x.size(0), T = x.size(1);
  if (ctx.training) steps_seen = std::max(steps_seen, ctx.step);
  const int64_t step = ctx.training ? ctx.step : std::max(ctx.step, steps_seen);
  const bool sparse = sparse_stage(step), kl = ctx.training;
  const torch::Tensor xin = tp_copy_in(x, tp);  // one gradient all-reduce for q, k and v together
  auto q = c_q(xin).view({B, T, n_head, head_dim});
  auto k = c_k(xin).view({B, T, n_head, head_dim});
  auto v = c_v(xin).view({B, T, n_head, head_dim});
  q = rms_norm(apply_rope(q, ctx.cos, ctx.sin));  // (B, T, H, D), QK-norm after RoPE
  k = rms_norm(apply_rope(k, ctx.cos, ctx.sin));
  if (ctx.attn_logit_scale != 1.0) q = q * ctx.attn_logit_scale;  // YaRN's temperature on q.k
  // The indexer learns only from its KL loss: it reads a detached input, and selection (top-k) is
  // not differentiable, so the LM loss never reaches it. With gradient in training: the KL reaches
  // the indexer through these projections.
  IndexerProj ip;
  if (sparse || kl || ctx.caches) ip = project(*this, x.detach(), ctx.caches ? ctx.pos : 0, ctx.positions);
  torch::Tensor allowed = ctx.allowed;
  if (ctx.caches) {  // generation: the queries sit at [pos, pos + T) and see the cached keys too
    auto& cache = ctx.cache<DsaCache>("dsa");
    if (cache.k.defined()) {
      k = torch::cat({cache.k, k}, 1);
      v = torch::cat({cache.v, v}, 1);
      ip.k = torch::cat({cache.index_k, ip.k}, 1);
    }
    cache.k = k;
    cache.v = v;
    cache.index_k = ip.k;
    allowed = cached_causal_mask(T, k.size(1), x.device());
  }
  const int64_t Tk = k.size(1);
  q = q.transpose(1, 2);  // (B, H, T, D)
  k = k.transpose(1, 2);  // (B, H, Tk, D)
  v = v.transpose(1, 2);
  const auto visible = visible_keys(allowed, B, T, x.device());  // (B, T, Tk)
  torch::Tensor y;                                                // (B, H, T, D)

  if (!sparse) {
    // Dense warm-up: full attention; in training the indexer learns the full distribution.
    if (!kl) {
      y = device::attention(q, k, v, allowed);
    } else {
      auto [yd, probs] = attention_with_probs(q, k, v, visible);
      y = yd;
      auto loss = kl_loss(kl_target(probs, tp), row_scores(ip, 0, T), visible);
      ctx.aux.push_back({"dsa_kl.L" + std::to_string(opt.layer), loss, opt.kl_weight});
    }
    record(ctx, opt.layer, 1.0, false, true);
  } else {
    // Selection needs every key's score but no gradient: the KL's gradient is taken on the selected
    // keys only (below), so nothing T x T is kept for backward.
    auto [idx, valid] = select_blockwise(*this, ip, visible);  // (B, T, K)
    const bool gathered = sparse_path(Tk);
    torch::Tensor p_sel;  // KL target over the selected keys: (B, T, K)
    if (gathered) {
      auto [ys, probs] = sparse_attention(q, k, v, idx, valid, opt.chunk_values, opt.cpu_kernels);
      y = ys;
      if (kl) p_sel = kl_target(probs, tp);
    } else {
      auto chosen = torch::zeros({B, T, Tk}, visible.options()).scatter_(2, idx, valid);  // selected & visible
      if (!kl) {
        y = device::attention(q, k, v, chosen.unsqueeze(1));
      } else {
        auto [yd, probs] = attention_with_probs(q, k, v, chosen);
        y = yd;
        p_sel = kl_target(probs, tp).gather(2, idx);
      }
    }
    if (kl) {
      auto loss = kl_loss(p_sel, selected_scores(ip, idx, opt.chunk_values, opt.cpu_kernels), valid);
      ctx.aux.push_back({"dsa_kl.L" + std::to_string(opt.layer), loss, opt.kl_weight});
    }
    const double density = valid.sum().item<double>() / std::max(1.0, visible.sum().item<double>());
    record(ctx, opt.layer, density, gathered, false);
  }
  y = y.transpose(1, 2).contiguous().view({B, T, n_head * head_dim});
  return tp_reduce_out(c_proj(y), tp);
}

std::string DsaAttentionImpl::shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) {
  return split_heads(g, splits);
}

double DsaAttentionImpl::flops_per_token(int64_t T) const {
  const double H = static_cast<double>(n_head), D = static_cast<double>(head_dim);
  const double HI = static_cast<double>(opt.index_heads), DI = static_cast<double>(opt.index_dim);
  const double Tk = static_cast<double>(T), K = static_cast<double>(std::min(opt.topk, T));
  double main = 0, indexer = 0;
  for (auto* l : {&c_q, &c_k, &c_v, &c_proj}) main += static_cast<double>((*l)->weight.numel());
  for (auto* l : {&indexer_q, &indexer_k, &indexer_w}) indexer += static_cast<double>((*l)->weight.numel());
  // Main projections: forward + backward. Indexer projections: forward + weight gradients only
  // (its input is detached, so no gradient flows back to x).
  double f = 6.0 * main + 4.0 * indexer;
  if (!sparse_stage(steps_seen)) {
    // Dense attention over T keys; index scores over T keys, forward and backward (KL over all).
    f += 12.0 * H * D * Tk + 6.0 * HI * DI * Tk;
  } else {
    // Main attention over what ran; index scores over T keys without gradient, then the selected
    // K recomputed with gradient for the KL. The KL target reuses the attention's probabilities.
    const double keys = sparse_path(T) ? K : Tk;
    f += 12.0 * H * D * keys + 2.0 * HI * DI * Tk + 6.0 * HI * DI * K;
  }
  return f;
}

std::string DsaAttentionImpl::describe() const {
  std::ostringstream os;
  os << "dsa (H=" << n_head << ", D=" << head_dim << ", rope, qk-norm" << (doc_mask ? ", doc-mask" : "")
     << ", indexer " << opt.index_heads << "x" << opt.index_dim << " rope " << opt.rope_dims << ", top-k "
     << opt.topk << " incl. window " << opt.window << ", warm-up " << opt.warmup_steps << ", path " << opt.path;
  // Say which path auto takes at the context, so a layer that never gathers does not pass for one that does.
  if (opt.path == "auto") os << " -> " << (sparse_path(context) ? "sparse" : "dense_masked") << " at T=" << context;
  os << ", kl " << opt.kl_weight << ")";
  return os.str();
}

void apply_dsa(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const int64_t start = args.i64("start_layer");
  std::string attention_layers;
  int64_t n = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(plan.layers.size()); ++i) {
    LayerPlan& lp = plan.layers[i];
    if (lp.kind != 'A') continue;  // Mamba layers stay Mamba
    attention_layers += (attention_layers.empty() ? "" : ", ") + std::to_string(i);
    if (i < start) continue;
    const DsaOptions o = DsaOptions::from(args, cfg.context, i);
    lp.mixer = [cfg, o] { return Mixer(std::make_shared<DsaAttentionImpl>(cfg, o)); };
    lp.modules.push_back("dsa");
    ++n;
  }
  SLM_CHECK(n > 0, "[dsa] no attention layer at or after start_layer ", start, "; attention layers are ",
            attention_layers.empty() ? "none" : attention_layers, ": lower start_layer");
}

}  // namespace slm
