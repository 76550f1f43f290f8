// The ledger: one SQLite database (WAL mode, busy timeout) that every run of every plan reports
// into: configuration, status with reason, substrate id, data fingerprint, slmlab's git commit,
// the summary numbers and every eval point. Many processes write at once and nothing is lost:
// each write is one short IMMEDIATE transaction, retried while another writer holds the lock.
// Every row of runs and evals carries a checksum of its columns, so a row altered after it was
// written (a flipped bit, a hand edit) reads back as INVALID with that reason, never as a number.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

struct sqlite3;

namespace slm::engine {

// Status of a run. INVALID keeps its row and its reason; it is excluded from every comparison.
enum class Status { Queued, Running, Done, Failed, Invalid };
const char* status_name(Status s);
Status parse_status(const std::string& s);  // throws slm::Error on an unknown name

struct RunRow {
  std::string run_id;  // "<plan>/<experiment>/s<seed>"
  std::string plan, phase, experiment;
  int64_t seed = 0;
  std::string run_dir;
  Status status = Status::Queued;
  std::string reason;  // why FAILED or INVALID
  std::string substrate_id, data_fingerprint, git_commit;
  std::string code_id;      // hash of the training sources of the binary that ran it ("" = unknown, older ledgers)
  std::string config_json;  // the resolved configuration
  int64_t attempts = 0;
  // Summary (NaN / -1 until known).
  double best_val_bpb = 0, final_val_bpb = 0, tokens_per_second = 0, step_ms = 0;
  int64_t best_step = -1, peak_rss_bytes = 0;
  bool has_summary = false;
  // Cost (issue 21 §2), from summary.json: total and active parameters (active: what a token uses;
  // MoE's unrouted experts are not), training FLOPs per token of the model as it ran at the end
  // (DSA's sparse stage, MoD's routed fraction, skipped branches), tokens seen, wall seconds.
  // 0 / NaN when unknown (runs recorded before costs were).
  int64_t n_params = 0, active_params = 0, steps = 0;
  double flops_per_token = NAN, tokens = NAN, wall_seconds = NAN;
  double train_flops = NAN;  // every step at the FLOPs per token of what ran in it (NaN: unknown)
  bool best_in_spike = false;  // the best checkpoint was saved inside a loss spike
  bool manual_invalid = false; // status/reason come from `slmlab invalidate`, overlaid on the run's own
};

struct EvalPoint {
  int64_t step = 0;
  double val_bpb = 0;
  bool in_spike = false;
  // The objective metrics measured at this eval (eval/infill.h): "fim_bpb", "ifim_bpb",
  // "ifim_noinst_bpb", "sri_bpb"; empty for runs that recorded none.
  std::map<std::string, double> metrics;
  EvalPoint() = default;
  EvalPoint(int64_t step_, double val_bpb_, bool in_spike_, std::map<std::string, double> metrics_ = {})
      : step(step_), val_bpb(val_bpb_), in_spike(in_spike_), metrics(std::move(metrics_)) {}
};

// A compile-rate evaluation of one checkpoint of a run (slmlab eval compile).
struct CompileEval {
  std::string run_id, checkpoint, mode;  // checkpoint: latest, best or a step; mode: complete or fim
  int64_t step = 0;
  bool in_spike = false;
  int64_t n = 0, k = 0;
  double lo = 0, hi = 1;                 // Wilson 95%
  std::string records;                   // the per-prompt records file
  int64_t trivial = 0;                   // prompts whose body compiled but was trivial (not in k)
  std::string stopped;                   // "" or the bound that ended it before the prompts asked for
};

class Ledger {
 public:
  // Opens (creating if needed) the database at `path`; fails with a one-line reason.
  explicit Ledger(const std::string& path);
  ~Ledger();
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Inserts or replaces the whole row of run_id.
  void upsert(const RunRow& r);
  // Changes status and reason only (e.g. running -> failed), bumping attempts when asked.
  void set_status(const std::string& run_id, Status s, const std::string& reason, bool count_attempt = false);
  // Replaces the eval points of a run.
  void set_evals(const std::string& run_id, const std::vector<EvalPoint>& evals);
  // Manual invalidation and its undo, logged with time and reason.
  void invalidate(const std::string& run_id, const std::string& reason);
  void revalidate(const std::string& run_id);

  std::optional<RunRow> get(const std::string& run_id) const;
  // All runs, or those of one plan, ordered by run_id.
  std::vector<RunRow> runs(const std::string& plan = "") const;
  std::vector<EvalPoint> evals(const std::string& run_id) const;
  // The run recorded in `run_dir` (trailing slashes ignored), if any.
  std::optional<std::string> run_in_dir(std::string run_dir) const;
  // The plan a ledger's runs came from (its experiments, bases and rule, as JSON), so reports need
  // only the ledger. Saved by `slmlab ablate` at every start.
  void save_plan(const std::string& name, const std::string& spec_json);
  std::optional<std::string> plan_spec(const std::string& name) const;
  // Compile-rate evaluations: one per (run, step, mode), replaced when re-evaluated.
  void add_compile_eval(const CompileEval& e);
  std::vector<CompileEval> compile_evals(const std::string& run_id) const;
  // Every plan with runs or a saved spec.
  std::vector<std::string> plan_names() const;
  const std::string& path() const { return path_; }

 private:
  void exec(const std::string& sql) const;
  // Row checksums: every write to a row stores the hash of its columns; every read checks it.
  void seal_run(const std::string& run_id);
  void seal_eval(const std::string& run_id, int64_t step);
  RunRow checked(RunRow r) const;
  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT, retrying while the database is busy.
  template <typename F>
  void write_txn(F&& body);
  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace slm::engine
