// The slmlab source revision this binary was configured from (git commit, "unknown" outside git),
// and its code id: a hash of the sources that decide what training computes (src/model, src/train,
// src/data, src/catalog, src/common), taken at build time, so it changes with uncommitted edits too.
#pragma once

namespace slm {
const char* git_commit();
const char* code_id();
}
