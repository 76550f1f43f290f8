#!/usr/bin/env bash
# Oversubscription benchmark (issue 19): a cpu-tiny training step alone and with one CPU-bound
# neighbour (`yes >/dev/null`) on the same cores, under OpenMP's two wait policies. A neighbour that
# takes one of two cores should cost about 2x; spinning threads made it 3-10x (docs/LOG.md).
#   bench/bench_neighbour.sh [DATA_DIR] [STEPS]
# Prints the median step time of each case and the ratio with / without the neighbour per policy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$root/data/cpp-local}
steps=${2:-8}
bin=${SLMLAB_BIN:-$root/build/slmlab}
py=/usr/bin/python3
work=$(mktemp -d)
neighbour=""
cleanup() { [[ -n "$neighbour" ]] && kill "$neighbour" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
warm=2

step_ms() {  # POLICY: the median step time (ms) of a cpu-tiny run after $warm warm-up steps
  local run="$work/run-$RANDOM"
  OMP_WAIT_POLICY=$1 "$bin" train --quiet --data "$data" --substrate cpu-tiny --out "$run" \
    --set steps=$((steps + warm)) --set eval_every=0 --set ckpt_every=0 >/dev/null
  $py - "$run" "$warm" <<'PY'
import json, statistics, sys
run, warm = sys.argv[1], int(sys.argv[2])
ms = [r["step_ms"] for r in map(json.loads, open(run + "/metrics.jsonl")) if "step_ms" in r and r["step"] > warm]
print(f"{statistics.median(ms):.0f}")
PY
  rm -rf "$run"
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cpus; load $(cut -d' ' -f1-3 /proc/loadavg); cpu-tiny, $steps timed steps after $warm"
declare -A quiet busy
for policy in ACTIVE PASSIVE; do quiet[$policy]=$(step_ms $policy); done
yes >/dev/null &
neighbour=$!
for policy in ACTIVE PASSIVE; do busy[$policy]=$(step_ms $policy); done
kill "$neighbour"
neighbour=""
printf "\n| OMP_WAIT_POLICY | step ms alone | step ms with a neighbour | ratio |\n|---|---|---|---|\n"
for policy in ACTIVE PASSIVE; do
  printf "| %s | %s | %s | %.2fx |\n" "$policy" "${quiet[$policy]}" "${busy[$policy]}" \
    "$($py -c "print(${busy[$policy]} / ${quiet[$policy]})")"
done
