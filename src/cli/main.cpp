// slmlab: one binary, subcommands from the table in cli/table.cpp.
// Errors are caught here once, printed as one line, and turned into a non-zero exit.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/device.h"
#include "common/error.h"
#include "common/failure.h"
#include "common/fs.h"
#include "common/options.h"

namespace {

using Handler = int (*)(const slm::cli::Args&);

const std::map<std::string, Handler>& handlers() {
  static const std::map<std::string, Handler> h = {
      {"data build", slm::cli::cmd_data_build},
      {"data verify", slm::cli::cmd_data_verify},
      {"data stats", slm::cli::cmd_data_stats},
      {"demo", slm::cli::cmd_demo},
      {"train", slm::cli::cmd_train},
      {"export", slm::cli::cmd_export},
      {"bench peak", slm::cli::cmd_bench_peak},
      {"catalog", slm::cli::cmd_catalog},
      {"plan check", slm::cli::cmd_plan_check},
      {"ablate", slm::cli::cmd_ablate},
      {"report", slm::cli::cmd_report},
      {"eval bpb", slm::cli::cmd_eval_bpb},
      {"generate", slm::cli::cmd_generate},
      {"draft train", slm::cli::cmd_draft_train},
      {"eval decode", slm::cli::cmd_eval_decode},
      {"eval compile", slm::cli::cmd_eval_compile},
      {"invalidate", slm::cli::cmd_invalidate},
  };
  return h;
}

int run(const std::vector<std::string>& argv) {
  using namespace slm::cli;
  Args a = parse(argv);
  if (!a.command) {
    std::fputs(help(nullptr).c_str(), stdout);
    return argv.empty() ? 2 : 0;
  }
  if (a.has("help")) {
    std::fputs(help(a.command).c_str(), stdout);
    return 0;
  }
  auto it = handlers().find(a.command->name);
  if (it == handlers().end()) slm::fail("slmlab ", a.command->name, " has no handler in this build");
  return it->second(a);
}

}  // namespace

// The error line, where the command asked for it (slm::failure_file). A disk that cannot take it
// leaves no file, and the runner falls back to the log's last line.
static void record_failure(const std::string& line) {
  if (slm::failure_file().empty()) return;
  try {
    slm::fs::write_atomic(slm::failure_file(), line + "\n");
  } catch (const std::exception&) {
  }
}

int main(int argc, char** argv) {
  slm::device::exec_with_passive_openmp(argv);
  // A write past a file-size limit then fails with EFBIG and a clear error instead of killing us.
  std::signal(SIGXFSZ, SIG_IGN);
  // Keep freed blocks in the process: the training step allocates the same large temporaries every
  // step, and glibc's defaults hand them back to the OS and page-fault them in again (measured:
  // Mamba-3's scan ran 2.5-7x slower than attention with the defaults, 1.85x without).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return run(args);
  } catch (const slm::Error& e) {
    std::fprintf(stderr, "slmlab: error: %s\n", e.what());
    record_failure(std::string("error: ") + e.what());
    return 2;
  } catch (const std::exception& e) {
    // Anything else is a bug or an environment failure; still one line, still non-zero.
    std::fprintf(stderr, "slmlab: internal error: %s\n", e.what());
    record_failure(std::string("internal error: ") + e.what());
    return 3;
  }
}
