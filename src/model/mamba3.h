// Mamba-3 token mixer (docs/modules.md section 4): a selective state-space layer with data-dependent
// decay, trapezoidal discretization, RMSNorm + bias on B and C, and opt-in complex state (data-dependent
// RoPE on B and C) and MIMO rank. No short convolution: the trapezoid's two-tap term plays its role.
//
// Training runs a chunked SSD scan in matrix products (stable segsum inside chunks, a matrix
// recurrence across chunks), in fp32 even under bf16 autocast, with the state reset at every document
// boundary of a packed row. Generation carries a Mamba3State through forward_step.
//
// Shapes: B batch rows, T tokens, C model dim, H heads, P head dim (headdim), N state dim (d_state),
// R MIMO rank, S rotation angles, Q chunk length, K chunks.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>

#include "catalog/catalog.h"
#include "model/module.h"

namespace slm {

struct ModelConfig;

// Everything a Mamba-3 mixer is built from; `from` reads the catalog row's resolved arguments. The
// catalog parameters have no defaults here: the row (catalog/modules/mamba3.cpp) holds the only ones.
struct Mamba3Options {
  int64_t d_model = 256;       // C
  int64_t d_state = 0;         // N (the paper uses 128; the row's 64 keeps small CPU models cheap)
  int64_t expand = 0;          // inner width = expand x C
  int64_t headdim = 0;         // P; heads H = expand x C / P
  int64_t chunk = 0;           // Q of the chunked scan; the last chunk is zero-padded
  bool trapezoidal = false;    // false: lambda = 1, the Euler (Mamba-2) update
  bool bc_norm = false;        // RMSNorm on B and C plus a per-head bias initialized to 1
  double rope_fraction = 0.0;  // 0 = real state; 0.5 or 1.0 rotate that fraction of N (complex state)
  int64_t mimo_rank = 0;       // R; 1 = SISO
  double dt_min = 0, dt_max = 0;  // Delta at init is log-uniform in [dt_min, dt_max]
  double dt_init_floor = 1e-4;
  double a_floor = 0;          // A_t = -softplus(a_t) is clamped to <= -a_floor
  bool doc_mask = true;        // reset the state at document boundaries (follows ModelConfig.doc_mask)

  int64_t n_head() const { return expand * d_model / headdim; }
  int64_t n_angle() const;     // S = floor(N x rope_fraction) rounded down to even, halved
  static Mamba3Options from(const catalog::ModuleArgs& args, const ModelConfig& cfg);
};

// The decode state of one mixer (official layout). Undefined tensors = the start of a document.
struct Mamba3State {
  torch::Tensor angle;  // (B, H, S) cumulative rotation, wrapped to [0, 2 pi)
  torch::Tensor ssm;    // (B, H, P, N) fp32 (fp64 when the mixer runs in fp64)
  torch::Tensor k;      // (B, R, H, N) B of the previous token (normed, biased, rotated): the trapezoid's beta term
  torch::Tensor v;      // (B, H, P) x of the previous token
  bool defined() const { return ssm.defined(); }
};

struct Mamba3MixerImpl : MixerImpl {
  explicit Mamba3MixerImpl(const Mamba3Options& o);
  // x: (B, T, C) -> (B, T, C); the state starts at zero and resets at ctx.doc_ids changes.
  torch::Tensor forward(const torch::Tensor& x, Ctx& ctx) override;
  // x: (B, T, C) -> (B, T, C), continuing from `state` (undefined = fresh) and leaving the final state
  // in it: run a prompt, then forward_step. doc_ids (B, T) or undefined; a carried state belongs to the
  // document of the first token.
  torch::Tensor forward_with_state(const torch::Tensor& x, const torch::Tensor& doc_ids, Mamba3State& state);
  // One token: x_t (B, 1, C) -> (B, 1, C), the plain recurrence (no chunking), updating `state`.
  torch::Tensor forward_step(const torch::Tensor& x_t, Mamba3State& state);
  // In/out projections (6 x params) plus the chunked scan's matrix products, forward + backward.
  double flops_per_token(int64_t T) const override;
  std::string describe() const override;
  // Tensor parallelism by SSM heads: in_proj keeps this rank's rows of z, x, Delta, a and lambda
  // (column-parallel) and every rank all rows of B, C and the angles (shared by the heads, replicated);
  // out_proj is row-parallel; dt_bias, D, the B/C biases and MIMO weights follow their heads. The scan
  // runs on the local heads alone.
  std::string shard_tensor_parallel(const TpGroupPtr& g, TpSplits& splits) override;

  Mamba3Options opt;
  int64_t n_head, n_angle;  // n_head: this rank's heads under tensor parallelism
  TpGroupPtr tp;            // set by shard_tensor_parallel
  torch::nn::Linear in_proj{nullptr}, out_proj{nullptr};
  torch::Tensor dt_bias;                 // (H) softplus^-1 of the initial Delta
  torch::Tensor D;                       // (H) skip, init 1
  torch::Tensor B_norm, C_norm;          // (N) RMSNorm weights, init 1 (bc_norm only)
  torch::Tensor B_bias, C_bias;          // (H, R, N) init 1, added before RoPE (bc_norm only)
  torch::Tensor mimo_x, mimo_z, mimo_o;  // (H, R, P) rank up/gate/down weights: 1/R, 1, 1/R (R > 1 only)

 private:
  struct Proj;
  Proj project(const torch::Tensor& u, const torch::Tensor& angle0);
  torch::Tensor project_split(const torch::Tensor& u);
  torch::Tensor finish(const Proj& p, const torch::Tensor& y);
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& doc_ids, Mamba3State* state);
};
TORCH_MODULE(Mamba3Mixer);

// The model side of the catalog row: every layer of kind 'M' in the plan gets a Mamba-3 mixer and
// "mamba3" in its module list. Fails when the plan has no 'M' layer.
void apply_mamba3(const catalog::ModuleArgs& args, const ModelConfig& cfg, ModelPlan& plan);

// ---- the scan, exposed for tests and benchmarks (all run in fp32, or fp64 for fp64 inputs)

// Segment ids (B, T) int64 from document ids: 0 at t = 0, +1 wherever the id changes. The state resets
// at every change, so a segment sees nothing of the one before it. Undefined in, undefined out.
torch::Tensor mamba3_segments(const torch::Tensor& doc_ids);

// Chunked SSD (Mamba-2 form), scalar decay per head and token, rank R:
//   h_t = exp(la_t) h_{t-1} + sum_r b_{t,r} x_{t,r}^T,  y_{t,r} = c_{t,r}^T h_t.
// x: (B, T, R, H, P) already scaled, la: (B, T, H) <= 0, b, c: (B, T, R, H, N), seg: (B, T) or undefined,
// h0: (B, H, P, N) or undefined. Returns y: (B, T, R, H, P) and the final state (B, H, P, N).
// diagonal = false leaves the s = t term out of y (not out of the state): the trapezoid adds it itself.
std::pair<torch::Tensor, torch::Tensor> mamba3_ssd(const torch::Tensor& x, const torch::Tensor& la,
                                                   const torch::Tensor& b, const torch::Tensor& c,
                                                   const torch::Tensor& seg, const torch::Tensor& h0, int64_t chunk,
                                                   bool diagonal = true);

// The trapezoidal recurrence through its SSD form (spec 4, "SSD form of the trapezoid"):
//   h_t = alpha_t h_{t-1} + beta_t sum_r b_{t-1,r} x_{t-1,r}^T + gamma_t sum_r b_{t,r} x_{t,r}^T,
//   alpha = exp(la), beta = (1 - lam) dt alpha, gamma = lam dt,  y_{t,r} = c_{t,r}^T h_t.
// dt, lam: (B, T, H). b_prev (B, R, H, N) and x_prev (B, R, H, P): the token before position 0 when
// continuing a state, else undefined. Returns y (B, T, R, H, P) and the true final state h_T.
std::pair<torch::Tensor, torch::Tensor> mamba3_trapezoid(const torch::Tensor& x, const torch::Tensor& la,
                                                         const torch::Tensor& dt, const torch::Tensor& lam,
                                                         const torch::Tensor& b, const torch::Tensor& c,
                                                         const torch::Tensor& seg, const torch::Tensor& h0,
                                                         const torch::Tensor& b_prev, const torch::Tensor& x_prev,
                                                         int64_t chunk);

}  // namespace slm
