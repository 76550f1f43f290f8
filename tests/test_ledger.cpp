// The SQLite ledger: round trips, manual invalidation and its undo, and many processes writing at
// once without losing or duplicating anything.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>

#include "common/error.h"
#include "engine/ledger.h"

#include <sqlite3.h>

#include <filesystem>
#include "test_util.h"

using namespace slm::engine;

namespace {
RunRow row(const std::string& plan, const std::string& exp, int64_t seed) {
  RunRow r;
  r.plan = plan;
  r.phase = "p1";
  r.experiment = exp;
  r.seed = seed;
  r.run_id = plan + "/" + exp + "/s" + std::to_string(seed);
  r.run_dir = "/tmp/" + r.run_id;
  r.substrate_id = "abc";
  return r;
}
}  // namespace

TEST(Ledger, RoundTripAndSummary) {
  slm::test::TempDir t;
  Ledger l(t / "ledger.db");
  RunRow r = row("plan", "base", 1);
  l.upsert(r);
  auto got = l.get(r.run_id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status, Status::Queued);
  EXPECT_FALSE(got->has_summary);
  EXPECT_TRUE(std::isnan(got->best_val_bpb));
  r.status = Status::Done;
  r.has_summary = true;
  r.best_val_bpb = 1.25;
  r.best_step = 3750;
  r.final_val_bpb = 1.3;
  r.best_in_spike = true;
  l.upsert(r);
  got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Done);
  EXPECT_DOUBLE_EQ(got->best_val_bpb, 1.25);
  EXPECT_EQ(got->best_step, 3750);
  EXPECT_TRUE(got->best_in_spike);
  l.set_evals(r.run_id, {{0, 3.8, false}, {50, 1.7, true}, {100, 1.5, false}});
  auto ev = l.evals(r.run_id);
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[1].step, 50);
  EXPECT_TRUE(ev[1].in_spike);
  l.set_evals(r.run_id, {{0, 3.8, false}});  // replaced, not appended
  EXPECT_EQ(l.evals(r.run_id).size(), 1u);
  l.set_status(r.run_id, Status::Failed, "exit 3", true);
  got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Failed);
  EXPECT_EQ(got->reason, "exit 3");
  EXPECT_EQ(got->attempts, 1);
  EXPECT_FALSE(l.get("nope").has_value());
  EXPECT_THROW(l.set_status("nope", Status::Done, ""), slm::Error);
}

TEST(Ledger, ManualInvalidationIsLoudAndUndoable) {
  slm::test::TempDir t;
  Ledger l(t / "ledger.db");
  RunRow r = row("plan", "engram", 1);
  r.status = Status::Done;
  l.upsert(r);
  l.invalidate(r.run_id, "engram on a Mamba layer");
  auto got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Invalid);
  EXPECT_EQ(got->reason, "manual: engram on a Mamba layer");
  EXPECT_THROW(l.invalidate(r.run_id, ""), slm::Error);
  l.upsert(*got);  // writing back a row read under the overlay keeps the run's own status
  l.revalidate(r.run_id);
  EXPECT_EQ(l.get(r.run_id)->status, Status::Done);
  EXPECT_THROW(l.revalidate(r.run_id), slm::Error);  // nothing to undo
  EXPECT_THROW(l.invalidate("missing", "x"), slm::Error);
}

TEST(Ledger, SavesPlanSpecs) {
  slm::test::TempDir t;
  Ledger l(t / "ledger.db");
  EXPECT_FALSE(l.plan_spec("p").has_value());
  l.save_plan("p", "{\"a\":1}");
  l.save_plan("p", "{\"a\":2}");
  EXPECT_EQ(*l.plan_spec("p"), "{\"a\":2}");
  l.upsert(row("q", "base", 1));
  EXPECT_EQ(l.plan_names(), (std::vector<std::string>{"p", "q"}));
}

TEST(Ledger, ManyProcessesWritingAtOnceLoseNothing) {
  slm::test::TempDir t;
  const std::string db = t / "ledger.db";
  { Ledger init(db); }
  const int n_proc = 6, n_runs = 40;
  std::vector<pid_t> kids;
  for (int p = 0; p < n_proc; ++p) {
    pid_t pid = ::fork();
    if (pid == 0) {
      try {
        Ledger l(db);
        for (int i = 0; i < n_runs; ++i) {
          RunRow r = row("plan", "exp" + std::to_string(p), i);
          l.upsert(r);
          l.set_status(r.run_id, Status::Running, "");
          l.set_evals(r.run_id, {{0, 3.0, false}, {10, 2.0 - 0.01 * i, false}});
          r.status = Status::Done;
          r.has_summary = true;
          r.best_val_bpb = 2.0 - 0.01 * i;
          r.best_step = 10;
          l.upsert(r);
        }
        ::_exit(0);
      } catch (...) {
        ::_exit(1);
      }
    }
    kids.push_back(pid);
  }
  for (pid_t k : kids) {
    int st = 0;
    ::waitpid(k, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  Ledger l(db);
  auto all = l.runs("plan");
  ASSERT_EQ(all.size(), static_cast<size_t>(n_proc * n_runs));
  for (auto& r : all) {
    EXPECT_EQ(r.status, Status::Done) << r.run_id;
    EXPECT_EQ(l.evals(r.run_id).size(), 2u) << r.run_id;
  }
}

TEST(Ledger, UnwritablePathIsAClearError) {
  try {
    Ledger l("/proc/definitely/not/here.db");
    FAIL();
  } catch (const slm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--ledger"), std::string::npos) << e.what();
  }
}

// Compile evaluations carry their trivial bodies and the bound that stopped them (issue 18 §6); a
// ledger written before those columns existed gains them when opened.
TEST(Ledger, CompileEvalsKeepTrivialCountAndStopReason) {
  slm::test::TempDir t;
  const std::string path = t / "old.sqlite";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE compile_evals (run_id TEXT NOT NULL, checkpoint TEXT NOT NULL, step INTEGER NOT "
                           "NULL, in_spike INTEGER NOT NULL, mode TEXT NOT NULL, n INTEGER NOT NULL, k INTEGER NOT NULL, "
                           "lo REAL NOT NULL, hi REAL NOT NULL, records TEXT NOT NULL, at TEXT NOT NULL DEFAULT '', "
                           "PRIMARY KEY (run_id, step, mode));"
                           "INSERT INTO compile_evals VALUES ('p/a/s1', 'latest', 10, 0, 'complete', 4, 2, 0.1, 0.9, 'r', '');",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  slm::engine::Ledger l(path);
  auto old = l.compile_evals("p/a/s1");
  ASSERT_EQ(old.size(), 1u);
  EXPECT_EQ(old[0].trivial, 0);
  EXPECT_EQ(old[0].stopped, "");
  slm::engine::CompileEval e{"p/a/s1", "latest", "fim", 10, false, 8, 3, 0.1, 0.7, "r2", 2, "the time limit of 60 s"};
  l.add_compile_eval(e);
  auto all = l.compile_evals("p/a/s1");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].mode, "fim");
  EXPECT_EQ(all[1].trivial, 2);
  EXPECT_EQ(all[1].stopped, "the time limit of 60 s");
}

namespace {
void sql(const std::string& path, const std::string& statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}
}  // namespace

// What is read back is what was written: every column of a run row and of an eval row, altered
// behind the ledger's back one at a time (a flipped bit in a stored val_bpb printed a wrong number
// in `report`), reads back INVALID with the reason, and the damaged eval point is left out. Writes
// through the ledger (status changes, invalidation and its undo) keep rows sealed.
TEST(Ledger, RowsAlteredBehindItsBackReadAsDamaged) {
  slm::test::TempDir t;
  const std::string path = t / "ledger.db";
  RunRow r = row("plan", "base", 1);
  r.status = Status::Done;
  r.has_summary = true;
  r.best_val_bpb = 1.25;
  r.best_step = 40;
  r.final_val_bpb = 1.3;
  r.tokens_per_second = 1000;
  r.step_ms = 12;
  r.code_id = "c0dec0dec0dec0de";
  r.n_params = 2900000;
  r.flops_per_token = 1.7e7;
  {
    Ledger l(path);
    l.upsert(r);
    EXPECT_EQ(l.get(r.run_id)->code_id, r.code_id);
    l.set_evals(r.run_id, {{0, 3.8, false}, {40, 1.25, false}});
    l.set_status(r.run_id, Status::Done, "", true);
    l.invalidate(r.run_id, "test");
    l.revalidate(r.run_id);
    EXPECT_EQ(l.get(r.run_id)->status, Status::Done) << l.get(r.run_id)->reason;
  }
  const std::vector<std::pair<std::string, std::string>> edits = {
      {"best_val_bpb", "1.2500000000000002"}, {"best_step", "41"}, {"final_val_bpb", "1.31"},
      {"status", "'failed'"}, {"reason", "'x'"}, {"substrate_id", "'abd'"}, {"config_json", "'{}'"},
      {"attempts", "7"}, {"tokens_per_second", "1001"}, {"best_in_spike", "1"}, {"manual_invalid", "'m'"},
      {"run_dir", "'/tmp/elsewhere'"}, {"git_commit", "'deadbeef'"},
      {"code_id", "'0ther'"}, {"code_id", "''"}, {"cost_json", "'{\"n_params\":1}'"}, {"cost_json", "''"}};
  for (auto& [col, value] : edits) {
    const std::string backup = t / ("backup.db");
    std::filesystem::copy_file(path, backup, std::filesystem::copy_options::overwrite_existing);
    sql(path, "UPDATE runs SET " + col + "=" + value);
    {
      Ledger l(path);
      auto got = l.get(r.run_id);
      ASSERT_TRUE(got.has_value());
      EXPECT_EQ(got->status, Status::Invalid) << col;
      EXPECT_NE(got->reason.find("damaged"), std::string::npos) << col << ": " << got->reason;
      EXPECT_EQ(l.runs()[0].status, Status::Invalid) << col;
    }
    std::filesystem::copy_file(backup, path, std::filesystem::copy_options::overwrite_existing);
  }
  sql(path, "UPDATE evals SET val_bpb=1.2 WHERE step=40");
  Ledger l(path);
  auto got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Invalid);
  EXPECT_NE(got->reason.find("step 40"), std::string::npos) << got->reason;
  ASSERT_EQ(l.evals(r.run_id).size(), 1u);
  EXPECT_EQ(l.evals(r.run_id)[0].step, 0);
}

// A ledger written before rows carried checksums is sealed once when opened, and reads as before.
TEST(Ledger, OldLedgerWithoutChecksumsIsSealedOnOpen) {
  slm::test::TempDir t;
  const std::string path = t / "old.db";
  RunRow r = row("plan", "base", 1);
  r.status = Status::Done;
  {
    Ledger l(path);
    l.upsert(r);
    l.set_evals(r.run_id, {{0, 3.8, false}});
  }
  sql(path, "ALTER TABLE runs DROP COLUMN row_sum; ALTER TABLE evals DROP COLUMN row_sum");
  Ledger l(path);
  EXPECT_EQ(l.get(r.run_id)->status, Status::Done);
  EXPECT_EQ(l.evals(r.run_id).size(), 1u);
}

// A ledger from before code ids gets the column on open; its rows keep their checksums and read as
// before, with an unknown ("") code id.
TEST(Ledger, OldLedgerWithoutCodeIdsKeepsItsRows) {
  slm::test::TempDir t;
  const std::string path = t / "old.db";
  RunRow r = row("plan", "base", 1);
  r.status = Status::Done;
  {
    Ledger l(path);
    l.upsert(r);
  }
  sql(path, "ALTER TABLE runs DROP COLUMN code_id");
  Ledger l(path);
  auto got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Done) << got->reason;
  EXPECT_EQ(got->code_id, "");
  r.code_id = "abc";
  l.upsert(r);
  EXPECT_EQ(l.get(r.run_id)->code_id, "abc");
  EXPECT_EQ(l.get(r.run_id)->status, Status::Done);
}

// Costs (issue 21 §2): parameters, FLOPs per token, tokens, steps and wall time round-trip; a ledger
// from before them gets the column on open and its rows keep their checksums.
TEST(Ledger, CostsRoundTripAndOldLedgersKeepTheirRows) {
  slm::test::TempDir t;
  const std::string path = t / "old.db";
  RunRow r = row("plan", "base", 1);
  r.status = Status::Done;
  r.code_id = "abc";
  {
    Ledger l(path);
    l.upsert(r);
  }
  sql(path, "ALTER TABLE runs DROP COLUMN cost_json");
  Ledger l(path);
  auto got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Done) << got->reason;
  EXPECT_EQ(got->n_params, 0);
  EXPECT_TRUE(std::isnan(got->flops_per_token));
  r.has_summary = true;
  r.best_val_bpb = 1.3;
  r.n_params = 5160000;
  r.active_params = 2900000;
  r.steps = 250;
  r.flops_per_token = 1.75e7;
  r.tokens = 64000;
  r.wall_seconds = 12.5;
  r.train_flops = 1.1e12;
  l.upsert(r);
  got = l.get(r.run_id);
  EXPECT_EQ(got->status, Status::Done) << got->reason;
  EXPECT_EQ(got->n_params, 5160000);
  EXPECT_EQ(got->active_params, 2900000);
  EXPECT_EQ(got->steps, 250);
  EXPECT_DOUBLE_EQ(got->flops_per_token, 1.75e7);
  EXPECT_DOUBLE_EQ(got->tokens, 64000);
  EXPECT_DOUBLE_EQ(got->wall_seconds, 12.5);
  EXPECT_DOUBLE_EQ(got->train_flops, 1.1e12);
}

// The objective metrics of each eval (fim_bpb, ...) are stored with it and sealed with it: they read
// back as written, and a changed or erased value reads as damaged. A ledger from before the column
// keeps its sealed rows.
TEST(Ledger, EvalObjectiveMetricsAreStoredAndSealed) {
  slm::test::TempDir t;
  const std::string path = t / "ledger.db";
  RunRow r = row("plan", "base", 1);
  r.status = Status::Done;
  {
    Ledger l(path);
    l.upsert(r);
    l.set_evals(r.run_id, {{0, 3.8, false, {}}, {40, 1.25, false, {{"fim_bpb", 1.75}, {"sri_bpb", 2.5}}}});
    auto e = l.evals(r.run_id);
    ASSERT_EQ(e.size(), 2u);
    EXPECT_TRUE(e[0].metrics.empty());
    EXPECT_EQ(e[1].metrics, (std::map<std::string, double>{{"fim_bpb", 1.75}, {"sri_bpb", 2.5}}));
    EXPECT_EQ(l.get(r.run_id)->status, Status::Done);
  }
  for (const char* value : {"'{\"fim_bpb\":1.7,\"sri_bpb\":2.5}'", "''"}) {
    const std::string backup = t / "backup.db";
    std::filesystem::copy_file(path, backup, std::filesystem::copy_options::overwrite_existing);
    sql(path, std::string("UPDATE evals SET metrics_json=") + value + " WHERE step=40");
    {
      Ledger l(path);
      EXPECT_EQ(l.get(r.run_id)->status, Status::Invalid) << value;
      EXPECT_EQ(l.evals(r.run_id).size(), 1u) << value;
    }
    std::filesystem::copy_file(backup, path, std::filesystem::copy_options::overwrite_existing);
  }
  const std::string old = t / "old.db";
  {
    Ledger l(old);
    l.upsert(r);
    l.set_evals(r.run_id, {{0, 3.8, false}});
  }
  sql(old, "ALTER TABLE evals DROP COLUMN metrics_json");
  Ledger l(old);
  EXPECT_EQ(l.get(r.run_id)->status, Status::Done);
  ASSERT_EQ(l.evals(r.run_id).size(), 1u);
  EXPECT_TRUE(l.evals(r.run_id)[0].metrics.empty());
}
