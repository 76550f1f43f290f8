// The checkpoint: one safetensors file (train/safetensors.h: written atomically, checksummed) and the
// only code that knows its layout. Format "slmlab-ckpt v1":
//   model.<param>              every parameter, whole (tensor-parallel shards gathered)
//   buffer.<buffer>            every module buffer: state modules keep (CBP's utilities and ages) and
//                              evaluate with (GateSkip's thresholds, NCP's codebook)
//   optim.<param>.<state>      optimizer state, optim.step ...      } not in weights-only snapshots
//   rng.cpu, rng.cpu.rank<r>   CPU generator of rank 0, of rank r   } (--keep-checkpoints)
//   metadata: format, config (the run configuration, JSON), substrate_id, data_fingerprint,
//             tokenizer_hash, step, world_size, state (TrainState, JSON: loader position, best and
//             last val_bpb, the spike detector), in_spike
// Reading has one set of rules, one error per problem: an unknown format or tensor, a parameter or a
// module buffer the model has and the file lacks (or shapes differently), optimizer state missing
// for a resume: each refused with a one-line error naming the file and the tensor.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/loader.h"
#include "train/optim.h"
#include "train/safetensors.h"
#include "train/spike.h"

namespace slm {

struct GPTImpl;

// The file name of the weights-only snapshot of `step` inside a run folder: "ckpt_step000150.safetensors".
std::string snapshot_name(int64_t step);

// Writes a run's model weights (no optimizer state) as safetensors; `which` is "latest" or "best".
void export_safetensors(const std::string& run_dir, const std::string& which, const std::string& out_path);

namespace ckpt {

constexpr const char* kFormat = "slmlab-ckpt v1";

// The file of checkpoint `which` in a run folder: "latest", "best", or a step (a kept snapshot).
std::string file_name(const std::string& which);

// Where training stands: what a resume needs beside the tensors.
struct TrainState {
  int64_t step = 0;
  double best_val = std::numeric_limits<double>::infinity();  // inf: no eval yet
  int64_t best_step = -1;
  double last_val = std::numeric_limits<double>::infinity();
  SpikeDetector spikes;
  double train_seconds = 0;  // wall time of training steps across resumes
  int64_t tokens = 0;
  // Training FLOPs of the steps taken, each step at the FLOPs per token of what ran in it (DSA's
  // dense warm-up, then its sparse stage); -1 when unknown (resumed from a checkpoint before it).
  double train_flops = 0;
  data::LoaderState loader;

  nlohmann::ordered_json to_json() const;  // inf as null (JSON has no inf)
  static TrainState from_json(const nlohmann::ordered_json& j);
};

// What a checkpoint says about the run it belongs to.
struct RunIdentity {
  std::string config;  // the run configuration as JSON text
  std::string substrate_id, data_fingerprint, tokenizer_hash;
  int world_size = 1;  // data-parallel ranks of the run that wrote it
};

// A tensor by checkpoint name ("<param>" or "<param>.<state>") -> the tensor to store or load: the
// whole of a tensor-parallel shard, or this rank's shard of a whole tensor. Null: as it is.
using Reshard = std::function<torch::Tensor(const std::string& name, const torch::Tensor& t)>;

// The file of a checkpoint. optim null: a weights-only snapshot (weights and buffers, no optimizer
// or generator state). rngs: every data-parallel rank's CPU generator state in rank order (empty:
// this process's own). With tensor parallelism `whole` gathers shards (a collective: every rank of
// the TP group calls it, and one writes).
st::File encode(const GPTImpl& model, const Optimizer* optim, const RunIdentity& id, const TrainState& state,
                bool in_spike, const std::vector<torch::Tensor>& rngs, const Reshard& whole = nullptr);
// Writes atomically (a reader sees the old file or the new one, never a torn one).
void write(const std::string& path, const st::File& f);

// A checkpoint read back and checked against the layout.
struct Checkpoint {
  std::string path;
  std::map<std::string, std::string> metadata;
  std::map<std::string, torch::Tensor> params, buffers, optim;  // names without their prefix
  std::map<int, torch::Tensor> rngs;                             // CPU generator state by rank
  int64_t step = 0;
  bool in_spike = false;
  int world_size = 1;

  TrainState state() const;
};

// Reads and checks the format and every tensor name; throws slm::Error naming the problem.
Checkpoint read(const std::string& path);
// Refuses to resume `ck` in a run of identity `run`: another tokenizer, substrate or world size.
void check_resumable(const Checkpoint& ck, const RunIdentity& run);
// Copies every parameter and module buffer of `model` from `ck` (parameters through `own_part`).
void load_model(const Checkpoint& ck, GPTImpl& model, const Reshard& own_part = nullptr);
// Restores the optimizer's state (through `own_part`) and this rank's CPU generator.
void load_training_state(const Checkpoint& ck, Optimizer& optim, int rank, const Reshard& own_part = nullptr);

}  // namespace ckpt
}  // namespace slm
