#include "train/run_folder.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"

namespace slm {

using json = nlohmann::ordered_json;

std::string RunFolder::config() const { return fs::join(dir, "config.json"); }
std::string RunFolder::metrics() const { return fs::join(dir, "metrics.jsonl"); }
std::string RunFolder::summary() const { return fs::join(dir, "summary.json"); }
std::string RunFolder::latest() const { return fs::join(dir, "ckpt_latest.safetensors"); }
std::string RunFolder::best() const { return fs::join(dir, "ckpt_best.safetensors"); }

void prepare_run_folder(const RunFolder& f, const json& cfg, bool resume) {
  check_run_folder(f, cfg, resume);
  fs::mkdirs(f.dir);
}

void check_run_folder(const RunFolder& f, const json& cfg, bool resume) {
  const std::string& dir = f.dir;
  if (!fs::exists(f.config())) {
    SLM_CHECK(!fs::exists(dir) || fs::is_dir(dir), "train: --out ", dir, " is not a directory");
    return;
  }
  SLM_CHECK(resume, "train: ", dir, " already holds a run; pass --resume to continue it or choose another --out");
  json old = json::parse(fs::read_file(f.config()));
  SLM_CHECK(old["data"]["tokenizer_hash"] == cfg["data"]["tokenizer_hash"], "train: ", dir, " was trained with tokenizer ",
            old["data"]["tokenizer_hash"].get<std::string>(), " but ", cfg["data"]["dir"].get<std::string>(),
            " has tokenizer ", cfg["data"]["tokenizer_hash"].get<std::string>(), "; resume on the run's own data set (",
            old["data"]["dir"].get<std::string>(), ")");
  SLM_CHECK(old["data"]["fingerprint"] == cfg["data"]["fingerprint"], "train: ", dir, " was trained on data ",
            old["data"]["fingerprint"].get<std::string>(), " but ", cfg["data"]["dir"].get<std::string>(), " is ",
            cfg["data"]["fingerprint"].get<std::string>(), "; resume on the run's own data set");
  SLM_CHECK(old["model"]["seed"] == cfg["model"]["seed"], "train: ", dir, " is the seed ", old["model"]["seed"].dump(),
            " replica; resuming it with seed ", cfg["model"]["seed"].dump(), " would mix two runs; use a new --out");
  SLM_CHECK(old["modules"] == cfg["modules"], "train: ", dir, " was trained with modules ", old["modules"].dump(),
            "; resuming it with ", cfg["modules"].dump(), " would mix two experiments; use a new --out");
  SLM_CHECK(old["substrate_id"] == cfg["substrate_id"], "train: --resume with a different configuration (substrate ",
            old["substrate_id"].get<std::string>(), " vs ", cfg["substrate_id"].get<std::string>(),
            "); use a new --out for a new configuration");
  // The attention kernels round differently, so a resume on another one would not be bitwise the run
  // (a folder from before the key was recorded trained with the math path).
  const std::string old_attn = old.value("attention", std::string("math")), attn = cfg.value("attention", old_attn);
  SLM_CHECK(old_attn == attn, "train: ", dir, " was trained with attention ", old_attn, " and this process computes ",
            attn, "; resume it with SLMLAB_ATTENTION=", old_attn, " or start a new --out");
  // config.json is rewritten at every start, so it tells the world size of the latest checkpoint's run.
  const int old_world = old.value("world_size", 1), world = cfg.value("world_size", 1);
  SLM_CHECK(!fs::exists(f.latest()) || old_world == world, "train: ", f.latest(), " was written by a run with ", old_world,
            " data-parallel rank(s) and this one has ", world, "; resume it with --nproc ", old_world,
            " (or WORLD_SIZE=", old_world, ") or start a new --out");
}

RunLock::RunLock(const std::string& dir) {
  const std::string path = fs::join(dir, ".lock");
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SLM_CHECK(fd_ >= 0, "train: cannot open ", path, ": ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    fail("train: ", dir, " is in use by another slmlab train (pid ", n > 0 ? std::string(buf, n) : "?",
         "); wait for it or stop it first");
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // the pid is only for the message above; the lock itself is what matters
  }
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t remove_stale_temp_files(const std::string& dir) {
  int64_t removed = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.rfind(".tmp.");
    if (at == std::string::npos || at + 5 >= name.size() || name.size() - at - 5 > 9 ||
        name.find_first_not_of("0123456789", at + 5) != std::string::npos || !e.is_regular_file(ec))
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name.substr(at + 5)));
    // The lock keeps other trainers out; a live pid that is not ours may still be a reader's export.
    if (pid != ::getpid() && pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH)) continue;
    const auto bytes = e.file_size(ec);
    if (::unlink(e.path().c_str()) == 0) {
      ++removed;
      std::printf("removed %s (%lld bytes): a half-written file of a run that was killed\n", e.path().c_str(),
                  ec ? -1LL : static_cast<long long>(bytes));
    }
  }
  return removed;
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::open(const std::string& path, int64_t keep_through) {
  std::string kept;
  if (keep_through >= 0 && fs::exists(path)) {
    // Records up to the checkpoint's step are the curve so far: every step must be there. Later
    // ones (and a line torn by a kill, which can only be the last) are dropped: they will be re-made.
    std::istringstream in(fs::read_file(path));
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    std::vector<bool> seen(static_cast<size_t>(keep_through) + 1, false);
    for (size_t i = 0; i < lines.size(); ++i) {
      json j;
      try {
        j = json::parse(lines[i]);
      } catch (const json::exception&) {
        SLM_CHECK(i + 1 == lines.size(), "train: ", path, " line ", i + 1,
                  " is not JSON; the curve is damaged: re-run from scratch with a new --out");
        continue;
      }
      const int64_t step = j.is_object() ? j.value("step", int64_t(-1)) : -1;
      if (step > keep_through) continue;
      if (step >= 0) seen[static_cast<size_t>(step)] = true;
      kept += lines[i] + "\n";
    }
    for (int64_t s = 1; s <= keep_through; ++s) {
      if (seen[static_cast<size_t>(s)]) continue;
      int64_t e = s;
      while (e < keep_through && !seen[static_cast<size_t>(e + 1)]) ++e;
      fail("train: ", path, " lacks the records of steps ", s, e > s ? ".." + std::to_string(e) : std::string(),
           " (the checkpoint is at step ", keep_through,
           "); resuming would leave a gap in the curve: re-run from scratch with a new --out");
    }
  }
  fs::write_atomic(path, kept);
  f_ = std::fopen(path.c_str(), "a");
  SLM_CHECK(f_, "cannot append to ", path);
}

void MetricsLog::write(const json& record) {
  if (!f_) return;
  std::string s = record.dump() + "\n";
  std::fwrite(s.data(), 1, s.size(), f_);
  std::fflush(f_);
}

}  // namespace slm
