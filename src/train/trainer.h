// slmlab train: one model, one data set, one substrate, one run folder.
// RUN_DIR holds config.json (the resolved configuration), metrics.jsonl (one record per step and per
// eval), ckpt_latest.safetensors and ckpt_best.safetensors (atomic, checksummed; train/checkpoint.h),
// with --keep-checkpoints ckpt_stepNNNNNN.safetensors weights-only snapshots, summary.json, and, when
// train fails with an error, failure.txt (that error's line: what a runner records as the reason).
// The mainline is train() in trainer.cpp; the parts it calls live beside it: run_folder.h (checks,
// lock, metrics log), param_groups.h, schedule.h (LR schedule, gradient clipping), checkpoint.h,
// dry_run.h, and Substrate::model_config.
#pragma once
#include <string>
#include <vector>

namespace slm {

struct TrainOptions {
  std::string data_dir;
  std::string substrate = "cpu-tiny";
  std::string out_dir;
  std::vector<std::string> sets;     // "key=value" substrate overrides
  std::vector<std::string> modules;  // catalog modules (none in this build)
  bool resume = false;               // continue from RUN_DIR's latest checkpoint if any
  bool dry_run = false;              // validate, build, time one micro-batch, print the ETA, exit
  bool quiet = false;                // no per-step line
  bool keep_checkpoints = false;     // also keep a weights-only snapshot at every checkpoint step
  bool overlap_grad_reduce = true;   // data parallel: send gradient buckets during backward
  double memory_budget_gib = 0;      // > 0: bytes a rank may use, in GiB, instead of the machine's available memory
  bool check_replicas = false;       // data parallel: after every step, fail unless every rank's
                                     // parameters and buffers are bitwise equal (dist::check_replicas)
  bool profile = false;              // time each step's phases, profile the last steps' ops, print both
                                     // with the machine line at the end (train/step_profile.h)
};

// Exit status: 0 done, 3 INVALID (non-finite loss), kPreempted when SIGTERM or SIGINT stopped it
// (after the step in flight, with its checkpoint written: the same command resumes). Bad input
// throws slm::Error before any step.
constexpr int kPreempted = 143;  // 128 + SIGTERM, as a shell reports a terminated process
int train(const TrainOptions& opt);

}  // namespace slm
