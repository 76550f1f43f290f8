#include "eval/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fs.h"

namespace slm::eval {
namespace {

using Clock = std::chrono::steady_clock;

bool executable(const std::string& p) { return ::access(p.c_str(), X_OK) == 0; }

bool under(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

// Tasks (threads) of `uid` right now: RLIMIT_NPROC counts all of them, not just ours.
uint64_t user_tasks(uid_t uid) {
  uint64_t n = 0;
  DIR* d = ::opendir("/proc");
  if (!d) return 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string dir = std::string("/proc/") + e->d_name;
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || st.st_uid != uid) continue;
    std::ifstream f(dir + "/stat");
    std::string line;
    std::getline(f, line);
    // Field 20 is num_threads; fields are counted after the ')' that ends the name (which may hold spaces).
    size_t p = line.rfind(')');
    std::istringstream is(p == std::string::npos ? std::string() : line.substr(p + 1));
    std::string field;
    uint64_t threads = 1;
    for (int i = 3; i <= 20 && is >> field; ++i) {
      if (i == 20) threads = std::max<uint64_t>(1, std::strtoull(field.c_str(), nullptr, 10));
    }
    n += threads;
  }
  ::closedir(d);
  return n;
}

// The first diagnostic with "error:" in it, else the first non-empty line.
std::string first_error_line(const std::string& out) {
  std::string first;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    std::string line = out.substr(pos, nl - pos);
    if (line.find("error:") != std::string::npos) return line;
    if (first.empty() && !line.empty()) first = line;
    pos = nl + 1;
  }
  return first;
}

CompileResult unavailable(std::string why) {
  CompileResult r;
  r.status = CompileStatus::SandboxUnavailable;
  r.first_error = std::move(why);
  return r;
}

// A fresh private directory, removed with everything in it when the object dies.
struct TempDir {
  std::string path;
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/slmlab-sandbox-XXXXXX";
    if (::mkdtemp(tmpl.data())) path = tmpl;
  }
  ~TempDir() {
    if (!path.empty()) fs::remove_all(path);
  }
};

// kStatusFd carries bwrap's JSON status ({"child-pid": N} once the sandbox is up): a set-up failure
// is told apart from a compile error without reading the compiler's text.
constexpr int kStatusFd = 3;

std::vector<std::string> bwrap_args(const SandboxOptions& o, const std::string& src_dir, const std::string& compiler) {
  std::vector<std::string> a = {o.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                                "--as-pid-1", "--json-status-fd", std::to_string(kStatusFd),
                                "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "LC_ALL", "C"};
  for (const std::string& p : o.ro_paths) {
    if (fs::exists(p)) a.insert(a.end(), {"--ro-bind", p, p});
  }
  // The loader and libraries are found through /lib64 and /lib: the host's symlinks, or its dirs read-only.
  for (const char* p : {"/bin", "/lib", "/lib64"}) {
    char target[PATH_MAX];
    ssize_t n = ::readlink(p, target, sizeof target - 1);
    if (n > 0) {
      a.insert(a.end(), {"--symlink", std::string(target, static_cast<size_t>(n)), p});
    } else if (fs::is_dir(p)) {
      a.insert(a.end(), {"--ro-bind", p, p});
    }
  }
  a.insert(a.end(), {"--dev", "/dev", "--size", std::to_string(o.file_bytes), "--tmpfs", "/tmp", "--ro-bind", src_dir,
                     "/src", "--chdir", "/src", "--", compiler});
  a.insert(a.end(), o.flags.begin(), o.flags.end());
  a.insert(a.end(), {"-x", "c++", o.filename});
  return a;
}

void set_limit(int resource, rlim_t soft, rlim_t hard) {
  struct rlimit rl{soft, hard};
  ::setrlimit(resource, &rl);  // in the child: nothing useful to do on failure but carry on
}

}  // namespace

const char* compile_status_name(CompileStatus s) {
  switch (s) {
    case CompileStatus::Ok: return "ok";
    case CompileStatus::CompileError: return "compile_error";
    case CompileStatus::Timeout: return "timeout";
    case CompileStatus::CpuLimit: return "cpu_limit";
    case CompileStatus::MemoryLimit: return "memory_limit";
    case CompileStatus::OutputLimit: return "output_limit";
    case CompileStatus::SandboxUnavailable: return "sandbox_unavailable";
  }
  return "?";
}

CompileResult check_compiles(const std::string& source, const SandboxOptions& o) {
  SLM_CHECK(!o.filename.empty() && o.filename.find('/') == std::string::npos && o.filename[0] != '.',
            "[sandbox] filename must be a plain file name, got '", o.filename, "'");
  SLM_CHECK(o.cpu_seconds > 0 && o.wall_seconds > 0 && o.memory_bytes > 0 && o.max_processes > 0,
            "[sandbox] cpu_seconds, wall_seconds, memory_bytes and max_processes must be positive");
  if (!executable(o.bwrap)) {
    return unavailable("[sandbox] " + o.bwrap +
                       " not found: install it with apt-get install bubblewrap (no compile check runs unsandboxed)");
  }
  char resolved[PATH_MAX];
  if (!::realpath(o.compiler.c_str(), resolved) || !executable(resolved)) {
    return unavailable("[sandbox] compiler " + o.compiler + " not found: install it with apt-get install g++");
  }
  std::string compiler = resolved;
  bool visible = false;
  for (const std::string& p : o.ro_paths) visible = visible || under(compiler, p);
  if (!visible) return unavailable("[sandbox] compiler " + compiler + " is outside the sandbox's read-only paths");

  // As root, RLIMIT_NPROC is not enforced: the sandbox runs as an unprivileged user instead.
  const bool drop = ::geteuid() == 0;
  const uid_t run_uid = drop ? static_cast<uid_t>(o.root_uid) : ::getuid();
  const gid_t run_gid = drop ? static_cast<gid_t>(o.root_gid) : ::getgid();
  SLM_CHECK(!drop || (run_uid != 0 && run_gid != 0), "[sandbox] root_uid and root_gid must not be root");
  TempDir dir;
  if (dir.path.empty()) return unavailable(std::string("[sandbox] cannot create a temporary directory: ") + std::strerror(errno));
  {
    std::ofstream f(dir.path + "/" + o.filename, std::ios::binary);
    f << source;
    if (!f.flush()) return unavailable("[sandbox] cannot write the source into " + dir.path);
  }
  if (drop && ::chown(dir.path.c_str(), run_uid, run_gid) != 0)
    return unavailable("[sandbox] cannot hand " + dir.path + " to uid " + std::to_string(run_uid) + ": " + std::strerror(errno));

  std::vector<std::string> args = bwrap_args(o, dir.path, compiler);
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  rlim_t nproc = static_cast<rlim_t>(user_tasks(run_uid) + static_cast<uint64_t>(o.max_processes));

  int pipefd[2], statusfd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return unavailable(std::string("[sandbox] pipe: ") + std::strerror(errno));
  if (::pipe2(statusfd, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return unavailable(std::string("[sandbox] pipe: ") + std::strerror(errno));
  }
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) {
    for (int fd : {pipefd[0], pipefd[1], statusfd[0], statusfd[1], devnull})
      if (fd >= 0) ::close(fd);
    return unavailable(std::string("[sandbox] fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. Its own process group, so a timeout kills all of it.
    ::setpgid(0, 0);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(pipefd[1], 1);
    ::dup2(pipefd[1], 2);
    if (statusfd[1] == kStatusFd) ::fcntl(kStatusFd, F_SETFD, 0);  // dup2 onto itself would keep CLOEXEC
    else ::dup2(statusfd[1], kStatusFd);
    // No descriptor of the parent (a ledger, a checkpoint) reaches the sandbox.
    if (::syscall(SYS_close_range, kStatusFd + 1u, ~0u, 0u) != 0) {
      for (int fd = kStatusFd + 1; fd < 4096; ++fd) ::close(fd);
    }
    rlim_t cpu = static_cast<rlim_t>(o.cpu_seconds);
    set_limit(RLIMIT_CPU, cpu, cpu + 1);  // SIGXCPU first, so the driver names the cause
    set_limit(RLIMIT_AS, o.memory_bytes, o.memory_bytes);
    set_limit(RLIMIT_FSIZE, o.file_bytes, o.file_bytes);
    set_limit(RLIMIT_NPROC, nproc, nproc);
    set_limit(RLIMIT_CORE, 0, 0);
    if (drop && (::setgroups(0, nullptr) != 0 || ::setgid(run_gid) != 0 || ::setuid(run_uid) != 0)) {
      static const char msg[] = "sandbox: cannot drop root\n";
      (void)!::write(2, msg, sizeof msg - 1);
      ::_exit(127);
    }
    ::execv(argv[0], argv.data());
    static const char msg[] = "bwrap: exec failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here: whichever of parent and child runs first
  ::close(pipefd[1]);
  ::close(statusfd[1]);
  if (devnull >= 0) ::close(devnull);

  auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.wall_seconds));
  auto ms_left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  };
  CompileResult r;
  bool timed_out = false, too_much_output = false;
  char buf[8192];
  for (;;) {
    long long left = ms_left();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{pipefd[0], POLLIN, 0};
    int pr = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: every writer is gone
    size_t room = o.max_output_bytes - std::min(o.max_output_bytes, r.output.size());
    r.output.append(buf, std::min(room, static_cast<size_t>(n)));
    if (static_cast<size_t>(n) > room) {
      too_much_output = true;
      break;
    }
  }
  ::close(pipefd[0]);
  if (timed_out || too_much_output) ::kill(-pid, SIGKILL);
  int st = 0;
  struct rusage ru{};
  // Exit is bounded by the deadline too: a sandbox that closed its output but keeps running is killed.
  for (;;) {
    pid_t w = ::wait4(pid, &st, WNOHANG, &ru);
    if (w == pid || (w < 0 && errno != EINTR)) break;
    if (ms_left() <= 0 && !timed_out) {
      timed_out = true;
      ::kill(-pid, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.signal = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
  r.first_error = first_error_line(r.output);
  // Rusage covers bwrap and every process it (and they) waited for: the driver and cc1plus.
  r.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                  static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
  r.peak_rss_bytes = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  std::string status_json;
  for (ssize_t n; (n = ::read(statusfd[0], buf, sizeof buf)) > 0;) status_json.append(buf, static_cast<size_t>(n));
  ::close(statusfd[0]);
  const bool started = status_json.find("\"child-pid\"") != std::string::npos;

  // From the kernel's account only. cc1plus killed by SIGXCPU makes the driver exit 4, by SIGKILL 1,
  // and out of address space it exits 1 like a compile error: its CPU time and peak memory tell them apart.
  if (timed_out) {
    r.status = CompileStatus::Timeout;
    r.first_error = "[sandbox] killed after the wall-clock limit of " + std::to_string(o.wall_seconds) + " s";
  } else if (too_much_output) {
    r.status = CompileStatus::OutputLimit;
  } else if (!started) {
    r.status = CompileStatus::SandboxUnavailable;
    r.first_error = "[sandbox] " + r.first_error + " (bwrap could not set up the sandbox)";
  } else if (r.exit_code == 0) {
    r.status = CompileStatus::Ok;
    r.ok = true;
  } else if (r.signal == SIGXCPU || r.signal == SIGKILL || r.cpu_seconds >= o.cpu_seconds) {
    r.status = CompileStatus::CpuLimit;  // SIGXCPU at the soft limit, SIGKILL at the hard one
  } else if (r.peak_rss_bytes >= o.memory_bytes / 4 * 3) {
    r.status = CompileStatus::MemoryLimit;  // RLIMIT_AS counts mappings, RSS only what was touched
  } else {
    r.status = CompileStatus::CompileError;
  }
  return r;
}

void require_sandbox(const SandboxOptions& o) {
  CompileResult r = check_compiles("int main() { return 0; }\n", o);
  SLM_CHECK(r.status != CompileStatus::SandboxUnavailable, r.first_error);
  SLM_CHECK(r.ok, "[sandbox] a trivial program does not compile in the sandbox (", compile_status_name(r.status),
            "): ", r.first_error);
}

}  // namespace slm::eval
