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
#ifdef SLMLAB_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "common/error.h"
#include "common/hash.h"

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

c10::intrusive_ptr<Collectives> make_group(const c10::intrusive_ptr<c10d::Store>& store, const World& w,
                                           const torch::Device& dev) {
  // A step's all-reduce waits for the slowest rank, an evaluation included: generous, not infinite.
  const auto timeout = std::chrono::minutes(30);
#ifdef SLMLAB_NCCL
  if (dev.is_cuda()) {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, w.rank, w.size, opts);
  }
#endif
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
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
    : w_(w), dev_(dev), store_(store), pg_(make_group(store, w, dev)), device_only_(backend() == "nccl") {}

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
  device_only_ = backend() == "nccl";
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

torch::Tensor Comm::ring_pass(const torch::Tensor& t) {
  if (w_.size == 1) return t;
  std::vector<at::Tensor> out{torch::empty_like(t.contiguous())};
  std::vector<at::Tensor> in{t.contiguous()};
  auto sent = pg_->send(in, (w_.rank + 1) % w_.size, /*tag=*/7);
  auto got = pg_->recv(out, (w_.rank + w_.size - 1) % w_.size, /*tag=*/7);
  got->wait();
  sent->wait();
  return out[0];
}

RingGroupPtr Comm::as_ring_group() {
  auto g = std::make_shared<RingGroup>();
  g->rank = w_.rank;
  g->size = w_.size;
  g->pass = [this](const torch::Tensor& t) { return ring_pass(t); };
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

c10::intrusive_ptr<c10d::Work> Comm::start_all_reduce_sum(std::vector<at::Tensor>& t) {
  SLM_CHECK(t.size() == 1 && t[0].is_contiguous(), "[dist] start_all_reduce_sum takes one contiguous tensor");
  return pg_->allreduce(t);
}

GradReducer::GradReducer(Comm& comm, const std::vector<torch::Tensor>& params, int64_t bucket_bytes)
    : comm_(comm), params_(params) {
  SLM_CHECK(bucket_bytes > 0, "[dist] gradient bucket size ", bucket_bytes, " must be positive");
  const int64_t n = static_cast<int64_t>(params_.size());
  bucket_of_.assign(n, -1);
  offset_.assign(n, 0);
  ready_.assign(n, 0);
  std::vector<int64_t> bytes;
  for (int64_t i = n - 1; i >= 0; --i) {
    const auto& p = params_[i];
    if (!p.requires_grad()) continue;  // frozen: never has a gradient
    const int64_t nb = p.numel() * static_cast<int64_t>(p.element_size());
    if (buckets_.empty() || bytes.back() + nb > bucket_bytes ||
        params_[buckets_.back().idx.front()].scalar_type() != p.scalar_type()) {
      buckets_.emplace_back();
      bytes.push_back(0);
    }
    Bucket& b = buckets_.back();
    bucket_of_[i] = static_cast<int64_t>(buckets_.size()) - 1;
    offset_[i] = bytes.back() / static_cast<int64_t>(p.element_size());
    b.idx.push_back(i);
    bytes.back() += nb;
  }
  for (size_t k = 0; k < buckets_.size(); ++k) {
    Bucket& b = buckets_[k];
    const auto& first = params_[b.idx.front()];
    b.flat = {torch::empty({bytes[k] / static_cast<int64_t>(first.element_size())}, first.options().requires_grad(false))};
    b.pending = static_cast<int64_t>(b.idx.size());
  }
  for (int64_t i = 0; i < n; ++i) {
    if (bucket_of_[i] < 0) continue;
    hooks_.push_back(params_[i].register_hook([this, i](torch::Tensor g) { on_grad(i, g); }));
  }
}

GradReducer::~GradReducer() {
  size_t h = 0;
  for (size_t i = 0; i < params_.size(); ++i)
    if (bucket_of_[i] >= 0) params_[i].remove_hook(hooks_[h++]);
}

void GradReducer::arm(const torch::Tensor& loss) {
  armed_ = true;
  sent_early_ = 0;
  // The leaves backward will reach: the variables of the AccumulateGrad nodes under loss's graph.
  std::unordered_set<const void*> reached;
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo;
  if (auto fn = loss.grad_fn()) todo.push_back(fn.get());
  while (!todo.empty()) {
    torch::autograd::Node* node = todo.back();
    todo.pop_back();
    if (!seen.insert(node).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(node))
      reached.insert(acc->variable.unsafeGetTensorImpl());
    for (const auto& e : node->next_edges())
      if (e.function) todo.push_back(e.function.get());
  }
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (bucket_of_[i] < 0 || ready_[i] || reached.count(params_[i].unsafeGetTensorImpl())) continue;
    const auto& p = params_[i];
    Bucket& b = buckets_[bucket_of_[i]];
    auto dst = b.flat[0].slice(0, offset_[i], offset_[i] + p.numel());
    if (p.grad().defined()) dst.copy_(p.grad().reshape({-1}));
    else dst.zero_();
    ready_[i] = 1;
    --b.pending;
  }
  send_ready();
}

// Runs inside backward, before autograd adds g into .grad: the finished gradient is what .grad
// already holds (earlier micro-batches) plus g, the same sum autograd is about to make.
void GradReducer::on_grad(int64_t i, const torch::Tensor& g) {
  if (!armed_ || !g.defined()) return;
  SLM_CHECK(!ready_[i], "[dist] a parameter's gradient arrived twice in one backward pass; "
                        "the gradient reducer needs one backward per micro-batch");
  torch::NoGradGuard ng;
  const auto& p = params_[i];
  Bucket& b = buckets_[bucket_of_[i]];
  auto dst = b.flat[0].slice(0, offset_[i], offset_[i] + p.numel());
  if (p.grad().defined()) torch::add_out(dst, p.grad().reshape({-1}), g.reshape({-1}));
  else dst.copy_(g.reshape({-1}));
  ready_[i] = 1;
  if (--b.pending == 0) send_ready();
}

void GradReducer::send(Bucket& b) { b.work = comm_.start_all_reduce_sum(b.flat); }

void GradReducer::send_ready() {
  while (next_ < buckets_.size() && buckets_[next_].pending == 0) {
    send(buckets_[next_++]);
    if (armed_) ++sent_early_;
  }
}

double GradReducer::finish() {
  const auto t0 = clk::now();
  torch::NoGradGuard ng;
  armed_ = false;
  const int64_t n = static_cast<int64_t>(params_.size());
  // What backward did not deliver: gradients accumulated unarmed, or none on this rank (zeros).
  for (auto& b : buckets_) {
    for (int64_t i : b.idx) {
      if (ready_[i]) continue;
      const auto& p = params_[i];
      auto dst = b.flat[0].slice(0, offset_[i], offset_[i] + p.numel());
      if (p.grad().defined()) dst.copy_(p.grad().reshape({-1}));
      else dst.zero_();
      ready_[i] = 1;
      --b.pending;
    }
  }
  send_ready();
  // Which gradients exist on some rank: the others must not turn into zeros the optimizer would use.
  auto have_host = torch::zeros({n}, torch::kInt32);
  {
    auto h = have_host.accessor<int32_t, 1>();
    for (int64_t i = 0; i < n; ++i) h[i] = params_[i].grad().defined() ? 1 : 0;
  }
  std::vector<at::Tensor> have{have_host.to(comm_.device())};
  auto have_work = comm_.start_all_reduce_sum(have);
  const double world = static_cast<double>(comm_.world().size);
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    auto& flat = b.flat[0];
    flat.div_(world);
    for (int64_t i : b.idx) {
      auto& p = params_[i];
      auto src = flat.slice(0, offset_[i], offset_[i] + p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(src);
      else p.mutable_grad() = src.clone();
    }
    b.pending = static_cast<int64_t>(b.idx.size());
  }
  have_work->wait();
  have_host = have[0].to(torch::kCPU);
  auto h = have_host.accessor<int32_t, 1>();
  for (int64_t i = 0; i < n; ++i)
    if (h[i] == 0) params_[i].mutable_grad() = torch::Tensor();
  std::fill(ready_.begin(), ready_.end(), 0);
  next_ = 0;
  return std::chrono::duration<double>(clk::now() - t0).count();
}

void Comm::all_reduce_sum(torch::Tensor& t) {
  SLM_CHECK(t.is_contiguous(), "[dist] all_reduce_sum needs a contiguous tensor");
  if (device_only_ && t.device() != dev_) {  // NCCL reduces device memory only
    auto d = t.to(dev_);
    all_reduce_sum(d);
    t.copy_(d);
    return;
  }
  std::vector<at::Tensor> v{t};
  const auto t0 = std::chrono::steady_clock::now();
  pg_->allreduce(v)->wait();
  collective_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double Comm::take_collective_seconds() {
  const double s = collective_s_;
  collective_s_ = 0;
  return s;
}

std::vector<torch::Tensor> Comm::all_gather(const torch::Tensor& t) {
  if (device_only_ && t.device() != dev_) {
    auto out = all_gather(t.to(dev_));
    for (auto& o : out) o = o.to(t.device());
    return out;
  }
  std::vector<at::Tensor> in{t.contiguous()};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < w_.size; ++r) out[0].push_back(torch::empty_like(in[0]));
  const auto t0 = std::chrono::steady_clock::now();
  pg_->allgather(out, in)->wait();
  collective_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out[0];
}

void Comm::broadcast(std::vector<torch::Tensor>& ts, int root) {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  for (auto& t : ts) {
    SLM_CHECK(t.is_contiguous(), "[dist] broadcast needs contiguous tensors");
    std::vector<at::Tensor> v{device_only_ && t.device() != dev_ ? t.to(dev_) : t};
    pg_->broadcast(v, o)->wait();
    if (!v[0].is_same(t)) t.copy_(v[0]);
  }
}

void Comm::barrier() { pg_->barrier()->wait(); }

void check_replicas(Comm& group, const std::vector<std::pair<std::string, torch::Tensor>>& named, int64_t step,
                    const std::string& kind) {
  const int64_t n = static_cast<int64_t>(named.size());
  auto mine = torch::empty({n + 1}, torch::kInt64);
  auto h = mine.accessor<int64_t, 1>();
  for (int64_t i = 0; i < n; ++i) {
    auto t = named[i].second.detach().to(torch::kCPU).contiguous();
    const std::string_view bytes(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
    h[i] = static_cast<int64_t>(hash64(bytes, static_cast<uint64_t>(t.scalar_type())));
  }
  h[n] = n;  // a rank with other tensors differs too
  auto all = group.all_gather(mine);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r][n].item<int64_t>() != n)
      fail("[dist] --check-replicas: after step ", step, " ", kind, " rank ", r, " holds ", all[r][n].item<int64_t>(),
           " tensors and rank 0 ", n, "; the ranks built different models");
    auto differ = all[r].slice(0, 0, n).ne(all[0].slice(0, 0, n));
    const int64_t k = differ.sum().item<int64_t>();
    if (k == 0) continue;
    const int64_t first = differ.nonzero()[0][0].item<int64_t>();
    fail("[dist] --check-replicas: after step ", step, " ", named[first].first, " differs between ", kind, " ranks 0 and ",
         r, " (", k, " of ", n, " tensors differ); the replicas drifted apart: something updates it from rank-local data");
  }
}

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

int launch_local(int nproc, const std::string& what) {
  SLM_CHECK(nproc >= 1 && nproc <= 256, what, ": --nproc ", nproc, " is outside [1, 256]");
  SLM_CHECK(std::getenv("WORLD_SIZE") == nullptr, what, ": --nproc ", nproc,
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
      SLM_CHECK(err_fd[r] >= 0, what, ": --nproc: cannot create a temporary file in /tmp: ", std::strerror(errno));
      ::unlink(tmpl);
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    SLM_CHECK(pid >= 0, what, ": --nproc: fork failed: ", std::strerror(errno));
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
      std::fprintf(stderr, "slmlab: error: %s: --nproc: cannot run /proc/self/exe: %s\n", what.c_str(), std::strerror(errno));
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
