#include "train/dist.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"

namespace slm::dist {

namespace {

using clk = std::chrono::steady_clock;

// A launcher variable as an int; `def` when unset.
int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  SLM_CHECK(end && *end == '\0' && x >= 0 && x < (1 << 20), "[dist] environment variable ", name, "='", v,
            "' is not a non-negative integer; fix the launcher's environment");
  return static_cast<int>(x);
}

std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

World world_from_env() {
  World w;
  w.size = env_int("WORLD_SIZE", 1);
  w.rank = env_int("RANK", 0);
  SLM_CHECK(w.size >= 1 && w.rank < w.size, "[dist] RANK ", w.rank, " is outside WORLD_SIZE ", w.size,
            "; fix the launcher's environment");
  w.local_rank = env_int("LOCAL_RANK", w.size > 1 ? w.rank : 0);
  w.local_size = env_int("LOCAL_WORLD_SIZE", w.size);
  SLM_CHECK(w.local_size >= 1 && w.local_rank < w.local_size, "[dist] LOCAL_RANK ", w.local_rank,
            " is outside LOCAL_WORLD_SIZE ", w.local_size, "; fix the launcher's environment");
  return w;
}

c10::intrusive_ptr<c10d::ProcessGroup> make_group(const c10::intrusive_ptr<c10d::Store>& store, const World& w,
                                                  const torch::Device& dev) {
  SLM_CHECK(dev.is_cpu(), "[dist] data-parallel training on ", dev.str(),
            " needs the NCCL backend, which this LibTorch build (CPU) does not have; train on device = \"cpu\"");
  // A step's all-reduce waits for the slowest rank, an evaluation included: generous, not infinite.
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::minutes(30));
  const std::string ifname = env_str("GLOO_SOCKET_IFNAME"), master = env_str("MASTER_ADDR");
  if (!ifname.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (master.empty() || master == "127.0.0.1" || master == "localhost")
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));  // one machine
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());  // this host's address
  opts->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, w.rank, w.size, opts);
}

Comm::Comm(const c10::intrusive_ptr<c10d::Store>& store, const World& w, const torch::Device& dev)
    : w_(w), dev_(dev), store_(store), pg_(make_group(store, w, dev)) {}

Comm::Comm(const World& w, const torch::Device& dev) : w_(w), dev_(dev) {
  const std::string addr = env_str("MASTER_ADDR");
  const int port = env_int("MASTER_PORT", 0);
  SLM_CHECK(!addr.empty() && port > 0 && port < 65536, "[dist] WORLD_SIZE is ", w.size,
            " but MASTER_ADDR/MASTER_PORT are not set; use --nproc N, or a launcher that sets them");
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(port);
  so.isServer = w.rank == 0;
  so.numWorkers = w.size;
  so.waitWorkers = true;
  so.timeout = std::chrono::minutes(5);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(addr, so);
  } catch (const std::exception& e) {
    std::string m = e.what();
    m = m.substr(0, m.find('\n'));
    fail("[dist] rank ", w.rank, " could not meet the others at ", addr, ":", port, " (", m,
         "); check MASTER_ADDR/MASTER_PORT and that every rank started");
  }
  store_ = store;
  pg_ = make_group(store, w, dev);
}

std::unique_ptr<Comm> Comm::subgroup(const std::string& name, const std::vector<int>& ranks) {
  World sub;
  sub.size = static_cast<int>(ranks.size());
  sub.rank = -1;
  for (int i = 0; i < sub.size; ++i)
    if (ranks[i] == w_.rank) sub.rank = i;
  SLM_CHECK(sub.rank >= 0, "[dist] rank ", w_.rank, " is not a member of group ", name);
  sub.local_rank = w_.local_rank;
  sub.local_size = w_.local_size;
  c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(name, store_);
  return std::make_unique<Comm>(store, sub, dev_);
}

TpGroupPtr Comm::as_tp_group() {
  auto g = std::make_shared<TpGroup>();
  g->rank = w_.rank;
  g->size = w_.size;
  g->all_reduce_sum = [this](torch::Tensor& t) { all_reduce_sum(t); };
  g->all_gather = [this](const torch::Tensor& t) { return all_gather(t); };
  return g;
}

Mesh mesh_of(const World& w, int tp) {
  SLM_CHECK(tp >= 1 && w.size % tp == 0, "[dist] tp ", tp, " does not divide the world of ", w.size,
            " ranks; run tp x dp ranks (--nproc a multiple of tp)");
  Mesh m;
  m.tp = tp;
  m.dp = w.size / tp;
  m.tp_rank = w.rank % tp;
  m.dp_rank = w.rank / tp;
  for (int t = 0; t < tp; ++t) m.tp_ranks.push_back(m.dp_rank * tp + t);
  for (int d = 0; d < m.dp; ++d) m.dp_ranks.push_back(d * tp + m.tp_rank);
  return m;
}

Comm::~Comm() = default;

std::string Comm::backend() const { return pg_->getBackendName(); }

double Comm::all_reduce_mean(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  const auto t0 = clk::now();
  torch::NoGradGuard ng;
  const int64_t n = static_cast<int64_t>(params.size());
  // Which gradients exist on some rank: all ranks must put the same tensors in the same buckets.
  auto have = torch::zeros({n}, torch::kInt32);
  {
    auto h = have.accessor<int32_t, 1>();
    for (int64_t i = 0; i < n; ++i) h[i] = params[i].grad().defined() ? 1 : 0;
  }
  all_reduce_sum(have);
  struct Bucket {
    std::vector<int64_t> idx;
    int64_t bytes = 0;
    std::vector<at::Tensor> flat;  // one tensor: what c10d takes
    c10::intrusive_ptr<c10d::Work> work;
  };
  std::vector<Bucket> buckets;
  auto h = have.accessor<int32_t, 1>();
  for (int64_t i = 0; i < n; ++i) {
    if (h[i] == 0) continue;
    auto p = params[i];
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // unused here, used on another rank
    const auto& g = p.grad();
    const int64_t nb = g.numel() * static_cast<int64_t>(g.element_size());
    if (buckets.empty() || buckets.back().bytes + nb > bucket_bytes ||
        params[buckets.back().idx.front()].grad().scalar_type() != g.scalar_type())
      buckets.emplace_back();
    buckets.back().idx.push_back(i);
    buckets.back().bytes += nb;
  }
  // Flatten and launch every bucket, then wait: Gloo's threads work on one while the next is packed.
  for (auto& b : buckets) {
    std::vector<torch::Tensor> parts;
    for (auto i : b.idx) parts.push_back(params[i].grad().reshape({-1}));
    b.flat = {torch::cat(parts)};
    b.work = pg_->allreduce(b.flat);
  }
  for (auto& b : buckets) {
    b.work->wait();
    auto& flat = b.flat[0];
    flat.div_(static_cast<double>(w_.size));
    int64_t off = 0;
    for (auto i : b.idx) {
      auto& g = params[i].mutable_grad();
      g.copy_(flat.slice(0, off, off + g.numel()).view(g.sizes()));
      off += g.numel();
    }
  }
  return std::chrono::duration<double>(clk::now() - t0).count();
}

void Comm::all_reduce_sum(torch::Tensor& t) {
  SLM_CHECK(t.is_contiguous(), "[dist] all_reduce_sum needs a contiguous tensor");
  std::vector<at::Tensor> v{t};
  pg_->allreduce(v)->wait();
}

std::vector<torch::Tensor> Comm::all_gather(const torch::Tensor& t) {
  std::vector<at::Tensor> in{t.contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < w_.size; ++r) out[0].push_back(torch::empty_like(in[0]));
  pg_->allgather(out, in)->wait();
  return out[0];
}

void Comm::broadcast(std::vector<torch::Tensor>& ts, int root) {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  for (auto& t : ts) {
    SLM_CHECK(t.is_contiguous(), "[dist] broadcast needs contiguous tensors");
    std::vector<at::Tensor> v{t};
    pg_->broadcast(v, o)->wait();
  }
}

void Comm::barrier() { pg_->barrier()->wait(); }

// ---- the local launcher

namespace {

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  std::vector<std::string> args;
  size_t start = 0;
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i] == '\0') {
      args.push_back(all.substr(start, i - start));
      start = i + 1;
    }
  SLM_CHECK(!args.empty(), "[dist] cannot read this process's command line from /proc/self/cmdline");
  return args;
}

// A port nobody listens on now (the kernel's choice); rank 0's store binds it a moment later.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  SLM_CHECK(fd >= 0, "[dist] cannot open a socket to pick MASTER_PORT: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  SLM_CHECK(ok, "[dist] cannot pick a free MASTER_PORT on 127.0.0.1: ", std::strerror(errno));
  return ntohs(a.sin_port);
}

std::string read_all(int fd) {
  std::string s;
  char buf[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<size_t>(n));
  return s;
}

}  // namespace

int launch_local(int nproc) {
  SLM_CHECK(nproc >= 1 && nproc <= 256, "train: --nproc ", nproc, " is outside [1, 256]");
  SLM_CHECK(std::getenv("WORLD_SIZE") == nullptr, "train: --nproc ", nproc,
            " with WORLD_SIZE already set by a launcher; use one or the other");
  std::vector<std::string> args = own_command_line();
  std::vector<std::string> child_args;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (args[i].rfind("--nproc=", 0) == 0) continue;
    child_args.push_back(args[i]);
  }
  const std::string port = std::to_string(free_port()), world = std::to_string(nproc);
  // SIGTERM or SIGINT to the launcher (Slurm's preemption, a requeue, Ctrl-C) goes to every rank,
  // each of which checkpoints at the same step and exits; the launcher waits for them.
  static std::vector<pid_t> live;  // read by the handler: sized before any child exists
  live.assign(nproc, -1);
  {
    struct sigaction sa {};
    sa.sa_handler = [](int sig) {
      for (pid_t p : live)
        if (p > 0) ::kill(p, sig == SIGINT ? SIGINT : SIGTERM);
    };
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
  }
  std::vector<pid_t> pids(nproc, -1);
  std::vector<int> err_fd(nproc, -1);  // ranks > 0: stderr kept, shown only if that rank fails first
  for (int r = 0; r < nproc; ++r) {
    if (r > 0) {
      char tmpl[] = "/tmp/slmlab-rank-XXXXXX";
      err_fd[r] = ::mkstemp(tmpl);
      SLM_CHECK(err_fd[r] >= 0, "train: --nproc: cannot create a temporary file in /tmp: ", std::strerror(errno));
      ::unlink(tmpl);
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    SLM_CHECK(pid >= 0, "train: --nproc: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a killed launcher takes its ranks with it
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", world.c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      if (r > 0) {
        int null = ::open("/dev/null", O_WRONLY);
        if (null >= 0) ::dup2(null, STDOUT_FILENO);
        ::dup2(err_fd[r], STDERR_FILENO);
      }
      std::vector<char*> cargv;
      for (auto& a : child_args) cargv.push_back(const_cast<char*>(a.c_str()));
      cargv.push_back(nullptr);
      ::execv("/proc/self/exe", cargv.data());
      std::fprintf(stderr, "slmlab: error: train: --nproc: cannot run /proc/self/exe: %s\n", std::strerror(errno));
      ::_exit(127);
    }
    pids[r] = pid;
    live[r] = pid;
  }
  // Wait for all; on the first failure give the others a moment to fail on their own (the same bad
  // input fails every rank), then stop the rest: they would wait for the failed rank forever.
  std::vector<int> status(nproc, 0);
  std::vector<bool> done(nproc, false), stopped(nproc, false);
  int left = nproc, first_fail = -1;
  auto reap = [&](bool block) {
    int st = 0;
    const pid_t pid = ::waitpid(-1, &st, block ? 0 : WNOHANG);
    if (pid <= 0) return false;
    for (int r = 0; r < nproc; ++r)
      if (pids[r] == pid && !done[r]) {
        done[r] = true;
        live[r] = -1;
        status[r] = st;
        --left;
        const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok && first_fail < 0 && !stopped[r]) first_fail = r;
      }
    return true;
  };
  while (left > 0 && first_fail < 0) reap(true);
  if (left > 0) {
    const auto t0 = clk::now();
    while (left > 0 && clk::now() - t0 < std::chrono::seconds(3))
      if (!reap(false)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (int r = 0; r < nproc; ++r)
      if (!done[r]) {
        stopped[r] = true;
        ::kill(pids[r], SIGTERM);
      }
    while (left > 0) reap(true);
  }
  auto code = [](int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); };
  int result = 0;
  if (first_fail >= 0) {
    const bool rank0_failed = !stopped[0] && code(status[0]) != 0;  // its stderr is the terminal's
    if (rank0_failed) {
      result = code(status[0]);
    } else {
      result = code(status[first_fail]);
      std::string msg = read_all(err_fd[first_fail]);
      std::fprintf(stderr, "%s", msg.empty() ? ("slmlab: error: rank " + std::to_string(first_fail) + " exited with status " +
                                                std::to_string(result) + "\n").c_str()
                                             : msg.c_str());
    }
  }
  for (int fd : err_fd)
    if (fd >= 0) ::close(fd);
  return result;
}

}  // namespace slm::dist
