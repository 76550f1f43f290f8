#include "train/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts would need byte swaps");

namespace slm::st {

namespace {

using ordered_json = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kChecksumKey = kFileChecksum;
constexpr const char* kLegacyChecksumKey = "data_xxh64";  // older files: the data section only
constexpr const char* kZeroSum = "0000000000000000";

// Where the checksum's 16 hex digits sit in the raw header, or npos. The key can appear unescaped
// only as itself (inside a JSON string its quotes would be escaped), and duplicate keys are refused.
size_t checksum_pos(std::string_view header) {
  const std::string pattern = std::string("\"") + kChecksumKey + "\":\"";
  size_t at = header.find(pattern);
  if (at == std::string_view::npos || header.find(pattern, at + 1) != std::string_view::npos) return std::string_view::npos;
  return at + pattern.size();
}

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F32", torch::kFloat}, {"BF16", torch::kBFloat16}, {"F16", torch::kHalf}, {"F64", torch::kDouble},
    {"I64", torch::kLong},  {"I32", torch::kInt},       {"I16", torch::kShort}, {"I8", torch::kChar},
    {"U8", torch::kByte},   {"BOOL", torch::kBool},
};

// The safetensors dtype string of a torch dtype, or nullptr when the format has none here.
const char* dtype_name(torch::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  return nullptr;
}

// The torch dtype of a safetensors dtype string; false when unknown.
bool dtype_of(const std::string& name, torch::ScalarType* out) {
  for (const auto& d : kDtypes)
    if (name == d.name) {
      *out = d.type;
      return true;
    }
  return false;
}

// One tensor's place in the file.
struct Entry {
  std::string name;
  torch::Tensor tensor;  // contiguous CPU
  uint64_t begin = 0, end = 0;
};

// The padded JSON header (8 + size is a multiple of 8) for entries and metadata.
std::string header_text(const std::string& path, const std::vector<Entry>& entries,
                        const std::map<std::string, std::string>& metadata) {
  ordered_json h = ordered_json::object();
  h[kMetadataKey] = ordered_json::object();
  for (const auto& [k, v] : metadata) h[kMetadataKey][k] = v;
  for (const auto& e : entries) {
    ordered_json info = ordered_json::object();
    info["dtype"] = dtype_name(e.tensor.scalar_type());
    info["shape"] = e.tensor.sizes().vec();
    info["data_offsets"] = {e.begin, e.end};
    h[e.name] = std::move(info);
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& ex) {
    fail("[safetensors] cannot write ", path, ": a tensor name or metadata string is not valid UTF-8 (", ex.what(),
         ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// s as a JSON string literal: quoted, escaped, one line whatever it holds.
std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// a * b, failing (naming path and what) on uint64 overflow.
uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& path, const std::string& what) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b)
    fail("[safetensors] ", path, " is malformed: ", what, " overflows");
  return a * b;
}

// A non-negative JSON integer that fits in int64, or a failure naming path and what.
int64_t json_index(const nlohmann::json& v, const std::string& path, const std::string& what) {
  if (!v.is_number_integer())
    fail("[safetensors] ", path, " is malformed: ", what, " ", v.dump(), " is not an integer");
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("[safetensors] ", path, " is malformed: ", what, " ", u, " is too large");
    return static_cast<int64_t>(u);
  }
  int64_t i = v.get<int64_t>();
  if (i < 0) fail("[safetensors] ", path, " is malformed: ", what, " ", i, " is negative");
  return i;
}

// Parses the header JSON, rejecting duplicate keys in any object (nlohmann would keep the last).
nlohmann::json parse_header(const std::string& path, std::string_view text) {
  std::vector<std::set<std::string>> keys_at_depth;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::object_start) {
      keys_at_depth.resize(std::max<size_t>(keys_at_depth.size(), depth + 2));
      keys_at_depth[depth + 1].clear();
    } else if (event == nlohmann::json::parse_event_t::key) {
      if (!keys_at_depth[depth].insert(parsed.get<std::string>()).second)
        fail("[safetensors] ", path, " is malformed: duplicate header key ", quoted(parsed.get<std::string>()));
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& ex) {
    fail("[safetensors] ", path, " is malformed: the header is not valid JSON (", ex.what(), ")");
  }
}

// Validates one tensor entry of the header; fills e (without the tensor) and its dtype and shape.
void parse_entry(const std::string& path, const std::string& name, const nlohmann::json& info, uint64_t data_size,
                 Entry* e, torch::ScalarType* type, std::vector<int64_t>* shape) {
  std::string where = "tensor " + quoted(name);
  if (!info.is_object()) fail("[safetensors] ", path, " is malformed: ", where, " is not an object");
  for (const auto& item : info.items())
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets")
      fail("[safetensors] ", path, " is malformed: ", where, " has unknown field ", quoted(item.key()));
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!info.contains(k)) fail("[safetensors] ", path, " is malformed: ", where, " has no ", k);
  const auto& dtype = info.at("dtype");
  if (!dtype.is_string() || !dtype_of(dtype.get<std::string>(), type))
    fail("[safetensors] ", path, " is malformed: ", where, " has unsupported dtype ", dtype.dump(),
         " (expected F32, BF16, F16, F64, I64, I32, I16, I8, U8 or BOOL)");
  if (!info.at("shape").is_array()) fail("[safetensors] ", path, " is malformed: ", where, " shape is not an array");
  uint64_t numel = 1;
  for (const auto& d : info.at("shape")) {
    shape->push_back(json_index(d, path, where + " shape entry"));
    numel = checked_mul(numel, static_cast<uint64_t>(shape->back()), path, where + " size");
  }
  const auto& offsets = info.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    fail("[safetensors] ", path, " is malformed: ", where, " data_offsets is not [begin, end]");
  e->name = name;
  e->begin = json_index(offsets[0], path, where + " data offset");
  e->end = json_index(offsets[1], path, where + " data offset");
  if (e->begin > e->end || e->end > data_size)
    fail("[safetensors] ", path, " is malformed: ", where, " data_offsets [", e->begin, ", ", e->end,
         "] are outside the data buffer (", data_size, " bytes)");
  uint64_t bytes = checked_mul(numel, torch::elementSize(*type), path, where + " size");
  if (e->end - e->begin != bytes)
    fail("[safetensors] ", path, " is malformed: ", where, " spans ", e->end - e->begin,
         " bytes but its dtype and shape need ", bytes);
}

}  // namespace

void write(const std::string& path, const File& f) {
  std::vector<Entry> entries;
  for (const auto& [name, t] : f.tensors) {
    SLM_CHECK(name != kMetadataKey, "[safetensors] cannot write ", path, ": ", quoted(kMetadataKey),
              " is reserved, not a tensor name");
    SLM_CHECK(t.defined(), "[safetensors] cannot write ", path, ": tensor ", quoted(name), " is undefined");
    SLM_CHECK(dtype_name(t.scalar_type()), "[safetensors] cannot write ", path, ": tensor ", quoted(name),
              " has dtype ", t.scalar_type(), "; supported: F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL");
    entries.push_back({name, t.detach().to(torch::kCPU).contiguous()});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  uint64_t data_size = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    SLM_CHECK(i == 0 || entries[i].name != entries[i - 1].name, "[safetensors] cannot write ", path,
              ": duplicate tensor name ", quoted(entries[i].name));
    entries[i].begin = data_size;
    data_size += entries[i].tensor.nbytes();
    entries[i].end = data_size;
  }
  // The checksum covers the whole file (length prefix, header with its metadata, data) as written
  // with its own 16 digits zeroed; then the digits are filled in place.
  auto metadata = f.metadata;
  metadata.erase(kLegacyChecksumKey);
  metadata[kChecksumKey] = kZeroSum;
  const std::string header = header_text(path, entries, metadata);
  const size_t header_size = header.size(), sum_at = checksum_pos(header);
  SLM_CHECK(sum_at != std::string::npos, "[safetensors] internal error: no checksum field while writing ", path);
  std::string out(8 + header_size + data_size, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(header_size) >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header_size);
  char* data = out.data() + 8 + header_size;
  for (const auto& e : entries)
    if (e.end > e.begin) std::memcpy(data + e.begin, e.tensor.data_ptr(), e.end - e.begin);
  const std::string sum = hex64(hash64(out));
  std::memcpy(out.data() + 8 + sum_at, sum.data(), sum.size());
  fs::write_atomic(path, out);
}

File read(const std::string& path) {
  std::string bytes = fs::read_file(path);
  SLM_CHECK(bytes.size() >= 8, "[safetensors] ", path, " is truncated (", bytes.size(),
            " bytes; the header length alone needs 8)");
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  SLM_CHECK(header_size <= bytes.size() - 8, "[safetensors] ", path, " is truncated or malformed: header length ",
            header_size, " exceeds the ", bytes.size() - 8, " bytes after the length prefix");
  std::string_view data(bytes.data() + 8 + header_size, bytes.size() - 8 - header_size);
  nlohmann::json header = parse_header(path, std::string_view(bytes.data() + 8, header_size));
  SLM_CHECK(header.is_object(), "[safetensors] ", path, " is malformed: the header is not a JSON object");

  File f;
  struct Parsed {
    Entry entry;
    torch::ScalarType type;
    std::vector<int64_t> shape;
  };
  std::vector<Parsed> parsed;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      SLM_CHECK(value.is_object(), "[safetensors] ", path, " is malformed: ", kMetadataKey, " is not an object");
      for (const auto& [k, v] : value.items()) {
        SLM_CHECK(v.is_string(), "[safetensors] ", path, " is malformed: metadata ", quoted(k), " is a ", v.type_name(),
                  ", not a string");
        f.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    Parsed p;
    parse_entry(path, key, value, data.size(), &p.entry, &p.type, &p.shape);
    parsed.push_back(std::move(p));
  }
  // File order: by offsets; empty tensors sit at the offset of their successor, ties keep name order.
  std::stable_sort(parsed.begin(), parsed.end(), [](const Parsed& a, const Parsed& b) {
    return std::make_pair(a.entry.begin, a.entry.end) < std::make_pair(b.entry.begin, b.entry.end);
  });
  uint64_t covered = 0;
  for (const auto& p : parsed) {
    SLM_CHECK(p.entry.begin == covered, "[safetensors] ", path, " is malformed: tensor ", quoted(p.entry.name),
              " starts at data offset ", p.entry.begin, " but the previous tensor ends at ", covered,
              " (tensors must be contiguous without gaps or overlap)");
    covered = p.entry.end;
  }
  SLM_CHECK(covered == data.size(), "[safetensors] ", path, " is malformed: tensors cover ", covered,
            " bytes of the ", data.size(), "-byte data buffer");

  if (auto sum = f.metadata.find(kChecksumKey); sum != f.metadata.end()) {
    const size_t at = checksum_pos(std::string_view(bytes.data() + 8, header_size));
    SLM_CHECK(at != std::string::npos && sum->second.size() == 16, "[safetensors] ", path,
              " is corrupt: its ", kChecksumKey, " field is damaged; restore or regenerate the file");
    std::string zeroed = bytes;
    std::memcpy(zeroed.data() + 8 + at, kZeroSum, 16);
    const std::string actual = hex64(hash64(zeroed));
    SLM_CHECK(actual == sum->second, "[safetensors] ", path, " is corrupt: file checksum ", actual,
              " does not match the recorded ", kChecksumKey, " ", sum->second, "; restore or regenerate the file");
  } else if (auto legacy = f.metadata.find(kLegacyChecksumKey); legacy != f.metadata.end()) {
    const std::string actual = hex64(hash64(data));
    SLM_CHECK(actual == legacy->second, "[safetensors] ", path, " is corrupt: data checksum ", actual,
              " does not match the recorded ", kLegacyChecksumKey, " ", legacy->second,
              "; restore or regenerate the file");
  }
  for (const auto& p : parsed) {
    torch::Tensor t = torch::empty(p.shape, torch::TensorOptions().dtype(p.type));
    size_t n = p.entry.end - p.entry.begin;
    if (n > 0) std::memcpy(t.data_ptr(), data.data() + p.entry.begin, n);
    if (p.type == torch::kBool) {
      const auto* b = reinterpret_cast<const unsigned char*>(data.data() + p.entry.begin);
      SLM_CHECK(std::all_of(b, b + n, [](unsigned char c) { return c <= 1; }), "[safetensors] ", path,
                " is malformed: BOOL tensor ", quoted(p.entry.name), " holds a byte other than 0 or 1");
    }
    f.tensors.emplace_back(p.entry.name, std::move(t));
  }
  return f;
}

}  // namespace slm::st
