// Data sets: build, determinism, split stability, skips, corruption detection, bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "test_util.h"

using namespace slm;
using namespace slm::data;
using slm::test::TempDir;

namespace {

BuildOptions small_opts(const std::string& src, const std::string& out) {
  BuildOptions o;
  o.src = {src};
  o.out = out;
  o.vocab = 512;
  o.val_frac = 0.1;
  o.val_min_bytes = 2048;
  o.threads = 2;
  o.quiet = true;
  return o;
}

nlohmann::json manifest(const std::string& dir) { return nlohmann::json::parse(fs::read_file(dir + "/manifest.json")); }

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const slm::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error is not one line: " << m;
  }
}

}  // namespace

TEST(DataSet, BuildsVerifiesAndOpens) {
  TempDir t;
  slm::test::make_corpus(t / "src", 40);
  BuildResult r = build(small_opts(t / "src", t / "ds"));
  EXPECT_EQ(r.files, 40u);
  EXPECT_GT(r.val_docs, 0u);
  EXPECT_GT(r.train_docs, r.val_docs);
  VerifyResult v = verify(t / "ds", 0, 2);
  EXPECT_EQ(v.docs_decoded, 40u);
  EXPECT_EQ(v.docs_reencoded, 40u);
  DataSet ds(t / "ds");
  EXPECT_EQ(ds.fingerprint(), r.fingerprint);
  EXPECT_EQ(ds.tokenizer().vocab_size(), 512);
  EXPECT_EQ(ds.n_tokens(Split::Train), r.train_tokens);
  EXPECT_EQ(ds.n_tokens(Split::Val), r.val_tokens);
  // Every document decodes to the exact bytes of the file it came from.
  auto m = manifest(t / "ds");
  for (Split sp : {Split::Train, Split::Val})
    for (size_t i = 0; i < ds.docs(sp).size(); ++i) {
      std::string path = m["sources"][ds.docs(sp)[i].source]["path"];
      EXPECT_EQ(ds.tokenizer().decode(ds.doc_tokens(sp, i)), fs::read_file(path)) << path;
      EXPECT_EQ(m["sources"][ds.docs(sp)[i].source]["split"], split_name(sp));
    }
  // No temporary directories left next to the output.
  for (auto& e : std::filesystem::directory_iterator(t.path))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos);
}

TEST(DataSet, TwoBuildsOfTheSameSourcesHaveTheSameFingerprint) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  std::string a = build(small_opts(t / "src", t / "a")).fingerprint;
  auto o = small_opts(t / "src", t / "b");
  o.threads = 1;  // thread count must not matter
  std::string b = build(o).fingerprint;
  EXPECT_EQ(a, b);
  EXPECT_EQ(fs::read_file(t / "a/train_000.tok"), fs::read_file(t / "b/train_000.tok"));
  EXPECT_EQ(fs::read_file(t / "a/tokenizer.bpe"), fs::read_file(t / "b/tokenizer.bpe"));
  // A different vocabulary is a different data set.
  auto c = small_opts(t / "src", t / "c");
  c.vocab = 600;
  EXPECT_NE(build(c).fingerprint, a);
}

TEST(DataSet, SplitIsStableWhenTheCorpusGrows) {
  TempDir t;
  slm::test::make_corpus(t / "src", 60);
  auto o = small_opts(t / "src", t / "a");
  o.val_min_bytes = 1;  // the floor must not kick in: we test the hash rule
  build(o);
  auto split_of = [](const nlohmann::json& m) {
    std::map<std::string, std::string> s;
    for (auto& src : m["sources"]) s[src["hash"]] = src["split"];
    return s;
  };
  auto before = split_of(manifest(t / "a"));
  slm::test::make_corpus(t / "src/more", 30, 99);
  o.out = t / "b";
  build(o);
  auto after = split_of(manifest(t / "b"));
  EXPECT_EQ(after.size(), before.size() + 30);
  for (auto& [hash, sp] : before) EXPECT_EQ(after.at(hash), sp) << hash;
}

TEST(DataSet, ValidationFloorExtendsTheSplitDeterministically) {
  TempDir t;
  slm::test::make_corpus(t / "src", 40);
  auto o = small_opts(t / "src", t / "a");
  o.val_frac = 0.001;
  o.val_min_bytes = 20000;
  build(o);
  uint64_t vb = manifest(t / "a")["counts"]["val"]["bytes"];
  EXPECT_GE(vb, 20000u);
  o.out = t / "b";
  build(o);
  EXPECT_EQ(manifest(t / "a")["documents"], manifest(t / "b")["documents"]);
}

TEST(DataSet, SkipsAreCountedAndListed) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  slm::test::write(t / "src/bin.h", std::string("int x;\0\1\2", 9));
  slm::test::write(t / "src/big.cpp", std::string(20000, 'x'));
  slm::test::write(t / "src/dup.hpp", fs::read_file(t / "src/src0/file0.h"));
  slm::test::write(t / "src/empty.cc", "");
  slm::test::write(t / "src/readme.txt", "not a source");
  slm::test::write(t / "src/c++/12/vector", "namespace std { template <class T> class vector; }\n");
  slm::test::write(t / "src/Makefile", "all:\n");
  auto o = small_opts(t / "src", t / "ds");
  o.max_file_bytes = 16384;
  build(o);
  auto m = manifest(t / "ds");
  EXPECT_EQ(m["skip_counts"]["binary"], 1);
  EXPECT_EQ(m["skip_counts"]["too_large"], 1);
  EXPECT_EQ(m["skip_counts"]["duplicate"], 1);
  EXPECT_EQ(m["skip_counts"]["empty"], 1);
  EXPECT_EQ(m["skipped"].size(), 4u);
  EXPECT_EQ(m["sources"].size(), 31u);  // 30 + the extension-less std header; .txt and Makefile are not sources
  bool has_vector = false;
  for (auto& s : m["sources"]) has_vector |= s["path"].get<std::string>().find("c++/12/vector") != std::string::npos;
  EXPECT_TRUE(has_vector);
}

TEST(DataSet, SourcePathRule) {
  EXPECT_TRUE(is_source_path("a/b.cpp"));
  EXPECT_TRUE(is_source_path("a/b.H"));
  EXPECT_TRUE(is_source_path("x/c++/12/bits/stl_vector.h"));
  EXPECT_TRUE(is_source_path("c++/12/unordered_map"));
  EXPECT_FALSE(is_source_path("a/vector"));
  EXPECT_FALSE(is_source_path("c++/12/.hidden"));
  EXPECT_FALSE(is_source_path("a/b.py"));
}

TEST(DataSet, CorruptionIsDetected) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  build(small_opts(t / "src", t / "good"));
  auto fresh = [&](const std::string& name) {
    std::filesystem::copy(t / "good", t / name, std::filesystem::copy_options::recursive);
    return t / name;
  };
  {  // one flipped byte in a shard payload
    std::string d = fresh("flip");
    std::string b = fs::read_file(d + "/train_000.tok");
    b[b.size() / 2] ^= 1;
    slm::test::write(d + "/train_000.tok", b);
    expect_error([&] { verify(d, 0, 1); }, "corrupt");
  }
  {  // truncated shard
    std::string d = fresh("trunc");
    std::string b = fs::read_file(d + "/val_000.tok");
    slm::test::write(d + "/val_000.tok", b.substr(0, b.size() - 6));
    expect_error([&] { verify(d, 0, 1); }, "truncated");
  }
  {  // missing index
    std::string d = fresh("noidx");
    std::filesystem::remove(d + "/train.idx");
    expect_error([&] { verify(d, 0, 1); }, "train.idx");
  }
  {  // tokenizer replaced
    std::string d = fresh("tok");
    std::string b = fs::read_file(d + "/tokenizer.bpe");
    b.pop_back();
    b.back() = b.back() == '1' ? '2' : '1';
    slm::test::write(d + "/tokenizer.bpe", b + "\n");
    EXPECT_THROW(verify(d, 0, 1), slm::Error);
  }
  {  // manifest edited: a source hash changed
    std::string d = fresh("manifest");
    auto m = manifest(d);
    m["sources"][0]["hash"] = std::string(32, '0');
    slm::test::write(d + "/manifest.json", m.dump());
    expect_error([&] { verify(d, 0, 1); }, "fingerprint");
  }
  EXPECT_NO_THROW(verify(t / "good", 0, 1));
}

// Opening a data set (what train and eval do) checks the manifest, tokenizer and indexes against
// each other, cheaply: any edit of a field that decides the tokens or their identity is refused, so
// a run never trains under a substrate id its data does not have. Every field of every source and
// the fingerprint itself are altered one at a time.
TEST(DataSet, OpeningRefusesAnAlteredManifest) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  build(small_opts(t / "src", t / "good"));
  EXPECT_NO_THROW(DataSet d(t / "good"));
  const nlohmann::json good = manifest(t / "good");
  int n = 0;
  auto refused = [&](nlohmann::json m, const std::string& what) {
    const std::string d = t / ("m" + std::to_string(n++));
    std::filesystem::copy(t / "good", d, std::filesystem::copy_options::recursive);
    slm::test::write(d + "/manifest.json", m.dump());
    expect_error([&] { DataSet ds(d); }, what);
  };
  {  // one character of the fingerprint
    nlohmann::json m = good;
    std::string fp = m["fingerprint"];
    fp[3] = fp[3] == 'a' ? 'b' : 'a';
    m["fingerprint"] = fp;
    refused(m, "fingerprint");
  }
  for (const char* key : {"hash", "tokens"}) {  // a source's identity or length
    nlohmann::json m = good;
    if (std::string(key) == "hash") m["sources"][0][key] = std::string(32, '0');
    else m["sources"][0][key] = m["sources"][0][key].get<uint64_t>() + 1;
    refused(m, "manifest");
  }
  {  // the document order of a split
    nlohmann::json m = good;
    auto& docs = m["documents"]["train"];
    ASSERT_GE(docs.size(), 2u);
    std::swap(docs[0], docs[1]);
    refused(m, "manifest");
  }
  {  // a key missing: one line, not a JSON exception
    nlohmann::json m = good;
    m.erase("shards");
    refused(m, "manifest.json");
    nlohmann::json m2 = good;
    m2["tokenizer"]["file"] = 7;
    refused(m2, "manifest.json");
  }
}

TEST(DataSet, BadInputIsOneLineError) {
  TempDir t;
  slm::test::make_corpus(t / "src", 20);
  expect_error([&] { build(small_opts(t / "missing", t / "o1")); }, "does not exist");
  std::filesystem::create_directories(t / "empty");
  slm::test::write(t / "empty/notes.txt", "hello");
  expect_error([&] { build(small_opts(t / "empty", t / "o2")); }, "no C/C++ source files");
  auto o = small_opts(t / "src", t / "o3");
  o.vocab = 100;
  expect_error([&] { build(o); }, "--vocab 100 is smaller");
  slm::test::write(t / "other/file.txt", "mine");
  expect_error([&] { build(small_opts(t / "src", t / "other")); }, "not a slmlab data set");
  EXPECT_EQ(fs::read_file(t / "other/file.txt"), "mine");  // nothing lost
  o = small_opts(t / "src", t / "o4");
  o.val_min_bytes = 1 << 30;
  expect_error([&] { build(o); }, "too small for a validation split");
  build(small_opts(t / "src", t / "ds"));
  expect_error([&] { build(small_opts(t / "src", t / "ds")); }, "--force");
  auto f = small_opts(t / "src", t / "ds");
  f.force = true;
  EXPECT_NO_THROW(build(f));
  expect_error([&] { DataSet d(t / "src"); }, "not a slmlab data set");
}

// The binary: one-line errors, non-zero exit, and no half-written data set when a write fails.
TEST(DataSetCli, FailedWriteLeavesNothingBehind) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  // A file-size limit makes the shard write fail halfway, like a full disk.
  auto r = slm::test::run("bash -c 'ulimit -f 8; exec " + std::string(SLMLAB_BIN) + " data build --src " + (t / "src") +
                          " --out " + (t / "ds") + " --vocab 512 --val-frac 0.1 --val-min-bytes 2048'");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("slmlab: error: cannot write"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(t / "ds"));
  for (auto& e : std::filesystem::directory_iterator(t.path)) EXPECT_EQ(e.path().filename(), "src");
}

TEST(DataSetCli, CommandsWorkEndToEnd) {
  TempDir t;
  slm::test::make_corpus(t / "src", 30);
  std::string bin = SLMLAB_BIN;
  auto b = slm::test::run(bin + " data build --src " + (t / "src") + " --out " + (t / "ds") +
                          " --vocab 400 --val-frac 0.1 --val-min-bytes 2048");
  ASSERT_EQ(b.status, 0) << b.out;
  auto v = slm::test::run(bin + " data verify " + (t / "ds"));
  EXPECT_EQ(v.status, 0) << v.out;
  EXPECT_NE(v.out.find("ok:"), std::string::npos);
  auto s = slm::test::run(bin + " data stats " + (t / "ds") + " --json");
  ASSERT_EQ(s.status, 0) << s.out;
  auto j = nlohmann::json::parse(s.out);
  EXPECT_EQ(j["vocab"], 400);
  EXPECT_EQ(j["files"], 30);
  EXPECT_GT(j["val_bytes_per_token"].get<double>(), 1.0);
  EXPECT_EQ(j["top_tokens"].size(), 20u);
  auto bad = slm::test::run(bin + " data verify " + (t / "nope"));
  EXPECT_EQ(bad.status, 2);
  EXPECT_EQ(slm::test::count_lines(bad.out), 1) << bad.out;
  auto typo = slm::test::run(bin + " data build --out x --vocb 3");
  EXPECT_EQ(typo.status, 2);
  EXPECT_NE(typo.out.find("did you mean --vocab?"), std::string::npos) << typo.out;
  auto no_ledger = slm::test::run(bin + " report --ledger " + (t / "none.sqlite"));
  EXPECT_EQ(no_ledger.status, 2);
  EXPECT_EQ(slm::test::count_lines(no_ledger.out), 1) << no_ledger.out;
  EXPECT_NE(no_ledger.out.find("--ledger"), std::string::npos) << no_ledger.out;
}
