// The slmlab source revision this binary was configured from (git commit, "unknown" outside git).
#pragma once

namespace slm {
const char* git_commit();
}
