// The run folder a training run writes (train/trainer.h lists its files): the refusal to mix two
// runs in one folder, the lock that keeps one writer, and the metrics log.
#pragma once
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace slm {

struct RunFolder {
  std::string dir;
  std::string config() const;   // config.json
  std::string metrics() const;  // metrics.jsonl
  std::string summary() const;  // summary.json
  std::string latest() const;   // ckpt_latest.safetensors
  std::string best() const;     // ckpt_best.safetensors
};

// Makes `f.dir` ready for a run whose config.json is `cfg`: a new folder is created; a folder that
// holds a run is refused unless `resume`, and then unless it is the same run (tokenizer, data,
// seed, modules, substrate id; and the world size when a checkpoint exists). One-line errors.
void prepare_run_folder(const RunFolder& f, const nlohmann::ordered_json& cfg, bool resume);
// The same checks, writing nothing: run before anything is built, so a wrong folder fails first.
void check_run_folder(const RunFolder& f, const nlohmann::ordered_json& cfg, bool resume);

// One writer per run folder: a second trainer (a restarted runner, a stray command) is refused
// instead of interleaving checkpoints. An flock on RUN_DIR/.lock holding the pid; it dies with the
// process, kill -9 included.
class RunLock {
 public:
  explicit RunLock(const std::string& dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

// Removes the "<file>.tmp.<pid>" files that atomic writes of killed processes left in `dir` (pid
// not alive, or this process's own); call it holding the RunLock. Returns how many it removed.
int64_t remove_stale_temp_files(const std::string& dir);

// metrics.jsonl: one JSON record per line, flushed as written.
class MetricsLog {
 public:
  MetricsLog() = default;
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // Keeps records up to step `keep_through` (a resume; -1 keeps none), dropping later ones and a
  // torn last line, then appends. A resume whose records lack a step in 1..keep_through, or hold a
  // torn line before the last, is refused (the curve would have a gap). Unopened (a data-parallel rank other than 0), write does nothing.
  void open(const std::string& path, int64_t keep_through);
  void write(const nlohmann::ordered_json& record);

 private:
  FILE* f_ = nullptr;
};

}  // namespace slm
