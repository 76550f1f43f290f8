#!/usr/bin/env bash
# Data-parallel benchmark: cpu-tiny (fp32) trained by one process and by `--nproc 2` on the same total
# batch, on this machine, with the gradient buckets all-reduced during backward (the default) and
# after it. Reports step time, the all-reduce time a step waits for (metrics' comm_ms: what backward
# did not hide, plus copying back) as a share of the step, the buckets sent during backward, and
# how far the DP=2 loss curve and val_bpb are from the single-process ones.
#   bench/bench_dist.sh [DATA_DIR] [STEPS] [THREADS_PER_RANK]
# One process runs with 2 x THREADS_PER_RANK threads (the same cores as DP=2) and with THREADS_PER_RANK.
# Then, per module (MODULES, space-separated --module arguments, "baseline" for none; default every
# Tier-1 module at its catalog defaults, DSA with a 2-step warm-up so its sparse top-k runs): the
# step time of one process (2 x THREADS_PER_RANK threads, the same cores, and THREADS_PER_RANK), of
# DP=2 and of TP=2 (--set tp=2; each rank THREADS_PER_RANK threads), all on the same total batch
# (a smaller step than cpu-tiny's, below), and the share of the step spent in
# collectives: for DP=2 the gradient all-reduce a step waits for (comm_ms), for TP=2 the time inside
# the tensor-parallel group's all-reduces and all-gathers (tp_comm_ms: forward, backward, the
# gradient norm, Muon's gathered update), waiting for the other rank included. Skip the first part
# with SECTIONS=modules, the second with SECTIONS=dp.
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
sections=${SECTIONS:-dp modules}
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start" \
  "(shared with other jobs); data $data; cpu-tiny fp32, $steps steps ($warm warm-up excluded)"
if [[ " $sections " == *" dp "* ]]; then
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
fi

[[ " $sections " == *" modules "* ]] || exit 0
modules=${MODULES:-baseline dsa.warmup_steps=2 mamba3 moe engram mhc mtp top ncp cbp mod flexidepth gateskip}
# A small model (cpu-tiny at 4 x 64, 4 heads of 16: cpu-tp2dp2's geometry) on 8 rows of 128 tokens
# a step and a small evaluation, so that every module's three runs take minutes on a shared 2-core
# machine (at this size the collectives weigh more than at cpu-tiny's). One process and TP=2 take the
# 8 rows in one forward (device_batch 8), each DP=2 rank its 4 in one.
mcommon=(--quiet --data "$data" --substrate cpu-tiny --set precision=fp32 --set steps="$steps" --set ckpt_every=0
         --set aspect=16 --set head_dim=16 --set context=128 --set total_batch=1024 --set device_batch=8
         --set eval_tokens=512)
echo "modules: 4 x 64 model (4 heads of 16), context 128, 1024 tokens/step, fp32, $steps steps ($warm warm-up excluded)"
for m in $modules; do
  mod=()
  [[ $m == baseline ]] || mod=(--module "$m")
  d="$work/mod-${m%%.*}"
  mkdir -p "$d"
  "$bin" train "${mcommon[@]}" "${mod[@]}" --out "$d/one" --threads $((2 * tpr)) >/dev/null
  "$bin" train "${mcommon[@]}" "${mod[@]}" --out "$d/one-half" --threads "$tpr" >/dev/null
  "$bin" train "${mcommon[@]}" "${mod[@]}" --out "$d/dp2" --threads "$tpr" --nproc 2 >/dev/null
  "$bin" train "${mcommon[@]}" "${mod[@]}" --out "$d/tp2" --threads "$tpr" --nproc 2 --set tp=2 >/dev/null
  echo "  $m done, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
python3 - "$work" "$warm" "$tpr" $modules <<'PY'
import json, sys, statistics
work, warm, tpr, mods = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def steps(run): return {r["step"]: r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if "loss" in r}
def med(st, key): return statistics.median(r[key] for s, r in st.items() if s > warm)
# Ratios against the one-process run on the same cores (2 x THREADS_PER_RANK threads) and, in
# brackets, against one process on THREADS_PER_RANK threads.
print(f"| module | 1 process ms ({2 * tpr} / {tpr} threads) | DP=2 ms | DP=2 / 1 | DP all-reduce wait / step "
      f"| TP=2 ms | TP=2 / 1 | TP collectives / step | max loss diff TP=2 vs 1 |")
print("|---|---|---|---|---|---|---|---|---|")
for m in mods:
    d = f"{work}/mod-{m.split('.')[0]}"
    one, half, dp, tp = (steps(f"{d}/{r}") for r in ("one", "one-half", "dp2", "tp2"))
    ms1, msh, msd, mst = med(one, "step_ms"), med(half, "step_ms"), med(dp, "step_ms"), med(tp, "step_ms")
    dl = max(abs(one[s]["loss"] - tp[s]["loss"]) for s in one)
    print(f"| {m} | {ms1:.0f} / {msh:.0f} | {msd:.0f} | {msd / ms1:.2f} ({msd / msh:.2f}) | {100 * med(dp, 'comm_ms') / msd:.1f}% "
          f"| {mst:.0f} | {mst / ms1:.2f} ({mst / msh:.2f}) | {100 * med(tp, 'tp_comm_ms') / mst:.1f}% | {dl:.1e} |")
PY
