// The command-line parser: one table of commands and one table of options (both in cli/table.cpp).
// Long kebab-case flags only ("--vocab 8192" or "--vocab=8192"); every command has --help
// showing live defaults; an unknown flag is rejected with the nearest valid name.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace slm::cli {

// Numbers on the command line are counts, sizes, rates and seeds: never negative, never NaN or inf,
// never silently cut to fit. Int is a count that fits an int (0 .. 2^31-1, so no caller truncates
// it); Seed is 0 .. 2^63-1; Float is finite and >= 0. Anything else is refused at parse time.
enum class OptType { Flag, Int, Seed, Float, String, List };

struct OptionSpec {
  const char* name;      // without the leading "--"
  const char* commands;  // commands that take it, '|'-separated: "data build|data stats"
  OptType type;
  const char* def;       // default shown in --help and returned when absent ("" = none)
  const char* metavar;   // "N", "DIR", ...
  const char* help;
};

struct CommandSpec {
  const char* name;        // "data build"
  const char* positional;  // "DATA_DIR", "" for none; "[X]" when optional
  const char* summary;
};

// The tables (cli/table.cpp): what the parser and --help read.
const std::vector<OptionSpec>& option_table();
const std::vector<CommandSpec>& command_table();

// Parsed arguments of one command. Accessors return the table default when absent.
class Args {
 public:
  const CommandSpec* command = nullptr;
  std::vector<std::string> positional;

  bool has(const std::string& name) const;
  bool flag(const std::string& name) const;
  std::string str(const std::string& name) const;
  int64_t i64(const std::string& name) const;  // an Int or Seed option, range-checked
  double f64(const std::string& name) const;
  std::vector<std::string> list(const std::string& name) const;

  std::map<std::string, std::vector<std::string>> values;  // as given on the command line
};

// Levenshtein distance; used for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b);
// Nearest candidate within a sensible distance, or "" if none is close.
std::string nearest(const std::string& word, const std::vector<std::string>& candidates);

// Resolves the command from argv (longest matching name) and parses its flags.
// Returns Args with command == nullptr when argv asks for top-level help.
// Throws slm::Error for unknown commands/flags, missing values, bad numbers, wrong positionals.
Args parse(const std::vector<std::string>& argv);

// Help text for one command (usage, summary, options with defaults) or for the whole tool.
std::string help(const CommandSpec* cmd);

}  // namespace slm::cli
