// Real projects as sources (--project) and libclang enrichment (--enrich): issue 23 §1-§2.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "common/fs.h"
#include "data/dataset.h"
#include "data/enrich.h"
#include "data/project.h"
#include "test_paths.h"
#include "test_util.h"

using namespace slm;
using namespace slm::data;
using slm::test::TempDir;
using slm::test::write;
using json = nlohmann::json;

namespace {

// Valid C++ (libclang parses it without errors), distinct per seed.
std::string valid_cpp(uint64_t seed, int n_funcs) {
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
std::string make_project(const std::string& dir, int n_units, bool with_db) {
  write(dir + "/include/lib.h", "#pragma once\n/* the library */\ninline int lib_add(int a, int b) { return a + b; }\n");
  write(dir + "/notes/loose.h", "#pragma once\nint loose_function(int q);\n");
  json db = json::array();
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

BuildOptions opts(const std::string& project, const std::string& out, bool enrich) {
  BuildOptions o;
  o.projects = {project};
  o.out = out;
  o.vocab = 400;
  o.val_frac = 0.2;
  o.val_min_bytes = 1;
  o.enrich = enrich;
  o.quiet = true;
  o.threads = 2;
  return o;
}

json manifest(const std::string& ds) { return json::parse(fs::read_file(ds + "/manifest.json")); }

// Per-byte categories of `content` (each byte its own token).
Enriched per_byte(const std::string& path, const std::string& content, const std::vector<std::string>& args) {
  return enrich(path, content, args, std::vector<uint32_t>(content.size(), 1));
}

}  // namespace

TEST(Project, CompileDatabaseGivesFilesCommandsAndHeadersOnce) {
  TempDir t;
  std::string p = make_project(t / "proj", 6, true);
  build(opts(p, t / "ds", false));
  json m = manifest(t / "ds");
  std::map<std::string, json> by_file;
  for (auto& s : m["sources"]) {
    EXPECT_EQ(s["project"], "proj");
    EXPECT_TRUE(by_file.emplace(s["file"].get<std::string>(), s).second) << "listed twice: " << s["file"];
  }
  // The six units, the header reached by -Iinclude once; nothing outside the include paths.
  EXPECT_EQ(by_file.size(), 7u);
  ASSERT_TRUE(by_file.count("include/lib.h"));
  EXPECT_FALSE(by_file.count("notes/loose.h"));
  // Each unit's command hash is its own (they differ by -DUNIT=i); the header takes the first unit's.
  std::set<std::string> hashes;
  for (int i = 0; i < 6; ++i) {
    const json& s = by_file.at("src/u" + std::to_string(i) + ".cpp");
    EXPECT_EQ(s["command_hash"].get<std::string>().size(), 32u);
    hashes.insert(s["command_hash"].get<std::string>());
  }
  EXPECT_EQ(hashes.size(), 6u);
  EXPECT_EQ(by_file.at("include/lib.h")["command_hash"], by_file.at("src/u0.cpp")["command_hash"]);
  EXPECT_EQ(m["projects"][0]["compile_commands"], std::filesystem::canonical(p).string() + "/build/compile_commands.json");
  DataSet ds(t / "ds");
  EXPECT_FALSE(ds.enriched());
}

TEST(Project, WithoutDatabaseListsTheDirectoryAndSaysSo) {
  TempDir t;
  std::string p = make_project(t / "proj", 5, false);
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --out " + (t / "ds") +
                          " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("has no compile_commands.json"), std::string::npos) << r.out;
  json m = manifest(t / "ds");
  std::set<std::string> files;
  for (auto& s : m["sources"]) {
    files.insert(s["file"].get<std::string>());
    EXPECT_EQ(s["command_hash"], "");
  }
  EXPECT_TRUE(files.count("notes/loose.h"));  // every C/C++ file under the directory
  EXPECT_EQ(files.size(), 7u);
  EXPECT_TRUE(m["projects"][0]["compile_commands"].is_null());
}

TEST(Project, BadInputIsAOneLineErrorAndWritesNothing) {
  TempDir t;
  std::string p = make_project(t / "proj", 3, false);
  auto e1 = slm::test::error_of([&] { build(opts(t / "nope", t / "ds", false)); });
  EXPECT_NE(e1.find("--project"), std::string::npos) << e1;
  EXPECT_NE(e1.find("does not exist"), std::string::npos) << e1;
  write(p + "/compile_commands.json", "[{\"directory\": \"/x\", \"file\": ");
  auto e2 = slm::test::error_of([&] { build(opts(p, t / "ds", false)); });
  EXPECT_NE(e2.find("compile_commands.json is not valid JSON"), std::string::npos) << e2;
  write(p + "/compile_commands.json", "[{\"directory\": \"/x\"}]");
  auto e3 = slm::test::error_of([&] { build(opts(p, t / "ds", false)); });
  EXPECT_NE(e3.find("no \"file\""), std::string::npos) << e3;
  for (auto& e : {e1, e2, e3}) EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(t / "ds"));
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --out " + (t / "ds"));
  EXPECT_NE(r.status, 0);
  EXPECT_FALSE(std::filesystem::exists(t / "ds"));
}

TEST(Enrich, CategoriesOfAHandWrittenFile) {
  if (!enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  const std::string src =
      "// a comment\n"
      "#define LIMIT 42\n"
      "int x = 7;\n"
      "struct Point { int px; };\n"
      "int f(Point p) {\n"
      "  return p.px + LIMIT;\n"
      "}\n";
  write(t / "a.cpp", src);
  Enriched e = per_byte(t / "a.cpp", src, {"-std=c++17"});
  ASSERT_TRUE(e.parsed) << e.error;
  auto at = [&](const std::string& needle, size_t from = 0) {
    size_t i = src.find(needle, from);
    EXPECT_NE(i, std::string::npos) << needle;
    return i;
  };
  EXPECT_EQ(int(e.category[at("// a")]), kComment);
  EXPECT_EQ(int(e.category[at("comment")]), kComment);
  EXPECT_EQ(int(e.category[at("#define")]), kPreprocessor);
  EXPECT_EQ(int(e.category[at("LIMIT 42")]), kPreprocessor);
  const size_t int_x = at("int x");
  EXPECT_TRUE(e.category[int_x] == kDeclaration || e.category[int_x] == kType) << category_name(e.category[int_x]);
  EXPECT_EQ(int(e.category[at("x =")]), kDeclaration);
  EXPECT_EQ(int(e.category[at("7;")]), kLiteral);
  EXPECT_EQ(int(e.category[at("Point p")]), kType);  // a use of the type
  EXPECT_EQ(int(e.category[at("return")]), kStatement);
  EXPECT_EQ(int(e.category[at("p.px +")]), kExpression);
  EXPECT_EQ(int(e.category[at(" +")]), kOther);  // white space
  // Depth grows inward: the function is a top-level declaration, `return` sits in its body, the
  // member access in the return statement.
  EXPECT_EQ(int(e.depth[at("int f")]), 1);
  EXPECT_GT(e.depth[at("return")], e.depth[at("int f")]);
  EXPECT_GT(e.depth[at("p.px")], e.depth[at("return")]);
  // A file that does not parse is kept raw: unknown throughout, with the reason.
  const std::string bad = "int g( {\n";
  Enriched b = per_byte(t / "b.cpp", bad, {"-std=c++17"});
  EXPECT_FALSE(b.parsed);
  EXPECT_FALSE(b.error.empty());
  EXPECT_EQ(b.category, std::vector<uint8_t>(bad.size(), kUnknown));
}

TEST(Enrich, ColumnsRoundTripVerifyAndCountRawFiles) {
  if (!enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  std::string p = make_project(t / "proj", 6, true);
  write(p + "/include/broken.h", "#pragma once\nint broken( {\n");  // reached by -Iinclude, does not parse
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --enrich --out " + (t / "ds") +
                          " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 2");
  ASSERT_EQ(r.status, 0) << r.out;
  json m = manifest(t / "ds");
  EXPECT_EQ(m["enrichment"]["files"], 8);
  EXPECT_EQ(m["enrichment"]["parsed"], 7);
  EXPECT_EQ(m["enrichment"]["raw"], 1);
  DataSet ds(t / "ds");
  ASSERT_TRUE(ds.enriched());
  // Exact round trip: the stored columns are what enrich() gives for the file with its own command.
  const std::string root = std::filesystem::canonical(p).string();
  size_t checked = 0;
  for (Split sp : {Split::Train, Split::Val})
    for (size_t i = 0; i < ds.docs(sp).size(); ++i) {
      const json& s = m["sources"][ds.docs(sp)[i].source];
      std::vector<uint32_t> lens;
      for (int32_t id : ds.doc_tokens(sp, i)) lens.push_back(ds.tokenizer().token_string(id).size());
      const std::string file = s["file"];
      std::vector<std::string> args;
      if (file.rfind("include/", 0) == 0) args = {"-x", "c++"};
      for (const char* a : {"-I", "-std=c++17", "-DUNIT="}) args.push_back(a);
      args[args.size() - 3] = "-I" + root + "/include";
      args.back() = "-DUNIT=" + std::to_string(file.rfind("include/", 0) == 0 ? 0 : file[5] - '0');
      Enriched e = enrich(root + "/" + file, fs::read_file(root + "/" + file), args, lens);
      EXPECT_EQ(s["enrich"], file == "include/broken.h" ? "raw" : "parsed") << file;
      EXPECT_EQ(ds.doc_column(sp, i, DataSet::Category), e.category) << file;
      EXPECT_EQ(ds.doc_column(sp, i, DataSet::Depth), e.depth) << file;
      ++checked;
    }
  EXPECT_EQ(checked, 8u);
  auto v = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_EQ(v.status, 0) << v.out;
  auto st = slm::test::run(std::string(SLMLAB_BIN) + " data stats " + (t / "ds"));
  EXPECT_NE(st.out.find("parse coverage 87.5% (7 of 8 files parsed fully, 1 kept raw)"), std::string::npos) << st.out;
  auto sj = json::parse(slm::test::run(std::string(SLMLAB_BIN) + " data stats --json " + (t / "ds")).out);
  EXPECT_DOUBLE_EQ(sj["enrichment"]["parse_coverage"].get<double>(), 7.0 / 8.0);
  // One flipped byte in a column file is detected.
  std::string col = t / "ds/train_000.cat";
  std::string bytes = fs::read_file(col);
  bytes[64 + bytes.size() / 2 % (bytes.size() - 64)] ^= 0x01;
  std::filesystem::permissions(col, std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  std::ofstream(col, std::ios::binary | std::ios::trunc) << bytes;
  auto bad = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("train_000.cat"), std::string::npos) << bad.out;
}

TEST(Project, CMakeCompileDatabaseEnrichedEndToEnd) {
  if (!enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  const std::string p = t / "cmk";
  for (int i = 0; i < 5; ++i) write(p + "/src/u" + std::to_string(i) + ".cpp", valid_cpp(300 + i, 5));
  write(p + "/include/lib.h", "#pragma once\ninline int lib_add(int a, int b) { return a + b; }\n");
  write(p + "/CMakeLists.txt",
        "cmake_minimum_required(VERSION 3.13)\nproject(cmk CXX)\n"
        "add_library(cmk STATIC src/u0.cpp src/u1.cpp src/u2.cpp src/u3.cpp src/u4.cpp)\n"
        "target_include_directories(cmk PUBLIC include)\ntarget_compile_definitions(cmk PRIVATE CMK=1)\n");
  auto c = slm::test::run("cmake -S " + p + " -B " + p + "/build -DCMAKE_EXPORT_COMPILE_COMMANDS=ON");
  ASSERT_EQ(c.status, 0) << c.out;
  ASSERT_TRUE(std::filesystem::exists(p + "/build/compile_commands.json"));
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --enrich --out " + (t / "ds") +
                          " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("enrichment: 6 of 6 files parsed fully (100.0%)"), std::string::npos) << r.out;
  json m = manifest(t / "ds");
  std::set<std::string> files;
  for (auto& s : m["sources"]) {
    files.insert(s["file"].get<std::string>());
    EXPECT_EQ(s["enrich"], "parsed") << s.dump();
  }
  EXPECT_EQ(files, (std::set<std::string>{"include/lib.h", "src/u0.cpp", "src/u1.cpp", "src/u2.cpp", "src/u3.cpp", "src/u4.cpp"}));
  auto v = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_EQ(v.status, 0) << v.out;
  // Deterministic: another thread count writes the same manifest (columns, checksums, fingerprint).
  auto r1 = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --enrich --out " + (t / "ds1") +
                           " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 1");
  ASSERT_EQ(r1.status, 0) << r1.out;
  EXPECT_EQ(fs::read_file(t / "ds1/manifest.json"), fs::read_file(t / "ds/manifest.json"));
}
