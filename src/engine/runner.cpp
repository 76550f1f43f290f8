#include "engine/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/format.h"
#include "common/fs.h"
#include "common/version.h"
#include "data/dataset.h"
#include "engine/backend.h"
#include "engine/ledger.h"
#include "engine/local.h"
#include "engine/plan.h"
#include "engine/report.h"
#include "engine/slurm.h"
#include "eval/sandbox.h"

namespace slm::engine {

using json = nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

struct Run {
  std::string id, dir, experiment, phase;
  int64_t seed;
  const Experiment* exp;
  std::string substrate;  // the substrate argument of its trainer (its rung's on a ladder)
};

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  SLM_CHECK(n > 0, "ablate: cannot find the slmlab binary (/proc/self/exe)");
  return std::string(buf, n);
}

// One ablate per ledger: an flock on "<ledger>.lock" (released when the process dies, however it
// dies) holding the owner's pid. A second ablate on the same ledger would start trainers into the
// folders the first one's trainers hold and record them failed, so it refuses before touching anything.
class LedgerLock {
 public:
  explicit LedgerLock(const std::string& ledger) {
    const std::string path = ledger + ".lock";
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);  // CLOEXEC: trainers do not inherit it
    if (fd_ < 0 && errno == EACCES) fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // still lockable, pid unwritten
    SLM_CHECK(fd_ >= 0, "ablate: cannot open the ledger lock ", path, " (", std::strerror(errno), ")");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      const std::string pid = n > 0 ? std::string(buf, n) : "unknown";
      ::close(fd_);
      fail("ablate: ledger ", ledger, " is in use by another slmlab ablate (pid ", pid.substr(0, pid.find_first_of(" \n")),
           "); wait for it or pass --ledger");
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      // the lock holds without the pid; only the message of a second ablate is poorer
    }
  }
  ~LedgerLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  LedgerLock(const LedgerLock&) = delete;
  LedgerLock& operator=(const LedgerLock&) = delete;

 private:
  int fd_ = -1;
};

// A run folder's JSON file (summary.json, config.json), or nullopt with `why` set to a one-line
// reason when it is missing or not a JSON object.
std::optional<json> read_run_json(const std::string& path, std::string& why) {
  if (!fs::exists(path)) {
    why = path + " is missing";
    return std::nullopt;
  }
  try {
    auto j = json::parse(fs::read_file(path));
    if (j.is_object()) return j;
    why = path + " is not a JSON object";
  } catch (const json::exception& x) {
    why = path + " is not JSON (" + std::string(x.what()) + ")";
    for (char& c : why)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';  // the parser quotes the file's bytes
  }
  return std::nullopt;
}

// Reads what a finished (or killed) run left: summary numbers and every eval point. A summary.json
// that exists but cannot be read sets `bad_summary` to the reason (the run is then recorded failed).
RunRow ingest(RunRow row, std::vector<EvalPoint>& evals, std::string& bad_summary) {
  bad_summary.clear();
  evals.clear();
  const std::string metrics = fs::join(row.run_dir, "metrics.jsonl");
  std::vector<std::pair<int64_t, int64_t>> spikes;  // (start, last high step) of each confirmed spike step
  if (fs::exists(metrics)) {
    std::ifstream in(metrics);
    std::string line;
    while (std::getline(in, line)) {
      try {
        auto j = json::parse(line);
        if (j.contains("val_bpb")) {
          evals.push_back({j["step"].get<int64_t>(), j["val_bpb"].get<double>(), j.value("in_spike", false)});
          for (const char* k : {"fim_bpb", "ifim_bpb", "ifim_noinst_bpb", "sri_bpb"})  // eval/infill.h
            if (j.contains(k)) evals.back().metrics[k] = j[k].is_number() ? j[k].get<double>() : NAN;
        }
        if (j.value("spike", false))
          spikes.push_back({j.value("spike_start", j["step"].get<int64_t>()), j["step"].get<int64_t>()});
      } catch (const json::exception&) {
      }
    }
  }
  // A spike confirms a few steps after it starts: an eval written in between is inside it too. Every
  // step until the loss is back carries "spike" (train/spike.h), so [start, last] is the whole spike.
  std::map<int64_t, bool> spike_at;
  for (auto& e : evals) {
    for (auto& [start, last] : spikes) e.in_spike |= e.step >= start && e.step <= last;
    spike_at[e.step] = e.in_spike;
  }
  const std::string summary = fs::join(row.run_dir, "summary.json");
  std::optional<json> sj;
  if (fs::exists(summary) && !(sj = read_run_json(summary, bad_summary))) row.has_summary = false;
  if (sj) try {
    json s = *sj;  // not const: s[k] of a missing key must be null, not undefined
    row.has_summary = true;
    row.substrate_id = s.value("substrate_id", "");
    row.data_fingerprint = s.value("data_fingerprint", "");
    auto num = [&](const char* k) { return s[k].is_number() ? s[k].get<double>() : NAN; };
    row.best_val_bpb = num("best_val_bpb");
    row.best_step = s.value("best_step", int64_t(-1));
    row.final_val_bpb = num("final_val_bpb");
    row.tokens_per_second = num("tokens_per_second");
    row.step_ms = num("step_ms");
    row.peak_rss_bytes = s.value("peak_rss_bytes", int64_t(0));
    row.n_params = s["n_params"].is_number() ? s["n_params"].get<int64_t>() : 0;
    row.active_params = s["active_params"].is_number() ? s["active_params"].get<int64_t>() : 0;
    row.steps = s["step"].is_number() ? s["step"].get<int64_t>() : 0;
    row.flops_per_token = num("flops_per_token");
    row.tokens = num("tokens");
    row.wall_seconds = num("wall_seconds");
    row.train_flops = num("train_flops");
    row.best_in_spike = spike_at.count(row.best_step) && spike_at[row.best_step];
  } catch (const json::exception& x) {  // a value of the wrong type
    row.has_summary = false;
    bad_summary = summary + " has a field of the wrong type (" + std::string(x.what()) + ")";
  }
  const std::string cfg = fs::join(row.run_dir, "config.json");
  std::string cfg_why;
  if (fs::exists(cfg) && read_run_json(cfg, cfg_why)) row.config_json = fs::read_file(cfg);
  return row;
}

std::string last_line(const std::string& path) {
  if (!fs::exists(path)) return "";
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

// Why a run failed: the trainer's own error line (failure.txt, written by main's one catch), or,
// when it could not write one (killed, disk full, an error before it took its folder), the last
// line of its log. A failure.txt older than this attempt is an earlier attempt's and is not used.
std::string failure_reason(const std::string& dir, std::filesystem::file_time_type attempt_start) {
  const std::string path = fs::join(dir, "failure.txt");
  std::error_code ec;
  const bool fresh = fs::exists(path) && std::filesystem::last_write_time(path, ec) >= attempt_start && !ec;
  const std::string own = fresh ? last_line(path) : "";
  return own.empty() ? last_line(fs::join(dir, "train.log")) : own;
}

std::string summary_status(const std::string& dir) {
  std::string why;
  auto j = read_run_json(fs::join(dir, "summary.json"), why);
  return j && (*j)["status"].is_string() ? (*j)["status"].get<std::string>() : "";
}

std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> w;
  std::istringstream in(s);
  std::string x;
  while (in >> x) w.push_back(x);
  return w;
}

std::string list_text(const std::vector<std::string>& v) {
  std::string out;
  for (auto& x : v) out += (out.empty() ? "" : ", ") + x;
  return "[" + out + "]";
}

// An experiment's seeds: the plan's, then those `--decide` added earlier (in the ledger, not the plan).
std::vector<int64_t> all_seeds(const Experiment& e, const std::vector<RunRow>& rows) {
  std::vector<int64_t> seeds = e.seeds;
  for (auto& r : rows)
    if (r.experiment == e.id && std::find(seeds.begin(), seeds.end(), r.seed) == seeds.end()) seeds.push_back(r.seed);
  return seeds;
}

// The ids of an experiment's runs with these seeds: on the plan's substrate, or on each rung of its
// ladder that runs it.
std::vector<std::string> run_ids(const Plan& plan, const Experiment& e, const std::vector<int64_t>& seeds) {
  std::vector<std::string> ids;
  for (int64_t seed : seeds) {
    if (plan.ladder.empty()) ids.push_back(run_id(plan.name, "", e.id, seed));
    for (auto& r : plan.ladder)
      if (std::find(r.experiments.begin(), r.experiments.end(), e.id) != r.experiments.end())
        ids.push_back(run_id(plan.name, r.name, e.id, seed));
  }
  return ids;
}

// A finished run counts for its experiment only if it ran the modules the plan resolves to now: a
// plan edited in place, or a module default changed since, would otherwise score old numbers under
// a new definition. Checked before anything runs and before the plan is saved again.
void refuse_stale_runs(const Plan& plan, Ledger& ledger) {
  const auto rows = ledger.runs(plan.name);
  for (auto& e : plan.experiments) {
    std::vector<std::string> want;
    for (auto& m : e.effective) want.push_back(catalog::arg_text(m));
    for (const std::string& id : run_ids(plan, e, all_seeds(e, rows))) {
      auto row = ledger.get(id);
      if (!row || row->status != Status::Done) continue;
      const std::string cfg = fs::join(row->run_dir, "config.json");
      if (!fs::exists(cfg)) {
        std::printf("[ablate] warning: %s is done but %s is missing here; its modules cannot be checked against the plan\n",
                    id.c_str(), cfg.c_str());
        continue;
      }
      std::vector<std::string> had;
      std::string why;
      auto j = read_run_json(cfg, why);
      try {
        SLM_CHECK(j, "ablate: ", why, "; restore it or invalidate run ", id);
        had = j->value("modules", std::vector<std::string>{});
      } catch (const nlohmann::json::exception& x) {
        fail("ablate: ", cfg, " is not a run configuration (", x.what(), "); restore it or invalidate run ", id);
      }
      SLM_CHECK(had == want, "ablate: ", id, " finished with modules ", list_text(had), " but the plan now resolves experiment '",
                e.id, "' to ", list_text(want), " (an edited plan or a changed module default); give the changed "
                "experiment a new id (the old runs stay in the ledger), restore its definition, or use a fresh --ledger "
                "and --runs");
    }
  }
}

// [rule] compile_rate = N: the FIM-mode compile rate of a finished run's best checkpoint, scored by
// `slmlab eval compile` (which records it in the ledger) as a child process on this machine, its
// output in the run folder's compile.log. Blocking: the trainers of the wave keep running meanwhile,
// and nothing else writes the ledger until it returns. A run already scored at its best step is
// skipped, so a resumed ablate scores only what is missing. False when the evaluation failed.
bool join_compile_rate(const Plan& plan, Ledger& ledger, const std::string& ledger_path, const std::string& bin,
                       const RunRow& row, int threads) {
  if (plan.rule.compile_rate <= 0 || row.status != Status::Done) return true;
  for (auto& e : ledger.compile_evals(row.run_id))
    if (e.mode == "fim" && e.checkpoint == "best" && e.step == row.best_step) return true;
  const std::string log = fs::join(row.run_dir, "compile.log");
  const std::vector<std::string> args = {bin, "eval", "compile", row.run_dir, "--checkpoint", "best", "--mode", "fim", "--n",
                                         std::to_string(plan.rule.compile_rate), "--threads", std::to_string(threads),
                                         "--ledger", ledger_path};
  std::printf("[ablate] %s: compile rate (fim, %lld prompts) at its best checkpoint (step %lld)\n", row.run_id.c_str(),
              static_cast<long long>(plan.rule.compile_rate), static_cast<long long>(row.best_step));
  std::fflush(stdout);
  const pid_t pid = ::fork();
  SLM_CHECK(pid >= 0, "ablate: cannot start the compile-rate evaluation of ", row.run_id, ": fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with ablate, like the trainers
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(args[0].c_str(), argv.data());
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return true;
  std::printf("[ablate] %s: the compile-rate evaluation failed (%s); see %s\n", row.run_id.c_str(),
              last_line(log).c_str(), log.c_str());
  std::fflush(stdout);
  return false;
}

}  // namespace

volatile std::sig_atomic_t stop_requested = 0;

int ablate(const AblateOptions& opt) {
  SLM_CHECK(opt.jobs >= 1 && opt.jobs <= 256, "ablate: --jobs ", opt.jobs, " is outside [1, 256]");
  SLM_CHECK(opt.backend == "local" || opt.backend == "slurm", "ablate: --backend '", opt.backend,
            "' is not a backend; use local (processes on this machine) or slurm (one sbatch job per run)");
  SLM_CHECK(opt.poll_s > 0 && opt.poll_s <= 600, "ablate: --poll ", opt.poll_s, " is outside (0, 600] seconds");
  const bool on_slurm = opt.backend == "slurm";
  Plan plan = load_plan(opt.plan);  // every problem at once, before anything runs
  // Parameter-matched control arms (engine/control.h): decided before anything runs, from the
  // models' parameter counts at the data set's vocabulary.
  std::vector<ControlArm> arms;
  bool wants_controls = false;
  for (auto& e : plan.experiments) wants_controls |= control_kind(plan, e) != "none";
  if (wants_controls) {
    SLM_CHECK(plan.ladder.empty(), "ablate: plan ", opt.plan, " asks for parameter-matched controls on a ladder, which ",
              "this build does not run yet; drop param_control or give each rung its own plan");
    SLM_CHECK(opt.count_params, "ablate: plan ", opt.plan, " asks for parameter-matched controls but this build cannot count parameters");
    arms = plan_controls(plan, data::DataSet(opt.data).tokenizer().vocab_size(), opt.count_params);
    add_controls(plan, arms);
  }
  // --decide adds seeds by experiment id, and a ladder's rungs decide apart: not combined yet.
  SLM_CHECK(!(opt.decide && !plan.ladder.empty()), "ablate: --decide does not run ladders yet (plan ", plan.name,
            " names rungs); run the ladder without --decide, or give each rung its own plan with substrate = \"...\"");
  if (on_slurm) slurm::check_available();  // before the ledger is touched
  if (plan.rule.compile_rate > 0) eval::require_sandbox();  // [rule] compile_rate needs it: say so before anything runs
  const int total_threads = opt.threads > 0 ? opt.threads : std::max(1u, std::thread::hardware_concurrency());
  const int per_job = std::max(1, total_threads / opt.jobs);
  fs::mkdirs(fs::parent(opt.ledger));
  LedgerLock lock(opt.ledger);  // before the ledger is opened or any run started
  Ledger ledger(opt.ledger);
  refuse_stale_runs(plan, ledger);
  // --decide's budget goes into the rule the ledger keeps: reports test at the alpha its looks imply.
  // A budget once used stays (the larger one), so a later plain ablate cannot undo the correction.
  if (opt.decide) plan.rule.max_seeds = opt.max_seeds > 0 ? opt.max_seeds : plan.rule.max_seeds > 0 ? plan.rule.max_seeds : kDefaultMaxSeeds;
  if (auto prev = ledger.plan_spec(plan.name)) {
    try {
      plan.rule.max_seeds = std::max(plan.rule.max_seeds, plan_info_from_json(*prev).rule.max_seeds);
    } catch (const Error&) {
      // a malformed earlier spec is replaced below
    }
  }
  ledger.save_plan(plan.name, plan_info_json(plan_info(plan)));  // reports read bases and the rule from here
  const std::string bin = self_exe();
  // Each control arm trains on its derived substrate, written beside its runs.
  std::map<std::string, std::string> substrate_of;
  for (auto& a : arms) {
    const std::string dir = fs::join(fs::join(opt.runs, plan.name), a.id);
    fs::mkdirs(dir);
    substrate_of[a.id] = fs::join(dir, "substrate.toml");
    fs::write_atomic(substrate_of[a.id], "# " + a.describe() + "\n" + a.substrate.to_toml());
    std::printf("[ablate] control %s: %s\n", a.id.c_str(), a.describe().c_str());
  }
  // A relative .toml path is relative to the plan file.
  auto substrate_arg = [&](std::string ref) {
    if (ref.find(".toml") != std::string::npos && ref[0] != '/') ref = fs::join(fs::parent(opt.plan), ref);
    return ref;
  };
  // A Slurm job runs elsewhere, in its run folder: it gets absolute paths (on the shared filesystem).
  auto path_arg = [&](const std::string& p) {
    return on_slurm && fs::exists(p) ? std::filesystem::absolute(p).lexically_normal().string() : p;
  };
  std::unique_ptr<Backend> backend;
  if (on_slurm) {
    slurm::Options so;
    so.poll_s = opt.poll_s;
    so.extra = split_words(opt.sbatch);
    backend = slurm::make_backend(so);
  } else {
    backend = local::make_backend();
  }
  struct sigaction sa {};
  sa.sa_handler = local::on_stop_signal;  // no SA_RESTART: the local backend's waitpid returns EINTR
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);

  // Expand and register. Finished (done, INVALID) and exhausted (failed too often) runs stay as they are.
  std::vector<Run> pending;
  size_t n_total = 0, n_final = 0;
  const auto ledger_rows = ledger.runs(plan.name);
  // Registers one run (a new row is queued); false when it is finished or out of retries.
  auto enlist = [&](const Experiment& e, int64_t seed, const Rung* rung) {
    ++n_total;
    const std::string id = run_id(plan.name, rung ? rung->name : "", e.id, seed);
    Run r{id, fs::join(opt.runs, id), e.id, e.phase, seed, &e, substrate_arg(rung ? rung->ref : plan.substrate_ref)};
    auto row = ledger.get(r.id);
    if (!row) {
      RunRow nr;
      nr.run_id = r.id;
      nr.plan = plan.name;
      nr.phase = e.phase;
      nr.experiment = e.id;
      nr.seed = seed;
      nr.run_dir = r.dir;
      nr.git_commit = git_commit();
      ledger.upsert(nr);
      row = ledger.get(r.id);
    }
    const bool finished = row->status == Status::Done || row->status == Status::Invalid;
    const bool exhausted = row->status == Status::Failed && row->attempts > plan.rule.max_retries;
    if (finished || exhausted) {
      ++n_final;
      return;
    }
    pending.push_back(r);
  };
  bool compile_failed = false;
  for (auto& r : ledger_rows)  // finished before, scored not yet (an ablate stopped in between, a rule changed)
    if (!stop_requested && plan.find(r.experiment)) compile_failed |= !join_compile_rate(plan, ledger, opt.ledger, bin, r, total_threads);
  // A ladder runs rung by rung: the target (last) first, since every agreement is measured against
  // it, then the others smallest first. A ladder cut short keeps a target and its cheapest rungs.
  if (plan.ladder.empty()) {
    for (auto& e : plan.experiments)
      for (int64_t seed : all_seeds(e, ledger_rows)) enlist(e, seed, nullptr);
  } else {
    std::vector<const Rung*> order = {&plan.ladder.back()};
    for (size_t i = 0; i + 1 < plan.ladder.size(); ++i) order.push_back(&plan.ladder[i]);
    for (const Rung* rung : order)
      for (auto& id : rung->experiments)
        for (int64_t seed : plan.find(id)->seeds) enlist(*plan.find(id), seed, rung);
  }
  if (plan.rule.allow_mixed_code)
    std::printf("[ablate] rule allow_mixed_code = true: reports will compare runs of different builds (code id now %s)\n",
                code_id());
  const size_t n_waves_est = (pending.size() + opt.jobs - 1) / opt.jobs;
  std::printf("[ablate] plan %s: %zu runs, %zu finished, %zu to run in ~%zu waves of %d (%d threads each%s); ledger %s\n",
              plan.name.c_str(), n_total, n_final, pending.size(), n_waves_est, opt.jobs, per_job,
              on_slurm ? ", Slurm jobs" : "", opt.ledger.c_str());
  std::fflush(stdout);

  const auto t0 = clk::now();
  double run_seconds = 0;
  size_t runs_timed = 0, wave = 0, n_preempted = 0;
  bool any_failed = false;
  for (size_t decide_round = 0;; ++decide_round) {
    while (!pending.empty() && !stop_requested) {
      ++wave;
      std::vector<Run> batch(pending.begin(), pending.begin() + std::min<size_t>(opt.jobs, pending.size()));
      pending.erase(pending.begin(), pending.begin() + batch.size());
      std::map<std::string, Run> live;
      std::map<std::string, clk::time_point> started;
      std::map<std::string, std::filesystem::file_time_type> attempt_start;  // for failure_reason
      for (auto& r : batch) {
        fs::mkdirs(r.dir);
        Job job{r.id, path_arg(r.dir), {}, per_job};
        const auto own = substrate_of.find(r.experiment);
        job.argv = {bin, "train", "--quiet", "--resume", "--data", path_arg(opt.data), "--substrate",
                    path_arg(own == substrate_of.end() ? r.substrate : own->second),
                    "--out", job.dir, "--threads", std::to_string(per_job), "--set", "seed=" + std::to_string(r.seed)};
        for (auto& m : r.exp->effective) job.argv.insert(job.argv.end(), {"--module", catalog::arg_text(m)});
        attempt_start[r.id] = std::filesystem::file_time_type::clock::now();
        const bool attached = backend->start(job);
        ledger.set_status(r.id, Status::Running, "", /*count_attempt=*/!attached);
        live[r.id] = r;
        started[r.id] = clk::now();
      }
      std::printf("[ablate] wave %zu: %zu running (%s%s)\n", wave, live.size(), batch[0].id.c_str(),
                  batch.size() > 1 ? ", ..." : "");
      std::fflush(stdout);
      while (!live.empty()) {
        auto ended = backend->wait_any();
        if (!ended) break;  // stopped; the backend left its runs running (Slurm)
        auto it = live.find(ended->run_id);
        if (it == live.end()) continue;
        Run r = it->second;
        live.erase(it);
        const double secs = std::chrono::duration<double>(clk::now() - started[r.id]).count();
        RunRow row = *ledger.get(r.id);
        std::vector<EvalPoint> evals;
        std::string bad_summary;
        row = ingest(row, evals, bad_summary);
        // The build that ran it. A run resumed by another build mixes both: it gets an id of its own,
        // so reports never count it as either (engine/scorecard.h).
        if (row.code_id.empty()) row.code_id = code_id();
        else if (row.code_id.find(code_id()) == std::string::npos) row.code_id += std::string("+") + code_id();
        ledger.set_evals(r.id, evals);
        const int code = ended->code;
        if (!bad_summary.empty() && (code == 0 || code == 3)) {
          // The trainer ended but left no readable verdict: failed with that reason, never "running".
          row.status = Status::Failed;
          row.reason = bad_summary;
          any_failed = true;
        } else if (code == 0) {
          row.status = Status::Done;
          row.reason = "";
          run_seconds += secs;
          ++runs_timed;
        } else if (code == 3 && summary_status(r.dir) == "INVALID") {
          // The trainer's own verdict (non-finite loss), with its reason. Exit 3 without it is an
          // internal error of the trainer: failed, below.
          row.status = Status::Invalid;
          std::string why;
          auto s = read_run_json(fs::join(r.dir, "summary.json"), why);
          row.reason = s && (*s)["reason"].is_string() ? (*s)["reason"].get<std::string>() : "INVALID";
        } else if (code == 128 + SIGTERM && (summary_status(r.dir) == "preempted" || stop_requested)) {
          // Stopped by a signal after checkpointing (ablate stopping, a preemption): not a failure.
          // When ablate itself passed the signal on, a trainer that had not yet installed its handler
          // (still loading) dies of it with nothing to save: stopped too, not failed (it resumes from
          // its last checkpoint, or from the start, like any other).
          row.status = Status::Queued;
          row.reason = summary_status(r.dir) == "preempted" ? "preempted: " + last_line(fs::join(r.dir, "train.log"))
                                                            : "preempted: stopped by ablate before its first checkpoint";
          row.attempts = std::max<int64_t>(0, row.attempts - 1);
          ++n_preempted;
          if (!stop_requested) pending.push_back(r);  // resumes in a later wave
        } else {
          row.status = Status::Failed;
          row.reason = ended->note.empty() ? "exit " + std::to_string(code) + ": " + failure_reason(r.dir, attempt_start[r.id]) : ended->note;
          if (row.attempts <= plan.rule.max_retries) pending.push_back(r);  // retried in a later wave
          else any_failed = true;
        }
        ledger.upsert(row);
        if (!stop_requested) compile_failed |= !join_compile_rate(plan, ledger, opt.ledger, bin, row, per_job);
        if (row.status != Status::Queued) ++n_final;
        const double avg = runs_timed ? run_seconds / runs_timed : NAN;
        const double left_waves = std::ceil(double(pending.size() + live.size()) / opt.jobs);
        std::printf("[ablate] %s %s%s | done %zu/%zu | wave %zu | elapsed %s | eta %s\n", r.id.c_str(),
                    status_name(row.status), row.reason.empty() ? "" : (" (" + row.reason + ")").c_str(),
                    std::min(n_final, n_total), n_total, wave,
                    human_duration(std::chrono::duration<double>(clk::now() - t0).count()).c_str(), human_duration(avg * left_waves).c_str());
        std::fflush(stdout);
      }
      if (stop_requested) {
        for (auto& [id, r] : live) ledger.set_status(id, Status::Running, "ablate stopped; its Slurm job stays queued and the next ablate re-attaches");
        std::printf("[ablate] stopped by a signal: %zu runs checkpointed%s; run the same command again to %s\n",
                    n_preempted, live.empty() ? "" : (", " + std::to_string(live.size()) + " Slurm jobs left running").c_str(),
                    live.empty() ? "resume" : "re-attach and resume");
        std::fflush(stdout);
        return 128 + SIGTERM;
      }
    }
    if (!opt.decide || stop_requested) break;
    // --decide: look at the verdicts (the ledger's plan, rule and runs, as `report` does) and give
    // each inconclusive experiment that more seeds could decide one more seed, its base too when
    // it has fewer. Every look tests at alpha / looks (engine/scorecard.h), so the repeated looks
    // keep the false keep/park/drop rate under the rule's alpha.
    const PlanInfo info = plan_info_from_json(*ledger.plan_spec(plan.name));
    const auto rows = ledger.runs(plan.name);
    std::map<std::string, std::vector<EvalPoint>> evals;
    for (auto& r : rows) evals[r.run_id] = ledger.evals(r.run_id);
    const auto more = seeds_to_add(build_scorecard(info, rows, evals));
    if (more.empty()) {
      std::printf("[ablate] decide: every verdict decided, out of reach or at %lld seeds after %zu added wave%s\n",
                  static_cast<long long>(plan.rule.max_seeds), decide_round, decide_round == 1 ? "" : "s");
      break;
    }
    std::string names;
    for (auto& id : more) {
      const Experiment* e = plan.find(id);
      int64_t seed = 0;
      for (int64_t x : all_seeds(*e, rows)) seed = std::max(seed, x + 1);
      enlist(*e, seed, nullptr);
      names += (names.empty() ? "" : ", ") + id + " s" + std::to_string(seed);
    }
    std::printf("[ablate] decide: inconclusive and within reach: one more seed for %s\n", names.c_str());
    std::fflush(stdout);
  }
  return any_failed || compile_failed ? 1 : 0;
}

}  // namespace slm::engine
