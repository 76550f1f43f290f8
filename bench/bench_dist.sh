#!/usr/bin/env bash
# Data-parallel benchmark: cpu-tiny (fp32) trained by one process and by `--nproc 2` on the same total
# batch, on this machine. Reports step time, the all-reduce's share of a step (metrics' comm_ms:
# bucketing + Gloo all-reduce + copy back, not overlapped with backward), and how far the DP=2 loss
# curve and val_bpb are from the single-process ones.
#   bench/bench_dist.sh [DATA_DIR] [STEPS] [THREADS_PER_RANK]
# One process runs with 2 x THREADS_PER_RANK threads (the same cores as DP=2) and with THREADS_PER_RANK.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$root/data/cpp-local}
steps=${2:-20}
tpr=${3:-1}
bin=${SLMLAB_BIN:-$root/build/slmlab}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--quiet --data "$data" --substrate cpu-tiny --set precision=fp32 --set steps="$steps" --set eval_every=10
        --set ckpt_every=0)
warm=2
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; data $data; cpu-tiny fp32, $steps steps ($warm warm-up excluded)"
"$bin" train "${common[@]}" --out "$work/one" --threads $((2 * tpr)) >/dev/null
"$bin" train "${common[@]}" --out "$work/one-half" --threads "$tpr" >/dev/null
"$bin" train "${common[@]}" --out "$work/two" --threads "$tpr" --nproc 2 >/dev/null
python3 - "$work" "$warm" "$tpr" <<'PY'
import json, sys, statistics
work, warm, tpr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def recs(run): return [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl")]
def steps(run): return {r["step"]: r for r in recs(run) if "loss" in r}
def vals(run): return {r["step"]: r["val_bpb"] for r in recs(run) if "val_bpb" in r}
one, two = steps("one"), steps("two")
ms1 = statistics.median(r["step_ms"] for s, r in one.items() if s > warm)
half = steps("one-half")
msh = statistics.median(r["step_ms"] for s, r in half.items() if s > warm)
ms2 = statistics.median(r["step_ms"] for s, r in two.items() if s > warm)
comm = statistics.median(r["comm_ms"] for s, r in two.items() if s > warm)
dl = max(abs(one[s]["loss"] - two[s]["loss"]) for s in one)
v1, v2 = vals("one"), vals("two")
dv = max(abs(v1[s] - v2[s]) for s in v1)
print("| run | threads | step ms (median) | all-reduce ms | all-reduce / step |")
print("|---|---|---|---|---|")
print(f"| 1 process | {2 * tpr} | {ms1:.0f} | - | - |")
print(f"| 1 process | {tpr} | {msh:.0f} | - | - |")
print(f"| DP=2 (Gloo) | {tpr} x 2 | {ms2:.0f} | {comm:.1f} | {100 * comm / ms2:.1f}% |")
print(f"max |loss(DP=2) - loss(1)| over {len(one)} steps: {dl:.2e}; max |val_bpb diff| over {len(v1)} evals: {dv:.2e} "
      f"(step 0: {abs(v1[0] - v2[0]):.1e})")
PY
