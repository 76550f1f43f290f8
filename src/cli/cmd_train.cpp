// slmlab train | export | bench peak
#include <cstdio>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fs.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/trainer.h"

namespace slm::cli {

int cmd_train(const Args& a) {
  TrainOptions o;
  o.data_dir = a.str("data");
  o.substrate = a.str("substrate");
  o.out_dir = a.str("out");
  o.sets = a.list("set");
  o.modules = a.list("module");
  o.resume = a.flag("resume");
  o.dry_run = a.flag("dry-run");
  o.quiet = a.flag("quiet");
  o.keep_checkpoints = a.flag("keep-checkpoints");
  const std::string reduce = a.str("grad-reduce");
  SLM_CHECK(reduce == "overlap" || reduce == "after", "train: --grad-reduce '", reduce,
            "' is not a choice; use overlap or after");
  o.overlap_grad_reduce = reduce == "overlap";
  o.memory_budget_gib = a.f64("memory-budget");
  SLM_CHECK(o.memory_budget_gib <= 1e9, "train: --memory-budget ", a.str("memory-budget"),
            " GiB is beyond any machine; give at most 1e9, or 0 for the machine's available memory");
  o.check_replicas = a.flag("check-replicas");
  o.profile = a.flag("profile");
  if (a.has("threads")) o.sets.push_back("threads=" + std::to_string(a.i64("threads")));
  // --nproc N: this process becomes the launcher of N ranks (a dry run measures in one process).
  const int64_t nproc = a.i64("nproc");
  SLM_CHECK(nproc >= 1 && nproc <= 256, "train: --nproc ", nproc, " is outside [1, 256]");
  if (nproc > 1 && !o.dry_run) return dist::launch_local(static_cast<int>(nproc));
  return train(o);
}

int cmd_export(const Args& a) {
  SLM_CHECK(a.str("format") == "safetensors", "export: --format ", a.str("format"), " is not supported; use safetensors");
  const std::string run = a.positional[0];
  const std::string out = a.has("out") ? a.str("out") : fs::join(run, "model.safetensors");
  export_safetensors(run, a.str("checkpoint"), out);
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

int cmd_bench_peak(const Args& a) {
  int64_t t = a.i64("threads");
  SLM_CHECK(t >= 0 && t <= 1024, "bench peak: --threads ", t, " is outside [0, 1024]");
  if (t > 0) at::set_num_threads(static_cast<int>(t));
  const torch::Device dev = device::resolve(device::cuda_available() ? "cuda" : "cpu");
  std::printf("%s\n", device::describe().c_str());
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    double p = device::peak_flops(dev, dt, /*force_measure=*/true);
    std::printf("peak %-8s %8.1f GFLOP/s\n", c10::toString(dt), p / 1e9);
  }
  std::string why;
  const bool fast = device::bf16_fast(dev, &why);
  std::printf("bf16 fast: %s (%s)\n", fast ? "yes" : "no", why.c_str());
  return 0;
}

}  // namespace slm::cli
