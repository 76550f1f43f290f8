#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"
#include "common/rng.h"

namespace slm::data {

std::vector<uint32_t> permutation(uint32_t n, uint64_t seed) {
  std::vector<uint32_t> p(n);
  std::iota(p.begin(), p.end(), 0u);
  SplitMix64 rng{seed};
  for (uint32_t i = n; i > 1; --i) std::swap(p[i - 1], p[rng.below(i)]);
  return p;
}

Loader::Loader(const DataSet& ds, Split split, int64_t context, uint64_t seed, bool shuffle, int rank, int world)
    : ds_(ds), split_(split), row_len_(context + 1), seed_(seed), shuffle_(shuffle), rank_(rank), world_(world) {
  SLM_CHECK(context >= 1, "[loader] context must be at least 1, got ", context);
  SLM_CHECK(world >= 1 && rank >= 0 && rank < world, "[loader] rank ", rank, " is outside world size ", world);
  SLM_CHECK(!ds.docs(split).empty(), "[loader] the ", split_name(split), " split of ", ds.dir(), " is empty");
  scratch_tok_.resize(row_len_);
  scratch_doc_.resize(row_len_);
  shuffle_epoch();
}

void Loader::shuffle_epoch() {
  const uint32_t n = static_cast<uint32_t>(ds_.docs(split_).size());
  if (shuffle_) {
    order_ = permutation(n, seed_ * 0x100000001b3ull + st_.epoch);
  } else {
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0u);
  }
}

void Loader::restore(const LoaderState& s) {
  SLM_CHECK(s.doc < order_.size() || (s.doc == 0 && s.offset == 0), "[loader] saved position (document ", s.doc,
            ") is outside the ", split_name(split_), " split; the checkpoint belongs to another data set");
  st_ = s;
  shuffle_epoch();
  const auto& d = ds_.docs(split_)[order_[st_.doc]];
  const uint64_t n = tf_.empty() ? d.n_tokens : transformed_doc().size();
  SLM_CHECK(st_.offset < n, "[loader] saved offset is outside its document; the checkpoint belongs to another data set");
}

void Loader::feed_structure() {
  SLM_CHECK(ds_.enriched(), "[structure] data set ", ds_.dir(), " has no structure columns; build it with slmlab data build --enrich (e.g. --project DIR --enrich)");
  SLM_CHECK(tf_.empty(), "[structure] the structure columns describe the documents as parsed; they cannot follow FIM, IFIM or SRI, which reorder them: drop one");
  structure_ = true;
  scratch_struct_.resize(row_len_);
}

void Loader::set_transforms(const TransformSet& t) {
  SLM_CHECK(split_ == Split::Train || t.empty(), "[loader] validation data is never transformed (FIM, IFIM, SRI)");
  SLM_CHECK(!structure_ || t.empty(), "[structure] the structure columns describe the documents as parsed; they cannot follow FIM, IFIM or SRI, which reorder them: drop one");
  validate(t);
  tf_ = t;
  cur_epoch_ = cur_doc_ = ~0ull;
}

const std::vector<int32_t>& Loader::transformed_doc() {
  if (cur_epoch_ != st_.epoch || cur_doc_ != st_.doc) {
    uint64_t x = seed_ ^ 0x5bd1e9955bd1e995ull;
    const uint64_t key = splitmix64(x) ^ (st_.epoch * 0x9e3779b97f4a7c15ull) ^ (st_.doc * 0xc2b2ae3d27d4eb4full);
    cur_ = transform_tokens(ds_.tokenizer(), ds_.doc_tokens(split_, order_[st_.doc]), tf_, key);
    cur_epoch_ = st_.epoch;
    cur_doc_ = st_.doc;
  }
  return cur_;
}

void Loader::fill(int32_t* tokens, int32_t* doc_ids, int32_t* structure) {
  const auto& docs = ds_.docs(split_);
  int64_t pos = 0;
  int32_t seg = 0;
  while (pos < row_len_) {
    const DocRecord& d = docs[order_[st_.doc]];
    tokens[pos] = TOK_BOS;
    doc_ids[pos] = seg;
    if (structure) structure[pos] = 0;
    if (++pos == row_len_) break;  // the document starts in the next row, after its own BOS
    const std::vector<int32_t>* tdoc = tf_.empty() ? nullptr : &transformed_doc();
    const uint64_t n_tokens = tdoc ? tdoc->size() : d.n_tokens;
    const uint64_t take = std::min<uint64_t>(n_tokens - st_.offset, static_cast<uint64_t>(row_len_ - pos));
    if (tdoc) {
      for (uint64_t k = 0; k < take; ++k) {
        tokens[pos + k] = (*tdoc)[st_.offset + k];
        doc_ids[pos + k] = seg;
      }
    } else {
      const MappedFile& sh = ds_.shard(split_, d.shard);
      for (uint64_t k = 0; k < take; ++k) {
        tokens[pos + k] = sh.token(d.offset + st_.offset + k);
        doc_ids[pos + k] = seg;
      }
      if (structure) {
        auto col = [&](DataSet::Column c) {
          return ds_.has_column(c) ? static_cast<const uint8_t*>(ds_.column(split_, d.shard, c).data()) + d.offset + st_.offset
                                   : nullptr;
        };
        const uint8_t *cat = col(DataSet::Category), *dep = col(DataSet::Depth), *rol = col(DataSet::Role);
        for (uint64_t k = 0; k < take; ++k) structure[pos + k] = structure_code(cat[k], dep[k], rol ? rol[k] : 0);
      }
    }
    pos += static_cast<int64_t>(take);
    st_.offset += take;
    if (st_.offset == n_tokens) {
      st_.offset = 0;
      if (++st_.doc == order_.size()) {
        st_.doc = 0;
        ++st_.epoch;
        shuffle_epoch();
      }
    }
    ++seg;
  }
  ++st_.rows;
}

void Loader::next(int32_t* tokens, int32_t* doc_ids, int32_t* structure) {
  SLM_CHECK(!structure || structure_, "internal: structure codes asked of a loader without feed_structure()");
  while (st_.rows % world_ != static_cast<uint64_t>(rank_)) fill(scratch_tok_.data(), scratch_doc_.data(), nullptr);
  fill(tokens, doc_ids, structure);
}

void Loader::align() {
  while (st_.rows % world_ != 0) fill(scratch_tok_.data(), scratch_doc_.data(), nullptr);
}

EvalRows eval_rows(const DataSet& ds, int64_t context, uint64_t tokens, bool structure) {
  Loader l(ds, Split::Val, context, 0, false);
  if (structure) l.feed_structure();
  const int64_t row = l.row_len();
  // One pass: where each whole row starts, and the documents it touches.
  std::vector<LoaderState> starts;
  std::vector<std::pair<uint64_t, uint64_t>> spans;  // first and last document of each row
  std::vector<int32_t> tok(row), doc(row);
  for (;;) {
    const LoaderState s = l.state();
    l.next(tok.data(), doc.data());
    const LoaderState& e = l.state();
    if (e.epoch > 0 && (e.doc > 0 || e.offset > 0)) break;  // this row wraps into a second pass
    starts.push_back(s);
    const uint64_t n_docs = ds.docs(Split::Val).size();
    const uint64_t last = e.epoch > 0 ? n_docs - 1 : (e.offset > 0 ? e.doc : e.doc - 1);
    spans.push_back({s.doc, last});
    if (e.epoch > 0) break;  // ended exactly at the end of the split
  }
  EvalRows r;
  r.context = context;
  r.rows_in_split = static_cast<int64_t>(starts.size());
  r.docs_total = ds.docs(Split::Val).size();
  SLM_CHECK(r.rows_in_split > 0, "[eval] the validation split holds less than one row of context ", context,
            "; evaluate at a shorter context or rebuild the data set with a larger --val-frac");
  const uint64_t cap = static_cast<uint64_t>(r.rows_in_split) * static_cast<uint64_t>(context);
  r.targets = std::min<uint64_t>(tokens, cap);
  SLM_CHECK(r.targets > 0, "[eval] the evaluation budget is 0 tokens; give a positive number of tokens");
  r.n_rows = static_cast<int64_t>((r.targets + context - 1) / context);
  r.last_row_targets = static_cast<int64_t>(r.targets) - (r.n_rows - 1) * context;
  r.tokens.resize(r.n_rows * row);
  r.doc_ids.resize(r.n_rows * row);
  if (structure) r.structure.resize(r.n_rows * row);
  std::vector<bool> covered(r.docs_total, false);
  for (int64_t i = 0; i < r.n_rows; ++i) {
    const size_t k = static_cast<size_t>(static_cast<__int128>(i) * r.rows_in_split / r.n_rows);
    l.restore(starts[k]);
    l.next(r.tokens.data() + i * row, r.doc_ids.data() + i * row, structure ? r.structure.data() + i * row : nullptr);
    for (uint64_t d = spans[k].first; d <= spans[k].second; ++d) covered[d] = true;
  }
  for (bool c : covered) r.docs_covered += c;
  return r;
}

std::string coverage_text(const EvalRows& e) {
  return "scored " + std::to_string(e.targets) + " targets in " + std::to_string(e.n_rows) + " of " +
         std::to_string(e.rows_in_split) + " rows, covering " + std::to_string(e.docs_covered) + " of " +
         std::to_string(e.docs_total) + " validation documents";
}

}  // namespace slm::data
