#include "engine/slurm.h"

#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fs.h"

namespace slm::engine::slurm {

using clk = std::chrono::steady_clock;

namespace {

struct Output {
  int status = -1;  // exit code; 127 when the program could not be started
  std::string out;  // stdout + stderr
};

// Runs a program found on PATH with its arguments (no shell), capturing what it prints.
Output capture(const std::vector<std::string>& argv) {
  int fds[2];
  SLM_CHECK(::pipe(fds) == 0, "ablate: pipe failed");
  pid_t pid = ::fork();
  SLM_CHECK(pid >= 0, "ablate: fork failed");
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  Output o;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0) o.out.append(buf, n);
    else if (n < 0 && errno == EINTR) continue;
    else break;
  }
  ::close(fds[0]);
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  o.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return o;
}

bool on_path(const std::string& prog) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  std::string d;
  while (std::getline(ss, d, ':'))
    if (!d.empty() && ::access((d + "/" + prog).c_str(), X_OK) == 0) return true;
  return false;
}

std::string first_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  auto nl = s.rfind('\n');  // the last line carries the error when there are several
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

std::string user_name() {
  const passwd* pw = ::getpwuid(::geteuid());
  return pw ? pw->pw_name : std::to_string(::geteuid());
}

// "<job id> <code>" from DIR/slurm.exit, when it belongs to `job_id`.
std::optional<int> exit_code(const std::string& dir, const std::string& job_id) {
  const std::string f = fs::join(dir, "slurm.exit");
  if (!fs::exists(f)) return std::nullopt;
  std::istringstream in(fs::read_file(f));
  std::string id;
  int code = -1;
  if (!(in >> id >> code) || id != job_id) return std::nullopt;
  return code;
}

std::string trimmed(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// A state squeue may still list but in which the job will not run again.
bool terminal(const std::string& state) {
  static const std::set<std::string> t = {"COMPLETED", "CANCELLED", "FAILED",        "TIMEOUT",   "NODE_FAIL",
                                          "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE", "SPECIAL_EXIT"};
  return t.count(state) > 0;
}

class SlurmBackend : public Backend {
 public:
  explicit SlurmBackend(const Options& opt) : opt_(opt), user_(user_name()) {}

  bool start(const Job& job) override {
    const std::string id_file = fs::join(job.dir, "slurm.job");
    if (fs::exists(id_file)) {
      // Submitted by an earlier ablate: re-attach while Slurm still has it, or take its outcome.
      const std::string id = trimmed(fs::read_file(id_file));
      auto q = queue();
      if (q && q->count(id) && !terminal(q->at(id))) {
        track(job, id, "re-attached to");
        return true;
      }
      if (auto code = exit_code(job.dir, id)) {
        ready_.push_back({job.run_id, *code, ""});
        fs::remove_all(id_file);  // taken: a retry is a new job
        std::printf("[ablate] %s: Slurm job %s ended while ablate was away (exit %d)\n", job.run_id.c_str(),
                    id.c_str(), *code);
        return true;
      }
    }
    const std::string script = fs::join(job.dir, "slurm.sh");
    fs::write_atomic(script, batch_script(job));
    auto o = capture(sbatch_args(job, script, opt_));
    SLM_CHECK(o.status == 0, "ablate: sbatch refused ", job.run_id, ": ", first_line(o.out));
    std::string id = trimmed(o.out);
    id = id.substr(0, id.find(';'));  // --parsable prints "id" or "id;cluster"
    SLM_CHECK(!id.empty() && id.find_first_not_of("0123456789") == std::string::npos,
              "ablate: sbatch printed no job id for ", job.run_id, ": ", first_line(o.out));
    fs::write_atomic(id_file, id + "\n");
    track(job, id, "submitted as");
    return false;
  }

  std::optional<Ended> wait_any() override {
    auto last_answer = clk::now();
    for (;;) {
      if (!ready_.empty()) {
        Ended e = ready_.front();
        ready_.erase(ready_.begin());
        return e;
      }
      if (stop_requested) return std::nullopt;
      auto q = queue();
      if (!q) {
        // The controller may be restarting; the jobs are not ours to give up on.
        const double silent = std::chrono::duration<double>(clk::now() - last_answer).count();
        SLM_CHECK(silent < 300, "ablate: squeue has not answered for ", int(silent),
                  " s; the Slurm jobs keep running: run the same command again to re-attach");
      } else {
        last_answer = clk::now();
        for (auto it = live_.begin(); it != live_.end();) {
          Live& l = it->second;
          auto s = q->find(l.job_id);
          const bool queued = s != q->end() && !terminal(s->second);
          if (queued) {
            const std::string& state = s->second;
            if (state == "RUNNING" || state == "COMPLETING") l.ran = true;
            if (l.ran && (state == "PENDING" || state == "REQUEUED" || state == "REQUEUE_HOLD")) {
              l.ran = false;
              std::printf("[ablate] %s: Slurm job %s requeued; it resumes from its checkpoint\n", it->first.c_str(),
                          l.job_id.c_str());
              std::fflush(stdout);
            }
            l.gone_since.reset();
            ++it;
            continue;
          }
          if (!l.gone_since) l.gone_since = clk::now();
          auto code = exit_code(l.dir, l.job_id);
          const double gone = std::chrono::duration<double>(clk::now() - *l.gone_since).count();
          if (code || gone >= opt_.exit_grace_s) {
            Ended e{it->first, code ? *code : -1, ""};
            if (!code)
              e.note = "Slurm job " + l.job_id + " left the queue without an exit code (cancelled before it ran, "
                       "time limit, node failure?); see train.log";
            fs::remove_all(fs::join(l.dir, "slurm.job"));  // the next attempt is a new job
            ready_.push_back(e);
            it = live_.erase(it);
          } else {
            ++it;
          }
        }
        if (!ready_.empty()) continue;
      }
      sleep_poll();
    }
  }

  size_t n_live() const override { return live_.size() + ready_.size(); }

 private:
  struct Live {
    std::string job_id, dir;
    bool ran = false;  // seen running since it was (re)queued
    std::optional<clk::time_point> gone_since;
  };

  void track(const Job& job, const std::string& id, const char* how) {
    live_[job.run_id] = Live{id, job.dir, false, std::nullopt};
    std::printf("[ablate] %s: %s Slurm job %s\n", job.run_id.c_str(), how, id.c_str());
    std::fflush(stdout);
  }

  // Job id -> state of this user's jobs, or nullopt when squeue fails.
  std::optional<std::map<std::string, std::string>> queue() const {
    auto o = capture({"squeue", "--noheader", "--user", user_, "--format", "%i %T"});
    if (o.status != 0) return std::nullopt;
    std::map<std::string, std::string> m;
    std::istringstream in(o.out);
    std::string id, state;
    while (in >> id >> state) m[id] = state;
    return m;
  }

  void sleep_poll() const {
    // In slices, so a stop request is seen quickly.
    const auto until = clk::now() + std::chrono::duration<double>(opt_.poll_s);
    while (!stop_requested && clk::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  Options opt_;
  std::string user_;
  std::map<std::string, Live> live_;  // run id -> its job
  std::vector<Ended> ready_;
};

}  // namespace

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=.,/:@%") ==
                        std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string batch_script(const Job& job) {
  std::string cmd;
  for (auto& a : job.argv) cmd += (cmd.empty() ? "" : " ") + shell_quote(a);
  const std::string exit_file = shell_quote(fs::join(job.dir, "slurm.exit"));
  // The trap makes bash wait for the trainer instead of dying with it on SIGTERM (Slurm signals
  // every process of the job on requeue, preemption and scancel), so the exit code is recorded.
  return "#!/bin/bash\n"
         "# slmlab ablate: run " + job.run_id + " as a Slurm job; written by ablate, resubmitted as is on requeue\n"
         "rm -f " + exit_file + "\n"
         "echo \"[slurm] job $SLURM_JOB_ID on $(hostname -s), restart ${SLURM_RESTART_COUNT:-0}, $(date -u +%FT%TZ)\"\n"
         "trap 'echo \"[slurm] job $SLURM_JOB_ID: SIGTERM; the trainer checkpoints and stops\"' TERM\n" +
         cmd + "\n"
         "code=$?\n"
         "printf '%s %s\\n' \"$SLURM_JOB_ID\" \"$code\" >" + exit_file + ".tmp && mv -f " + exit_file + ".tmp " +
         exit_file + "\n"
         "exit $code\n";
}

std::vector<std::string> sbatch_args(const Job& job, const std::string& script, const Options& opt) {
  std::vector<std::string> a = {"sbatch",
                                "--parsable",
                                "--requeue",
                                "--job-name=slm:" + job.run_id,
                                "--ntasks=1",
                                "--cpus-per-task=" + std::to_string(job.threads),
                                "--chdir=" + job.dir,
                                "--output=" + fs::join(job.dir, "train.log"),
                                "--open-mode=append"};
  a.insert(a.end(), opt.extra.begin(), opt.extra.end());  // last: the user's word wins
  a.push_back(script);
  return a;
}

void check_available() {
  for (const char* p : {"sbatch", "squeue", "sinfo"})
    SLM_CHECK(on_path(p), "ablate: --backend slurm: '", p,
              "' is not on PATH; install slurm-wlm (scripts/setup.sh) or run where the Slurm client tools are; "
              "nothing was run");
  auto o = capture({"sinfo", "--noheader", "--format", "%P"});
  SLM_CHECK(o.status == 0, "ablate: --backend slurm: the Slurm controller does not answer (sinfo: ", first_line(o.out),
            "); start it (scripts/slurm-local.sh start for this machine) or check SLURM_CONF; nothing was run");
}

std::unique_ptr<Backend> make_backend(const Options& opt) { return std::make_unique<SlurmBackend>(opt); }

}  // namespace slm::engine::slurm
