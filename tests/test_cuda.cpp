// The CUDA path against the CPU: the cpu-tiny model's forward and loss, optimizer steps (the fused
// AdamW kernel where LibTorch has it), bf16 autocast, fused attention. Each CUDA test skips itself
// when device::cuda_available() is false; the device-independent checks at the end run everywhere.
//
// Tolerances, fp32 unless said: loss 1e-4 relative, hidden states 2e-4 (abs + rel), AdamW parameters
// 1e-5, Muon parameters 5% of their movement (CUDA Muon runs Newton-Schulz in bf16 on purpose),
// attention 1e-4 against an fp64 reference (bf16 inputs: 3e-2).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "common/device.h"
#include "common/error.h"
#include "model/fused_ce.h"
#include "model/gpt.h"
#include "train/optim.h"
#include "test_model_util.h"

using namespace slm;

namespace {

// Skips every test of the fixture without a CUDA device, saying why.
class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!device::cuda_available())
      GTEST_SKIP() << "no CUDA device (device::cuda_available() is false; " << device::describe()
                   << "): CUDA test skipped";
    dev = device::resolve("cuda", 0);
  }
  torch::Device dev{torch::kCPU};
};

// cpu-tiny's geometry (4 x 128, 4 heads of 32, context 256) at the default vocabulary.
ModelConfig cpu_tiny() {
  ModelConfig c;
  c.vocab = 8192;
  c.n_layer = 4;
  c.d_model = 128;
  c.n_head = 4;
  c.head_dim = 32;
  c.context = 256;
  return c;
}

// Random weights everywhere (zero-initialized projections would make the blocks the identity).
void randomize(GPT& m) { slm::test::fill_normal(*m, 7, 0.05); }

// A copy of `src` (built from the same config) on `dev`.
GPT copy_to(GPT& src, const ModelConfig& c, const torch::Device& dev) {
  GPT m(c);
  {
    torch::NoGradGuard ng;
    auto from = src->named_parameters();
    for (auto& p : m->named_parameters()) p.value().copy_(from[p.key()]);
  }
  m->to(dev);
  return m;
}

// Rows of token ids and their document ids: two documents per row, the boundary varying by row.
struct Batch {
  torch::Tensor idx, targets, doc;
};
Batch batch(int64_t B, int64_t T, int64_t V) {
  torch::manual_seed(3);
  Batch b;
  b.idx = torch::randint(0, V, {B, T}, torch::kInt64);
  b.targets = torch::randint(0, V, {B, T}, torch::kInt64);
  b.doc = torch::zeros({B, T}, torch::kInt64);
  for (int64_t r = 0; r < B; ++r) b.doc[r].slice(0, T / 3 + 17 * r).fill_(1);
  return b;
}

TEST_F(Cuda, CpuTinyForwardAndLossMatchCpu) {
  const ModelConfig c = cpu_tiny();
  GPT cpu(c);
  randomize(cpu);
  GPT gpu = copy_to(cpu, c, dev);
  const Batch b = batch(2, c.context, c.vocab);
  torch::NoGradGuard ng;
  const torch::Tensor h_cpu = cpu->hidden(b.idx, b.doc);
  const torch::Tensor h_gpu = gpu->hidden(b.idx.to(dev), b.doc.to(dev)).cpu();
  EXPECT_TRUE(torch::allclose(h_gpu, h_cpu, 2e-4, 2e-4)) << "max |diff| " << (h_gpu - h_cpu).abs().max().item<double>();
  const double l_cpu = cpu->loss(b.idx, b.targets, b.doc).item<double>();
  const double l_gpu = gpu->loss(b.idx.to(dev), b.targets.to(dev), b.doc.to(dev)).item<double>();
  EXPECT_NEAR(l_gpu, l_cpu, 1e-4 * l_cpu);
  // The evaluation path (per-token nats) too.
  const torch::Tensor n_cpu = cpu->token_nats(b.idx, b.targets, b.doc);
  const torch::Tensor n_gpu = gpu->token_nats(b.idx.to(dev), b.targets.to(dev), b.doc.to(dev)).cpu();
  EXPECT_TRUE(torch::allclose(n_gpu, n_cpu, 1e-4, 1e-4)) << "max |diff| " << (n_gpu - n_cpu).abs().max().item<double>();
}

TEST_F(Cuda, CpuTinyGradientsMatchCpu) {
  const ModelConfig c = cpu_tiny();
  GPT cpu(c);
  randomize(cpu);
  GPT gpu = copy_to(cpu, c, dev);
  const Batch b = batch(2, c.context, c.vocab);
  cpu->loss(b.idx, b.targets, b.doc).backward();
  gpu->loss(b.idx.to(dev), b.targets.to(dev), b.doc.to(dev)).backward();
  auto g_gpu = gpu->named_parameters();
  for (auto& p : cpu->named_parameters()) {
    const torch::Tensor a = p.value().grad(), g = g_gpu[p.key()].grad().cpu();
    const double scale = a.abs().max().item<double>() + 1e-12;
    EXPECT_LE((g - a).abs().max().item<double>(), 1e-3 * scale) << p.key();
  }
}

// One muon matrix, two adamw groups (one with decay); grads fixed per step.
struct Params {
  torch::Tensor w, e, b;
  std::vector<ParamGroup> groups() const {
    return {ParamGroup{"matrix", "muon", 0.02, 0.01, {"w"}, {w}}, ParamGroup{"embed", "adamw", 0.05, 0.1, {"e"}, {e}},
            ParamGroup{"scalar", "adamw", 0.01, 0.0, {"b"}, {b}}};
  }
};
Params params_on(const torch::Device& dev) {
  torch::manual_seed(5);
  auto leaf = [&](std::vector<int64_t> s) { return torch::randn(s).to(dev).requires_grad_(); };
  return {leaf({48, 32}), leaf({64, 16}), leaf({16})};
}

// Runs `steps` optimizer steps on `dev` and returns the parameters and the state on the CPU.
std::map<std::string, torch::Tensor> run_steps(const torch::Device& dev, bool fused, int steps) {
  Params p = params_on(dev);
  OptimOptions oo;
  oo.fused = fused;
  Optimizer o(p.groups(), oo);
  torch::manual_seed(6);
  for (int t = 0; t < steps; ++t) {
    for (auto* x : {&p.w, &p.e, &p.b}) x->mutable_grad() = torch::randn(x->sizes()).to(dev);
    o.step(1.0 - 0.1 * t);
  }
  auto out = o.state();
  out["w"] = p.w.detach(), out["e"] = p.e.detach(), out["b"] = p.b.detach();
  for (auto& [k, v] : out) v = v.cpu();
  return out;
}

TEST_F(Cuda, OptimizerStepsMatchCpu) {
  const int steps = 5;
  const auto cpu = run_steps(torch::Device(torch::kCPU), true, steps);
  const auto fused = run_steps(dev, true, steps);
  const auto foreach = run_steps(dev, false, steps);
  std::printf("fused AdamW kernel: %s\n", device::fused_adamw_available(dev) ? "used" : "not in this LibTorch (foreach)");
  for (const auto* gpu : {&fused, &foreach}) {
    for (const char* k : {"e", "b", "e.exp_avg", "e.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq"})
      EXPECT_TRUE(torch::allclose(gpu->at(k), cpu.at(k), 1e-5, 1e-5))
          << k << " max |diff| " << (gpu->at(k) - cpu.at(k)).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(gpu->at("w.momentum"), cpu.at("w.momentum"), 1e-5, 1e-6));
    const torch::Tensor w0 = params_on(torch::Device(torch::kCPU)).w.detach();
    const double moved = (cpu.at("w") - w0).abs().max().item<double>();
    EXPECT_LE((gpu->at("w") - cpu.at("w")).abs().max().item<double>(), 0.05 * moved);
    EXPECT_EQ(gpu->at("step").item<int64_t>(), steps);
  }
}

TEST_F(Cuda, Bf16AutocastMakesBf16MatmulsAndAFiniteLoss) {
  const torch::Tensor a = torch::randn({64, 32}, torch::TensorOptions().device(dev));
  const torch::Tensor b = torch::randn({32, 16}, torch::TensorOptions().device(dev));
  EXPECT_EQ(device::matmul_dtype(a), torch::kFloat);
  device::set_autocast(dev, true);
  EXPECT_EQ(device::matmul_dtype(a), torch::kBFloat16);
  EXPECT_EQ(torch::matmul(a, b).scalar_type(), torch::kBFloat16);
  // CUDA autocast leaves the CPU's alone.
  EXPECT_EQ(device::matmul_dtype(a.cpu()), torch::kFloat);
  {
    device::AutocastOff off(a);
    EXPECT_EQ(torch::matmul(a, b).scalar_type(), torch::kFloat);
  }
  EXPECT_EQ(device::matmul_dtype(a), torch::kBFloat16);
  const ModelConfig c = cpu_tiny();
  GPT cpu(c);
  randomize(cpu);
  GPT gpu = copy_to(cpu, c, dev);
  const Batch bt = batch(2, c.context, c.vocab);
  const torch::Tensor loss = gpu->loss(bt.idx.to(dev), bt.targets.to(dev), bt.doc.to(dev));
  device::set_autocast(dev, false);
  device::clear_autocast_cache();
  EXPECT_EQ(device::matmul_dtype(a), torch::kFloat);
  const double l = loss.item<double>();
  EXPECT_TRUE(std::isfinite(l)) << l;
  // bf16 rounding, not a different model: near the fp32 loss.
  torch::NoGradGuard ng;
  EXPECT_NEAR(l, cpu->loss(bt.idx, bt.targets, bt.doc).item<double>(), 0.05);
}

// softmax(q k^T / sqrt(D) masked) v in fp64 on the CPU. allowed: (B, 1, T, T) bool or undefined (causal).
torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& allowed) {
  const auto q64 = q.cpu().to(torch::kDouble), k64 = k.cpu().to(torch::kDouble), v64 = v.cpu().to(torch::kDouble);
  const int64_t T = q.size(-2);
  torch::Tensor mask = allowed.defined() ? allowed.cpu() : torch::ones({T, T}, torch::kBool).tril();
  auto s = torch::matmul(q64, k64.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  s = s.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(s, -1), v64);
}

TEST_F(Cuda, FusedAttentionMatchesReference) {
  torch::manual_seed(9);
  const int64_t B = 2, H = 4, T = 64, D = 32;
  auto opts = torch::TensorOptions().device(dev);
  const torch::Tensor q = torch::randn({B, H, T, D}, opts), k = torch::randn({B, H, T, D}, opts),
                      v = torch::randn({B, H, T, D}, opts);
  const torch::Tensor doc = torch::cat({torch::zeros({B, 20}, torch::kInt64), torch::ones({B, T - 20}, torch::kInt64)}, 1);
  const torch::Tensor allowed = document_causal_mask(doc.to(dev));
  for (const torch::Tensor& mask : {torch::Tensor(), allowed}) {
    const std::string what = mask.defined() ? "document mask" : "causal";
    const torch::Tensor ref = attention_reference(q, k, v, mask);
    const torch::Tensor out = device::attention(q, k, v, mask).cpu().to(torch::kDouble);
    EXPECT_TRUE(torch::allclose(out, ref, 1e-4, 1e-4)) << what << " max |diff| " << (out - ref).abs().max().item<double>();
    const auto bf = [](const torch::Tensor& x) { return x.to(torch::kBFloat16); };
    const torch::Tensor out16 = device::attention(bf(q), bf(k), bf(v), mask).cpu().to(torch::kDouble);
    const torch::Tensor ref16 = attention_reference(bf(q), bf(k), bf(v), mask);
    EXPECT_TRUE(torch::allclose(out16, ref16, 3e-2, 3e-2))
        << what << " bf16 max |diff| " << (out16 - ref16).abs().max().item<double>();
  }
}

TEST_F(Cuda, ResolveTakesTheLocalRanksDeviceAndRefusesOneTooMany) {
  const int n = device::cuda_device_count();
  ASSERT_GE(n, 1);
  const torch::Device last = device::resolve("cuda", n - 1);
  EXPECT_EQ(last, torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(n - 1)));
  // It became the current device: a tensor made without an index lands there.
  EXPECT_EQ(torch::empty({1}, torch::TensorOptions().device(torch::kCUDA)).device(), last);
  try {
    device::resolve("cuda", n);
    ADD_FAILURE() << "no error for local rank " << n;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("local rank " + std::to_string(n)), std::string::npos) << e.what();
  }
  device::resolve("cuda", 0);
}

// ---- device-independent: these run on every machine.

TEST(Device, ResolveCpuForAnyRankAndRefusesUnknownNames) {
  EXPECT_EQ(device::resolve("cpu"), torch::Device(torch::kCPU));
  EXPECT_EQ(device::resolve("cpu", 3), torch::Device(torch::kCPU));
  EXPECT_THROW(device::resolve("gpu", 0), Error);
  if (!device::cuda_available()) {
    EXPECT_EQ(device::cuda_device_count(), 0);
    try {
      device::resolve("cuda", 0);
      ADD_FAILURE() << "cuda resolved without CUDA";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("device=cpu"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(device::fused_adamw_available(torch::Device(torch::kCPU)));
}

// The tensor-op row kernel (what the loss runs on CUDA) against the CPU row kernel, on the CPU.
TEST(FusedCE, TensorOpRowsMatchTheCpuRowKernel) {
  torch::manual_seed(4);
  const int64_t n = 37, V = 501;
  for (double cap : {15.0, 0.0}) {
    for (double scale : {0.0, 1.0 / n}) {
      const torch::Tensor z0 = torch::randn({n, V}) * 6;
      const torch::Tensor y = torch::randint(0, V, {n}, torch::kInt64);
      torch::Tensor a = z0.clone(), b = z0.clone();
      torch::Tensor nats_a = torch::empty({n});
      softcap_ce_rows(a.data_ptr<float>(), n, V, y.data_ptr<int64_t>(), cap, scale, nats_a.data_ptr<float>());
      const torch::Tensor nats_b = softcap_ce_rows_ops(b, y, cap, scale);
      EXPECT_TRUE(torch::allclose(nats_b, nats_a, 1e-5, 1e-5)) << "cap " << cap;
      if (scale != 0) EXPECT_TRUE(torch::allclose(b, a, 1e-5, 1e-7)) << "cap " << cap << " grad";
      else EXPECT_TRUE(torch::equal(b, z0)) << "z is left alone without a gradient";
    }
  }
}

}  // namespace

// The peak probe runs only when its cache misses, so whether it runs depends on what other processes
// did before; it must not touch the run's global generator, or a run's checkpointed RNG state (and
// every later draw: CBP's re-initialized units) would depend on that (issue 18: CbpResume failed
// once under load with rng.cpu differing).
TEST(Device, PeakProbeLeavesTheGlobalGeneratorAlone) {
  torch::manual_seed(5);
  at::Generator global = at::detail::getDefaultCPUGenerator();
  const torch::Tensor before = global.get_state();
  (void)device::peak_flops(torch::Device(torch::kCPU), torch::kFloat32, /*force_measure=*/true);
  EXPECT_TRUE(torch::equal(global.get_state(), before));
}
