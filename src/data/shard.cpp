#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/hash.h"

namespace slm::data {

namespace {
constexpr size_t kHeader = 64;

template <typename T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
T get(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::U16: return 2;
    case DType::U32: return 4;
    case DType::DocRecord: return sizeof(DocRecord);
    case DType::U8: return 1;
  }
  return 0;
}

std::string encode_file(const char magic[8], DType dtype, uint64_t count, std::string_view payload) {
  SLM_CHECK(payload.size() == count * dtype_size(dtype), "internal: shard payload size mismatch");
  std::string out;
  out.reserve(kHeader + payload.size());
  out.append(magic, 8);
  put<uint32_t>(out, kShardVersion);
  put<uint32_t>(out, static_cast<uint32_t>(dtype));
  put<uint64_t>(out, count);
  put<uint64_t>(out, hash64(payload));
  put<uint64_t>(out, payload.size());
  out.append(kHeader - out.size(), '\0');
  out.append(payload);
  return out;
}

MappedFile::MappedFile(const std::string& path, const char magic[8]) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SLM_CHECK(fd >= 0, "[data] missing or unreadable file ", path, ": ", std::strerror(errno),
            "; rebuild the data set with slmlab data build");
  struct stat st {};
  ::fstat(fd, &st);
  map_len_ = static_cast<size_t>(st.st_size);
  if (map_len_ < kHeader) {
    ::close(fd);
    fail("[data] ", path, " is truncated (", map_len_, " bytes, header needs 64); rebuild the data set");
  }
  map_ = ::mmap(nullptr, map_len_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  SLM_CHECK(map_ != MAP_FAILED, "[data] cannot map ", path, ": ", std::strerror(errno));
  const char* p = static_cast<const char*>(map_);
  SLM_CHECK(std::memcmp(p, magic, 8) == 0, "[data] ", path, " has a wrong magic (not a slmlab ",
            std::string(magic, 8), " file)");
  uint32_t version = get<uint32_t>(p + 8);
  SLM_CHECK(version == kShardVersion, "[data] ", path, " is format version ", version, ", this slmlab reads ",
            kShardVersion, "; rebuild the data set");
  dtype_ = static_cast<DType>(get<uint32_t>(p + 12));
  SLM_CHECK(dtype_size(dtype_) != 0, "[data] ", path, " has an unknown dtype");
  count_ = get<uint64_t>(p + 16);
  checksum_ = get<uint64_t>(p + 24);
  uint64_t payload_bytes = get<uint64_t>(p + 32);
  SLM_CHECK(payload_bytes == count_ * dtype_size(dtype_), "[data] ", path, " header is inconsistent");
  SLM_CHECK(map_len_ == kHeader + payload_bytes, "[data] ", path, " is ", map_len_, " bytes, header says ",
            kHeader + payload_bytes, " (truncated or padded); rebuild the data set");
  payload_ = p + kHeader;
}

MappedFile::MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_len_);
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_len_ = o.map_len_;
    payload_ = o.payload_;
    dtype_ = o.dtype_;
    count_ = o.count_;
    checksum_ = o.checksum_;
    o.map_ = nullptr;
    o.payload_ = nullptr;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (map_) ::munmap(map_, map_len_);
}

std::string_view MappedFile::payload() const {
  return {static_cast<const char*>(payload_), static_cast<size_t>(count_ * dtype_size(dtype_))};
}

void MappedFile::verify() const {
  uint64_t h = hash64(payload());
  SLM_CHECK(h == checksum_, "[data] ", path_, " is corrupt: payload checksum ", hex64(h), " != header ",
            hex64(checksum_), "; rebuild the data set");
}

}  // namespace slm::data
