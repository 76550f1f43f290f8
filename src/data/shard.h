// Binary files of a data set: token shards and document indexes.
// Layout: a 64-byte header {magic[8], version u32, dtype u32, count u64, checksum u64 (XXH3-64 of
// the payload), payload_bytes u64, 24 zero bytes}, then the little-endian payload.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace slm::data {

enum class DType : uint32_t { U16 = 1, U32 = 2, DocRecord = 3, U8 = 4 };

// One document in a split: where its tokens are and which source it came from.
struct DocRecord {
  uint32_t shard;   // index into the split's shard list
  uint32_t source;  // index into manifest "sources"
  uint64_t offset;  // first token in the shard
  uint64_t n_tokens;
};
static_assert(sizeof(DocRecord) == 24, "DocRecord is written raw");

constexpr char kTokMagic[8] = {'S', 'L', 'M', 'T', 'O', 'K', '0', '1'};
constexpr char kIdxMagic[8] = {'S', 'L', 'M', 'I', 'D', 'X', '0', '1'};
constexpr char kColMagic[8] = {'S', 'L', 'M', 'C', 'O', 'L', '0', '1'};  // token-aligned u8 column
constexpr uint32_t kShardVersion = 1;

size_t dtype_size(DType t);

// Serializes header + payload (payload: `count` items of `dtype`).
std::string encode_file(const char magic[8], DType dtype, uint64_t count, std::string_view payload);

// A read-only memory-mapped shard or index; the header is validated on open, the checksum on verify().
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path, const char magic[8]);
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  ~MappedFile();

  DType dtype() const { return dtype_; }
  uint64_t count() const { return count_; }
  uint64_t checksum() const { return checksum_; }
  const void* data() const { return payload_; }
  std::string_view payload() const;
  // Recomputes the payload checksum; throws slm::Error naming the file on mismatch.
  void verify() const;
  // Token i of a token shard, widened.
  int32_t token(uint64_t i) const {
    return dtype_ == DType::U16 ? static_cast<const uint16_t*>(payload_)[i]
                                : static_cast<int32_t>(static_cast<const uint32_t*>(payload_)[i]);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_len_ = 0;
  const void* payload_ = nullptr;
  DType dtype_ = DType::U16;
  uint64_t count_ = 0, checksum_ = 0;
};

}  // namespace slm::data
