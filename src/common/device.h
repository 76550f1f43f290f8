// The one seam for device and LibTorch-version differences (CPU Debian LibTorch 1.13 vs a CUDA
// LibTorch 2.x). Code elsewhere asks this header, never TORCH_VERSION or torch::cuda directly.
#pragma once
#include <torch/torch.h>

#include <string>

namespace slm::device {

// "libtorch 1.13.1, cpu (2 threads)"
std::string describe();
std::string torch_version();
bool cuda_available();
// CUDA devices this process can see (0 without CUDA).
int cuda_device_count();
// The torch device for a substrate's device string; fails clearly when CUDA is asked for and absent.
// Same as resolve(name, 0).
torch::Device resolve(const std::string& name);
// The device of local rank `local_rank` (one GPU per rank on a node): "cuda" is cuda:local_rank, made
// this thread's current CUDA device (kernels, the caching allocator and NCCL default to it); "cpu" is
// the CPU for every rank. Fails in one line when local_rank is not below the CUDA device count.
torch::Device resolve(const std::string& name, int local_rank);
// Makes `dev` the current CUDA device of this thread; nothing for a CPU device.
void set_current(const torch::Device& dev);

// Whether bf16 matmuls are fast on this device; `why` says what was detected.
bool bf16_fast(const torch::Device& dev, std::string* why);
// Turns mixed precision on or off for the current thread (CPU: autocast to bf16; CUDA: autocast bf16).
void set_autocast(const torch::Device& dev, bool on);
// The dtype matmuls run in right now for tensors like `like`: bf16 inside autocast, else like's dtype.
torch::ScalarType matmul_dtype(const torch::Tensor& like);
// Drops autocast's cached weight casts; call after each optimizer step.
void clear_autocast_cache();
// Turns autocast off on `like`'s device for a scope, and back on when the scope ends if it was on:
// fp32 matrix products where bf16 would lose what matters (a scan's state, distances to compare).
class AutocastOff {
 public:
  explicit AutocastOff(const torch::Tensor& like);
  ~AutocastOff();
  AutocastOff(const AutocastOff&) = delete;
  AutocastOff& operator=(const AutocastOff&) = delete;

 private:
  torch::Device dev_;
  bool was_on_;
};

// Attention: softmax(q k^T * scale + mask) v. q,k,v: (B, H, T, D); allowed: (B, 1, T, T) bool or undefined
// (undefined = causal). Uses the fused kernel where the LibTorch version has one.
// On LibTorch 1.13's CPU, with the fused kernel on (fused_attention()), attention_fused_cpu
// (common/attention_cpu.h) where it takes the arguments, else the math path below.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& allowed);
// The unfused math path: full T x T fp32 scores and probabilities (what 1.13 has without the kernel).
torch::Tensor attention_math(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& allowed);
// Whether attention() uses the fused CPU kernel on LibTorch 1.13 (process-wide; tests and benchmarks
// switch it to compare the two; SLMLAB_ATTENTION=fused|math sets it for a whole process).
bool fused_attention();
void set_fused_attention(bool on);
// Which attention this process computes: "sdpa" (LibTorch >= 2.0), "fused" (our CPU kernel) or "math".
// Recorded in a run's config.json and the machine line: the paths round differently.
std::string attention_path();

// Sustained matmul FLOP/s of this device at `dtype` with the current thread count, measured by a
// short GEMM probe and cached in ~/.cache/slmlab (keyed by CPU model, threads, dtype, LibTorch version).
double peak_flops(const torch::Device& dev, torch::ScalarType dtype, bool force_measure = false);

// Whether at::_fused_adamw_ (the whole AdamW update of a list of tensors in one CUDA kernel, as
// torch.optim.AdamW(fused=True)) exists in this LibTorch and runs on `dev`: CUDA and LibTorch >= 2.0.
bool fused_adamw_available(const torch::Device& dev);
// Decoupled-decay AdamW through at::_fused_adamw_ on fp32 CUDA tensors of equal shapes and strides per
// index (params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]), with t the float32 0-dim `step` on the
// same device (read, not incremented): p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Fails where fused_adamw_available is false.
void fused_adamw_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  const torch::Tensor& step, double lr, double beta1, double beta2, double weight_decay, double eps);
// self[i].lerp_(end[i], weight) for every i: one multi-tensor op where LibTorch has _foreach_lerp_
// (>= 2.0), else one lerp_ per tensor. On CPU both are the per-tensor kernel: the same bits.
void foreach_lerp_(at::TensorList self, at::TensorList end, double weight);

// OpenMP's threads wait passively (sleep) between parallel regions unless the user chose a policy
// (OMP_WAIT_POLICY set, e.g. to ACTIVE): libgomp spins by default, and where another process shares
// the cores, a spinning thread takes the time the working one needs (docs/LOG.md 2026-12-03: a
// cpu-tiny step 2-4.5x slower with a `yes` beside it). libgomp reads the policy when it loads,
// before main, so this re-executes the binary once (/proc/self/exe, the same argv) with it set.
// Call first thing in main; returns when nothing needed doing or the exec failed (then the default
// policy stays, and training is only slower under load).
void exec_with_passive_openmp(char** argv);

// Resident set size high-water mark of this process, bytes.
int64_t peak_rss_bytes();
// Bytes a new allocation on `dev` can still get: on the CPU the kernel's MemAvailable, bounded by
// this cgroup's memory.max less its memory.current; 0 where this build cannot tell (CUDA).
double memory_available_bytes(const torch::Device& dev);
// Bytes per attention score that attention() keeps for backward: the fp32 scores and probabilities
// of LibTorch 1.13's unfused path (8), none for a fused kernel (0: SDPA, or the CPU kernel when on).
double attention_score_bytes();

}  // namespace slm::device
