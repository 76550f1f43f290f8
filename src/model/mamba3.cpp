#include "model/mamba3.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "model/gpt.h"

namespace slm {

namespace F = torch::nn::functional;

namespace {

constexpr double kPi = 3.14159265358979323846;

// The scan runs in fp32 even under bf16 autocast (the state sums many decayed terms; bf16 keeps
// 8 bits of them), and in fp64 when its inputs are fp64 (the reference tests).
torch::ScalarType scan_dtype(const torch::Tensor& like) {
  return like.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// Stable segment sums: out[..., i, j] = x[..., j+1] + ... + x[..., i] for i >= j, -inf above the
// diagonal (and on it when !diagonal). Built as a cumsum of masked repeats, never as a difference of
// cumsums (which cancels).
torch::Tensor segsum(const torch::Tensor& x, bool diagonal = true) {
  const int64_t n = x.size(-1);
  auto sizes = x.sizes().vec();
  sizes.push_back(n);
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(x.device());
  auto strict = torch::ones({n, n}, opts).tril(-1);
  auto xe = x.unsqueeze(-1).expand(sizes).masked_fill(strict.logical_not(), 0.0);  // [.., d, e] = x_d for d > e
  auto s = xe.cumsum(-2);
  return s.masked_fill(torch::ones({n, n}, opts).tril(diagonal ? 0 : -1).logical_not(),
                       -std::numeric_limits<double>::infinity());
}

// Repeats each entry of the last dim R times: (..., Q) -> (..., Q*R), rows of the (Q R) x (Q R) blocks.
torch::Tensor per_rank(const torch::Tensor& t, int64_t R) {
  if (R == 1) return t;
  auto s = t.sizes().vec();
  s.push_back(R);
  auto o = t.unsqueeze(-1).expand(s);
  s.pop_back();
  s.back() *= R;
  return o.reshape(s);
}

// RMSNorm over the last dim with a learned weight (eps 1e-5, as the official B/C norms).
torch::Tensor rms_norm_w(const torch::Tensor& x, const torch::Tensor& w) {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * w.to(x.scalar_type());
}

// Rotates the first 2S dims of v: (B, T, R, H, N) in adjacent pairs by phi: (B, T, H, S).
torch::Tensor rotate(const torch::Tensor& v, const torch::Tensor& phi) {
  const int64_t S = phi.size(-1);
  auto pairs = v.slice(-1, 0, 2 * S);
  auto ps = pairs.sizes().vec();
  ps.back() = S;
  ps.push_back(2);
  pairs = pairs.reshape(ps);  // (B, T, R, H, S, 2)
  auto v0 = pairs.select(-1, 0), v1 = pairs.select(-1, 1);
  auto cs = phi.cos().unsqueeze(2), sn = phi.sin().unsqueeze(2);  // (B, T, 1, H, S)
  auto rot = torch::stack({v0 * cs - v1 * sn, v0 * sn + v1 * cs}, -1).flatten(-2);
  return torch::cat({rot, v.slice(-1, 2 * S)}, -1);
}

// nanochat's init for input projections: uniform with the std of N(0, 1/fan_in).
void init_linear(torch::nn::Linear& l, int64_t fan_in) {
  const double bound = std::sqrt(3.0) / std::sqrt(static_cast<double>(fan_in));
  torch::NoGradGuard ng;
  l->weight.uniform_(-bound, bound);
}

}  // namespace

int64_t Mamba3Options::n_angle() const {
  int64_t split = static_cast<int64_t>(std::floor(static_cast<double>(d_state) * rope_fraction));
  split -= split % 2;
  return split / 2;
}

Mamba3Options Mamba3Options::from(const catalog::ModuleArgs& a, const ModelConfig& cfg) {
  Mamba3Options o;
  o.d_model = cfg.d_model;
  o.doc_mask = cfg.doc_mask;
  o.d_state = a.i64("d_state");
  o.expand = a.i64("expand");
  o.headdim = a.i64("headdim");
  o.chunk = a.i64("chunk");
  o.trapezoidal = a.flag("trapezoidal");
  o.bc_norm = a.flag("bc_norm");
  o.rope_fraction = a.f64("rope_fraction");
  o.mimo_rank = a.i64("mimo_rank");
  o.dt_min = a.f64("dt_min");
  o.dt_max = a.f64("dt_max");
  o.a_floor = a.f64("a_floor");
  return o;
}

// ---- the scan

torch::Tensor mamba3_segments(const torch::Tensor& doc_ids) {
  if (!doc_ids.defined()) return {};
  auto d = doc_ids.to(torch::kInt64);
  auto change = d.slice(1, 1).ne(d.slice(1, 0, -1)).to(torch::kInt64);  // (B, T-1)
  return torch::cat({torch::zeros({d.size(0), 1}, d.options()), change.cumsum(1)}, 1);
}

std::pair<torch::Tensor, torch::Tensor> mamba3_ssd(const torch::Tensor& x_in, const torch::Tensor& la_in,
                                                   const torch::Tensor& b_in, const torch::Tensor& c_in,
                                                   const torch::Tensor& seg_in, const torch::Tensor& h0,
                                                   int64_t chunk, bool diagonal) {
  SLM_CHECK(x_in.dim() == 5 && b_in.dim() == 5 && c_in.dim() == 5 && la_in.dim() == 3,
            "[mamba3] ssd expects x (B, T, R, H, P), la (B, T, H), b and c (B, T, R, H, N); got x ", x_in.sizes(),
            ", la ", la_in.sizes(), ", b ", b_in.sizes(), ", c ", c_in.sizes());
  SLM_CHECK(chunk >= 1, "[mamba3] chunk must be >= 1, got ", chunk);
  device::AutocastOff no_autocast(x_in);
  const auto dt = scan_dtype(x_in);
  const int64_t B = x_in.size(0), T = x_in.size(1), R = x_in.size(2), H = x_in.size(3), P = x_in.size(4);
  const int64_t N = b_in.size(4);
  const int64_t Q = std::min(chunk, T), K = (T + Q - 1) / Q, pad = K * Q - T;
  auto x = x_in.to(dt), la = la_in.to(dt), b = b_in.to(dt), c = c_in.to(dt);
  torch::Tensor seg = seg_in;
  if (pad > 0) {  // zeros: no input, no decay; the padded tokens stay in the last segment
    auto zpad = [&](const torch::Tensor& t) {
      auto s = t.sizes().vec();
      s[1] = pad;
      return torch::cat({t, torch::zeros(s, t.options())}, 1);
    };
    x = zpad(x);
    la = zpad(la);
    b = zpad(b);
    c = zpad(c);
    if (seg.defined()) seg = torch::cat({seg, seg.slice(1, T - 1, T).expand({B, pad})}, 1);
  }
  // Chunk layout (B, H, K, Q R, .): row (l, r) is token l of the chunk at rank r.
  auto to_chunks = [&](const torch::Tensor& t, int64_t D) {
    return t.view({B, K, Q, R, H, D}).permute({0, 4, 1, 2, 3, 5}).reshape({B, H, K, Q * R, D});
  };
  auto X = to_chunks(x, P), Bc = to_chunks(b, N), Cc = to_chunks(c, N);
  auto A = la.view({B, K, Q, H}).permute({0, 3, 1, 2});  // (B, H, K, Q)
  auto Acs = A.cumsum(-1);
  const double ninf = -std::numeric_limits<double>::infinity();

  torch::Tensor sc, send;  // segment ids per chunk (B, K, Q); the segment each chunk-end state belongs to (B, K+1)
  if (seg.defined()) {
    sc = seg.view({B, K, Q});
    send = torch::cat({torch::zeros({B, 1}, seg.options()), sc.select(2, Q - 1)}, 1);
  }

  // 1. Within chunks: y = (C B^T o L) X, L = exp(segsum(a)), zero across a document boundary.
  auto Ls = segsum(A, diagonal);  // (B, H, K, Q, Q)
  if (seg.defined()) Ls = Ls.masked_fill(sc.unsqueeze(-1).ne(sc.unsqueeze(-2)).unsqueeze(1), ninf);
  auto L = Ls.exp();
  if (R > 1) L = L.view({B, H, K, Q, 1, Q, 1}).expand({B, H, K, Q, R, Q, R}).reshape({B, H, K, Q * R, Q * R});
  auto Y = torch::matmul(torch::matmul(Cc, Bc.transpose(-1, -2)) * L, X);  // (B, H, K, Q R, P)

  // 2. Each chunk's final state from its own tokens: S_k = sum_s exp(cumA_last - cumA_s) x_s b_s^T,
  // counting only tokens in the segment of the chunk's last token.
  auto decay = (Acs.slice(-1, Q - 1) - Acs).exp();  // (B, H, K, Q)
  if (seg.defined()) decay = decay * sc.eq(sc.slice(2, Q - 1)).unsqueeze(1).to(dt);
  auto S = torch::matmul((X * per_rank(decay, R).unsqueeze(-1)).transpose(-1, -2), Bc);  // (B, H, K, P, N)

  // 3. Across chunks, as one matrix: state after chunk i = sum_j exp(A_j+1 + ... + A_i) S_j, with the
  // initial state as j = 0, blocked where a document boundary lies between.
  auto init = h0.defined() ? h0.to(dt).unsqueeze(2) : torch::zeros({B, H, 1, P, N}, x.options());
  auto states = torch::cat({init, S}, 2).view({B, H, K + 1, P * N});
  auto Ach = torch::cat({torch::zeros({B, H, 1}, x.options()), Acs.select(-1, Q - 1)}, -1);  // (B, H, K+1)
  auto Dc = segsum(Ach);  // (B, H, K+1, K+1)
  if (seg.defined()) Dc = Dc.masked_fill(send.unsqueeze(-1).ne(send.unsqueeze(-2)).unsqueeze(1), ninf);
  auto carried = torch::matmul(Dc.exp(), states).view({B, H, K + 1, P, N});
  auto final_state = carried.select(2, K);  // (B, H, P, N)
  auto before = carried.slice(2, 0, K);     // state entering each chunk (B, H, K, P, N)

  // 4. The carried state read out inside each chunk: y += exp(cumA_t) c_t^T state, same segment only.
  auto out_decay = Acs.exp();  // (B, H, K, Q)
  if (seg.defined()) out_decay = out_decay * sc.eq(send.slice(1, 0, K).unsqueeze(-1)).unsqueeze(1).to(dt);
  Y = Y + torch::matmul(Cc, before.transpose(-1, -2)) * per_rank(out_decay, R).unsqueeze(-1);

  auto y = Y.view({B, H, K, Q, R, P}).permute({0, 2, 3, 4, 1, 5}).reshape({B, K * Q, R, H, P}).slice(1, 0, T);
  return {y, final_state};
}

std::pair<torch::Tensor, torch::Tensor> mamba3_trapezoid(const torch::Tensor& x_in, const torch::Tensor& la,
                                                         const torch::Tensor& dt_in, const torch::Tensor& lam_in,
                                                         const torch::Tensor& b_in, const torch::Tensor& c_in,
                                                         const torch::Tensor& seg, const torch::Tensor& h0,
                                                         const torch::Tensor& b_prev, const torch::Tensor& x_prev,
                                                         int64_t chunk) {
  device::AutocastOff no_autocast(x_in);
  const auto cdt = scan_dtype(x_in);
  auto x = x_in.to(cdt), dt = dt_in.to(cdt), lam = lam_in.to(cdt), b = b_in.to(cdt), c = c_in.to(cdt);
  const int64_t B = x.size(0), R = x.size(2), H = x.size(3), P = x.size(4), N = b.size(4);
  // B_s x_s reaches h_t (t > s) with weight prod(alpha_{s+1..t}) (gamma_s + mu_{s+1}), mu = (1 - lam) dt:
  // an SSD with inputs scaled by gamma_s + mu_{s+1}.
  auto mu = (1.0 - lam) * dt;  // (B, T, H)
  auto gamma = lam * dt;
  // mu_{t+1}, zero after the last token: the next token's beta term belongs to the next call. Across a
  // document boundary the SSD's segment masks already drop every s -> t > s weight, this one included.
  auto mu_next = torch::cat({mu.slice(1, 1), torch::zeros_like(mu.slice(1, 0, 1))}, 1);
  auto xs = x * (gamma + mu_next).unsqueeze(2).unsqueeze(-1);  // (B, T, R, H, P)
  torch::Tensor h_in = h0.defined() ? h0.to(cdt) : torch::Tensor();
  if (b_prev.defined()) {
    // The carried token's beta term: h_0 = alpha_0 (h_prev + mu_0 b_prev x_prev^T) + gamma_0 ..., so it
    // folds into the initial state.
    auto kv = torch::einsum("brhp,brhn->bhpn", {x_prev.to(cdt), b_prev.to(cdt)});
    auto m0 = mu.select(1, 0).view({B, H, 1, 1});
    h_in = (h_in.defined() ? h_in : torch::zeros({B, H, P, N}, x.options())) + m0 * kv;
  }
  // At s = t the weight is gamma_t alone (mu_{t+1} only reaches h_{t+1}). The spec subtracts
  // (c_t . b_t) mu_{t+1} x_t from the full SSD; leaving s = t out of the SSD and adding
  // (c_t . b_t) gamma_t x_t is the same sum at the same cost, and keeps y_t free of token t+1 to the
  // last bit (the subtraction cancels only to rounding).
  auto [y, h_last] = mamba3_ssd(xs, la, b, c, seg, h_in, chunk, /*diagonal=*/false);
  auto xg = x * gamma.unsqueeze(2).unsqueeze(-1);  // (B, T, R, H, P)
  for (int64_t r2 = 0; r2 < R; ++r2) {
    auto cb = (c * b.select(2, r2).unsqueeze(2)).sum(-1);  // (B, T, R, H): c_{t,r} . b_{t,r2}
    y = y + cb.unsqueeze(-1) * xg.select(2, r2).unsqueeze(2);
  }
  return {y, h_last};
}

// ---- the mixer

struct Mamba3MixerImpl::Proj {
  torch::Tensor z, x;         // (B, T, H, P), scan dtype
  torch::Tensor xr;           // (B, T, R, H, P) x per rank
  torch::Tensor b, c;         // (B, T, R, H, N) normed, biased, rotated
  torch::Tensor dt, la, lam;  // (B, T, H): Delta, Delta A (log decay), trapezoid lambda
  torch::Tensor phi_last;     // (B, H, S) angle after the last token
  torch::ScalarType out_dtype;
};

Mamba3MixerImpl::Mamba3MixerImpl(const Mamba3Options& o) : opt(o) {
  SLM_CHECK(o.headdim > 0 && (o.expand * o.d_model) % o.headdim == 0, "[mamba3] headdim ", o.headdim,
            " does not divide expand x d_model = ", o.expand * o.d_model, "; pick a divisor such as 32 or 64");
  SLM_CHECK(o.mimo_rank >= 1, "[mamba3] mimo_rank must be >= 1, got ", o.mimo_rank);
  SLM_CHECK(o.d_state >= 1 && o.chunk >= 1, "[mamba3] d_state and chunk must be >= 1, got ", o.d_state, " and ",
            o.chunk);
  SLM_CHECK(o.rope_fraction == 0 || o.n_angle() > 0, "[mamba3] rope_fraction ", o.rope_fraction, " with d_state ",
            o.d_state, " rotates no pair; raise d_state or set rope_fraction=0");
  n_head = o.n_head();
  n_angle = o.n_angle();
  const int64_t C = o.d_model, H = n_head, P = o.headdim, N = o.d_state, R = o.mimo_rank;
  // Order: [z, x, B, C, dt, a, trap, angles], as the official module.
  const int64_t E = 2 * H * P + 2 * R * N + 2 * H + (o.trapezoidal ? H : 0) + n_angle;
  in_proj = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(C, E).bias(false)));
  out_proj = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(H * P, C).bias(false)));
  init_linear(in_proj, C);
  torch::NoGradGuard ng;
  out_proj->weight.zero_();  // the block starts as the identity
  // Delta at init log-uniform in [dt_min, dt_max], stored as its softplus inverse.
  auto d0 = (torch::rand({H}, torch::kFloat64) * (std::log(o.dt_max) - std::log(o.dt_min)) + std::log(o.dt_min))
                .exp()
                .clamp_min(o.dt_init_floor);
  dt_bias = register_parameter("dt_bias", (d0 + torch::log(-torch::expm1(-d0))).to(torch::kFloat32));
  D = register_parameter("D", torch::ones({H}));
  if (o.bc_norm) {
    B_norm = register_parameter("B_norm", torch::ones({N}));
    C_norm = register_parameter("C_norm", torch::ones({N}));
    B_bias = register_parameter("B_bias", torch::ones({H, R, N}));
    C_bias = register_parameter("C_bias", torch::ones({H, R, N}));
  }
  if (R > 1) {
    mimo_x = register_parameter("mimo_x", torch::full({H, R, P}, 1.0 / static_cast<double>(R)));
    mimo_z = register_parameter("mimo_z", torch::ones({H, R, P}));
    mimo_o = register_parameter("mimo_o", torch::full({H, R, P}, 1.0 / static_cast<double>(R)));
  }
}

Mamba3MixerImpl::Proj Mamba3MixerImpl::project(const torch::Tensor& u, const torch::Tensor& angle0) {
  const int64_t B = u.size(0), T = u.size(1), H = n_head, P = opt.headdim, N = opt.d_state, R = opt.mimo_rank;
  const int64_t S = n_angle;
  const auto cdt = scan_dtype(u);
  // in_proj under autocast runs in bf16; everything after it in fp32.
  auto zx = (tp ? project_split(u) : in_proj(u)).to(cdt);  // (B, T, E)
  auto parts = zx.split_with_sizes({H * P, H * P, R * N, R * N, H, H, opt.trapezoidal ? H : 0, S}, -1);
  Proj p;
  p.out_dtype = u.scalar_type();
  p.z = parts[0].view({B, T, H, P});
  p.x = parts[1].view({B, T, H, P});
  auto bm = parts[2].view({B, T, R, N});
  auto cm = parts[3].view({B, T, R, N});
  p.dt = F::softplus(parts[4] + dt_bias.to(cdt));              // Delta (B, T, H)
  auto A = -F::softplus(parts[5]).clamp_max(-opt.a_floor);    // data-dependent decay rate, <= -a_floor
  p.la = A * p.dt;
  p.lam = opt.trapezoidal ? torch::sigmoid(parts[6]) : torch::ones_like(p.dt);
  // B, C and the angles are shared by every head; under tensor parallelism each rank's heads give
  // only their share of the gradient, summed over the group where they meet the heads (tp_copy_in).
  if (opt.bc_norm) {  // "QK-norm" on B and C; the per-head bias goes in before the rotation
    bm = tp_copy_in(rms_norm_w(bm, B_norm), tp).unsqueeze(3) + B_bias.permute({1, 0, 2}).to(cdt);  // (B, T, R, H, N)
    cm = tp_copy_in(rms_norm_w(cm, C_norm), tp).unsqueeze(3) + C_bias.permute({1, 0, 2}).to(cdt);
  } else {
    bm = tp_copy_in(bm, tp).unsqueeze(3).expand({B, T, R, H, N});
    cm = tp_copy_in(cm, tp).unsqueeze(3).expand({B, T, R, H, N});
  }
  if (S > 0) {
    // Complex state: Phi_t = Phi_{t-1} + pi tanh(theta_t) Delta_t per head; c_t^T b_s sees Phi_t - Phi_s.
    auto a0 = angle0.defined() && angle0.numel() > 0 ? angle0.to(cdt) : torch::zeros({B, H, S}, zx.options());
    auto dphi = kPi * tp_copy_in(torch::tanh(parts[7]), tp).unsqueeze(2) * p.dt.unsqueeze(-1);  // (B, T, H, S)
    auto phi = a0.unsqueeze(1) + dphi.cumsum(1);
    p.phi_last = phi.select(1, T - 1);
    bm = rotate(bm, phi);
    cm = rotate(cm, phi);
  } else {
    p.phi_last = torch::zeros({B, H, 0}, zx.options());
  }
  p.b = bm;
  p.c = cm;
  p.xr = R > 1 ? p.x.unsqueeze(2) * mimo_x.permute({1, 0, 2}).to(cdt) : p.x.unsqueeze(2);
  return p;
}

torch::Tensor Mamba3MixerImpl::finish(const Proj& p, const torch::Tensor& y_in) {
  // y: (B, T, R, H, P) -> (B, T, C)
  const int64_t B = y_in.size(0), T = y_in.size(1), H = n_head, P = opt.headdim;
  auto y = y_in + D.to(y_in.scalar_type()).view({1, 1, 1, H, 1}) * p.xr;  // D skip
  if (opt.mimo_rank > 1) {
    auto g = F::silu(p.z.unsqueeze(2) * mimo_z.permute({1, 0, 2}).to(y.scalar_type()));
    y = (y * g * mimo_o.permute({1, 0, 2}).to(y.scalar_type())).sum(2);  // (B, T, H, P)
  } else {
    y = y.squeeze(2) * F::silu(p.z);
  }
  return tp_reduce_out(out_proj(y.reshape({B, T, H * P}).to(p.out_dtype)), tp);
}

torch::Tensor Mamba3MixerImpl::run(const torch::Tensor& u, const torch::Tensor& doc_ids, Mamba3State* st) {
  SLM_CHECK(u.dim() == 3 && u.size(2) == opt.d_model, "[mamba3] expects x of shape (B, T, ", opt.d_model, "), got ",
            u.sizes());
  SLM_CHECK(!doc_ids.defined() || (doc_ids.size(0) == u.size(0) && doc_ids.size(1) == u.size(1)),
            "[mamba3] doc_ids ", doc_ids.defined() ? doc_ids.sizes() : c10::IntArrayRef{}, " do not match x ",
            u.sizes());
  const bool carry = st && st->defined();
  auto seg = mamba3_segments(doc_ids);
  auto p = project(u, carry ? st->angle : torch::Tensor());
  torch::Tensor x_prev;
  if (carry) {
    auto v = st->v.unsqueeze(1).to(p.x.scalar_type());  // (B, 1, H, P)
    x_prev = opt.mimo_rank > 1 ? v * mimo_x.permute({1, 0, 2}).to(v.scalar_type()) : v;
  }
  auto [y, h] = mamba3_trapezoid(p.xr, p.la, p.dt, p.lam, p.b, p.c, seg, carry ? st->ssm : torch::Tensor(),
                                 carry ? st->k : torch::Tensor(), x_prev, opt.chunk);
  if (st) {
    const int64_t T = u.size(1);
    st->ssm = h;
    st->k = p.b.select(1, T - 1).contiguous();  // (B, R, H, N)
    st->v = p.x.select(1, T - 1).contiguous();  // (B, H, P)
    st->angle = torch::remainder(p.phi_last, 2 * kPi);
  }
  return finish(p, y);
}

namespace {
// Generation: the layer's carried state between calls (model/module.h).
struct Mamba3Cache : LayerCache {
  Mamba3State state;
  std::shared_ptr<LayerCache> clone() const override {  // a running state: deep copy
    auto c = std::make_shared<Mamba3Cache>();
    auto cp = [](const torch::Tensor& t) { return t.defined() ? t.clone() : t; };
    c->state = {cp(state.angle), cp(state.ssm), cp(state.k), cp(state.v)};
    return c;
  }
};
}  // namespace

torch::Tensor Mamba3MixerImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  if (ctx.caches) {  // one token: the plain recurrence; a prompt: the chunked scan, state carried on
    Mamba3State& st = ctx.cache<Mamba3Cache>("mamba3").state;
    if (x.size(1) == 1 && st.defined()) return forward_step(x, st);
    return run(x, torch::Tensor(), &st);
  }
  return run(x, opt.doc_mask ? ctx.doc_ids : torch::Tensor(), nullptr);
}

torch::Tensor Mamba3MixerImpl::forward_with_state(const torch::Tensor& x, const torch::Tensor& doc_ids,
                                                  Mamba3State& state) {
  return run(x, opt.doc_mask ? doc_ids : torch::Tensor(), &state);
}

torch::Tensor Mamba3MixerImpl::forward_step(const torch::Tensor& u, Mamba3State& st) {
  SLM_CHECK(u.dim() == 3 && u.size(1) == 1 && u.size(2) == opt.d_model,
            "[mamba3] forward_step takes one token of shape (B, 1, ", opt.d_model, "), got ", u.sizes());
  const int64_t B = u.size(0), H = n_head, P = opt.headdim, N = opt.d_state, R = opt.mimo_rank;
  auto p = project(u, st.defined() ? st.angle : torch::Tensor());
  device::AutocastOff no_autocast(u);
  const auto cdt = p.x.scalar_type();
  if (!st.defined()) {
    auto o = p.x.options();
    st.ssm = torch::zeros({B, H, P, N}, o);
    st.k = torch::zeros({B, R, H, N}, o);
    st.v = torch::zeros({B, H, P}, o);
  }
  // h = alpha h + beta sum_r x_{t-1,r} b_{t-1,r}^T + gamma sum_r x_{t,r} b_{t,r}^T, kept as (P, N).
  auto dt = p.dt.select(1, 0), lam = p.lam.select(1, 0);  // (B, H)
  auto alpha = p.la.select(1, 0).exp();
  auto beta = (1.0 - lam) * dt * alpha, gamma = lam * dt;
  auto v = st.v.to(cdt).unsqueeze(1);  // (B, 1, H, P)
  auto x_prev = R > 1 ? v * mimo_x.permute({1, 0, 2}).to(cdt) : v;
  auto prev = torch::einsum("brhp,brhn->bhpn", {x_prev, st.k.to(cdt)});
  auto cur = torch::einsum("brhp,brhn->bhpn", {p.xr.select(1, 0), p.b.select(1, 0)});
  auto bc = [](const torch::Tensor& t) { return t.view({t.size(0), t.size(1), 1, 1}); };
  auto h = bc(alpha) * st.ssm.to(cdt) + bc(beta) * prev + bc(gamma) * cur;
  auto y = torch::einsum("bhpn,brhn->brhp", {h, p.c.select(1, 0)}).unsqueeze(1);  // (B, 1, R, H, P)
  st.ssm = h;
  st.k = p.b.select(1, 0).contiguous();
  st.v = p.x.select(1, 0).contiguous();
  st.angle = torch::remainder(p.phi_last, 2 * kPi);
  return finish(p, y);
}

double Mamba3MixerImpl::flops_per_token(int64_t T) const {
  // Matrix products of the chunked scan, as run (padded chunks and both triangles included), x 6 for
  // forward + backward; elementwise work (segsum, exp, norms) is not counted, as for attention.
  const double H = static_cast<double>(n_head), P = static_cast<double>(opt.headdim);
  const double N = static_cast<double>(opt.d_state), R = static_cast<double>(opt.mimo_rank);
  const int64_t Qi = std::min(opt.chunk, std::max<int64_t>(T, 1));
  const double Q = static_cast<double>(Qi), K = static_cast<double>((T + Qi - 1) / Qi), Tt = static_cast<double>(T);
  const double per_padded_token = Q * R * R * (N + P)  // c b^T and its product with x, within a chunk
                                  + 2.0 * R * P * N;    // chunk states and the carried state read out
  const double per_seq = (K + 1) * (K + 1) * P * N;     // the inter-chunk matrix recurrence
  const double per_token = R * R * (N + P);             // the trapezoid's s = t correction
  const double macs = H * (K * Q * per_padded_token + per_seq + Tt * per_token) / Tt;
  return ComponentImpl::flops_per_token(T) + 6.0 * macs;
}

// The rows of in_proj, [z, x, B, C, dt, a, trap, angles], that rank r of g holds: its heads' rows of
// every per-head part and all rows of the shared ones, in the same order.
namespace {
std::vector<int64_t> in_proj_rows(const Mamba3Options& o, int64_t S, int rank, int size) {
  const int64_t H = o.n_head(), P = o.headdim, RN = o.mimo_rank * o.d_state, Hr = H / size, h0 = rank * Hr;
  std::vector<int64_t> rows;
  int64_t at = 0;
  auto heads = [&](int64_t width) {  // a per-head part of H x width rows
    for (int64_t i = h0 * width; i < (h0 + Hr) * width; ++i) rows.push_back(at + i);
    at += H * width;
  };
  auto shared = [&](int64_t n) {
    for (int64_t i = 0; i < n; ++i) rows.push_back(at + i);
    at += n;
  };
  heads(P);       // z
  heads(P);       // x
  shared(RN);     // B
  shared(RN);     // C
  heads(1);       // dt
  heads(1);       // a
  if (o.trapezoidal) heads(1);
  shared(S);      // angles
  return rows;
}
}  // namespace

std::string Mamba3MixerImpl::shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) {
  if (n_head % g->size != 0)
    return std::to_string(n_head) + " SSM heads (expand x d_model / headdim) do not divide by it; use a tp that "
           "divides them or a smaller mamba3.headdim";
  torch::NoGradGuard ng;
  TpSplit rows(0);
  for (int r = 0; r < g->size; ++r) rows.rows.push_back(in_proj_rows(opt, n_angle, r, g->size));
  in_proj->weight.set_data(tp_shard(in_proj->weight.detach(), rows, *g));
  splits["in_proj.weight"] = rows;
  out_proj->weight.set_data(tp_shard(out_proj->weight.detach(), 1, *g));
  splits["out_proj.weight"] = 1;
  auto by_head = [&](torch::Tensor& t, const std::string& name) {
    if (!t.defined()) return;
    t.set_data(tp_shard(t.detach(), 0, *g));
    splits[name] = 0;
  };
  by_head(dt_bias, "dt_bias");
  by_head(D, "D");
  by_head(B_bias, "B_bias");
  by_head(C_bias, "C_bias");
  by_head(mimo_x, "mimo_x");
  by_head(mimo_z, "mimo_z");
  by_head(mimo_o, "mimo_o");
  n_head /= g->size;
  tp = g;
  return "";
}

// in_proj under tensor parallelism: the per-head rows read the input through tp_copy_in (their input
// gradients are partial, summed over the group); the shared rows (B, C, angles) read it as it is,
// their output gradients being summed where the heads use them (project). Output in the local order.
torch::Tensor Mamba3MixerImpl::project_split(const torch::Tensor& u) {
  const int64_t Hr = n_head, P = opt.headdim, RN = opt.mimo_rank * opt.d_state, S = n_angle;
  const int64_t tail = 2 * Hr + (opt.trapezoidal ? Hr : 0);
  const auto& w = in_proj->weight;  // [z x | B C | dt a trap | angles]
  auto parts = w.split_with_sizes({2 * Hr * P, 2 * RN, tail, S}, 0);
  auto ui = tp_copy_in(u, tp);
  return torch::cat({F::linear(ui, parts[0]), F::linear(u, parts[1]), F::linear(ui, parts[2]), F::linear(u, parts[3])},
                    -1);
}

std::string Mamba3MixerImpl::describe() const {
  std::ostringstream os;
  os << "mamba3 (H=" << n_head << ", P=" << opt.headdim << ", N=" << opt.d_state << ", chunk " << opt.chunk << ", "
     << (opt.trapezoidal ? "trapezoidal" : "euler");
  if (opt.bc_norm) os << ", bc-norm";
  if (n_angle > 0) os << ", rope " << opt.rope_fraction;
  if (opt.mimo_rank > 1) os << ", mimo " << opt.mimo_rank;
  if (opt.doc_mask) os << ", doc-reset";
  os << ")";
  return os.str();
}

void apply_mamba3(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  const Mamba3Options o = Mamba3Options::from(args, cfg);
  int64_t n = 0;
  for (auto& lp : plan.layers) {
    if (lp.kind != 'M') continue;
    lp.mixer = [o] { return Mixer(std::make_shared<Mamba3MixerImpl>(o)); };
    lp.modules.push_back("mamba3");
    ++n;
  }
  SLM_CHECK(n > 0, "[mamba3] the layer plan has no M layer (layer_pattern '", cfg.layer_pattern, "', depth ",
            cfg.n_layer, "); the trainer sets the pattern from mamba3.pattern='", args.str("pattern"), "'");
}

}  // namespace slm
