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

using slm::test::make_project;
using slm::test::valid_cpp;

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

TEST(Enrich, RolesEdgesAndTopLevelBoundaries) {
  if (!enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  const std::string src =
      "int g(int v);\n"
      "struct Point { int px; };\n"
      "namespace geo {\n"
      "/// scales a point\n"
      "int scale(Point p) {\n"
      "  return g(p.px) * 2;\n"
      "}\n"
      "}  // namespace geo\n"
      "int g(int v) { return v + 1; }\n";
  write(t / "a.cpp", src);
  Enriched e = per_byte(t / "a.cpp", src, {"-std=c++17"});
  ASSERT_TRUE(e.parsed) << e.error;
  auto at = [&](const std::string& needle) {
    size_t i = src.find(needle);
    EXPECT_NE(i, std::string::npos) << needle;
    return i;
  };
  ASSERT_EQ(e.role.size(), src.size());
  EXPECT_EQ(int(e.role[at("g(int v);")]), kDeclares);        // a declaration without a body
  EXPECT_EQ(int(e.role[at("g(int v) {")]), kDefines);         // its definition
  EXPECT_EQ(int(e.role[at("Point {")]), kDefines);
  EXPECT_EQ(int(e.role[at("Point p")]), kUses);               // the type named
  EXPECT_EQ(int(e.role[at("g(p.px)")]), kUses);               // the function called
  EXPECT_EQ(int(e.role[at("px) *")]), kUses);                 // the member read
  EXPECT_EQ(int(e.role[at("return g")]), kNoRole);            // a keyword names nothing
  EXPECT_EQ(int(e.role[at("2;")]), kNoRole);
  // Edges from the function defined around each reference to what the compiler resolved.
  EXPECT_EQ(e.edges, (std::vector<Edge>{{"geo::scale", "Point", 't'}, {"geo::scale", "g", 'c'}}));
  // Top-level starts (each byte a token here): the declaration, the struct, the namespace, the
  // function inside it moved back over its doc comment, the definition; nothing inside a body.
  std::vector<uint32_t> want = {uint32_t(at("struct Point")), uint32_t(at("namespace geo")), uint32_t(at("/// scales")),
                                uint32_t(at("int g(int v) {"))};
  EXPECT_EQ(e.boundaries, want);
}

TEST(Chunk, CutsAtTheLastBoundaryWithinTheBudgetElseMidDeclaration) {
  // 100 tokens, boundaries at 30, 55, 60, 95: budget 40 cuts at 30, then 60 (55 and 60 fit, the
  // later is taken), then 100 (the rest) - 40 tokens left fit.
  Chunking c = chunk_document(100, 40, {30, 55, 60, 95});
  EXPECT_EQ(c.sizes, (std::vector<uint64_t>{30, 30, 40}));
  EXPECT_EQ(c.at_boundary, 2u);
  EXPECT_EQ(c.mid, 0u);
  // No boundary inside the budget: cut at the budget (counted as inside a declaration).
  c = chunk_document(100, 20, {30, 95});
  EXPECT_EQ(c.sizes, (std::vector<uint64_t>{20, 10, 20, 20, 20, 10}));
  EXPECT_EQ(c.at_boundary, 1u);  // at 30; 95 never lies within 20 of a chunk's start
  EXPECT_EQ(c.mid, 4u);
  // Budget 0 or a short file: one document.
  EXPECT_EQ(chunk_document(100, 0, {30}).sizes, (std::vector<uint64_t>{100}));
  EXPECT_EQ(chunk_document(10, 40, {3}).sizes, (std::vector<uint64_t>{10}));
}

TEST(Enrich, ChunkedRolesAndEdgesRoundTripVerifyAndCount) {
  if (!enrich_available()) GTEST_SKIP() << "built without libclang";
  TempDir t;
  std::string p = make_project(t / "proj", 6, true);
  auto r = slm::test::run(std::string(SLMLAB_BIN) + " data build --project " + p + " --enrich --doc-tokens 120 --out " +
                          (t / "ds") + " --vocab 400 --val-frac 0.2 --val-min-bytes 1 --threads 2");
  ASSERT_EQ(r.status, 0) << r.out;
  json m = manifest(t / "ds");
  const uint64_t at_b = m["chunking"]["cuts_at_boundary"], mid = m["chunking"]["cuts_mid_declaration"];
  EXPECT_GT(at_b, 0u) << "six functions a unit: most cuts fall between them";
  EXPECT_NE(r.out.find("chunking: documents of at most 120 tokens; " + std::to_string(at_b) + " cuts at a top-level declaration, " +
                       std::to_string(mid) + " inside one"),
            std::string::npos) << r.out;
  DataSet ds(t / "ds");
  ASSERT_TRUE(ds.has_column(DataSet::Role) && ds.has_edges());
  const std::string root = std::filesystem::canonical(p).string();
  uint64_t n_docs = 0, n_edges = 0;
  for (Split sp : {Split::Train, Split::Val}) {
    const auto& docs = ds.docs(sp);
    for (size_t i = 0; i < docs.size();) {  // the documents of one file, in order
      const json& s = m["sources"][docs[i].source];
      std::vector<int32_t> ids;
      std::vector<uint8_t> cat, role;
      size_t j = i;
      for (; j < docs.size() && docs[j].source == docs[i].source; ++j) {
        EXPECT_LE(docs[j].n_tokens, 120u);
        auto part = ds.doc_tokens(sp, j);
        auto c = ds.doc_column(sp, j, DataSet::Category), ro = ds.doc_column(sp, j, DataSet::Role);
        ids.insert(ids.end(), part.begin(), part.end());
        cat.insert(cat.end(), c.begin(), c.end());
        role.insert(role.end(), ro.begin(), ro.end());
      }
      const std::string file = s["file"];
      const bool header = file.rfind("include/", 0) == 0;
      std::vector<uint32_t> lens;
      for (int32_t id : ids) lens.push_back(ds.tokenizer().token_string(id).size());
      std::vector<std::string> args;
      if (header) args = {"-x", "c++"};
      args.push_back("-I" + root + "/include");
      args.push_back("-std=c++17");
      args.push_back("-DUNIT=" + std::to_string(header ? 0 : file[5] - '0'));
      Enriched e = enrich(root + "/" + file, fs::read_file(root + "/" + file), args, lens);
      ASSERT_TRUE(e.parsed) << file << ": " << e.error;
      EXPECT_EQ(cat, e.category) << file;
      EXPECT_EQ(role, e.role) << file;
      EXPECT_EQ(ds.edges(docs[i].source), e.edges) << file;  // exact round trip of the file's edges
      // The stored cut is the one chunk_document gives for the file's boundaries.
      std::vector<uint64_t> sizes;
      for (size_t k = i; k < j; ++k) sizes.push_back(docs[k].n_tokens);
      EXPECT_EQ(sizes, chunk_document(ids.size(), 120, e.boundaries).sizes) << file;
      n_edges += e.edges.size();
      n_docs += j - i;
      i = j;
    }
  }
  EXPECT_GT(n_docs, m["sources"].size());
  EXPECT_GT(n_edges, 0u);  // every unit calls lib_add
  EXPECT_EQ(m["enrichment"]["edges"]["count"], n_edges);
  auto v = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_EQ(v.status, 0) << v.out;
  auto st = slm::test::run(std::string(SLMLAB_BIN) + " data stats " + (t / "ds"));
  EXPECT_NE(st.out.find("token roles: none="), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("dependency edges " + std::to_string(n_edges)), std::string::npos) << st.out;
  EXPECT_NE(st.out.find(std::to_string(at_b) + " at a top-level declaration"), std::string::npos) << st.out;
  // One changed byte in the edge list is refused on open.
  std::string path = t / "ds/edges.tsv";
  std::string text = fs::read_file(path);
  text[text.size() / 2] = text[text.size() / 2] == 'a' ? 'b' : 'a';
  std::filesystem::permissions(path, std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  auto bad = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("edges.tsv is corrupt"), std::string::npos) << bad.out;
}

TEST(Chunk, WithoutEnrichmentEveryCutIsAtTheBudgetAndTheDataSetIsValid) {
  TempDir t;
  std::string p = make_project(t / "proj", 4, true);
  BuildOptions o = opts(p, t / "ds", false);
  o.doc_tokens = 100;
  BuildResult r = build(o);
  EXPECT_EQ(r.cuts_at_boundary, 0u);  // no parse, no boundaries
  EXPECT_GT(r.cuts_mid, 0u);
  DataSet ds(t / "ds");
  EXPECT_FALSE(ds.enriched());
  EXPECT_EQ(ds.docs(Split::Train).size() + ds.docs(Split::Val).size(), r.train_docs + r.val_docs);
  EXPECT_GT(r.train_docs + r.val_docs, 5u);
  auto v = slm::test::run(std::string(SLMLAB_BIN) + " data verify " + (t / "ds"));
  EXPECT_EQ(v.status, 0) << v.out;
  auto e = slm::test::error_of([&] { ds.doc_column(Split::Train, 0, DataSet::Role); });
  EXPECT_NE(e.find("rebuild it with this slmlab's data build --enrich"), std::string::npos) << e;
}
