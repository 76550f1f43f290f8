#!/usr/bin/env bash
# Configures (once) and builds slmlab into build/. Extra args go to cmake --build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${SLMLAB_BUILD_DIR:-$root/build}"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
head=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo none)
if [[ ! -f "$build/CMakeCache.txt" || "$(cat "$build/.git_head" 2>/dev/null)" != "$head" ]]; then
  # (Re)configure: first build, or HEAD moved (the ledger records the commit a binary came from).
  cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release ${SLMLAB_CMAKE_ARGS:-} >/dev/null
  echo "$head" >"$build/.git_head"
fi
cmake --build "$build" -j "$(nproc)" "$@"
