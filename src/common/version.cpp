#include "common/version.h"

#ifndef SLMLAB_GIT_COMMIT
#define SLMLAB_GIT_COMMIT "unknown"
#endif

namespace slm {
const char* git_commit() { return SLMLAB_GIT_COMMIT; }
}  // namespace slm
