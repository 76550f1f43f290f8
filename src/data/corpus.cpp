#include "data/corpus.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>
#include <unordered_set>

#include "common/error.h"
#include "common/fs.h"
#include "common/hash.h"

namespace slm::data {
namespace stdfs = std::filesystem;

uint64_t Corpus::bytes() const {
  uint64_t n = 0;
  for (auto& f : files) n += f.content.size();
  return n;
}

std::vector<std::string> default_source_roots() {
  // /usr/include holds the compiler's libstdc++ tree (/usr/include/c++/N) on Debian.
  std::vector<std::string> roots;
  for (const char* r : {"/usr/include", "/usr/src"})
    if (fs::is_dir(r)) roots.push_back(r);
  return roots;
}

bool is_source_path(const std::string& rel) {
  static const std::unordered_set<std::string> exts = {
      ".c",  ".h",   ".cc",  ".hh",  ".cpp", ".hpp", ".cxx", ".hxx", ".c++", ".h++",
      ".ipp", ".tpp", ".tcc", ".inl", ".ixx", ".cppm", ".cu", ".cuh"};
  stdfs::path p(rel);
  std::string name = p.filename().string();
  auto dot = name.rfind('.');
  if (dot != std::string::npos && dot > 0) {
    std::string ext = name.substr(dot);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return exts.count(ext) > 0;
  }
  if (dot == 0) return false;  // hidden files
  // Extension-less: only inside a C++ standard library tree (a path component "c++").
  for (auto& part : p.parent_path())
    if (part == "c++") return true;
  return false;
}

namespace {

using Candidate = Listed;

}  // namespace

void list_sources(const std::string& root, uint32_t root_idx, std::vector<Listed>& out, std::vector<Skip>& skipped) {
  std::error_code ec;
  auto it = stdfs::recursive_directory_iterator(root, stdfs::directory_options::none, ec);
  if (ec) fail("[data] cannot read source directory ", root, ": ", ec.message(), "; pass --src with a readable directory");
  const stdfs::recursive_directory_iterator end;
  while (it != end) {
    const stdfs::path p = it->path();
    std::error_code e2;
    bool is_dir = it->is_directory(e2);
    if (!is_dir) {
      std::string rel = stdfs::relative(p, root, e2).string();
      if (is_source_path(rel)) {
        bool regular = it->is_regular_file(e2);
        if (regular)
          out.push_back({root_idx, rel, "", {}, ""});
        else
          skipped.push_back({p.string(), "unreadable"});  // broken symlink, socket, fifo
      }
    }
    it.increment(e2);
    if (e2) {
      skipped.push_back({p.string(), "unreadable"});
      it.pop(e2);  // leave the directory we could not enter
      if (e2) break;
    }
  }
}

Corpus collect(const std::vector<std::string>& roots, uint64_t max_file_bytes, int threads) {
  SLM_CHECK(!roots.empty(), "[data] no source directories; pass --src DIR");
  std::vector<Candidate> cands;
  std::vector<Skip> skipped;
  for (uint32_t i = 0; i < roots.size(); ++i) {
    SLM_CHECK(fs::is_dir(roots[i]), "[data] source directory ", roots[i],
              " does not exist or is not a directory; pass --src with an existing directory");
    list_sources(roots[i], i, cands, skipped);
  }
  return collect_listed(roots, std::move(cands), std::move(skipped), max_file_bytes, threads);
}

Corpus collect_listed(const std::vector<std::string>& roots, std::vector<Listed> cands, std::vector<Skip> skipped,
                      uint64_t max_file_bytes, int threads) {
  Corpus c;
  c.roots = roots;
  c.skipped = std::move(skipped);
  std::sort(cands.begin(), cands.end(),
            [](const Candidate& a, const Candidate& b) { return a.root != b.root ? a.root < b.root : a.rel < b.rel; });

  // Read and hash in parallel; results land in their slot so the order stays deterministic.
  std::vector<SourceFile> read(cands.size());
  std::vector<std::string> why(cands.size());
  std::atomic<size_t> next{0};
  int n_threads = std::max(1, threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < n_threads; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next++) < cands.size();) {
        SourceFile& f = read[i];
        f.root = cands[i].root;
        f.rel = cands[i].rel;
        f.project = cands[i].project;
        f.args = cands[i].args;
        f.command_hash = cands[i].command_hash;
        f.path = fs::join(roots[f.root], f.rel);
        std::error_code ec;
        auto size = stdfs::file_size(f.path, ec);
        if (ec) {
          why[i] = "unreadable";
          continue;
        }
        if (size > max_file_bytes) {
          why[i] = "too_large";
          continue;
        }
        try {
          f.content = fs::read_file(f.path);
        } catch (const Error&) {
          why[i] = "unreadable";
          continue;
        }
        if (f.content.size() > max_file_bytes) {
          why[i] = "too_large";
        } else if (std::memchr(f.content.data(), '\0', f.content.size())) {
          why[i] = "binary";
        } else if (f.content.empty()) {
          why[i] = "empty";
        } else {
          f.hash = hash128_hex(f.content);
          continue;
        }
        f.content.clear();
      }
    });
  for (auto& th : pool) th.join();

  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < read.size(); ++i) {
    if (why[i].empty() && !seen.insert(read[i].hash).second) why[i] = "duplicate";
    if (!why[i].empty()) {
      c.skipped.push_back({read[i].path, why[i]});
      continue;
    }
    c.files.push_back(std::move(read[i]));
  }
  for (auto& s : c.skipped) c.skip_counts[s.reason]++;
  return c;
}

}  // namespace slm::data
