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
