#include "train/trainer.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <numeric>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "catalog/catalog.h"
#include "common/device.h"
#include "common/error.h"
#include "common/format.h"
#include "common/fs.h"
#include "common/hash.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/plan.h"
#include "model/gpt.h"
#include "train/dist.h"
#include "train/optim.h"
#include "train/run.h"
#include "train/safetensors.h"
#include "train/spike.h"
#include "train/substrate.h"

namespace slm {

using json = nlohmann::ordered_json;
using clk = std::chrono::steady_clock;

namespace {

constexpr const char* kCkptFormat = "slmlab-ckpt v1";

double seconds(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

// Learning-rate multiplier: linear warmup, constant, linear warmdown to final_lr_frac.
double lr_factor(const Substrate& s, int64_t step) {
  if (s.warmup_steps > 0 && step < s.warmup_steps) return static_cast<double>(step + 1) / s.warmup_steps;
  const double warmdown = std::round(s.warmdown_frac * s.steps);
  const double left = static_cast<double>(s.steps - step);
  if (warmdown > 0 && left <= warmdown) return s.final_lr_frac + (1.0 - s.final_lr_frac) * (left / warmdown);
  return 1.0;
}

// Everything a run is: printed at the start, stored in config.json and in every checkpoint.
struct RunConfig {
  Substrate sub;
  ModelConfig model;
  std::string substrate_id, data_dir, data_fingerprint, tokenizer_hash, precision, precision_reason, device;
  int threads = 1;
  int world_size = 1;                // data-parallel ranks (an execution setting: not in the id)
  int64_t rank_batch = 0;            // rows per micro-batch on each rank
  int64_t grad_accum = 0;            // micro-batches per step on each rank
  std::vector<std::string> modules;

  json to_json() const {
    json j;
    j["substrate_id"] = substrate_id;
    j["substrate"] = sub.to_toml();
    j["substrate_canonical"] = sub.canonical();
    j["model"] = model_config_json(model);
    j["data"] = {{"dir", data_dir}, {"fingerprint", data_fingerprint}, {"tokenizer_hash", tokenizer_hash}};
    j["precision"] = precision;
    j["precision_reason"] = precision_reason;
    j["device"] = device;
    j["threads"] = threads;
    j["modules"] = modules;
    j["world_size"] = world_size;
    j["rank_device_batch"] = rank_batch;
    j["grad_accum"] = grad_accum;
    j["eval_tokens"] = sub.eval_tokens;    // what `slmlab eval bpb` scores by default
    j["device_batch"] = sub.device_batch;  // its rows per forward, so it reproduces training's evals
    return j;
  }
};

struct Metrics {
  std::string path;
  FILE* f = nullptr;
  ~Metrics() {
    if (f) std::fclose(f);
  }
  // Keeps records up to `step` (a resume), dropping later ones and any torn last line.
  void open(int64_t keep_through) {
    std::string kept;
    if (fs::exists(path)) {
      std::istringstream in(fs::read_file(path));
      std::string line;
      while (std::getline(in, line)) {
        try {
          auto j = json::parse(line);
          if (j.value("step", int64_t(-1)) <= keep_through) kept += line + "\n";
        } catch (const json::exception&) {
          // a line torn by a kill: the checkpoint decides what happened, not this line
        }
      }
    }
    fs::write_atomic(path, kept);
    f = std::fopen(path.c_str(), "a");
    SLM_CHECK(f, "cannot append to ", path);
  }
  void write(const json& j) {
    if (!f) return;  // a data-parallel rank other than 0: rank 0 keeps the record
    std::string s = j.dump() + "\n";
    std::fwrite(s.data(), 1, s.size(), f);
    std::fflush(f);
  }
};

struct State {
  int64_t step = 0;
  double best_val = std::numeric_limits<double>::infinity();
  int64_t best_step = -1;
  double last_val = std::numeric_limits<double>::infinity();
  SpikeDetector spikes;
  double train_seconds = 0;           // wall time of training steps across resumes
  int64_t tokens = 0;
  data::LoaderState loader;

  json to_json() const {
    return {{"step", step},
            {"best_val", best_val},
            {"best_step", best_step},
            {"last_val", last_val},
            {"recent_losses", spikes.recent},
            {"last_spike_step", spikes.last_spike},
            {"spike_start_step", spikes.spike_start},
            {"high_losses", spikes.high},
            {"n_spikes", spikes.n_spikes},
            {"train_seconds", train_seconds},
            {"tokens", tokens},
            {"loader", {{"epoch", loader.epoch}, {"doc", loader.doc}, {"offset", loader.offset}, {"rows", loader.rows}}}};
  }
  static State from_json(const json& j) {
    State s;
    s.step = j.at("step");
    s.best_val = j.at("best_val").is_null() ? std::numeric_limits<double>::infinity() : j.at("best_val").get<double>();
    s.best_step = j.at("best_step");
    s.last_val = j.at("last_val").is_null() ? std::numeric_limits<double>::infinity() : j.at("last_val").get<double>();
    s.spikes.recent = j.at("recent_losses").get<std::vector<double>>();
    s.spikes.last_spike = j.at("last_spike_step");
    s.spikes.spike_start = j.value("spike_start_step", s.spikes.last_spike);
    s.spikes.high = j.value("high_losses", std::vector<double>{});
    s.spikes.n_spikes = j.at("n_spikes");
    s.train_seconds = j.at("train_seconds");
    s.tokens = j.at("tokens");
    auto& l = j.at("loader");
    s.loader = {l.at("epoch"), l.at("doc"), l.at("offset"), l.at("rows")};
    return s;
  }
};

// JSON cannot hold inf; the state stores null for "no eval yet".
json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// weights_only: a snapshot for evaluation (`--keep-checkpoints`), without optimizer and RNG state.
// rngs: every data-parallel rank's CPU generator state, rank order (empty: this process's own).
// With tensor parallelism the file holds whole tensors, as one process would have them (so that
// eval, export and generate read it unchanged): `whole` gathers a shard (collective over the TP group,
// so every rank builds the file and rank 0 writes it).
using Whole = std::function<torch::Tensor(const std::string& name, const torch::Tensor& t)>;
st::File checkpoint_file(GPT& model, const Optimizer& opt, const RunConfig& rc, const State& st, bool in_spike,
                         bool weights_only, const std::vector<torch::Tensor>& rngs, const Whole& whole) {
  auto w = [&](const std::string& name, const torch::Tensor& t) { return whole ? whole(name, t) : t; };
  st::File f;
  for (auto& p : model->named_parameters())
    f.tensors.push_back({"model." + p.key(), w(p.key(), p.value().detach()).cpu()});
  if (!weights_only) {
    // Buffers hold what modules keep across steps (continual backprop's utilities and ages).
    for (auto& b : model->named_buffers()) f.tensors.push_back({"buffer." + b.key(), b.value().detach().cpu()});
    for (auto& [k, v] : opt.state()) f.tensors.push_back({"optim." + k, w(k, v.detach()).cpu()});
    f.tensors.push_back({"rng.cpu", rngs.empty() ? at::detail::getDefaultCPUGenerator().get_state() : rngs[0]});
    for (size_t r = 1; r < rngs.size(); ++r) f.tensors.push_back({"rng.cpu.rank" + std::to_string(r), rngs[r]});
  }
  json sj = st.to_json();
  sj["best_val"] = finite_or_null(st.best_val);
  sj["last_val"] = finite_or_null(st.last_val);
  f.metadata = {{"format", kCkptFormat},
                {"config", rc.to_json().dump()},
                {"substrate_id", rc.substrate_id},
                {"data_fingerprint", rc.data_fingerprint},
                {"tokenizer_hash", rc.tokenizer_hash},
                {"step", std::to_string(st.step)},
                {"world_size", std::to_string(rc.world_size)},
                {"state", sj.dump()},
                {"in_spike", in_spike ? "true" : "false"}};
  return f;
}

// The data-side modules (FIM, IFIM, SRI) as the loader's transforms.
data::TransformSet transform_set(const std::vector<catalog::ModuleArgs>& mods) {
  data::TransformSet t;
  for (auto& m : mods) {
    if (m.name == "fim") {
      data::FimOptions o;
      o.rate = m.f64("rate");
      o.spm_rate = m.f64("spm_rate");
      o.split = data::parse_fim_split(m.str("split"));
      t.fim = o;
    } else if (m.name == "ifim") {
      data::IfimOptions o;
      o.rate = m.f64("rate");
      o.spm_rate = m.f64("spm_rate");
      o.split = data::parse_fim_split(m.str("split"));
      o.max_instruction_bytes = static_cast<int>(m.i64("max_instruction_bytes"));
      t.ifim = o;
    } else if (m.name == "sri") {
      data::SriOptions o;
      o.rate = m.f64("rate");
      o.context_lines = static_cast<int>(m.i64("context_lines"));
      o.max_middle_lines = static_cast<int>(m.i64("max_middle_lines"));
      t.sri = o;
    }
  }
  return t;  // Loader::set_transforms validates it
}

}  // namespace

// SIGTERM (Slurm's preemption and `scontrol requeue`, a launcher stopping its ranks) or SIGINT: the
// trainer finishes the step it is in, writes its latest checkpoint and exits with kPreempted; the
// same command resumes it. Every rank stops at the same step: the flag travels with the step's
// all-reduce of the losses.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

int train(const TrainOptions& opt) {
  const auto t_start = clk::now();
  // ---- configuration: everything is checked before a step runs
  Substrate sub = load_substrate(opt.substrate);
  for (auto& kv : opt.sets) set_field(sub, kv);
  sub.validate();
  // Modules resolve against the catalog and its constraints before anything is built.
  std::vector<catalog::ModuleArgs> mods;
  catalog::ModelView view;
  {
    std::vector<std::string> errs;
    for (auto& m : opt.modules) mods.push_back(catalog::resolve_arg(m, errs));
    if (errs.empty()) errs = catalog::check(mods, engine::model_view(sub), /*training=*/true);
    if (!errs.empty()) {
      std::string all = "train: ";
      for (size_t i = 0; i < errs.size(); ++i) all += (i ? "; " : "") + errs[i];
      throw Error(all);
    }
    view = catalog::adjusted(mods, engine::model_view(sub));
    for (auto& m : mods)
      SLM_CHECK(find_model_module(m.name) || std::string(catalog::find(m.name)->family) == "data", "train: module ",
                m.name, " is in the catalog but not wired into this trainer yet");
  }
  const data::TransformSet transforms = transform_set(mods);
  SLM_CHECK(!opt.data_dir.empty(), "train: --data DATA_DIR is required");
  SLM_CHECK(!opt.out_dir.empty() || opt.dry_run, "train: --out RUN_DIR is required");
  data::DataSet ds(opt.data_dir);
  const int32_t vocab = ds.tokenizer().vocab_size();
  SLM_CHECK(sub.vocab == 0 || sub.vocab == vocab, "train: substrate ", sub.name, " expects vocab ", sub.vocab,
            " but data set ", opt.data_dir, " has ", vocab, "; build the data with --vocab ", sub.vocab);
  SLM_CHECK(sub.data_fingerprint.empty() || sub.data_fingerprint == ds.fingerprint(), "train: substrate ", sub.name,
            " pins data fingerprint ", sub.data_fingerprint, " but ", opt.data_dir, " is ", ds.fingerprint(),
            "; train on the pinned data set or use a substrate without a pin");
  sub.vocab = vocab;
  sub.data_fingerprint = ds.fingerprint();
  const uint64_t train_tokens = ds.n_tokens(data::Split::Train), val_tokens = ds.n_tokens(data::Split::Val);
  // A dry run reports what a real run would refuse instead of stopping at the first problem.
  auto require = [&](bool ok, const std::string& msg) {
    if (ok) return;
    if (!opt.dry_run) throw Error(msg);
    std::printf("dry run: a real run would refuse: %s\n", msg.c_str());
  };
  require(static_cast<uint64_t>(sub.context) < train_tokens,
          "train: context " + std::to_string(sub.context) + " is longer than the training split (" +
              std::to_string(train_tokens) + " tokens) allows; lower --set context=");
  require(static_cast<uint64_t>(sub.eval_tokens) <= val_tokens,
          "train: eval_tokens " + std::to_string(sub.eval_tokens) + " exceeds the validation split (" +
              std::to_string(val_tokens) + " tokens); lower --set eval_tokens= or build with a larger --val-frac");

  // Data parallelism: this process is rank `world.rank` of `world.size` (the launcher environment).
  // The total batch stays the substrate's; each rank takes 1/size of its rows.
  // Tensor parallelism: the substrate's tp ranks split each block (model/tp.h); the world is tp x dp
  // ranks, the ranks of a TP group consecutive (dist::mesh_of). A dry run times one process.
  const dist::World world = opt.dry_run ? dist::World{} : dist::world_from_env();
  const int tp = opt.dry_run ? 1 : static_cast<int>(sub.tp);
  require(tp >= 1 && world.size % tp == 0,
          "train: substrate " + sub.name + " sets tp=" + std::to_string(sub.tp) + " but this run has " +
              std::to_string(world.size) + " rank(s); run tp x dp ranks (--nproc " + std::to_string(sub.tp * std::max<int64_t>(1, sub.dp)) +
              ") or --set tp=1");
  const dist::Mesh mesh = dist::mesh_of(world, tp);
  require(sub.dp == 1 || sub.dp == mesh.dp || opt.dry_run,
          "train: substrate " + sub.name + " sets dp=" + std::to_string(sub.dp) + " but this run has " +
              std::to_string(mesh.dp) + " data-parallel rank(s) (" + std::to_string(world.size) + " ranks / tp " +
              std::to_string(tp) + "); run it with --nproc " + std::to_string(sub.dp * tp) + " or --set dp=1");
  const int64_t rows_per_step = sub.total_batch / sub.context;
  require(rows_per_step % mesh.dp == 0, "train: the " + std::to_string(rows_per_step) + " rows of a step (total_batch / context) do not split over " +
                                               std::to_string(mesh.dp) + " data-parallel ranks; use a --nproc that divides " + std::to_string(rows_per_step * tp));
  const int64_t rank_rows = rows_per_step / mesh.dp;
  // rows per forward on a rank: device_batch, or fewer when a rank's share of the step is smaller
  const int64_t rank_batch = std::gcd(rank_rows, sub.device_batch);
  // Rank 0 speaks for the run: the others print nothing (their errors still reach stderr).
  if (!world.is_main() && !std::freopen("/dev/null", "w", stdout)) fail("train: rank ", world.rank, " cannot silence stdout");

  RunConfig rc;
  const torch::Device dev = device::resolve(sub.device, world.local_rank);  // cuda: one GPU per local rank
  std::unique_ptr<dist::Comm> comm;  // null: one process
  if (world.size > 1) comm = std::make_unique<dist::Comm>(world, dev);
  // The groups inside the world: tp_comm splits the blocks, dpc averages gradients (the world itself
  // when there is no tensor parallelism; null when one data-parallel rank).
  std::unique_ptr<dist::Comm> tp_comm, dp_comm;
  if (tp > 1) tp_comm = comm->subgroup("tp" + std::to_string(mesh.dp_rank), mesh.tp_ranks);
  if (tp > 1 && mesh.dp > 1) dp_comm = comm->subgroup("dp" + std::to_string(mesh.tp_rank), mesh.dp_ranks);
  dist::Comm* dpc = tp > 1 ? dp_comm.get() : comm.get();
  rc.device = sub.device;
  rc.world_size = world.size;
  // threads = 0 shares the cores between the ranks on this machine
  rc.threads = sub.threads > 0 ? static_cast<int>(sub.threads)
                               : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / world.local_size);
  at::set_num_threads(rc.threads);
  std::string why;
  const bool bf16_ok = device::bf16_fast(dev, &why);
  if (sub.precision == "auto") {
    rc.precision = bf16_ok ? "bf16" : "fp32";
    rc.precision_reason = "auto: " + why;
    if (!bf16_ok) std::fprintf(stderr, "[train] precision auto -> fp32: %s\n", why.c_str());
  } else {
    rc.precision = sub.precision;
    rc.precision_reason = "set by substrate" + (sub.precision == "bf16" && !bf16_ok ? " (warning: " + why + ")" : "");
  }
  sub.precision = rc.precision;  // the id covers what actually runs
  rc.sub = sub;
  rc.substrate_id = sub.id();
  rc.data_dir = opt.data_dir;
  rc.data_fingerprint = ds.fingerprint();
  rc.tokenizer_hash = ds.tokenizer().hash();
  for (auto& m : mods) rc.modules.push_back(catalog::arg_text(m));  // every value, defaults included
  rc.model.vocab = vocab;
  rc.model.n_layer = sub.depth;
  rc.model.d_model = sub.model_dim();
  rc.model.head_dim = sub.head_dim;
  rc.model.n_head = sub.n_head();
  rc.model.context = sub.context;
  rc.model.layer_pattern = view.layer_pattern;  // after the modules' adjusts (Mamba-3 sets it)
  rc.model.modules = mods;
  rc.model.softcap = sub.softcap;
  rc.model.doc_mask = sub.doc_mask;
  rc.model.rope_base = sub.rope_base;
  rc.model.seed = static_cast<uint64_t>(sub.seed);
  const bool bf16 = rc.precision == "bf16";
  const int64_t accum = rank_rows / rank_batch;  // micro-batches per step on this rank
  rc.rank_batch = rank_batch;
  rc.grad_accum = accum;

  // ---- run folder: refuse to mix runs
  const std::string dir = opt.out_dir;
  const std::string cfg_path = fs::join(dir, "config.json"), latest = fs::join(dir, "ckpt_latest.safetensors"),
                    best = fs::join(dir, "ckpt_best.safetensors");
  json cfg_json = rc.to_json();
  if (!opt.dry_run) {
    if (fs::exists(cfg_path)) {
      SLM_CHECK(opt.resume, "train: ", dir, " already holds a run; pass --resume to continue it or choose another --out");
      json old = json::parse(fs::read_file(cfg_path));
      SLM_CHECK(old["data"]["tokenizer_hash"] == cfg_json["data"]["tokenizer_hash"], "train: ", dir,
                " was trained with tokenizer ", old["data"]["tokenizer_hash"].get<std::string>(), " but ", opt.data_dir,
                " has tokenizer ", rc.tokenizer_hash, "; resume on the run's own data set (", old["data"]["dir"].get<std::string>(), ")");
      SLM_CHECK(old["data"]["fingerprint"] == cfg_json["data"]["fingerprint"], "train: ", dir, " was trained on data ",
                old["data"]["fingerprint"].get<std::string>(), " but ", opt.data_dir, " is ", rc.data_fingerprint,
                "; resume on the run's own data set");
      SLM_CHECK(old["model"]["seed"] == cfg_json["model"]["seed"], "train: ", dir, " is the seed ",
                old["model"]["seed"].dump(), " replica; resuming it with seed ", cfg_json["model"]["seed"].dump(),
                " would mix two runs; use a new --out");
      SLM_CHECK(old["modules"] == cfg_json["modules"], "train: ", dir, " was trained with modules ", old["modules"].dump(),
                "; resuming it with ", cfg_json["modules"].dump(), " would mix two experiments; use a new --out");
      SLM_CHECK(old["substrate_id"] == cfg_json["substrate_id"], "train: --resume with a different configuration (substrate ",
                old["substrate_id"].get<std::string>(), " vs ", rc.substrate_id, "); use a new --out for a new configuration");
      // config.json is rewritten at every start, so it tells the world size of the latest checkpoint's run.
      const int old_world = old.value("world_size", 1);
      SLM_CHECK(!fs::exists(latest) || old_world == world.size, "train: ", latest, " was written by a run with ", old_world,
                " data-parallel rank(s) and this one has ", world.size, "; resume it with --nproc ", old_world,
                " (or WORLD_SIZE=", old_world, ") or start a new --out");
    } else {
      SLM_CHECK(!fs::exists(dir) || fs::is_dir(dir), "train: --out ", dir, " is not a directory");
      fs::mkdirs(dir);
    }
  }
  // One writer per run folder: a second trainer (a restarted runner, a stray command) is refused
  // instead of interleaving checkpoints. The lock dies with the process, kill -9 included.
  int lock_fd = -1;
  if (!opt.dry_run && world.is_main()) {
    const std::string lock_path = fs::join(dir, ".lock");
    lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    SLM_CHECK(lock_fd >= 0, "train: cannot open ", lock_path, ": ", std::strerror(errno));
    if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {0};
      ssize_t n = ::pread(lock_fd, buf, sizeof buf - 1, 0);
      ::close(lock_fd);
      fail("train: ", dir, " is in use by another slmlab train (pid ", n > 0 ? std::string(buf, n) : "?",
           "); wait for it or stop it first");
    }
    const std::string pid = std::to_string(::getpid());
    if (::ftruncate(lock_fd, 0) == 0 && ::pwrite(lock_fd, pid.data(), pid.size(), 0) < 0) {
      // the pid is only for the message above; the lock itself is what matters
    }
  }
  struct LockGuard {
    int fd;
    ~LockGuard() {
      if (fd >= 0) ::close(fd);
    }
  } lock_guard{lock_fd};

  // ---- model
  GPT model(rc.model);
  model->to(dev);
  std::printf("slmlab train | substrate %s (id %s) | %s | precision %s (%s)\n", sub.name.c_str(), rc.substrate_id.c_str(),
              device::describe().c_str(), rc.precision.c_str(), rc.precision_reason.c_str());
  std::printf("data %s | fingerprint %s | train %s tokens | val %s tokens | vocab %d\n", opt.data_dir.c_str(),
              rc.data_fingerprint.c_str(), human_count(train_tokens).c_str(), human_count(val_tokens).c_str(), vocab);
  std::printf("model: depth %lld x aspect %lld -> d_model %lld (rounded to head_dim %lld), %lld heads, %s params (%s in matmuls)\n",
              (long long)sub.depth, (long long)sub.aspect, (long long)rc.model.d_model, (long long)sub.head_dim,
              (long long)rc.model.n_head, human_count(model->n_params()).c_str(), human_count(model->n_matmul_params()).c_str());
  {
    std::string flat = sub.canonical();
    for (auto& c : flat)
      if (c == '\n') c = ' ';
    std::printf("config: %s\n", flat.c_str());
  }
  const std::string plan_text = layer_plan(*model);
  cfg_json["layer_plan"] = plan_text;
  std::printf("batch: %lld tokens/step = %lld rows x %lld context x %lld accum x %d rank(s); %lld steps\n%s",
              (long long)sub.total_batch, (long long)rank_batch, (long long)sub.context, (long long)accum, world.size,
              (long long)sub.steps, plan_text.c_str());
  if (comm)
    std::printf("data parallel: %d ranks over c10d %s, threads %d each; rank r takes rows r, r+%d, ... of every step\n",
                world.size, comm->backend().c_str(), rc.threads, world.size);

  const double flops_tok = model->flops_per_token(sub.context);
  const double peak = device::peak_flops(dev, bf16 ? torch::kBFloat16 : torch::kFloat32);

  if (tp_comm) {
    model->shard_tensor_parallel(tp_comm->as_tp_group());
    std::printf("tensor parallel: tp %d x dp %d over c10d %s; this rank holds heads and hidden units %d/%d of each block\n",
                tp, mesh.dp, tp_comm->backend().c_str(), mesh.tp_rank + 1, tp);
  }

  // ---- optimizer: Muon for block matrices, AdamW for embedding, head and the rest
  std::vector<ParamGroup> groups;
  {
    const double dscale = std::pow(rc.model.d_model / 768.0, -0.5);  // nanochat: AdamW lrs scale as 1/sqrt(d)
    ParamGroup embed{"embed", "adamw", sub.lr_embed * dscale, 0.0, {}, {}};
    ParamGroup head{"head", "adamw", sub.lr_head * dscale, 0.0, {}, {}};
    ParamGroup matrix{"matrix", sub.optimizer, sub.optimizer == "muon" ? sub.lr_matrix : sub.lr_adamw, sub.weight_decay, {}, {}};
    ParamGroup scalar{"scalar", "adamw", sub.lr_scalar * dscale, 0.0, {}, {}};
    auto mats = model->matrix_params();
    auto heads = model->head_params();
    for (auto& p : model->named_parameters()) {
      ParamGroup* g = &scalar;
      // Embedding-like tables (the token embedding, Engram's n-gram tables) take AdamW at the embedding
      // rate: rows are looked up, not multiplied, so Muon's orthogonalization means nothing for them.
      if (p.key() == "wte.weight" || p.key().find(".ngram_table") != std::string::npos) g = &embed;
      else if (std::find(heads.begin(), heads.end(), p.key()) != heads.end()) g = &head;
      else if (std::find(mats.begin(), mats.end(), p.key()) != mats.end()) g = &matrix;
      g->names.push_back(p.key());
      g->params.push_back(p.value());
    }
    for (auto* g : {&embed, &head, &matrix, &scalar})
      if (!g->params.empty()) groups.push_back(*g);
  }
  OptimOptions oo;
  oo.beta1 = sub.adam_beta1;
  oo.beta2 = sub.adam_beta2;
  oo.momentum = sub.muon_momentum;
  Optimizer optim(groups, oo);
  if (model->tp) optim.set_tensor_parallel(model->tp, model->tp_dims);
  // A checkpoint tensor by name: the whole of a sharded parameter (or of its optimizer state,
  // "<param>.<state>"), gathered over the TP group; anything else as it is.
  auto sharded_dim = [&](const std::string& name) -> int64_t {
    for (auto& [p, dim] : model->tp_dims)
      if (name == p || (name.size() > p.size() && name.compare(0, p.size(), p) == 0 && name[p.size()] == '.')) return dim;
    return -1;
  };
  Whole whole;
  if (model->tp)
    whole = [&](const std::string& name, const torch::Tensor& t) {
      const int64_t d = sharded_dim(name);
      return d < 0 ? t : tp_unshard(t, d, *model->tp);
    };
  auto own_part = [&](const std::string& name, const torch::Tensor& t) {
    const int64_t d = model->tp ? sharded_dim(name) : -1;
    return d < 0 ? t : tp_shard(t, d, *model->tp);
  };

  const int64_t row = sub.context + 1;
  std::vector<int32_t> tok_buf(rank_batch * row), doc_buf(rank_batch * row);
  // Rows -> (inputs, targets, doc ids) on the device.
  auto make_batch = [&](data::Loader& L) {
    for (int64_t b = 0; b < rank_batch; ++b) L.next(tok_buf.data() + b * row, doc_buf.data() + b * row);
    auto t = torch::from_blob(tok_buf.data(), {rank_batch, row}, torch::kInt32).to(torch::kInt64).to(dev);
    auto d = torch::from_blob(doc_buf.data(), {rank_batch, row}, torch::kInt32).to(torch::kInt64).to(dev);
    return std::make_tuple(t.slice(1, 0, sub.context), t.slice(1, 1, row), d.slice(1, 0, sub.context));
  };

  // val_bpb over the fixed validation rows (train/run.h).
  // With ranks, each scores every world.size-th batch; the per-batch sums are added up in batch order,
  // so the figure is the single-process one bit for bit.
  // eval_stats: the means over the validation batches of what modules report in evaluation (every
  // rank reports the same keys, the model's, so their sums reduce in key order).
  std::map<std::string, double> eval_stats;
  auto evaluate = [&]() {
    // The ranks of a TP group score the same batches together; data-parallel groups split them.
    if (!dpc) return val_bpb(*model, ds, sub.context, sub.eval_tokens, sub.device_batch, bf16, dev, &eval_stats);
    std::map<std::string, double> sums;
    auto parts = val_bpb_parts(*model, ds, sub.context, sub.eval_tokens, sub.device_batch, bf16, dev, mesh.dp_rank,
                               mesh.dp, &sums);
    auto t = torch::from_blob(parts.data(), {static_cast<int64_t>(parts.size())}, torch::kFloat64);
    dpc->all_reduce_sum(t);
    std::vector<double> v;
    for (auto& kv : sums) v.push_back(kv.second);
    std::vector<double> n{static_cast<double>(v.size())}, lo = n;
    auto tn = torch::from_blob(n.data(), {1}, torch::kFloat64);
    dpc->all_reduce_sum(tn);
    if (n[0] == lo[0] * mesh.dp && !v.empty()) {  // the same keys everywhere (a rank without batches has none)
      auto tv = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat64);
      dpc->all_reduce_sum(tv);
      size_t i = 0;
      for (auto& kv : sums) kv.second = v[i++];
    }
    eval_stats = eval_stat_means(sums);
    return val_bpb_total(parts);
  };

  // ---- dry run: an honest ETA from measurement. One row through models of depth 1 and 2 (same width
  // and context) gives the fixed cost and the per-layer cost of a forward+backward; a step is that,
  // extrapolated to the full depth, times the rows of every micro-batch of every rank.
  if (opt.dry_run) {
    data::Loader L(ds, data::Split::Train, sub.context, sub.data_order_seed(), true);
    L.set_transforms(transforms);
    auto time_depth = [&](int64_t depth) {
      ModelConfig mc = rc.model;
      mc.n_layer = depth;
      GPT m(mc);
      m->to(dev);
      std::vector<int32_t> tk(row), dc(row);
      L.next(tk.data(), dc.data());
      auto t = torch::from_blob(tk.data(), {1, row}, torch::kInt32).to(torch::kInt64).to(dev);
      auto d = torch::from_blob(dc.data(), {1, row}, torch::kInt32).to(torch::kInt64).to(dev);
      double best = 1e30;
      for (int rep = 0; rep < 2; ++rep) {
        auto t0 = clk::now();
        device::set_autocast(dev, bf16);
        auto loss = m->loss(t.slice(1, 0, sub.context), t.slice(1, 1, row), d.slice(1, 0, sub.context));
        device::set_autocast(dev, false);
        loss.backward();
        device::clear_autocast_cache();
        best = std::min(best, seconds(t0));
      }
      return best;
    };
    const double t1 = time_depth(1), t2 = time_depth(2);
    const double per_layer = std::max(0.0, t2 - t1), fixed = std::max(0.0, t1 - per_layer);
    const double per_row = fixed + per_layer * sub.depth;
    const double rows_per_step = static_cast<double>(sub.total_batch) / sub.context;  // all ranks, all micro-batches
    const double per_step = per_row * rows_per_step;
    const double evals = sub.eval_every > 0 ? std::floor(double(sub.steps) / sub.eval_every) + 1 : 1;
    const double eval_s = per_row / 3.0 * std::ceil(double(sub.eval_tokens) / sub.context) * evals;
    std::printf("dry run: one row of %lld tokens, forward+backward: %.3f s fixed + %.3f s per layer (measured at depth 1 and 2)\n",
                (long long)sub.context, fixed, per_layer);
    std::printf("dry run: %.0f rows per step (%lld micro-batches x %lld rows x tp %lld x dp %lld ranks' work in one process) = %.1f s/step\n",
                rows_per_step, (long long)accum, (long long)sub.device_batch, (long long)sub.tp, (long long)sub.dp, per_step);
    std::printf("dry run: ETA on this machine: %s for %lld steps, plus ~%s of evaluation\n",
                human_duration(per_step * sub.steps).c_str(), (long long)sub.steps, human_duration(eval_s).c_str());
    std::printf("dry run: model FLOPs %.3g per token, %.3g per step; measured peak %.3g FLOP/s; implied MFU %.1f%%\n", flops_tok,
                flops_tok * sub.total_batch, peak, 100.0 * flops_tok * sub.context / per_row / peak);
    return 0;
  }

  // ---- resume or start
  State st;
  data::Loader loader(ds, data::Split::Train, sub.context, sub.data_order_seed(), true, mesh.dp_rank, mesh.dp);
  loader.set_transforms(transforms);  // before a restore: positions count transformed tokens
  bool resumed = false;
  if (opt.resume && fs::exists(latest)) {
    resumed = true;
    st::File ck = st::read(latest);
    SLM_CHECK(ck.metadata["format"] == kCkptFormat, "train: ", latest, " is not a ", kCkptFormat, " checkpoint");
    SLM_CHECK(ck.metadata["tokenizer_hash"] == rc.tokenizer_hash, "train: checkpoint ", latest,
              " was trained with another tokenizer (", ck.metadata["tokenizer_hash"], "); resume on its own data set");
    SLM_CHECK(ck.metadata["substrate_id"] == rc.substrate_id, "train: checkpoint substrate ", ck.metadata["substrate_id"],
              " differs from this run's ", rc.substrate_id);
    // Same-size resumes only: the ranks' generator states and data slices are per world size.
    const std::string ck_world = ck.metadata.count("world_size") ? ck.metadata["world_size"] : "1";
    SLM_CHECK(ck_world == std::to_string(world.size), "train: ", latest, " was written by a run with ", ck_world,
              " data-parallel rank(s) and this one has ", world.size, "; resume it with --nproc ", ck_world,
              " (or WORLD_SIZE=", ck_world, ") or start a new --out");
    std::map<std::string, torch::Tensor> params, buffers, ostate;
    torch::Tensor rng;
    const std::string own_rng = "rng.cpu.rank" + std::to_string(world.rank);
    for (auto& [k, v] : ck.tensors) {
      if (k.rfind("model.", 0) == 0) params[k.substr(6)] = v;
      else if (k.rfind("buffer.", 0) == 0) buffers[k.substr(7)] = v;
      else if (k.rfind("optim.", 0) == 0) ostate[k.substr(6)] = v;
      else if (k == "rng.cpu" && world.rank == 0) rng = v;
      else if (k == own_rng) rng = v;
    }
    {
      torch::NoGradGuard ng;
      for (auto& p : model->named_parameters()) {
        auto it = params.find(p.key());
        const torch::Tensor v = it == params.end() ? torch::Tensor() : own_part(p.key(), it->second);
        SLM_CHECK(v.defined() && v.sizes() == p.value().sizes(), "train: checkpoint ", latest,
                  " lacks or mis-shapes parameter ", p.key());
        p.value().copy_(v);
      }
      for (auto& b : model->named_buffers()) {
        auto it = buffers.find(b.key());
        SLM_CHECK(it != buffers.end() && it->second.sizes() == b.value().sizes(), "train: checkpoint ", latest,
                  " lacks or mis-shapes buffer ", b.key(),
                  " (written by a build that did not save buffers, or for another model); start the run afresh");
        b.value().copy_(it->second);
      }
    }
    for (auto& [k, v] : ostate) v = own_part(k, v);
    optim.restore(ostate);
    if (rng.defined()) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle to the global generator
      gen.set_state(rng);
    }
    st = State::from_json(json::parse(ck.metadata["state"]));
    loader.restore(st.loader);
    std::printf("resumed from %s at step %lld\n", latest.c_str(), (long long)st.step);
  }
  if (comm) {
    // Every rank starts from its data-parallel group's first rank's weights (they are built from the
    // same seed; this makes sure: the ranks of a DP group hold the same shards), and only after every
    // rank has checked the run folder does rank 0 write to it.
    if (dpc) {
      std::vector<torch::Tensor> ts;
      for (auto& p : model->parameters()) ts.push_back(p.data());
      for (auto& b : model->buffers()) ts.push_back(b.data());
      dpc->broadcast(ts);
    }
    comm->barrier();
  }
  Metrics metrics{fs::join(dir, "metrics.jsonl")};
  if (world.is_main()) {
    fs::write_atomic(cfg_path, cfg_json.dump(1) + "\n");
    metrics.open(resumed ? st.step : -1);  // a fresh start (even after a kill) keeps no old records
  }

  auto write_summary = [&](const std::string& status, const std::string& reason) {
    if (!world.is_main()) return;
    json s;
    s["status"] = status;
    s["reason"] = reason;
    s["substrate_id"] = rc.substrate_id;
    s["data_fingerprint"] = rc.data_fingerprint;
    s["step"] = st.step;
    s["steps"] = sub.steps;
    s["best_val_bpb"] = finite_or_null(st.best_val);
    s["best_step"] = st.best_step;
    s["final_val_bpb"] = finite_or_null(st.last_val);
    s["tokens"] = st.tokens;
    s["train_seconds"] = st.train_seconds;
    s["wall_seconds"] = seconds(t_start);
    s["tokens_per_second"] = st.train_seconds > 0 ? st.tokens / st.train_seconds : 0.0;
    s["step_ms"] = st.step > 0 ? 1000.0 * st.train_seconds / st.step : 0.0;
    s["mfu"] = st.train_seconds > 0 ? st.tokens * flops_tok / st.train_seconds / peak : 0.0;
    s["peak_flops"] = peak;
    s["peak_rss_bytes"] = device::peak_rss_bytes();
    s["n_params"] = model->n_params();
    s["flops_per_token"] = flops_tok;
    s["loss_spikes"] = st.spikes.n_spikes;
    s["world_size"] = world.size;
    fs::write_atomic(fs::join(dir, "summary.json"), s.dump(1) + "\n");
  };
  auto in_spike = [&] { return st.spikes.in_spike(st.step); };
  // Collective: every rank calls it (rank 0 gathers the generator states and writes, atomically).
  auto checkpoint = [&](const std::string& path, bool weights_only) {
    std::vector<torch::Tensor> rngs;
    if (comm && !weights_only) rngs = comm->all_gather(at::detail::getDefaultCPUGenerator().get_state());
    if (world.is_main() || model->tp) {  // with TP every rank gathers its shards for rank 0
      st::File f = checkpoint_file(model, optim, rc, st, in_spike(), weights_only, rngs, whole);
      if (world.is_main()) st::write(path, f);
    }
  };
  std::map<std::string, double> module_stats;  // what modules report (expert load, codebook use, ...)
  auto do_eval = [&] {
    auto t0 = clk::now();
    st.last_val = evaluate();
    json e = {{"step", st.step}, {"val_bpb", st.last_val}, {"eval_ms", 1000 * seconds(t0)}};
    if (in_spike()) e["in_spike"] = true;
    if (!module_stats.empty()) e["modules"] = module_stats;  // from the last training step
    if (!eval_stats.empty()) e["eval_modules"] = eval_stats;  // from this evaluation
    metrics.write(e);
    if (!opt.quiet) std::printf("eval step %lld | val_bpb %.4f\n", (long long)st.step, st.last_val);
    if (st.last_val < st.best_val) {
      st.best_val = st.last_val;
      st.best_step = st.step;
      checkpoint(best, false);
    }
  };

  if (st.step == 0) do_eval();  // the untrained model: every curve starts at a known point
  write_summary("running", "");
  {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // a collective or a write in flight continues; the step's end stops
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
  }
  // Data parallel: gradients averaged bucket by bucket, sent during the last micro-batch's backward.
  std::unique_ptr<dist::GradReducer> reducer;
  if (dpc) {
    reducer = std::make_unique<dist::GradReducer>(*dpc, model->parameters());
    std::printf("gradients: %lld buckets of <= 4 MiB, all-reduced %s\n", (long long)reducer->buckets(),
                opt.overlap_grad_reduce ? "during backward (--grad-reduce overlap)" : "after backward (--grad-reduce after)");
  }
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(dev);
  model->train();
  while (st.step < sub.steps) {
    auto t0 = clk::now();
    // Nothing in the step waits for the device (on a GPU the whole step is queued): the losses and
    // the gradient norm stay device tensors and reach the host together, once, after the update.
    torch::Tensor loss_sum;
    std::map<std::string, torch::Tensor> aux_sum;  // each micro-batch's value / accum, summed
    auto add = [](torch::Tensor& acc, const torch::Tensor& v) { acc = acc.defined() ? acc + v : v; };
    for (int64_t m = 0; m < accum; ++m) {
      auto [x, y, d] = make_batch(loader);
      device::set_autocast(dev, bf16);
      GPTImpl::Parts parts;
      auto total = model->loss(x, y, d, st.step, &parts);
      device::set_autocast(dev, false);
      auto scaled = total / static_cast<double>(accum);
      if (reducer && opt.overlap_grad_reduce && m == accum - 1) reducer->arm(scaled);
      scaled.backward();
      add(loss_sum, parts.main.detach().to(torch::kFloat64));  // the language-model loss: comparable across modules
      for (auto& a : parts.aux) add(aux_sum[a.name], a.value.detach().to(torch::kFloat64) / static_cast<double>(accum));
      for (auto& [k, v] : parts.stats) module_stats[k] = v;
    }
    double comm_s = 0;
    if (reducer) comm_s = reducer->finish();
    // [loss, stop, aux...]: with ranks, summed over them (the logged losses are the means over every
    // rank's rows, as one process would have them; any rank's stop signal stops all at this step).
    std::vector<torch::Tensor> row{loss_sum / static_cast<double>(accum),
                                   torch::full({}, g_stop_signal.load() ? 1.0 : 0.0, f64)};
    for (auto& [k, a] : aux_sum) row.push_back(a);
    auto vals = torch::stack(row);
    if (comm) comm->all_reduce_sum(vals);
    loader.align();  // every rank's loader at the step's end: the state a checkpoint keeps
    torch::Tensor gnorm_t;
    {
      torch::NoGradGuard ng;
      // The norm of the whole model's gradient: under tensor parallelism, the shards' squares summed
      // over the TP group, the replicated parameters' counted once.
      std::vector<torch::Tensor> sq, sq_shards;
      for (auto& p : model->named_parameters())
        if (p.value().grad().defined())
          (model->tp_dims.count(p.key()) ? sq_shards : sq).push_back(p.value().grad().to(torch::kFloat32).pow(2).sum());
      auto total = torch::stack(sq).sum().to(torch::kFloat64);
      if (tp_comm) {
        auto t = (sq_shards.empty() ? torch::zeros({}, f64) : torch::stack(sq_shards).sum().to(torch::kFloat64))
                     .reshape({1})
                     .contiguous();
        tp_comm->all_reduce_sum(t);
        total = total + t[0];
      }
      gnorm_t = total.sqrt();
      if (sub.grad_clip > 0) {  // a factor of exactly 1 below the threshold (and for a non-finite norm)
        // (a division, not Tensor's scalar / tensor, which multiplies by a reciprocal)
        auto coef = torch::where(gnorm_t > sub.grad_clip, torch::full({}, sub.grad_clip, f64).div(gnorm_t + 1e-6),
                                 torch::ones({}, f64));
        for (auto& p : model->parameters())
          if (p.grad().defined()) p.mutable_grad().mul_(coef);
      }
    }
    const double lrf = lr_factor(sub, st.step);
    optim.step(lrf);
    optim.zero_grad();
    // The step's one wait: a non-finite loss or norm has updated the weights in memory, but ends the
    // run here, before anything is checkpointed, evaluated or handed to a module.
    auto host = torch::cat({vals, gnorm_t.reshape({1})}).to(torch::kCPU);
    const auto hv = host.accessor<double, 1>();
    const double ranks = comm ? world.size : 1;
    double loss = hv[0] / ranks;
    const bool stop_now = hv[1] > 0;
    std::map<std::string, double> aux;
    {
      int64_t i = 2;
      for (auto& [k, a] : aux_sum) {
        const double v = hv[i++] / ranks;
        if (!std::isfinite(v)) loss = NAN;  // a non-finite auxiliary loss poisons the step just the same
        aux[k] = v;
      }
    }
    const double gnorm = hv[host.size(0) - 1];
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      ++st.step;
      const std::string reason = "non-finite " + std::string(std::isfinite(loss) ? "gradient norm" : "loss") +
                                 " at step " + std::to_string(st.step) + "; last good checkpoint kept";
      metrics.write({{"step", st.step}, {"loss", std::isfinite(loss) ? json(loss) : json(nullptr)}, {"invalid", reason}});
      write_summary("INVALID", reason);
      std::fprintf(stderr, "[train] INVALID: %s\n", reason.c_str());
      return 3;
    }
    {
      StepCtx sc;
      sc.step = st.step + 1;
      sc.optim_state = [&](const torch::Tensor& p) { return optim.state_of(p); };
      model->after_step(sc);
      for (auto& [k, v] : sc.stats) module_stats[k] = v;
    }
    device::clear_autocast_cache();
    ++st.step;
    const double dt = seconds(t0);
    st.train_seconds += dt;
    st.tokens += sub.total_batch;
    st.loader = loader.state();

    const bool spike = st.spikes.observe(st.step, loss);

    const double tok_s = sub.total_batch / dt, mfu = tok_s * flops_tok / peak;
    json rec = {{"step", st.step}, {"loss", loss}, {"lr", lrf}, {"grad_norm", gnorm},
                {"step_ms", 1000 * dt}, {"tok_s", tok_s}, {"mfu", mfu}};
    if (spike) {
      rec["spike"] = true;
      rec["spike_start"] = st.spikes.spike_start;  // evals written since then were inside it
    }
    if (!aux.empty()) rec["aux"] = aux;
    if (comm) rec["comm_ms"] = 1000 * comm_s;  // the all-reduce time not hidden behind backward
    if (reducer) rec["buckets_in_backward"] = reducer->sent_during_backward();
    metrics.write(rec);
    if (!opt.quiet) {
      const double eta = (sub.steps - st.step) * (st.train_seconds / std::max<int64_t>(1, st.step));
      std::printf("step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f ms | %s tok/s | mfu %.1f%% | eta %s%s\n",
                  (long long)st.step, (long long)sub.steps, loss, lrf, gnorm, 1000 * dt, human_count(tok_s).c_str(),
                  100 * mfu, human_duration(eta).c_str(), spike ? " | SPIKE" : "");
      std::fflush(stdout);
    }
    const bool last = st.step == sub.steps;
    if (last || (sub.eval_every > 0 && st.step % sub.eval_every == 0)) do_eval();
    if (last || (sub.ckpt_every > 0 && st.step % sub.ckpt_every == 0)) {
      checkpoint(latest, false);
      if (opt.keep_checkpoints) checkpoint(fs::join(dir, snapshot_name(st.step)), /*weights_only=*/true);
      write_summary(last ? "done" : "running", "");
    }
    if (stop_now && !last) {
      checkpoint(latest, false);
      const std::string why = "stopped by a signal at step " + std::to_string(st.step) +
                              "; the latest checkpoint is this step, and the same command resumes";
      write_summary("preempted", why);
      if (comm) comm->barrier();
      std::fprintf(stderr, "[train] %s\n", why.c_str());
      return kPreempted;
    }
  }
  write_summary("done", "");
  if (comm) comm->barrier();  // rank 0's last checkpoint and summary are written before any rank exits
  std::printf("done: best val_bpb %.4f @ step %lld, final %.4f, %s tokens in %s (%.0f tok/s)\n", st.best_val,
              (long long)st.best_step, st.last_val, human_count(st.tokens).c_str(), human_duration(st.train_seconds).c_str(),
              st.tokens / std::max(1e-9, st.train_seconds));
  return 0;
}

void export_safetensors(const std::string& run_dir, const std::string& which, const std::string& out_path) {
  SLM_CHECK(which == "latest" || which == "best", "export: --checkpoint must be latest or best, got '", which, "'");
  std::string path = fs::join(run_dir, "ckpt_" + which + ".safetensors");
  SLM_CHECK(fs::exists(path), "export: ", run_dir, " has no ", which, " checkpoint (", path, "); train it first");
  st::File ck = st::read(path);
  st::File out;
  for (auto& [k, v] : ck.tensors)
    if (k.rfind("model.", 0) == 0) out.tensors.push_back({k.substr(6), v});
  out.metadata = {{"format", "slmlab-weights v1"},
                  {"config", ck.metadata["config"]},
                  {"step", ck.metadata["step"]},
                  {"substrate_id", ck.metadata["substrate_id"]},
                  {"in_spike", ck.metadata["in_spike"]}};
  st::write(out_path, out);
}

}  // namespace slm
