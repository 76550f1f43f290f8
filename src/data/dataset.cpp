#include "data/dataset.h"
#include "data/dedup.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"
#include "data/corpus.h"
#include "data/enrich.h"
#include "data/project.h"

namespace slm::data {

using json = nlohmann::ordered_json;

namespace {

constexpr uint64_t kShardTokens = 32ull << 20;  // tokens per shard; documents never straddle shards
constexpr uint64_t kSplitSalt = 0x5eed5eed5eed5eedull;     // salt of the split score (part of the split rule)

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int resolve_threads(int t) {
  if (t > 0) return t;
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

// Position of a document in [0,1): a pure function of its content hash, so a file's split never
// depends on which other files are in the corpus.
double split_score(const std::string& content_hash) {
  return static_cast<double>(hash64(content_hash, kSplitSalt) >> 11) * 0x1.0p-53;
}

std::string split_rule(double frac, uint64_t min_bytes) {
  std::ostringstream os;
  os << "val iff xxh3_64(content_hash, salt=" << kSplitSalt << ") / 2^64 < " << std::setprecision(17) << frac
     << "; if val bytes < " << min_bytes << ", add the lowest-scoring train documents until reached"
     << "; val documents with a train near-duplicate (MinHash " << kShingle << "-token shingles x " << kMinHashes
     << ", " << kBands << " bands, similarity >= " << kNearDuplicate << ") move to train, and the floor is refilled";
  return os.str();
}

std::string shard_name(Split s, size_t i, const char* ext = "tok") {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s_%03zu.%s", split_name(s), i, ext);
  return buf;
}

constexpr const char* kColumnNames[DataSet::kColumns] = {"category", "depth", "role"};
constexpr const char* kColumnExt[DataSet::kColumns] = {"cat", "dep", "rol"};
constexpr const char* kEdgesFile = "edges.tsv";

// The fingerprint covers everything that decides the tokens: tokenizer, split rule, and per split
// the documents (content hash, token count) in order and the shard checksums.
std::string fingerprint_of(const json& m) {
  Hasher h;
  h.field(std::string(kDataFormat)).field(m.at("tokenizer").at("hash").get<std::string>());
  h.field(m.at("split").at("rule").get<std::string>());
  const json& sources = m.at("sources");
  for (const char* sp : {"train", "val"}) {
    h.field(std::string(sp));
    const json& docs = m.at("documents").at(sp);
    h.field(static_cast<uint64_t>(docs.size()));
    for (auto& d : docs) {
      size_t src = d.get<size_t>();
      h.field(sources.at(src).at("hash").get<std::string>()).field(sources.at(src).at("tokens").get<uint64_t>());
    }
  }
  for (auto& sh : m.at("shards")) h.field(sh.at("file").get<std::string>()).field(sh.at("checksum").get<std::string>());
  // Projects and enrichment, only when present (a data set without them keeps its fingerprint).
  bool any_project = false;
  for (auto& s : sources) any_project = any_project || s.contains("project");
  if (any_project) {
    h.field(std::string("projects"));
    for (auto& s : sources)
      h.field(s.value("project", "")).field(s.value("file", "")).field(s.value("command_hash", ""));
  }
  if (m.contains("enrichment")) {
    h.field(std::string("enrichment")).field(m.at("enrichment").at("columns").dump());
    for (auto& s : sources) h.field(s.at("enrich").get<std::string>());
    for (auto& sh : m.at("shards"))
      for (auto& [c, cj] : sh.at("columns").items())
        h.field(cj.at("file").get<std::string>()).field(cj.at("checksum").get<std::string>());
    if (m.at("enrichment").contains("edges"))
      h.field(std::string("edges")).field(m.at("enrichment").at("edges").at("checksum").get<std::string>());
  }
  if (m.contains("chunks")) {  // --doc-tokens: every document's token count
    h.field(std::string("chunks")).field(m.at("chunking").at("doc_tokens").get<uint64_t>());
    for (const char* sp : {"train", "val"})
      for (auto& n : m.at("chunks").at(sp)) h.field(n.get<uint64_t>());
  }
  return h.hex();
}

json read_manifest(const std::string& dir) {
  std::string path = fs::join(dir, "manifest.json");
  SLM_CHECK(fs::exists(path), "[data] ", dir, " is not a slmlab data set (no manifest.json); build one with slmlab data build --out ", dir);
  json m;
  try {
    m = json::parse(fs::read_file(path));
  } catch (const json::exception& e) {
    fail("[data] ", path, " is not valid JSON (", e.what(), "); rebuild the data set");
  }
  SLM_CHECK(m.is_object() && m.value("format", "") == kDataFormat, "[data] ", path, " is not a ", kDataFormat,
            " manifest; rebuild the data set with this slmlab");
  return m;
}

// Removes a half-written build directory unless released.
struct TempDir {
  std::string path;
  bool keep = false;
  ~TempDir() {
    if (!keep && !path.empty()) fs::remove_all(path);
  }
};

void log(bool quiet, const std::string& s) {
  if (!quiet) std::fprintf(stderr, "%s\n", s.c_str());
}

}  // namespace

const char* split_name(Split s) { return s == Split::Train ? "train" : "val"; }

bool is_dataset(const std::string& dir) { return fs::exists(fs::join(dir, "manifest.json")); }

Chunking chunk_document(uint64_t n_tokens, uint64_t budget, const std::vector<uint32_t>& boundaries) {
  Chunking c;
  uint64_t start = 0;
  auto b = boundaries.begin();
  while (budget > 0 && n_tokens - start > budget) {
    // The last boundary in (start, start + budget]: the chunk then holds whole declarations.
    while (b != boundaries.end() && *b <= start) ++b;
    uint64_t cut = 0;
    for (auto it = b; it != boundaries.end() && *it <= start + budget; ++it) cut = *it;
    if (cut > start) {
      ++c.at_boundary;
    } else {
      cut = start + budget;
      ++c.mid;
    }
    c.sizes.push_back(cut - start);
    start = cut;
  }
  c.sizes.push_back(n_tokens - start);
  return c;
}

BuildResult build(const BuildOptions& opt) {
  using clock = std::chrono::steady_clock;
  BuildResult res;
  SLM_CHECK(!opt.out.empty(), "data build: --out DATA_DIR is required");
  SLM_CHECK(opt.vocab >= kMinVocab, "data build: --vocab ", opt.vocab, " is smaller than the ", N_SPECIAL,
            " special tokens plus 256 bytes; pass --vocab ", kMinVocab, " or more");
  SLM_CHECK(opt.vocab <= (1 << 24), "data build: --vocab ", opt.vocab, " is too large; pass at most 16777216");
  SLM_CHECK(opt.val_frac > 0 && opt.val_frac <= 0.5, "data build: --val-frac ", opt.val_frac,
            " is outside (0, 0.5]; pass e.g. --val-frac 0.01");
  SLM_CHECK(opt.max_file_bytes > 0, "data build: --max-file-bytes must be positive");
  if (fs::exists(opt.out)) {
    SLM_CHECK(fs::is_dir(opt.out), "data build: --out ", opt.out, " exists and is not a directory; choose another path");
    if (is_dataset(opt.out)) {
      SLM_CHECK(opt.force, "data build: ", opt.out, " already holds a slmlab data set; pass --force to rebuild it");
    } else {
      SLM_CHECK(std::filesystem::is_empty(opt.out), "data build: --out ", opt.out,
                " exists and is not a slmlab data set; choose another path or empty it");
    }
  }
  const int threads = resolve_threads(opt.threads);

  // 1. Collect.
  auto t0 = clock::now();
  SLM_CHECK(opt.projects.empty() || opt.src.empty(),
            "data build: pass either --src trees or --project directories, not both");
  std::vector<std::string> roots;
  ProjectList projects;
  Corpus corpus;
  if (!opt.projects.empty()) {
    projects = list_projects(opt.projects);
    for (auto& note : projects.notes) log(opt.quiet, note);
    roots = projects.roots;
    corpus = collect_listed(roots, std::move(projects.files), std::move(projects.skipped), opt.max_file_bytes, threads);
  } else {
    roots = opt.src.empty() ? default_source_roots() : opt.src;
    SLM_CHECK(!roots.empty(), "data build: no default source trees (/usr/include, /usr/src) on this machine; pass --src DIR");
    corpus = collect(roots, opt.max_file_bytes, threads);
  }
  bool enrich_now = opt.enrich;
  if (enrich_now && !enrich_available()) {
    std::fprintf(stderr, "[data] --enrich: this slmlab was built without libclang (install libclang-14-dev and rebuild); building without enrichment\n");
    enrich_now = false;
  }
  SLM_CHECK(!corpus.files.empty(), "data build: no C/C++ source files found under ", roots[0],
            roots.size() > 1 ? " and the other --src trees" : "",
            " (looked for .h .hpp .cc .cpp ... and extension-less c++ headers); pass --src with C++ sources");
  res.files = corpus.files.size();
  {
    std::ostringstream os;
    os << "[data] collected " << corpus.files.size() << " files, " << corpus.bytes() << " bytes from " << roots.size()
       << " trees; skipped " << corpus.skipped.size();
    for (auto& [why, n] : corpus.skip_counts) os << " " << why << "=" << n;
    log(opt.quiet, os.str());
  }

  // 2. Split by content hash, with a floor on validation bytes.
  const size_t n_files = corpus.files.size();
  std::vector<char> is_val(n_files, 0);
  std::vector<double> score(n_files);
  uint64_t val_bytes = 0, total_bytes = corpus.bytes();
  for (size_t i = 0; i < n_files; ++i) {
    score[i] = split_score(corpus.files[i].hash);
    if (score[i] < opt.val_frac) is_val[i] = 1, val_bytes += corpus.files[i].content.size();
  }
  std::vector<char> pinned_train(n_files, 0);  // near-duplicates of training files never return to val
  auto refill = [&] {
    if (val_bytes >= opt.val_min_bytes) return;
    std::vector<size_t> order;
    for (size_t i = 0; i < n_files; ++i)
      if (!is_val[i] && !pinned_train[i]) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
    for (size_t i : order) {
      if (val_bytes >= opt.val_min_bytes) break;
      is_val[i] = 1;
      val_bytes += corpus.files[i].content.size();
    }
  };
  refill();

  // 2b. Decontaminate: a validation file with a near-duplicate in training moves to training (never
  // dropped), the floor is refilled, until no validation file has one.
  std::vector<Signature> sigs(n_files);
  {
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        for (size_t i; (i = next++) < n_files;) sigs[i] = minhash(corpus.files[i].content);
      });
    for (auto& th : pool) th.join();
  }
  json decontaminated = json::array();
  for (;;) {
    std::vector<size_t> train_ids, val_ids;
    for (size_t i = 0; i < n_files; ++i) (is_val[i] ? val_ids : train_ids).push_back(i);
    std::vector<Signature> train_sigs, val_sigs;
    for (size_t i : train_ids) train_sigs.push_back(sigs[i]);
    for (size_t i : val_ids) val_sigs.push_back(sigs[i]);
    const auto dups = near_duplicates(train_sigs, val_sigs);
    if (dups.empty()) break;
    for (const NearDuplicate& d : dups) {
      const size_t v = val_ids[d.query], tr = train_ids[d.match];
      is_val[v] = 0;
      pinned_train[v] = 1;
      val_bytes -= corpus.files[v].content.size();
      decontaminated.push_back({{"path", corpus.files[v].path}, {"near", corpus.files[tr].path}, {"similarity", d.similarity}});
    }
    refill();
  }
  res.val_decontaminated = decontaminated.size();
  if (!decontaminated.empty())
    log(opt.quiet, "[data] moved " + std::to_string(decontaminated.size()) +
                       " validation files to training: near-duplicates of training files");
  uint64_t n_val = std::count(is_val.begin(), is_val.end(), 1);
  SLM_CHECK(val_bytes >= opt.val_min_bytes && val_bytes * 2 <= total_bytes && n_val < n_files,
            "data build: the corpus (", total_bytes, " bytes in ", n_files,
            " files) is too small for a validation split of at least ", opt.val_min_bytes,
            " bytes that leaves most data for training; add sources or lower --val-min-bytes");

  // 3. Tokenizer, trained on the training split only.
  auto t1 = clock::now();
  res.seconds_collect = seconds_since(t0);
  std::vector<ChunkCounts> partial(threads);
  {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        for (size_t i = t; i < n_files; i += threads)
          if (!is_val[i]) count_chunks(corpus.files[i].content, partial[t]);
      });
    for (auto& th : pool) th.join();
  }
  ChunkCounts counts = std::move(partial[0]);
  for (int t = 1; t < threads; ++t) {
    for (auto& [k, v] : partial[t]) counts[k] += v;
    ChunkCounts().swap(partial[t]);
  }
  log(opt.quiet, "[data] training BPE to vocab " + std::to_string(opt.vocab) + " on " +
                     std::to_string(counts.size()) + " unique chunks");
  Tokenizer tok = Tokenizer::train(counts, opt.vocab);
  ChunkCounts().swap(counts);
  res.seconds_tokenizer = seconds_since(t1);

  // 4. Encode every document (parallel, results in their slots).
  auto t2 = clock::now();
  std::vector<std::vector<int32_t>> tokens(n_files);
  {
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        for (size_t i; (i = next++) < n_files;) tok.encode(corpus.files[i].content, tokens[i]);
      });
    for (auto& th : pool) th.join();
  }
  res.seconds_encode = seconds_since(t2);

  // 4b. Enrich: each file parsed with its own compile command; a file that does not parse fully is
  // kept raw (category "unknown") and counted.
  std::vector<Enriched> enriched;
  if (enrich_now) {
    auto t3 = clock::now();
    enriched.resize(n_files);
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        std::vector<uint32_t> lens;
        for (size_t i; (i = next++) < n_files;) {
          const SourceFile& f = corpus.files[i];
          lens.clear();
          for (int32_t id : tokens[i]) lens.push_back(static_cast<uint32_t>(tok.token_string(id).size()));
          std::vector<std::string> args = f.args;
          if (f.project.empty() && std::filesystem::path(f.rel).extension() != ".c") args = {"-x", "c++", "-std=c++17"};
          std::string path = std::filesystem::absolute(f.path).lexically_normal().string();
          enriched[i] = enrich(path, f.content, args, lens);
        }
      });
    for (auto& th : pool) th.join();
    for (auto& e : enriched) (e.parsed ? res.parsed : res.unparsed)++;
    res.enriched = true;
    res.seconds_enrich = seconds_since(t3);
    log(opt.quiet, "[data] enriched " + std::to_string(n_files) + " files with libclang in " +
                       std::to_string(res.seconds_enrich) + "s: " + std::to_string(res.parsed) + " parsed fully, " +
                       std::to_string(res.unparsed) + " kept raw (did not parse)");
  }

  // 5. Write into a temporary sibling, then rename into place.
  std::string out = std::filesystem::path(opt.out).lexically_normal().string();
  if (!out.empty() && out.back() == '/') out.pop_back();
  // Leftovers of a build that was killed are never a data set; clear them first.
  for (const char* stale : {".partial-", ".old-"}) {
    std::error_code ec;
    auto p = std::filesystem::path(out);
    for (auto& e : std::filesystem::directory_iterator(p.parent_path().empty() ? "." : p.parent_path(), ec))
      if (e.path().filename().string().rfind(p.filename().string() + stale, 0) == 0) fs::remove_all(e.path().string());
  }
  TempDir tmp{out + ".partial-" + std::to_string(::getpid())};
  fs::mkdirs(tmp.path);
  const bool wide = opt.vocab > 65536;
  const DType dt = wide ? DType::U32 : DType::U16;

  json m;
  m["format"] = kDataFormat;
  m["name"] = opt.name;
  m["roots"] = roots;
  m["tokenizer"] = {{"file", "tokenizer.bpe"}, {"hash", tok.hash()}, {"vocab", tok.vocab_size()},
                    {"n_special", N_SPECIAL}, {"dtype", wide ? "u32" : "u16"}};
  m["split"] = {{"rule", split_rule(opt.val_frac, opt.val_min_bytes)},
                {"val_frac", opt.val_frac},
                {"val_min_bytes", opt.val_min_bytes}};
  m["max_file_bytes"] = opt.max_file_bytes;
  json sources = json::array();
  for (size_t i = 0; i < n_files; ++i) {
    auto& f = corpus.files[i];
    json src = {{"path", f.path}, {"bytes", f.content.size()}, {"hash", f.hash},
                {"split", is_val[i] ? "val" : "train"}, {"tokens", tokens[i].size()}};
    if (!f.project.empty()) {
      src["project"] = f.project;
      src["file"] = f.rel;
      src["command_hash"] = f.command_hash;  // "" when the project has no compile database
    }
    if (enrich_now) {
      src["enrich"] = enriched[i].parsed ? "parsed" : "raw";
      if (!enriched[i].parsed) src["enrich_error"] = enriched[i].error.substr(0, 300);
    }
    sources.push_back(std::move(src));
  }
  m["sources"] = std::move(sources);
  if (!opt.projects.empty()) {
    json pj = json::array();
    for (size_t p = 0; p < projects.roots.size(); ++p)
      pj.push_back({{"name", projects.names[p]}, {"dir", projects.roots[p]},
                    {"compile_commands", projects.databases[p].empty() ? json(nullptr) : json(projects.databases[p])}});
    m["projects"] = std::move(pj);
  }
  if (enrich_now) {
    json cats = json::array();
    for (int c = 0; c < kCategories; ++c) cats.push_back(category_name(c));
    json roles = json::array();
    for (int r = 0; r < kRoles; ++r) roles.push_back(role_name(r));
    m["enrichment"] = {{"columns", {{"category", {{"dtype", "u8"}, {"values", cats}}},
                                    {"depth", {{"dtype", "u8"}, {"values", "AST depth of the innermost cursor, capped at 255"}}},
                                    {"role", {{"dtype", "u8"}, {"values", roles}}}}},
                       {"libclang", libclang_version()},
                       {"files", n_files}, {"parsed", res.parsed}, {"raw", res.unparsed}};
  }
  json skipped = json::array();
  for (auto& s : corpus.skipped) skipped.push_back({{"path", s.path}, {"reason", s.reason}});
  m["skip_counts"] = corpus.skip_counts;
  m["decontaminated"] = std::move(decontaminated);
  m["skipped"] = std::move(skipped);

  fs::write_atomic(fs::join(tmp.path, "tokenizer.bpe"), tok.serialize());
  if (enrich_now) {  // the edges of every file, in source order, one a line
    std::string text;
    for (size_t i = 0; i < n_files; ++i)
      for (const Edge& e : enriched[i].edges) {
        text += std::to_string(i) + (e.kind == 'c' ? "\tcall\t" : "\ttype\t") + e.from + "\t" + e.to + "\n";
        ++res.edges;
      }
    fs::write_atomic(fs::join(tmp.path, kEdgesFile), text);
    m["enrichment"]["edges"] = {{"file", kEdgesFile}, {"count", res.edges}, {"checksum", hex64(hash64(text))}};
  }
  json chunks = json::object();
  json shards = json::array(), documents = json::object(), counts_json = json::object();
  for (Split sp : {Split::Train, Split::Val}) {
    const bool want_val = sp == Split::Val;
    std::vector<DocRecord> recs;
    std::string payload, cols[DataSet::kColumns];
    uint64_t in_shard = 0, split_tokens = 0, split_bytes = 0;
    uint32_t shard_idx = 0;
    json doc_list = json::array();
    auto flush = [&] {
      if (in_shard == 0) return;
      std::string file = shard_name(sp, shard_idx);
      std::string bytes = encode_file(kTokMagic, dt, in_shard, payload);
      fs::write_atomic(fs::join(tmp.path, file), bytes);
      json entry = {{"file", file}, {"split", split_name(sp)}, {"tokens", in_shard}, {"checksum", hex64(hash64(payload))}};
      if (enrich_now) {
        for (int c = 0; c < DataSet::kColumns; ++c) {
          std::string cf = shard_name(sp, shard_idx, kColumnExt[c]);
          fs::write_atomic(fs::join(tmp.path, cf), encode_file(kColMagic, DType::U8, in_shard, cols[c]));
          entry["columns"][kColumnNames[c]] = {{"file", cf}, {"checksum", hex64(hash64(cols[c]))}};
          cols[c].clear();
        }
      }
      shards.push_back(std::move(entry));
      payload.clear();
      in_shard = 0;
      ++shard_idx;
    };
    for (size_t i = 0; i < n_files; ++i) {
      if (static_cast<bool>(is_val[i]) != want_val) continue;
      const auto& t = tokens[i];
      if (in_shard > 0 && in_shard + t.size() > kShardTokens) flush();
      // A file's documents: one, or its chunks at the token budget (cut where a top-level declaration starts).
      const Chunking ch = chunk_document(t.size(), opt.doc_tokens, enrich_now ? enriched[i].boundaries : std::vector<uint32_t>{});
      res.cuts_at_boundary += ch.at_boundary;
      res.cuts_mid += ch.mid;
      uint64_t first = in_shard;
      for (uint64_t n : ch.sizes) {
        recs.push_back({shard_idx, static_cast<uint32_t>(i), first, n});
        doc_list.push_back(i);
        if (opt.doc_tokens > 0) chunks[split_name(sp)].push_back(n);
        first += n;
      }
      for (int32_t id : t) {
        if (wide) {
          uint32_t v = static_cast<uint32_t>(id);
          payload.append(reinterpret_cast<const char*>(&v), 4);
        } else {
          uint16_t v = static_cast<uint16_t>(id);
          payload.append(reinterpret_cast<const char*>(&v), 2);
        }
      }
      if (enrich_now) {
        cols[0].append(reinterpret_cast<const char*>(enriched[i].category.data()), t.size());
        cols[1].append(reinterpret_cast<const char*>(enriched[i].depth.data()), t.size());
        cols[2].append(reinterpret_cast<const char*>(enriched[i].role.data()), t.size());
      }
      in_shard += t.size();
      split_tokens += t.size();
      split_bytes += corpus.files[i].content.size();
    }
    flush();
    std::string idx_payload(reinterpret_cast<const char*>(recs.data()), recs.size() * sizeof(DocRecord));
    std::string idx_file = std::string(split_name(sp)) + ".idx";
    fs::write_atomic(fs::join(tmp.path, idx_file), encode_file(kIdxMagic, DType::DocRecord, recs.size(), idx_payload));
    documents[split_name(sp)] = std::move(doc_list);
    counts_json[split_name(sp)] = {{"docs", recs.size()}, {"bytes", split_bytes}, {"tokens", split_tokens},
                                   {"index", idx_file}, {"index_checksum", hex64(hash64(idx_payload))}};
    (want_val ? res.val_docs : res.train_docs) = recs.size();
    (want_val ? res.val_tokens : res.train_tokens) = split_tokens;
  }
  m["shards"] = std::move(shards);
  m["documents"] = std::move(documents);
  if (opt.doc_tokens > 0) {
    for (const char* sp : {"train", "val"})
      if (!chunks.contains(sp)) chunks[sp] = json::array();
    m["chunking"] = {{"doc_tokens", opt.doc_tokens}, {"boundary", "top-level declaration or directive (libclang)"},
                     {"cuts_at_boundary", res.cuts_at_boundary}, {"cuts_mid_declaration", res.cuts_mid}};
    m["chunks"] = std::move(chunks);
  }
  m["counts"] = std::move(counts_json);
  res.fingerprint = fingerprint_of(m);
  m["fingerprint"] = res.fingerprint;
  // Paths may be any bytes; invalid UTF-8 is replaced in the manifest (paths are informational).
  fs::write_atomic(fs::join(tmp.path, "manifest.json"), m.dump(1, ' ', false, json::error_handler_t::replace) + "\n");

  // Swap into place: an old data set is moved aside first and removed only after the rename.
  if (fs::exists(out)) {
    std::string old = out + ".old-" + std::to_string(::getpid());
    fs::rename(out, old);
    fs::rename(tmp.path, out);
    fs::remove_all(old);
  } else {
    fs::mkdirs(fs::parent(out));
    fs::rename(tmp.path, out);
  }
  tmp.keep = true;
  return res;
}

DataSet::DataSet(const std::string& dir) : dir_(dir) {
  json m = read_manifest(dir);
  try {
    open(m);
  } catch (const json::exception& e) {  // a key missing or of the wrong type: never an internal error
    fail("[data] ", dir, "/manifest.json is damaged (", e.what(), "); rebuild the data set or run slmlab data verify ", dir);
  }
}

// Opening checks, cheaply, that the manifest, the tokenizer, the shards and the indexes belong
// together: the fingerprint recomputed from the manifest, the tokenizer's hash, every shard's and
// index's checksum, and every indexed document against the manifest's list (source, token count).
// `data verify` re-hashes payloads and decodes documents on top.
void DataSet::open(const json& m) {
  const std::string& dir = dir_;
  SLM_CHECK(fingerprint_of(m) == m.value("fingerprint", ""), "[data] ", dir,
            "/manifest.json fingerprint does not match its contents; the data set was altered, rebuild it");
  manifest_text_ = m.dump(-1, ' ', false, json::error_handler_t::replace);
  fingerprint_ = m.value("fingerprint", "");
  name_ = m.value("name", "");
  enriched_ = m.contains("enrichment");
  for (int c = 0; c < kColumns; ++c) has_col_[c] = enriched_ && m.at("enrichment").at("columns").contains(kColumnNames[c]);
  std::string tok_path = fs::join(dir, m.at("tokenizer").at("file").get<std::string>());
  std::string tok_text = fs::read_file(tok_path);
  tok_ = Tokenizer::deserialize(tok_text);
  SLM_CHECK(tok_.hash() == m.at("tokenizer").at("hash").get<std::string>(), "[data] ", tok_path,
            " does not match the manifest's tokenizer hash; the data set is corrupt, rebuild it");
  for (auto& sh : m.at("shards")) {
    MappedFile f(fs::join(dir, sh.at("file").get<std::string>()), kTokMagic);
    SLM_CHECK(f.count() == sh.at("tokens").get<uint64_t>() && hex64(f.checksum()) == sh.at("checksum").get<std::string>(),
              "[data] ", f.path(), " does not match the manifest (count or checksum); rebuild the data set");
    f.verify();
    SLM_CHECK(f.dtype() == DType::U16 || f.dtype() == DType::U32, "[data] ", f.path(), " is not a token shard; rebuild the data set");
    if (enriched_) {
      auto& cols = sh.at("split") == "val" ? val_cols_ : train_cols_;
      for (int ci = 0; ci < kColumns; ++ci) {
        if (!has_col_[ci]) {
          cols.emplace_back();
          continue;
        }
        const json& cj = sh.at("columns").at(kColumnNames[ci]);
        MappedFile col(fs::join(dir, cj.at("file").get<std::string>()), kColMagic);
        SLM_CHECK(col.dtype() == DType::U8 && col.count() == f.count() && hex64(col.checksum()) == cj.at("checksum").get<std::string>(),
                  "[data] ", col.path(), " does not match the manifest or its token shard (dtype, count or checksum); rebuild the data set");
        col.verify();
        cols.push_back(std::move(col));
      }
    }
    (sh.at("split") == "val" ? val_shards_ : train_shards_).push_back(std::move(f));
  }
  for (Split sp : {Split::Train, Split::Val}) {
    const json& c = m.at("counts").at(split_name(sp));
    MappedFile idx(fs::join(dir, c.at("index").get<std::string>()), kIdxMagic);
    SLM_CHECK(idx.dtype() == DType::DocRecord && hex64(idx.checksum()) == c.at("index_checksum").get<std::string>(),
              "[data] ", idx.path(), " does not match the manifest; rebuild the data set");
    idx.verify();
    auto& docs = sp == Split::Train ? train_docs_ : val_docs_;
    const auto* r = static_cast<const DocRecord*>(idx.data());
    docs.assign(r, r + idx.count());
    const size_t n_sh = n_shards(sp);
    for (auto& d : docs)
      SLM_CHECK(d.shard < n_sh && d.offset + d.n_tokens <= shard(sp, d.shard).count() &&
                    d.source < m.at("sources").size(),
                "[data] ", idx.path(), " points outside its shards; rebuild the data set");
    const json& listed = m.at("documents").at(split_name(sp));
    SLM_CHECK(listed.size() == docs.size(), "[data] ", idx.path(), " holds ", docs.size(), " documents, the manifest lists ",
              listed.size(), "; rebuild the data set");
    // Chunked (--doc-tokens): each document's count is listed, and a file's documents add up to it.
    const json* chunks = m.contains("chunks") ? &m.at("chunks").at(split_name(sp)) : nullptr;
    SLM_CHECK(!chunks || chunks->size() == docs.size(), "[data] ", dir, "/manifest.json lists ", chunks ? chunks->size() : 0,
              " chunk sizes for ", docs.size(), " ", split_name(sp), " documents; rebuild the data set");
    uint64_t run = 0;  // tokens of the current file's documents so far
    for (size_t i = 0; i < docs.size(); ++i) {
      const uint64_t file_tokens = m.at("sources").at(docs[i].source).at("tokens").get<uint64_t>();
      run += docs[i].n_tokens;
      const bool last_of_file = i + 1 == docs.size() || docs[i + 1].source != docs[i].source;
      SLM_CHECK(listed.at(i).get<uint64_t>() == docs[i].source &&
                    (chunks ? chunks->at(i).get<uint64_t>() == docs[i].n_tokens && (run <= file_tokens) &&
                                  (!last_of_file || run == file_tokens)
                            : file_tokens == docs[i].n_tokens),
                "[data] ", idx.path(), " document ", i, " disagrees with the manifest (source or token count); rebuild the data set");
      if (last_of_file) run = 0;
    }
  }
  if (enriched_ && m.at("enrichment").contains("edges")) {
    const json& ej = m.at("enrichment").at("edges");
    const std::string path = fs::join(dir, ej.at("file").get<std::string>());
    SLM_CHECK(fs::exists(path), "[data] missing ", path, "; rebuild the data set");
    const std::string text = fs::read_file(path);
    SLM_CHECK(hex64(hash64(text)) == ej.at("checksum").get<std::string>(), "[data] ", path,
              " is corrupt (checksum differs from the manifest); rebuild the data set");
    for (size_t at = 0; at < text.size();) {
      const size_t eol = text.find('\n', at);
      const std::string line = text.substr(at, eol == std::string::npos ? std::string::npos : eol - at);
      at = eol == std::string::npos ? text.size() : eol + 1;
      const size_t t1 = line.find('\t'), t2 = line.find('\t', t1 + 1), t3 = line.find('\t', t2 + 1);
      SLM_CHECK(t3 != std::string::npos && line.find('\t', t3 + 1) == std::string::npos, "[data] ", path,
                " has a malformed line; rebuild the data set");
      const std::string kind = line.substr(t1 + 1, t2 - t1 - 1);
      SLM_CHECK(kind == "call" || kind == "type", "[data] ", path, " has an edge of unknown kind '", kind, "'; rebuild the data set");
      edges_.push_back({static_cast<uint32_t>(std::stoul(line.substr(0, t1))),
                        Edge{line.substr(t2 + 1, t3 - t2 - 1), line.substr(t3 + 1), kind == "call" ? 'c' : 't'}});
    }
    SLM_CHECK(edges_.size() == ej.at("count").get<uint64_t>(), "[data] ", path, " holds ", edges_.size(),
              " edges, the manifest says ", ej.at("count").get<uint64_t>(), "; rebuild the data set");
    has_edges_ = true;
  }
  SLM_CHECK(!val_docs_.empty(), "[data] ", dir, " has an empty validation split; rebuild it");
}

uint64_t DataSet::n_tokens(Split s) const {
  uint64_t n = 0;
  for (auto& d : docs(s)) n += d.n_tokens;
  return n;
}

std::vector<int32_t> DataSet::doc_tokens(Split s, size_t i) const {
  const DocRecord& d = docs(s)[i];
  const MappedFile& f = shard(s, d.shard);
  std::vector<int32_t> out(d.n_tokens);
  for (uint64_t k = 0; k < d.n_tokens; ++k) out[k] = f.token(d.offset + k);
  return out;
}

std::vector<Edge> DataSet::edges(uint32_t source) const {
  SLM_CHECK(has_edges_, "[data] ", dir_, " has no dependency edges; rebuild it with slmlab data build --enrich");
  std::vector<Edge> out;
  auto it = std::lower_bound(edges_.begin(), edges_.end(), source,
                             [](const std::pair<uint32_t, Edge>& e, uint32_t s) { return e.first < s; });
  for (; it != edges_.end() && it->first == source; ++it) out.push_back(it->second);
  return out;
}

std::vector<uint8_t> DataSet::doc_column(Split s, size_t i, Column c) const {
  SLM_CHECK(has_column(c), "[data] ", dir_, " has no ", kColumnNames[c],
            " column; rebuild it with this slmlab's data build --enrich");
  const DocRecord& d = docs(s)[i];
  const auto* p = static_cast<const uint8_t*>(column(s, d.shard, c).data());
  return std::vector<uint8_t>(p + d.offset, p + d.offset + d.n_tokens);
}

VerifyResult verify(const std::string& dir, uint64_t sample, int threads) {
  VerifyResult r;
  json m = read_manifest(dir);
  DataSet ds(dir);  // headers, checksums of shards and indexes, tokenizer hash
  int n_cols = 0;
  for (int c = 0; c < DataSet::kColumns; ++c) n_cols += ds.has_column(static_cast<DataSet::Column>(c));
  // shards (and their columns), 2 indexes, tokenizer, edges
  r.files_checked = m["shards"].size() * (1 + n_cols) + 3 + (ds.has_edges() ? 1 : 0);
  const std::string fp = fingerprint_of(m);
  SLM_CHECK(fp == m.value("fingerprint", ""), "[data] ", dir, "/manifest.json fingerprint does not match its contents");
  const json& sources = m["sources"];
  const Tokenizer& tok = ds.tokenizer();
  const int32_t vocab = tok.vocab_size();
  // Every document decodes to the exact bytes of its source (hash and size); a sample re-encodes.
  struct Job {  // one source file: its documents i .. i + n - 1 (several when chunked)
    Split sp;
    size_t i, n;
  };
  std::vector<Job> jobs;
  for (Split sp : {Split::Train, Split::Val}) {
    const json& listed = m["documents"][split_name(sp)];
    SLM_CHECK(listed.size() == ds.docs(sp).size(), "[data] ", split_name(sp), ".idx lists ", ds.docs(sp).size(),
              " documents, the manifest ", listed.size());
    for (size_t i = 0; i < ds.docs(sp).size(); ++i) {
      SLM_CHECK(listed[i].get<size_t>() == ds.docs(sp)[i].source, "[data] ", split_name(sp),
                ".idx disagrees with the manifest at document ", i);
      if (i > 0 && ds.docs(sp)[i - 1].source == ds.docs(sp)[i].source) ++jobs.back().n;
      else jobs.push_back({sp, i, 1});
    }
  }
  const uint64_t stride = (sample == 0 || sample >= jobs.size()) ? 1 : jobs.size() / sample;
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> reencoded{0};
  std::vector<std::string> errors(resolve_threads(threads));
  std::vector<std::thread> pool;
  for (size_t t = 0; t < errors.size(); ++t)
    pool.emplace_back([&, t] {
      try {
        for (size_t j; (j = next++) < jobs.size();) {
          const auto& d = ds.docs(jobs[j].sp)[jobs[j].i];
          const json& src = sources[d.source];
          std::vector<int32_t> ids;
          for (size_t k = 0; k < jobs[j].n; ++k) {
            auto part = ds.doc_tokens(jobs[j].sp, jobs[j].i + k);
            ids.insert(ids.end(), part.begin(), part.end());
          }
          SLM_CHECK(src["tokens"].get<uint64_t>() == ids.size(), "[data] token count of ", src["path"].get<std::string>(),
                    " differs from the manifest");
          for (int32_t id : ids)
            SLM_CHECK(id >= N_SPECIAL && id < vocab, "[data] token id ", id, " out of range in ",
                      src["path"].get<std::string>());
          if (ds.enriched()) {  // categories in the fixed set; a raw file is unknown throughout, a parsed one nowhere
            const bool parsed = src.at("enrich").get<std::string>() == "parsed";
            for (size_t k = 0; k < jobs[j].n; ++k) {
              for (uint8_t c : ds.doc_column(jobs[j].sp, jobs[j].i + k, DataSet::Category))
                SLM_CHECK(c < kCategories && (c == kUnknown) != parsed, "[data] structure category ", int(c), " of ",
                          src["path"].get<std::string>(), " is invalid for a ", parsed ? "parsed" : "raw", " file; rebuild the data set");
              if (ds.has_column(DataSet::Role))
                for (uint8_t r : ds.doc_column(jobs[j].sp, jobs[j].i + k, DataSet::Role))
                  SLM_CHECK(r < kRoles && (parsed || r == kNoRole), "[data] name role ", int(r), " of ",
                            src["path"].get<std::string>(), " is invalid; rebuild the data set");
            }
          }
          std::string text = tok.decode(ids);
          SLM_CHECK(text.size() == src["bytes"].get<uint64_t>() && hash128_hex(text) == src["hash"].get<std::string>(),
                    "[data] tokens of ", src["path"].get<std::string>(), " do not decode to the source bytes");
          if (j % stride == 0) {
            SLM_CHECK(tok.encode(text) == ids, "[data] re-encoding ", src["path"].get<std::string>(),
                      " gives different tokens; the tokenizer does not match the shards");
            ++reencoded;
          }
        }
      } catch (const Error& e) {
        errors[t] = e.what();
        next = jobs.size();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (!e.empty()) throw Error(e);
  r.docs_decoded = ds.docs(Split::Train).size() + ds.docs(Split::Val).size();
  r.docs_reencoded = reencoded;
  return r;
}

namespace {

// A token's bytes shown safely on one line: printable ASCII kept, the rest escaped.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  return out;
}

}  // namespace

std::string stats(const std::string& dir, int top, bool as_json) {
  json m = read_manifest(dir);
  DataSet ds(dir);
  const Tokenizer& tok = ds.tokenizer();
  std::vector<uint64_t> freq(tok.vocab_size(), 0);
  for (Split sp : {Split::Train, Split::Val})
    for (size_t s = 0; s < ds.n_shards(sp); ++s) {
      const MappedFile& f = ds.shard(sp, s);
      for (uint64_t i = 0; i < f.count(); ++i) freq[f.token(i)]++;
    }
  std::vector<int32_t> ids(freq.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return freq[a] > freq[b]; });
  uint64_t total = 0;
  for (auto f : freq) total += f;

  json out;
  out["name"] = m["name"];
  out["fingerprint"] = ds.fingerprint();
  out["vocab"] = tok.vocab_size();
  out["files"] = m["sources"].size();
  out["skipped"] = m["skip_counts"];
  out["val_decontaminated"] = m.contains("decontaminated") ? m["decontaminated"].size() : 0;
  for (const char* sp : {"train", "val"}) {
    const json& c = m["counts"][sp];
    out[sp] = {{"docs", c["docs"]}, {"bytes", c["bytes"]}, {"tokens", c["tokens"]}};
  }
  const double val_bpt = m["counts"]["val"]["bytes"].get<double>() / std::max<double>(1, m["counts"]["val"]["tokens"].get<double>());
  out["val_bytes_per_token"] = val_bpt;
  if (m.contains("enrichment")) {
    const json& e = m["enrichment"];
    const double files = std::max<double>(1, e["files"].get<double>());
    std::vector<uint64_t> per_cat(kCategories, 0);
    for (Split sp : {Split::Train, Split::Val})
      for (uint32_t s = 0; s < ds.n_shards(sp); ++s) {
        const MappedFile& c = ds.column(sp, s, DataSet::Category);
        const auto* p = static_cast<const uint8_t*>(c.data());
        for (uint64_t i = 0; i < c.count(); ++i) per_cat[p[i] < kCategories ? p[i] : 0]++;
      }
    json cats = json::object();
    for (int c = 0; c < kCategories; ++c) cats[category_name(c)] = per_cat[c];
    out["enrichment"] = {{"libclang", e["libclang"]}, {"files", e["files"]}, {"parsed", e["parsed"]}, {"raw", e["raw"]},
                         {"parse_coverage", e["parsed"].get<double>() / files},
                         {"token_categories", cats}};
    if (ds.has_column(DataSet::Role)) {
      std::vector<uint64_t> per_role(kRoles, 0);
      for (Split sp : {Split::Train, Split::Val})
        for (uint32_t s = 0; s < ds.n_shards(sp); ++s) {
          const MappedFile& c = ds.column(sp, s, DataSet::Role);
          const auto* p = static_cast<const uint8_t*>(c.data());
          for (uint64_t i = 0; i < c.count(); ++i) per_role[p[i] < kRoles ? p[i] : 0]++;
        }
      json roles = json::object();
      for (int r = 0; r < kRoles; ++r) roles[role_name(r)] = per_role[r];
      out["enrichment"]["token_roles"] = roles;
    }
    if (e.contains("edges")) out["enrichment"]["edges"] = e["edges"]["count"];
  }
  if (m.contains("chunking")) out["chunking"] = m["chunking"];
  json tops = json::array();
  for (int k = 0; k < top && k < static_cast<int>(ids.size()); ++k)
    tops.push_back({{"id", ids[k]}, {"count", freq[ids[k]]}, {"text", printable(tok.token_string(ids[k]))}});
  if (as_json) {
    out["top_tokens"] = tops;
    return out.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
  }
  std::ostringstream os;
  os << "data set    " << m["name"].get<std::string>() << " (" << dir << ")\n"
     << "fingerprint " << ds.fingerprint() << "\n"
     << "vocab       " << tok.vocab_size() << " (" << N_SPECIAL << " special, 256 bytes, "
     << tok.merges().size() << " merges)\n"
     << "files       " << m["sources"].size() << " kept";
  for (auto& [why, n] : m["skip_counts"].items()) os << ", " << n.get<uint64_t>() << " skipped " << why;
  if (m.contains("decontaminated"))
    os << "; " << m["decontaminated"].size() << " moved from val to train as near-duplicates of training files";
  os << "\n";
  for (const char* sp : {"train", "val"}) {
    const json& c = m["counts"][sp];
    os << std::left << std::setw(12) << sp << c["docs"].get<uint64_t>() << " docs, " << c["bytes"].get<uint64_t>()
       << " bytes, " << c["tokens"].get<uint64_t>() << " tokens\n";
  }
  if (out.contains("enrichment")) {
    const json& e = out["enrichment"];
    os << "enrichment  " << e["libclang"].get<std::string>() << ": parse coverage " << std::fixed << std::setprecision(1)
       << 100.0 * e["parse_coverage"].get<double>() << "% (" << e["parsed"].get<uint64_t>() << " of " << e["files"].get<uint64_t>()
       << " files parsed fully, " << e["raw"].get<uint64_t>() << " kept raw)\ntoken categories:";
    for (auto& [k, v] : e["token_categories"].items()) os << " " << k << "=" << v.get<uint64_t>();
    os << "\n";
    if (e.contains("token_roles")) {
      os << "token roles:";
      for (auto& [k, v] : e["token_roles"].items()) os << " " << k << "=" << v.get<uint64_t>();
      os << "\n";
    }
    if (e.contains("edges")) os << "dependency edges " << e["edges"].get<uint64_t>() << " (calls and type uses libclang resolved)\n";
  }
  if (out.contains("chunking")) {
    const json& c = out["chunking"];
    const uint64_t at = c["cuts_at_boundary"].get<uint64_t>(), mid = c["cuts_mid_declaration"].get<uint64_t>();
    os << "chunking    documents of at most " << c["doc_tokens"].get<uint64_t>() << " tokens: " << at + mid << " cuts, " << at
       << " at a top-level declaration, " << mid << " inside one\n";
  }
  os << "val bytes/token " << std::fixed << std::setprecision(3) << val_bpt << "\n"
     << "most frequent tokens:\n";
  for (auto& t : tops)
    os << "  " << std::right << std::setw(6) << t["id"].get<int>() << "  " << std::setw(10) << t["count"].get<uint64_t>()
       << "  " << std::setprecision(2) << 100.0 * t["count"].get<double>() / std::max<uint64_t>(1, total) << "%  '"
       << t["text"].get<std::string>() << "'\n";
  return os.str();
}

}  // namespace slm::data
