#include "common/device.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <sys/resource.h>
#include <torch/version.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/attention_cpu.h"
#include "common/error.h"
#include "common/fs.h"

#ifndef TORCH_VERSION_MAJOR
#error "torch/version.h did not define TORCH_VERSION_MAJOR: every version switch below would silently take the 1.x branch"
#endif

// LibTorch at least major.minor: the one place that reads TORCH_VERSION_*.
#define SLM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace slm::device {

namespace {

// Autocast per device type. LibTorch 2.4 made these device-typed (is_autocast_enabled(kCUDA), ...)
// and deprecated is_enabled / is_cpu_enabled / get_autocast_gpu_dtype and the rest, which warn once
// per call site and are due for removal; 1.13 has only the old ones.
bool autocast_enabled(c10::DeviceType t) {
#if SLM_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(t);
#else
  return t == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void autocast_enable(c10::DeviceType t, bool on) {
#if SLM_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(t, on);
#else
  if (t == c10::DeviceType::CUDA)
    at::autocast::set_enabled(on);
  else
    at::autocast::set_cpu_enabled(on);
#endif
}

at::ScalarType autocast_dtype(c10::DeviceType t) {
#if SLM_TORCH_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(t);
#else
  return t == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

void autocast_set_dtype(c10::DeviceType t, at::ScalarType dtype) {
#if SLM_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_dtype(t, dtype);
#else
  if (t == c10::DeviceType::CUDA)
    at::autocast::set_autocast_gpu_dtype(dtype);
  else
    at::autocast::set_autocast_cpu_dtype(dtype);
#endif
}

}  // namespace

std::string torch_version() {
  std::ostringstream os;
  os << TORCH_VERSION_MAJOR << "." << TORCH_VERSION_MINOR << "." << TORCH_VERSION_PATCH;
  return os.str();
}

bool cuda_available() { return torch::cuda::is_available(); }

int cuda_device_count() { return cuda_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }

std::string describe() {
  std::ostringstream os;
  os << "libtorch " << torch_version() << ", ";
  if (cuda_available())
    os << "cuda (" << torch::cuda::device_count() << " devices)";
  else
    os << "cpu (" << at::get_num_threads() << " threads)";
  os << ", attention " << attention_path();
  return os.str();
}

torch::Device resolve(const std::string& name) { return resolve(name, 0); }

torch::Device resolve(const std::string& name, int local_rank) {
  SLM_CHECK(name == "cpu" || name == "cuda", "unknown device '", name, "'; use cpu or cuda");
  if (name == "cpu") return torch::Device(torch::kCPU);
  SLM_CHECK(cuda_available(), "device cuda requested but this LibTorch has no usable CUDA device; use --set device=cpu");
  const int n = cuda_device_count();
  SLM_CHECK(local_rank >= 0 && local_rank < n, "device cuda for local rank ", local_rank, " but this machine shows ", n,
            " CUDA device(s); start at most ", n, " ranks per machine or widen CUDA_VISIBLE_DEVICES");
  const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
  set_current(dev);
  return dev;
}

// Through c10's device-guard registry, which every build has: c10::cuda::set_device would need the
// CUDA headers, absent from a CPU LibTorch.
void set_current(const torch::Device& dev) {
  if (!dev.is_cuda()) return;
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(dev);
}

namespace {
std::string cpu_flags_and_model(std::string* model) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line)) {
    if (model && model->empty() && line.rfind("model name", 0) == 0) *model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = " " + line.substr(line.find(':') + 1) + " ";
  }
  return flags;
}
}  // namespace

bool bf16_fast(const torch::Device& dev, std::string* why) {
  if (dev.is_cuda()) {
    if (why) *why = "cuda";
    return true;
  }
  std::string flags = cpu_flags_and_model(nullptr);
  for (const char* f : {"amx_bf16", "avx512_bf16"})
    if (flags.find(std::string(" ") + f + " ") != std::string::npos) {
      if (why) *why = std::string("cpu has ") + f + " (oneDNN bf16 matmuls)";
      return true;
    }
  if (why) *why = "cpu lacks avx512_bf16 and amx_bf16, so bf16 matmuls would be emulated and slower than fp32";
  return false;
}

// bf16 on both: CUDA autocast defaults to fp16, which would need a gradient scaler.
void set_autocast(const torch::Device& dev, bool on) {
  const c10::DeviceType t = dev.is_cuda() ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  autocast_set_dtype(t, at::kBFloat16);
  autocast_enable(t, on);
}

void clear_autocast_cache() { at::autocast::clear_cache(); }

AutocastOff::AutocastOff(const torch::Tensor& like)
    : dev_(like.device()),
      was_on_(matmul_dtype(torch::empty({0}, like.options().dtype(torch::kFloat32))) != torch::kFloat32) {
  if (was_on_) set_autocast(dev_, false);
}

AutocastOff::~AutocastOff() {
  if (was_on_) set_autocast(dev_, true);
}

torch::ScalarType matmul_dtype(const torch::Tensor& like) {
  const c10::DeviceType t = like.is_cuda() ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  return autocast_enabled(t) ? autocast_dtype(t) : like.scalar_type();
}

namespace {
// The fused CPU kernel is attention()'s default on 1.13: faster at every measured size (bench_attention,
// docs/LOG.md), tested against the math path (tests/test_attention.cpp); the golden curves were
// re-recorded with it (2026-12-03, session 9).
constexpr bool kFusedAttentionDefault = true;
// SLMLAB_ATTENTION=fused|math overrides the default for a process (benchmarks, golden comparisons).
bool initial_fused_attention() {
  const char* e = std::getenv("SLMLAB_ATTENTION");
  if (!e || !*e) return kFusedAttentionDefault;
  const std::string v = e;
  SLM_CHECK(v == "fused" || v == "math", "SLMLAB_ATTENTION='", v, "' is not a choice; use fused or math, or unset it");
  return v == "fused";
}
std::atomic<int> g_fused_attention{-1};  // -1: not read yet (read at first use, so a bad value fails in one line)
}  // namespace

std::string attention_path() {
#if SLM_TORCH_AT_LEAST(2, 0)
  return "sdpa";
#else
  return fused_attention() ? "fused" : "math";
#endif
}

bool fused_attention() {
  int v = g_fused_attention.load();
  if (v < 0) {
    v = initial_fused_attention() ? 1 : 0;
    g_fused_attention.store(v);
  }
  return v == 1;
}
void set_fused_attention(bool on) { g_fused_attention.store(on ? 1 : 0); }

torch::Tensor attention_math(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& allowed) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  // Scores in fp32 (bf16 softmax loses too much), probabilities back in v's dtype for the second matmul.
  auto scores = torch::matmul(q, k.transpose(-2, -1)).to(torch::kFloat32).mul_(scale);
  torch::Tensor mask = allowed;
  if (!mask.defined()) {
    const int64_t T = q.size(-2);
    mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).tril();
  }
  scores.masked_fill_(mask.logical_not(), -std::numeric_limits<float>::infinity());
  auto p = torch::softmax(scores, -1).to(v.scalar_type());
  return torch::matmul(p, v);
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& allowed) {
#if SLM_TORCH_AT_LEAST(2, 0)
  // Default scale 1/sqrt(D); a bool mask is true where a query may attend, as `allowed` is.
  if (!allowed.defined()) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
  return at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
#else
  // 1.13 has no public fused kernel: ours on the CPU, else the math path.
  if (fused_attention() && attention_fused_cpu_supports(q, k, allowed)) return attention_fused_cpu(q, k, v, allowed);
  return attention_math(q, k, v, allowed);
#endif
}

double peak_flops(const torch::Device& dev, torch::ScalarType dtype, bool force_measure) {
  std::string model;
  cpu_flags_and_model(&model);
  const int threads = at::get_num_threads();
  std::string key = (dev.is_cuda() ? std::string("cuda") : model) + "|" + std::to_string(threads) + "|" +
                    c10::toString(dtype) + "|" + torch_version();
  const char* home = std::getenv("HOME");
  std::string cache = std::string(home ? home : "/tmp") + "/.cache/slmlab/peak.json";
  nlohmann::json j = nlohmann::json::object();
  if (fs::exists(cache)) {
    try {
      j = nlohmann::json::parse(fs::read_file(cache));
    } catch (...) {
      j = nlohmann::json::object();  // a damaged cache is re-measured, not trusted
    }
    if (!force_measure && j.contains(key)) return j[key].get<double>();
  }
  // GEMM probe: square matmuls at a size that saturates the device, best of several timed runs.
  torch::NoGradGuard ng;
  const int64_t n = dev.is_cuda() ? 8192 : 1024;
  // Operands from a private generator: the global one belongs to the run (model init, CBP), and a
  // probe that runs only when the cache misses would otherwise shift it, so that a run's checkpointed
  // RNG state depended on whether another process had measured the peak first.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/0);
  auto opts = torch::TensorOptions().dtype(dtype);
  auto a = torch::randn({n, n}, gen, opts).to(dev), b = torch::randn({n, n}, gen, opts).to(dev);
  for (int i = 0; i < 3; ++i) torch::matmul(a, b);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const int iters = dev.is_cuda() ? 20 : 4;
    if (dev.is_cuda()) torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) torch::matmul(a, b);
    if (dev.is_cuda()) torch::cuda::synchronize();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n * iters / s);
  }
  j[key] = best;
  try {
    fs::mkdirs(fs::parent(cache));
    fs::write_atomic(cache, j.dump(1));
  } catch (const Error&) {
    // an unwritable cache only costs a re-measurement next time
  }
  return best;
}

bool fused_adamw_available(const torch::Device& dev) { return SLM_TORCH_AT_LEAST(2, 0) && dev.is_cuda(); }

void fused_adamw_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  const torch::Tensor& step, double lr, double beta1, double beta2, double weight_decay, double eps) {
  if (params.empty()) return;
  SLM_CHECK(fused_adamw_available(params[0].device()), "[optim] fused AdamW needs CUDA tensors and LibTorch >= 2.0 (this is ",
            torch_version(), ", tensors on ", params[0].device().str(), "); check fused_adamw_available first");
#if SLM_TORCH_AT_LEAST(2, 0)
  // The kernel reads one float32 step per tensor and does not advance it; one shared tensor serves all.
  const std::vector<at::Tensor> steps(params.size(), step);
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay,
                    eps, /*amsgrad=*/false, /*maximize=*/false);
#endif
}

void foreach_lerp_(at::TensorList self, at::TensorList end, double weight) {
  if (self.empty()) return;
#if SLM_TORCH_AT_LEAST(2, 0)
  at::_foreach_lerp_(self, end, weight);
#else
  SLM_CHECK(self.size() == end.size(), "[device] foreach_lerp_ got ", self.size(), " tensors and ", end.size(), " ends; pass one end per tensor");
  for (size_t i = 0; i < self.size(); ++i) self[i].lerp_(end[i], weight);
#endif
}

void exec_with_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;  // the user's choice, or already re-executed
  if (::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("OMP_WAIT_POLICY");  // exec failed: this process keeps the policy libgomp loaded with
}

int64_t peak_rss_bytes() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

namespace {

// A number from a /proc or /sys file ("MemAvailable:  123 kB" style when `key` is given); -1 if absent.
double read_number(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!key.empty() && line.rfind(key, 0) != 0) continue;
    std::istringstream is(key.empty() ? line : line.substr(key.size()));
    double v = -1;
    std::string unit;
    if (!(is >> v)) return -1;  // "max": no limit
    is >> unit;
    return unit == "kB" ? v * 1024 : v;
  }
  return -1;
}

}  // namespace

double memory_available_bytes(const torch::Device& dev) {
  if (!dev.is_cpu()) return 0;
  double avail = read_number("/proc/meminfo", "MemAvailable:");
  const double limit = read_number("/sys/fs/cgroup/memory.max", ""), used = read_number("/sys/fs/cgroup/memory.current", "");
  if (limit > 0 && used >= 0) avail = avail > 0 ? std::min(avail, limit - used) : limit - used;
  return std::max(0.0, avail);
}

double attention_score_bytes() {
#if SLM_TORCH_AT_LEAST(2, 0)
  return 0;
#else
  return fused_attention() ? 0 : 8;
#endif
}

}  // namespace slm::device
