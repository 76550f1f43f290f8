#include "engine/local.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "common/error.h"
#include "common/fs.h"

namespace slm::engine::local {

namespace {

constexpr int kMaxChildren = 256;  // = the --jobs limit
volatile pid_t children[kMaxChildren];  // live pids, for the signal handler; 0 = free slot

class LocalBackend : public Backend {
 public:
  bool start(const Job& job) override {
    const std::string log = fs::join(job.dir, "train.log");
    pid_t pid = ::fork();
    SLM_CHECK(pid >= 0, "ablate: cannot start a run: fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // die with the runner: a restart resumes from checkpoints
      if (::getppid() == 1) ::_exit(125);  // the runner is already gone
      ::signal(SIGTERM, SIG_DFL);
      ::signal(SIGINT, SIG_DFL);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (auto& a : job.argv) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(job.argv[0].c_str(), argv.data());
      ::_exit(127);
    }
    live_[pid] = job.run_id;
    for (auto& c : children)
      if (c == 0) {
        c = pid;
        break;
      }
    if (stop_requested) ::kill(pid, SIGTERM);  // the signal came while forking
    return false;
  }

  std::optional<Ended> wait_any() override {
    while (!live_.empty()) {
      int st = 0;
      pid_t pid = ::waitpid(-1, &st, 0);
      if (pid < 0) {
        if (errno == EINTR) continue;  // a stop request: the handler has passed SIGTERM on
        break;
      }
      auto it = live_.find(pid);
      if (it == live_.end()) continue;
      for (auto& c : children)
        if (c == pid) c = 0;
      Ended e{it->second, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), ""};
      live_.erase(it);
      return e;
    }
    return std::nullopt;
  }

  size_t n_live() const override { return live_.size(); }

 private:
  std::map<pid_t, std::string> live_;  // pid -> run id
};

}  // namespace

void on_stop_signal(int) {
  stop_requested = 1;
  for (int i = 0; i < kMaxChildren; ++i)
    if (children[i] > 0) ::kill(children[i], SIGTERM);  // async-signal-safe
}

std::unique_ptr<Backend> make_backend() { return std::make_unique<LocalBackend>(); }

}  // namespace slm::engine::local
