// Helpers shared by tests: temporary directories, a synthetic C++ corpus, running the binary.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "catalog/catalog.h"
#include "common/error.h"
#include "data/dataset.h"
#include "test_paths.h"

namespace slm::test {

// A fresh directory under /tmp, removed when the object dies.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/slmlab-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& p) const { return path + "/" + p; }
};

inline void write(const std::string& path, const std::string& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

// `len` seeded random bytes (any value, NUL included).
inline std::string random_bytes(uint32_t seed, size_t len) {
  std::mt19937 rng(seed);
  std::string s(len, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// Deterministic pseudo C++ source: classes, templates, comments, strings, numbers.
inline std::string synthetic_cpp(uint64_t seed, int n_funcs) {
  std::mt19937_64 rng(seed);
  const char* types[] = {"int", "double", "std::string", "size_t", "auto", "std::vector<int>", "bool"};
  const char* names[] = {"count", "value", "buffer", "index", "total", "result", "node", "key", "item", "data"};
  auto pick = [&](auto& arr) { return arr[rng() % (sizeof(arr) / sizeof(arr[0]))]; };
  std::string s = "// synthetic file " + std::to_string(seed) + "\n#include <vector>\n#include <string>\n\n";
  s += "namespace ns" + std::to_string(seed % 7) + " {\n\n";
  for (int f = 0; f < n_funcs; ++f) {
    std::string name = std::string(pick(names)) + "_" + std::to_string(rng() % 1000);
    s += "/// @brief Computes the " + std::string(pick(names)) + " of a " + pick(names) + ".\n";
    s += "template <typename T>\n" + std::string(pick(types)) + " " + name + "(const T& " + pick(names) + ") {\n";
    int lines = 2 + rng() % 6;
    for (int l = 0; l < lines; ++l) {
      switch (rng() % 5) {
        case 0: s += "  " + std::string(pick(types)) + " " + pick(names) + " = " + std::to_string(rng() % 100000) + ";\n"; break;
        case 1: s += "  if (" + std::string(pick(names)) + " <=> " + pick(names) + ") return {};\n"; break;
        case 2: s += "  auto s = \"text // not a comment " + std::to_string(rng() % 99) + "\";\n"; break;
        case 3: s += "  for (size_t i = 0; i < " + std::string(pick(names)) + ".size(); ++i) { total += 0x1F'FF; }\n"; break;
        default: s += "  /* block " + std::string(pick(names)) + " */ " + pick(names) + "->run();\n";
      }
    }
    s += "  return " + std::string(pick(names)) + ";\n}\n\n";
  }
  return s + "}  // namespace\n";
}

// Writes n synthetic sources (alternating .h / .cpp) under dir; returns total bytes.
inline size_t make_corpus(const std::string& dir, int n_files, uint64_t seed = 1, int n_funcs = 12) {
  size_t total = 0;
  for (int i = 0; i < n_files; ++i) {
    std::string body = synthetic_cpp(seed * 1000003 + i, n_funcs);
    total += body.size();
    write(dir + "/src" + std::to_string(i % 4) + "/file" + std::to_string(i) + (i % 2 ? ".cpp" : ".h"), body);
  }
  return total;
}

// A synthetic corpus under `dir`/src built into the data set `dir`/ds (10% validation); returns its path.
inline std::string small_dataset(const std::string& dir, int n_files, uint64_t seed, int n_funcs, int32_t vocab,
                                 uint64_t val_min_bytes) {
  make_corpus(dir + "/src", n_files, seed, n_funcs);
  data::BuildOptions o;
  o.src = {dir + "/src"};
  o.out = dir + "/ds";
  o.vocab = vocab;
  o.val_frac = 0.1;
  o.val_min_bytes = val_min_bytes;
  o.quiet = true;
  data::build(o);
  return o.out;
}

// Valid C++ (libclang parses it without errors), distinct per seed.
inline std::string valid_cpp(uint64_t seed, int n_funcs) {
  std::mt19937_64 rng(seed);
  const char* words[] = {"alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"};
  std::string s = "// unit " + std::to_string(seed) + "\n#include \"lib.h\"\n\n";
  for (int f = 0; f < n_funcs; ++f) {
    s += "int f" + std::to_string(seed) + "_" + std::to_string(f) + "(int a, int b) {\n";
    for (int l = 0, n = 2 + rng() % 5; l < n; ++l) {
      std::string k = std::to_string(rng() % 100000);
      switch (rng() % 4) {
        case 0: s += "  int v" + std::to_string(l) + " = a * " + k + " + b;\n  b -= v" + std::to_string(l) + ";\n"; break;
        case 1: s += "  if (a > " + k + ") { b += " + k + "; }\n"; break;
        case 2: s += "  for (int i = 0; i < " + k + "; ++i) a ^= i;\n"; break;
        default: s += "  // " + std::string(words[rng() % 8]) + " " + k + "\n  b = lib_add(b, " + k + ");\n";
      }
    }
    s += "  return a + b;\n}\n\n";
  }
  return s;
}

// A small project: include/lib.h (reached by -Iinclude from every unit), n units under src/, and a
// header outside every include path (notes/loose.h). Returns the project directory.
inline std::string make_project(const std::string& dir, int n_units, bool with_db) {
  write(dir + "/include/lib.h", "#pragma once\n/* the library */\ninline int lib_add(int a, int b) { return a + b; }\n");
  write(dir + "/notes/loose.h", "#pragma once\nint loose_function(int q);\n");
  nlohmann::json db = nlohmann::json::array();
  for (int i = 0; i < n_units; ++i) {
    std::string f = "src/u" + std::to_string(i) + ".cpp";
    write(dir + "/" + f, valid_cpp(100 + i, 6));
    db.push_back({{"directory", dir + "/build"},
                  {"command", "/usr/bin/c++ -I" + dir + "/include -std=c++17 -DUNIT=" + std::to_string(i) +
                                  " -o CMakeFiles/u.dir/" + f + ".o -c " + dir + "/" + f},
                  {"file", dir + "/" + f}});
  }
  if (with_db) write(dir + "/build/compile_commands.json", db.dump(1));
  return dir;
}

struct RunResult {
  int status;
  std::string out;  // stdout + stderr
};

// Runs a shell command, capturing output and exit status.
inline RunResult run(const std::string& cmd) {
  RunResult r{0, ""};
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// Starts a shell command in the background (output discarded), for tests that stop it mid-run.
inline pid_t start(const std::string& cmd) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    ::_exit(127);
  }
  return pid;
}

// Sends `sig` to a process from start() and waits for it; returns its wait status.
inline int stop(pid_t pid, int sig) {
  ::kill(pid, sig);
  int st = 0;
  ::waitpid(pid, &st, 0);
  return st;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

// A module's catalog arguments: defaults, overridden by `given` (as text). An unknown module or
// parameter, or a value of the wrong type, fails the test; a value outside its range is kept, so
// tests can hand the constraint checks what a user might.
inline catalog::ModuleArgs module_args(const std::string& name, const std::map<std::string, std::string>& given = {}) {
  std::vector<std::string> errors;
  catalog::ModuleArgs a = catalog::resolve(name, given, errors);
  for (auto& e : errors)
    if (e.find("is outside") == std::string::npos) ADD_FAILURE() << e;
  return a;
}

// The message of the slm::Error that f throws, "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The geometry catalog constraints see: depth x d_model (n_head heads of head_dim) at `context`.
inline catalog::ModelView model_view(int64_t depth, int64_t d_model, int64_t n_head, int64_t head_dim, int64_t context) {
  catalog::ModelView v;
  v.depth = depth;
  v.d_model = d_model;
  v.n_head = n_head;
  v.head_dim = head_dim;
  v.context = context;
  return v;
}

// A run's metrics.jsonl, one record per line; a line still being written while a test polls is left out.
inline std::vector<nlohmann::json> metrics(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

// A run's curve as exact strings, for bitwise comparison: each step's loss and gradient norm, each
// evaluation's val_bpb.
inline std::vector<std::string> curve(const std::string& run) {
  std::vector<std::string> c;
  for (auto& r : metrics(run)) {
    if (r.contains("loss")) c.push_back("step " + r["step"].dump() + " loss " + r["loss"].dump() + " gnorm " + r["grad_norm"].dump());
    if (r.contains("val_bpb")) c.push_back("step " + r["step"].dump() + " val " + r["val_bpb"].dump());
  }
  return c;
}

// A tiny run trained once per test binary (2 layers of 32, context 32, 6 steps): for the tests of
// what reads a finished run (eval bpb, generate, draft train).
struct TrainedRun {
  TempDir t;
  std::string run;
  int status = -1;
  std::string out;
  TrainedRun() {
    const std::string data = small_dataset(t.path, 30, 11, 12, 512, 4096);
    const std::string sub = t / "tiny.toml";
    run = t / "run";
    write(sub,
          "name = \"infer-tiny\"\ndepth = 2\naspect = 32\nhead_dim = 16\ncontext = 32\n"
          "total_batch = 128\ndevice_batch = 4\nsteps = 6\neval_every = 6\neval_tokens = 256\n"
          "ckpt_every = 6\nthreads = 1\nprecision = \"fp32\"\nlr_matrix = 0.05\n");
    auto r = slm::test::run(std::string(SLMLAB_BIN) + " train --quiet --data " + data + " --substrate " + sub + " --out " + run);
    status = r.status;
    out = r.out;
  }
};

inline const TrainedRun& trained() {
  static TrainedRun r;
  return r;
}

}  // namespace slm::test
