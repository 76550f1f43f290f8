// mHC, manifold-constrained hyper-connections (docs/modules.md section 3; docs/decisions.md): the residual
// becomes n streams, expanded once after the embedding (n copies) and collapsed once before the head
// (their sum). Every sub-layer F of every block (the mixer, then the feed-forward) reads and writes
// the streams through per-token maps:
//   x~     = rms(vec(x))                                    (B, T, n C), x the streams (B, T, n, C)
//   z      = x~ phi                                         (B, T, n^2 + 2n), phi (n C, n^2 + 2n)
//   H_pre  = sigmoid(a_pre z_pre + b_pre)                   (B, T, n)
//   H_post = 2 sigmoid(a_post z_post + b_post)              (B, T, n)
//   H_res  = Sinkhorn(a_res z_res + b_res)                  (B, T, n, n), doubly stochastic
//   x'_i   = sum_j H_res[i, j] x_j + H_post_i F(sum_j H_pre_j x_j)
// Per token, so causal and document-isolated as the mixer is (the public original pooled the
// coefficients over the sequence: non-causal). Sinkhorn runs in fp32, log-domain, ending on the
// column step, so 1^T H_res x = 1^T x (the stream mean is preserved). F includes the block's pre-norm,
// so H_pre sets the mix of the streams, not the scale of F's input.
//
// Init: a = 0.01 (the paper), phi uniform with the std of N(0, 1 / (n C)), b_pre = b_post = 0 (F reads
// every stream, its output goes to every stream at gain 1: HC's B = 1), b_res = 4 on the diagonal and
// 0 elsewhere (H_res starts near HC's static A_r = I, diagonal 0.95 at n = 4, with gradient to every
// entry). With the n identical streams of the expansion the model starts as the baseline but for
// the a z terms; with a = 0, b_pre >= 17 (sigmoid = 1 in fp32) and n = 1, it IS the baseline, bitwise.
//
// Branches (Engram) see the streams, (B, T, n, C), before the mixer's map, as without mHC they see
// the residual before the mixer. Generation needs no state of its own: the maps are per token.
//
// Shapes: B batch rows, T tokens, C model dim, n streams, m = n^2 + 2n coefficient logits.
#pragma once
#include <torch/torch.h>

#include <string>
#include <tuple>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

struct MhcOptions {
  // Catalog parameters have no defaults here: the catalog row holds the only ones (from()).
  int64_t d_model = 256;        // C
  int64_t streams = 0;          // n
  int64_t sinkhorn_iters = 0;   // t_max
  double alpha = 0;             // initial gating factors a_pre, a_post, a_res
  int64_t layer = 0;            // seeds this layer's private init stream
  uint64_t seed = 1337;         // the model's init seed

  // From the resolved catalog row and the model configuration.
  static MhcOptions from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// Sinkhorn-Knopp in fp32, log-domain: `iters` times the rows then the columns of exp(z) divided by
// their sums. z: (..., n, n) -> doubly stochastic (..., n, n), columns summing to 1 to fp32 precision,
// rows to within the iterations' convergence.
torch::Tensor sinkhorn(const torch::Tensor& z, int64_t iters);

// One sub-layer's map: phi, the gating factors and the biases.
struct MhcMapImpl : torch::nn::Module {
  MhcMapImpl(int64_t d_model, int64_t streams, double alpha);
  // x: (B, T, n, C) -> H_pre (B, T, n), H_post (B, T, n), H_res (B, T, n, n), all fp32.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> coefficients(const torch::Tensor& x, int64_t iters);
  int64_t n;
  torch::nn::Linear phi{nullptr};  // n C -> m
  torch::Tensor alpha;             // (3) a_pre, a_post, a_res
  torch::Tensor bias;              // (m) b_pre, b_post, b_res (row-major n x n)
};
TORCH_MODULE(MhcMap);

// The block wrapper of every layer: the branches, then the mixer and the feed-forward, each through
// its own map. Writes the maps' means to ctx.stats in training.
struct MhcWrapImpl : BlockWrapImpl {
  explicit MhcWrapImpl(const MhcOptions& o);
  // x: (B, T, n, C) -> (B, T, n, C)
  torch::Tensor forward(BlockImpl& block, const torch::Tensor& x, Ctx& ctx) override;
  // Per map, forward + backward: phi (2 n C m), the stream mixes (2 m C) and log-domain Sinkhorn
  // (~6 n^2 elementwise ops per iteration), x 3.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  MhcOptions opt;
  MhcMap mixer_map{nullptr}, ffn_map{nullptr};
};

// Expansion and collapse of the streams: n copies; their sum.
struct MhcStreamsImpl : StreamsImpl {
  MhcStreamsImpl(int64_t streams, int64_t d_model) : n(streams), d_model(d_model) {}
  torch::Tensor expand(const torch::Tensor& x) override;    // (B, T, C) -> (B, T, n, C)
  torch::Tensor collapse(const torch::Tensor& s) override;  // (B, T, n, C) -> (B, T, C)
  double flops_per_token(int64_t T) const override;         // the sum's n C adds, forward + backward
  std::string describe() const override;
  int64_t n, d_model;
};

// The model side of the catalog row: the streams, and the wrapper on every layer ("mhc" in its
// module list). Refuses a layer another module already wraps.
void apply_mhc(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

}  // namespace slm
