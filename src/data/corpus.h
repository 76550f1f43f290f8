// Collecting C and C++ sources: by extension, plus the extension-less headers of C++ standard
// library trees (".../c++/12/vector"). Binary files (NUL bytes), files over a size cap, duplicates
// (same content hash) and unreadable entries are skipped and every skip is counted and listed.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace slm::data {

struct SourceFile {
  std::string path;     // as found: root + "/" + rel
  std::string rel;      // relative to its root
  uint32_t root = 0;    // index into the roots list
  std::string hash;     // XXH3-128 hex of the content
  std::string content;
  // Set for files of a --project source (project.h): the project's name, the arguments libclang
  // parses the file with (compiler and output dropped) and a hash of its compile command ("" = the
  // project has no compile database).
  std::string project;
  std::vector<std::string> args;
  std::string command_hash;
};

// A file to read: its root, its path relative to the root, and its project facts (if any).
struct Listed {
  uint32_t root = 0;
  std::string rel;
  std::string project;
  std::vector<std::string> args;
  std::string command_hash;
};

struct Skip {
  std::string path;
  std::string reason;  // "binary", "too_large", "duplicate", "unreadable"
};

struct Corpus {
  std::vector<std::string> roots;
  std::vector<SourceFile> files;  // deterministic order: (root index, rel path bytewise)
  std::vector<Skip> skipped;
  std::map<std::string, uint64_t> skip_counts;
  uint64_t bytes() const;
};

// The machine's own C++ trees: the compiler's standard library headers and /usr/include, /usr/src.
std::vector<std::string> default_source_roots();

// True when the file name says C/C++ source or header (or an extension-less header in a c++ tree).
bool is_source_path(const std::string& rel_path);

// Walks every root (a missing or unreadable root is an error), reads, filters and deduplicates.
Corpus collect(const std::vector<std::string>& roots, uint64_t max_file_bytes, int threads);

// Lists the C/C++ files under one root (sorted); unreadable entries become skips.
void list_sources(const std::string& root, uint32_t root_idx, std::vector<Listed>& out, std::vector<Skip>& skipped);

// Reads, filters and deduplicates listed files (sorted by root, then rel path).
Corpus collect_listed(const std::vector<std::string>& roots, std::vector<Listed> cands, std::vector<Skip> skipped,
                      uint64_t max_file_bytes, int threads);

}  // namespace slm::data
