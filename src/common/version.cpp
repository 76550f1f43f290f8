#include "common/version.h"

#include "code_id.h"  // generated at build time (scripts/code_id.cmake)

#ifndef SLMLAB_GIT_COMMIT
#define SLMLAB_GIT_COMMIT "unknown"
#endif

namespace slm {
const char* git_commit() { return SLMLAB_GIT_COMMIT; }
const char* code_id() { return SLMLAB_CODE_ID; }
}  // namespace slm
