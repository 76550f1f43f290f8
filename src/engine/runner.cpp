#include "engine/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/format.h"
#include "common/fs.h"
#include "common/version.h"
#include "engine/ledger.h"
#include "engine/plan.h"
#include "engine/report.h"
#include "train/spike.h"

namespace slm::engine {

using json = nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

struct Run {
  std::string id, dir, experiment, phase;
  int64_t seed;
  const Experiment* exp;
};

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  SLM_CHECK(n > 0, "ablate: cannot find the slmlab binary (/proc/self/exe)");
  return std::string(buf, n);
}

// Reads what a finished (or killed) run left: summary numbers and every eval point.
RunRow ingest(RunRow row, std::vector<EvalPoint>& evals) {
  evals.clear();
  const std::string metrics = fs::join(row.run_dir, "metrics.jsonl");
  std::vector<std::pair<int64_t, int64_t>> spikes;  // (start, last high step) of each confirmed spike step
  if (fs::exists(metrics)) {
    std::ifstream in(metrics);
    std::string line;
    while (std::getline(in, line)) {
      try {
        auto j = json::parse(line);
        if (j.contains("val_bpb"))
          evals.push_back({j["step"].get<int64_t>(), j["val_bpb"].get<double>(), j.value("in_spike", false)});
        if (j.value("spike", false))
          spikes.push_back({j.value("spike_start", j["step"].get<int64_t>()), j["step"].get<int64_t>()});
      } catch (const json::exception&) {
      }
    }
  }
  // A spike confirms a few steps after it starts: an eval written in between is inside it too.
  const int64_t recovery = SpikeDetector().recovery;
  std::map<int64_t, bool> spike_at;
  for (auto& e : evals) {
    for (auto& [start, last] : spikes) e.in_spike |= e.step >= start && e.step <= last + recovery;
    spike_at[e.step] = e.in_spike;
  }
  const std::string summary = fs::join(row.run_dir, "summary.json");
  if (fs::exists(summary)) {
    auto s = json::parse(fs::read_file(summary));
    row.has_summary = true;
    row.substrate_id = s.value("substrate_id", "");
    row.data_fingerprint = s.value("data_fingerprint", "");
    auto num = [&](const char* k) { return s[k].is_number() ? s[k].get<double>() : NAN; };
    row.best_val_bpb = num("best_val_bpb");
    row.best_step = s.value("best_step", int64_t(-1));
    row.final_val_bpb = num("final_val_bpb");
    row.tokens_per_second = num("tokens_per_second");
    row.step_ms = num("step_ms");
    row.peak_rss_bytes = s.value("peak_rss_bytes", int64_t(0));
    row.best_in_spike = spike_at.count(row.best_step) && spike_at[row.best_step];
  }
  const std::string cfg = fs::join(row.run_dir, "config.json");
  if (fs::exists(cfg)) row.config_json = fs::read_file(cfg);
  return row;
}

std::string last_line(const std::string& path) {
  if (!fs::exists(path)) return "";
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

}  // namespace

int ablate(const AblateOptions& opt) {
  SLM_CHECK(opt.jobs >= 1 && opt.jobs <= 256, "ablate: --jobs ", opt.jobs, " is outside [1, 256]");
  Plan plan = load_plan(opt.plan);  // every problem at once, before anything runs
  const int total_threads = opt.threads > 0 ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  const int per_job = std::max(1, total_threads / opt.jobs);
  fs::mkdirs(fs::parent(opt.ledger));
  Ledger ledger(opt.ledger);
  ledger.save_plan(plan.name, plan_info_json(plan_info(plan)));  // reports read bases and the rule from here
  const std::string bin = self_exe();
  std::string substrate = plan.substrate_ref;
  if (substrate.find(".toml") != std::string::npos && substrate[0] != '/') substrate = fs::join(fs::parent(opt.plan), substrate);

  // Expand and register. Finished (done, INVALID) and exhausted (failed too often) runs stay as they are.
  std::vector<Run> pending;
  size_t n_total = 0, n_final = 0;
  for (auto& e : plan.experiments)
    for (int64_t seed : e.seeds) {
      ++n_total;
      Run r{plan.name + "/" + e.id + "/s" + std::to_string(seed),
            fs::join(fs::join(fs::join(opt.runs, plan.name), e.id), "s" + std::to_string(seed)), e.id, e.phase, seed, &e};
      auto row = ledger.get(r.id);
      if (!row) {
        RunRow nr;
        nr.run_id = r.id;
        nr.plan = plan.name;
        nr.phase = e.phase;
        nr.experiment = e.id;
        nr.seed = seed;
        nr.run_dir = r.dir;
        nr.git_commit = git_commit();
        ledger.upsert(nr);
        row = ledger.get(r.id);
      }
      const bool finished = row->status == Status::Done || row->status == Status::Invalid;
      const bool exhausted = row->status == Status::Failed && row->attempts > plan.rule.max_retries;
      if (finished || exhausted) {
        ++n_final;
        continue;
      }
      pending.push_back(r);
    }
  const size_t n_waves_est = (pending.size() + opt.jobs - 1) / opt.jobs;
  std::printf("[ablate] plan %s: %zu runs, %zu finished, %zu to run in ~%zu waves of %d (%d threads each); ledger %s\n",
              plan.name.c_str(), n_total, n_final, pending.size(), n_waves_est, opt.jobs, per_job, opt.ledger.c_str());
  std::fflush(stdout);

  const auto t0 = clk::now();
  double run_seconds = 0;
  size_t runs_timed = 0, wave = 0;
  bool any_failed = false;
  while (!pending.empty()) {
    ++wave;
    std::vector<Run> batch(pending.begin(), pending.begin() + std::min<size_t>(opt.jobs, pending.size()));
    pending.erase(pending.begin(), pending.begin() + batch.size());
    std::map<pid_t, Run> live;
    std::map<pid_t, clk::time_point> started;
    for (auto& r : batch) {
      fs::mkdirs(r.dir);
      std::vector<std::string> args = {bin, "train", "--quiet", "--resume", "--data", opt.data, "--substrate", substrate,
                                       "--out", r.dir, "--threads", std::to_string(per_job), "--set",
                                       "seed=" + std::to_string(r.seed)};
      for (auto& m : r.exp->effective) args.insert(args.end(), {"--module", catalog::arg_text(m)});
      const std::string log = fs::join(r.dir, "train.log");
      ledger.set_status(r.id, Status::Running, "", /*count_attempt=*/true);
      pid_t pid = ::fork();
      SLM_CHECK(pid >= 0, "ablate: cannot start a run: fork failed");
      if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // die with the runner: a restart resumes from checkpoints
        if (::getppid() == 1) ::_exit(125);  // the runner is already gone
        int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
          ::dup2(fd, 1);
          ::dup2(fd, 2);
        }
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        ::execv(bin.c_str(), argv.data());
        ::_exit(127);
      }
      live[pid] = r;
      started[pid] = clk::now();
    }
    std::printf("[ablate] wave %zu: %zu running (%s%s)\n", wave, live.size(), batch[0].id.c_str(),
                batch.size() > 1 ? ", ..." : "");
    std::fflush(stdout);
    while (!live.empty()) {
      int st = 0;
      pid_t pid = ::waitpid(-1, &st, 0);
      if (pid < 0) {
        if (errno == EINTR) continue;
        break;
      }
      auto it = live.find(pid);
      if (it == live.end()) continue;
      Run r = it->second;
      live.erase(it);
      const double secs = std::chrono::duration<double>(clk::now() - started[pid]).count();
      RunRow row = *ledger.get(r.id);
      std::vector<EvalPoint> evals;
      row = ingest(row, evals);
      ledger.set_evals(r.id, evals);
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (code == 0) {
        row.status = Status::Done;
        row.reason = "";
        run_seconds += secs;
        ++runs_timed;
      } else if (code == 3) {
        row.status = Status::Invalid;  // the trainer's own verdict (non-finite loss), with its reason
        auto s = json::parse(fs::read_file(fs::join(r.dir, "summary.json")));
        row.reason = s.value("reason", "INVALID");
      } else {
        row.status = Status::Failed;
        row.reason = "exit " + std::to_string(code) + ": " + last_line(fs::join(r.dir, "train.log"));
        if (row.attempts <= plan.rule.max_retries) pending.push_back(r);  // retried in a later wave
        else any_failed = true;
      }
      ledger.upsert(row);
      ++n_final;
      const double avg = runs_timed ? run_seconds / runs_timed : NAN;
      const double left_waves = std::ceil(double(pending.size() + live.size()) / opt.jobs);
      std::printf("[ablate] %s %s%s | done %zu/%zu | wave %zu | elapsed %s | eta %s\n", r.id.c_str(),
                  status_name(row.status), row.reason.empty() ? "" : (" (" + row.reason + ")").c_str(),
                  std::min(n_final, n_total), n_total, wave,
                  human_duration(std::chrono::duration<double>(clk::now() - t0).count()).c_str(), human_duration(avg * left_waves).c_str());
      std::fflush(stdout);
    }
  }
  return any_failed ? 1 : 0;
}

}  // namespace slm::engine
