// Data-parallel training over torch.distributed's c10d: the world a rank belongs to, the process
// group (Gloo on CPU; the backend is chosen in one function, make_group), the few collectives the
// trainer uses, and `--nproc N`'s local launcher. A rank learns its place from the launcher
// environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the same
// variables torchrun sets and an `srun` wrapper can set, so one binary runs under either.
#pragma once
#include <torch/torch.h>
#include <torch/version.h>  // TORCH_VERSION_MAJOR, for Collectives below
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#endif
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <memory>
#include <string>
#include <vector>

#include "model/ring.h"
#include "model/tp.h"

namespace slm::dist {

// c10d's interface to one backend's collectives. Up to LibTorch 1.13 a backend (Gloo, NCCL) is a
// c10d::ProcessGroup; from 2.0 it is a c10d::Backend that a ProcessGroup wraps. Only collectives
// are used here, so Comm holds the backend. This alias and make_group are the distributed code's
// whole version and device seam.
#ifndef TORCH_VERSION_MAJOR
#error "torch/version.h did not define TORCH_VERSION_MAJOR"
#elif TORCH_VERSION_MAJOR >= 2
using Collectives = c10d::Backend;
#else
using Collectives = c10d::ProcessGroup;
#endif

// Where this process stands. size 1 (no launcher variables) is the single-process run.
struct World {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;  // ranks on this machine: threads are split between them
  bool is_main() const { return rank == 0; }
};

// Reads the launcher environment; a world of one when WORLD_SIZE is unset. Bad values fail clearly.
World world_from_env();

// The process group of one world and the collectives the trainer needs. Every call is collective:
// all ranks make it, in the same order.
class Comm {
 public:
  // Rendezvous through a TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it).
  Comm(const World& w, const torch::Device& dev);
  // Rendezvous through a given store (tests: a HashStore shared by threads).
  Comm(const c10::intrusive_ptr<c10d::Store>& store, const World& w, const torch::Device& dev);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  const World& world() const { return w_; }
  const torch::Device& device() const { return dev_; }
  std::string backend() const;
  // Sums a tensor over the ranks, in place.
  void all_reduce_sum(torch::Tensor& t);
  // Starts summing one contiguous tensor (t holds exactly one) over the ranks, in place; the caller
  // waits on the work before reading it.
  c10::intrusive_ptr<c10d::Work> start_all_reduce_sum(std::vector<at::Tensor>& t);
  // Every rank's copy of `t` (same shape everywhere), in rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t);
  // Rank `root`'s values into every rank's tensors, in place.
  void broadcast(std::vector<torch::Tensor>& ts, int root = 0);
  void barrier();
  // A group of some of this world's ranks (this one among them), met through this group's store under
  // `name`: every member calls it with the same name and ranks, in the same order; others do not.
  // Its World numbers the members 0.. in the order of `ranks`.
  std::unique_ptr<Comm> subgroup(const std::string& name, const std::vector<int>& ranks);
  // This group as the model's tensor-parallel group (model/tp.h). The Comm must outlive it.
  TpGroupPtr as_tp_group();
  // Sends t to rank + 1 (mod size) and returns what rank - 1 sent (same shape and dtype): Gloo's
  // point-to-point send and recv, both started before either is waited on.
  torch::Tensor ring_pass(const torch::Tensor& t);
  // This group as ring attention's group (model/ring.h). The Comm must outlive it.
  RingGroupPtr as_ring_group();
  // Wall seconds spent inside this group's blocking all-reduces and all-gathers since the last call
  // (waiting for the slowest rank included), and the count restarts: what a step of tensor
  // parallelism spends in its collectives (the trainer logs it as tp_comm_ms).
  double take_collective_seconds();

 private:
  double collective_s_ = 0;
  World w_;
  torch::Device dev_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<Collectives> pg_;
  bool device_only_ = false;  // NCCL: tensors elsewhere are staged through the group's device
};

// Averages parameters' gradients over a group's ranks, as DDP's reducer does: the parameters are
// laid out once in buckets of at most bucket_bytes (one dtype each, in reverse order, roughly the
// order backward produces their gradients), each bucket one flat buffer and one all-reduce. Armed
// for a backward pass, a hook on each parameter copies its finished gradient into its bucket, and a
// bucket whose gradients are all in is sent while backward goes on; buckets start strictly in
// order, so every rank issues the same collectives in the same order whatever its timing. finish()
// sends what backward did not reach (parameters unused on this rank contribute zeros), waits,
// divides by the group size and writes the means back into .grad. A gradient undefined on every
// rank stays undefined (the optimizer skips it, as it would in one process). Unarmed, finish() does
// it all after backward. The result does not depend on arming: the same buckets, the same sums.
class GradReducer {
 public:
  GradReducer(Comm& comm, const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 4 << 20);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Sends buckets during the next backward pass, of `loss` (the last micro-batch's: earlier ones
  // accumulate). Parameters `loss` does not reach are final already: they count as delivered now, as
  // DDP's find_unused_parameters does, so a bucket holding one is not held back until finish().
  void arm(const torch::Tensor& loss);
  // Completes the averaging; returns the seconds this call took (the communication not hidden
  // behind backward, plus copying back).
  double finish();
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Buckets the last armed backward sent before it returned.
  int64_t sent_during_backward() const { return sent_early_; }

 private:
  struct Bucket {
    std::vector<int64_t> idx;  // parameter indices, in layout order
    std::vector<at::Tensor> flat;  // one tensor: what c10d takes
    int64_t pending = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  void on_grad(int64_t i, const torch::Tensor& g);
  void send_ready();
  void send(Bucket& b);

  Comm& comm_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
  std::vector<int64_t> bucket_of_, offset_;
  std::vector<char> ready_;
  std::vector<Bucket> buckets_;
  size_t next_ = 0;  // the first bucket not sent yet
  bool armed_ = false;
  int64_t sent_early_ = 0;
};

// Where a rank sits in a TP x DP mesh of world.size = tp x dp ranks. As Megatron lays it out, the
// ranks of one tensor-parallel group are consecutive (they share a machine's fast links first):
// rank = dp_rank * tp + tp_rank.
struct Mesh {
  int tp = 1, dp = 1, tp_rank = 0, dp_rank = 0;
  std::vector<int> tp_ranks, dp_ranks;  // the world ranks of this rank's TP group and DP group
};
Mesh mesh_of(const World& w, int tp);

// The replica check (`train --check-replicas`): every rank of a data-parallel group must hold the same
// tensors bit for bit (and the ranks of a tensor-parallel group the same unsplit ones). Hashes the bytes of each of `named` (parameters and buffers, the same names in
// the same order on every rank), all-gathers the hashes and fails, naming the first tensor that
// differs, the ranks (numbered within the group, called `kind`) and `step`, when any rank's differ
// from the group's first rank's. Collective.
void check_replicas(Comm& group, const std::vector<std::pair<std::string, torch::Tensor>>& named, int64_t step,
                    const std::string& kind = "data-parallel");

// The process group for a device: Gloo on CPU; on CUDA, NCCL where the build found it (CMake's
// SLMLAB_NCCL), else Gloo, which moves CUDA tensors through host memory.
c10::intrusive_ptr<Collectives> make_group(const c10::intrusive_ptr<c10d::Store>& store, const World& w,
                                           const torch::Device& dev);

// `slmlab train ... --nproc N` (and eval bpb's; `what` names the command in messages): re-runs this binary's command line (from /proc/self/cmdline, --nproc
// removed) as N child processes with the launcher environment of a one-machine world, waits for
// them, and stops the rest when one fails. Rank 0 prints to the terminal; the others are silent
// unless they fail first. Returns the exit status to use.
int launch_local(int nproc, const std::string& what = "train");

}  // namespace slm::dist
