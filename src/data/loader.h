// The training and validation loader: packed rows of context+1 tokens.
// Every row starts with BOS. Documents are laid end to end, each opened by a BOS; a document cut by
// the end of a row continues in the next row after a fresh BOS, so no token is dropped. doc_ids
// number the segments within a row (0, 1, ...) so attention can be masked per document.
// The order is a pure function of (seed, epoch); the position is a small state that a checkpoint
// saves and restores. Rank r of W takes global rows r, r+W, r+2W, ...
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/transforms.h"

namespace slm::data {

// The structure inputs of one position (the `structure` module, model/structure.h): the enrichment
// columns (enrich.h) packed in one int32, category | role << 4 | depth << 8 (depth capped at 255 when
// stored); 0 at a BOS, and role 0 in a data set built before the role column.
inline int32_t structure_code(uint8_t category, uint8_t depth, uint8_t role) {
  return static_cast<int32_t>(category) | static_cast<int32_t>(role) << 4 | static_cast<int32_t>(depth) << 8;
}

struct LoaderState {
  uint64_t epoch = 0;   // passes over the split completed
  uint64_t doc = 0;     // position in the epoch's document order
  uint64_t offset = 0;  // tokens of that document already emitted
  uint64_t rows = 0;    // global rows produced so far (all ranks)
  bool operator==(const LoaderState& o) const {
    return epoch == o.epoch && doc == o.doc && offset == o.offset && rows == o.rows;
  }
};

class Loader {
 public:
  // shuffle: a fresh seeded permutation of the documents each epoch (train); false keeps manifest order (val).
  Loader(const DataSet& ds, Split split, int64_t context, uint64_t seed, bool shuffle, int rank = 0, int world = 1);

  int64_t row_len() const { return row_len_; }  // context + 1
  // Writes this rank's next row: tokens[row_len] and doc_ids[row_len], and with feed_structure() on,
  // structure[row_len] (structure_code of each position).
  void next(int32_t* tokens, int32_t* doc_ids, int32_t* structure = nullptr);
  // From now on next() also writes the structure codes. Fails with the reason on a data set without
  // enrichment, or with transforms (a transformed document's tokens have no parse of their own).
  void feed_structure();
  bool feeds_structure() const { return structure_; }
  // Skips the other ranks' rows up to the next multiple of world rows: at a step's end every rank's
  // state is then the same, the state a one-rank loader has after those rows (what a checkpoint keeps).
  void align();
  const LoaderState& state() const { return st_; }
  void restore(const LoaderState& s);
  // Data-side objectives (FIM, IFIM, SRI): each document is transformed, seeded by (seed, epoch,
  // position), before it is packed. Training split only: validation data is never transformed.
  void set_transforms(const TransformSet& t);

 private:
  void fill(int32_t* tokens, int32_t* doc_ids, int32_t* structure);  // the next global row
  void shuffle_epoch();

  const DataSet& ds_;
  Split split_;
  int64_t row_len_;
  uint64_t seed_;
  bool shuffle_;
  int rank_, world_;
  LoaderState st_;
  std::vector<uint32_t> order_;
  std::vector<int32_t> scratch_tok_, scratch_doc_, scratch_struct_;
  bool structure_ = false;
  TransformSet tf_;
  std::vector<int32_t> cur_;          // the current document, transformed
  uint64_t cur_epoch_ = ~0ull, cur_doc_ = ~0ull;
  const std::vector<int32_t>& transformed_doc();
};

// The validation rows one evaluation scores. The split is laid out once, in manifest order, as the
// loader packs it (rows_in_split whole rows; the tail that would wrap into a second pass is never
// scored, so no token counts twice); a budget of `tokens` targets takes ceil(tokens / context) rows
// spread evenly over the whole split (row floor(i x rows_in_split / n_rows) for i = 0, 1, ...), so a
// partial budget sees every part of the split rather than its first files, and the last row scores
// only the targets the budget has left. A budget beyond the split scores the whole split once.
struct EvalRows {
  int64_t context = 0, n_rows = 0, rows_in_split = 0;
  std::vector<int32_t> tokens, doc_ids;  // n_rows x (context + 1)
  std::vector<int32_t> structure;        // n_rows x (context + 1) structure codes, when asked for
  int64_t last_row_targets = 0;          // targets scored in the last row (<= context)
  uint64_t targets = 0;                  // targets scored in all (special tokens included; they carry no bytes)
  uint64_t docs_covered = 0, docs_total = 0;
};
// `structure`: also the rows' structure codes (Loader::feed_structure; the data set must be enriched).
EvalRows eval_rows(const DataSet& ds, int64_t context, uint64_t tokens, bool structure = false);
// "scored 8192 targets in 32 of 97 rows, covering 41 of 120 validation documents"
std::string coverage_text(const EvalRows& e);

// Seeded Fisher-Yates with a portable generator (std::shuffle's algorithm is implementation-defined).
std::vector<uint32_t> permutation(uint32_t n, uint64_t seed);

}  // namespace slm::data
