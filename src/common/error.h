// slmlab errors: every user-facing failure is an slm::Error with a one-line message
// that names what is wrong and how to fix it. main() catches it once and exits non-zero.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace slm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// fail("[data] ", path, " is not a directory; pass --src DIR with a readable directory")
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat(args...));
}

// Never compiled out: input validation and invariants alike.
#define SLM_CHECK(cond, ...)                 \
  do {                                       \
    if (!(cond)) ::slm::fail(__VA_ARGS__);   \
  } while (0)

}  // namespace slm
