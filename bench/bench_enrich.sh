#!/usr/bin/env bash
# Enrichment benchmark (issue 23 §2): libclang enrichment speed of `data build --enrich` on the real
# projects the cpp-enriched-local recipe collects (scripts/data_cpp_enriched.sh), at 1 and 2 threads:
# files/s of the enrichment phase alone (the build prints it), the share of files parsed fully, and the
# load average beside it (a loaded machine slows every figure; say so when you quote one).
#   bench/bench_enrich.sh [SOURCES_DIR]   (default: data/cpp-enriched-local.sources, left by the recipe)
# VOCAB=N sets the tokenizer size (default 8192, the recipe's; the enrichment itself does not depend on it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$root/data/cpp-enriched-local.sources}
bin=${SLMLAB_BIN:-$root/build/slmlab}
vocab=${VOCAB:-8192}
[[ -d "$src/googletest" && -d "$src/nlohmann-json" ]] ||
  { echo "bench_enrich: $src does not hold the recipe's projects; run scripts/data_cpp_enriched.sh first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; libclang $(dpkg-query -W -f='${Version}' libclang1-14 2>/dev/null || echo '?')"
printf "\n| threads | files | parsed fully | share | enrich s | files/s | load avg (1 min) before, after |\n|---|---|---|---|---|---|---|\n"
for threads in 1 2; do
  before=$(cut -d' ' -f1 /proc/loadavg)
  # The split does not matter here: any validation size will do.
  out=$("$bin" data build --project "$src/googletest" --project "$src/nlohmann-json" --enrich --threads "$threads" \
        --vocab "$vocab" --val-frac 0.2 --val-min-bytes 1 --out "$work/ds$threads" 2>&1) ||
    { echo "bench_enrich: data build failed: $(tail -1 <<<"$out")" >&2; exit 1; }
  after=$(cut -d' ' -f1 /proc/loadavg)
  # "enrichment: 140 of 163 files parsed fully (85.9%), 23 kept raw; 51.2s (3.2 files/s)"
  line=$(grep '^enrichment:' <<<"$out")
  read -r parsed files share secs rate < <(sed -E 's/^enrichment: ([0-9]+) of ([0-9]+) files parsed fully \(([0-9.]+)%\), [0-9]+ kept raw; ([0-9.]+)s \(([0-9.]+) files\/s\)$/\1 \2 \3 \4 \5/' <<<"$line")
  echo "| $threads | $files | $parsed | $share% | $secs | $rate | $before, $after |"
done
