#!/usr/bin/env bash
# Trainer benchmark: slmlab against the same model and training step written in Python PyTorch
# (bench/py_model.py on Debian's python3-torch, the same LibTorch), side by side on this machine:
# tokens/s and peak RSS, fp32 and bf16, at cpu-tiny and at a larger configuration.
#   bench/bench_trainer.sh [DATA_DIR] [STEPS]
# Needs: scripts/setup.sh --bench (python3-torch) and a built slmlab.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$root/data/cpp-local}
steps=${2:-12}
bin=${SLMLAB_BIN:-$root/build/slmlab}
py=/usr/bin/python3   # Debian's python3 with python3-torch (a pyenv python3 may shadow it on PATH)
threads=$(nproc)
# One OpenMP wait policy for both implementations (slmlab's binary waits passively unless told
# otherwise, common/device.h; Python's torch would spin by default).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
vocab=$("$bin" data stats "$data" --json --top 0 | $py -c 'import json,sys; print(json.load(sys.stdin)["vocab"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | depth aspect head_dim context total_batch device_batch
configs=(
  "cpu-tiny|4 48 64 256 4096 16"
  "d6-384|6 64 64 512 8192 16"
)
warm=2
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $threads threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, load $(cut -d" " -f1-3 /proc/loadavg); data $data (vocab $vocab); $steps timed steps after $warm warm-up"
printf "\n| config | precision | impl | tokens/s | step ms | peak RSS MiB | speedup |\n|---|---|---|---|---|---|---|\n"
for cfg in "${configs[@]}"; do
  name=${cfg%%|*}
  read -r depth aspect hd ctx tb db <<<"${cfg#*|}"
  for prec in fp32 bf16; do
    run="$work/$name-$prec"
    "$bin" train --quiet --data "$data" --substrate cpu-tiny --out "$run" --threads "$threads" \
      --set depth=$depth --set aspect=$aspect --set head_dim=$hd --set context=$ctx --set total_batch=$tb \
      --set device_batch=$db --set steps=$((steps + warm)) --set eval_every=0 --set eval_tokens=$ctx \
      --set ckpt_every=0 --set precision=$prec >/dev/null
    c=$($py - "$run" "$warm" <<'PY'
import json, sys, statistics
run, warm = sys.argv[1], int(sys.argv[2])
ms = [r["step_ms"] for r in map(json.loads, open(run + "/metrics.jsonl")) if "step_ms" in r and r["step"] > warm]
s = json.load(open(run + "/summary.json"))
med = statistics.median(ms)
print(f'{s["tokens"] / s["steps"] * 1000 / med:.0f} {med:.0f} {s["peak_rss_bytes"] / 2**20:.0f}')
PY
)
    p=$($py "$root/bench/py_model.py" --vocab "$vocab" --depth $depth --aspect $aspect --head-dim $hd --context $ctx \
      --total-batch $tb --device-batch $db --steps $steps --warmup $warm --precision $prec --threads "$threads" |
      $py -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.0f %.0f" % (r["tokens_per_second"], r["step_ms"], r["peak_rss_bytes"] / 2**20))')
    read -r ct cms crss <<<"$c"
    read -r pt pms prss <<<"$p"
    printf "| %s | %s | python | %s | %s | %s | 1.00x |\n" "$name" "$prec" "$pt" "$pms" "$prss"
    printf "| %s | %s | slmlab | %s | %s | %s | %.2fx |\n" "$name" "$prec" "$ct" "$cms" "$crss" "$($py -c "print($ct/$pt)")"
  done
done
