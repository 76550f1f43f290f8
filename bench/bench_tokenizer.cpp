// Tokenizer benchmark: slmlab's C++-aware BPE against SentencePiece BPE, trained on the same bytes.
//   bench_tokenizer DATA_DIR [--train-mb N] [--vocab V]...
// Reads the training and validation documents of a slmlab data set (decoded from its shards, so
// both tokenizers see exactly the same bytes), then for each vocabulary size prints training time,
// single-core encode throughput and bytes per token on the validation split.
// Fairness: both train and encode on one thread. SentencePiece gets settings that keep code intact
// (identity normalization, whitespace kept, byte fallback); it sees lines as sentences, so each
// newline costs it one extra token, the cost a byte-fallback newline would have.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

using clk = std::chrono::steady_clock;

namespace {

double secs(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

std::vector<std::string> split_lines(const std::vector<std::string>& docs) {
  std::vector<std::string> lines;
  for (auto& d : docs) {
    size_t s = 0;
    while (s < d.size()) {
      size_t e = d.find('\n', s);
      if (e == std::string::npos) e = d.size();
      if (e > s) lines.push_back(d.substr(s, e - s));
      s = e + 1;
    }
  }
  return lines;
}

class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return lines_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t i_ = 0;
};

struct Row {
  std::string who;
  int vocab;
  double train_s, encode_mbs, bytes_per_token;
};

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) slm::fail("usage: bench_tokenizer DATA_DIR [--train-mb N] [--vocab V]...");
  std::string dir = argv[1];
  double train_mb = 24;
  std::vector<int> vocabs;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--train-mb") train_mb = std::atof(argv[i + 1]);
    else if (k == "--vocab") vocabs.push_back(std::atoi(argv[i + 1]));
    else slm::fail("unknown flag ", k);
  }
  if (vocabs.empty()) vocabs = {8192, 32768};

  slm::data::DataSet ds(dir);
  const auto& tok0 = ds.tokenizer();
  std::vector<std::string> train, val;
  size_t train_bytes = 0, val_bytes = 0;
  for (size_t i = 0; i < ds.docs(slm::data::Split::Train).size() && train_bytes < train_mb * 1e6; ++i) {
    train.push_back(tok0.decode(ds.doc_tokens(slm::data::Split::Train, i)));
    train_bytes += train.back().size();
  }
  for (size_t i = 0; i < ds.docs(slm::data::Split::Val).size(); ++i) {
    val.push_back(tok0.decode(ds.doc_tokens(slm::data::Split::Val, i)));
    val_bytes += val.back().size();
  }
  std::vector<std::string> train_lines = split_lines(train), val_lines = split_lines(val);
  size_t val_newlines = 0;
  for (auto& d : val)
    for (char c : d) val_newlines += c == '\n';
  std::printf("corpus: %s, train %zu docs %.1f MB (%zu lines), val %zu docs %.2f MB\n", dir.c_str(), train.size(),
              train_bytes / 1e6, train_lines.size(), val.size(), val_bytes / 1e6);

  std::vector<Row> rows;
  for (int vocab : vocabs) {
    // slmlab
    auto t0 = clk::now();
    slm::ChunkCounts counts;
    for (auto& d : train) slm::count_chunks(d, counts);
    slm::Tokenizer tok = slm::Tokenizer::train(counts, vocab);
    double train_s = secs(t0);
    size_t n_tok = 0;
    t0 = clk::now();
    std::vector<int32_t> ids;
    for (int rep = 0; rep < 3; ++rep)
      for (auto& d : val) {
        ids.clear();
        tok.encode(d, ids);
        if (rep == 0) n_tok += ids.size();
      }
    double enc_s = secs(t0) / 3;
    rows.push_back({"slmlab", vocab, train_s, val_bytes / 1e6 / enc_s, double(val_bytes) / n_tok});

    // SentencePiece BPE
    std::string model;
    LineIterator it(train_lines);
    t0 = clk::now();
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--model_type=bpe --vocab_size=" + std::to_string(vocab) +
            " --normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true"
            " --character_coverage=1.0 --split_digits=false --allow_whitespace_only_pieces=true"
            " --max_sentence_length=16384 --input_sentence_size=0 --num_threads=1 --minloglevel=2"
            " --hard_vocab_limit=false --train_extremely_large_corpus=false",
        &it, &model);
    if (!st.ok()) slm::fail("sentencepiece training failed: ", st.ToString());
    train_s = secs(t0);
    sentencepiece::SentencePieceProcessor sp;
    if (!sp.LoadFromSerializedProto(model).ok()) slm::fail("sentencepiece model does not load");
    n_tok = 0;
    std::vector<int> sids;
    t0 = clk::now();
    for (int rep = 0; rep < 3; ++rep)
      for (auto& l : val_lines) {
        sp.Encode(l, &sids).IgnoreError();
        if (rep == 0) n_tok += sids.size();
      }
    enc_s = secs(t0) / 3;
    n_tok += val_newlines;
    rows.push_back({"sentencepiece", vocab, train_s, val_bytes / 1e6 / enc_s, double(val_bytes) / n_tok});
  }
  std::printf("\n| tokenizer | vocab | train s | encode MB/s (1 core) | val bytes/token |\n|---|---|---|---|---|\n");
  for (auto& r : rows)
    std::printf("| %s | %d | %.1f | %.2f | %.3f |\n", r.who.c_str(), r.vocab, r.train_s, r.encode_mbs,
                r.bytes_per_token);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_tokenizer: error: %s\n", e.what());
  return 2;
}
