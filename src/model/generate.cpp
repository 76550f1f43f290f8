#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"

namespace slm {

torch::Tensor ids_tensor(const std::vector<int32_t>& ids, torch::Device dev) {
  std::vector<int64_t> v(ids.begin(), ids.end());
  return torch::tensor(v, torch::kInt64).view({1, -1}).to(dev);
}

// Greedy's pick for each row of fp32 logits (T, V): the first maximum, as plain decoding's pick() takes it.
std::vector<int32_t> argmax_rows(const torch::Tensor& logits) {
  auto l = logits.to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t T = l.size(0), V = l.size(1);
  const double* z = l.data_ptr<double>();
  std::vector<int32_t> r(T);
  for (int64_t t = 0; t < T; ++t) r[t] = static_cast<int32_t>(std::max_element(z + t * V, z + (t + 1) * V) - (z + t * V));
  return r;
}

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

Caches clone_caches(const Caches& c, bool& ok) {
  Caches out(c.size());
  for (size_t l = 0; l < c.size(); ++l)
    for (const auto& kv : c[l]) {
      auto copy = kv.second ? kv.second->clone() : nullptr;
      if (!copy) ok = false;
      out[l][kv.first] = copy;
    }
  return out;
}

// Jacobi decoding (see generate.h). `seq` holds the prompt; returns the new tokens.
std::vector<int32_t> jacobi(GPTImpl& model, std::vector<int32_t> seq, const GenerateOptions& opt, GenerateStats& st) {
  const auto dev = model.lm_head->weight.device();
  std::vector<int32_t> out;
  Caches caches;
  bool use_cache = opt.use_cache;
  int64_t cached = 0;  // positions in the caches: always seq.size() - 1 between iterations
  auto forward = [&](const std::vector<int32_t>& ids, int64_t pos, bool with_cache) {
    Ctx ctx;
    ctx.step = model.step;
    ctx.idx = ids_tensor(ids, dev);
    if (with_cache) {
      ctx.caches = &caches;
      ctx.pos = pos;
    }
    ++st.forwards;
    return model.hidden(ctx);
  };
  if (use_cache && seq.size() > 1) {  // prefill: everything but the last committed token
    forward(std::vector<int32_t>(seq.begin(), seq.end() - 1), 0, true);
    cached = static_cast<int64_t>(seq.size()) - 1;
  }
  std::vector<int32_t> draft;  // guesses for the positions after seq's next one
  while (static_cast<int64_t>(out.size()) < opt.max_tokens) {
    const int64_t n = std::min<int64_t>(opt.block, opt.max_tokens - static_cast<int64_t>(out.size()));
    draft.resize(n - 1, draft.empty() ? seq.back() : draft.back());  // new positions: repeat the last guess
    std::vector<int32_t> in = {seq.back()};
    in.insert(in.end(), draft.begin(), draft.end());  // n inputs -> n predictions
    Caches saved;
    bool can_restore = true;
    if (use_cache) saved = clone_caches(caches, can_restore);
    torch::Tensor h;
    if (use_cache) {
      h = forward(in, cached, true);
    } else {
      std::vector<int32_t> all(seq.begin(), seq.end() - 1);
      all.insert(all.end(), in.begin(), in.end());
      h = forward(all, 0, false).slice(1, -n);
    }
    ++st.iterations;
    const auto pred = argmax_rows(model.logits(h).view({n, -1}));
    int64_t j = 1;  // predictions 1..j are greedy's: drafts 1..j-1 equalled them
    while (j < n && draft[j - 1] == pred[j - 1]) ++j;
    int64_t keep = j;  // positions of `in` the caches keep: the last committed token and drafts 1..j-1
    bool stopped = false;
    for (int64_t i = 0; i < j; ++i)
      if (std::find(opt.stop.begin(), opt.stop.end(), pred[i]) != opt.stop.end()) {
        j = i;
        stopped = true;
        break;
      }
    if (use_cache && !stopped) {
      bool per_position = true;
      for (const auto& layer : caches)
        for (const auto& kv : layer) per_position = per_position && kv.second->length() == cached + n;
      if (per_position) {
        for (auto& layer : caches)
          for (auto& kv : layer) kv.second->truncate(cached + keep);
      } else if (can_restore) {  // a running state, or keys of only some positions: restore and re-run
        caches = std::move(saved);
        forward(std::vector<int32_t>(in.begin(), in.begin() + keep), cached, true);
        ++st.replays;
      } else {  // a cache that cannot be copied: recompute the whole sequence from here on
        use_cache = false;
        caches.clear();
      }
      cached += keep;
    }
    out.insert(out.end(), pred.begin(), pred.begin() + j);
    seq.insert(seq.end(), pred.begin(), pred.begin() + j);
    if (stopped) break;
    draft.assign(pred.begin() + j, pred.end());  // the rest of the predictions: next block's guesses
  }
  return out;
}

}  // namespace

std::vector<int32_t> generate(GPTImpl& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                              GenerateStats* stats) {
  SLM_CHECK(!prompt.empty(), "[generate] the prompt is empty; start it with BOS at least");
  SLM_CHECK(opt.max_tokens >= 0, "[generate] max_tokens must be >= 0");
  SLM_CHECK(static_cast<int64_t>(prompt.size()) + opt.max_tokens <= model.cfg.context, "[generate] prompt (",
            prompt.size(), " tokens) + max_tokens (", opt.max_tokens, ") exceeds the model's context ", model.cfg.context,
            "; shorten them, or evaluate at a longer context with YaRN");
  if (opt.jacobi) {
    SLM_CHECK(opt.block >= 1, "[generate] jacobi: --block must be >= 1 (got ", opt.block, ")");
    SLM_CHECK(opt.temperature <= 0, "[generate] jacobi decoding is greedy: its fixed point is greedy's output; ",
              "drop --temperature (got ", opt.temperature, ") or decode without --decode jacobi");
  }
  torch::NoGradGuard ng;
  const bool was_training = model.is_training();
  model.eval();
  GenerateStats local;
  GenerateStats& st = stats ? *stats : local;
  st = GenerateStats{};
  if (opt.jacobi) {
    std::vector<int32_t> out;
    try {
      out = jacobi(model, prompt, opt, st);
    } catch (...) {
      if (was_training) model.train();
      throw;
    }
    st.tokens = static_cast<int64_t>(out.size());
    if (was_training) model.train();
    return out;
  }
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
    ++st.forwards;
    ++st.iterations;
    auto logits = model.logits(h.slice(1, h.size(1) - 1)).view({-1});
    const int32_t next = pick(logits, opt, rng);
    if (std::find(opt.stop.begin(), opt.stop.end(), next) != opt.stop.end()) break;
    out.push_back(next);
    seq.push_back(next);
  }
  st.tokens = static_cast<int64_t>(out.size());
  if (was_training) model.train();
  return out;
}

}  // namespace slm
