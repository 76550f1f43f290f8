// Where main() writes the one-line error of a failing command, atomically (empty: nowhere). `train`
// names its run folder's failure.txt, so a runner records the trainer's own reason, not a log line.
#pragma once
#include <string>

namespace slm {

inline std::string& failure_file() {
  static std::string path;
  return path;
}

}  // namespace slm
