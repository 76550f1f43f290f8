#include "model/ring.h"

#include <cmath>
#include <limits>

#include "common/error.h"

namespace slm {

torch::Tensor zigzag_positions(int64_t T, int rank, int size) {
  SLM_CHECK(size >= 1 && rank >= 0 && rank < size, "[ring] rank ", rank, " is outside a ring of ", size);
  SLM_CHECK(T % (2 * size) == 0, "[ring] a sequence of ", T, " tokens does not split into 2 x ", size,
            " equal chunks; use a context divisible by ", 2 * size);
  const int64_t c = T / (2 * size);
  auto a = torch::arange(rank * c, (rank + 1) * c, torch::kInt64);
  auto b = torch::arange((2 * size - 1 - rank) * c, (2 * size - rank) * c, torch::kInt64);
  return torch::cat({a, b});
}

torch::Tensor zigzag_shard(const torch::Tensor& x, int64_t dim, int rank, int size) {
  return x.index_select(dim, zigzag_positions(x.size(dim), rank, size).to(x.device()));
}

torch::Tensor ring_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& pos, const torch::Tensor& doc, const RingGroup& g) {
  SLM_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(), "[ring] q, k, v must be (B, H, Tl, D) alike");
  const int64_t B = q.size(0), Tl = q.size(2), D = q.size(3);
  SLM_CHECK(pos.dim() == 1 && pos.size(0) == Tl, "[ring] positions must be (Tl)");
  SLM_CHECK(!doc.defined() || (doc.dim() == 2 && doc.size(0) == B && doc.size(1) == Tl), "[ring] doc ids must be (B, Tl)");
  SLM_CHECK(g.size == 1 || g.pass, "[ring] the group has no pass function");
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const auto dev = q.device();
  // What travels: keys and values stacked, and (1 + B, Tl) int64 positions then document ids.
  torch::Tensor kv = torch::stack({k, v}).contiguous();
  torch::Tensor meta = torch::cat({pos.to(dev, torch::kInt64).view({1, Tl}),
                                   doc.defined() ? doc.to(torch::kInt64) : torch::zeros({B, Tl}, pos.options().device(dev))})
                           .contiguous();
  const auto qpos = meta.select(0, 0);             // (Tl)
  const auto qdoc = meta.slice(0, 1);              // (B, Tl)
  const auto qmax = qpos.max().item<int64_t>();
  const float ninf = -std::numeric_limits<float>::infinity();
  auto m = torch::full({B, q.size(1), Tl}, ninf, q.options().dtype(torch::kFloat32));  // running max
  auto l = torch::zeros_like(m);                                                       // running sum
  auto acc = torch::zeros(q.sizes(), q.options().dtype(torch::kFloat32));              // sum of p v
  for (int step = 0; step < g.size; ++step) {
    if (step > 0) {  // the block of rank - step arrives
      kv = g.pass(kv);
      meta = g.pass(meta);
    }
    const auto kpos = meta.select(0, 0), kdoc = meta.slice(0, 1);
    if (kpos.min().item<int64_t>() > qmax) continue;  // entirely in this rank's future (zigzag: half the blocks' halves)
    auto allowed = kpos.view({1, 1, Tl}).le(qpos.view({1, Tl, 1}));  // (1, Tl q, Tl k)
    if (doc.defined()) allowed = allowed.logical_and(kdoc.unsqueeze(1).eq(qdoc.unsqueeze(2)));  // (B, Tl, Tl)
    auto s = torch::matmul(q, kv[0].transpose(-2, -1)).to(torch::kFloat32).mul_(scale);  // (B, H, Tl, Tl)
    s.masked_fill_(allowed.unsqueeze(1).logical_not(), ninf);
    auto m_new = torch::maximum(m, s.amax(-1));
    // Rows that have seen no key yet keep -inf: exponentiate against 0 there (every term is exp(-inf) = 0).
    auto base = torch::where(torch::isinf(m_new), torch::zeros_like(m_new), m_new);
    auto alpha = torch::exp(m - base);  // rescales what was accumulated against the old max
    auto p = torch::exp(s - base.unsqueeze(-1));
    l = l * alpha + p.sum(-1);
    acc = acc * alpha.unsqueeze(-1) + torch::matmul(p.to(v.scalar_type()), kv[1]).to(torch::kFloat32);
    m = m_new;
  }
  // Between steps every rank passed its blocks size - 1 times, so all ranks leave together.
  return (acc / l.unsqueeze(-1)).to(q.scalar_type());
}

}  // namespace slm
