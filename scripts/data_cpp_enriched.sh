#!/usr/bin/env bash
# The closest honest equivalent of the article's `cpp_enriched_16k` that this machine can build
# (issue 23 §4): real C/C++ projects found on a Debian 12 machine, each parsed with its own compile
# database, enriched by libclang, cut into documents of at most 16384 tokens on top-level
# declarations.
#   googletest    /usr/src/googletest (Debian's googletest package), configured by CMake with its tests
#                 and samples (-DCMAKE_EXPORT_COMPILE_COMMANDS=ON): ~80 units and the headers they reach
#   nlohmann-json /usr/include/nlohmann (nlohmann-json3-dev), header-only: a generated compile database
#                 with each header as a C++17 unit and the include root as -I
# The sources are copied (linked) into a scratch directory; nothing is written outside it and the data
# set. What differs from the article's is in the README ("cpp-enriched-local").
#   scripts/data_cpp_enriched.sh [OUT_DIR] [path/to/slmlab]   (default: data/cpp-enriched-local, build/slmlab)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${1:-$root/data/cpp-enriched-local}"
bin=$(realpath "${2:-$root/build/slmlab}")
[[ -x "$bin" ]] || { echo "data_cpp_enriched: $bin is not an executable; build it with scripts/build.sh --target slmlab" >&2; exit 2; }
for need in /usr/src/googletest/CMakeLists.txt /usr/include/nlohmann/json.hpp; do
  [[ -e "$need" ]] || { echo "data_cpp_enriched: $need is missing; install googletest and nlohmann-json3-dev (scripts/setup.sh)" >&2; exit 2; }
done
command -v cmake >/dev/null || { echo "data_cpp_enriched: cmake is missing; install it (scripts/setup.sh)" >&2; exit 2; }
work="$out.sources"
rm -rf "$work"
mkdir -p "$work"

# googletest: its own CMake build's compile database (configure only; nothing is compiled).
cp -r /usr/src/googletest "$work/googletest"
cmake -S "$work/googletest" -B "$work/googletest/build" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -Dgtest_build_tests=ON -Dgmock_build_tests=ON -Dgtest_build_samples=ON >"$work/googletest.cmake.log" 2>&1 ||
  { echo "data_cpp_enriched: cmake could not configure googletest; see $work/googletest.cmake.log" >&2; exit 1; }

# nlohmann-json: every header a unit, as a header-only library is used.
mkdir -p "$work/nlohmann-json/include"
cp -r /usr/include/nlohmann "$work/nlohmann-json/include/"
( cd "$work/nlohmann-json" && find include -type f \( -name '*.hpp' -o -name '*.h' \) | LC_ALL=C sort |
  awk -v d="$work/nlohmann-json" 'BEGIN { print "[" } { printf "%s{\"directory\": \"%s\", \"file\": \"%s/%s\", \"command\": \"c++ -x c++ -std=c++17 -I%s/include -c %s/%s\"}\n", (NR > 1 ? "," : ""), d, d, $0, d, d, $0 } END { print "]" }' \
  >compile_commands.json )

"$bin" data build --project "$work/googletest" --project "$work/nlohmann-json" --enrich --doc-tokens 16384 \
  --val-min-bytes 160000 --name cpp-enriched-local --out "$out" --force "${@:3}"
"$bin" data verify "$out"
