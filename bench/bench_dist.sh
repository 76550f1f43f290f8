#!/usr/bin/env bash
# Data-parallel benchmark: cpu-tiny (fp32) trained by one process and by `--nproc 2` on the same total
# batch, on this machine, with the gradient buckets all-reduced during backward (the default) and
# after it. Reports step time, the all-reduce time a step waits for (metrics' comm_ms: what backward
# did not hide, plus copying back) as a share of the step, the buckets sent during backward, and
# how far the DP=2 loss curve and val_bpb are from the single-process ones.
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
"$bin" train "${common[@]}" --out "$work/two-after" --threads "$tpr" --nproc 2 --grad-reduce after >/dev/null
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
def dp(run):
    st = steps(run)
    ms = statistics.median(r["step_ms"] for s, r in st.items() if s > warm)
    comm = statistics.median(r["comm_ms"] for s, r in st.items() if s > warm)
    early = statistics.median(r.get("buckets_in_backward", 0) for s, r in st.items() if s > warm)
    return ms, comm, early
ms2, comm2, early2 = dp("two")
ms3, comm3, early3 = dp("two-after")
dl = max(abs(one[s]["loss"] - two[s]["loss"]) for s in one)
same = all(two[s]["loss"] == steps("two-after")[s]["loss"] for s in two)
v1, v2 = vals("one"), vals("two")
dv = max(abs(v1[s] - v2[s]) for s in v1)
print("| run | threads | step ms (median) | all-reduce wait ms | wait / step | buckets sent in backward |")
print("|---|---|---|---|---|---|")
print(f"| 1 process | {2 * tpr} | {ms1:.0f} | - | - | - |")
print(f"| 1 process | {tpr} | {msh:.0f} | - | - | - |")
print(f"| DP=2, --grad-reduce overlap | {tpr} x 2 | {ms2:.0f} | {comm2:.1f} | {100 * comm2 / ms2:.1f}% | {early2:.0f} |")
print(f"| DP=2, --grad-reduce after | {tpr} x 2 | {ms3:.0f} | {comm3:.1f} | {100 * comm3 / ms3:.1f}% | {early3:.0f} |")
print(f"max |loss(DP=2) - loss(1)| over {len(one)} steps: {dl:.2e}; max |val_bpb diff| over {len(v1)} evals: {dv:.2e} "
      f"(step 0: {abs(v1[0] - v2[0]):.1e}); overlap and after bitwise equal: {same}")
PY
