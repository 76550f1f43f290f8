// A data set on disk (DATA_DIR):
//   manifest.json       sources (path, size, hash, split, tokens), skips, split rule, tokenizer hash,
//                       shards with checksums, counts, and the data fingerprint
//   tokenizer.bpe       the BPE tokenizer (Tokenizer::serialize)
//   {train,val}_NNN.tok token shards (shard.h);  {train,val}.idx document indexes
//   {train,val}_NNN.cat, .dep, .rol  (enriched data sets only) per-token structure category, AST
//                       depth and name role (u8, token-aligned with the shard of the same number; enrich.h)
//   edges.tsv           (enriched data sets only) per source file the dependency edges libclang
//                       resolved, one a line: source index, call|type, from, to (sorted)
// With --doc-tokens N a file is cut into documents of at most N tokens (chunk_document); the manifest
// then lists each document's token count under "chunks", and a document's source is its file.
// Built into a temporary sibling directory and renamed into place only when complete.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/enrich.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace slm::data {

constexpr const char* kDataFormat = "slmlab-data v1";

struct BuildOptions {
  std::vector<std::string> src;     // empty: default_source_roots()
  std::string out;                  // DATA_DIR
  int32_t vocab = 8192;             // incl. specials and bytes
  double val_frac = 0.01;           // fraction of documents held out
  uint64_t val_min_bytes = 65536;   // floor on validation bytes
  std::string name = "cpp-local";
  uint64_t max_file_bytes = 1 << 20;
  int threads = 0;                  // 0 = all cores
  bool force = false;               // replace an existing slmlab data set
  bool quiet = false;
  std::vector<std::string> projects;  // --project DIRs (project.h); exclusive with src
  bool enrich = false;                // per-token structure columns from libclang (enrich.h)
  uint64_t doc_tokens = 0;            // --doc-tokens: documents of at most this many tokens; 0 = a file each
};

struct BuildResult {
  std::string fingerprint;
  uint64_t files = 0, train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
  uint64_t val_decontaminated = 0;  // validation files moved to training as near-duplicates
  double seconds_collect = 0, seconds_tokenizer = 0, seconds_encode = 0, seconds_enrich = 0;
  bool enriched = false;
  uint64_t parsed = 0, unparsed = 0;  // enrichment: files parsed fully / kept raw
  uint64_t edges = 0;                 // dependency edges stored
  uint64_t cuts_at_boundary = 0, cuts_mid = 0;  // --doc-tokens: cuts at a top-level boundary / inside a declaration
};

// A file's documents at a token budget: each ends at the last boundary (token index, enrich.h
// Enriched::boundaries) that keeps it within the budget, or at the budget itself when none does (a
// cut inside a declaration; a file without a parse has no boundaries). budget 0: one document.
struct Chunking {
  std::vector<uint64_t> sizes;  // token counts, summing to the file's
  uint64_t at_boundary = 0, mid = 0;
};
Chunking chunk_document(uint64_t n_tokens, uint64_t budget, const std::vector<uint32_t>& boundaries);

BuildResult build(const BuildOptions& opt);

enum class Split { Train, Val };
const char* split_name(Split s);

// An opened data set: manifest facts, tokenizer, mapped shards and document indexes.
class DataSet {
 public:
  explicit DataSet(const std::string& dir);  // validates headers; throws slm::Error with the reason

  const std::string& dir() const { return dir_; }
  const std::string& fingerprint() const { return fingerprint_; }
  const std::string& name() const { return name_; }
  const Tokenizer& tokenizer() const { return tok_; }
  const std::vector<DocRecord>& docs(Split s) const { return s == Split::Train ? train_docs_ : val_docs_; }
  const MappedFile& shard(Split s, uint32_t i) const { return (s == Split::Train ? train_shards_ : val_shards_)[i]; }
  size_t n_shards(Split s) const { return (s == Split::Train ? train_shards_ : val_shards_).size(); }
  uint64_t n_tokens(Split s) const;
  // Tokens of one document, widened to int32.
  std::vector<int32_t> doc_tokens(Split s, size_t i) const;
  const std::string& manifest_text() const { return manifest_text_; }
  // Enrichment columns (enrich.h): present only in data sets built with --enrich (role, and the
  // edges, only in those built since they were added: has_column says).
  enum Column { Category = 0, Depth = 1, Role = 2 };
  static constexpr int kColumns = 3;
  bool enriched() const { return enriched_; }
  bool has_column(Column c) const { return enriched_ && has_col_[c]; }
  const MappedFile& column(Split s, uint32_t shard, Column c) const {
    return (s == Split::Train ? train_cols_ : val_cols_)[shard * kColumns + c];
  }
  std::vector<uint8_t> doc_column(Split s, size_t i, Column c) const;
  // The dependency edges of manifest source `source` (its file's, shared by the file's documents).
  std::vector<Edge> edges(uint32_t source) const;
  bool has_edges() const { return has_edges_; }

 private:
  void open(const nlohmann::ordered_json& manifest);
  std::string dir_, fingerprint_, name_, manifest_text_;
  Tokenizer tok_;
  std::vector<MappedFile> train_shards_, val_shards_;
  bool enriched_ = false;
  bool has_col_[kColumns] = {false, false, false};
  std::vector<MappedFile> train_cols_, val_cols_;  // per shard: category, depth, role (empty when absent)
  bool has_edges_ = false;
  std::vector<std::pair<uint32_t, Edge>> edges_;  // (source, edge), sorted
  std::vector<DocRecord> train_docs_, val_docs_;
};

// True when `dir` holds a slmlab manifest (complete or not, it is ours to replace).
bool is_dataset(const std::string& dir);

// Re-hashes everything, recomputes the fingerprint, decodes every document against its source hash
// and re-encodes `sample` documents (0 = all). Throws slm::Error with a one-line reason.
struct VerifyResult {
  uint64_t files_checked = 0, docs_decoded = 0, docs_reencoded = 0;
};
VerifyResult verify(const std::string& dir, uint64_t sample, int threads);

// `slmlab data stats`: human text or JSON.
std::string stats(const std::string& dir, int top, bool json);

}  // namespace slm::data
