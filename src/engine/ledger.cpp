#include "engine/ledger.h"

#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cmath>
#include <thread>

#include "common/error.h"
#include "common/hash.h"
#include <nlohmann/json.hpp>

namespace slm::engine {

namespace {

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY,
  plan TEXT NOT NULL, phase TEXT NOT NULL, experiment TEXT NOT NULL, seed INTEGER NOT NULL,
  run_dir TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','INVALID')),
  reason TEXT NOT NULL DEFAULT '',
  manual_invalid TEXT,            -- reason of a manual invalidation, NULL when none
  substrate_id TEXT NOT NULL DEFAULT '', data_fingerprint TEXT NOT NULL DEFAULT '',
  git_commit TEXT NOT NULL DEFAULT '', config_json TEXT NOT NULL DEFAULT '',
  attempts INTEGER NOT NULL DEFAULT 0,
  has_summary INTEGER NOT NULL DEFAULT 0,
  best_val_bpb REAL, best_step INTEGER, final_val_bpb REAL, tokens_per_second REAL, step_ms REAL,
  peak_rss_bytes INTEGER, best_in_spike INTEGER NOT NULL DEFAULT 0,
  code_id TEXT NOT NULL DEFAULT '', -- hash of the training sources of the binary that ran it (version.h)
  cost_json TEXT NOT NULL DEFAULT '', -- params, active params, FLOPs/token, tokens, wall seconds ('' = unknown)
  row_sum TEXT,                   -- checksum of every column above (Ledger::seal_run)
  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS evals (
  run_id TEXT NOT NULL, step INTEGER NOT NULL, val_bpb REAL NOT NULL, in_spike INTEGER NOT NULL DEFAULT 0,
  metrics_json TEXT NOT NULL DEFAULT '', -- the objective metrics of this eval ({"fim_bpb": ...}; '' = none)
  row_sum TEXT,
  PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS plans (
  name TEXT PRIMARY KEY, spec_json TEXT NOT NULL,
  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE TABLE IF NOT EXISTS compile_evals (
  run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, step INTEGER NOT NULL, in_spike INTEGER NOT NULL, mode TEXT NOT NULL,
  n INTEGER NOT NULL, k INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, records TEXT NOT NULL,
  trivial INTEGER NOT NULL DEFAULT 0, stopped TEXT NOT NULL DEFAULT '',
  at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  PRIMARY KEY (run_id, step, mode)
);
CREATE TABLE IF NOT EXISTS invalidations (
  run_id TEXT NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL,
  at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
)sql";

// A prepared statement that finalizes itself.
struct Stmt {
  sqlite3_stmt* s = nullptr;
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK)
      fail("[ledger] cannot prepare statement: ", sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s); }
  Stmt& text(int i, const std::string& v) {
    sqlite3_bind_text(s, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& i64(int i, int64_t v) {
    sqlite3_bind_int64(s, i, v);
    return *this;
  }
  Stmt& f64(int i, double v) {
    if (std::isfinite(v)) sqlite3_bind_double(s, i, v);
    else sqlite3_bind_null(s, i);
    return *this;
  }
  Stmt& null(int i) {
    sqlite3_bind_null(s, i);
    return *this;
  }
  // Steps once; true when a row is available.
  bool step(sqlite3* db) {
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("[ledger] ", sqlite3_errmsg(db));
  }
  std::string col_text(int i) const {
    const unsigned char* p = sqlite3_column_text(s, i);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  double col_f64(int i) const { return sqlite3_column_type(s, i) == SQLITE_NULL ? NAN : sqlite3_column_double(s, i); }
  int64_t col_i64(int i) const { return sqlite3_column_int64(s, i); }
  bool col_null(int i) const { return sqlite3_column_type(s, i) == SQLITE_NULL; }
  // Columns [from, to) as stored (type and exact value), hashed: what a row checksum covers.
  std::string sum(int from, int to) const {
    Hasher h;
    for (int i = from; i < to; ++i) {
      const int type = sqlite3_column_type(s, i);
      h.field(static_cast<uint64_t>(type));
      if (type == SQLITE_INTEGER) h.field(static_cast<uint64_t>(sqlite3_column_int64(s, i)));
      else if (type == SQLITE_FLOAT) {
        const double v = sqlite3_column_double(s, i);
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        h.field(bits);
      } else if (type != SQLITE_NULL) h.field(col_text(i));
    }
    return h.hex();
  }
};

// Every stored column of a run row but row_sum and updated_at, in one order for sealing and checking.
const char* kRunColumns =
    "run_id, plan, phase, experiment, seed, run_dir, status, reason, manual_invalid, substrate_id, "
    "data_fingerprint, git_commit, config_json, attempts, has_summary, best_val_bpb, best_step, final_val_bpb, "
    "tokens_per_second, step_ms, peak_rss_bytes, best_in_spike, code_id, cost_json";
// A row without a code id (written before it was recorded) is sealed over the first 22 columns, one
// without costs over the first 23 (or 22), so the checksums of older ledgers still hold.
constexpr int kNRunColumns = 24;
int n_sealed(const Stmt& row) {
  if (!row.col_text(kNRunColumns - 1).empty()) return kNRunColumns;
  return row.col_text(kNRunColumns - 2).empty() ? kNRunColumns - 2 : kNRunColumns - 1;
}

// The sealed columns of an eval row, then row_sum. metrics_json joins the checksum only when set, so
// rows sealed before it existed still check (as n_sealed does for the runs' later columns).
const char* kEvalColumns = "run_id, step, val_bpb, in_spike, metrics_json, row_sum";
int n_eval_sealed(const Stmt& row) { return row.col_text(4).empty() ? 4 : 5; }

// The objective metrics of an eval point as stored ("" for none) and back.
std::string eval_metrics_text(const std::map<std::string, double>& m) {
  if (m.empty()) return "";
  nlohmann::json j = nlohmann::json::object();
  for (auto& [k, v] : m) j[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
  return j.dump();
}
std::map<std::string, double> eval_metrics_of(const std::string& text) {
  std::map<std::string, double> out;
  if (text.empty()) return out;
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return out;
  for (auto& [k, v] : j.items()) out[k] = v.is_number() ? v.get<double>() : NAN;
  return out;
}

// The cost columns as one JSON object ("" when nothing is known); the ledger stays one column wider only.
std::string cost_text(const RunRow& r) {
  if (r.n_params <= 0 && !std::isfinite(r.flops_per_token) && !std::isfinite(r.tokens) && !std::isfinite(r.wall_seconds))
    return "";
  nlohmann::json j;
  auto put = [&](const char* k, double v) {
    if (std::isfinite(v)) j[k] = v;
  };
  if (r.n_params > 0) j["n_params"] = r.n_params;
  if (r.active_params > 0) j["active_params"] = r.active_params;
  if (r.steps > 0) j["steps"] = r.steps;
  put("flops_per_token", r.flops_per_token);
  put("tokens", r.tokens);
  put("wall_seconds", r.wall_seconds);
  put("train_flops", r.train_flops);
  return j.dump();
}

void read_cost(RunRow& r, const std::string& text) {
  if (text.empty()) return;
  try {
    auto j = nlohmann::json::parse(text);
    auto num = [&](const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN; };
    r.n_params = j.contains("n_params") && j["n_params"].is_number() ? j["n_params"].get<int64_t>() : 0;
    r.active_params = j.contains("active_params") && j["active_params"].is_number() ? j["active_params"].get<int64_t>() : 0;
    r.steps = j.contains("steps") && j["steps"].is_number() ? j["steps"].get<int64_t>() : 0;
    r.flops_per_token = num("flops_per_token");
    r.tokens = num("tokens");
    r.wall_seconds = num("wall_seconds");
    r.train_flops = num("train_flops");
  } catch (const nlohmann::json::exception&) {
    // sealed with the row: a checksum failure reports it; unparsable text here means unknown cost
  }
}

}  // namespace

const char* status_name(Status s) {
  switch (s) {
    case Status::Queued: return "queued";
    case Status::Running: return "running";
    case Status::Done: return "done";
    case Status::Failed: return "failed";
    case Status::Invalid: return "INVALID";
  }
  return "?";
}

Status parse_status(const std::string& s) {
  for (Status x : {Status::Queued, Status::Running, Status::Done, Status::Failed, Status::Invalid})
    if (s == status_name(x)) return x;
  fail("[ledger] unknown run status '", s, "'");
}

Ledger::Ledger(const std::string& path) : path_(path) {
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("[ledger] cannot open ", path, ": ", msg, "; pass --ledger with a writable path");
  }
  sqlite3_busy_timeout(db_, 10000);
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");  // WAL + NORMAL: a committed transaction survives a process kill
  write_txn([&] {
    exec(kSchema);
    // Ledgers written before compile_evals counted trivial bodies and its bound get the columns.
    bool has_trivial = false;
    {
      Stmt st(db_, "SELECT name FROM pragma_table_info('compile_evals')");
      while (st.step(db_)) has_trivial = has_trivial || st.col_text(0) == "trivial";
    }
    if (!has_trivial) {
      exec("ALTER TABLE compile_evals ADD COLUMN trivial INTEGER NOT NULL DEFAULT 0");
      exec("ALTER TABLE compile_evals ADD COLUMN stopped TEXT NOT NULL DEFAULT ''");
    }
    // Ledgers from before code ids get the column (empty: unknown).
    {
      Stmt info(db_, "SELECT 1 FROM pragma_table_info('runs') WHERE name='code_id'");
      if (!info.step(db_)) exec("ALTER TABLE runs ADD COLUMN code_id TEXT NOT NULL DEFAULT ''");
    }
    // ... and from before costs (empty: unknown).
    {
      Stmt info(db_, "SELECT 1 FROM pragma_table_info('runs') WHERE name='cost_json'");
      if (!info.step(db_)) exec("ALTER TABLE runs ADD COLUMN cost_json TEXT NOT NULL DEFAULT ''");
    }
    // ... and from before objective metrics (empty: none; a row's checksum covers the column once it is set).
    {
      Stmt info(db_, "SELECT 1 FROM pragma_table_info('evals') WHERE name='metrics_json'");
      if (!info.step(db_)) exec("ALTER TABLE evals ADD COLUMN metrics_json TEXT NOT NULL DEFAULT ''");
    }
    // A ledger from before row checksums: add the column and seal what is there (trusted once).
    for (const char* table : {"runs", "evals"}) {
      Stmt info(db_, (std::string("SELECT 1 FROM pragma_table_info('") + table + "') WHERE name='row_sum'").c_str());
      if (info.step(db_)) continue;
      exec(std::string("ALTER TABLE ") + table + " ADD COLUMN row_sum TEXT");
      if (std::string(table) == "runs") {
        Stmt all(db_, "SELECT run_id FROM runs");
        while (all.step(db_)) seal_run(all.col_text(0));
      } else {
        exec("UPDATE evals SET row_sum = NULL");
        Stmt all(db_, "SELECT run_id, step, val_bpb, in_spike FROM evals");
        std::vector<std::pair<std::string, int64_t>> keys;
        while (all.step(db_)) keys.push_back({all.col_text(0), all.col_i64(1)});
        for (auto& [id, step] : keys) seal_eval(id, step);
      }
    }
  });
}

// Stores the checksum of a run row's columns as they now are; called inside every write to the row.
void Ledger::seal_run(const std::string& run_id) {
  Stmt rd(db_, (std::string("SELECT ") + kRunColumns + " FROM runs WHERE run_id=?1").c_str());
  rd.text(1, run_id);
  if (!rd.step(db_)) return;
  Stmt wr(db_, "UPDATE runs SET row_sum=?2 WHERE run_id=?1");
  wr.text(1, run_id).text(2, rd.sum(0, n_sealed(rd))).step(db_);
}

void Ledger::seal_eval(const std::string& run_id, int64_t step) {
  Stmt rd(db_, (std::string("SELECT ") + kEvalColumns + " FROM evals WHERE run_id=?1 AND step=?2").c_str());
  rd.text(1, run_id).i64(2, step);
  if (!rd.step(db_)) return;
  Stmt wr(db_, "UPDATE evals SET row_sum=?3 WHERE run_id=?1 AND step=?2");
  wr.text(1, run_id).i64(2, step).text(3, rd.sum(0, n_eval_sealed(rd))).step(db_);
}

Ledger::~Ledger() { sqlite3_close(db_); }

void Ledger::exec(const std::string& sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    fail("[ledger] ", path_, ": ", msg);
  }
}

template <typename F>
void Ledger::write_txn(F&& body) {
  // BEGIN IMMEDIATE takes the write lock up front, so a busy database fails here (and is retried)
  // rather than in the middle of the body. The busy timeout already waits 10 s per attempt.
  for (int attempt = 0;; ++attempt) {
    int rc = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc == SQLITE_BUSY && attempt < 30) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10 + attempt * 10));
      continue;
    }
    if (rc != SQLITE_OK) fail("[ledger] ", path_, " is locked by another writer for too long: ", sqlite3_errmsg(db_));
    break;
  }
  try {
    body();
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void Ledger::upsert(const RunRow& r) {
  write_txn([&] {
    Stmt st(db_,
            "INSERT INTO runs (run_id, plan, phase, experiment, seed, run_dir, status, reason, substrate_id, "
            "data_fingerprint, git_commit, config_json, attempts, has_summary, best_val_bpb, best_step, final_val_bpb, "
            "tokens_per_second, step_ms, peak_rss_bytes, best_in_spike, code_id, cost_json) "
            "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?23,?24) "
            "ON CONFLICT(run_id) DO UPDATE SET plan=?2, phase=?3, experiment=?4, seed=?5, run_dir=?6, "
            "status=CASE WHEN ?22 THEN status ELSE ?7 END, reason=CASE WHEN ?22 THEN reason ELSE ?8 END, substrate_id=?9, data_fingerprint=?10, git_commit=?11, config_json=?12, attempts=?13, "
            "has_summary=?14, best_val_bpb=?15, best_step=?16, final_val_bpb=?17, tokens_per_second=?18, step_ms=?19, "
            "peak_rss_bytes=?20, best_in_spike=?21, code_id=?23, cost_json=?24, updated_at=strftime('%Y-%m-%dT%H:%M:%fZ','now')");
    st.text(1, r.run_id).text(2, r.plan).text(3, r.phase).text(4, r.experiment).i64(5, r.seed).text(6, r.run_dir);
    st.text(7, status_name(r.status)).text(8, r.reason).text(9, r.substrate_id).text(10, r.data_fingerprint);
    st.text(11, r.git_commit).text(12, r.config_json).i64(13, r.attempts).i64(14, r.has_summary);
    if (r.has_summary) {
      st.f64(15, r.best_val_bpb).i64(16, r.best_step).f64(17, r.final_val_bpb).f64(18, r.tokens_per_second);
      st.f64(19, r.step_ms).i64(20, r.peak_rss_bytes);
    } else {
      st.null(15).null(16).null(17).null(18).null(19).null(20);
    }
    st.i64(21, r.best_in_spike).i64(22, r.manual_invalid).text(23, r.code_id);  // a manual overlay is not the run's own status
    st.text(24, r.has_summary ? cost_text(r) : "");
    st.step(db_);
    seal_run(r.run_id);
  });
}

void Ledger::set_status(const std::string& run_id, Status s, const std::string& reason, bool count_attempt) {
  write_txn([&] {
    Stmt st(db_,
            "UPDATE runs SET status=?2, reason=?3, attempts=attempts+?4, "
            "updated_at=strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE run_id=?1");
    st.text(1, run_id).text(2, status_name(s)).text(3, reason).i64(4, count_attempt ? 1 : 0);
    st.step(db_);
    SLM_CHECK(sqlite3_changes(db_) == 1, "[ledger] no run '", run_id, "' in ", path_);
    seal_run(run_id);
  });
}

void Ledger::set_evals(const std::string& run_id, const std::vector<EvalPoint>& evals) {
  write_txn([&] {
    Stmt del(db_, "DELETE FROM evals WHERE run_id=?1");
    del.text(1, run_id).step(db_);
    Stmt ins(db_, "INSERT INTO evals (run_id, step, val_bpb, in_spike, metrics_json) VALUES (?1, ?2, ?3, ?4, ?5)");
    for (auto& e : evals) {
      sqlite3_reset(ins.s);
      ins.text(1, run_id).i64(2, e.step).f64(3, e.val_bpb).i64(4, e.in_spike).text(5, eval_metrics_text(e.metrics));
      ins.step(db_);
      seal_eval(run_id, e.step);
    }
  });
}

void Ledger::invalidate(const std::string& run_id, const std::string& reason) {
  SLM_CHECK(!reason.empty(), "invalidate: --reason is required (say why the run does not count)");
  write_txn([&] {
    Stmt st(db_, "UPDATE runs SET manual_invalid=?2 WHERE run_id=?1");
    st.text(1, run_id).text(2, reason).step(db_);
    SLM_CHECK(sqlite3_changes(db_) == 1, "invalidate: no run '", run_id, "' in ", path_);
    seal_run(run_id);
    Stmt log(db_, "INSERT INTO invalidations (run_id, action, reason) VALUES (?1, 'invalidate', ?2)");
    log.text(1, run_id).text(2, reason).step(db_);
  });
}

void Ledger::revalidate(const std::string& run_id) {
  write_txn([&] {
    Stmt st(db_, "UPDATE runs SET manual_invalid=NULL WHERE run_id=?1 AND manual_invalid IS NOT NULL");
    st.text(1, run_id).step(db_);
    SLM_CHECK(sqlite3_changes(db_) == 1, "invalidate --undo: run '", run_id, "' is not manually invalidated in ", path_);
    seal_run(run_id);
    Stmt log(db_, "INSERT INTO invalidations (run_id, action, reason) VALUES (?1, 'undo', '')");
    log.text(1, run_id).step(db_);
  });
}

namespace {
const char* kSelect =
    "SELECT run_id, plan, phase, experiment, seed, run_dir, status, reason, manual_invalid, substrate_id, "
    "data_fingerprint, git_commit, config_json, attempts, has_summary, best_val_bpb, best_step, final_val_bpb, "
    "tokens_per_second, step_ms, peak_rss_bytes, best_in_spike, code_id, cost_json, row_sum FROM runs ";

// A row as reports see it: a manual invalidation overrides the recorded status, with its reason.
RunRow read_row(const Stmt& st) {
  RunRow r;
  r.run_id = st.col_text(0);
  r.plan = st.col_text(1);
  r.phase = st.col_text(2);
  r.experiment = st.col_text(3);
  r.seed = st.col_i64(4);
  r.run_dir = st.col_text(5);
  r.status = parse_status(st.col_text(6));
  r.reason = st.col_text(7);
  if (!st.col_null(8)) {
    r.status = Status::Invalid;
    r.reason = "manual: " + st.col_text(8);
    r.manual_invalid = true;
  }
  r.substrate_id = st.col_text(9);
  r.data_fingerprint = st.col_text(10);
  r.git_commit = st.col_text(11);
  r.config_json = st.col_text(12);
  r.attempts = st.col_i64(13);
  r.has_summary = st.col_i64(14) != 0;
  r.best_val_bpb = st.col_f64(15);
  r.best_step = st.col_null(16) ? -1 : st.col_i64(16);
  r.final_val_bpb = st.col_f64(17);
  r.tokens_per_second = st.col_f64(18);
  r.step_ms = st.col_f64(19);
  r.peak_rss_bytes = st.col_i64(20);
  r.best_in_spike = st.col_i64(21) != 0;
  r.code_id = st.col_text(22);
  read_cost(r, st.col_text(23));
  // A row whose checksum fails was altered after it was written (a flipped bit, a hand edit): its
  // numbers are not used, loudly.
  if (st.col_text(kNRunColumns) != st.sum(0, n_sealed(st))) {
    r.status = Status::Invalid;
    r.reason = "ledger row damaged: its checksum does not match its contents; restore the ledger or re-run the run";
    r.manual_invalid = false;
  }
  return r;
}
}  // namespace

std::optional<RunRow> Ledger::get(const std::string& run_id) const {
  Stmt st(db_, (std::string(kSelect) + "WHERE run_id=?1").c_str());
  st.text(1, run_id);
  if (!st.step(db_)) return std::nullopt;
  return checked(read_row(st));
}

// A run with a damaged eval row is shown INVALID too: its curve and best are not what was measured.
RunRow Ledger::checked(RunRow r) const {
  Stmt st(db_, (std::string("SELECT ") + kEvalColumns + " FROM evals WHERE run_id=?1 ORDER BY step").c_str());
  st.text(1, r.run_id);
  while (st.step(db_))
    if (st.col_text(5) != st.sum(0, n_eval_sealed(st))) {
      r.status = Status::Invalid;
      r.reason = "ledger eval row at step " + std::to_string(st.col_i64(1)) +
                 " damaged: its checksum does not match its contents; restore the ledger or re-run the run";
      r.manual_invalid = false;
      break;
    }
  return r;
}

std::vector<RunRow> Ledger::runs(const std::string& plan) const {
  Stmt st(db_, (std::string(kSelect) + (plan.empty() ? "" : "WHERE plan=?1 ") + "ORDER BY run_id").c_str());
  if (!plan.empty()) st.text(1, plan);
  std::vector<RunRow> out;
  while (st.step(db_)) out.push_back(checked(read_row(st)));
  return out;
}

void Ledger::save_plan(const std::string& name, const std::string& spec_json) {
  write_txn([&] {
    Stmt st(db_,
            "INSERT INTO plans (name, spec_json) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET spec_json=?2, "
            "updated_at=strftime('%Y-%m-%dT%H:%M:%fZ','now')");
    st.text(1, name).text(2, spec_json).step(db_);
  });
}

std::optional<std::string> Ledger::plan_spec(const std::string& name) const {
  Stmt st(db_, "SELECT spec_json FROM plans WHERE name=?1");
  st.text(1, name);
  if (!st.step(db_)) return std::nullopt;
  return st.col_text(0);
}

void Ledger::add_compile_eval(const CompileEval& e) {
  write_txn([&] {
    Stmt st(db_,
            "INSERT OR REPLACE INTO compile_evals (run_id, checkpoint, step, in_spike, mode, n, k, lo, hi, records, "
            "trivial, stopped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
    st.text(1, e.run_id).text(2, e.checkpoint).i64(3, e.step).i64(4, e.in_spike).text(5, e.mode).i64(6, e.n);
    st.i64(7, e.k).f64(8, e.lo).f64(9, e.hi).text(10, e.records).i64(11, e.trivial).text(12, e.stopped).step(db_);
  });
}

std::vector<CompileEval> Ledger::compile_evals(const std::string& run_id) const {
  Stmt st(db_,
          "SELECT run_id, checkpoint, step, in_spike, mode, n, k, lo, hi, records, trivial, stopped FROM compile_evals "
          "WHERE run_id=?1 "
          "ORDER BY mode, step");
  st.text(1, run_id);
  std::vector<CompileEval> out;
  while (st.step(db_)) {
    CompileEval e;
    e.run_id = st.col_text(0);
    e.checkpoint = st.col_text(1);
    e.step = st.col_i64(2);
    e.in_spike = st.col_i64(3) != 0;
    e.mode = st.col_text(4);
    e.n = st.col_i64(5);
    e.k = st.col_i64(6);
    e.lo = st.col_f64(7);
    e.hi = st.col_f64(8);
    e.records = st.col_text(9);
    e.trivial = st.col_i64(10);
    e.stopped = st.col_text(11);
    out.push_back(e);
  }
  return out;
}

std::vector<std::string> Ledger::plan_names() const {
  Stmt st(db_, "SELECT DISTINCT plan FROM runs UNION SELECT name FROM plans ORDER BY 1");
  std::vector<std::string> out;
  while (st.step(db_)) out.push_back(st.col_text(0));
  return out;
}

std::optional<std::string> Ledger::run_in_dir(std::string run_dir) const {
  while (run_dir.size() > 1 && run_dir.back() == '/') run_dir.pop_back();
  Stmt st(db_, "SELECT run_id FROM runs WHERE run_dir=?1");
  st.text(1, run_dir);
  if (!st.step(db_)) return std::nullopt;
  return st.col_text(0);
}

std::vector<EvalPoint> Ledger::evals(const std::string& run_id) const {
  Stmt st(db_, (std::string("SELECT ") + kEvalColumns + " FROM evals WHERE run_id=?1 ORDER BY step").c_str());
  st.text(1, run_id);
  std::vector<EvalPoint> out;
  while (st.step(db_))  // a damaged point is left out; the run's row says so (checked)
    if (st.col_text(5) == st.sum(0, n_eval_sealed(st)))
      out.push_back({st.col_i64(1), st.col_f64(2), st.col_i64(3) != 0, eval_metrics_of(st.col_text(4))});
  return out;
}

}  // namespace slm::engine
