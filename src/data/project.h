// Real C/C++ projects as sources (`slmlab data build --project DIR`). A project's compile database
// (DIR/compile_commands.json or DIR/build/compile_commands.json, as CMake writes it with
// -DCMAKE_EXPORT_COMPILE_COMMANDS=ON) lists its translation units with their own flags; the headers
// under the project's own include paths (-I, -isystem, -iquote inside DIR) are taken once, with the
// flags of the first unit that names the path. Without a database every C/C++ file under DIR is
// listed (and the build says so).
#pragma once
#include <string>
#include <vector>

#include "data/corpus.h"

namespace slm::data {

struct ProjectList {
  std::vector<std::string> roots;     // canonical project directories
  std::vector<std::string> names;     // project names (directory base names)
  std::vector<std::string> databases; // compile database path, "" when none
  std::vector<Listed> files;
  std::vector<Skip> skipped;
  std::vector<std::string> notes;     // one line per project without a database
};

// Validates and lists every project; throws slm::Error with a one-line reason on bad input (no such
// directory, a compile database that is not valid JSON or lacks directory/file/command).
ProjectList list_projects(const std::vector<std::string>& dirs);

// Splits a compile_commands.json "command" string into arguments (shell quoting: '', "", \).
std::vector<std::string> split_command(const std::string& cmd);

}  // namespace slm::data
