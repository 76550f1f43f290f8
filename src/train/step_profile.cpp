#include "train/step_profile.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>
#include <sstream>
#include <unordered_map>

#include "common/device.h"

namespace slm::prof {

namespace {

std::string first_line_with(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return line;
  return "";
}

// The BLAS and LAPACK shared objects this process has mapped, resolved through Debian's alternatives
// symlinks (libblas.so.3 may be OpenBLAS, BLIS or the slow reference BLAS: the likeliest reason one
// machine's figures are 3x another's).
std::string mapped_blas() {
  std::ifstream f("/proc/self/maps");
  std::string line;
  std::set<std::string> libs;
  while (std::getline(f, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string base = std::filesystem::path(path).filename().string();
    if (base.find("blas") == std::string::npos && base.find("blis") == std::string::npos &&
        base.find("mkl") == std::string::npos)
      continue;
    std::error_code ec;
    const auto real = std::filesystem::canonical(path, ec);
    libs.insert(ec ? path : real.string());
  }
  std::string out;
  for (auto& l : libs) out += (out.empty() ? "" : ", ") + l;
  return out.empty() ? "none mapped" : out;
}

std::string env_or_unset(const char* name) {
  const char* v = std::getenv(name);
  return std::string(name) + "=" + (v ? v : "unset");
}

}  // namespace

std::string machine_line() {
  std::string model = first_line_with("/proc/cpuinfo", "model name");
  if (auto c = model.find(':'); c != std::string::npos) model = model.substr(c + 2);
  const std::string flags = first_line_with("/proc/cpuinfo", "flags");
  std::string isa;
  for (const char* f : {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    if (flags.find(std::string(" ") + f) != std::string::npos) isa += (isa.empty() ? "" : " ") + std::string(f);
  std::string cfg = at::show_config(), blas_info = "?";
  if (auto p = cfg.find("BLAS_INFO="); p != std::string::npos) blas_info = cfg.substr(p + 10, cfg.find_first_of(", \n", p) - p - 10);
  std::string load;
  {
    std::ifstream f("/proc/loadavg");
    std::string a, b, c;
    f >> a >> b >> c;
    load = a + " " + b + " " + c;
  }
  std::ostringstream os;
  os << "machine: " << (model.empty() ? "unknown cpu" : model) << " (" << isa << "), "
     << std::thread::hardware_concurrency() << " cpus; " << device::describe() << "; BLAS_INFO=" << blas_info
     << " mapped " << mapped_blas() << "; mkldnn " << (at::hasMKLDNN() ? "on" : "off") << "; threads "
     << at::get_num_threads() << " intra-op, " << at::get_num_interop_threads() << " inter-op; "
     << env_or_unset("OMP_NUM_THREADS") << " " << env_or_unset("OMP_WAIT_POLICY") << " "
     << env_or_unset("OPENBLAS_NUM_THREADS") << "; load average at start " << load;
  return os.str();
}

void op_profile_start() {
  using torch::profiler::impl::ProfilerConfig;
  using torch::profiler::impl::ProfilerState;
  torch::autograd::profiler::enableProfilerLegacy(ProfilerConfig(ProfilerState::CPU));
}

std::vector<OpRow> op_profile_stop() {
  using torch::autograd::profiler::EventKind;
  using torch::autograd::profiler::LegacyEvent;
  auto lists = torch::autograd::profiler::disableProfilerLegacy();
  std::unordered_map<std::string, OpRow> rows;
  for (auto& events : lists) {
    // Push and pop nest per thread: an op's self time is its span less its children's spans.
    struct Open {
      const LegacyEvent* ev;
      double child_us;
    };
    std::vector<Open> stack;
    for (auto& e : events) {
      if (e.kind() == EventKind::PushRange) {
        stack.push_back({&e, 0.0});
      } else if (e.kind() == EventKind::PopRange && !stack.empty()) {
        const Open o = stack.back();
        stack.pop_back();
        const double span = o.ev->cpuElapsedUs(e);
        OpRow& r = rows[o.ev->name()];
        r.name = o.ev->name();
        r.calls += 1;
        r.total_us += span;
        r.self_us += span - o.child_us;
        if (!stack.empty()) stack.back().child_us += span;
      }
    }
  }
  std::vector<OpRow> out;
  for (auto& [k, r] : rows) out.push_back(r);
  std::sort(out.begin(), out.end(), [](const OpRow& a, const OpRow& b) { return a.self_us > b.self_us; });
  return out;
}

std::string format_report(const std::vector<std::map<std::string, double>>& steps, const std::vector<OpRow>& ops,
                          int profiled_steps, double profiled_ms, int top) {
  std::ostringstream os;
  char buf[256];
  if (!steps.empty()) {
    std::map<std::string, std::vector<double>> by;
    for (auto& s : steps)
      for (auto& [k, v] : s) by[k].push_back(v);
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    };
    const double step = by.count("step") ? median(by["step"]) : 0;
    std::snprintf(buf, sizeof buf, "phases (median of %zu steps, ms):\n", steps.size());
    os << buf;
    double named = 0;
    for (auto& [k, v] : by) {
      if (k == "step") continue;
      const double m = median(v);
      named += m;
      std::snprintf(buf, sizeof buf, "  %-16s %9.1f  %5.1f%%\n", k.c_str(), m, step > 0 ? 100 * m / step : 0.0);
      os << buf;
    }
    std::snprintf(buf, sizeof buf, "  %-16s %9.1f  %5.1f%%\n  %-16s %9.1f\n", "other", step - named,
                  step > 0 ? 100 * (step - named) / step : 0.0, "step", step);
    os << buf;
  }
  if (!ops.empty()) {
    double all = 0;
    for (auto& r : ops) all += r.self_us;
    std::snprintf(buf, sizeof buf,
                  "ops (autograd profiler over %d steps of %.1f ms wall each; per step: calls, self ms, total ms; share "
                  "of all self time):\n",
                  profiled_steps, profiled_ms / std::max(1, profiled_steps));
    os << buf;
    const double n = std::max(1, profiled_steps);
    for (int i = 0; i < top && i < static_cast<int>(ops.size()); ++i) {
      const OpRow& r = ops[i];
      std::snprintf(buf, sizeof buf, "  %-40s %7.0f calls %9.2f self %9.2f total %5.1f%%\n", r.name.substr(0, 40).c_str(),
                    r.calls / n, r.self_us / 1000 / n, r.total_us / 1000 / n, all > 0 ? 100 * r.self_us / all : 0.0);
      os << buf;
    }
  }
  return os.str();
}

}  // namespace slm::prof
