#include "model/dp.h"

#include "common/error.h"

namespace slm {

void dp_sum(const TpGroupPtr& g, torch::Tensor& t) {
  if (!dp_active(g)) return;
  SLM_CHECK(t.is_contiguous(), "[dp] dp_sum needs a contiguous tensor");
  g->all_reduce_sum(t);
}

torch::Tensor dp_gather_rows(const TpGroupPtr& g, const torch::Tensor& t) {
  if (!dp_active(g)) return t;
  SLM_CHECK(t.dim() >= 1, "[dp] dp_gather_rows needs at least one dim, got a scalar");
  // The row counts first, then every rank's rows padded to the largest count (all_gather wants one shape).
  auto n = g->all_gather(torch::full({1}, t.size(0), torch::kInt64));
  int64_t most = 0;
  for (auto& c : n) most = std::max(most, c.item<int64_t>());
  auto shape = t.sizes().vec();
  shape[0] = most;
  auto padded = torch::zeros(shape, t.options());
  padded.slice(0, 0, t.size(0)).copy_(t);
  auto all = g->all_gather(padded);
  std::vector<torch::Tensor> rows;
  for (size_t r = 0; r < all.size(); ++r) rows.push_back(all[r].slice(0, 0, n[r].item<int64_t>()));
  return torch::cat(rows);
}

}  // namespace slm
