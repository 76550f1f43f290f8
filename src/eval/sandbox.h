// Sandboxed compile check: does generated C++ pass `g++ -std=c++17 -fsyntax-only`?
// Generated code is never executed. The compiler runs under Debian's bubblewrap (`bwrap`): every
// namespace unshared (no network), only the compiler's directories visible, read-only, plus the
// source in a fresh temporary directory (mounted at /src) and a small tmpfs /tmp. rlimits (CPU,
// address space, file size, processes) are set before exec and a wall-clock timeout kills the
// process group. There is no unsandboxed fallback: without bwrap the check refuses.
// RLIMIT_NPROC does not bind root, so when slmlab runs as root the sandbox runs as an unprivileged
// user (nobody, 65534) and its process limit holds. A result's status comes from what the kernel
// reports (exit code, signal, the CPU time and peak memory of the sandbox's processes), never from
// the compiler's text, which the source can write (`#error CPU time limit exceeded`).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace slm::eval {

struct SandboxOptions {
  std::string bwrap = "/usr/bin/bwrap";
  std::string compiler = "/usr/bin/g++";  // resolved on the host; must lie under ro_paths
  // -Werror=return-type: `int f(int a) { }` is not a compiling body.
  std::vector<std::string> flags = {"-std=c++17", "-fsyntax-only", "-Werror=return-type", "-fmax-errors=10",
                                    "-fdiagnostics-color=never"};
  // Read-only at the same path inside; missing ones are skipped. /bin, /lib, /lib64 follow the host
  // (symlinks into /usr on merged-/usr systems, else bound read-only too).
  std::vector<std::string> ro_paths = {"/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/include"};
  std::string filename = "main.cpp";      // the source's name inside /src (compiled as C++ whatever it is)
  int cpu_seconds = 20;                    // RLIMIT_CPU, per process
  double wall_seconds = 30;                // whole check; then the process group is killed
  uint64_t memory_bytes = 2ull << 30;      // RLIMIT_AS, per process
  uint64_t file_bytes = 16ull << 20;       // RLIMIT_FSIZE and the size of the /tmp tmpfs
  int max_processes = 64;                  // RLIMIT_NPROC above the user's current task count (it is per user)
  uint32_t root_uid = 65534, root_gid = 65534;  // who the sandbox runs as when slmlab is root (nobody)
  size_t max_output_bytes = 64 << 10;      // compiler output kept; more kills the check (OutputLimit)
};

enum class CompileStatus {
  Ok,                  // compiled
  CompileError,        // the compiler rejected the source
  Timeout,             // wall-clock limit
  CpuLimit,            // RLIMIT_CPU: a signal ended it, or its processes used the CPU limit
  MemoryLimit,         // RLIMIT_AS: it failed with its peak memory near the limit
  OutputLimit,         // more than max_output_bytes of diagnostics
  SandboxUnavailable,  // bwrap or the compiler missing, or the sandbox could not be set up
};
const char* compile_status_name(CompileStatus s);  // "ok", "compile_error", ...

struct CompileResult {
  bool ok = false;
  CompileStatus status = CompileStatus::SandboxUnavailable;
  int exit_code = -1;        // the sandbox's exit status; -1 when killed by a signal
  int signal = 0;            // the signal that ended it, 0 if none
  std::string first_error;   // the first "error:" line (or the first line of output, or the reason)
  std::string output;        // stdout + stderr, at most max_output_bytes
  double wall_seconds = 0;
  double cpu_seconds = 0;    // user + system time of the sandbox's processes
  uint64_t peak_rss_bytes = 0;  // the largest of them
};

// One check. SandboxUnavailable results say why (e.g. "install it with apt-get install bubblewrap");
// they describe the machine, not the source, so callers must not count them as failures.
CompileResult check_compiles(const std::string& source, const SandboxOptions& o = {});

// Throws slm::Error ("[sandbox] ...") unless a trivial program compiles in the sandbox; call once
// before an evaluation so a missing bwrap stops it instead of scoring every sample 0.
void require_sandbox(const SandboxOptions& o = {});

}  // namespace slm::eval
