#include "model/eagle.h"

#include <algorithm>
#include <numeric>
#include <typeinfo>

#include "common/error.h"

namespace slm {

DraftHeadImpl::DraftHeadImpl(const ModelConfig& target) {
  const int64_t C = target.d_model;
  fc = register_module("fc", torch::nn::Linear(torch::nn::LinearOptions(2 * C, C).bias(false)));
  ModelConfig one = target;  // the baseline block at the target's geometry, no modules
  one.modules.clear();
  one.n_layer = 1;
  one.layer_pattern = "A";
  block = register_module("block", Block(model_plan(one).layers[0]));
}

torch::Tensor DraftHeadImpl::forward(const torch::Tensor& feat, const torch::Tensor& next_ids, GPTImpl& target, Ctx& ctx) {
  auto e = rms_norm(target.wte(next_ids));                  // (B, T, C), embedded as the target embeds
  auto x = fc(torch::cat({e, feat.to(e.scalar_type())}, -1));  // (B, T, C)
  ctx.layer = 0;
  return block->forward(x, ctx);
}

bool verifies_trees(const GPTImpl& m) {
  if (m.streams || m.ring) return false;
  for (const auto& b : *m.blocks) {
    const auto* blk = b->as<BlockImpl>();
    if (blk->wrap || !blk->branches.empty()) return false;
    // Exactly these classes: a subclass (DSA's attention, CBP's MLP) may look across positions its own way.
    if (typeid(*blk->mixer) != typeid(CausalSelfAttentionImpl) || typeid(*blk->ffn) != typeid(MLPImpl)) return false;
  }
  return true;
}

namespace {

// A draft token: its token, its parent (an index into the candidate list; -1: the root), its
// global confidence (sum of draft log probabilities along the path) and its depth (1 below the root).
struct Candidate {
  int32_t token;
  int64_t parent;
  double score;
  int64_t depth;
};

// The k best of each row of log probabilities (n, V): tokens and values, best first.
std::pair<std::vector<int32_t>, std::vector<double>> top_rows(const torch::Tensor& logp, int64_t k) {
  auto [v, i] = logp.topk(k, -1);
  auto vi = v.to(torch::kCPU, torch::kFloat64).contiguous();
  auto ii = i.to(torch::kCPU, torch::kInt64).contiguous();
  std::vector<int32_t> tok(ii.data_ptr<int64_t>(), ii.data_ptr<int64_t>() + ii.numel());
  std::vector<double> val(vi.data_ptr<double>(), vi.data_ptr<double>() + vi.numel());
  return {tok, val};
}

// One EAGLE-2 decoder: the target's and the draft's caches and the committed sequence.
class Eagle2 {
 public:
  Eagle2(GPTImpl& target, DraftHeadImpl& draft, const GenerateOptions& opt, const EagleOptions& eo, EagleStats& st)
      : t_(target), d_(draft), opt_(opt), eo_(eo), st_(st), dev_(target.lm_head->weight.device()) {
    st_.tree = verifies_trees(target);
  }

  std::vector<int32_t> run(std::vector<int32_t> seq) {
    seq_ = std::move(seq);
    // Prefill: the whole prompt, and greedy's first token becomes the first root.
    auto h = target_forward(seq_, 0, {});
    ++st_.gen.iterations;
    const int32_t first = argmax_rows(t_.logits(h.slice(1, -1)).view({1, -1}))[0];
    pending_ = h.view({-1, h.size(-1)});  // f_0 .. f_{n-1}: the draft has seen none
    if (!emit(first)) return out_;
    while (static_cast<int64_t>(out_.size()) < opt_.max_tokens)
      if (!cycle()) break;
    return out_;
  }

 private:
  // Appends a greedy pick; false when it is a stop token or max_tokens is reached.
  bool emit(int32_t tok) {
    if (std::find(opt_.stop.begin(), opt_.stop.end(), tok) != opt_.stop.end()) return false;
    out_.push_back(tok);
    seq_.push_back(tok);
    return static_cast<int64_t>(out_.size()) < opt_.max_tokens;
  }

  torch::Tensor target_forward(const std::vector<int32_t>& ids, int64_t pos, const torch::Tensor& tree) {
    Ctx ctx;
    ctx.step = t_.step;
    ctx.idx = ids_tensor(ids, dev_);
    ctx.caches = &tcache_;
    ctx.pos = pos;
    ctx.tree = tree;
    ++st_.gen.forwards;
    return t_.hidden(ctx);  // (1, T, C)
  }

  // The draft on n pairs (feat (n, C), ids (n)) at draft positions `positions`, each seeing the
  // cached keys where visible (n, cached + n) allows.
  torch::Tensor draft_forward(const torch::Tensor& feat, const std::vector<int32_t>& ids,
                              const std::vector<int64_t>& positions, const torch::Tensor& visible) {
    Ctx ctx;
    ctx.caches = &dcache_;
    if (dcache_.empty()) dcache_.resize(1);
    const int64_t n = static_cast<int64_t>(ids.size());
    auto pos = torch::tensor(positions, torch::kInt64).to(dev_);
    ctx.positions = pos;
    ctx.pos = positions[0];
    ctx.cos = t_.rope_cos.index_select(0, pos);
    ctx.sin = t_.rope_sin.index_select(0, pos);
    ctx.tree = visible;  // attention reads ctx.allowed when a tree is given
    ctx.allowed = visible.view({1, 1, n, visible.size(1)}).to(dev_);
    ++st_.draft_forwards;
    return d_.forward(feat.view({1, n, -1}), ids_tensor(ids, dev_), t_, ctx).view({n, -1});  // (n, C)
  }

  int64_t draft_cached() const {
    return dcache_.empty() || !dcache_[0].count("attn") ? 0 : dcache_[0].at("attn")->length();
  }

  // Log probabilities of the next token from predicted features (n, C) -> (n, V), fp32.
  torch::Tensor draft_logp(const torch::Tensor& f) { return torch::log_softmax(t_.logits(f), -1); }

  // One draft-verify-accept cycle. False when generation ended (stop token, max_tokens).
  bool cycle() {
    const int64_t n = static_cast<int64_t>(seq_.size());  // the root seq_[n-1] is not in the target's cache
    const int64_t remaining = opt_.max_tokens - static_cast<int64_t>(out_.size());
    // Tree nodes sit at positions up to n-1 + depth, and a cycle emits at most depth + 1 tokens.
    const int64_t depth = std::min(eo_.depth, remaining - 1);
    const int64_t k = st_.tree ? std::min(eo_.top_k, t_.cfg.vocab) : 1;
    const int64_t total = st_.tree ? eo_.total_tokens : depth;

    // 1. Draft. Catch up on the committed pairs (f_i, seq[i+1]) the draft has not seen, i < n-1.
    std::vector<Candidate> cand;
    if (depth > 0) {
      const int64_t dlen = draft_cached();
      std::vector<int32_t> ids(seq_.begin() + dlen + 1, seq_.end());
      std::vector<int64_t> positions(ids.size());
      std::iota(positions.begin(), positions.end(), dlen);
      const int64_t fresh = static_cast<int64_t>(ids.size());
      auto root_out = draft_forward(pending_, ids, positions, cached_causal_mask(fresh, n - 1, dev_).view({fresh, n - 1}));
      pending_ = torch::Tensor();
      const int64_t committed = n - 1;  // draft cache entries that stay
      auto root_feat = root_out.slice(0, -1);  // (1, C): the predicted feature at the root's position
      // The feature a candidate's expansion reads is its parent's output: a row of the last
      // expansion's output (`parents_out`; the root's for depth 1), since levels expand in order.
      torch::Tensor parents_out = root_feat;
      std::vector<int64_t> parent_row;  // per candidate: that row
      std::vector<int64_t> slot;        // per candidate: its draft cache entry once expanded, -1 before
      auto [tok, lp] = top_rows(draft_logp(root_feat), k);
      std::vector<int64_t> level;
      for (int64_t j = 0; j < k; ++j) {
        level.push_back(static_cast<int64_t>(cand.size()));
        cand.push_back({tok[j], -1, lp[j], 1});
        parent_row.push_back(0);
        slot.push_back(-1);
      }
      for (int64_t d = 1; d < depth; ++d) {
        // Expand the top k of the last level by global confidence (ties: the earlier candidate).
        std::stable_sort(level.begin(), level.end(), [&](int64_t a, int64_t b) { return cand[a].score > cand[b].score; });
        level.resize(std::min<int64_t>(k, static_cast<int64_t>(level.size())));
        std::sort(level.begin(), level.end());
        const int64_t m = static_cast<int64_t>(level.size()), cached = draft_cached();
        auto visible = torch::zeros({m, cached + m}, torch::kBool);
        visible.slice(1, 0, committed).fill_(true);
        auto vis = visible.accessor<bool, 2>();
        std::vector<int32_t> ids_e;
        std::vector<int64_t> pos_e;
        std::vector<int64_t> rows;
        for (int64_t i = 0; i < m; ++i) {
          const int64_t c = level[i];
          vis[i][cached + i] = true;
          for (int64_t a = cand[c].parent; a >= 0; a = cand[a].parent) vis[i][slot[a]] = true;
          ids_e.push_back(cand[c].token);
          pos_e.push_back(n - 2 + cand[c].depth);  // the pair (f^, token) of a depth-d node sits at n-2+d
          rows.push_back(parent_row[c]);
          slot[c] = cached + i;
        }
        auto in_feat = parents_out.index_select(0, torch::tensor(rows, torch::kInt64).to(dev_));
        auto out = draft_forward(in_feat, ids_e, pos_e, visible);  // (m, C)
        auto [ctok, clp] = top_rows(draft_logp(out), k);
        std::vector<int64_t> next;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < k; ++j) {
            next.push_back(static_cast<int64_t>(cand.size()));
            cand.push_back({ctok[i * k + j], level[i], cand[level[i]].score + clp[i * k + j], d + 1});
            parent_row.push_back(i);
            slot.push_back(-1);
          }
        level = std::move(next);
        parents_out = out;
      }
      for (auto& layer : dcache_)  // the tree leaves the draft's cache; the committed pairs stay
        for (auto& kv : layer) kv.second->truncate(committed);
      // Rerank: the `total` best candidates by global confidence. A child's score is its parent's
      // plus a log probability <= 0 and it comes later in the list, so its parent ranks first.
      std::vector<int64_t> order(cand.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cand[a].score > cand[b].score; });
      order.resize(std::min<int64_t>(total, static_cast<int64_t>(order.size())));
      std::sort(order.begin(), order.end());
      std::vector<Candidate> chosen;
      std::vector<int64_t> flat(cand.size(), -1);  // candidate -> flat index in the verified input (root 0)
      for (int64_t c : order) {
        const int64_t p = cand[c].parent;
        SLM_CHECK(p < 0 || flat[p] >= 0, "[eagle2] internal: a draft token was chosen without its parent");
        flat[c] = static_cast<int64_t>(chosen.size()) + 1;
        chosen.push_back({cand[c].token, p < 0 ? 0 : flat[p], cand[c].score, cand[c].depth});
      }
      cand = std::move(chosen);  // now parents are flat indices
    }

    // 2. Verify: [root, draft tokens] in one target forward.
    const int64_t N = static_cast<int64_t>(cand.size()) + 1;
    std::vector<int32_t> in = {seq_.back()};
    for (auto& c : cand) in.push_back(c.token);
    torch::Tensor tree;
    if (st_.tree && N > 1) {
      tree = torch::eye(N, torch::kBool);  // each node sees itself and its ancestors (parents come first)
      auto a = tree.accessor<bool, 2>();
      for (int64_t i = 1; i < N; ++i)
        for (int64_t j = 0; j < i; ++j) a[i][j] = a[cand[i - 1].parent][j];
    }
    Caches saved;
    const bool per_position = st_.tree || caches_per_position(n - 1);
    if (!per_position) saved = clone(tcache_);
    auto h = target_forward(in, n - 1, tree).view({N, -1});  // (N, C)
    ++st_.gen.iterations;
    st_.drafted += N - 1;
    const auto pick = argmax_rows(t_.logits(h));

    // 3. Accept the longest path the target agrees with; its picks are greedy's tokens.
    std::vector<int64_t> path = {0};
    bool more = true;
    for (int64_t cur = 0;;) {
      const int32_t tok = pick[cur];
      more = emit(tok);
      if (!more) break;
      int64_t next = -1;
      for (int64_t i = cur + 1; i < N && next < 0; ++i)
        if (cand[i - 1].parent == cur && cand[i - 1].token == tok) next = i;
      if (next < 0) break;
      path.push_back(next);
      ++st_.accepted;
      cur = next;
    }
    if (!more) return false;
    // The target's cache keeps the root and the accepted path.
    const int64_t keep = static_cast<int64_t>(path.size());
    if (st_.tree) {
      std::vector<int64_t> rows(n - 1);
      std::iota(rows.begin(), rows.end(), 0);
      for (int64_t p : path) rows.push_back(n - 1 + p);
      auto index = torch::tensor(rows, torch::kInt64).to(dev_);
      for (auto& layer : tcache_)
        for (auto& kv : layer) {
          // verifies_trees() admits plain attention only, whose cache is a KVCache.
          auto* c = dynamic_cast<KVCache*>(kv.second.get());
          SLM_CHECK(c, "[eagle2] internal: a tree was verified through a cache other than attention's");
          c->k = c->k.index_select(1, index);
          c->v = c->v.index_select(1, index);
        }
    } else if (per_position) {  // a chain: the accepted path is its first `keep` tokens
      for (auto& layer : tcache_)
        for (auto& kv : layer) kv.second->truncate(n - 1 + keep);
    } else {  // a running state (Mamba-3): back to before the chain, and the accepted tokens again
      tcache_ = std::move(saved);
      h = target_forward(std::vector<int32_t>(in.begin(), in.begin() + keep), n - 1, {}).view({keep, -1});
      ++st_.gen.replays;
      path.resize(keep);
      std::iota(path.begin(), path.end(), 0);
    }
    auto rows = torch::tensor(path, torch::kInt64).to(dev_);
    auto fresh = h.index_select(0, rows);  // the features of the new committed pairs
    pending_ = pending_.defined() ? torch::cat({pending_, fresh}, 0) : fresh;
    return true;
  }

  // Every cache holds exactly `len` positions, one entry each (attention, DSA): truncation rolls back.
  bool caches_per_position(int64_t len) const {
    for (const auto& layer : tcache_)
      for (const auto& kv : layer)
        if (kv.second->length() != len) return false;
    return true;
  }

  Caches clone(const Caches& c) const {
    Caches out(c.size());
    for (size_t l = 0; l < c.size(); ++l)
      for (const auto& kv : c[l]) {
        auto copy = kv.second->clone();
        SLM_CHECK(copy, "[eagle2] layer ", l, " (", kv.first, ") keeps a state that cannot be copied, so rejected draft "
                  "tokens cannot be rolled back; decode without --speculative");
        out[l][kv.first] = copy;
      }
    return out;
  }

  GPTImpl& t_;
  DraftHeadImpl& d_;
  const GenerateOptions& opt_;
  const EagleOptions& eo_;
  EagleStats& st_;
  torch::Device dev_;
  Caches tcache_, dcache_;
  std::vector<int32_t> seq_, out_;
  torch::Tensor pending_;  // (P, C) target features of committed pairs the draft has not seen
};

}  // namespace

std::vector<int32_t> generate_eagle2(GPTImpl& target, DraftHeadImpl& draft, const std::vector<int32_t>& prompt,
                                     const GenerateOptions& opt, const EagleOptions& eo, EagleStats* stats) {
  SLM_CHECK(!prompt.empty(), "[eagle2] the prompt is empty; start it with BOS at least");
  SLM_CHECK(opt.max_tokens >= 0, "[eagle2] max_tokens must be >= 0");
  SLM_CHECK(static_cast<int64_t>(prompt.size()) + opt.max_tokens <= target.cfg.context, "[eagle2] prompt (", prompt.size(),
            " tokens) + max_tokens (", opt.max_tokens, ") exceeds the model's context ", target.cfg.context,
            "; shorten them");
  SLM_CHECK(opt.temperature <= 0, "[eagle2] speculative decoding here is greedy (its output is greedy's); drop --temperature (got ",
            opt.temperature, ")");
  SLM_CHECK(opt.use_cache, "[eagle2] speculative decoding verifies against the cache; drop --no-cache");
  SLM_CHECK(eo.depth >= 1 && eo.top_k >= 1 && eo.total_tokens >= 1, "[eagle2] depth, top_k and total_tokens must be >= 1");
  SLM_CHECK(draft.fc->weight.size(0) == target.cfg.d_model && draft.fc->weight.size(1) == 2 * target.cfg.d_model,
            "[eagle2] the draft head was built for d_model ", draft.fc->weight.size(0), ", the target has ",
            target.cfg.d_model, "; train a draft head for this run (slmlab draft train)");
  torch::NoGradGuard ng;
  const bool target_training = target.is_training(), draft_training = draft.is_training();
  target.eval();
  draft.eval();
  EagleStats local;
  EagleStats& st = stats ? *stats : local;
  st = EagleStats{};
  std::vector<int32_t> out;
  if (opt.max_tokens > 0) {
    try {
      out = Eagle2(target, draft, opt, eo, st).run(prompt);
    } catch (...) {
      if (target_training) target.train();
      if (draft_training) draft.train();
      throw;
    }
  }
  st.gen.tokens = static_cast<int64_t>(out.size());
  if (target_training) target.train();
  if (draft_training) draft.train();
  return out;
}

DraftLoss draft_loss(DraftHeadImpl& draft, GPTImpl& target, const torch::Tensor& idx, const torch::Tensor& doc_ids,
                     const torch::Tensor& feat, double w_token) {
  const int64_t T = idx.size(1);
  SLM_CHECK(T >= 2, "[eagle2] draft training needs rows of at least 2 tokens");
  // Pair t: the feature at t and the token at t+1 -> the feature at t+1.
  auto f_in = feat.slice(1, 0, T - 1), f_next = feat.slice(1, 1), next = idx.slice(1, 1);
  Ctx ctx;
  ctx.training = draft.is_training();
  ctx.cos = target.rope_cos;
  ctx.sin = target.rope_sin;
  torch::Tensor keep;  // (B, T-1) 1 where t and t+1 are in one document
  if (doc_ids.defined()) {
    auto d_in = doc_ids.slice(1, 0, T - 1);
    ctx.doc_ids = d_in;
    ctx.allowed = document_causal_mask(d_in);
    keep = d_in.eq(doc_ids.slice(1, 1)).to(torch::kFloat32);
  } else {
    keep = torch::ones({idx.size(0), T - 1}, feat.options().dtype(torch::kFloat32));
  }
  auto pred = draft.forward(f_in, next, target, ctx);  // (B, T-1, C)
  const auto n = keep.sum().clamp_min(1.0);
  DraftLoss L;
  L.feature = (torch::smooth_l1_loss(pred.to(torch::kFloat32), f_next.to(torch::kFloat32), at::Reduction::None).mean(-1) * keep).sum() / n;
  torch::Tensor p;
  {
    torch::NoGradGuard ng;
    p = torch::softmax(target.logits(f_next), -1);  // the target's own next-token distribution
  }
  auto logq = torch::log_softmax(target.logits(pred), -1);
  L.token = (-(p * logq).sum(-1) * keep).sum() / n;
  L.total = L.feature + w_token * L.token;
  return L;
}

}  // namespace slm
