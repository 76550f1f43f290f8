#!/usr/bin/env bash
# Configures (once) and builds slmlab into build/. Extra args go to cmake --build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${SLMLAB_BUILD_DIR:-$root/build}"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release ${SLMLAB_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$build" -j "$(nproc)" "$@"
