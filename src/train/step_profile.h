// `slmlab train --profile`: where a training step's time goes. Phase timers (data, forward, backward,
// clip, Muon's Newton-Schulz and the rest of Muon, AdamW, host reads) per step, an op-level profile
// of the last steps through LibTorch's autograd profiler, and the machine line a figure needs to be
// judged later (BLAS, core model, thread counts, load average at start).
// Phase times are host wall-clock: exact on the CPU (every op is synchronous), on a GPU only the
// host's side of the queue.
#pragma once
#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace slm::prof {

// Seconds per phase, accumulated; a null Phases* turns the timers off.
struct Phases {
  std::map<std::string, double> s;
  void add(const std::string& phase, double seconds) { s[phase] += seconds; }
};

// Times its scope into phases->s[name] (nothing when phases is null).
class Scope {
 public:
  Scope(Phases* phases, const char* name) : p_(phases), name_(name) {
    if (p_) t0_ = std::chrono::steady_clock::now();
  }
  ~Scope() {
    if (p_) p_->add(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Phases* p_;
  const char* name_;
  std::chrono::steady_clock::time_point t0_;
};

// "machine: AMD EPYC ... (avx512_bf16), 2 cores; libtorch 1.13.1; BLAS open (OpenBLAS), MKL-DNN on;
// threads 2 intra-op, 2 inter-op; OMP_NUM_THREADS=unset OMP_WAIT_POLICY=unset; load 1.63 4.18 5.74"
std::string machine_line();

// One op name's totals over the profiled steps: calls, self time (its own, children excluded) and
// total time, microseconds.
struct OpRow {
  std::string name;
  int64_t calls = 0;
  double self_us = 0, total_us = 0;
};

// LibTorch's (legacy, CPU) autograd profiler over a span of code: start(), the code, stop() returns
// the ops by self time, largest first. One at a time per process.
void op_profile_start();
std::vector<OpRow> op_profile_stop();

// The report: phase medians per step (ms and share of the step), then the top `top` ops of the
// profiled steps (profiled_ms: their wall time in all, the profiler's overhead included).
std::string format_report(const std::vector<std::map<std::string, double>>& steps, const std::vector<OpRow>& ops,
                          int profiled_steps, double profiled_ms, int top);

}  // namespace slm::prof
