#include "data/project.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"

namespace slm::data {
namespace stdfs = std::filesystem;

std::vector<std::string> split_command(const std::string& cmd) {
  std::vector<std::string> out;
  std::string cur;
  bool in_arg = false;
  char quote = 0;
  for (size_t i = 0; i < cmd.size(); ++i) {
    char c = cmd[i];
    if (quote) {
      if (c == quote) quote = 0;
      else if (c == '\\' && quote == '"' && i + 1 < cmd.size()) cur += cmd[++i];
      else cur += c;
    } else if (c == '\'' || c == '"') {
      quote = c, in_arg = true;
    } else if (c == '\\' && i + 1 < cmd.size()) {
      cur += cmd[++i], in_arg = true;
    } else if (c == ' ' || c == '\t' || c == '\n') {
      if (in_arg) out.push_back(cur), cur.clear(), in_arg = false;
    } else {
      cur += c, in_arg = true;
    }
  }
  if (in_arg) out.push_back(cur);
  return out;
}

namespace {

bool is_header(const std::string& rel) {
  static const std::set<std::string> hdr = {".h", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".tpp", ".tcc", ".inl", ".cuh"};
  std::string ext = stdfs::path(rel).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return hdr.count(ext) > 0;
}

bool inside(const std::string& rel) { return !rel.empty() && rel != "." && rel.rfind("..", 0) != 0; }

std::string absolute_in(const std::string& dir, const std::string& p) {
  stdfs::path q(p);
  if (q.is_relative()) q = stdfs::path(dir) / q;
  std::error_code ec;
  stdfs::path c = stdfs::weakly_canonical(q, ec);
  return (ec ? q.lexically_normal() : c).string();
}

struct Entry {
  std::string file;                 // absolute
  std::vector<std::string> args;    // for libclang
  std::vector<std::string> includes;  // absolute include directories
  std::string hash;
};

// One database entry: the arguments libclang needs (compiler, -c, -o and the input dropped; relative
// include paths made absolute) and the command's hash.
Entry parse_entry(const nlohmann::json& e, const std::string& db) {
  auto bad = [&](const std::string& why) {
    fail("data build: ", db, " is not a valid compile database (", why,
         "); regenerate it with cmake -DCMAKE_EXPORT_COMPILE_COMMANDS=ON");
  };
  if (!e.is_object()) bad("an entry is not an object");
  if (!e.contains("directory") || !e["directory"].is_string()) bad("an entry has no \"directory\" string");
  if (!e.contains("file") || !e["file"].is_string()) bad("an entry has no \"file\" string");
  std::vector<std::string> argv;
  if (e.contains("arguments")) {
    if (!e["arguments"].is_array()) bad("\"arguments\" is not an array");
    for (auto& a : e["arguments"]) {
      if (!a.is_string()) bad("\"arguments\" holds a non-string");
      argv.push_back(a.get<std::string>());
    }
  } else if (e.contains("command") && e["command"].is_string()) {
    argv = split_command(e["command"].get<std::string>());
  } else {
    bad("an entry has neither \"arguments\" nor \"command\"");
  }
  if (argv.empty()) bad("an entry has an empty command");
  const std::string dir = e["directory"].get<std::string>();
  Entry out;
  out.file = absolute_in(dir, e["file"].get<std::string>());
  Hasher h;
  h.field(dir);
  for (auto& a : argv) h.field(a);
  out.hash = h.hex();
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "-c") continue;
    if (a == "-o" || a == "-MF" || a == "-MT" || a == "-MQ") { ++i; continue; }
    if (a.rfind("-o", 0) == 0 && a.size() > 2) continue;
    if (a == "-MD" || a == "-MMD") continue;
    if (absolute_in(dir, a) == out.file) continue;
    for (const char* flag : {"-I", "-isystem", "-iquote", "-idirafter"}) {
      std::string f = flag;
      if (a == f && i + 1 < argv.size()) {
        std::string p = absolute_in(dir, argv[i + 1]);
        out.includes.push_back(p);
        out.args.push_back(f);
        out.args.push_back(p);
        ++i;
        goto next;
      }
      if (a.rfind(f, 0) == 0 && a.size() > f.size() && (f == "-I" || a[f.size()] == '/' || a[f.size()] == '.')) {
        std::string p = absolute_in(dir, a.substr(f.size()));
        out.includes.push_back(p);
        out.args.push_back(f + p);
        goto next;
      }
    }
    out.args.push_back(a);
  next:;
  }
  return out;
}

bool is_c_source(const std::string& rel) { return stdfs::path(rel).extension() == ".c"; }

}  // namespace

ProjectList list_projects(const std::vector<std::string>& dirs) {
  ProjectList pl;
  for (const std::string& d : dirs) {
    SLM_CHECK(fs::is_dir(d), "data build: --project ", d, " does not exist or is not a directory; pass a project's root directory");
    std::string root = stdfs::canonical(d).string();
    SLM_CHECK(std::find(pl.roots.begin(), pl.roots.end(), root) == pl.roots.end(), "data build: --project ", d,
              " is given twice; pass each project once");
    pl.roots.push_back(root);
    pl.names.push_back(stdfs::path(root).filename().string());
  }
  for (uint32_t p = 0; p < pl.roots.size(); ++p) {
    const std::string& root = pl.roots[p];
    const std::string& name = pl.names[p];
    std::string db;
    for (const char* c : {"compile_commands.json", "build/compile_commands.json"})
      if (db.empty() && fs::exists(fs::join(root, c))) db = fs::join(root, c);
    pl.databases.push_back(db);
    if (db.empty()) {
      std::vector<Listed> found;
      list_sources(root, p, found, pl.skipped);
      for (auto& f : found) {
        f.project = name;
        if (!is_c_source(f.rel)) f.args = {"-x", "c++", "-std=c++17"};
        f.args.push_back("-I" + root);
        pl.files.push_back(std::move(f));
      }
      pl.notes.push_back("[data] project " + name + " (" + root + ") has no compile_commands.json (looked in it and in build/); listed its " +
                         std::to_string(found.size()) + " C/C++ files, parsed without compile commands");
      continue;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(fs::read_file(db));
    } catch (const nlohmann::json::exception& e) {
      fail("data build: ", db, " is not valid JSON (", e.what(), "); regenerate it with cmake -DCMAKE_EXPORT_COMPILE_COMMANDS=ON");
    }
    SLM_CHECK(j.is_array(), "data build: ", db, " is not a compile database (not a JSON array); regenerate it with cmake -DCMAKE_EXPORT_COMPILE_COMMANDS=ON");
    std::vector<Entry> entries;
    for (auto& e : j) entries.push_back(parse_entry(e, db));
    std::set<std::string> taken;  // relative paths already listed for this project
    bool any_cxx = false;
    for (auto& e : entries) {
      std::string rel = stdfs::path(e.file).lexically_relative(root).string();
      if (!inside(rel)) {
        pl.skipped.push_back({e.file, "outside_project"});
        continue;
      }
      if (!is_c_source(rel)) any_cxx = true;
      if (!taken.insert(rel).second) continue;  // a file compiled twice: its first command
      pl.files.push_back({p, rel, name, e.args, e.hash});
    }
    // Headers reached by the project's own include paths, each once, with the flags of the first
    // unit whose include paths reach it.
    for (auto& e : entries)
      for (auto& inc : e.includes) {
        std::string rel_inc = stdfs::path(inc).lexically_relative(root).string();
        if (!(inside(rel_inc) || rel_inc == ".") || !fs::is_dir(inc)) continue;
        std::vector<Listed> found;
        std::vector<Skip> sk;
        list_sources(inc, p, found, sk);
        for (auto& f : found) {
          std::string rel = stdfs::path(fs::join(inc, f.rel)).lexically_normal().lexically_relative(root).string();
          if (!is_header(rel) || !inside(rel) || !taken.insert(rel).second) continue;
          std::vector<std::string> args = {"-x", any_cxx ? "c++" : "c"};
          args.insert(args.end(), e.args.begin(), e.args.end());
          pl.files.push_back({p, rel, name, std::move(args), e.hash});
        }
      }
  }
  return pl;
}

}  // namespace slm::data
