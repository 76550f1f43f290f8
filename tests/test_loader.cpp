// The loader: BOS-aligned packed rows, document ids, determinism, resume and rank striding.
#include <gtest/gtest.h>

#include "data/dataset.h"
#include "common/error.h"
#include "data/loader.h"
#include "test_util.h"

using namespace slm;
using namespace slm::data;

namespace {

// One small data set shared by the tests (built once).
const DataSet& dataset() {
  static slm::test::TempDir t;
  static std::unique_ptr<DataSet> ds =
      std::make_unique<DataSet>(slm::test::small_dataset(t.path, 40, 7, 12, 400, 2048));
  return *ds;
}

struct Row {
  std::vector<int32_t> tok, doc;
  bool operator==(const Row& o) const { return tok == o.tok && doc == o.doc; }
};

std::vector<Row> take(Loader& l, int n) {
  std::vector<Row> rows(n);
  for (auto& r : rows) {
    r.tok.resize(l.row_len());
    r.doc.resize(l.row_len());
    l.next(r.tok.data(), r.doc.data());
  }
  return rows;
}

}  // namespace

TEST(Loader, RowsAreBosAlignedWithSegmentIds) {
  Loader l(dataset(), Split::Train, 64, 1, true);
  for (auto& r : take(l, 200)) {
    ASSERT_EQ(r.tok.size(), 65u);
    EXPECT_EQ(r.tok[0], TOK_BOS);
    EXPECT_EQ(r.doc[0], 0);
    for (size_t i = 1; i < r.tok.size(); ++i) {
      // A segment id increases exactly at a BOS.
      EXPECT_EQ(r.doc[i], r.doc[i - 1] + (r.tok[i] == TOK_BOS ? 1 : 0));
      EXPECT_TRUE(r.tok[i] == TOK_BOS || r.tok[i] >= N_SPECIAL);
    }
  }
}

TEST(Loader, ValidationStreamReproducesDocumentsInOrderWithoutLoss) {
  const DataSet& ds = dataset();
  Loader l(ds, Split::Val, 32, 0, false);
  std::vector<int32_t> expect;
  for (size_t i = 0; i < ds.docs(Split::Val).size(); ++i) {
    auto t = ds.doc_tokens(Split::Val, i);
    expect.insert(expect.end(), t.begin(), t.end());
  }
  std::vector<int32_t> got;
  while (got.size() < expect.size()) {
    auto r = take(l, 1)[0];
    for (int32_t t : r.tok)
      if (t != TOK_BOS) got.push_back(t);
  }
  got.resize(expect.size());
  EXPECT_EQ(got, expect);
}

TEST(Loader, DeterministicBySeed) {
  Loader a(dataset(), Split::Train, 48, 5, true), b(dataset(), Split::Train, 48, 5, true),
      c(dataset(), Split::Train, 48, 6, true);
  auto ra = take(a, 50), rb = take(b, 50), rc = take(c, 50);
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(Loader, ResumeFromSavedPositionIsEquivalent) {
  const int total = 2000, cut = 737;  // more than one epoch at this size
  Loader full(dataset(), Split::Train, 40, 3, true);
  auto all = take(full, total);
  EXPECT_GT(full.state().epoch, 0u) << "test should cross an epoch boundary";
  Loader first(dataset(), Split::Train, 40, 3, true);
  take(first, cut);
  LoaderState saved = first.state();
  Loader resumed(dataset(), Split::Train, 40, 3, true);
  resumed.restore(saved);
  auto rest = take(resumed, total - cut);
  for (int i = 0; i < total - cut; ++i) ASSERT_EQ(rest[i], all[cut + i]) << "row " << cut + i;
  EXPECT_EQ(resumed.state(), full.state());
}

TEST(Loader, RanksStrideTheGlobalSequence) {
  Loader one(dataset(), Split::Train, 40, 9, true);
  auto all = take(one, 60);
  Loader r0(dataset(), Split::Train, 40, 9, true, 0, 3), r1(dataset(), Split::Train, 40, 9, true, 1, 3),
      r2(dataset(), Split::Train, 40, 9, true, 2, 3);
  auto a0 = take(r0, 20), a1 = take(r1, 20), a2 = take(r2, 20);
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(a0[i], all[3 * i]);
    EXPECT_EQ(a1[i], all[3 * i + 1]);
    EXPECT_EQ(a2[i], all[3 * i + 2]);
  }
}

TEST(Loader, PermutationIsAPermutationAndSeeded) {
  auto p = permutation(1000, 42);
  std::vector<uint32_t> s = p;
  std::sort(s.begin(), s.end());
  for (uint32_t i = 0; i < 1000; ++i) EXPECT_EQ(s[i], i);
  EXPECT_EQ(p, permutation(1000, 42));
  EXPECT_NE(p, permutation(1000, 43));
}

TEST(Loader, TransformsAreSeededResumableAndTrainOnly) {
  TransformSet t;
  FimOptions f = FimOptions::from(test::module_args("fim"));
  f.rate = 0.5;
  t.fim = f;
  SriOptions s = SriOptions::from(test::module_args("sri"));
  s.rate = 0.3;
  t.sri = s;
  Loader a(dataset(), Split::Train, 64, 3, true);
  a.set_transforms(t);
  auto rows = take(a, 300);
  // Sentinels appear, at about the rates (per document, FIM opens with FIM_PREFIX, SRI ends in SRI_REPLACE).
  int64_t fim = 0, sri = 0, docs = 0;
  for (auto& r : rows)
    for (size_t i = 0; i < r.tok.size(); ++i) {
      fim += r.tok[i] == TOK_FIM_PREFIX;
      sri += r.tok[i] == TOK_SRI_REPLACE;
      docs += r.tok[i] == TOK_BOS;
    }
  EXPECT_GT(fim, 0);
  EXPECT_GT(sri, 0);
  EXPECT_LT(fim + sri, docs);  // some documents stay plain (rates sum to 0.8)
  // The same seed gives the same rows; a resumed loader continues identically.
  Loader b(dataset(), Split::Train, 64, 3, true);
  b.set_transforms(t);
  auto first = take(b, 137);
  Loader c(dataset(), Split::Train, 64, 3, true);
  c.set_transforms(t);
  c.restore(b.state());
  auto rest_b = take(b, 163), rest_c = take(c, 163);
  EXPECT_EQ(rest_b, rest_c);
  first.insert(first.end(), rest_b.begin(), rest_b.end());
  EXPECT_EQ(first, rows);
  // Without transforms the stream differs; validation refuses them.
  Loader plain(dataset(), Split::Train, 64, 3, true);
  EXPECT_FALSE(take(plain, 300) == rows);
  Loader v(dataset(), Split::Val, 64, 0, false);
  EXPECT_THROW(v.set_transforms(t), Error);
  TransformSet too_much = t;
  too_much.fim->rate = 0.9;
  Loader w(dataset(), Split::Train, 64, 3, true);
  EXPECT_THROW(w.set_transforms(too_much), Error);
}

// The rows an evaluation scores (issue 18 §7): a budget beyond the split scores every token of the
// split's whole rows once (it used to wrap around and score the first rows twice); a partial budget
// takes rows spread over the whole split, each once, and exactly the budget's number of targets.
TEST(EvalRows, NoTokenTwiceAndAPartialBudgetSpreadOverTheSplit) {
  const DataSet& ds = dataset();
  const int64_t C = 32, row = C + 1;
  std::vector<int32_t> split;  // the split as the loader lays it out, BOS dropped
  for (size_t i = 0; i < ds.docs(Split::Val).size(); ++i) {
    auto t = ds.doc_tokens(Split::Val, i);
    split.insert(split.end(), t.begin(), t.end());
  }
  auto content = [&](const EvalRows& e, int64_t r) {
    std::vector<int32_t> out;
    for (int64_t k = 1; k < row; ++k)  // targets: positions 1..C
      if (e.tokens[r * row + k] != TOK_BOS) out.push_back(e.tokens[r * row + k]);
    return out;
  };

  const EvalRows all = eval_rows(ds, C, uint64_t(1) << 40);
  ASSERT_GT(all.rows_in_split, 4);
  EXPECT_EQ(all.n_rows, all.rows_in_split);
  EXPECT_EQ(all.targets, uint64_t(all.rows_in_split * C));
  EXPECT_EQ(all.last_row_targets, C);
  std::vector<int32_t> got;
  for (int64_t r = 0; r < all.n_rows; ++r) {
    auto c = content(all, r);
    got.insert(got.end(), c.begin(), c.end());
  }
  ASSERT_LE(got.size(), split.size());
  EXPECT_GT(got.size() + C, split.size()) << "at most the last partial row is left out";
  EXPECT_TRUE(std::equal(got.begin(), got.end(), split.begin())) << "every scored token once, in order";
  EXPECT_EQ(all.docs_covered, all.docs_total);

  // A quarter of the split, not a multiple of the context: rows spread from the first to the last
  // quarter, none twice, the last row scoring only what the budget has left.
  const uint64_t budget = uint64_t(all.rows_in_split * C / 4) + 5;
  const EvalRows part = eval_rows(ds, C, budget);
  EXPECT_EQ(part.targets, budget);
  EXPECT_EQ(part.n_rows, int64_t((budget + C - 1) / C));
  EXPECT_EQ(part.last_row_targets, int64_t(budget) - (part.n_rows - 1) * C);
  std::vector<int64_t> where;  // each chosen row's index in the full layout
  for (int64_t r = 0; r < part.n_rows; ++r)
    for (int64_t q = 0; q < all.n_rows; ++q)
      if (std::equal(part.tokens.begin() + r * row, part.tokens.begin() + (r + 1) * row, all.tokens.begin() + q * row)) {
        where.push_back(q);
        break;
      }
  ASSERT_EQ(where.size(), size_t(part.n_rows));
  for (size_t i = 1; i < where.size(); ++i) EXPECT_LT(where[i - 1], where[i]) << "distinct rows, in order";
  EXPECT_EQ(where.front(), 0);
  EXPECT_GE(where.back(), all.rows_in_split * 3 / 4) << "the budget reaches the end of the split";
  EXPECT_GT(part.docs_covered, part.docs_total / 2) << coverage_text(part);
  EXPECT_NE(coverage_text(part).find("of " + std::to_string(part.docs_total) + " validation documents"), std::string::npos);
}
