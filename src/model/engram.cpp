#include "model/engram.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>

#include "common/error.h"
#include "common/rng.h"
#include "model/gpt.h"

namespace slm {

namespace catalog {
const ModuleSpec& spec_engram();  // catalog/modules/engram.cpp: the init guard lives there
}

namespace {

bool is_prime(int64_t n) {
  if (n < 2) return false;
  if (n % 2 == 0) return n == 2;
  for (int64_t d = 3; d * d <= n; d += 2)
    if (n % d == 0) return false;
  return true;
}


// Segment ids (B, T): 0 at t = 0, +1 wherever the document id changes. Comparing segments (not raw
// ids) keeps a repeated document id after another document from joining the earlier one.
torch::Tensor segments(const torch::Tensor& doc_ids) {
  auto d = doc_ids.to(torch::kInt64);
  auto change = d.slice(1, 1).ne(d.slice(1, 0, -1)).to(torch::kInt64);  // (B, T-1)
  return torch::cat({torch::zeros({d.size(0), 1}, d.options()), change.cumsum(1)}, 1);
}

// Views a per-token tensor, (B, T, C) or (B, T), with size-1 stream dims after T until it has `dim`
// dims, so it broadcasts against x (B, T, n, C): (B, T, 1, C), or (B, T, 1, 1) for (B, T).
torch::Tensor per_stream(const torch::Tensor& t, int64_t dim) {
  auto s = t.sizes().vec();
  while (static_cast<int64_t>(s.size()) < dim) s.insert(s.begin() + 2, 1);
  return t.view(s);
}

// The segment of the token `back` positions before each token equals its own: (B, T) bool. Positions
// before the start compare with the first token's segment: their inputs are pads or carried state.
torch::Tensor same_segment(const torch::Tensor& seg, int64_t back) {
  const int64_t B = seg.size(0), T = seg.size(1);
  auto ext = torch::cat({seg.slice(1, 0, 1).expand({B, back}), seg}, 1);  // (B, back + T)
  return ext.slice(1, 0, T).eq(seg);
}

// nanochat's init for input projections: uniform with the std of N(0, 1/fan_in).
void init_linear(torch::nn::Linear& l, int64_t fan_in) {
  const double bound = std::sqrt(3.0) / std::sqrt(static_cast<double>(fan_in));
  torch::NoGradGuard ng;
  l->weight.uniform_(-bound, bound);
}

// Generation: the layer's carried state between calls (model/module.h).
struct EngramCache : LayerCache {
  EngramState state;
  std::shared_ptr<LayerCache> clone() const override {  // a running state: deep copy
    auto c = std::make_shared<EngramCache>();
    c->state.ids = state.ids.defined() ? state.ids.clone() : state.ids;
    c->state.conv = state.conv.defined() ? state.conv.clone() : state.conv;
    return c;
  }
};

}  // namespace

// ---- options and the hash's constants

int64_t EngramOptions::max_order() const {
  int64_t n = 0;
  for (int64_t o : orders) n = std::max(n, o);
  return n;
}

int64_t EngramOptions::head_dim() const {
  if (dim > 0) return dim;
  const int64_t n = heads * static_cast<int64_t>(orders.size());
  return std::max<int64_t>(1, d_model / std::max<int64_t>(1, n));
}

int64_t engram_compressed_vocab(int64_t vocab) {
  int64_t n = std::max<int64_t>(2, vocab * 77 / 100);  // the paper's 23% reduction
  while (!is_prime(n)) --n;
  return n;
}

std::vector<int64_t> engram_primes(int64_t base, int64_t count) {
  std::vector<int64_t> out;
  for (int64_t n = std::max<int64_t>(base, 2); static_cast<int64_t>(out.size()) < count; ++n)
    if (is_prime(n)) out.push_back(n);
  return out;
}

std::vector<int64_t> engram_multipliers(int64_t layer, int64_t n, int64_t compressed_vocab) {
  // Bounded so that id x m (ids up to the pad, vc) stays below 2^63: no overflow, non-negative mixes.
  const uint64_t bound = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) /
                         static_cast<uint64_t>(compressed_vocab + 1);
  uint64_t state = 10007ull * static_cast<uint64_t>(layer);  // the demo's seed 0 + 10007 x layer
  std::vector<int64_t> m;
  for (int64_t k = 0; k < n; ++k) m.push_back(static_cast<int64_t>((splitmix64(state) % bound) | 1ull));
  return m;
}

// ---- the branch

EngramImpl::EngramImpl(const EngramOptions& o) : opt(o) {
  SLM_CHECK(!o.orders.empty(), "[engram] no n-gram orders; use orders=2,3");
  for (int64_t n : o.orders) SLM_CHECK(n >= 1, "[engram] n-gram order ", n, " must be >= 1; use orders=2,3");
  SLM_CHECK(o.heads >= 1 && o.d_model >= 1 && o.vocab >= 1 && o.conv >= 0, "[engram] heads (", o.heads,
            "), d_model (", o.d_model, ") and vocab (", o.vocab, ") must be >= 1 and conv (", o.conv, ") >= 0");
  const int64_t OK = static_cast<int64_t>(o.orders.size()) * o.heads;
  primes = o.primes.empty() ? engram_primes(o.table_size, OK) : o.primes;
  SLM_CHECK(static_cast<int64_t>(primes.size()) == OK, "[engram] ", primes.size(), " table sizes for ",
            o.orders.size(), " orders x ", o.heads, " heads; give one per (order, head)");
  int64_t rows = 0;
  for (int64_t p : primes) {
    offsets.push_back(rows);
    rows += p;
  }
  vc = engram_compressed_vocab(o.vocab);
  dilation = o.max_order();
  mult = engram_multipliers(o.layer, o.max_order(), vc);
  const int64_t C = o.d_model, D = o.head_dim(), E = OK * D;
  ngram_table = register_parameter("ngram_table", torch::randn({rows, D}));  // the demo's default N(0, 1)
  w_k = register_module("w_k", torch::nn::Linear(torch::nn::LinearOptions(E, C).bias(false)));
  w_v = register_module("w_v", torch::nn::Linear(torch::nn::LinearOptions(E, C).bias(false)));
  init_linear(w_k, E);
  torch::NoGradGuard ng;
  w_v->weight.zero_();  // the model starts as the baseline
  // Zero too, so the conv path grows from zero once v does: rms(g v) is unit-scale however small v is,
  // and a random conv would make the branch jump from 0 to O(1) after the first step.
  if (o.conv > 0) conv_w = register_parameter("conv_w", torch::zeros({o.conv, C}));
}

torch::Tensor EngramImpl::compress(const torch::Tensor& idx) const { return idx.to(torch::kInt64).remainder(vc); }

torch::Tensor EngramImpl::hash(const torch::Tensor& ids, const torch::Tensor& seg, const torch::Tensor& prev) const {
  const int64_t T = ids.size(1), M = opt.max_order() - 1;
  auto ext = torch::cat({prev.to(torch::kInt64), ids}, 1);  // (B, M + T)
  // x^(k) = the id k tokens back, the pad where that token is in another document.
  std::vector<torch::Tensor> back;
  for (int64_t k = 0; k <= M; ++k) {
    auto s = ext.slice(1, M - k, M - k + T);  // (B, T)
    if (seg.defined() && k > 0) s = s.masked_fill(same_segment(seg, k).logical_not(), vc);
    back.push_back(s);
  }
  std::vector<torch::Tensor> rows;  // O K of (B, T), order-major
  for (size_t o = 0; o < opt.orders.size(); ++o) {
    const int64_t n = opt.orders[o];
    auto mix = back[0] * mult[0];
    for (int64_t k = 1; k < n; ++k) mix = torch::bitwise_xor(mix, back[k] * mult[k]);
    for (int64_t j = 0; j < opt.heads; ++j) {
      const size_t h = o * opt.heads + j;
      rows.push_back(mix.remainder(primes[h]) + offsets[h]);
    }
  }
  return torch::stack(rows, -1);  // (B, T, O K)
}

torch::Tensor EngramImpl::gate(const torch::Tensor& x, const torch::Tensor& e) {
  // Both sides normalized: the gate reads direction, not the residual's growing scale. fp32: a bf16
  // dot product of two unit-RMS vectors of C terms loses the small logits.
  auto k = rms_norm(w_k(e).to(torch::kFloat32));  // (B, T, C)
  auto q = rms_norm(x.to(torch::kFloat32));       // (B, T, [n,] C)
  auto s = (q * per_stream(k, q.dim())).sum(-1, true) / std::sqrt(static_cast<double>(opt.d_model));
  return torch::sigmoid(s);  // (B, T, [n,] 1)
}

torch::Tensor EngramImpl::output(const torch::Tensor& g, const torch::Tensor& v, const torch::Tensor& seg,
                                 EngramState* st) {
  auto vt = g * per_stream(v.to(torch::kFloat32), g.dim());  // (B, T, [n,] C)
  if (opt.conv == 0) return vt;
  const int64_t T = vt.size(1), R = (opt.conv - 1) * dilation;
  auto u = rms_norm(vt);
  auto pad_sizes = u.sizes().vec();
  pad_sizes[1] = R;
  torch::Tensor prev = st && st->conv.defined() ? st->conv.to(u.scalar_type()) : torch::zeros(pad_sizes, u.options());
  auto upad = torch::cat({prev, u}, 1);  // (B, R + T, [n,] C); zeros before the start contribute nothing
  auto y = torch::zeros_like(u);
  for (int64_t j = 0; j < opt.conv; ++j) {  // taps, not tokens: the loop is kernel-long
    auto tap = upad.slice(1, R - j * dilation, R - j * dilation + T);
    if (seg.defined() && j > 0) {  // a tap reaching into the previous document reads zero
      auto keep = per_stream(same_segment(seg, j * dilation), u.dim());  // (B, T, [1,] 1)
      tap = tap.masked_fill(keep.logical_not(), 0.0);
    }
    y = y + tap * conv_w[j].to(u.scalar_type());
  }
  if (st) st->conv = upad.slice(1, T, T + R);
  return vt + torch::silu(y);
}

torch::Tensor EngramImpl::run(const torch::Tensor& x, const torch::Tensor& idx, const torch::Tensor& doc_ids,
                              EngramState* st) {
  SLM_CHECK(x.dim() >= 3 && x.size(-1) == opt.d_model, "[engram] expects x of shape (B, T, ", opt.d_model,
            ") or (B, T, n, ", opt.d_model, "), got ", x.sizes());
  SLM_CHECK(idx.defined() && idx.dim() == 2 && idx.size(0) == x.size(0) && idx.size(1) == x.size(1),
            "[engram] needs the token ids (B, T) of x ", x.sizes(), " in ctx.idx, got ",
            idx.defined() ? idx.sizes() : c10::IntArrayRef{});
  SLM_CHECK(!doc_ids.defined() || doc_ids.sizes() == idx.sizes(), "[engram] doc_ids ",
            doc_ids.defined() ? doc_ids.sizes() : c10::IntArrayRef{}, " do not match the ids ", idx.sizes());
  const int64_t B = x.size(0), T = x.size(1), M = opt.max_order() - 1;
  auto seg = opt.doc_mask && doc_ids.defined() ? segments(doc_ids) : torch::Tensor();
  auto ids = compress(idx);  // (B, T)
  auto prev = st && st->defined() ? st->ids : torch::full({B, M}, vc, ids.options());
  auto rows = hash(ids, seg, prev);  // (B, T, O K)
  // embedding, not index_select: its CUDA backward sorts the rows instead of adding atomically (deterministic)
  auto e = torch::embedding(ngram_table, rows).view({B, T, -1});  // (B, T, E)
  if (st) st->ids = torch::cat({prev, ids}, 1).slice(1, T, T + M);
  auto y = output(gate(x, e), w_v(e), seg, st);
  return y.to(x.scalar_type());
}

torch::Tensor EngramImpl::forward(const torch::Tensor& x, Ctx& ctx) {
  if (ctx.caches) return run(x, ctx.idx, torch::Tensor(), &ctx.cache<EngramCache>("engram").state);
  return run(x, ctx.idx, ctx.doc_ids, nullptr);
}

double EngramImpl::flops_per_token(int64_t) const {
  const double C = static_cast<double>(opt.d_model);
  const double E = static_cast<double>(primes.size() * opt.head_dim());
  return 6.0 * (2.0 * E * C + static_cast<double>(opt.conv) * C + C);
}

std::string EngramImpl::describe() const {
  std::ostringstream os;
  os << "engram (orders ";
  for (size_t i = 0; i < opt.orders.size(); ++i) os << (i ? "," : "") << opt.orders[i];
  os << " x " << opt.heads << " heads, tables " << primes.front() << ".." << primes.back() << ", dim "
     << opt.head_dim() << ", vocab " << opt.vocab << "->" << vc;
  if (opt.conv > 0) os << ", conv " << opt.conv << " dil " << dilation;
  if (opt.doc_mask) os << ", doc-reset";
  os << ")";
  return os.str();
}

// ---- the plan

EngramOptions EngramOptions::from(const catalog::ModuleArgs& args, const ModelConfig& cfg) {
  EngramOptions o;
  o.d_model = cfg.d_model;
  o.vocab = cfg.vocab;
  o.doc_mask = cfg.doc_mask;
  o.orders = args.list("orders");
  o.heads = args.i64("heads");
  o.table_size = args.i64("table_size");
  o.dim = args.i64("dim");
  o.conv = args.i64("conv");
  return o;
}

void apply_engram(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan) {
  // The init guard again, over the plan as built (the catalog ran it on the plan's view already;
  // this catches a ModelConfig assembled by hand). Same rule, same message.
  const catalog::ModelView v = check_module(catalog::spec_engram(), args, cfg, plan);

  const EngramOptions base = EngramOptions::from(args, cfg);
  const auto& layers = args.list("layers");
  const int64_t per = static_cast<int64_t>(base.orders.size()) * base.heads;
  // No prime is reused across heads, orders or layers (the demo's rule): layer i of the list takes
  // primes [i per, (i + 1) per) of one increasing sequence.
  const auto all_primes = engram_primes(base.table_size, per * static_cast<int64_t>(layers.size()));
  for (size_t i = 0; i < layers.size(); ++i) {
    EngramOptions o = base;
    o.layer = layers[i];
    o.primes.assign(all_primes.begin() + i * per, all_primes.begin() + (i + 1) * per);
    auto& lp = plan.layers[layers[i]];
    lp.branches.push_back([o] { return Branch(std::make_shared<EngramImpl>(o)); });
    lp.modules.push_back("engram");
  }
}

}  // namespace slm
