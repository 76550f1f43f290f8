// Data-parallel training over torch.distributed's c10d: the world a rank belongs to, the process
// group (Gloo on CPU; the backend is chosen in one function, make_group), the few collectives the
// trainer uses, and `--nproc N`'s local launcher. A rank learns its place from the launcher
// environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), the same
// variables torchrun sets and an `srun` wrapper can set, so one binary runs under either.
#pragma once
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <memory>
#include <string>
#include <vector>

#include "model/tp.h"

namespace slm::dist {

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
  std::string backend() const;
  // Averages the parameters' gradients over the ranks, in place: grads flattened into buckets of at most
  // bucket_bytes (one dtype each), one all-reduce per bucket (all in flight at once), then copied
  // back. Not overlapped with backward. An undefined gradient stays undefined only where it is
  // undefined on every rank; where some rank has one, the others contribute zeros.
  // Returns the seconds spent (bucketing, communication and copying back).
  double all_reduce_mean(const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 4 << 20);
  // Sums a tensor over the ranks, in place.
  void all_reduce_sum(torch::Tensor& t);
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

 private:
  World w_;
  torch::Device dev_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
};

// Where a rank sits in a TP x DP mesh of world.size = tp x dp ranks. As Megatron lays it out, the
// ranks of one tensor-parallel group are consecutive (they share a machine's fast links first):
// rank = dp_rank * tp + tp_rank.
struct Mesh {
  int tp = 1, dp = 1, tp_rank = 0, dp_rank = 0;
  std::vector<int> tp_ranks, dp_ranks;  // the world ranks of this rank's TP group and DP group
};
Mesh mesh_of(const World& w, int tp);

// The process group for a device: Gloo on CPU. NCCL would be CUDA's; this LibTorch build has none.
c10::intrusive_ptr<c10d::ProcessGroup> make_group(const c10::intrusive_ptr<c10d::Store>& store, const World& w,
                                                  const torch::Device& dev);

// `slmlab train ... --nproc N`: re-runs this binary's command line (from /proc/self/cmdline, --nproc
// removed) as N child processes with the launcher environment of a one-machine world, waits for
// them, and stops the rest when one fails. Rank 0 prints to the terminal; the others are silent
// unless they fail first. Returns the exit status to use.
int launch_local(int nproc);

}  // namespace slm::dist
