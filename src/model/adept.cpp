#include "model/adept.h"

#include <typeinfo>

#include "common/device.h"
#include "common/error.h"

namespace slm {

namespace {

// One block for the tokens still running (active (B, T) bool), the others only projecting their keys
// and values from their exit state (the cache, when there is one, takes every token's).
torch::Tensor block_for_active(BlockImpl& blk, const torch::Tensor& x, const torch::Tensor& active, Ctx& ctx) {
  auto& attn = static_cast<CausalSelfAttentionImpl&>(*blk.mixer);
  const auto p = attn.project_qkv(rms_norm(x), ctx);  // q, k, v: (B, T, H, D); k, v with the cache's before
  const int64_t B = x.size(0), T = x.size(1), T_all = p.k.size(1);
  auto out = x.clone();
  auto any = active.any(1).to(torch::kCPU);
  for (int64_t b = 0; b < B; ++b) {
    if (!any[b].item<bool>()) continue;
    auto at = active[b].nonzero().squeeze(1);  // (n) the running tokens of row b
    // Their mask rows: the row's own (documents, or the cache's positions), else plain causal.
    torch::Tensor mask = p.allowed.defined() ? p.allowed[p.allowed.size(0) == B ? b : 0]
                                             : cached_causal_mask(T, T_all, x.device())[0];  // (1, T, T_all)
    mask = mask.index_select(1, at).unsqueeze(0);                                             // (1, 1, n, T_all)
    auto q = p.q[b].index_select(0, at).unsqueeze(0).transpose(1, 2);                         // (1, H, n, D)
    auto y = device::attention(q, p.k[b].unsqueeze(0).transpose(1, 2), p.v[b].unsqueeze(0).transpose(1, 2), mask);
    y = y.transpose(1, 2).contiguous().view({1, at.size(0), -1});
    auto h = x[b].index_select(0, at).unsqueeze(0) + attn.c_proj(y);
    h = h + blk.ffn->forward(rms_norm(h), ctx);
    out[b].index_copy_(0, at, h[0].to(out.scalar_type()));
  }
  return out;
}

}  // namespace

torch::Tensor AdeptRunner::run(GPTImpl& model, torch::Tensor x, Ctx& ctx) {
  SLM_CHECK(!ctx.training, "[adept] early exit is inference only; it never runs in training");
  const int64_t B = x.size(0), T = x.size(1), L = static_cast<int64_t>(model.blocks->size());
  auto active = torch::ones({B, T}, torch::TensorOptions().dtype(torch::kBool).device(x.device()));
  int64_t running = B * T;
  tokens += B * T;
  ctx.layer = 0;
  for (auto& m : *model.blocks) {
    auto& blk = *m->as<Block>();
    // Every token running: the plain block, so threshold 0 is the plain pass bit for bit.
    torch::Tensor nx = running == B * T ? blk.forward(x, ctx) : block_for_active(blk, x, active, ctx);
    layers += running;
    const int64_t l = ctx.layer;
    if (opt.threshold > 0 && running > 0 && l + 1 >= opt.min_layers && l + 1 < L) {
      auto moved = (nx - x).to(torch::kFloat32).norm(2, -1) / x.to(torch::kFloat32).norm(2, -1).clamp_min(1e-30);
      active = active.logical_and(moved.ge(opt.threshold));
      running = active.sum().item<int64_t>();
    }
    x = nx;
    ++ctx.layer;
  }
  return x;
}

std::shared_ptr<AdeptRunner> use_adept(GPTImpl& model, const AdeptOptions& o) {
  SLM_CHECK(o.threshold >= 0 && o.min_layers >= 1, "[adept] threshold ", o.threshold, " must be >= 0 and min_layers ",
            o.min_layers, " >= 1");
  SLM_CHECK(!model.streams, "[adept] residual streams (mhc) mix every layer's tokens; early exit runs plain blocks");
  SLM_CHECK(!model.tp && !model.ring, "[adept] early exit runs in one process (no tensor or ring parallelism)");
  for (size_t l = 0; l < model.blocks->size(); ++l) {
    auto& blk = *model.blocks[l]->as<Block>();
    const bool plain_attn = typeid(*blk.mixer) == typeid(CausalSelfAttentionImpl);
    const bool plain_mlp = typeid(*blk.ffn) == typeid(MLPImpl);
    SLM_CHECK(plain_attn && plain_mlp && !blk.wrap && blk.branches.empty(), "[adept] layer ", l, " (",
              blk.mixer->describe(), " + ", blk.ffn->describe(),
              blk.wrap || !blk.branches.empty() ? ", with a wrapper or branch" : "",
              ") is not an attention + relu2 MLP block; early exit runs the baseline's blocks only");
  }
  auto r = std::make_shared<AdeptRunner>(o);
  model.layer_runner = r;
  return r;
}

}  // namespace slm
