// File helpers. Writes that a reader may see are atomic: temporary name, fsync, rename,
// fsync of the directory. A crash leaves either the old file or the new one, never half.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace slm::fs {

// Whole file into memory; throws slm::Error naming the path on failure.
std::string read_file(const std::string& path);
// Atomically replaces `path` with `bytes` (tmp + fsync + rename + dir fsync).
void write_atomic(const std::string& path, std::string_view bytes);
// fsync a file or directory by path.
void fsync_path(const std::string& path);
bool exists(const std::string& path);
bool is_dir(const std::string& path);
void mkdirs(const std::string& path);
// rm -rf; silently nothing if missing.
void remove_all(const std::string& path);
// Rename with fsync of the parent; throws on failure.
void rename(const std::string& from, const std::string& to);
std::string join(const std::string& a, const std::string& b);
std::string parent(const std::string& path);

}  // namespace slm::fs
