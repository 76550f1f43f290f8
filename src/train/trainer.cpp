#include "train/trainer.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <thread>

#include "catalog/catalog.h"
#include "common/device.h"
#include "common/error.h"
#include "common/failure.h"
#include "common/format.h"
#include "common/fs.h"
#include "common/version.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "eval/bpb.h"
#include "eval/infill.h"
#include "model/gpt.h"
#include "model/moe.h"
#include "train/checkpoint.h"
#include "train/dist.h"
#include "train/dry_run.h"
#include "train/memory.h"
#include "train/optim.h"
#include "train/step_profile.h"
#include "train/param_groups.h"
#include "train/run.h"
#include "train/run_folder.h"
#include "train/schedule.h"
#include "train/substrate.h"

namespace slm {

using json = nlohmann::ordered_json;
using clk = std::chrono::steady_clock;

namespace {

double seconds(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

std::string human_count(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
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
    j["attention"] = device::attention_path();  // the kernels round differently: part of what reproduces a run
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

// What is decided before anything is built: the substrate bound to its data set, the modules
// checked against it, and where this process sits in the world.
struct Setup {
  Substrate sub;
  std::vector<catalog::ModuleArgs> mods;
  data::TransformSet transforms;
  std::unique_ptr<data::DataSet> ds;
  dist::World world;
  dist::Mesh mesh;
  int tp = 1;
  int64_t rank_batch = 0;  // rows per forward on a rank
  int64_t accum = 0;       // micro-batches per step on a rank
};

Setup configure(const TrainOptions& opt) {
  Setup s;
  Substrate& sub = s.sub;
  sub = load_substrate(opt.substrate);
  for (auto& kv : opt.sets) set_field(sub, kv);
  sub.validate();
  // Modules resolve against the catalog and its constraints before anything is built.
  {
    std::vector<std::string> errs;
    for (auto& m : opt.modules) s.mods.push_back(catalog::resolve_arg(m, errs));
    if (errs.empty()) errs = catalog::check(s.mods, sub.model_view(), /*training=*/true);
    if (!errs.empty()) {
      std::string all = "train: ";
      for (size_t i = 0; i < errs.size(); ++i) all += (i ? "; " : "") + errs[i];
      throw Error(all);
    }
    for (auto& m : s.mods)
      SLM_CHECK(find_model_module(m.name) || std::string(catalog::find(m.name)->family) == "data", "train: module ",
                m.name, " is in the catalog but not wired into this trainer yet");
  }
  s.transforms = data::transform_set(s.mods);  // the data-side modules as the loader's transforms
  SLM_CHECK(!opt.data_dir.empty(), "train: --data DATA_DIR is required");
  SLM_CHECK(!opt.out_dir.empty() || opt.dry_run, "train: --out RUN_DIR is required");
  s.ds = std::make_unique<data::DataSet>(opt.data_dir);
  const data::DataSet& ds = *s.ds;
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
  for (auto& m : s.mods)  // the structure module reads the enrichment columns: refused before anything is built
    require(!catalog::find(m.name)->reads_structure || ds.enriched(),
            "train: module " + m.name + " reads the structure columns of an enriched data set and " + opt.data_dir +
                " has none; build one with slmlab data build --enrich (e.g. --project DIR --enrich) or drop the module");
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
  s.world = opt.dry_run ? dist::World{} : dist::world_from_env();
  const dist::World& world = s.world;
  s.tp = opt.dry_run ? 1 : static_cast<int>(sub.tp);
  const int tp = s.tp;
  require(tp >= 1 && world.size % tp == 0,
          "train: substrate " + sub.name + " sets tp=" + std::to_string(sub.tp) + " but this run has " +
              std::to_string(world.size) + " rank(s); run tp x dp ranks (--nproc " + std::to_string(sub.tp * std::max<int64_t>(1, sub.dp)) +
              ") or --set tp=1");
  s.mesh = dist::mesh_of(world, tp);
  const dist::Mesh& mesh = s.mesh;
  {  // the modules again at this run's real topology (tensor parallelism: which modules split)
    catalog::ModelView v = sub.model_view();
    v.tp = tp;
    v.dp = mesh.dp;
    const auto errs = catalog::check(s.mods, v, /*training=*/true);
    std::string all;
    for (size_t i = 0; i < errs.size(); ++i) all += (i ? "; " : "") + errs[i];
    require(errs.empty(), "train: at tp " + std::to_string(tp) + " x dp " + std::to_string(mesh.dp) + ": " + all);
  }
  require(sub.dp == 1 || sub.dp == mesh.dp || opt.dry_run,
          "train: substrate " + sub.name + " sets dp=" + std::to_string(sub.dp) + " but this run has " +
              std::to_string(mesh.dp) + " data-parallel rank(s) (" + std::to_string(world.size) + " ranks / tp " +
              std::to_string(tp) + "); run it with --nproc " + std::to_string(sub.dp * tp) + " or --set dp=1");
  const int64_t rows_per_step = sub.total_batch / sub.context;
  require(rows_per_step % mesh.dp == 0, "train: the " + std::to_string(rows_per_step) + " rows of a step (total_batch / context) do not split over " +
                                               std::to_string(mesh.dp) + " data-parallel ranks; use a --nproc that divides " + std::to_string(rows_per_step * tp));
  const int64_t rank_rows = rows_per_step / mesh.dp;
  // rows per forward on a rank: device_batch, or fewer when a rank's share of the step is smaller
  s.rank_batch = std::gcd(rank_rows, sub.device_batch);
  s.accum = rank_rows / s.rank_batch;
  // Rank 0 speaks for the run: the others print nothing (their errors still reach stderr).
  if (!world.is_main() && !std::freopen("/dev/null", "w", stdout)) fail("train: rank ", world.rank, " cannot silence stdout");
  return s;
}

// The process groups: `world` (null: one process), `tp` splits the blocks, `dp` averages gradients
// (the world itself when there is no tensor parallelism; null when one data-parallel rank).
struct Groups {
  std::unique_ptr<dist::Comm> world, tp, dp_sub;
  dist::Comm* dp = nullptr;
};

Groups connect(const Setup& s, const torch::Device& dev) {
  Groups g;
  if (s.world.size > 1) g.world = std::make_unique<dist::Comm>(s.world, dev);
  if (s.tp > 1) g.tp = g.world->subgroup("tp" + std::to_string(s.mesh.dp_rank), s.mesh.tp_ranks);
  if (s.tp > 1 && s.mesh.dp > 1) g.dp_sub = g.world->subgroup("dp" + std::to_string(s.mesh.tp_rank), s.mesh.dp_ranks);
  g.dp = s.tp > 1 ? g.dp_sub.get() : g.world.get();
  return g;
}

// The run configuration: threads and precision resolved for this machine (the substrate's precision
// becomes what actually runs, so the id covers it), the model the substrate builds.
RunConfig resolve_run_config(const TrainOptions& opt, Setup& s, const torch::Device& dev) {
  RunConfig rc;
  rc.device = s.sub.device;
  rc.world_size = s.world.size;
  // threads = 0 shares the cores between the ranks on this machine
  rc.threads = s.sub.threads > 0 ? static_cast<int>(s.sub.threads)
                                 : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / s.world.local_size);
  at::set_num_threads(rc.threads);
  std::string why;
  const bool bf16_ok = device::bf16_fast(dev, &why);
  if (s.sub.precision == "auto") {
    rc.precision = bf16_ok ? "bf16" : "fp32";
    rc.precision_reason = "auto: " + why;
    if (!bf16_ok) std::fprintf(stderr, "[train] precision auto -> fp32: %s\n", why.c_str());
  } else {
    rc.precision = s.sub.precision;
    rc.precision_reason = "set by substrate" + (s.sub.precision == "bf16" && !bf16_ok ? " (warning: " + why + ")" : "");
  }
  s.sub.precision = rc.precision;
  rc.sub = s.sub;
  rc.substrate_id = s.sub.id();
  rc.data_dir = opt.data_dir;
  rc.data_fingerprint = s.ds->fingerprint();
  rc.tokenizer_hash = s.ds->tokenizer().hash();
  for (auto& m : s.mods) rc.modules.push_back(catalog::arg_text(m));  // every value, defaults included
  rc.model = s.sub.model_config(s.mods);
  rc.rank_batch = s.rank_batch;
  rc.grad_accum = s.accum;
  return rc;
}

// n_params, n_matmul: the whole model's, counted before tensor parallelism splits it.
void print_banner(const Setup& s, const RunConfig& rc, const Groups& g, int64_t n_params, int64_t n_matmul,
                  const std::string& plan_text) {
  const Substrate& sub = s.sub;
  std::printf("slmlab train | substrate %s (id %s) | %s | precision %s (%s)\n", sub.name.c_str(), rc.substrate_id.c_str(),
              device::describe().c_str(), rc.precision.c_str(), rc.precision_reason.c_str());
  std::printf("data %s | fingerprint %s | train %s tokens | val %s tokens | vocab %lld\n", rc.data_dir.c_str(),
              rc.data_fingerprint.c_str(), human_count(s.ds->n_tokens(data::Split::Train)).c_str(),
              human_count(s.ds->n_tokens(data::Split::Val)).c_str(), (long long)rc.model.vocab);
  std::printf("model: depth %lld x aspect %lld -> d_model %lld (rounded to head_dim %lld), %lld heads, %s params (%s in matmuls)\n",
              (long long)sub.depth, (long long)sub.aspect, (long long)rc.model.d_model, (long long)sub.head_dim,
              (long long)rc.model.n_head, human_count(n_params).c_str(), human_count(n_matmul).c_str());
  std::string flat = sub.canonical();
  std::replace(flat.begin(), flat.end(), '\n', ' ');
  std::printf("config: %s\n", flat.c_str());
  std::printf("batch: %lld tokens/step = %lld rows x %lld context x %lld accum x %d rank(s); %lld steps\n%s",
              (long long)sub.total_batch, (long long)s.rank_batch, (long long)sub.context, (long long)s.accum, s.world.size,
              (long long)sub.steps, plan_text.c_str());
  if (g.world)
    std::printf("data parallel: %d ranks over c10d %s, threads %d each; rank r takes rows r, r+%d, ... of every step\n",
                s.world.size, g.world->backend().c_str(), rc.threads, s.world.size);
}

// What one optimizer step reports (the losses are means over every rank's rows).
struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0, comm_s = 0;
  double tp_comm_s = 0;                // in the tensor-parallel group's collectives (forward, backward, clip, Muon)
  bool stop = false;                   // a rank was asked to stop (SIGTERM, SIGINT)
  std::map<std::string, double> aux;   // auxiliary losses by name
};

}  // namespace

// SIGTERM (Slurm's preemption and `scontrol requeue`, a launcher stopping its ranks) or SIGINT: the
// trainer finishes the step it is in, writes its latest checkpoint and exits with kPreempted; the
// same command resumes it. Every rank stops at the same step: the flag travels with the step's
// all-reduce of the losses.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

namespace {

// A run in progress: the model, its optimizer and data, and the records it keeps. The loop in
// train() calls step(), eval() and save(); everything here is collective where the comments say so.
class Run {
 public:
  Run(const TrainOptions& opt, const Setup& s, const RunConfig& rc, const Groups& g, torch::Device dev)
      : opt_(opt), s_(s), sub_(s.sub), rc_(rc), g_(g), dev_(dev), bf16_(rc.precision == "bf16") {}

  const TrainOptions& opt_;
  const Setup& s_;
  const Substrate& sub_;
  const RunConfig& rc_;
  const Groups& g_;
  const torch::Device dev_;
  const bool bf16_;
  RunFolder folder;
  GPT model{nullptr};
  std::unique_ptr<Optimizer> optim;
  prof::Phases* phases = nullptr;  // --profile: this step's phase timers
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<dist::GradReducer> reducer;
  ckpt::TrainState st;
  MetricsLog metrics;
  double flops_tok = 0, peak = 0;
  // Under TP each rank's model holds its shards and counts their FLOPs only: the whole model's count at
  // init over this rank's, which scales each step's count back to the model's (exact while each
  // component's split share of its FLOPs stays as at init; DSA's replicated indexer after its sparse
  // stage starts is the known exception, a small one).
  double tp_flops_scale = 1;
  clk::time_point t_start = clk::now();
  std::map<std::string, double> module_stats;  // what modules report (expert load, codebook use, ...)
  std::map<std::string, double> eval_stats;    // the same, averaged over the last evaluation
  int64_t tp_replicas_equal = -1;               // replicated tensors found equal on every TP rank at the last save
  std::vector<std::vector<InfillSample>> infill_cache_;  // the objective metrics' samples (fixed: built once)

  bool in_spike() const { return st.spikes.in_spike(st.step); }

  // A checkpoint tensor by name: the whole of a sharded parameter (or of its optimizer state,
  // "<param>.<state>"), gathered over the TP group; anything else as it is. own_part: the reverse.
  const TpSplit* split_of(const std::string& name) const {
    for (auto& [p, split] : model->tp_splits)
      if (name == p || (name.size() > p.size() && name.compare(0, p.size(), p) == 0 && name[p.size()] == '.')) return &split;
    return nullptr;
  }
  ckpt::Reshard whole() const {
    if (!model->tp) return nullptr;
    return [this](const std::string& name, const torch::Tensor& t) {
      const TpSplit* s = split_of(name);
      return s ? tp_unshard(t, *s, *model->tp) : t;
    };
  }
  ckpt::Reshard own_part() const {
    if (!model->tp) return nullptr;
    return [this](const std::string& name, const torch::Tensor& t) {
      const TpSplit* s = split_of(name);
      return s ? tp_shard(t, *s, *model->tp) : t;
    };
  }

  // Continues from the latest checkpoint. Every rank reads it; each takes its own shards and generator.
  void resume(const std::string& path) {
    ckpt::Checkpoint ck = ckpt::read(path);
    ckpt::check_resumable(ck, identity());
    ckpt::load_model(ck, *model, own_part());
    ckpt::load_training_state(ck, *optim, s_.world.rank, own_part());
    st = ck.state();
    loader->restore(st.loader);
    std::printf("resumed from %s at step %lld\n", path.c_str(), (long long)st.step);
  }

  ckpt::RunIdentity identity() const {
    return {rc_.to_json().dump(), rc_.substrate_id, rc_.data_fingerprint, rc_.tokenizer_hash, rc_.world_size};
  }

  // Collective: every rank calls it (rank 0 gathers the generator states and writes, atomically).
  void save(const std::string& path, bool weights_only) {
    if (model->tp) tp_replicas_equal = model->check_tp_replicas();  // a drifted replica is never saved
    std::vector<torch::Tensor> rngs;
    if (g_.world && !weights_only) rngs = g_.world->all_gather(at::detail::getDefaultCPUGenerator().get_state());
    if (s_.world.is_main() || model->tp) {  // with TP every rank gathers its shards for rank 0
      st::File f = ckpt::encode(*model, weights_only ? nullptr : optim.get(), identity(), st, in_spike(), rngs, whole());
      if (s_.world.is_main()) ckpt::write(path, f);
    }
  }

  void write_summary(const std::string& status, const std::string& reason) {
    if (!s_.world.is_main()) return;
    auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    json j;
    j["status"] = status;
    j["reason"] = reason;
    j["substrate_id"] = rc_.substrate_id;
    j["data_fingerprint"] = rc_.data_fingerprint;
    j["step"] = st.step;
    j["steps"] = sub_.steps;
    j["best_val_bpb"] = num(st.best_val);
    j["best_step"] = st.best_step;
    j["final_val_bpb"] = num(st.last_val);
    j["tokens"] = st.tokens;
    j["train_seconds"] = st.train_seconds;
    j["wall_seconds"] = seconds(t_start);
    j["tokens_per_second"] = st.train_seconds > 0 ? st.tokens / st.train_seconds : 0.0;
    j["step_ms"] = st.step > 0 ? 1000.0 * st.train_seconds / st.step : 0.0;
    j["mfu"] = st.train_seconds > 0 ? st.tokens * flops_tok / st.train_seconds / peak : 0.0;
    j["peak_flops"] = peak;  // every device used: tokens/s counts every rank's tokens
    j["peak_flops_per_device"] = peak / s_.world.size;
    j["peak_rss_bytes"] = device::peak_rss_bytes();
    j["n_params"] = model->n_params();
    // Active: what one token uses. Only MoE leaves parameters unused per token (its unrouted
    // experts); MoD, GateSkip and DSA skip compute, not parameters (flops_per_token has that).
    int64_t unrouted = 0;
    for (auto& m : model->modules(/*include_self=*/false))
      if (auto* moe = dynamic_cast<MoeImpl*>(m.get())) unrouted += moe->total_params() - moe->active_params();
    j["active_params"] = model->n_params() - unrouted;
    j["flops_per_token"] = flops_tok;
    j["train_flops"] = st.train_flops >= 0 ? json(st.train_flops) : json(nullptr);  // every step as it ran
    j["loss_spikes"] = st.spikes.n_spikes;
    j["world_size"] = s_.world.size;
    if (tp_replicas_equal >= 0) j["tp_replicas_equal"] = tp_replicas_equal;
    fs::write_atomic(folder.summary(), j.dump(1) + "\n");
  }

  // val_bpb over the fixed validation rows (train/run.h). With data-parallel ranks each scores
  // every dp-th batch and the per-batch sums are added up in batch order, so the figure is the
  // single-process one bit for bit; the ranks of a TP group score the same batches together.
  double evaluate() {
    const data::DataSet& ds = *s_.ds;
    dist::Comm* dpc = g_.dp;
    if (!dpc) return val_bpb(*model, ds, sub_.context, sub_.eval_tokens, sub_.device_batch, bf16_, dev_, &eval_stats);
    std::map<std::string, double> sums;
    auto parts = val_bpb_parts(*model, ds, sub_.context, sub_.eval_tokens, sub_.device_batch, bf16_, dev_,
                               s_.mesh.dp_rank, s_.mesh.dp, &sums);
    auto t = torch::from_blob(parts.data(), {static_cast<int64_t>(parts.size())}, torch::kFloat64);
    dpc->all_reduce_sum(t);
    std::vector<double> v;
    for (auto& kv : sums) v.push_back(kv.second);
    std::vector<double> n{static_cast<double>(v.size())}, lo = n;
    auto tn = torch::from_blob(n.data(), {1}, torch::kFloat64);
    dpc->all_reduce_sum(tn);
    if (n[0] == lo[0] * s_.mesh.dp && !v.empty()) {  // the same keys everywhere (a rank without batches has none)
      auto tv = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat64);
      dpc->all_reduce_sum(tv);
      size_t i = 0;
      for (auto& kv : sums) kv.second = v[i++];
    }
    eval_stats = eval_stat_means(sums);
    return val_bpb_total(parts);
  }

  // The objective metrics (eval/infill.h), every one at every eval whatever the run trains with: a
  // comparison on fim_bpb needs the base's figure as much as the FIM arm's. Bounded: each scores at
  // most eval_tokens / 4 tokens' worth of rows (and one row per validation document), so the four
  // together cost at most one val_bpb evaluation. Data-parallel ranks split the batches as val_bpb
  // does; the sums are added in batch order, so the figure is the single-process one bit for bit.
  json objective_metrics() {
    json out = json::object();
    const int64_t rows = infill_rows(sub_.eval_tokens / 4, sub_.context);
    for (InfillMetric m : {InfillMetric::Fim, InfillMetric::Ifim, InfillMetric::IfimNoInst, InfillMetric::Sri}) {
      if (infill_cache_.size() < 4) infill_cache_.push_back(infill_samples(*s_.ds, m, sub_.context, rows, kInfillSeed));
      const auto& samples = infill_cache_[static_cast<size_t>(m)];
      auto parts = infill_parts(*model, *s_.ds, samples, sub_.context, sub_.device_batch, bf16_, dev_,
                                g_.dp ? s_.mesh.dp_rank : 0, g_.dp ? s_.mesh.dp : 1);
      if (g_.dp && !parts.empty()) {
        auto t = torch::from_blob(parts.data(), {static_cast<int64_t>(parts.size())}, torch::kFloat64);
        g_.dp->all_reduce_sum(t);
      }
      const double v = val_bpb_total(parts);
      out[std::string(infill_metric_name(m)) + "_bpb"] = std::isfinite(v) ? json(v) : json(nullptr);
    }
    return out;
  }

  // Evaluates, records it, and keeps the best checkpoint. Collective.
  void eval() {
    auto t0 = clk::now();
    st.last_val = evaluate();
    json e = {{"step", st.step}, {"val_bpb", st.last_val}, {"eval_ms", 1000 * seconds(t0)}};
    auto t1 = clk::now();
    const json objectives = objective_metrics();
    for (auto& [k, v] : objectives.items()) e[k] = v;
    e["objective_eval_ms"] = 1000 * seconds(t1);
    if (in_spike()) e["in_spike"] = true;
    if (!module_stats.empty()) e["modules"] = module_stats;  // from the last training step
    if (!eval_stats.empty()) e["eval_modules"] = eval_stats;  // from this evaluation
    metrics.write(e);
    if (!opt_.quiet) std::printf("eval step %lld | val_bpb %.4f\n", (long long)st.step, st.last_val);
    if (st.last_val < st.best_val) {
      st.best_val = st.last_val;
      st.best_step = st.step;
      save(folder.best(), false);
    }
  }

  // One optimizer step: accum micro-batches forward and backward, gradients averaged over the
  // data-parallel ranks and clipped, the update, the modules' after-step work. Nothing in it waits
  // for the device (on a GPU the whole step is queued): the losses and the gradient norm stay device
  // tensors and reach the host together, once, after the update. A non-finite loss or norm has
  // updated the weights in memory; the caller ends the run before anything is saved.
  StepResult step() {
    const int64_t accum = s_.accum;
    if (g_.tp) g_.tp->take_collective_seconds();  // from here: the step's own (not the last evaluation's)
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(dev_);
    torch::Tensor loss_sum;
    std::map<std::string, torch::Tensor> aux_sum;  // each micro-batch's value / accum, summed
    auto add = [](torch::Tensor& acc, const torch::Tensor& v) { acc = acc.defined() ? acc + v : v; };
    for (int64_t m = 0; m < accum; ++m) {
      torch::Tensor x, y, d, sc;
      {
        prof::Scope ps(phases, "data");
        std::tie(x, y, d, sc) = next_batch();
      }
      GPTImpl::Parts parts;
      torch::Tensor total;
      {
        prof::Scope ps(phases, "forward");
        device::set_autocast(dev_, bf16_);
        total = model->loss(x, y, d, st.step, &parts, sc);
        device::set_autocast(dev_, false);
      }
      auto scaled = total / static_cast<double>(accum);
      if (reducer && opt_.overlap_grad_reduce && m == accum - 1) reducer->arm(scaled);
      {
        prof::Scope ps(phases, "backward");
        scaled.backward();
      }
      add(loss_sum, parts.main.detach().to(torch::kFloat64));  // the language-model loss: comparable across modules
      for (auto& a : parts.aux) add(aux_sum[a.name], a.value.detach().to(torch::kFloat64) / static_cast<double>(accum));
      for (auto& [k, v] : parts.stats) module_stats[k] = v;
    }
    StepResult r;
    if (reducer) r.comm_s = reducer->finish();
    // [loss, stop, aux...]: with ranks, summed over them (the logged losses are the means over every
    // rank's rows, as one process would have them; any rank's stop signal stops all at this step).
    std::vector<torch::Tensor> row{loss_sum / static_cast<double>(accum),
                                   torch::full({}, g_stop_signal.load() ? 1.0 : 0.0, f64)};
    for (auto& [k, a] : aux_sum) row.push_back(a);
    auto vals = torch::stack(row);
    if (g_.world) g_.world->all_reduce_sum(vals);
    loader->align();  // every rank's loader at the step's end: the state a checkpoint keeps
    dist::Comm* tpc = g_.tp.get();
    torch::Tensor gnorm;
    {
      prof::Scope ps(phases, "clip");
      gnorm = clip_grad_norm(*model, sub_.grad_clip,
                             tpc ? std::function<void(torch::Tensor&)>([tpc](torch::Tensor& t) { tpc->all_reduce_sum(t); })
                                 : nullptr);
    }
    r.lr = lr_factor(sub_, st.step);
    optim->step(r.lr, phases);
    optim->zero_grad();
    if (g_.tp) r.tp_comm_s = g_.tp->take_collective_seconds();
    // The step's one wait.
    torch::Tensor host;
    {
      prof::Scope ps(phases, "host_read");
      host = torch::cat({vals, gnorm.reshape({1})}).to(torch::kCPU);
    }
    const auto hv = host.accessor<double, 1>();
    const double ranks = g_.world ? s_.world.size : 1;
    r.loss = hv[0] / ranks;
    r.stop = hv[1] > 0;
    int64_t i = 2;
    for (auto& [k, a] : aux_sum) {
      const double v = hv[i++] / ranks;
      if (!std::isfinite(v)) r.loss = NAN;  // a non-finite auxiliary loss poisons the step just the same
      r.aux[k] = v;
    }
    r.grad_norm = hv[host.size(0) - 1];
    if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) return r;
    StepCtx sc;
    sc.step = st.step + 1;
    sc.optim_state = [&](const torch::Tensor& p) { return optim->state_of(p); };
    model->after_step(sc);
    for (auto& [k, v] : sc.stats) module_stats[k] = v;
    device::clear_autocast_cache();
    return r;
  }

  // --check-replicas: every rank of the data-parallel group holds the same parameters and buffers
  // bit for bit (after `step`), and the ranks of a tensor-parallel group the same unsplit ones.
  // Collective.
  void check_replicas(int64_t step) {
    if (!opt_.check_replicas) return;
    std::vector<std::pair<std::string, torch::Tensor>> named, whole;
    for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
    for (auto& b : model->named_buffers()) named.emplace_back(b.key(), b.value());
    for (auto& nt : named)
      if (!model->tp_splits.count(nt.first)) whole.push_back(nt);
    if (g_.dp) dist::check_replicas(*g_.dp, named, step);
    if (g_.tp) dist::check_replicas(*g_.tp, whole, step, "tensor-parallel");
  }

  // Every rank starts from its data-parallel group's first rank's weights (they are built from the
  // same seed; this makes sure: the ranks of a DP group hold the same shards), and only after every
  // rank has checked the run folder does rank 0 write to it. Collective.
  void sync_ranks() {
    if (!g_.world) return;
    if (g_.dp) {
      std::vector<torch::Tensor> ts;
      for (auto& p : model->parameters()) ts.push_back(p.data());
      for (auto& b : model->buffers()) ts.push_back(b.data());
      g_.dp->broadcast(ts);
    }
    g_.world->barrier();
  }

  // A non-finite loss or gradient norm: the step is recorded as INVALID and the run ends without
  // saving (the last good checkpoint stays). Returns the exit status, 3.
  int invalid(const StepResult& r) {
    ++st.step;
    const std::string reason = "non-finite " + std::string(std::isfinite(r.loss) ? "gradient norm" : "loss") +
                               " at step " + std::to_string(st.step) + "; last good checkpoint kept";
    metrics.write({{"step", st.step}, {"loss", std::isfinite(r.loss) ? json(r.loss) : json(nullptr)}, {"invalid", reason}});
    write_summary("INVALID", reason);
    std::fprintf(stderr, "[train] INVALID: %s\n", reason.c_str());
    return 3;
  }

  // Stopped by a signal after a step: the latest checkpoint is that step. Returns kPreempted. Collective.
  int preempted() {
    save(folder.latest(), false);
    const std::string why = "stopped by a signal at step " + std::to_string(st.step) +
                            "; the latest checkpoint is this step, and the same command resumes";
    write_summary("preempted", why);
    if (g_.world) g_.world->barrier();
    std::fprintf(stderr, "[train] %s\n", why.c_str());
    return kPreempted;
  }

  // The step's record: one JSON line in metrics.jsonl, one human line on the terminal.
  void log_step(const StepResult& r, double dt, bool spike) {
    flops_tok = model->flops_per_token(sub_.context) * tp_flops_scale;  // what ran this step (DSA's stage, ...)
    const double tok_s = sub_.total_batch / dt, mfu = tok_s * flops_tok / peak;
    json rec = {{"step", st.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                {"step_ms", 1000 * dt}, {"tok_s", tok_s}, {"mfu", mfu}, {"flops_tok", flops_tok}};
    if (spike) {
      rec["spike"] = true;
      rec["spike_start"] = st.spikes.spike_start;  // evals written since then were inside it
    }
    if (!r.aux.empty()) rec["aux"] = r.aux;
    if (g_.world) rec["comm_ms"] = 1000 * r.comm_s;  // the all-reduce time not hidden behind backward
    if (g_.tp) rec["tp_comm_ms"] = 1000 * r.tp_comm_s;  // inside the tensor-parallel collectives
    if (reducer) rec["buckets_in_backward"] = reducer->sent_during_backward();
    metrics.write(rec);
    if (opt_.quiet) return;
    const double eta = (sub_.steps - st.step) * (st.train_seconds / std::max<int64_t>(1, st.step));
    std::printf("step %lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f ms | %s tok/s | mfu %.1f%% | eta %s%s\n",
                (long long)st.step, (long long)sub_.steps, r.loss, r.lr, r.grad_norm, 1000 * dt, human_count(tok_s).c_str(),
                100 * mfu, human_duration(eta).c_str(), spike ? " | SPIKE" : "");
    std::fflush(stdout);
  }

 private:
  std::vector<int32_t> tok_buf_, doc_buf_, struct_buf_;

  // The next micro-batch: rows -> (inputs, targets, doc ids, the inputs' structure codes when the
  // model reads them, else undefined) on the device.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> next_batch() {
    const int64_t B = s_.rank_batch, row = sub_.context + 1;
    const bool sc = loader->feeds_structure();
    tok_buf_.resize(B * row);
    doc_buf_.resize(B * row);
    struct_buf_.resize(sc ? B * row : 0);
    for (int64_t b = 0; b < B; ++b)
      loader->next(tok_buf_.data() + b * row, doc_buf_.data() + b * row, sc ? struct_buf_.data() + b * row : nullptr);
    auto t = torch::from_blob(tok_buf_.data(), {B, row}, torch::kInt32).to(torch::kInt64).to(dev_);
    auto d = torch::from_blob(doc_buf_.data(), {B, row}, torch::kInt32).to(torch::kInt64).to(dev_);
    torch::Tensor s;
    if (sc) s = torch::from_blob(struct_buf_.data(), {B, row}, torch::kInt32).to(torch::kInt64).to(dev_).slice(1, 0, sub_.context);
    return {t.slice(1, 0, sub_.context), t.slice(1, 1, row), d.slice(1, 0, sub_.context), s};
  }
};

void catch_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a collective or a write in flight continues; the step's end stops
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

}  // namespace

int train(const TrainOptions& opt) {
  // ---- set up: everything is checked before a step runs
  Setup s = configure(opt);
  const Substrate& sub = s.sub;
  const torch::Device dev = device::resolve(sub.device, s.world.local_rank);  // cuda: one GPU per local rank
  Groups groups = connect(s, dev);
  const RunConfig rc = resolve_run_config(opt, s, dev);
  json cfg_json = rc.to_json();
  if (!opt.dry_run) check_run_folder(RunFolder{opt.out_dir}, cfg_json, opt.resume);  // refuse to mix runs
  // ---- memory: the baseline's share of this geometry is refused before anything is allocated
  std::string budget_source;
  const double budget = memory_budget_bytes(dev, opt.memory_budget_gib, s.world.local_size, &budget_source);
  const bool bf16 = rc.precision == "bf16";
  require_memory_fits(estimate_memory(rc.model, baseline_params(rc.model, s.tp, sub.optimizer == "muon"), s.rank_batch,
                                      s.tp, bf16),
                      budget, budget_source, "the baseline of this geometry");
  Run run(opt, s, rc, groups, dev);

  // ---- model and optimizer: Muon for block matrices, AdamW for embeddings, heads and the rest
  run.model = GPT(rc.model);
  GPT& model = run.model;
  model->to(dev);
  // Modules reduce the statistics that decide their state over the data-parallel ranks (model/dp.h).
  if (groups.dp) model->dp = groups.dp->as_tp_group();
  cfg_json["layer_plan"] = layer_plan(*model);
  const int64_t n_params = model->n_params(), n_matmul = model->n_matmul_params();
  run.flops_tok = model->flops_per_token(sub.context);
  if (groups.tp) {
    model->shard_tensor_parallel(groups.tp->as_tp_group());
    run.tp_flops_scale = run.flops_tok / model->flops_per_token(sub.context);
  }
  const std::vector<ParamGroup> lr_groups = param_groups(*model, sub);
  // This rank's parameters, exact, before the optimizer's state and the first step allocate theirs.
  const MemoryEstimate mem = estimate_memory(rc.model, param_counts(lr_groups), s.rank_batch, s.tp, bf16);
  require_memory_fits(mem, budget, budget_source, "this model");
  print_banner(s, rc, groups, n_params, n_matmul, cfg_json["layer_plan"].get<std::string>());
  // Every rank's tokens count in tokens/s, so the denominator is the peak of every device used.
  run.peak = s.world.size * device::peak_flops(dev, bf16 ? torch::kBFloat16 : torch::kFloat32);
  if (groups.tp)
    std::printf("tensor parallel: tp %d x dp %d over c10d %s; this rank holds heads and hidden units %d/%d of each block\n",
                s.tp, s.mesh.dp, groups.tp->backend().c_str(), s.mesh.tp_rank + 1, s.tp);
  cfg_json["param_groups"] = param_groups_json(lr_groups);
  std::printf("%s", describe_param_groups(lr_groups, sub).c_str());
  std::printf("memory: estimated %s per rank; %s\n", mem.describe().c_str(), budget_text(budget, budget_source).c_str());
  OptimOptions oo;
  oo.beta1 = sub.adam_beta1;
  oo.beta2 = sub.adam_beta2;
  oo.momentum = sub.muon_momentum;
  run.optim = std::make_unique<Optimizer>(lr_groups, oo);
  if (model->tp) run.optim->set_tensor_parallel(model->tp, model->tp_splits);
  if (opt.dry_run) {
    print_dry_run_estimate({s.ds.get(), s.transforms, sub, rc.model, s.accum, rc.precision == "bf16", dev, run.flops_tok,
                            run.peak});
    return 0;
  }

  const RunFolder folder{opt.out_dir};
  prepare_run_folder(folder, cfg_json, opt.resume);
  std::optional<RunLock> lock;  // held until the run's files are closed
  if (s.world.is_main()) {
    lock.emplace(folder.dir);
    remove_stale_temp_files(folder.dir);
    // From here a failure is this run's: main writes its error line there, for the runner's ledger.
    failure_file() = fs::join(folder.dir, "failure.txt");
    if (fs::exists(failure_file())) fs::remove_all(failure_file());
  }
  run.folder = folder;

  // ---- resume or start
  run.loader = std::make_unique<data::Loader>(*s.ds, data::Split::Train, sub.context, sub.data_order_seed(), true,
                                              s.mesh.dp_rank, s.mesh.dp);
  run.loader->set_transforms(s.transforms);  // before a restore: positions count transformed tokens
  if (model->reads_structure()) run.loader->feed_structure();  // the structure module's inputs
  const bool resumed = opt.resume && fs::exists(run.folder.latest());
  if (resumed) run.resume(run.folder.latest());
  run.sync_ranks();
  run.check_replicas(run.st.step);
  if (s.world.is_main()) {
    cfg_json["code_id"] = code_id();  // the training sources this binary was built from (not compared on resume)
    fs::write_atomic(run.folder.config(), cfg_json.dump(1) + "\n");
    run.metrics.open(run.folder.metrics(), resumed ? run.st.step : -1);  // a fresh start (even after a kill) keeps no old records
  }
  ckpt::TrainState& st = run.st;
  if (st.step == 0) run.eval();  // the untrained model: every curve starts at a known point
  run.write_summary("running", "");
  catch_stop_signals();
  // Data parallel: gradients averaged bucket by bucket, sent during the last micro-batch's backward.
  if (groups.dp) {
    run.reducer = std::make_unique<dist::GradReducer>(*groups.dp, model->parameters());
    std::printf("gradients: %lld buckets of <= 4 MiB, all-reduced %s\n", (long long)run.reducer->buckets(),
                opt.overlap_grad_reduce ? "during backward (--grad-reduce overlap)" : "after backward (--grad-reduce after)");
  }

  // ---- the loop: step, log, evaluate, save
  model->train();
  // --profile: phases timed from the third step of this process on (the first two warm up the
  // allocator and autocast's caches), ops profiled over the last two steps (the profiler's overhead
  // stays out of the phase times).
  std::vector<std::map<std::string, double>> phase_steps;
  std::vector<prof::OpRow> ops;
  int op_steps = 0;
  double op_ms = 0;
  const int64_t first_step = st.step;
  std::string machine;
  if (opt.profile) machine = prof::machine_line();
  while (st.step < sub.steps) {
    prof::Phases ph;
    const int64_t k = st.step - first_step;
    const bool op_prof = opt.profile && sub.steps - st.step <= 2 && k >= 2;
    const bool time_phases = opt.profile && k >= 2 && !op_prof;
    run.phases = time_phases ? &ph : nullptr;
    if (op_prof && op_steps++ == 0) prof::op_profile_start();
    const auto t0 = clk::now();
    const StepResult r = run.step();
    const double dt_step = seconds(t0);
    if (op_prof) op_ms += 1000 * dt_step;
    if (op_prof && st.step + 1 == sub.steps) ops = prof::op_profile_stop();
    if (time_phases) {
      ph.s["step"] = dt_step;
      if (ph.s.count("muon")) {  // Muon's time less its Newton-Schulz iterations
        ph.s["muon_other"] = ph.s["muon"] - ph.s["muon_ns"];
        ph.s.erase("muon");
      }
      for (auto& [key, v] : ph.s) v *= 1000;
      phase_steps.push_back(ph.s);
    }
    if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) return run.invalid(r);
    ++st.step;
    const double dt = dt_step;
    run.check_replicas(st.step);  // outside the step's time
    st.train_seconds += dt;
    st.tokens += sub.total_batch;
    st.loader = run.loader->state();
    const bool spike = st.spikes.observe(st.step, r.loss);
    run.log_step(r, dt, spike);
    if (st.train_flops >= 0) st.train_flops += run.flops_tok * static_cast<double>(sub.total_batch);

    const bool last = st.step == sub.steps;
    if (last || (sub.eval_every > 0 && st.step % sub.eval_every == 0)) run.eval();
    if (last || (sub.ckpt_every > 0 && st.step % sub.ckpt_every == 0)) {
      run.save(run.folder.latest(), false);
      if (opt.keep_checkpoints) run.save(fs::join(run.folder.dir, snapshot_name(st.step)), /*weights_only=*/true);
      run.write_summary(last ? "done" : "running", "");
    }
    if (r.stop && !last) return run.preempted();
  }
  run.write_summary("done", "");
  if (groups.world) groups.world->barrier();  // rank 0's last checkpoint and summary are written before any rank exits
  std::printf("done: best val_bpb %.4f @ step %lld, final %.4f, %s tokens in %s (%.0f tok/s)\n", st.best_val,
              (long long)st.best_step, st.last_val, human_count(st.tokens).c_str(), human_duration(st.train_seconds).c_str(),
              st.tokens / std::max(1e-9, st.train_seconds));
  if (opt.profile && s.world.is_main())
    std::printf("%s\n%s", machine.c_str(), prof::format_report(phase_steps, ops, op_steps, op_ms, 30).c_str());
  return 0;
}

}  // namespace slm
