#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"

namespace slm {

namespace {


// Picks the next token from fp32 logits (V): argmax, or a draw from the tempered top-k softmax
// with our own generator, so a seed gives the same text on every platform.
int32_t pick(const torch::Tensor& logits, const GenerateOptions& opt, SplitMix64& rng) {
  auto l = logits.to(torch::kCPU, torch::kFloat64).contiguous();  // read on the host, wherever the model runs
  const double* z = l.data_ptr<double>();
  const int64_t V = l.numel();
  if (opt.temperature <= 0) return static_cast<int32_t>(std::max_element(z, z + V) - z);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = opt.top_k > 0 ? std::min(opt.top_k, V) : V;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  std::vector<double> p(k);
  for (int64_t i = 0; i < k; ++i) p[i] = std::exp((z[ids[i]] - z[ids[0]]) / opt.temperature);
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  double u = rng.unit() * total;
  for (int64_t i = 0; i < k; ++i) {
    if (u < p[i]) return ids[i];
    u -= p[i];
  }
  return ids[k - 1];
}

}  // namespace

std::vector<int32_t> generate(GPTImpl& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt) {
  SLM_CHECK(!prompt.empty(), "[generate] the prompt is empty; start it with BOS at least");
  SLM_CHECK(opt.max_tokens >= 0, "[generate] max_tokens must be >= 0");
  SLM_CHECK(static_cast<int64_t>(prompt.size()) + opt.max_tokens <= model.cfg.context, "[generate] prompt (",
            prompt.size(), " tokens) + max_tokens (", opt.max_tokens, ") exceeds the model's context ", model.cfg.context,
            "; shorten them, or evaluate at a longer context with YaRN");
  torch::NoGradGuard ng;
  const bool was_training = model.is_training();
  model.eval();
  const auto dev = model.lm_head->weight.device();
  auto ids_tensor = [&](const std::vector<int32_t>& ids, size_t from) {
    std::vector<int64_t> v(ids.begin() + from, ids.end());
    return torch::tensor(v, torch::kInt64).view({1, -1}).to(dev);
  };
  std::vector<int32_t> seq = prompt, out;
  SplitMix64 rng{opt.seed ^ 0x2545f4914f6cdd1dull};
  Caches caches;
  size_t done = 0;  // tokens already in the caches
  while (static_cast<int64_t>(out.size()) < opt.max_tokens) {
    Ctx ctx;
    ctx.step = model.step;
    if (opt.use_cache) {
      ctx.caches = &caches;
      ctx.pos = static_cast<int64_t>(done);
      ctx.idx = ids_tensor(seq, done);
      done = seq.size();
    } else {
      ctx.idx = ids_tensor(seq, 0);
    }
    auto h = model.hidden(ctx);
    auto logits = model.logits(h.slice(1, h.size(1) - 1)).view({-1});
    const int32_t next = pick(logits, opt, rng);
    if (std::find(opt.stop.begin(), opt.stop.end(), next) != opt.stop.end()) break;
    out.push_back(next);
    seq.push_back(next);
  }
  if (was_training) model.train();
  return out;
}

}  // namespace slm
