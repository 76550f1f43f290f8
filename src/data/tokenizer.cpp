// Byte-level BPE. Training is the standard incremental algorithm (pair counts, pair -> words
// index, lazy max-heap); encoding applies merges by rank per chunk, memoised per thread.
#include "data/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>

#include "common/error.h"
#include "common/hash.h"
#include "data/lexer.h"

namespace slm {

namespace {

constexpr const char* kSpecialNames[N_SPECIAL] = {
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_instruction|>",
    "<|sri_search|>",
    "<|sri_divider|>",
    "<|sri_replace|>",
};
constexpr std::string_view kFormatHeader = "slmlab-bpe v1";

// (left, right) as one key that orders like the pair; ids are >= 0, so ~0 is never a pair.
inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
inline int32_t key_left(uint64_t key) { return static_cast<int32_t>(key >> 32); }
inline int32_t key_right(uint64_t key) { return static_cast<int32_t>(key & 0xffffffffu); }

// A fresh serial per rebuild() keys the per-thread encode state: equal serials imply equal merges
// (copies share both).
std::atomic<int32_t> g_next_serial{0};

// Open-addressing map pair key -> int32 (a pair index in training, a merge rank in encoding).
// Both do a lookup per symbol; this is several times faster than std::unordered_map.
class PairIndex {
 public:
  PairIndex() : slots_(size_t{1} << 16, Slot{kEmpty, 0}), shift_(64 - 16) {}

  // Value of `key`, or -1 when absent.
  int32_t find(uint64_t key) const {
    size_t mask = slots_.size() - 1;
    for (size_t i = home(key);; i = (i + 1) & mask) {
      if (slots_[i].key == key) return slots_[i].index;
      if (slots_[i].key == kEmpty) return -1;
    }
  }

  // Index of `key`; when absent, inserts `fresh` and sets `inserted`.
  int32_t find_or_insert(uint64_t key, int32_t fresh, bool& inserted) {
    size_t mask = slots_.size() - 1;
    for (size_t i = home(key);; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.key == key) {
        inserted = false;
        return s.index;
      }
      if (s.key == kEmpty) {
        s = Slot{key, fresh};
        inserted = true;
        if (++size_ * 2 > slots_.size()) grow();
        return fresh;
      }
    }
  }

 private:
  struct Slot {
    uint64_t key;
    int32_t index;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};

  size_t home(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  // Doubles the table, keeping the load factor under 1/2.
  void grow() {
    std::vector<Slot> old(slots_.size() * 2, Slot{kEmpty, 0});
    old.swap(slots_);
    --shift_;
    size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = home(s.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  int shift_;
  size_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Training

// Heap candidate: a pair and its count when pushed (an overestimate once stale: a pair's count
// only rises in the single merge step that creates its newer token, and only falls after).
struct Candidate {
  int64_t count;
  uint64_t key;
  int32_t pair;
  // Max-heap order: higher count first, then the smaller (left, right).
  bool operator<(const Candidate& o) const {
    return count != o.count ? count < o.count : key > o.key;
  }
};

// Incremental BPE trainer over unique words (chunks) weighted by their occurrence counts.
class Trainer {
 public:
  explicit Trainer(const ChunkCounts& counts) {
    for (const auto& [chunk, n] : counts) {
      if (chunk.size() < 2 || n == 0) continue;  // no pairs to learn from
      SLM_CHECK(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 4),
                "[tokenizer] chunk count ", n, " is too large; pass real occurrence counts");
      words_.push_back(
          Word{symbols_.size(), static_cast<int64_t>(n), static_cast<uint32_t>(chunk.size()), -1});
      for (unsigned char c : chunk) symbols_.push_back(kByteBase + c);
    }
    SLM_CHECK(words_.size() < std::numeric_limits<uint32_t>::max(),
              "[tokenizer] too many unique chunks (", words_.size(), "); train on less source");
    for (uint32_t w = 0; w < words_.size(); ++w) {
      const int32_t* s = &symbols_[words_[w].begin];
      for (uint32_t i = 0; i + 1 < words_[w].length; ++i) add(s[i], s[i + 1], words_[w].weight, w);
    }
    push_fresh();
  }

  // Learns `n_merges` merges, or fails naming the largest vocabulary this corpus can reach.
  std::vector<std::pair<int32_t, int32_t>> run(int32_t n_merges) {
    std::vector<std::pair<int32_t, int32_t>> merges;  // not reserved: n_merges may be unreachable
    for (int32_t step = 0; step < n_merges; ++step) {
      Candidate best = pop_best();
      if (best.pair < 0)
        fail("[tokenizer] the corpus is too small for vocab size ", kMinVocab + n_merges,
             ": no adjacent pairs are left after ", step, " merges, so at most ", kMinVocab + step,
             " tokens are reachable; lower the vocab size or add more source");
      int32_t left = key_left(best.key), right = key_right(best.key);
      merges.emplace_back(left, right);
      // Moved out: merging inserts new pairs, which may reallocate where_.
      std::vector<uint32_t> list = std::move(where_[best.pair]);
      where_[best.pair] = {};
      // Words are visited in random order and this loop is memory-bound: prefetch ahead.
      constexpr size_t kAhead = 8;
      for (size_t k = 0; k < list.size(); ++k) {
        if (k + 2 * kAhead < list.size()) __builtin_prefetch(&words_[list[k + 2 * kAhead]]);
        if (k + kAhead < list.size()) __builtin_prefetch(&symbols_[words_[list[k + kAhead]].begin]);
        Word& word = words_[list[k]];
        if (word.visited == step) continue;  // listed more than once
        word.visited = step;
        merge_word(list[k], left, right, kMinVocab + step);
      }
      count_[best.pair] = 0;
      push_fresh();
    }
    return merges;
  }

 private:
  // Adds `delta` to the count of (left, right); a word gaining the pair joins its word list.
  void add(int32_t left, int32_t right, int64_t delta, uint32_t w) {
    uint64_t key = pair_key(left, right);
    bool inserted = false;
    int32_t p = index_.find_or_insert(key, static_cast<int32_t>(count_.size()), inserted);
    if (inserted) {
      count_.push_back(0);
      key_.push_back(key);
      where_.emplace_back();
      fresh_.push_back(p);
    }
    count_[p] += delta;
    if (delta > 0 && (where_[p].empty() || where_[p].back() != w)) where_[p].push_back(w);
  }

  // Replaces every (left, right) in word `w` with `id`, left to right, updating neighbour pairs.
  // Overlaps ("a a a" merging a+a) come out right: the second pair is the first's right
  // neighbour, and a merge right after another sees the new token as its left neighbour.
  void merge_word(uint32_t w, int32_t left, int32_t right, int32_t id) {
    int32_t* s = &symbols_[words_[w].begin];
    uint32_t n = words_[w].length, out = 0;
    int64_t c = words_[w].weight;
    for (uint32_t i = 0; i < n;) {
      if (i + 1 < n && s[i] == left && s[i + 1] == right) {
        if (out > 0) {
          add(s[out - 1], left, -c, w);
          add(s[out - 1], id, c, w);
        }
        if (i + 2 < n) {
          add(right, s[i + 2], -c, w);
          add(id, s[i + 2], c, w);
        }
        s[out++] = id;
        i += 2;
      } else {
        s[out++] = s[i++];
      }
    }
    words_[w].length = out;
  }

  // Pushes the pairs created since the last call (only they can have gained count).
  void push_fresh() {
    for (int32_t p : fresh_)
      if (count_[p] > 0) heap_.push(Candidate{count_[p], key_[p], p});
    fresh_.clear();
  }

  // Best current pair (pair -1 when none is left). Stale entries are re-pushed with the
  // current count; since they only overestimate, the first exact entry is the true best.
  Candidate pop_best() {
    while (!heap_.empty()) {
      Candidate c = heap_.top();
      heap_.pop();
      int64_t now = count_[c.pair];
      if (now == c.count) return c;
      if (now > 0) heap_.push(Candidate{now, c.key, c.pair});
    }
    return Candidate{0, 0, -1};
  }

  struct Word {
    size_t begin;     // first symbol in symbols_
    int64_t weight;   // occurrences of the chunk
    uint32_t length;  // current number of symbols
    int32_t visited;  // last merge step that processed the word
  };
  std::vector<Word> words_;
  std::vector<int32_t> symbols_;

  PairIndex index_;
  std::vector<int64_t> count_;                // by pair index
  std::vector<uint64_t> key_;                 // by pair index
  std::vector<std::vector<uint32_t>> where_;  // words that may contain the pair (stale allowed)
  std::vector<int32_t> fresh_;
  std::priority_queue<Candidate> heap_;
};

// ---------------------------------------------------------------------------------------------
// Encoding

// Both encoders below repeatedly apply the lowest-rank merge present, leftmost first on equal
// ranks. That is exactly how training applied each merge (in rank order, left to right, and a
// merge only creates pairs of higher rank), so the result equals applying the merges in order.

constexpr size_t kShortChunk = 64;  // encode_short() limit; also the longest cached chunk

// Encodes a chunk of at most kShortChunk bytes: a rank per adjacent pair, a linear scan for the
// minimum. Quadratic, but for short chunks faster than any heap.
void encode_short(const PairIndex& ranks, std::string_view chunk, std::vector<int32_t>& out) {
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  int32_t id[kShortChunk], rank[kShortChunk];  // rank[i]: merge of (id[i], id[i + 1])
  int32_t n = static_cast<int32_t>(chunk.size());
  auto rank_at = [&](int32_t i) {
    int32_t r = ranks.find(pair_key(id[i], id[i + 1]));
    return r < 0 ? kNone : r;
  };
  for (int32_t i = 0; i < n; ++i) id[i] = kByteBase + static_cast<unsigned char>(chunk[i]);
  for (int32_t i = 0; i + 1 < n; ++i) rank[i] = rank_at(i);
  while (n > 1) {
    int32_t best = 0;
    for (int32_t i = 1; i + 1 < n; ++i)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == kNone) break;
    id[best] = kMinVocab + rank[best];
    --n;
    for (int32_t i = best + 1; i < n; ++i) id[i] = id[i + 1];
    for (int32_t i = best + 1; i + 1 < n; ++i) rank[i] = rank[i + 1];
    if (best + 1 < n) rank[best] = rank_at(best);
    if (best > 0) rank[best - 1] = rank_at(best - 1);
  }
  out.insert(out.end(), id, id + n);
}

// Encodes a chunk of any length in O(n log n): linked symbols plus a min-heap of
// (rank, position) candidates validated lazily against the current ids.
void encode_long(const PairIndex& ranks, std::string_view chunk, std::vector<int32_t>& out) {
  struct Symbol {
    int32_t id, prev, next;  // id -1: merged into its left neighbour
  };
  struct Merge {
    int32_t rank, pos, left, right;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Merge> heap;
  const int32_t n = static_cast<int32_t>(chunk.size());
  sym.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i)
    sym[i] =
        Symbol{kByteBase + static_cast<unsigned char>(chunk[i]), i - 1, i + 1 < n ? i + 1 : -1};
  auto consider = [&](int32_t pos) {
    int32_t next = sym[pos].next;
    if (next < 0) return;
    int32_t rank = ranks.find(pair_key(sym[pos].id, sym[next].id));
    if (rank < 0) return;
    heap.push_back(Merge{rank, pos, sym[pos].id, sym[next].id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Merge m = heap.back();
    heap.pop_back();
    Symbol& s = sym[m.pos];
    if (s.id != m.left || s.next < 0 || sym[s.next].id != m.right) continue;  // stale
    int32_t gone = s.next;
    s.id = kMinVocab + m.rank;
    s.next = sym[gone].next;
    if (s.next >= 0) sym[s.next].prev = m.pos;
    sym[gone].id = -1;
    if (s.prev >= 0) consider(s.prev);
    consider(m.pos);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);  // position 0 never dies
}

// Memo chunk -> ids for one tokenizer. Bounded: emptied when full, which is simple and lets the
// frequent chunks come straight back (the hit rate on C++ stays near that of an unbounded one).
class ChunkCache {
 public:
  ChunkCache() : slots_(kSlots) {}

  // Appends the cached ids of `chunk` (hash `h`) to `out`; false when not cached.
  bool find(std::string_view chunk, uint64_t h, std::vector<int32_t>& out) const {
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.key_len == 0) return false;
      if (s.hash == h && s.key_len == chunk.size() &&
          std::memcmp(keys_.data() + s.key_off, chunk.data(), chunk.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_off, ids_.begin() + s.ids_off + s.n_ids);
        return true;
      }
    }
  }

  // Caches ids[0..n) for `chunk` (not cached yet, 2 <= size <= kShortChunk).
  void insert(std::string_view chunk, uint64_t h, const int32_t* ids, size_t n) {
    if (entries_ >= kSlots / 2) clear();
    size_t i = h & (kSlots - 1);
    while (slots_[i].key_len != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = Slot{h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                     static_cast<uint16_t>(chunk.size()), static_cast<uint16_t>(n)};
    keys_.append(chunk);
    ids_.insert(ids_.end(), ids, ids + n);
    ++entries_;
  }

  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    entries_ = 0;
  }

 private:
  static constexpr size_t kSlots = size_t{1} << 17;  // power of two
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_off = 0, ids_off = 0;
    uint16_t key_len = 0, n_ids = 0;  // key_len 0: empty slot
  };

  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t entries_ = 0;
};

// Encoding state of one tokenizer on one thread: a flat copy of its merge ranks and its chunk
// memo. Keeping it per thread makes const encode() safe to call concurrently.
struct EncodeState {
  int32_t serial = -1;  // serial of the tokenizer the state belongs to
  PairIndex ranks;
  ChunkCache cache;

  // Loads the tokenizer with `serial` and merge table `rank` unless it is already loaded.
  void bind(int32_t tokenizer_serial, const std::unordered_map<uint64_t, int32_t>& rank) {
    if (serial == tokenizer_serial) return;
    ranks = PairIndex();
    bool inserted = false;
    for (const auto& [key, r] : rank) ranks.find_or_insert(key, r, inserted);
    cache.clear();
    serial = tokenizer_serial;
  }
};

// ---------------------------------------------------------------------------------------------
// Deserialization

// `line` made printable and short, for one-line error messages.
std::string quote(std::string_view line) {
  std::string q = "'";
  for (char c : line.substr(0, 40)) q += (c >= 0x20 && c < 0x7f) ? c : '?';
  return q + (line.size() > 40 ? "...'" : "'");
}

[[noreturn]] void bad_file(size_t line_no, const std::string& why) {
  fail("[tokenizer] malformed tokenizer text at line ", line_no, ": ", why,
       "; the file is corrupt or was not written by this slmlab, retrain the tokenizer");
}

// Canonical non-negative decimal (no sign, no leading zeros) that fits int32; -1 otherwise.
int32_t parse_id(std::string_view s) {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return -1;
  int32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0) return -1;
  return v;
}

// Splits text into '\n'-terminated lines, counting them for error messages.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : rest_(text) {}

  // The next line without its '\n'; fails if the text ends first (truncated file).
  std::string_view next(const char* expected) {
    ++line_no_;
    size_t nl = rest_.find('\n');
    if (nl == std::string_view::npos) {
      bad_file(line_no_, rest_.empty() ? std::string("text ends where ") + expected + " should be"
                                       : "unterminated last line " + quote(rest_));
    }
    std::string_view line = rest_.substr(0, nl);
    rest_.remove_prefix(nl + 1);
    return line;
  }

  // Reads "name <number>" and returns the number.
  int32_t field(std::string_view name) {
    std::string expected = std::string(name) + " <number>";
    std::string_view line = next(expected.c_str());
    int32_t v = -1;
    if (line.size() > name.size() && line.substr(0, name.size()) == name &&
        line[name.size()] == ' ')
      v = parse_id(line.substr(name.size() + 1));
    if (v < 0) bad_file(line_no_, "expected '" + expected + "', got " + quote(line));
    return v;
  }

  size_t line_no() const { return line_no_; }
  std::string_view rest() const { return rest_; }

 private:
  std::string_view rest_;
  size_t line_no_ = 0;
};

}  // namespace

const char* special_name(int32_t id) {
  return id >= 0 && id < N_SPECIAL ? kSpecialNames[id] : nullptr;
}

void count_chunks(std::string_view text, ChunkCounts& counts) {
  std::vector<std::string_view> chunks;
  lex::pretokenize(text, chunks);
  for (std::string_view c : chunks) ++counts[std::string(c)];
}

Tokenizer::Tokenizer() { rebuild(); }

Tokenizer Tokenizer::train(const ChunkCounts& counts, int32_t vocab_size) {
  SLM_CHECK(vocab_size >= kMinVocab, "[tokenizer] vocab size ", vocab_size,
            " is below the minimum ", kMinVocab, " (", int(N_SPECIAL),
            " special + 256 byte tokens); pass at least ", kMinVocab);
  Tokenizer t;
  if (vocab_size == kMinVocab) return t;
  t.merges_ = Trainer(counts).run(vocab_size - kMinVocab);
  t.rebuild();
  return t;
}

void Tokenizer::rebuild() {
  const size_t n = kMinVocab + merges_.size();
  token_str_.assign(n, std::string());
  token_bytes_.assign(n, 0);
  for (int b = 0; b < 256; ++b) {
    token_str_[kByteBase + b] = std::string(1, static_cast<char>(b));
    token_bytes_[kByteBase + b] = 1;
  }
  rank_.clear();
  rank_.reserve(merges_.size());
  for (size_t i = 0; i < merges_.size(); ++i) {
    auto [left, right] = merges_[i];
    token_str_[kMinVocab + i] = token_str_[left] + token_str_[right];
    token_bytes_[kMinVocab + i] = token_bytes_[left] + token_bytes_[right];
    rank_[pair_key(left, right)] = static_cast<int32_t>(i);
  }
  serial_ = g_next_serial.fetch_add(1, std::memory_order_relaxed);
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string_view> chunks;
  chunks.reserve(text.size() / 4 + 1);
  lex::pretokenize(text, chunks);
  thread_local EncodeState state;
  SLM_CHECK(!token_bytes_.empty(), "[tokenizer] encode on a moved-from tokenizer; assign it first");
  state.bind(serial_, rank_);
  for (std::string_view chunk : chunks) {
    if (chunk.size() == 1) {
      out.push_back(kByteBase + static_cast<unsigned char>(chunk[0]));
    } else if (chunk.size() > kShortChunk) {
      encode_long(state.ranks, chunk, out);  // rare: long runs of blanks or punctuation
    } else {
      uint64_t h = hash64(chunk);
      if (state.cache.find(chunk, h, out)) continue;
      size_t start = out.size();
      encode_short(state.ranks, chunk, out);
      state.cache.insert(chunk, h, out.data() + start, out.size() - start);
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode(text, out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool show_special) const {
  std::string out;
  for (int32_t id : ids) {
    SLM_CHECK(id >= 0 && id < vocab_size(), "[tokenizer] cannot decode token id ", id,
              ": out of range for vocab size ", vocab_size(),
              "; the ids come from another tokenizer or are corrupt");
    if (id < N_SPECIAL) {
      if (show_special) out += kSpecialNames[id];
    } else {
      out += token_str_[id];
    }
  }
  return out;
}

std::string Tokenizer::serialize() const {
  std::string s;
  s.reserve(64 + merges_.size() * 12);
  s.append(kFormatHeader).append("\nvocab ").append(std::to_string(vocab_size()));
  s.append("\nspecials ").append(std::to_string(int(N_SPECIAL)));
  s.append("\nmerges ").append(std::to_string(merges_.size())).append("\n");
  for (auto [left, right] : merges_)
    s.append(std::to_string(left)).append(" ").append(std::to_string(right)).append("\n");
  return s;
}

Tokenizer Tokenizer::deserialize(std::string_view text) {
  LineReader in(text);
  std::string_view head = in.next("the header");
  if (head != kFormatHeader)
    bad_file(1, "expected header '" + std::string(kFormatHeader) + "', got " + quote(head));
  int32_t vocab = in.field("vocab");
  if (vocab < kMinVocab)
    bad_file(in.line_no(), "vocab " + std::to_string(vocab) + " is below the minimum " +
                               std::to_string(kMinVocab));
  int32_t specials = in.field("specials");
  if (specials != N_SPECIAL)
    bad_file(in.line_no(), "specials " + std::to_string(specials) + " but this build has " +
                               std::to_string(int(N_SPECIAL)));
  int32_t n_merges = in.field("merges");
  if (n_merges != vocab - kMinVocab)
    bad_file(in.line_no(), "merges " + std::to_string(n_merges) + " does not match vocab " +
                               std::to_string(vocab) + " (expected " +
                               std::to_string(vocab - kMinVocab) + ")");
  Tokenizer t;
  // Bounded by the text size: a garbled count must not trigger a huge allocation.
  const size_t expected = std::min<size_t>(n_merges, text.size() / 8);
  t.merges_.reserve(expected);
  std::unordered_map<uint64_t, int32_t> seen;
  seen.reserve(expected);
  for (int32_t i = 0; i < n_merges; ++i) {
    const int32_t id = kMinVocab + i;
    std::string_view line = in.next("a merge line");
    size_t sp = line.find(' ');
    int32_t left = sp == std::string_view::npos ? -1 : parse_id(line.substr(0, sp));
    int32_t right = sp == std::string_view::npos ? -1 : parse_id(line.substr(sp + 1));
    if (left < 0 || right < 0)
      bad_file(in.line_no(), "expected merge 'left right', got " + quote(line));
    if (left < kByteBase || right < kByteBase || left >= id || right >= id)
      bad_file(in.line_no(), "merge " + quote(line) + " for token " + std::to_string(id) +
                                 " must use ids in [" + std::to_string(kByteBase) + ", " +
                                 std::to_string(id) + ")");
    auto [prev, fresh] = seen.emplace(pair_key(left, right), id);
    if (!fresh)
      bad_file(in.line_no(), "merge " + quote(line) + " repeats the merge of token " +
                                 std::to_string(prev->second));
    t.merges_.emplace_back(left, right);
  }
  if (!in.rest().empty())
    bad_file(in.line_no() + 1, "unexpected text after the last merge: " + quote(in.rest()));
  t.rebuild();
  return t;
}

std::string Tokenizer::hash() const { return hash128_hex(serialize()); }

}  // namespace slm
