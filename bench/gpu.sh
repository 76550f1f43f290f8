#!/usr/bin/env bash
# The CUDA benchmark of slmlab in one bounded run on a lent GPU machine (issue 9): builds slmlab
# against the machine's CUDA LibTorch (pip torch), measures the GPU's matmul peak, trains the gpu-d12
# substrate for a fixed number of steps in slmlab and the same model in PyTorch (bench/py_model.py,
# eager and torch.compile), times DSA sparse attention against dense attention at 4K context, runs
# the GPU correctness tests (tests/test_cuda.cpp: CUDA against CPU; built beside the benchmarks, run
# after them on the idle GPU), and writes a markdown report with the raw logs. Every phase has its own timeout inside one overall
# budget, so a hang in one phase still leaves the others' results.
#
#   bash bench/gpu.sh                 # on the GPU machine: report + logs under $OUT (else /tmp/gpu-bench)
#   bash bench/gpu.sh --cpu-dry-run   # here: the same flow on the CPU at tiny sizes (checks the script)
# Options: --out DIR, --budget SECONDS (default 520 on a GPU, of which the last 50 are kept for the
#   tests), --tests on|off (default on), --steps N (timed steps, default 25),
#   --warmup N (default 5), --overlap on|off|auto (run the Python benches on cores of their own while
#   slmlab builds, then again on the idle machine if time is left; auto = on with 8+ cores),
#   --build-dir DIR (default build-gpu, or build-gpu-dry for the dry run), --jobs N (default nproc).
# Env: PYTHON (default python3; /usr/bin/python3 for the dry run), GPU_DEPS=auto|always|never (use the
#   carried .gpudeps/: when a prerequisite is missing, always, never), GPU_GTEST=auto|system|carried|source
#   (GoogleTest for the tests: the machine's own unless GPU_DEPS=always, else the carried prebuilt one,
#   compiled from the carried sources when that does not link), GPU_BENCH_DATA=DIR (a data set
#   to use instead of building one), GPU_BENCH_WORK=DIR (scratch, default /tmp/slmlab-gpu-work).
#
# How to run it with the device tool (see bench/GPU.md): here, once, `bash bench/gpu_deps.sh`
# (fills the git-ignored .gpudeps/ with the headers and static libraries our Debian packages give),
# then one device `run` with carry [".gpudeps"], command "bash bench/gpu.sh", timeout_s 570.
# What comes back under $OUT (9 files at most): report.md, results.json, env.log, build.log,
# slmlab.log, slmlab-metrics.jsonl, python.log, mixers.log, tests.log.
set -uo pipefail
# The whole script is one function, read before it runs: editing the file meanwhile cannot change a run.
main() {
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1

mode=gpu out="" budget="" steps="" warm="" overlap=auto build_dir="" jobs=$(nproc) tests=on
while (($#)); do
  case $1 in
    --cpu-dry-run) mode=cpu ;;
    --out) out=$2; shift ;;
    --budget) budget=$2; shift ;;
    --steps) steps=$2; shift ;;
    --warmup) warm=$2; shift ;;
    --overlap) overlap=$2; shift ;;
    --tests) tests=$2; shift ;;
    --build-dir) build_dir=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown option '$1' (see bash bench/gpu.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
case $overlap in on | off | auto) ;; *) echo "gpu.sh: --overlap is on, off or auto" >&2; exit 2 ;; esac
case $tests in on | off) ;; *) echo "gpu.sh: --tests is on or off" >&2; exit 2 ;; esac
case ${GPU_GTEST:-auto} in auto | system | carried | source) ;; *) echo "gpu.sh: GPU_GTEST is auto, system, carried or source" >&2; exit 2 ;; esac

out=${out:-${OUT:-/tmp/gpu-bench}}
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
work=${GPU_BENCH_WORK:-/tmp/slmlab-gpu-work}
rm -rf "$work"
mkdir -p "$work"
state="$work/state.tsv"   # phase <TAB> status <TAB> rc <TAB> seconds <TAB> note
: >"$state"
t_start=$(date +%s)

# ---- the two modes: the GPU run, and the same flow on this CPU at tiny sizes
if [[ $mode == gpu ]]; then
  dev=cuda
  PY=${PYTHON:-python3}
  budget=${budget:-520}
  steps=${steps:-25}
  warm=${warm:-5}
  build_dir=${build_dir:-$root/build-gpu}
  # gpu-d12: 12 x 768 (6 heads of 128), context 2048, 256k tokens/step in 4 micro-batches of 32 rows
  substrate=gpu-d12
  depth=12 aspect=64 head_dim=128 context=2048 total_batch=262144 device_batch=32
  vocab_build=8192
  mixer_tokens=65536 mixer_ctx=4096 mixer_reps=10
  peak_ref=790e12   # bf16 dense matmul measured on this workplace's H200 (device docs, KINDS.md)
  cap_scale=1       # phase timeouts as written below
else
  dev=cpu
  PY=${PYTHON:-/usr/bin/python3}
  budget=${budget:-3600}
  steps=${steps:-3}
  warm=${warm:-1}
  build_dir=${build_dir:-$root/build-gpu-dry}
  substrate=gpu-d12
  depth=2 aspect=32 head_dim=32 context=128 total_batch=1024 device_batch=4
  vocab_build=2048
  mixer_tokens=2048 mixer_ctx=1024 mixer_reps=1
  peak_ref=0
  cap_scale=8       # 2 shared cores: a first build takes 15-20 minutes; the budget still bounds all
fi
[[ $build_dir == /* ]] || build_dir="$root/$build_dir"
# cmake and ninja may be pip packages beside the Python that holds torch, off the PATH
pybin=$(dirname "$(command -v "$PY" 2>/dev/null || echo /nonexistent/python3)")
for t in cmake ninja; do
  command -v "$t" >/dev/null || { [[ -x $pybin/$t ]] && export PATH="$pybin:$PATH"; }
done
if [[ $overlap == auto ]]; then
  if [[ $mode == gpu && $jobs -ge 8 ]] && command -v taskset >/dev/null; then overlap=on; else overlap=off; fi
fi
[[ $overlap == on ]] && ! command -v taskset >/dev/null && { echo "gpu.sh: --overlap on needs taskset" >&2; exit 2; }
# The benchmark phases end by the budget less the tests' reserve; the test run (last) may use it all.
test_reserve=0
[[ $tests == on ]] && test_reserve=50
deadline=$((t_start + budget - test_reserve))
bin="$build_dir/slmlab"
mixers="$build_dir/bench/bench_mixers"

log() { echo "[gpu.sh $(date +%T) +$(($(date +%s) - t_start))s] $*"; }
left() { echo $((deadline - $(date +%s))); }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$state"; }

# run_phase NAME CAP LOGFILE [quiet] -- CMD...: runs CMD under `timeout` (CAP seconds, less if the
# budget has less left), its output appended to LOGFILE (and shown, unless quiet); records the status.
run_phase() {
  local name=$1 cap=$2 logf=$3 quiet=0
  shift 3
  [[ $1 == quiet ]] && { quiet=1; shift; }
  [[ $1 == -- ]] && shift
  cap=$((cap * cap_scale))
  local t=$(($(left) - 5))
  ((t > cap)) && t=$cap
  if ((t < 10)); then
    log "$name: skipped, the budget is spent"
    record "$name" skipped "" 0 "budget spent before it started"
    return 99
  fi
  log "$name: start (timeout ${t}s)"
  echo "### [$name] $(date -u +%FT%TZ) timeout ${t}s: $*" >>"$logf"
  local s rc
  s=$(date +%s.%N)
  if ((quiet)); then
    timeout -k 10 "$t" "$@" >>"$logf" 2>&1
    rc=$?
  else
    timeout -k 10 "$t" "$@" 2>&1 | tee -a "$logf"
    rc=${PIPESTATUS[0]}
  fi
  local dur
  dur=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
  echo "### [$name] rc $rc after ${dur}s" >>"$logf"
  if ((rc == 0)); then
    record "$name" ok 0 "$dur"
  elif ((rc == 124 || rc == 137)); then
    record "$name" timeout "$rc" "$dur" "killed after its ${t}s timeout"
  else
    # the phase's own lines: its first error-looking line, else its last line
    local sec
    sec=$(awk -v h="### [$name] " 'index($0, h) == 1 {on = 1; next} on && !/^### /' "$logf")
    local note
    note=$(grep -m1 -iE 'error|fatal|traceback|exception|not found|no such|needs ' <<<"$sec" || true)
    [[ -n $note ]] || note=$(grep -v '^[[:space:]]*$' <<<"$sec" | tail -1)
    record "$name" failed "$rc" "$dur" "$(tr '\t' ' ' <<<"${note:0:300}")"
  fi
  log "$name: rc $rc after ${dur}s"
  return "$rc"
}
status_of() { awk -F'\t' -v p="$1" '$1 == p {s = $2} END {print s}' "$state"; }

envlog="$out/env.log" buildlog="$out/build.log" slmlog="$out/slmlab.log" pylog="$out/python.log" mixlog="$out/mixers.log"
testlog="$out/tests.log"
: >"$envlog"; : >"$buildlog"; : >"$slmlog"; : >"$pylog"; : >"$mixlog"; : >"$testlog"
rm -f "$out/report.md" "$out/results.json" "$out/slmlab-metrics.jsonl"

# ---- 0. environment and prerequisites
log "mode $mode, device $dev, budget ${budget}s, $steps timed steps after $warm warm-up, overlap $overlap, out $out"
{
  echo "## machine"
  date -u +%FT%TZ
  uname -a
  echo "cores: $(nproc); jobs $jobs"
  free -g 2>/dev/null | head -2
  df -h "$root" 2>/dev/null | tail -1
  grep -m1 'model name' /proc/cpuinfo
  echo "repo: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo 'no git here')"
  git -C "$root" status --short 2>/dev/null | head -40
  echo "## gpu"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  echo "## tools"
  for t in "$PY" cmake ninja c++ g++ nvcc pkg-config ccache taskset; do
    p=$(command -v "$t" 2>/dev/null)
    printf '%-10s %s  %s\n' "$t" "${p:-MISSING}" "$([[ -n $p ]] && "$t" --version 2>&1 | grep -m1 -iE 'version|[0-9]+\.[0-9]+' )"
  done
} >>"$envlog" 2>&1
torch_info=$("$PY" - <<'PY' 2>&1
import json, os
try:
    import torch
except Exception as e:
    print(json.dumps({"error": "import torch failed: %s" % e}))
    raise SystemExit
d = {"torch": torch.__version__, "torch_file": torch.__file__, "cuda": torch.version.cuda,
     "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
     "cmake_prefix_path": getattr(torch.utils, "cmake_prefix_path", ""),
     "include": os.path.join(os.path.dirname(torch.__file__), "include"),
     "compile": hasattr(torch, "compile"), "cuda_available": torch.cuda.is_available()}
try:
    d["cudnn"] = torch.backends.cudnn.version()
except Exception:
    d["cudnn"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(gpu=p.name, capability="%d.%d" % (p.major, p.minor), gpu_mem_gib=round(p.total_memory / 2**30, 1),
             sms=p.multi_processor_count)
try:
    import triton
    d["triton"] = triton.__version__
except Exception:
    d["triton"] = None
print(json.dumps(d))
PY
)
echo "$torch_info" >"$work/torch.json"
{ echo "## python torch"; echo "$PY: $torch_info"; } >>"$envlog"
tj() { "$PY" -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$work/torch.json" "$1" 2>/dev/null; }
torch_prefix=$(tj cmake_prefix_path)
torch_inc=$(tj include)
log "python torch: $torch_info"
[[ -n $torch_prefix && -d $torch_prefix/Torch ]] || torch_prefix=""   # Debian's python3-torch: LibTorch is found by the system paths

# The build's prerequisites on this machine, each checked the way the build uses it.
deps="$root/.gpudeps"
missing=()
cxx=$(command -v c++ || command -v g++ || true)
have_header() { [[ -n $cxx ]] && printf '#include <%s>\nint main(){}\n' "$1" | "$cxx" -std=c++17 -fsyntax-only -x c++ - ${2:+-I"$2"} >/dev/null 2>&1; }
have_lib() { [[ -n $cxx ]] && printf 'int main(){}\n' | "$cxx" -x c++ - -o /dev/null "-l$1" >/dev/null 2>&1; }
[[ -n $cxx ]] || missing+=("a C++ compiler (c++/g++)")
command -v cmake >/dev/null || missing+=("cmake")
command -v pkg-config >/dev/null || missing+=("pkg-config")
have_header nlohmann/json.hpp || missing+=("nlohmann/json.hpp (nlohmann-json3-dev)")
have_cmake_pkg() {
  local d
  for d in /usr/share/cmake /usr/lib/cmake /usr/lib/*/cmake /usr/local/share/cmake /usr/local/lib/cmake; do
    [[ -f $d/$1/$1Config.cmake || -f $d/$1/$1-config.cmake ]] && return 0
  done
  return 1
}
have_cmake_pkg nlohmann_json || missing+=("nlohmann_json CMake package (nlohmann-json3-dev)")
have_header sqlite3.h || missing+=("sqlite3.h (libsqlite3-dev)")
have_lib sqlite3 || missing+=("libsqlite3 to link (libsqlite3-dev)")
have_header xxhash.h || missing+=("xxhash.h (libxxhash-dev)")
{ command -v pkg-config >/dev/null && pkg-config --exists libxxhash; } || missing+=("libxxhash.pc (libxxhash-dev)")
have_header toml++/toml.h || missing+=("toml++/toml.h (libtomlplusplus-dev)")
{ command -v pkg-config >/dev/null && pkg-config --exists tomlplusplus; } || missing+=("tomlplusplus.pc (libtomlplusplus-dev)")
have_header gloo/algorithm.h "$torch_inc" || missing+=("gloo/algorithm.h (libgloo-dev; the pip torch wheel ships no Gloo headers)")
command -v ninja >/dev/null || echo "ninja: not found, the build uses make" >>"$envlog"
nvcc=$(command -v nvcc || { [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc; } || true)
[[ $mode == gpu && -z $nvcc ]] && echo "nvcc: not found (torch's CMake config needs the CUDA toolkit)" >>"$envlog"
use_deps=0
case ${GPU_DEPS:-auto} in
  always) use_deps=1 ;;
  never) use_deps=0 ;;
  *) ((${#missing[@]})) && use_deps=1 ;;
esac
if ((use_deps)) && [[ ! -f $deps/MANIFEST ]]; then
  echo "carried deps: wanted but $deps is absent (run bash bench/gpu_deps.sh here and carry .gpudeps)" >>"$envlog"
  use_deps=0
fi
{
  echo "## prerequisites"
  if ((${#missing[@]})); then printf 'missing on this machine: %s\n' "${missing[@]}"; else echo "all found on this machine"; fi
  if ((use_deps)); then echo "using the carried $deps:"; cat "$deps/MANIFEST"; else echo "not using .gpudeps (GPU_DEPS=${GPU_DEPS:-auto})"; fi
} >>"$envlog"
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DSLMLAB_TESTS=OFF -DSLMLAB_BENCH=ON)
command -v ninja >/dev/null && cmake_args+=(-G Ninja)
prefix="$torch_prefix"
if ((use_deps)); then
  # pkg-config files with this folder's path; pkgconf itself only when the machine has no pkg-config
  mkdir -p "$work/pkgconfig"
  for f in "$deps"/pkgconfig.in/*.pc; do sed "s|@PREFIX@|$deps|" "$f" >"$work/pkgconfig/$(basename "$f")"; done
  export PKG_CONFIG_PATH="$work/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  if ! command -v pkg-config >/dev/null || [[ ${GPU_DEPS:-auto} == always ]]; then
    export PATH="$deps/bin:$PATH"
    cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$deps/bin/pkg-config")
  fi
  prefix="${prefix:+$prefix;}$deps"
  # Gloo's headers have no CMake target here: searched after the system's and LibTorch's own.
  cmake_args+=(-DCMAKE_CXX_FLAGS="-idirafter $deps/include")
fi
[[ -n $prefix ]] && cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix")
if [[ $mode == gpu ]]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # Hopper; skips torch's arch probe
  if [[ -n $nvcc ]]; then
    cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
    export CUDA_HOME=${CUDA_HOME:-$cuda_root} CUDACXX=${CUDACXX:-$nvcc}
    cmake_args+=(-DCUDAToolkit_ROOT="$cuda_root")
  fi
fi
echo "cmake args: ${cmake_args[*]}" >>"$envlog"
# A build folder configured with other arguments (with or without .gpudeps) keeps cached paths and
# flags that the new ones would not replace: start its configuration afresh.
if [[ -f $build_dir/CMakeCache.txt && "$(cat "$build_dir/.gpu_sh_args" 2>/dev/null)" != "${cmake_args[*]}" ]]; then
  echo "build folder $build_dir was configured with other arguments: its CMake cache is removed" >>"$envlog"
  rm -f "$build_dir/CMakeCache.txt"
fi
build_ok=1
if ((${#missing[@]})) && ((!use_deps)); then
  build_ok=0
  record build skipped "" 0 "missing prerequisites: ${missing[*]}; run bash bench/gpu_deps.sh here and carry .gpudeps"
  log "build: skipped, missing: ${missing[*]}"
fi

# ---- GoogleTest for the GPU correctness tests (tests/test_cuda.cpp). The main configure above keeps
# -DSLMLAB_TESTS=OFF, so nothing test-related can stop the benchmarks; once slmlab is built, the same
# build folder is configured again with the tests on and only test_cuda is built (in the background).
gtest_from="" tests_why="" gtest_dir=""
if [[ $tests == off ]]; then
  tests_why="not asked for (--tests off)"
else
  gsys=0
  have_header gtest/gtest.h && have_cmake_pkg GTest && gsys=1
  gcarried=0
  [[ ${GPU_DEPS:-auto} != never && -f $deps/gtest/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ]] && gcarried=1
  case ${GPU_GTEST:-auto} in
    system) gtest_from=system ;;
    carried | source) gtest_from=$GPU_GTEST ;;
    *) if ((gsys)) && [[ ${GPU_DEPS:-auto} != always ]]; then gtest_from=system; else gtest_from=carried; fi ;;
  esac
  if [[ $gtest_from == system ]] && ((!gsys)); then
    tests_why="no GoogleTest on this machine (gtest/gtest.h and the GTest CMake package) and GPU_GTEST=system"
    gtest_from=""
  elif [[ $gtest_from == carried || $gtest_from == source ]] && ((!gcarried)); then
    tests_why="no GoogleTest: none on this machine$( ((gsys)) && echo ' used (GPU_DEPS=always)'), and no carried $deps/gtest (run bash bench/gpu_deps.sh here and carry .gpudeps)"
    [[ ${GPU_DEPS:-auto} == never ]] && tests_why="no GoogleTest on this machine, and GPU_DEPS=never refuses the carried one"
    gtest_from=""
  fi
fi
# LibTorch's C++ ABI: gtest must be built with the same one (Debian's libgtest.a has the new ABI)
abi_flag=-D_GLIBCXX_USE_CXX11_ABI=1
[[ $(tj cxx11_abi) == False ]] && abi_flag=-D_GLIBCXX_USE_CXX11_ABI=0
{
  echo "## GoogleTest (tests/test_cuda.cpp)"
  echo "on this machine: $( ((${gsys:-0})) && echo found || echo 'not found') ; carried: $( ((${gcarried:-0})) && echo "$deps/gtest" || echo none); GPU_GTEST=${GPU_GTEST:-auto}"
  if [[ -n $gtest_from ]]; then echo "using: $gtest_from ($abi_flag)"; else echo "the tests will not run: $tests_why"; fi
} >>"$envlog"

# ---- the Python side (bench/py_model.py), same model and step as slmlab's substrate
py_run() {  # py_run NAME CAP COMPILE(0|1) [pin cores]
  local name=$1 cap=$2 comp=$3 pin=${4:-}
  local cmd=("$PY" "$root/bench/py_model.py" --device "$dev" --vocab "${vocab:-$vocab_build}" --depth "$depth"
    --aspect "$aspect" --head-dim "$head_dim" --context "$context" --total-batch "$total_batch"
    --device-batch "$device_batch" --steps "$steps" --warmup "$warm" --precision bf16 --threads "${py_threads:-$jobs}")
  ((comp)) && cmd+=(--compile)
  [[ -n $pin ]] && cmd=(taskset -c "$pin" "${cmd[@]}")
  run_phase "$name" "$cap" "$pylog" -- env PYTHONUNBUFFERED=1 "${cmd[@]}"
}

# ---- 1. build (in the background while the Python benches run on cores of their own, with --overlap)
build_jobs=$jobs
pin_build="" pin_py=""
py_cores=$((jobs / 4))
((py_cores > 4)) && py_cores=4
((py_cores < 1)) && py_cores=1
if [[ $overlap == on ]]; then
  ((jobs >= 2)) || { echo "gpu.sh: --overlap on needs 2+ cores" >&2; exit 2; }
  build_jobs=$((jobs - py_cores))
  pin_build="0-$((build_jobs - 1))"
  pin_py="$build_jobs-$((jobs - 1))"
fi
do_build() {
  local pre=()
  [[ -n $pin_build ]] && pre=(taskset -c "$pin_build")
  run_phase configure 180 "$buildlog" quiet -- "${pre[@]}" cmake -S "$root" -B "$build_dir" "${cmake_args[@]}" || return 1
  echo "${cmake_args[*]}" >"$build_dir/.gpu_sh_args"
  run_phase build 420 "$buildlog" quiet -- "${pre[@]}" cmake --build "$build_dir" -j "$build_jobs" --target slmlab bench_mixers
}

# gtest_prepare: sets gtest_dir (GTest_DIR for cmake; empty for the machine's own GTest), or fails.
# The carried prebuilt archives are first linked and run in a one-test program; when that fails (another
# compiler, LibTorch's old C++ ABI) gtest is compiled from the carried sources into $work/gtest.
gtest_prepare() {
  [[ $gtest_from == system ]] && { echo "GoogleTest: this machine's own GTest package" >>"$testlog"; return 0; }
  local g="$deps/gtest"
  if [[ $gtest_from == carried ]]; then
    if run_phase gtest-check 60 "$testlog" quiet -- bash -c 'printf "#include <gtest/gtest.h>\nTEST(Gtest, Links) { EXPECT_EQ(1, 1); }\n" |
        "$1" -std=c++17 "$4" -DGTEST_HAS_PTHREAD=1 -isystem "$2/include" -x c++ - -x none \
          "$2/lib/x86_64-linux-gnu/libgtest_main.a" "$2/lib/x86_64-linux-gnu/libgtest.a" -pthread -o "$3" && "$3" --gtest_brief=1' \
        _ "$cxx" "$g" "$work/gtest-check" "$abi_flag"; then
      gtest_dir="$g/lib/x86_64-linux-gnu/cmake/GTest"
      return 0
    fi
    echo "the carried prebuilt libgtest.a did not link or run here: gtest is compiled from the carried sources" >>"$testlog"
  fi
  local w="$work/gtest"
  rm -rf "$w"
  mkdir -p "$w/lib/x86_64-linux-gnu/cmake"
  ln -s "$g/include" "$w/include"
  cp -a "$g/lib/x86_64-linux-gnu/cmake/GTest" "$w/lib/x86_64-linux-gnu/cmake/"
  run_phase gtest-compile 150 "$testlog" quiet -- bash -c 'set -e; cd "$3/lib/x86_64-linux-gnu"
      c() { "$1" -std=c++17 -O1 -fPIC "$4" -DGTEST_HAS_PTHREAD=1 -isystem "$2/include" -I"$2" -c "$2/src/$5.cc" -o "$5.o"; }
      c "$@" gtest-all & p=$!
      c "$@" gtest_main
      wait $p
      ar rcs libgtest.a gtest-all.o && ar rcs libgtest_main.a gtest_main.o && rm -f ./*.o' \
    _ "$cxx" "$g" "$w" "$abi_flag" || return 1
  gtest_dir="$w/lib/x86_64-linux-gnu/cmake/GTest"
}
# tests_build (in the background, beside the benchmark phases, at low priority on 2 jobs): gtest, the
# configure with the tests on, and test_cuda alone. A configure that would rebuild slmlab's own objects
# (binaries the benchmarks are running) is refused.
tests_build() {
  touch "$work/tests-build.start"
  gtest_prepare || { record build-tests skipped "" 0 "GoogleTest could not be prepared (see tests.log)"; return 1; }
  local targs=("${cmake_args[@]}" -DSLMLAB_TESTS=ON)
  [[ -n $gtest_dir ]] && targs+=(-DGTest_DIR="$gtest_dir")
  run_phase configure-tests 120 "$testlog" quiet -- nice -n 15 cmake -S "$root" -B "$build_dir" "${targs[@]}" || return 1
  if [[ -f $build_dir/build.ninja ]] && command -v ninja >/dev/null; then
    local steps_n
    steps_n=$(ninja -C "$build_dir" -n test_cuda 2>/dev/null | grep -c '^\[')
    ninja -C "$build_dir" -n test_cuda 2>/dev/null | sed 's/^/would run: /' >>"$testlog"
    if ((steps_n > 6)); then
      record build-tests skipped "" 0 "building test_cuda would take $steps_n steps, slmlab's own objects among them (see tests.log): not done beside the benchmarks"
      return 1
    fi
  fi
  run_phase build-tests 300 "$testlog" quiet -- nice -n 15 cmake --build "$build_dir" -j 2 --target test_cuda
}
build_pid="" tests_pid=""
if ((build_ok)); then
  log "build: $build_dir, ${build_jobs} jobs${pin_build:+ on cores $pin_build} (log: build.log)"
  if [[ $overlap == on ]]; then
    do_build &
    build_pid=$!
    py_threads=$py_cores
    py_run py-eager-overlap 150 0 "$pin_py"
    py_run py-compiled-overlap 300 1 "$pin_py"
    py_threads=""
    log "python (overlap) done; waiting for the build"
    wait "$build_pid"
  else
    do_build
  fi
  [[ $(status_of build) == ok ]] || build_ok=0
  if ((!build_ok)); then
    log "BUILD FAILED ($(status_of configure)/$(status_of build)): see build.log; first errors:"
    grep -m15 -E 'error|Error|CMake Error|undefined reference' "$buildlog" | cut -c1-300
  fi
fi
if ((build_ok)) && [[ -n $gtest_from ]]; then
  log "tests: GoogleTest ($gtest_from), configure with the tests on and build test_cuda in the background (log: tests.log)"
  tests_build &
  tests_pid=$!
elif [[ -z $tests_why ]]; then
  tests_why="slmlab did not build"
fi

# ---- 2. slmlab: peak, data, training
vocab=""
if ((build_ok)); then
  run_phase peak 90 "$slmlog" -- "$bin" bench peak --threads "$jobs"
  data=${GPU_BENCH_DATA:-}
  if [[ -z $data ]]; then
    data="$work/data"
    if [[ $mode == gpu ]]; then
      srcs=(--src "$torch_inc")
      extra=()
    else
      srcs=(--src "$root/src" --src "$root/tests" --src "$root/bench")
      extra=(--val-frac 0.05 --val-min-bytes 4096)
    fi
    run_phase data 120 "$slmlog" -- "$bin" data build "${srcs[@]}" --out "$data" --vocab "$vocab_build" --threads "$jobs" "${extra[@]}"
  fi
  if [[ -d $data ]]; then
    vocab=$("$bin" data stats "$data" --json --top 0 2>>"$slmlog" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["vocab"])' 2>>"$slmlog")
    "$bin" data stats "$data" --top 0 >>"$slmlog" 2>&1
  fi
  if [[ -n $vocab ]]; then
    run="$work/run-slmlab"
    sets=(depth=$depth aspect=$aspect head_dim=$head_dim context=$context total_batch=$total_batch device_batch=$device_batch
      steps=$((steps + warm)) eval_every=0 eval_tokens=$context ckpt_every=0 precision=bf16 device=$dev)
    [[ $mode == cpu ]] && sets+=(threads=$jobs)
    setargs=()
    for s in "${sets[@]}"; do setargs+=(--set "$s"); done
    run_phase train 180 "$slmlog" -- "$bin" train --data "$data" --substrate "$substrate" --out "$run" "${setargs[@]}"
    cp "$run/metrics.jsonl" "$out/slmlab-metrics.jsonl" 2>/dev/null
    cp "$run/summary.json" "$work/slmlab-summary.json" 2>/dev/null
    # ---- 2b. the same run at TP=2 (issue 20 §4): two ranks over NCCL, one GPU each (NCCL refuses two
    # ranks on one device), the same total batch; tp_comm_ms is the step's time in TP collectives.
    # The dry run takes two CPU ranks over Gloo, half the cores each.
    ngpu=0
    command -v nvidia-smi >/dev/null && ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    if [[ $mode == cpu ]] || ((ngpu >= 2)); then
      tpsets=()
      [[ $mode == cpu ]] && tpsets=(--set threads=$(((jobs + 1) / 2)))
      run_phase train-tp2 150 "$slmlog" -- "$bin" train --data "$data" --substrate "$substrate" --out "$run-tp2" \
        "${setargs[@]}" "${tpsets[@]}" --set tp=2 --nproc 2
      cp "$run-tp2/metrics.jsonl" "$work/slmlab-tp2-metrics.jsonl" 2>/dev/null
    else
      record train-tp2 skipped "" 0 "$ngpu GPU(s) here: TP=2 takes one GPU per rank (NCCL refuses two ranks on one device)"
    fi
  else
    record train skipped "" 0 "no data set (see slmlab.log)"
  fi
  # ---- 3. DSA against dense attention, one layer at 4K context
  for prec in bf16 fp32; do
    run_phase "mixers-$prec" 90 "$mixlog" -- "$mixers" --device "$dev" --only dsa --context "$mixer_ctx" --tokens "$mixer_tokens" \
      --reps "$mixer_reps" --precision "$prec" --threads "$jobs"
  done
fi

# ---- 4. the Python benches on the idle machine (again, when they first ran beside the build)
py_run py-eager 120 0
py_run py-compiled 240 1

# ---- 5. the GPU correctness tests, on the idle machine, in the budget's last part (kept for them)
deadline=$((t_start + budget))
test_bin="$build_dir/tests/test_cuda"
if [[ -n $tests_pid ]]; then
  log "tests: waiting for the test build"
  wait "$tests_pid"
  if [[ $(status_of build-tests) == ok || ( -x $test_bin && $test_bin -nt $work/tests-build.start ) ]]; then
    [[ $(status_of build-tests) == ok ]] || echo "test_cuda was linked though its build step failed (gtest_discover_tests?): it runs" >>"$testlog"
    rm -f "$work/test_cuda.json"
    run_phase test-cuda 120 "$testlog" quiet -- env GTEST_COLOR=no "$test_bin" --gtest_brief=0 --gtest_color=no \
      --gtest_output="json:$work/test_cuda.json"
  else
    p=$(awk -F'\t' '$2 != "ok" {print $1 ": " $2 " " $5}' < <(grep -E '^(gtest-check|gtest-compile|configure-tests|build-tests)\b' "$state") | tail -1)
    tests_why="test_cuda was not built (${p:-see tests.log})"
  fi
fi
if [[ -n $tests_why ]]; then
  record test-cuda skipped "" 0 "$tests_why"
  log "tests: NOT RUN: $tests_why"
  echo "tests/test_cuda did not run: $tests_why" >>"$testlog"
fi

# ---- 6. report
log "writing the report"
"$PY" - "$out" "$work" "$mode" "$steps" "$warm" "$peak_ref" "$budget" "$overlap" "$build_jobs" "$substrate" \
  "$depth" "$aspect" "$head_dim" "$context" "$total_batch" "$device_batch" "$mixer_ctx" "$mixer_tokens" <<'PY'
import json, os, re, statistics, sys

(out, work, mode, steps, warm, peak_ref, budget, overlap, build_jobs, substrate,
 depth, aspect, head_dim, context, total_batch, device_batch, mixer_ctx, mixer_tokens) = sys.argv[1:]
steps, warm, peak_ref = int(steps), int(warm), float(peak_ref)
total_batch = int(total_batch)

def read(p):
    try:
        return open(p, errors="replace").read()
    except OSError:
        return ""

phases = {}
order = []
for line in read(os.path.join(work, "state.tsv")).splitlines():
    f = line.split("\t")
    if len(f) >= 4:
        if f[0] not in phases:
            order.append(f[0])
        phases[f[0]] = {"status": f[1], "rc": f[2], "seconds": float(f[3] or 0), "note": f[4] if len(f) > 4 else ""}
try:
    tinfo = json.loads(read(os.path.join(work, "torch.json")) or "{}")
except ValueError:
    tinfo = {"error": read(os.path.join(work, "torch.json"))[:300]}
res = {"mode": mode, "phases": phases, "torch": tinfo, "steps": steps, "warmup": warm, "budget_s": int(budget)}

# peak (slmlab bench peak): "peak BFloat16   771234.5 GFLOP/s"
slog = read(os.path.join(out, "slmlab.log"))
peaks = {m.group(1): float(m.group(2)) * 1e9 for m in re.finditer(r"^peak (\S+)\s+([0-9.]+) GFLOP/s", slog, re.M)}
res["peak_flops"] = peaks
peak_bf16 = peaks.get("BFloat16")

# slmlab training run
rows = []
summ = {}
try:
    summ = json.loads(read(os.path.join(work, "slmlab-summary.json")) or "{}")
except ValueError:
    pass
ms = []
for line in read(os.path.join(out, "slmlab-metrics.jsonl")).splitlines():
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if "step_ms" in r and r.get("step", 0) > warm:
        ms.append(r["step_ms"])
fpt_slm = summ.get("flops_per_token")
if ms:
    med = statistics.median(ms)
    rows.append({"impl": "slmlab", "step_ms": med, "tok_s": total_batch * 1000 / med, "fpt": fpt_slm,
                 "n": len(ms), "peak_in_run": summ.get("peak_flops"), "note": ""})

# Python runs: the last JSON line of each phase's section in python.log
plog = read(os.path.join(out, "python.log"))
py = {}
for sec in re.split(r"^### \[", plog, flags=re.M):
    name = sec.split("]", 1)[0]
    js = [l for l in sec.splitlines() if l.startswith("{")]
    if js:
        try:
            py[name] = json.loads(js[-1])
        except ValueError:
            pass
res["python"] = py
for impl, names in (("python eager", ("py-eager", "py-eager-overlap")), ("python compiled", ("py-compiled", "py-compiled-overlap"))):
    for n in names:
        r = py.get(n)
        if r:
            note = "beside the build, on cores of its own" if n.endswith("overlap") else "idle machine"
            if "warmup_s" in r:
                note += "; warm-up %.0f s%s" % (r["warmup_s"], " (compile included)" if "compiled" in impl else "")
            rows.append({"impl": impl, "step_ms": r["step_ms_median"], "tok_s": total_batch * 1000 / r["step_ms_median"],
                         "fpt": r.get("flops_per_token"), "n": len(r.get("step_ms_all", [])), "note": note, "phase": n})
            break
    else:
        bad = [n for n in names if n in phases]
        why = "; ".join("%s: %s %s" % (n, phases[n]["status"], phases[n]["note"]) for n in bad) or "not run"
        rows.append({"impl": impl, "missing": why})
res["train"] = rows

# mixers: "4096     16     512            12.3            4.5      0.37x"
mix = {}
mlog = read(os.path.join(out, "mixers.log"))
for sec in re.split(r"^### \[", mlog, flags=re.M):
    name = sec.split("]", 1)[0]
    for l in sec.splitlines():
        m = re.match(r"^(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x\s*$", l)
        if m:
            mix[name] = {"context": int(m.group(1)), "batch": int(m.group(2)), "k": int(m.group(3)),
                         "dense_ms": float(m.group(4)), "dsa_ms": float(m.group(5)), "ratio": float(m.group(6))}
res["mixers"] = mix

def pct(x):
    return "%.1f%%" % (100 * x) if x is not None else "n/a"

L = []
gpu = tinfo.get("gpu") or ("CPU dry run" if mode == "cpu" else "no GPU seen by torch")
L.append("# slmlab GPU benchmark (bench/gpu.sh, %s)\n" % ("GPU run" if mode == "gpu" else "CPU dry run: tiny sizes, checks the flow only"))
L.append("%s; torch %s (CUDA %s, cuDNN %s, C++11 ABI %s, triton %s); budget %s s, %d timed steps after %d warm-up.\n" % (
    gpu, tinfo.get("torch"), tinfo.get("cuda"), tinfo.get("cudnn"), tinfo.get("cxx11_abi"), tinfo.get("triton"), budget, steps, warm))
b, c = phases.get("build"), phases.get("configure")
L.append("## Build\n")
if b and b["status"] == "ok":
    L.append("slmlab + bench_mixers built against the machine's LibTorch: configure %.0f s + build %.0f s with %s jobs%s.\n" % (
        c["seconds"] if c else 0, b["seconds"], build_jobs, " (Python benches ran beside it on other cores)" if overlap == "on" else ""))
else:
    bad = c if c and c["status"] != "ok" else b
    L.append("**BUILD DID NOT COMPLETE** (%s: %s %s). build.log holds the whole configure + build output; "
             "its first errors:\n" % ("configure" if bad is c else "build", bad["status"] if bad else "not run", (bad or {}).get("note", "")))
    errs = [l for l in read(os.path.join(out, "build.log")).splitlines() if re.search(r"error|CMake Error|undefined reference", l)][:12]
    L.append("```\n" + ("\n".join(e[:300] for e in errs) or "(none matched; read build.log)") + "\n```\n")

L.append("## Matmul peak (slmlab bench peak, the MFU denominator)\n")
if peaks:
    for k, v in sorted(peaks.items()):
        L.append("- %s: %.1f TFLOP/s%s" % (k, v / 1e12, " = %.0f%% of the %.0f TFLOP/s measured on an H200 here before" % (100 * v / peak_ref, peak_ref / 1e12) if peak_ref and k == "BFloat16" else ""))
    L.append("")
else:
    L.append("not measured (%s)\n" % (phases.get("peak", {}).get("status") or "not run"))

L.append("## Training step: slmlab against the same model in PyTorch\n")
L.append("%s config: depth %s, d_model %s (heads of %s), context %s, %d tokens/step, %s rows per micro-batch, bf16 autocast, device %s. "
         "Median step after %d warm-up steps; tokens/s = tokens per step / median step. MFU = tokens/s x FLOPs per token / peak; "
         "FLOPs per token: slmlab's own count (summary.json), Python's the same formula (py_model.flops_per_token).\n" % (
             substrate, depth, int(depth) * int(aspect), head_dim, context, total_batch, device_batch, "cuda" if mode == "gpu" else "cpu", warm))
L.append("| impl | step ms (median) | tokens/s | MFU (measured peak) | MFU (%s) | tok/s vs python-compiled | steps timed | note |" % (
    "790 TFLOP/s" if peak_ref else "ref n/a"))
L.append("|---|---|---|---|---|---|---|---|")
ref = next((r for r in rows if r["impl"] == "python compiled" and "missing" not in r), None)
for r in rows:
    if "missing" in r:
        L.append("| %s | - | - | - | - | - | - | %s |" % (r["impl"], r["missing"][:200]))
        continue
    fpt = r["fpt"] or fpt_slm
    mfu = r["tok_s"] * fpt / peak_bf16 if (fpt and peak_bf16) else None
    mfu_ref = r["tok_s"] * fpt / peak_ref if (fpt and peak_ref) else None
    r.update(mfu=mfu, mfu_ref=mfu_ref)
    vs = "%.2fx" % (r["tok_s"] / ref["tok_s"]) if ref else "n/a"
    L.append("| %s | %.1f | %.0f | %s | %s | %s | %d | %s |" % (r["impl"], r["step_ms"], r["tok_s"], pct(mfu), pct(mfu_ref), vs, r["n"], r["note"]))
slm = next((r for r in rows if r["impl"] == "slmlab"), None)
eager = next((r for r in rows if r["impl"] == "python eager" and "missing" not in r), None)
ratios = []
if slm and ref:
    res["slmlab_over_python_compiled"] = slm["tok_s"] / ref["tok_s"]
    ratios.append("**slmlab / python-compiled tokens/s: %.2fx**" % res["slmlab_over_python_compiled"])
if slm and eager:
    res["slmlab_over_python_eager"] = slm["tok_s"] / eager["tok_s"]
    ratios.append("slmlab / python-eager: %.2fx" % res["slmlab_over_python_eager"])
if ref and eager:
    ratios.append("python-compiled / python-eager: %.2fx" % (ref["tok_s"] / eager["tok_s"]))
if ratios:
    L.append("\n" + "; ".join(ratios) + ".")
if fpt_slm and py:
    fps = {n: r.get("flops_per_token") for n, r in py.items()}
    same = all(fp and abs(fp - fpt_slm) < 1e-6 * fpt_slm for fp in fps.values())
    L.append("\nFLOPs per token: slmlab %.4g, Python %s (%s)." % (fpt_slm, ", ".join("%s %.4g" % (n, fp or 0) for n, fp in fps.items()),
             "same" if same else "DIFFER: a Python run used another vocab (8192 beside the build, the data set's after it) or the formulas part"))
if slm and slm.get("peak_in_run") and peak_bf16:
    L[-1] += " The training run's own peak (its MFU denominator): %.1f TFLOP/s." % (slm["peak_in_run"] / 1e12)
ov = [n for n in ("py-eager-overlap", "py-compiled-overlap") if n in py]
if ov:
    L.append("\nBeside the build: " + "; ".join("%s %.1f ms/step" % (n, py[n]["step_ms_median"]) for n in ov) +
             " (the table takes the idle-machine runs when they completed).")
L.append("")

L.append("## Tensor parallelism: the same run at TP=2 (two GPUs over NCCL)\n")
tps = []
for line in read(os.path.join(work, "slmlab-tp2-metrics.jsonl")).splitlines():
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if "step_ms" in r and r.get("step", 0) > warm:
        tps.append(r)
if tps:
    tms = statistics.median(r["step_ms"] for r in tps)
    tcomm = statistics.median(r.get("tp_comm_ms", 0) for r in tps)
    res["tp2"] = {"step_ms": tms, "tp_comm_ms": tcomm, "n": len(tps)}
    L.append("TP=2 median step %.1f ms (%d steps), of which %.1f ms (%s) inside the TP all-reduces and all-gathers; "
             "one process above: %s ms (TP=2 / 1 = %s).\n" % (
                 tms, len(tps), tcomm, pct(tcomm / tms), "%.1f" % slm["step_ms"] if slm else "n/a",
                 "%.2f" % (tms / slm["step_ms"]) if slm else "n/a"))
else:
    t = phases.get("train-tp2", {})
    L.append("not measured (%s %s)\n" % (t.get("status") or "not run", t.get("note", "")))

L.append("## DSA sparse attention against dense attention (one layer, d_model 256, forward + backward)\n")
if mix:
    L.append("| precision | context | batch | k | dense ms | DSA ms | DSA / dense |")
    L.append("|---|---|---|---|---|---|---|")
    for n, m in sorted(mix.items()):
        L.append("| %s | %d | %d | %d | %.2f | %.2f | %.2fx |" % (n.replace("mixers-", ""), m["context"], m["batch"], m["k"], m["dense_ms"], m["dsa_ms"], m["ratio"]))
    L.append("\n%s tokens per batch; dense = the baseline attention layer (fused SDPA where LibTorch has it); DSA: sparse stage, "
             "k = T/8, window 128, indexer and its KL loss included; median of the timed repetitions.\n" % mixer_tokens)
else:
    L.append("not measured (%s)\n" % (", ".join("%s: %s %s" % (n, phases[n]["status"], phases[n]["note"]) for n in phases if n.startswith("mixers")) or "not run"))

# GPU correctness tests: gtest's JSON when the binary wrote it, else its console output in tests.log
L.append("## GPU correctness tests (tests/test_cuda.cpp: CUDA against CPU)\n")
tlog = read(os.path.join(out, "tests.log"))
tsec = ""
for sec in re.split(r"^### \[", tlog, flags=re.M):
    if sec.startswith("test-cuda]"):
        tsec += sec
# the console: [ RUN ] name ... [ OK | FAILED | SKIPPED ] name (N ms); a RUN without an end crashed or hung
con = []
cur, body = None, []
total_n = None
for l in tsec.splitlines():
    if l.startswith("test-cuda] "):
        continue
    n = re.match(r"^\[==========\] Running (\d+) tests?", l)
    if n:
        total_n = int(n.group(1))
    m = re.match(r"^\[ RUN      \] (\S+)", l)
    e = re.match(r"^\[\s+(OK|FAILED|SKIPPED)\s+\] (\S+\.\S+) \((\d+) ms\)", l)
    if m:
        cur, body = m.group(1), []
    elif e and e.group(2) == cur:
        r = {"OK": "passed", "FAILED": "failed", "SKIPPED": "skipped"}[e.group(1)]
        msg = "\n".join(body).strip()
        con.append({"name": cur, "result": r, "ms": int(e.group(3)), "messages": [msg[:600]] if r != "passed" and msg else []})
        cur = None
    elif cur:
        body.append(l)
if cur:
    con.append({"name": cur, "result": "crashed or hung", "ms": None, "messages": ["\n".join(body[-15:]).strip()[:600]]})
conmsg = {t["name"]: t["messages"] for t in con}
tests = []
tj = {}
try:
    tj = json.loads(read(os.path.join(work, "test_cuda.json")) or "{}")
except ValueError:
    tj = {}
for suite in tj.get("testsuites", []):
    for t in suite.get("testsuite", []):
        res_ = {"COMPLETED": "passed", "SKIPPED": "skipped", "SUPPRESSED": "disabled"}.get(t.get("result"), t.get("result", "?").lower())
        fails = [f.get("failure", "") for f in t.get("failures", [])]
        if fails:
            res_ = "failed"
        if t.get("status") == "NOTRUN":
            res_ = "disabled"
        ms = t.get("time", "")
        m = re.match(r"([0-9.]+)s", ms)
        name = "%s.%s" % (suite.get("name"), t.get("name"))
        msgs = [f.strip()[:600] for f in fails[:3]] or (conmsg.get(name, []) if res_ != "passed" else [])
        tests.append({"name": name, "result": res_, "ms": round(float(m.group(1)) * 1000) if m else None, "messages": msgs})
source = "gtest JSON"
if not tests and con:
    source = "console output (no JSON: the binary did not finish)"
    tests = con
tp = phases.get("test-cuda", {})
count = {}
for t in tests:
    count[t["result"]] = count.get(t["result"], 0) + 1
res["tests"] = {"ran": bool(tests), "phase": tp, "total": total_n, "source": source if tests else None, "counts": count, "tests": tests,
                "build_phases": {n: phases[n] for n in ("gtest-check", "gtest-compile", "configure-tests", "build-tests") if n in phases}}
if not tests:
    why = tp.get("note") or "see tests.log"
    if tp.get("status") in ("failed", "timeout"):
        why = "test_cuda %s (rc %s) before gtest reported any test: %s" % (tp["status"], tp.get("rc"), tp.get("note", ""))
    res["tests"]["why_not"] = why
    L.append("**THE TESTS DID NOT RUN**: %s. tests.log has GoogleTest's preparation, the configure and the build of test_cuda.\n" % why)
else:
    cuda = [t for t in tests if t["name"].startswith("Cuda.")]
    bp = ", ".join("%s %s %.0f s" % (n, p["status"], p["seconds"]) for n, p in res["tests"]["build_phases"].items())
    L.append("%d tests (from %s): %s; test-cuda phase %s in %.1f s.%s\n" % (
        len(tests), source, ", ".join("%d %s" % (v, k) for k, v in sorted(count.items())), tp.get("status", "?"), tp.get("seconds", 0),
        " Built beside the benchmarks (nice 15, 2 jobs): %s." % bp if bp else ""))
    if mode == "cpu":
        L.append("CPU dry run: the Cuda.* tests skip themselves without a GPU, which is the correct result here.\n")
    elif cuda and all(t["result"] == "skipped" for t in cuda):
        L.append("**Every Cuda.* test SKIPPED on the GPU machine**: the test binary's device::cuda_available() was false "
                 "(its skip message is below); nothing was compared.\n")
    if tp.get("status") != "ok":
        L.append("**test_cuda ended %s (rc %s)** after %d of %s tests: %s.\n" % (
            "by its timeout" if tp.get("status") == "timeout" else tp.get("status", "?"), tp.get("rc"), len(tests),
            total_n if total_n is not None else "?", tp.get("note") or "see tests.log"))
    if count.get("failed") or count.get("crashed or hung"):
        L.append("**FAILURES**: %s.\n" % ", ".join(t["name"] for t in tests if t["result"] in ("failed", "crashed or hung")))
    L.append("| test | result | ms | first message |")
    L.append("|---|---|---|---|")
    for t in tests:
        msg = (t["messages"][0] if t["messages"] else "").replace("|", "/").replace("\n", " <br> ")
        L.append("| %s | %s | %s | %s |" % (t["name"], t["result"], t["ms"] if t["ms"] is not None else "-", msg[:300]))
    fl = [t for t in tests if t["result"] in ("failed", "crashed or hung")]
    if fl:
        L.append("\nFirst failure messages:\n")
        for t in fl[:4]:
            L.append("```\n%s\n%s\n```" % (t["name"], "\n---\n".join(t["messages"])[:1500]))
    L.append("")

L.append("## Phases\n")
L.append("| phase | status | seconds | note |")
L.append("|---|---|---|---|")
for n in order:
    p = phases[n]
    L.append("| %s | %s | %.1f | %s |" % (n, p["status"], p["seconds"], p["note"].replace("|", "/")[:250]))
L.append("\nFiles: report.md, results.json, env.log (machine, tools, prerequisites), build.log, slmlab.log (peak, data, training), "
         "slmlab-metrics.jsonl, python.log, mixers.log, tests.log (GoogleTest, the test build, test_cuda's output).")
open(os.path.join(out, "report.md"), "w").write("\n".join(L) + "\n")
json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1, default=str)
PY
rc=$?
echo
cat "$out/report.md" 2>/dev/null || echo "gpu.sh: the report could not be written (rc $rc); the logs are in $out"
log "done in $(($(date +%s) - t_start))s; files in $out: $(ls "$out" | tr '\n' ' ')"
}
main "$@"
