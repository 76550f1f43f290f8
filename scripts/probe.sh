#!/usr/bin/env bash
# Bad-input probes (issue 18 §3, §4): runs the built binary against inputs it must refuse and checks
# each one exits 2 (a user error, not 0 and not an internal error) with one error line on stderr,
# no terminal control bytes in it, and nothing written. Add a probe for every bad input found.
#   scripts/probe.sh [path/to/slmlab]      (default: build/slmlab)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/build/slmlab}")
[[ -x "$bin" ]] || { echo "probe: $bin is not an executable; build it with scripts/build.sh --target slmlab" >&2; exit 2; }
work=$(mktemp -d /tmp/slmlab-probe-XXXXXX)
trap 'rm -rf "$work"' EXIT
in="$work/in"      # inputs (plans, substrates, a fake run folder), read-only to the probes
cwd="$work/cwd"    # each probe runs here; anything that appears in it was written
mkdir -p "$in" "$cwd"
tiny="$root/substrates/cpu-tiny.toml"
one='[[phases]]
[[phases.experiments]]
id = "baseline"
seeds = [1]'
plan() {  # plan NAME BODY: a plan file on cpu-tiny
  printf 'name = "p"\nsubstrate = "%s"\n%s\n' "$tiny" "$2" >"$in/$1.toml"
}
plan k_noise_string "$(printf '[rule]\nk_noise = "5"\n%s' "$one")"
plan max_retries_float "$(printf '[rule]\nmax_retries = 0.5\n%s' "$one")"
plan correction_unknown "$(printf '[rule]\ncorrection = "bonferroni"\n%s' "$one")"
plan base_array "$(printf '%s\n[[phases.experiments]]\nid = "x"\nbase = ["baseline"]\nseeds = [2]' "$one")"
plan experiments_ints "$(printf '[[phases]]\nname = "a"\nexperiments = [1, 2]')"
plan module_nan "$(printf '%s\n[[phases.experiments]]\nid = "x"\nseeds = [2]\nmodules = [{ name = "mtp", weight = nan }]' "$one")"
plan id_dotdot "$(printf '[[phases]]\n[[phases.experiments]]\nid = "../../.."\nseeds = [1]')"
plan id_slash_dot "$(printf '%s\n[[phases.experiments]]\nid = "baseline/."\nseeds = [2]' "$one")"
plan id_case "$(printf '%s\n[[phases.experiments]]\nid = "BASELINE"\nseeds = [2]' "$one")"
plan id_esc "$(printf '[[phases]]\n[[phases.experiments]]\nid = "\\u001b[2Jx\\u0007"\nseeds = [1]')"
plan key_esc "$(printf '%s\n"\\u001b[31m" = 1' "$one")"
plan phases_int 'phases = 5'
plan seeds_string "$(printf '[[phases]]\n[[phases.experiments]]\nid = "a"\nseeds = "1"')"
plan allow_mixed_string "$(printf '[rule]\nallow_mixed_code = "yes"\n%s' "$one")"
plan metric_int "$(printf '[rule]\nmetric = 5\n%s' "$one")"
plan description_bel "$(printf 'description = "ring\\u0007"\n%s' "$one")"
plan phase_slash "$(printf '[[phases]]\nname = "a/b"\n[[phases.experiments]]\nid = "x"\nseeds = [1]')"
printf 'name = "s"\nlr_matrix = nan\n' >"$in/lr_nan.toml"
printf 'name = "p"\nsubstrate = "lr_nan.toml"\n%s\n' "$one" >"$in/substrate_nan.toml"
printf 'name = "../../x"\nsubstrate = "%s"\n%s\n' "$tiny" "$one" >"$in/plan_name_dotdot.toml"
: >"$in/empty.toml"
printf 'name = "p"\nsubstrate = "empty.toml"\n%s\n' "$one" >"$in/substrate_empty.toml"
printf 'name = "s"\ndepth = 4.5\n' >"$in/depth_float.toml"
printf 'name = "p"\nsubstrate = "depth_float.toml"\n%s\n' "$one" >"$in/substrate_float.toml"
mkdir -p "$in/run" && echo '{}' >"$in/run/config.json"
plan ok "$one"
# A ledger another ablate holds (the flock beside it, with that ablate's pid in it).
mkdir -p "$in/held" && echo 4242 >"$in/held/ledger.sqlite.lock"
chmod -R a-w "$in"
exec 9<"$in/held/ledger.sqlite.lock" && flock -n 9  # held by this script until it exits

probes=(
  "plan check $in/k_noise_string.toml"
  "plan check $in/max_retries_float.toml"
  "plan check $in/base_array.toml"
  "plan check $in/experiments_ints.toml"
  "plan check $in/module_nan.toml"
  "plan check $in/id_dotdot.toml"
  "plan check $in/id_slash_dot.toml"
  "plan check $in/id_case.toml"
  "plan check $in/id_esc.toml"
  "plan check $in/key_esc.toml"
  "plan check $in/plan_name_dotdot.toml"
  "plan check $in/substrate_empty.toml"
  "plan check $in/substrate_float.toml"
  "plan check $in/phases_int.toml"
  "plan check $in/seeds_string.toml"
  "plan check $in/metric_int.toml"
  "plan check $in/allow_mixed_string.toml"
  "plan check $in/description_bel.toml"
  "plan check $in/phase_slash.toml"
  "plan check $in/substrate_nan.toml"
  "train --substrate cpu-tiny --set name=../x --out $cwd/run --dry-run"
  "train --substrate $in/lr_nan.toml --out $cwd/run --dry-run"
  "eval compile $in/run --max-seconds nan"
  "eval compile $in/run --max-seconds -1"
  "ablate $in/id_dotdot.toml --runs $cwd/runs --ledger $cwd/ledger.sqlite"
  "ablate $in/id_esc.toml --runs $cwd/runs --ledger $cwd/ledger.sqlite"
  "train --substrate $in/empty.toml --out $cwd/run --dry-run"
  "data build --out $cwd/d --vocab 4294969344"
  "demo --jobs 4294967298 --runs $cwd/runs"
  "ablate $in/k_noise_string.toml --jobs -1"
  "ablate $in/correction_unknown.toml --runs $cwd/runs --ledger $cwd/ledger.sqlite"
  "ablate $in/ok.toml --max-seeds 3 --runs $cwd/runs --ledger $cwd/ledger.sqlite"
  "ablate $in/ok.toml --decide --max-seeds 99 --runs $cwd/runs --ledger $cwd/ledger.sqlite"
  "ablate $in/ok.toml --runs $cwd/runs --ledger $in/held/ledger.sqlite"
  "eval bpb $in/run --context -5 --tokens -1"
  "eval bpb $in/run --tokens -1"
  "generate $in/run --top-k -5"
  "generate $in/run --seed 99999999999999999999"
  "generate $in/run --temperature inf"
  "eval compile $in/run --temperature nan"
  "eval compile $in/run --n -3"
  "eval bpb $in/run --checkpoint 99999999999999999999"
  "generate $in/run --checkpoint 99999999999999999999"
  "data build --out $cwd/d --val-frac nan"
)

fails=0
for p in "${probes[@]}"; do
  # shellcheck disable=SC2086  # the probe is a word list
  (cd "$cwd" && "$bin" $p >"$work/out" 2>"$work/err")
  rc=$?
  why=""
  n_err=$(grep -c '^slmlab: error: ' "$work/err")
  others=$(grep -vc -e '^slmlab: error: ' -e '^  - ' "$work/err")
  if [[ $rc -ne 2 ]]; then why="exit $rc (want 2)"
  elif [[ $n_err -ne 1 || $others -ne 0 ]]; then why="stderr is not one 'slmlab: error:' line (plan check may list '  - ' lines above it)"
  elif LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f]' "$work/err" "$work/out"; then why="control bytes reach the terminal"
  elif [[ -n "$(ls -A "$cwd")" ]]; then why="wrote: $(ls -A "$cwd" | tr '\n' ' ')"
  fi
  if [[ -n "$why" ]]; then
    echo "FAIL slmlab $p: $why"
    sed 's/^/    /' "$work/err" | LC_ALL=C cat -v | head -5
    fails=$((fails + 1))
    rm -rf "${cwd:?}"/* "$cwd"/.[!.]* 2>/dev/null
  else
    echo "ok   slmlab $p: $(LC_ALL=C grep '^slmlab: error: ' "$work/err" | cut -c1-150)"
  fi
done
echo "probe: ${#probes[@]} probes, $fails failed"
[[ $fails -eq 0 ]]
