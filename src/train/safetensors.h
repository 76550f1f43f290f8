// safetensors files (https://huggingface.co/docs/safetensors): 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw data.
// Used for exports and, with optimizer state and metadata added, for checkpoints. Writes are atomic.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace slm::st {

struct File {
  std::map<std::string, std::string> metadata;
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // in file order (sorted by name on write)
};

// Writes tensors (contiguous CPU copies, dtypes F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL) and
// metadata. Adds metadata "file_xxh64": the XXH3-64 of the whole file (length, header with all
// metadata, data) with those 16 digits written as zeros, checked by read().
void write(const std::string& path, const File& f);
// Reads and validates (header bounds, offsets, checksum when present: "file_xxh64", or an older
// file's "data_xxh64" over the data only); throws slm::Error on any problem. A file read back with
// kFileChecksum in its metadata had every byte checked.
File read(const std::string& path);
constexpr const char* kFileChecksum = "file_xxh64";

}  // namespace slm::st
