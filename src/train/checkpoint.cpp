#include "train/checkpoint.h"

#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "common/fs.h"
#include "model/gpt.h"

namespace slm {

using json = nlohmann::ordered_json;

std::string snapshot_name(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "ckpt_step%06lld.safetensors", static_cast<long long>(step));
  return buf;
}

void export_safetensors(const std::string& run_dir, const std::string& which, const std::string& out_path) {
  SLM_CHECK(which == "latest" || which == "best", "export: --checkpoint must be latest or best, got '", which, "'");
  const std::string path = fs::join(run_dir, ckpt::file_name(which));
  SLM_CHECK(fs::exists(path), "export: ", run_dir, " has no ", which, " checkpoint (", path, "); train it first");
  ckpt::Checkpoint ck = ckpt::read(path);
  st::File out;
  for (auto& [k, v] : ck.params) out.tensors.push_back({k, v});
  out.metadata = {{"format", "slmlab-weights v1"},
                  {"config", ck.metadata["config"]},
                  {"step", ck.metadata["step"]},
                  {"substrate_id", ck.metadata["substrate_id"]},
                  {"in_spike", ck.metadata["in_spike"]}};
  st::write(out_path, out);
}

namespace ckpt {

namespace {

constexpr const char* kRng = "rng.cpu";
const std::string kRankRng = "rng.cpu.rank";

bool starts(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double inf_if_null(const json& v) { return v.is_null() ? std::numeric_limits<double>::infinity() : v.get<double>(); }

std::string shape(const torch::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ")";
}

// The model's tensor `name` of kind `what` from `from`, checked.
const torch::Tensor& find(const Checkpoint& ck, const std::map<std::string, torch::Tensor>& from, const char* what,
                          const std::string& name, const char* why) {
  auto it = from.find(name);
  SLM_CHECK(it != from.end(), "[checkpoint] ", ck.path, " lacks ", what, " ", name, " that the model has", why);
  return it->second;
}

void copy_into(const Checkpoint& ck, const char* what, const std::string& name, torch::Tensor dst,
               const torch::Tensor& src) {
  SLM_CHECK(src.sizes() == dst.sizes(), "[checkpoint] ", ck.path, " holds ", what, " ", name, " as ", shape(src),
            " but the model's is ", shape(dst), "; it was written for another model");
  dst.copy_(src);
}

}  // namespace

std::string file_name(const std::string& which) {
  // A step has at most 18 digits, so it always fits the int64 that names its snapshot.
  const bool numeric = !which.empty() && which.size() <= 18 && which.find_first_not_of("0123456789") == std::string::npos;
  SLM_CHECK(which == "latest" || which == "best" || numeric,
            "--checkpoint must be latest, best or a step of at most 18 digits, got '", which, "'");
  return numeric ? snapshot_name(std::stoll(which)) : "ckpt_" + which + ".safetensors";
}

json TrainState::to_json() const {
  return {{"step", step},
          {"best_val", finite_or_null(best_val)},
          {"best_step", best_step},
          {"last_val", finite_or_null(last_val)},
          {"recent_losses", spikes.recent},
          {"last_spike_step", spikes.last_spike},
          {"spike_start_step", spikes.spike_start},
          {"high_losses", spikes.high},
          {"n_spikes", spikes.n_spikes},
          {"train_seconds", train_seconds},
          {"tokens", tokens},
          {"train_flops", train_flops},
          {"loader", {{"epoch", loader.epoch}, {"doc", loader.doc}, {"offset", loader.offset}, {"rows", loader.rows}}}};
}

TrainState TrainState::from_json(const json& j) {
  TrainState s;
  s.step = j.at("step");
  s.best_val = inf_if_null(j.at("best_val"));
  s.best_step = j.at("best_step");
  s.last_val = inf_if_null(j.at("last_val"));
  s.spikes.recent = j.at("recent_losses").get<std::vector<double>>();
  s.spikes.last_spike = j.at("last_spike_step");
  s.spikes.spike_start = j.value("spike_start_step", s.spikes.last_spike);
  s.spikes.high = j.value("high_losses", std::vector<double>{});
  s.spikes.n_spikes = j.at("n_spikes");
  s.train_seconds = j.at("train_seconds");
  s.tokens = j.at("tokens");
  s.train_flops = j.value("train_flops", -1.0);  // older checkpoints: unknown
  auto& l = j.at("loader");
  s.loader = {l.at("epoch"), l.at("doc"), l.at("offset"), l.at("rows")};
  return s;
}

st::File encode(const GPTImpl& model, const Optimizer* optim, const RunIdentity& id, const TrainState& state,
                bool in_spike, const std::vector<torch::Tensor>& rngs, const Reshard& whole) {
  auto w = [&](const std::string& name, const torch::Tensor& t) { return whole ? whole(name, t) : t; };
  st::File f;
  for (auto& p : model.named_parameters())
    f.tensors.push_back({"model." + p.key(), w(p.key(), p.value().detach()).cpu()});
  for (auto& b : model.named_buffers()) f.tensors.push_back({"buffer." + b.key(), b.value().detach().cpu()});
  if (optim) {
    for (auto& [k, v] : optim->state()) f.tensors.push_back({"optim." + k, w(k, v.detach()).cpu()});
    f.tensors.push_back({kRng, rngs.empty() ? at::detail::getDefaultCPUGenerator().get_state() : rngs[0]});
    for (size_t r = 1; r < rngs.size(); ++r) f.tensors.push_back({kRankRng + std::to_string(r), rngs[r]});
  }
  f.metadata = {{"format", kFormat},
                {"config", id.config},
                {"substrate_id", id.substrate_id},
                {"data_fingerprint", id.data_fingerprint},
                {"tokenizer_hash", id.tokenizer_hash},
                {"step", std::to_string(state.step)},
                {"world_size", std::to_string(id.world_size)},
                {"state", state.to_json().dump()},
                {"in_spike", in_spike ? "true" : "false"}};
  return f;
}

void write(const std::string& path, const st::File& f) { st::write(path, f); }

Checkpoint read(const std::string& path) {
  Checkpoint ck;
  ck.path = path;
  st::File f = st::read(path);
  ck.metadata = f.metadata;
  const std::string format = ck.metadata.count("format") ? ck.metadata["format"] : "";
  SLM_CHECK(format == kFormat, "[checkpoint] ", path, " is not a ", kFormat, " checkpoint (format '", format,
            "'); pass a checkpoint written by slmlab train");
  // Step, best val_bpb, loader position and config steer a resume and a report: unchecked, a flipped
  // digit would resume on another curve without a word. Older files checked their data only.
  SLM_CHECK(ck.metadata.count(st::kFileChecksum), "[checkpoint] ", path,
            " has no whole-file checksum (written before metadata was checked); its step, state and config cannot be "
            "trusted: re-train it (slmlab train --out <new folder>)");
  for (const char* key : {"step", "state", "config", "substrate_id", "tokenizer_hash"})
    SLM_CHECK(ck.metadata.count(key), "[checkpoint] ", path, " lacks metadata '", key, "'; the file is damaged");
  for (auto& [k, v] : f.tensors) {
    if (starts(k, "model.")) ck.params[k.substr(6)] = v;
    else if (starts(k, "buffer.")) ck.buffers[k.substr(7)] = v;
    else if (starts(k, "optim.")) ck.optim[k.substr(6)] = v;
    else if (k == kRng) ck.rngs[0] = v;
    else if (starts(k, kRankRng) && k.size() > kRankRng.size() &&
             k.find_first_not_of("0123456789", kRankRng.size()) == std::string::npos)
      ck.rngs[std::stoi(k.substr(kRankRng.size()))] = v;
    else fail("[checkpoint] ", path, " holds tensor ", k, ", which is no part of the ", kFormat, " layout");
  }
  ck.step = std::stoll(ck.metadata["step"]);
  ck.in_spike = ck.metadata["in_spike"] == "true";
  ck.world_size = ck.metadata.count("world_size") ? std::stoi(ck.metadata["world_size"]) : 1;
  return ck;
}

TrainState Checkpoint::state() const { return TrainState::from_json(json::parse(metadata.at("state"))); }

void check_resumable(const Checkpoint& ck, const RunIdentity& run) {
  const auto& m = ck.metadata;
  SLM_CHECK(m.at("tokenizer_hash") == run.tokenizer_hash, "train: checkpoint ", ck.path,
            " was trained with another tokenizer (", m.at("tokenizer_hash"), "); resume on its own data set");
  SLM_CHECK(m.at("substrate_id") == run.substrate_id, "train: checkpoint substrate ", m.at("substrate_id"),
            " differs from this run's ", run.substrate_id);
  // Same-size resumes only: the ranks' generator states and data slices are per world size.
  SLM_CHECK(ck.world_size == run.world_size, "train: ", ck.path, " was written by a run with ", ck.world_size,
            " data-parallel rank(s) and this one has ", run.world_size, "; resume it with --nproc ", ck.world_size,
            " (or WORLD_SIZE=", ck.world_size, ") or start a new --out");
  SLM_CHECK(!ck.optim.empty() && ck.rngs.count(0), "[checkpoint] ", ck.path,
            " holds no optimizer or generator state (a weights-only snapshot); it cannot be resumed");
}

void load_model(const Checkpoint& ck, GPTImpl& model, const Reshard& own_part) {
  torch::NoGradGuard ng;
  for (auto& p : model.named_parameters()) {
    const torch::Tensor& v = find(ck, ck.params, "parameter", p.key(), "; it was written for another model");
    copy_into(ck, "parameter", p.key(), p.value(), own_part ? own_part(p.key(), v) : v);
  }
  // Buffers are state the model trains and evaluates with: the checkpoint's, never freshly built ones.
  for (auto& b : model.named_buffers()) {
    const torch::Tensor& v = find(ck, ck.buffers, "module buffer", b.key(),
                                  " (written by a build that did not save buffers, or for another model)");
    copy_into(ck, "module buffer", b.key(), b.value(), v);
  }
}

void load_training_state(const Checkpoint& ck, Optimizer& optim, int rank, const Reshard& own_part) {
  std::map<std::string, torch::Tensor> state;
  for (auto& [k, v] : ck.optim) state[k] = own_part ? own_part(k, v) : v;
  optim.restore(state);
  auto it = ck.rngs.find(rank);
  if (it != ck.rngs.end()) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle to the global generator
    gen.set_state(it->second);
  }
}

}  // namespace ckpt
}  // namespace slm
