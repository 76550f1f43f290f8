#include "model/dsa_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/error.h"

// The row kernels are templates forced inline into per-ISA clones of their float and double
// drivers (as model/fused_ce.cpp does), so the head-dim loops vectorize for the CPU that runs them.
#define SLM_INLINE __attribute__((always_inline)) inline
#define SLM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

namespace slm::dsa_cpu {

namespace {

template <typename T>
SLM_INLINE T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
SLM_INLINE void axpy(T* y, T a, const T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The queries that selected each key: CSR over the B*Tk keys, entries r*K + j (query row r of
// B*Tq, slot j) in increasing order, so every key's gradient sums in the same order on any
// thread count. `ok` (or null: every entry) filters the entries.
struct Inverse {
  std::vector<int64_t> offset;  // B*Tk + 1
  std::vector<int64_t> entry;
};

Inverse invert(const int64_t* idx, const bool* ok, int64_t B, int64_t Tq, int64_t Tk, int64_t K) {
  Inverse inv;
  inv.offset.assign(B * Tk + 1, 0);
  for (int64_t r = 0; r < B * Tq; ++r) {
    const int64_t base = (r / Tq) * Tk;
    for (int64_t j = 0; j < K; ++j)
      if (!ok || ok[r * K + j]) ++inv.offset[base + idx[r * K + j] + 1];
  }
  for (int64_t i = 0; i < B * Tk; ++i) inv.offset[i + 1] += inv.offset[i];
  inv.entry.resize(inv.offset.back());
  std::vector<int64_t> fill(inv.offset.begin(), inv.offset.end() - 1);
  for (int64_t r = 0; r < B * Tq; ++r) {
    const int64_t base = (r / Tq) * Tk;
    for (int64_t j = 0; j < K; ++j)
      if (!ok || ok[r * K + j]) inv.entry[fill[base + idx[r * K + j]]++] = r * K + j;
  }
  return inv;
}

// Runs f(key0, key1) over every key in chunks of about equal entry counts: early keys are selected
// by many more queries than late ones, so equal key ranges would leave one thread doing most of it.
template <typename F>
void for_keys(const Inverse& inv, F&& f) {
  const int64_t n_keys = static_cast<int64_t>(inv.offset.size()) - 1, total = inv.offset.back();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n_keys, 8 * at::get_num_threads()));
  std::vector<int64_t> bound(chunks + 1, n_keys);
  bound[0] = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    bound[c] = std::lower_bound(inv.offset.begin(), inv.offset.end() - 1, target) - inv.offset.begin();
    bound[c] = std::max(bound[c], bound[c - 1]);
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) f(bound[c], bound[c + 1]);
  });
}

// ---- main attention over the selected keys ----

template <typename T>
struct Attn {
  const T *q, *k, *v, *gy;
  const int64_t* idx;
  const bool* ok;
  T *y, *p, *ds, *dq, *dk, *dv;
  int64_t Tq, Tk, H, D, K;
  T scale;
};

template <typename T>
SLM_INLINE void attn_fwd(const Attn<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.H, D = a.D, K = a.K, HD = H * D;
  for (int64_t r = r0; r < r1; ++r) {
    const T* kb = a.k + (r / a.Tq) * a.Tk * HD;
    const T* vb = a.v + (r / a.Tq) * a.Tk * HD;
    const T* qr = a.q + r * HD;
    const int64_t* ix = a.idx + r * K;
    const bool* ok = a.ok + r * K;
    T* pr = a.p + r * H * K;  // scores, then probabilities, (H, K)
    for (int64_t j = 0; j < K; ++j) {
      const T* kr = kb + ix[j] * HD;
      for (int64_t h = 0; h < H; ++h)
        pr[h * K + j] = ok[j] ? a.scale * dot(qr + h * D, kr + h * D, D) : -std::numeric_limits<T>::infinity();
    }
    for (int64_t h = 0; h < H; ++h) {
      T* s = pr + h * K;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < K; ++j) m = std::max(m, s[j]);
      if (m == -std::numeric_limits<T>::infinity()) {  // nothing visible (callers always keep one)
        std::fill(s, s + K, T(0));
        continue;
      }
      T sum = 0;
      for (int64_t j = 0; j < K; ++j) sum += (s[j] = std::exp(s[j] - m));
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < K; ++j) s[j] *= inv;
    }
    T* yr = a.y + r * HD;
    std::fill(yr, yr + HD, T(0));
    for (int64_t j = 0; j < K; ++j) {
      if (!ok[j]) continue;
      const T* vr = vb + ix[j] * HD;
      for (int64_t h = 0; h < H; ++h) axpy(yr + h * D, pr[h * K + j], vr + h * D, D);
    }
  }
}

// Queries' side of backward: ds = dL/dscore (scaled, through the softmax) and dq.
template <typename T>
SLM_INLINE void attn_bwd_queries(const Attn<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.H, D = a.D, K = a.K, HD = H * D;
  for (int64_t r = r0; r < r1; ++r) {
    const T* kb = a.k + (r / a.Tq) * a.Tk * HD;
    const T* vb = a.v + (r / a.Tq) * a.Tk * HD;
    const T* gr = a.gy + r * HD;
    const int64_t* ix = a.idx + r * K;
    const bool* ok = a.ok + r * K;
    const T* pr = a.p + r * H * K;
    T* dsr = a.ds + r * H * K;
    for (int64_t j = 0; j < K; ++j) {
      const T* vr = vb + ix[j] * HD;
      for (int64_t h = 0; h < H; ++h) dsr[h * K + j] = ok[j] ? dot(gr + h * D, vr + h * D, D) : T(0);  // dp
    }
    for (int64_t h = 0; h < H; ++h) {
      const T* ph = pr + h * K;
      T* dh = dsr + h * K;
      const T pdp = dot(ph, dh, K);
      for (int64_t j = 0; j < K; ++j) dh[j] = ph[j] * (dh[j] - pdp) * a.scale;
    }
    T* dqr = a.dq + r * HD;
    std::fill(dqr, dqr + HD, T(0));
    for (int64_t j = 0; j < K; ++j) {
      if (!ok[j]) continue;
      const T* kr = kb + ix[j] * HD;
      for (int64_t h = 0; h < H; ++h) axpy(dqr + h * D, dsr[h * K + j], kr + h * D, D);
    }
  }
}

// Keys' side of backward: dk and dv of keys [s0, s1) (rows of B*Tk) from the queries that selected them.
template <typename T>
SLM_INLINE void attn_bwd_keys(const Attn<T>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  const int64_t H = a.H, D = a.D, K = a.K, HD = H * D;
  for (int64_t s = s0; s < s1; ++s) {
    T* dkr = a.dk + s * HD;
    T* dvr = a.dv + s * HD;
    std::fill(dkr, dkr + HD, T(0));
    std::fill(dvr, dvr + HD, T(0));
    for (int64_t e = inv.offset[s]; e < inv.offset[s + 1]; ++e) {
      const int64_t r = inv.entry[e] / K, j = inv.entry[e] % K;
      const T* qr = a.q + r * HD;
      const T* gr = a.gy + r * HD;
      for (int64_t h = 0; h < H; ++h) {
        axpy(dkr + h * D, a.ds[(r * H + h) * K + j], qr + h * D, D);
        axpy(dvr + h * D, a.p[(r * H + h) * K + j], gr + h * D, D);
      }
    }
  }
}

SLM_CLONES void attn_fwd_f32(const Attn<float>& a, int64_t r0, int64_t r1) { attn_fwd(a, r0, r1); }
SLM_CLONES void attn_fwd_f64(const Attn<double>& a, int64_t r0, int64_t r1) { attn_fwd(a, r0, r1); }
SLM_CLONES void attn_bwd_queries_f32(const Attn<float>& a, int64_t r0, int64_t r1) { attn_bwd_queries(a, r0, r1); }
SLM_CLONES void attn_bwd_queries_f64(const Attn<double>& a, int64_t r0, int64_t r1) { attn_bwd_queries(a, r0, r1); }
SLM_CLONES void attn_bwd_keys_f32(const Attn<float>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  attn_bwd_keys(a, inv, s0, s1);
}
SLM_CLONES void attn_bwd_keys_f64(const Attn<double>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  attn_bwd_keys(a, inv, s0, s1);
}

// ---- the indexer's scores at the selected keys ----

template <typename T>
struct Index {
  const T *q, *k, *w, *g;
  const int64_t* idx;
  T *out, *ds, *dq, *dk, *dw;
  int64_t Tq, Tk, HI, DI, K;
};

template <typename T>
SLM_INLINE void index_fwd(const Index<T>& a, int64_t r0, int64_t r1) {
  const int64_t HI = a.HI, DI = a.DI, K = a.K;
  for (int64_t r = r0; r < r1; ++r) {
    const T* kb = a.k + (r / a.Tq) * a.Tk * DI;
    const T* qr = a.q + r * HI * DI;
    const T* wr = a.w + r * HI;
    const int64_t* ix = a.idx + r * K;
    for (int64_t j = 0; j < K; ++j) {
      const T* kr = kb + ix[j] * DI;
      T acc = 0;
      for (int64_t h = 0; h < HI; ++h) acc += wr[h] * std::max(T(0), dot(qr + h * DI, kr, DI));
      a.out[r * K + j] = acc;
    }
  }
}

// Queries' side: dw, dq, and ds = dL/d(q.k) per (head, slot), kept for the keys' side.
template <typename T>
SLM_INLINE void index_bwd_queries(const Index<T>& a, int64_t r0, int64_t r1) {
  const int64_t HI = a.HI, DI = a.DI, K = a.K;
  for (int64_t r = r0; r < r1; ++r) {
    const T* kb = a.k + (r / a.Tq) * a.Tk * DI;
    const T* qr = a.q + r * HI * DI;
    const T* wr = a.w + r * HI;
    const T* gr = a.g + r * K;
    const int64_t* ix = a.idx + r * K;
    T* dsr = a.ds + r * HI * K;
    T* dqr = a.dq + r * HI * DI;
    T* dwr = a.dw + r * HI;
    std::fill(dqr, dqr + HI * DI, T(0));
    std::fill(dwr, dwr + HI, T(0));
    for (int64_t j = 0; j < K; ++j) {
      const T* kr = kb + ix[j] * DI;
      for (int64_t h = 0; h < HI; ++h) {
        const T s = dot(qr + h * DI, kr, DI);
        const T d = s > 0 ? gr[j] * wr[h] : T(0);  // through the ReLU
        dwr[h] += s > 0 ? gr[j] * s : T(0);
        dsr[h * K + j] = d;
        axpy(dqr + h * DI, d, kr, DI);
      }
    }
  }
}

template <typename T>
SLM_INLINE void index_bwd_keys(const Index<T>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  const int64_t HI = a.HI, DI = a.DI, K = a.K;
  for (int64_t s = s0; s < s1; ++s) {
    T* dkr = a.dk + s * DI;
    std::fill(dkr, dkr + DI, T(0));
    for (int64_t e = inv.offset[s]; e < inv.offset[s + 1]; ++e) {
      const int64_t r = inv.entry[e] / K, j = inv.entry[e] % K;
      for (int64_t h = 0; h < HI; ++h) axpy(dkr, a.ds[(r * HI + h) * K + j], a.q + (r * HI + h) * DI, DI);
    }
  }
}

SLM_CLONES void index_fwd_f32(const Index<float>& a, int64_t r0, int64_t r1) { index_fwd(a, r0, r1); }
SLM_CLONES void index_fwd_f64(const Index<double>& a, int64_t r0, int64_t r1) { index_fwd(a, r0, r1); }
SLM_CLONES void index_bwd_queries_f32(const Index<float>& a, int64_t r0, int64_t r1) { index_bwd_queries(a, r0, r1); }
SLM_CLONES void index_bwd_queries_f64(const Index<double>& a, int64_t r0, int64_t r1) {
  index_bwd_queries(a, r0, r1);
}
SLM_CLONES void index_bwd_keys_f32(const Index<float>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  index_bwd_keys(a, inv, s0, s1);
}
SLM_CLONES void index_bwd_keys_f64(const Index<double>& a, const Inverse& inv, int64_t s0, int64_t s1) {
  index_bwd_keys(a, inv, s0, s1);
}

// The dtype the kernels run in for these inputs: fp64 if any is fp64, else fp32 (bf16 is widened).
torch::ScalarType compute_type(std::initializer_list<torch::Tensor> ts) {
  for (auto& t : ts)
    if (t.scalar_type() == torch::kFloat64) return torch::kFloat64;
  return torch::kFloat32;
}

torch::Tensor as(const torch::Tensor& t, torch::ScalarType s) { return t.to(s).contiguous(); }

// Rows per parallel task: a query row is K x H x D multiply-adds, thousands of them at least.
constexpr int64_t kGrain = 16;

template <typename T>
T* ptr(const torch::Tensor& t) {
  return t.data_ptr<T>();
}

template <typename T>
Attn<T> attn_args(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx,
                  const torch::Tensor& ok, double scale) {
  Attn<T> a{};
  a.q = ptr<T>(q);
  a.k = ptr<T>(k);
  a.v = ptr<T>(v);
  a.idx = idx.data_ptr<int64_t>();
  a.ok = ok.data_ptr<bool>();
  a.Tq = q.size(1);
  a.Tk = k.size(1);
  a.H = q.size(2);
  a.D = q.size(3);
  a.K = idx.size(2);
  a.scale = static_cast<T>(scale);
  return a;
}

void check_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& idx,
                     const torch::Tensor& ok) {
  SLM_CHECK(q.is_cpu() && q.dim() == 4 && k.sizes() == v.sizes() && k.dim() == 4 && k.size(0) == q.size(0) &&
                k.size(2) == q.size(2) && k.size(3) == q.size(3) && idx.dim() == 3 && idx.size(0) == q.size(0) &&
                idx.size(1) == q.size(1) && ok.sizes() == idx.sizes() && idx.scalar_type() == torch::kInt64 &&
                ok.scalar_type() == torch::kBool,
            "[dsa] CPU sparse attention: shapes q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(), ", idx ",
            idx.sizes(), ", ok ", ok.sizes(), " do not agree");
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& v, const torch::Tensor& idx,
                                                          const torch::Tensor& ok, double scale) {
  check_attention(q, k, v, idx, ok);
  const auto st = compute_type({q, k, v});
  auto qc = as(q, st), kc = as(k, st), vc = as(v, st), ic = idx.contiguous(), oc = ok.contiguous();
  const int64_t B = q.size(0), Tq = q.size(1), H = q.size(2), D = q.size(3), K = idx.size(2);
  auto y = torch::empty({B, Tq, H, D}, qc.options());
  auto p = torch::empty({B, Tq, H, K}, qc.options());
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto a = attn_args<T>(qc, kc, vc, ic, oc, scale);
    a.y = ptr<T>(y);
    a.p = ptr<T>(p);
    at::parallel_for(0, B * Tq, kGrain, [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) attn_fwd_f32(a, r0, r1);
      else attn_fwd_f64(a, r0, r1);
    });
  };
  if (st == torch::kFloat64) run(static_cast<double*>(nullptr));
  else run(static_cast<float*>(nullptr));
  return {y.to(v.scalar_type()), p};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> attention_backward(
    const torch::Tensor& gy, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
    const torch::Tensor& idx, const torch::Tensor& ok, const torch::Tensor& p, double scale) {
  check_attention(q, k, v, idx, ok);
  const auto st = p.scalar_type();
  auto qc = as(q, st), kc = as(k, st), vc = as(v, st), gc = as(gy, st), pc = p.contiguous();
  auto ic = idx.contiguous(), oc = ok.contiguous();
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1), K = idx.size(2);
  auto ds = torch::empty_like(pc), dq = torch::empty_like(qc), dk = torch::empty_like(kc), dv = torch::empty_like(vc);
  const Inverse inv = invert(ic.data_ptr<int64_t>(), oc.data_ptr<bool>(), B, Tq, Tk, K);
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto a = attn_args<T>(qc, kc, vc, ic, oc, scale);
    a.gy = ptr<T>(gc);
    a.p = ptr<T>(pc);
    a.ds = ptr<T>(ds);
    a.dq = ptr<T>(dq);
    a.dk = ptr<T>(dk);
    a.dv = ptr<T>(dv);
    at::parallel_for(0, B * Tq, kGrain, [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) attn_bwd_queries_f32(a, r0, r1);
      else attn_bwd_queries_f64(a, r0, r1);
    });
    for_keys(inv, [&](int64_t s0, int64_t s1) {
      if constexpr (std::is_same_v<T, float>) attn_bwd_keys_f32(a, inv, s0, s1);
      else attn_bwd_keys_f64(a, inv, s0, s1);
    });
  };
  if (st == torch::kFloat64) run(static_cast<double*>(nullptr));
  else run(static_cast<float*>(nullptr));
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

namespace {

void check_index(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& w, const torch::Tensor& idx) {
  SLM_CHECK(q.is_cpu() && q.dim() == 4 && k.dim() == 3 && k.size(0) == q.size(0) && k.size(2) == q.size(3) &&
                w.dim() == 3 && w.size(0) == q.size(0) && w.size(1) == q.size(1) && w.size(2) == q.size(2) &&
                idx.dim() == 3 && idx.size(0) == q.size(0) && idx.size(1) == q.size(1) &&
                idx.scalar_type() == torch::kInt64,
            "[dsa] CPU index scores: shapes q ", q.sizes(), ", k ", k.sizes(), ", w ", w.sizes(), ", idx ", idx.sizes(),
            " do not agree");
}

template <typename T>
Index<T> index_args(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& w, const torch::Tensor& idx) {
  Index<T> a{};
  a.q = ptr<T>(q);
  a.k = ptr<T>(k);
  a.w = ptr<T>(w);
  a.idx = idx.data_ptr<int64_t>();
  a.Tq = q.size(1);
  a.Tk = k.size(1);
  a.HI = q.size(2);
  a.DI = q.size(3);
  a.K = idx.size(2);
  return a;
}

}  // namespace

torch::Tensor index_forward(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& w,
                            const torch::Tensor& idx) {
  check_index(q, k, w, idx);
  const auto st = compute_type({q, k, w});
  auto qc = as(q, st), kc = as(k, st), wc = as(w, st), ic = idx.contiguous();
  auto out = torch::empty(idx.sizes(), qc.options());
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto a = index_args<T>(qc, kc, wc, ic);
    a.out = ptr<T>(out);
    at::parallel_for(0, idx.size(0) * idx.size(1), kGrain, [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) index_fwd_f32(a, r0, r1);
      else index_fwd_f64(a, r0, r1);
    });
  };
  if (st == torch::kFloat64) run(static_cast<double*>(nullptr));
  else run(static_cast<float*>(nullptr));
  return out;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> index_backward(const torch::Tensor& g, const torch::Tensor& q,
                                                                       const torch::Tensor& k, const torch::Tensor& w,
                                                                       const torch::Tensor& idx) {
  check_index(q, k, w, idx);
  const auto st = compute_type({q, k, w});
  auto qc = as(q, st), kc = as(k, st), wc = as(w, st), gc = as(g, st), ic = idx.contiguous();
  const int64_t B = q.size(0), Tq = q.size(1), HI = q.size(2), Tk = k.size(1), K = idx.size(2);
  auto ds = torch::empty({B, Tq, HI, K}, qc.options());
  auto dq = torch::empty_like(qc), dk = torch::empty_like(kc), dw = torch::empty_like(wc);
  const Inverse inv = invert(ic.data_ptr<int64_t>(), nullptr, B, Tq, Tk, K);
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto a = index_args<T>(qc, kc, wc, ic);
    a.g = ptr<T>(gc);
    a.ds = ptr<T>(ds);
    a.dq = ptr<T>(dq);
    a.dk = ptr<T>(dk);
    a.dw = ptr<T>(dw);
    at::parallel_for(0, B * Tq, kGrain, [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) index_bwd_queries_f32(a, r0, r1);
      else index_bwd_queries_f64(a, r0, r1);
    });
    for_keys(inv, [&](int64_t s0, int64_t s1) {
      if constexpr (std::is_same_v<T, float>) index_bwd_keys_f32(a, inv, s0, s1);
      else index_bwd_keys_f64(a, inv, s0, s1);
    });
  };
  if (st == torch::kFloat64) run(static_cast<double*>(nullptr));
  else run(static_cast<float*>(nullptr));
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dw.to(w.scalar_type())};
}

namespace {

// One query row's selection from its scores s over keys [0, Tk): see select_topk. Only keys before
// `end` can be visible (the row's last visible key + 1), so the candidates stop there when K fit.
// Writes K ascending indices to out and their visibility to ok.
template <typename T>
void pick(const T* s, const bool* v, int64_t Tk, int64_t end, int64_t t, int64_t K, int64_t window,
          std::vector<T>& key, std::vector<int64_t>& order, int64_t* out, bool* ok) {
  const T inf = std::numeric_limits<T>::infinity();
  const int64_t n = K <= end ? end : Tk;
  for (int64_t j = 0; j < n; ++j) {
    const bool in_window = t - j >= 0 && t - j < window;
    key[j] = !v[j] ? -inf : in_window ? inf : std::isnan(s[j]) ? -inf : s[j];
  }
  std::iota(order.begin(), order.begin() + n, int64_t{0});
  // A strict total order (score descending, then position ascending): the K first are unique.
  auto before = [&](int64_t a, int64_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); };
  if (K < n) std::nth_element(order.begin(), order.begin() + (K - 1), order.begin() + n, before);
  std::sort(order.begin(), order.begin() + K);
  for (int64_t j = 0; j < K; ++j) {
    out[j] = order[j];
    ok[j] = v[order[j]];
  }
}

// The last visible key of a row + 1 (0 if none).
int64_t visible_end(const bool* v, int64_t Tk) {
  int64_t e = Tk;
  while (e > 0 && !v[e - 1]) --e;
  return e;
}

// The indexer's scores of one query row over keys [0, end) (DSA's I_{t,s}, see model/dsa.h),
// from keys transposed (DI, Tk) so the inner loop runs along keys and vectorizes; head by head.
template <typename T>
SLM_INLINE void row_index_scores(const T* q, const T* w, const T* kt, int64_t HI, int64_t DI, int64_t Tk, int64_t end,
                                 T* acc, T* tmp) {
  std::fill(acc, acc + end, T(0));
  for (int64_t h = 0; h < HI; ++h) {
    std::fill(tmp, tmp + end, T(0));
    for (int64_t d = 0; d < DI; ++d) axpy(tmp, q[h * DI + d], kt + d * Tk, end);
    const T wh = w[h];
#pragma omp simd
    for (int64_t j = 0; j < end; ++j) acc[j] += wh * (tmp[j] > 0 ? tmp[j] : T(0));
  }
}

template <typename T>
struct Select {
  const T *q, *w, *kt;  // (B, Tq, HI, DI), (B, Tq, HI), (B, DI, Tk)
  const bool* vis;      // (B, Tq, Tk)
  int64_t *idx;
  bool* ok;
  int64_t Tq, Tk, HI, DI, K, window, t0;
};

template <typename T>
SLM_INLINE void select_rows(const Select<T>& a, int64_t r0, int64_t r1) {
  std::vector<T> acc(a.Tk), tmp(a.Tk), key(a.Tk);
  std::vector<int64_t> order(a.Tk);
  for (int64_t r = r0; r < r1; ++r) {
    const bool* v = a.vis + r * a.Tk;
    const int64_t end = visible_end(v, a.Tk);
    row_index_scores(a.q + r * a.HI * a.DI, a.w + r * a.HI, a.kt + (r / a.Tq) * a.DI * a.Tk, a.HI, a.DI, a.Tk, end,
                     acc.data(), tmp.data());
    pick(acc.data(), v, a.Tk, end, a.t0 + r % a.Tq, a.K, a.window, key, order, a.idx + r * a.K, a.ok + r * a.K);
  }
}

SLM_CLONES void select_rows_f32(const Select<float>& a, int64_t r0, int64_t r1) { select_rows(a, r0, r1); }
SLM_CLONES void select_rows_f64(const Select<double>& a, int64_t r0, int64_t r1) { select_rows(a, r0, r1); }

void check_selection(const torch::Tensor& visible, int64_t B, int64_t n, int64_t Tk, int64_t K) {
  SLM_CHECK(visible.dim() == 3 && visible.size(0) == B && visible.size(1) == n && visible.size(2) == Tk &&
                visible.scalar_type() == torch::kBool && K >= 1 && K <= Tk,
            "[dsa] CPU selection: visible ", visible.sizes(), " for ", B, " x ", n, " queries over ", Tk, " keys, k ",
            K, " do not agree");
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> select_topk(const torch::Tensor& scores, const torch::Tensor& visible,
                                                    int64_t K, int64_t window, int64_t t0) {
  SLM_CHECK(scores.is_cpu() && scores.dim() == 3, "[dsa] CPU selection: scores ", scores.sizes(), " must be (B, n, Tk)");
  const int64_t B = scores.size(0), n = scores.size(1), Tk = scores.size(2);
  check_selection(visible, B, n, Tk, K);
  auto sc = scores.contiguous();
  auto vis = visible.contiguous();
  auto idx = torch::empty({B, n, K}, scores.options().dtype(torch::kInt64));
  auto valid = torch::empty({B, n, K}, visible.options());
  AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "dsa_select_topk", [&] {
    const scalar_t* sp = sc.data_ptr<scalar_t>();
    const bool* vp = vis.data_ptr<bool>();
    at::parallel_for(0, B * n, kGrain, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> key(Tk);
      std::vector<int64_t> order(Tk);
      for (int64_t r = r0; r < r1; ++r) {
        const bool* v = vp + r * Tk;
        pick(sp + r * Tk, v, Tk, visible_end(v, Tk), t0 + r % n, K, window, key, order,
             idx.data_ptr<int64_t>() + r * K, valid.data_ptr<bool>() + r * K);
      }
    });
  });
  return {idx, valid};
}

std::pair<torch::Tensor, torch::Tensor> index_select_topk(const torch::Tensor& q, const torch::Tensor& k,
                                                          const torch::Tensor& w, const torch::Tensor& visible,
                                                          int64_t K, int64_t window, int64_t t0) {
  SLM_CHECK(q.is_cpu() && q.dim() == 4 && k.dim() == 3 && k.size(0) == q.size(0) && k.size(2) == q.size(3) &&
                w.dim() == 3 && w.size(0) == q.size(0) && w.size(1) == q.size(1) && w.size(2) == q.size(2),
            "[dsa] CPU index selection: shapes q ", q.sizes(), ", k ", k.sizes(), ", w ", w.sizes(), " do not agree");
  const int64_t B = q.size(0), Tq = q.size(1), Tk = k.size(1);
  check_selection(visible, B, Tq, Tk, K);
  const auto st = compute_type({q, k, w});
  auto qc = as(q, st), wc = as(w, st), kt = k.to(st).transpose(1, 2).contiguous(), vis = visible.contiguous();
  auto idx = torch::empty({B, Tq, K}, q.options().dtype(torch::kInt64));
  auto valid = torch::empty({B, Tq, K}, visible.options());
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    Select<T> a{ptr<T>(qc), ptr<T>(wc), ptr<T>(kt), vis.data_ptr<bool>(), idx.data_ptr<int64_t>(),
                valid.data_ptr<bool>(), Tq, Tk, q.size(2), q.size(3), K, window, t0};
    // Rows late in the sequence see more keys: small tasks keep the threads even.
    at::parallel_for(0, B * Tq, 4, [&](int64_t r0, int64_t r1) {
      if constexpr (std::is_same_v<T, float>) select_rows_f32(a, r0, r1);
      else select_rows_f64(a, r0, r1);
    });
  };
  if (st == torch::kFloat64) run(static_cast<double*>(nullptr));
  else run(static_cast<float*>(nullptr));
  return {idx, valid};
}

}  // namespace slm::dsa_cpu
