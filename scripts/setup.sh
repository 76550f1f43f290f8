#!/usr/bin/env bash
# Installs every Debian package slmlab needs, only when missing. Idempotent; needs root (or sudo).
# Usage: scripts/setup.sh [--bench]   (--bench adds what bench/ compares against: python3-torch)
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev              # LibTorch 1.13 (CPU) with its CMake config
  libopenblas0-openmp       # fast BLAS: Debian's reference BLAS makes fp32 matmuls ~10x slower
  libxxhash-dev nlohmann-json3-dev libtomlplusplus-dev libsqlite3-dev
  libgtest-dev
  libclang-14-dev           # data build --enrich: compiler structure per token (optional at build time)
  libgloo-dev               # the Gloo headers behind c10d::ProcessGroupGloo (data-parallel training)
  libsentencepiece-dev      # the tokenizer benchmark's peer
  python3                   # the safetensors reader in the tests (standard library only)
  bubblewrap                # the sandbox that compile-rate evaluation runs g++ in
  slurm-wlm munge           # ablate --backend slurm and its test cluster (scripts/slurm-local.sh)
  chromium                  # the HTML report rendered in a real browser (headless) by test_report_html
)
if [[ "${1:-}" == "--bench" ]]; then pkgs+=(python3-torch); fi

missing=()
for p in "${pkgs[@]}"; do
  [[ "$p" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "[setup] error: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# LibTorch must use OpenBLAS, not the reference BLAS that may also be installed.
blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/{print $2}')
if [[ -n "$blas" && "$blas" != *openblas* ]]; then
  echo "[setup] error: libblas.so.3 points to $blas; run: update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3" >&2
  exit 1
fi
