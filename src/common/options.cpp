#include "common/options.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/error.h"

namespace slm::cli {

// Every command slmlab knows.
const std::vector<CommandSpec>& command_table() {
  static const std::vector<CommandSpec> t = {
      {"data build", "", "collect C/C++ sources, train the BPE tokenizer, write fingerprinted token shards"},
      {"data verify", "DATA_DIR", "re-hash every file of a data set and round-trip its documents"},
      {"data stats", "DATA_DIR", "files, bytes, tokens, bytes per token and the most frequent tokens"},
      {"demo", "", "the main job: default data set (built if missing), the demo plan on cpu-tiny in parallel waves, its scorecard and HTML report"},
      {"train", "", "train one model on a data set and substrate"},
      {"export", "RUN_DIR", "write a run's weights as safetensors"},
      {"bench peak", "", "measure this device's peak matmul FLOP/s (fp32 and bf16)"},
      {"catalog", "", "list the module catalog (tier, family, parameters, ranges, cost)"},
      {"plan check", "PLAN", "validate an ablation plan before any step runs; lists every problem"},
      {"ablate", "PLAN", "run an ablation plan in parallel waves (resumable; skips finished runs)"},
      {"report", "", "scorecards from the ledger: verdicts, best val_bpb with step, noise, charts (txt, md, csv, html)"},
      {"invalidate", "RUN", "mark a run INVALID with a reason (or --undo); RUN is a run id or a run folder"},
      {"eval bpb", "RUN_DIR", "val_bpb of a run's checkpoint on the held-out split, optionally at a longer context (YaRN)"},
      {"eval compile", "RUN_DIR", "compile rate of generated function bodies, checked by g++ -fsyntax-only in a sandbox"},
      {"generate", "RUN_DIR", "continue a prompt (or fill a middle, with --suffix) from a trained run"},
  };
  return t;
}

// The one option table. `commands` says which commands take each option.
const std::vector<OptionSpec>& option_table() {
  static const std::vector<OptionSpec> t = {
      {"help", "*", OptType::Flag, "", "", "show this help"},
      {"src", "data build", OptType::List, "", "DIR",
       "source tree to collect (repeatable); default: the C++ trees under /usr/include and /usr/src"},
      {"out", "data build", OptType::String, "", "DATA_DIR", "where to write the data set (required)"},
      {"vocab", "data build", OptType::Int, "8192", "N", "vocabulary size, special and byte tokens included"},
      {"val-frac", "data build", OptType::Float, "0.01", "F", "fraction of documents held out for validation"},
      {"val-min-bytes", "data build", OptType::Int, "65536", "N", "floor on validation bytes; below it is an error"},
      {"name", "data build", OptType::String, "cpp-local", "NAME", "data set name recorded in the manifest"},
      {"max-file-bytes", "data build", OptType::Int, "1048576", "N", "skip (and count) source files larger than this"},
      {"threads", "data build|data verify", OptType::Int, "0", "N", "worker threads, 0 = all cores"},
      {"force", "data build", OptType::Flag, "", "", "replace an existing slmlab data set at --out"},
      {"sample", "data verify", OptType::Int, "64", "N", "documents re-encoded to check the tokenizer (0 = all)"},
      {"top", "data stats", OptType::Int, "20", "N", "how many of the most frequent tokens to list"},
      {"json", "data stats|catalog", OptType::Flag, "", "", "print machine-readable JSON instead of text"},
      {"runs", "demo", OptType::String, "runs/demo", "DIR", "where the demo's runs go"},
      {"jobs", "demo", OptType::Int, "2", "N", "runs in parallel per wave"},
      {"jobs", "ablate", OptType::Int, "1", "N", "runs in parallel per wave (threads are divided between them)"},
      {"ledger", "ablate|report|invalidate", OptType::String, "runs/ledger.sqlite", "FILE", "the SQLite ledger"},
      {"runs", "ablate", OptType::String, "runs", "DIR", "run folders go to DIR/<plan>/<experiment>/s<seed>"},
      {"threads", "ablate", OptType::Int, "0", "N", "total threads for all jobs, 0 = all cores"},
      {"backend", "ablate", OptType::String, "local", "NAME", "local (child processes) or slurm (one sbatch job per run, requeued on preemption)"},
      {"poll", "ablate", OptType::Float, "2", "SECONDS", "slurm: how often squeue is asked which jobs are still queued"},
      {"sbatch", "ablate", OptType::String, "", "ARGS", "slurm: extra sbatch arguments, space separated (e.g. '--partition=cpu --time=2:00:00')"},
      {"data", "demo|train|ablate", OptType::String, "data/cpp-local", "DATA_DIR", "data set (the demo builds it if missing)"},
      {"plan", "report", OptType::String, "", "PLAN", "a plan name in the ledger or a plan .toml (default: every plan)"},
      {"format", "report", OptType::String, "txt", "FMT", "txt, md, csv or html (html: one self-contained page)"},
      {"out", "report", OptType::String, "", "FILE", "write here instead of stdout"},
      {"reason", "invalidate", OptType::String, "", "TEXT", "why the run does not count (required unless --undo)"},
      {"undo", "invalidate", OptType::Flag, "", "", "withdraw a manual invalidation"},
      {"substrate", "train", OptType::String, "cpu-tiny", "NAME|FILE", "substrate: a name in substrates/ or a .toml path"},
      {"out", "train", OptType::String, "", "RUN_DIR", "run folder (config, metrics, checkpoints, summary)"},
      {"set", "train", OptType::List, "", "KEY=VALUE", "override a substrate key (changes the substrate id)"},
      {"module", "train", OptType::List, "", "NAME[.k=v,...]", "enable a catalog module with parameters"},
      {"resume", "train", OptType::Flag, "", "", "continue RUN_DIR from its latest checkpoint (fresh start if none)"},
      {"dry-run", "train", OptType::Flag, "", "", "validate, build, time one micro-batch and print the ETA; train nothing"},
      {"quiet", "train", OptType::Flag, "", "", "no per-step line (metrics.jsonl is still written)"},
      {"keep-checkpoints", "train", OptType::Flag, "", "", "keep a weights-only snapshot at every checkpoint step (for eval)"},
      {"nproc", "train", OptType::Int, "1", "N",
       "data-parallel ranks on this machine (child processes; gradients all-reduced over Gloo; same total batch)"},
      {"grad-reduce", "train", OptType::String, "overlap", "WHEN",
       "data parallel: all-reduce gradient buckets during backward (overlap) or after it (after)"},
      {"format", "export", OptType::String, "safetensors", "FMT", "export format (safetensors)"},
      {"n", "eval compile", OptType::Int, "32", "N", "prompts to score"},
      {"mode", "eval compile", OptType::String, "complete", "MODE", "complete (left to right) or fim (infill between prefix and suffix)"},
      {"max-tokens", "eval compile", OptType::Int, "96", "N", "generated tokens per prompt (bodies longer are not used)"},
      {"per-file", "eval compile", OptType::Int, "2", "N", "functions taken per held-out file at most"},
      {"temperature", "eval compile", OptType::Float, "0", "T", "0 = greedy"},
      {"max-seconds", "eval compile", OptType::Float, "900", "S",
       "stop after S seconds (or 8 x --n held-out files checked) and report what was scored"},
      {"seed", "eval compile", OptType::Seed, "0", "S", "sampling seed"},
      {"ledger", "eval compile", OptType::String, "runs/ledger.sqlite", "FILE", "record the result against the run here, when the run is in it"},
      {"prompt", "generate", OptType::String, "", "TEXT", "the text to continue (the prefix, with --suffix)"},
      {"suffix", "generate", OptType::String, "", "TEXT", "fill in the middle: the text after the hole (FIM sentinels)"},
      {"max-tokens", "generate", OptType::Int, "128", "N", "new tokens at most"},
      {"temperature", "generate", OptType::Float, "0", "T", "0 = greedy; > 0 samples"},
      {"top-k", "generate", OptType::Int, "0", "K", "sample from the K most likely tokens (0 = all)"},
      {"seed", "generate", OptType::Seed, "0", "S", "sampling seed"},
      {"no-cache", "generate", OptType::Flag, "", "", "recompute the whole sequence each token (the reference path)"},
      {"checkpoint", "export", OptType::String, "latest", "WHICH", "latest or best"},
      {"checkpoint", "eval bpb|eval compile|generate", OptType::String, "latest", "WHICH",
       "latest, best, or a step kept by train --keep-checkpoints"},
      {"context", "eval bpb", OptType::Int, "0", "N", "evaluation context in tokens (0 = the trained context)"},
      {"tokens", "eval bpb", OptType::Int, "0", "N", "validation tokens to score (0 = the run's eval_tokens)"},
      {"data", "eval bpb", OptType::String, "", "DATA_DIR", "data set (default: the run's own)"},
      {"module", "eval bpb", OptType::List, "", "NAME[.k=v,...]", "an inference-lane module, e.g. yarn or yarn.scale=4"},
      {"out", "export", OptType::String, "", "FILE", "output file (default RUN_DIR/model.safetensors)"},
      {"threads", "bench peak|train|eval bpb|eval compile|generate", OptType::Int, "0", "N", "threads (0 = all cores; train: overrides the substrate)"},
  };
  return t;
}

namespace {

bool takes(const OptionSpec& o, const std::string& cmd) {
  if (std::string(o.commands) == "*") return true;
  std::stringstream ss(o.commands);
  std::string c;
  while (std::getline(ss, c, '|'))
    if (c == cmd) return true;
  return false;
}

const OptionSpec* find_option(const std::string& cmd, const std::string& name) {
  for (auto& o : option_table())
    if (name == o.name && takes(o, cmd)) return &o;
  return nullptr;
}

const OptionSpec& option_or_die(const Args& a, const std::string& name) {
  const OptionSpec* o = find_option(a.command ? a.command->name : "", name);
  SLM_CHECK(o, "internal: option --", name, " is not declared for this command");
  return *o;
}

std::vector<std::string> names_for(const std::string& cmd) {
  std::vector<std::string> out;
  for (auto& o : option_table())
    if (takes(o, cmd)) out.push_back(std::string("--") + o.name);
  return out;
}

}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  // Close enough to be a typo: at most a third of the word, at least 2 edits allowed.
  size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : "";
}

bool Args::has(const std::string& name) const { return values.count(name) > 0; }

bool Args::flag(const std::string& name) const {
  option_or_die(*this, name);
  return has(name);
}

std::string Args::str(const std::string& name) const {
  const OptionSpec& o = option_or_die(*this, name);
  auto it = values.find(name);
  return it == values.end() ? std::string(o.def) : it->second.back();
}

int64_t Args::i64(const std::string& name) const {
  const OptionSpec& o = option_or_die(*this, name);
  SLM_CHECK(o.type == OptType::Int || o.type == OptType::Seed, "internal: option --", name, " is not an integer");
  const std::string s = str(name);
  const long long hi = o.type == OptType::Int ? INT32_MAX : LLONG_MAX;
  // Digits only: strtoll would take a sign, spaces and wrap-around hints we do not want.
  const bool digits = !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  char* end = nullptr;
  long long v = digits ? std::strtoll(s.c_str(), &end, 10) : 0;
  SLM_CHECK(digits || (s.size() > 1 && s[0] == '-' && s.find_first_not_of("0123456789", 1) == std::string::npos),
            "--", name, " expects a whole number, got '", s, "'");
  SLM_CHECK(digits && errno == 0 && v <= hi, "--", name, " ", s, " is outside [0, ", hi, "]");
  return v;
}

double Args::f64(const std::string& name) const {
  const std::string s = str(name);
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  SLM_CHECK(!s.empty() && end && *end == '\0' && !std::isspace(static_cast<unsigned char>(s[0])), "--", name,
            " expects a number, got '", s, "'");
  SLM_CHECK(std::isfinite(v) && errno != ERANGE, "--", name, " must be a finite number, got '", s, "'");
  SLM_CHECK(v >= 0, "--", name, " must be >= 0, got ", s);
  return v;
}

std::vector<std::string> Args::list(const std::string& name) const {
  option_or_die(*this, name);
  auto it = values.find(name);
  return it == values.end() ? std::vector<std::string>{} : it->second;
}

Args parse(const std::vector<std::string>& argv) {
  Args a;
  // Longest command name matching the leading words.
  size_t used = 0;
  for (auto& c : command_table()) {
    std::stringstream ss(c.name);
    std::string w;
    size_t k = 0;
    bool ok = true;
    while (ss >> w) {
      if (k >= argv.size() || argv[k] != w) {
        ok = false;
        break;
      }
      ++k;
    }
    if (ok && k > used) used = k, a.command = &c;
  }
  if (!a.command) {
    if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") return a;
    std::vector<std::string> names;
    for (auto& c : command_table()) names.push_back(c.name);
    std::string guess = argv[0];
    if (argv.size() > 1 && argv[1].rfind("-", 0) != 0) guess += " " + argv[1];
    std::string n = nearest(guess, names);
    if (n.empty()) n = nearest(argv[0], names);
    fail("unknown command '", guess, "'", n.empty() ? "" : "; did you mean '" + n + "'?",
         " (run slmlab --help for the list)");
  }
  const std::string cmd = a.command->name;
  for (size_t i = used; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "-h") {
      a.values["help"].push_back("");
      continue;
    }
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      if (arg.size() > 1 && arg[0] == '-' && arg != "-")
        fail(cmd, ": short flags are not supported ('", arg, "'); use the long --name form, see slmlab ", cmd,
             " --help");
      a.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const OptionSpec* o = find_option(cmd, name);
    if (!o) {
      std::string n = nearest("--" + name, names_for(cmd));
      fail(cmd, ": unknown flag --", name, n.empty() ? "" : "; did you mean " + n + "?", " (see slmlab ", cmd,
           " --help)");
    }
    if (o->type == OptType::Flag) {
      SLM_CHECK(!inline_value, cmd, ": --", name, " is a switch and takes no value");
      a.values[name].push_back("");
      continue;
    }
    if (!inline_value) {
      SLM_CHECK(i + 1 < argv.size(), cmd, ": --", name, " needs a value (", o->metavar, ")");
      value = argv[++i];
    }
    if (o->type != OptType::List && a.values.count(name))
      fail(cmd, ": --", name, " given twice; pass it once");
    a.values[name].push_back(value);
  }
  if (a.has("help")) return a;
  // Positional arity from the spec: "" none, "X" exactly one, "[X]" at most one.
  std::string pos = a.command->positional;
  size_t max_pos = pos.empty() ? 0 : 1, min_pos = (pos.empty() || pos[0] == '[') ? 0 : 1;
  if (a.positional.size() < min_pos) fail(cmd, ": missing ", pos, " (usage: slmlab ", cmd, " ", pos, " [options])");
  if (a.positional.size() > max_pos)
    fail(cmd, ": unexpected argument '", a.positional[max_pos], "' (usage: slmlab ", cmd,
         pos.empty() ? "" : " " + pos, " [options])");
  // Typed values are checked here so a bad number fails before any work starts.
  for (auto& [name, vals] : a.values) {
    const OptionSpec* o = find_option(cmd, name);
    if (o->type == OptType::Int || o->type == OptType::Seed) a.i64(name);
    if (o->type == OptType::Float) a.f64(name);
  }
  return a;
}

std::string help(const CommandSpec* cmd) {
  std::ostringstream os;
  if (!cmd) {
    os << "slmlab: train small language models on C++ and decide by honest ablation what to keep.\n\n"
       << "usage: slmlab COMMAND [options]    (slmlab COMMAND --help for details)\n\ncommands:\n";
    for (auto& c : command_table()) {
      std::string head = std::string(c.name) + (std::string(c.positional).empty() ? "" : " ") + c.positional;
      os << "  " << head << std::string(head.size() < 24 ? 24 - head.size() : 1, ' ') << c.summary;
      os << "\n";
    }
    return os.str();
  }
  os << "usage: slmlab " << cmd->name << (std::string(cmd->positional).empty() ? "" : " ") << cmd->positional
     << " [options]\n\n"
     << cmd->summary << "\n";
  os << "\noptions:\n";
  for (auto& o : option_table()) {
    if (!takes(o, cmd->name)) continue;
    std::string head = std::string("--") + o.name + (o.type == OptType::Flag ? "" : std::string(" ") + o.metavar);
    os << "  " << head << std::string(head.size() < 24 ? 24 - head.size() : 1, ' ') << o.help;
    if (o.def[0]) os << " (default: " << o.def << ")";
    if (o.type == OptType::List) os << " [repeatable]";
    os << "\n";
  }
  return os.str();
}

}  // namespace slm::cli
