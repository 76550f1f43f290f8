#!/usr/bin/env bash
# Fills .gpudeps/ (repo root, ignored by git through .git/info/exclude) with what bench/gpu.sh needs
# to build slmlab on a lent GPU machine that lacks our Debian build packages and has no network:
# the headers of nlohmann-json, SQLite, xxHash, toml++ and Gloo, static libsqlite3.a and libxxhash.a,
# the nlohmann_json CMake package, pkg-config templates for xxHash and toml++ (header-only there), a
# pkgconf binary with its library, and GoogleTest for the GPU correctness tests (tests/test_cuda.cpp):
# gtest's headers, Debian's static libgtest.a / libgtest_main.a with their CMake package (GTest), and
# gtest's sources, which bench/gpu.sh compiles there when the prebuilt archives do not link with that
# machine's compiler or LibTorch's C++ ABI. Run here, once, before the device call that carries ".gpudeps":
#   bash bench/gpu_deps.sh            # apt-get download of the .deb files (Debian 12), else this machine's files
#   bash bench/gpu_deps.sh --system   # copy this machine's installed files (no download)
# Prints what it took from where, and the folder's size (well under 10 MiB).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.gpudeps"
mode=${1:-apt}
case "$mode" in apt | --apt) mode=apt ;; --system) mode=system ;; *) echo "usage: bash bench/gpu_deps.sh [--system]" >&2; exit 2 ;; esac

# Keep it out of git (and so out of the device call unless `carry` names it).
exclude="$(git -C "$root" rev-parse --git-path info/exclude)"
[[ "$exclude" == /* ]] || exclude="$root/$exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpudeps/' "$exclude" 2>/dev/null || echo '/.gpudeps/' >>"$exclude"

# package -> files it provides (paths under / in the package)
pkgs=(nlohmann-json3-dev libsqlite3-dev libxxhash-dev libtomlplusplus-dev libgloo-dev pkgconf-bin libpkgconf3 libgtest-dev googletest)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
src_root=/
if [[ $mode == apt ]]; then
  echo "[gpu_deps] apt-get download ${pkgs[*]}"
  if (cd "$stage" && timeout 300 apt-get download "${pkgs[@]}" >"$stage/apt.log" 2>&1); then
    mkdir -p "$stage/root"
    for d in "$stage"/*.deb; do dpkg-deb -x "$d" "$stage/root"; done
    src_root="$stage/root"
    from="Debian packages (apt-get download): $(cd "$stage" && ls *.deb | tr '\n' ' ')"
  else
    echo "[gpu_deps] apt-get download failed ($(tail -1 "$stage/apt.log")); copying this machine's installed files instead"
    mode=system
  fi
fi
if [[ $mode == system ]]; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      { echo "[gpu_deps] error: $p is not installed here and could not be downloaded; run scripts/setup.sh, or apt-get install $p" >&2; exit 1; }
  done
  from="this machine's installed packages: $(dpkg-query -W -f='${Package} ${Version}, ' "${pkgs[@]}")"
fi
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
if [[ $src_root != / ]]; then ver() { ls "$stage" | sed -n "s/^$1_\([^_]*\)_.*/\1/p" | sed 's/%3a/:/'; }; fi

rm -rf "$out"
mkdir -p "$out/include" "$out/lib" "$out/share/cmake" "$out/bin" "$out/pkgconf" "$out/pkgconfig.in"
inc="$src_root/usr/include"
lib="$src_root/usr/lib/x86_64-linux-gnu"
cp -a "$inc/nlohmann" "$inc/toml++" "$inc/gloo" "$out/include/"
cp -a "$inc/sqlite3.h" "$inc/sqlite3ext.h" "$inc/xxhash.h" "$inc/xxh3.h" "$out/include/"
[[ -e "$inc/xxh_x86dispatch.h" ]] && cp -a "$inc/xxh_x86dispatch.h" "$out/include/"
cp -a "$src_root/usr/share/cmake/nlohmann_json" "$out/share/cmake/"
# Static archives (position-independent on Debian): nothing to find at run time on the GPU machine.
cp -L "$lib/libsqlite3.a" "$lib/libxxhash.a" "$out/lib/"
# pkgconf, for a machine without pkg-config (CMake's pkg_check_modules needs one).
cp -L "$src_root/usr/bin/pkgconf" "$out/pkgconf/pkgconf"
cp -L "$lib/libpkgconf.so.3" "$out/pkgconf/"
cat >"$out/bin/pkg-config" <<'SH'
#!/bin/sh
# pkgconf from Debian 12 with its library beside it (bench/gpu_deps.sh)
d=$(cd "$(dirname "$0")/../pkgconf" && pwd)
LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/pkgconf" "$@"
SH
chmod +x "$out/bin/pkg-config"
# GoogleTest, in a prefix of its own (.gpudeps/gtest) laid out as Debian installs it, so that its CMake
# package (GTestConfig.cmake finds include/ and lib/x86_64-linux-gnu/ four levels up) works from there,
# and its headers stay off the main build's include path. src/ holds gtest's sources (gtest-all.cc
# includes src/*.cc) for a compile on the GPU machine when the prebuilt archives do not link there.
g="$out/gtest"
mkdir -p "$g/include" "$g/lib/x86_64-linux-gnu/cmake" "$g/src"
cp -a "$inc/gtest" "$g/include/"
cp -L "$lib/libgtest.a" "$lib/libgtest_main.a" "$g/lib/x86_64-linux-gnu/"
cp -a "$lib/cmake/GTest" "$g/lib/x86_64-linux-gnu/cmake/"
cp -a "$src_root/usr/src/googletest/googletest/src/"*.cc "$src_root/usr/src/googletest/googletest/src/"*.h "$g/src/"
# .pc templates: bench/gpu.sh writes @PREFIX@ (the folder's path there). toml++ is used header-only
# there (its compiled library would be one more C++ binary to carry); xxHash links the static archive.
xxv=$(sed -n 's/^Version: *//p' "$lib/pkgconfig/libxxhash.pc")
tomlv=$(sed -n 's/^Version: *//p' "$lib/pkgconfig/tomlplusplus.pc")
cat >"$out/pkgconfig.in/libxxhash.pc" <<EOF
prefix=@PREFIX@
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: xxhash
Description: extremely fast hash algorithm (carried by bench/gpu_deps.sh)
Version: $xxv
Libs: -L\${libdir} -lxxhash
Cflags: -I\${includedir}
EOF
cat >"$out/pkgconfig.in/tomlplusplus.pc" <<EOF
prefix=@PREFIX@
includedir=\${prefix}/include

Name: tomlplusplus
Description: TOML config file parser and serializer for C++, header-only (carried by bench/gpu_deps.sh)
Version: $tomlv
Libs:
Cflags: -I\${includedir} -DTOML_HEADER_ONLY=1
EOF
{
  echo "made by bench/gpu_deps.sh on $(date -u +%Y-%m-%dT%H:%MZ) from $from"
  for p in "${pkgs[@]}"; do echo "$p $(ver "$p")"; done
} >"$out/MANIFEST"
"$out/bin/pkg-config" --version >/dev/null || { echo "[gpu_deps] error: the carried pkgconf does not run here" >&2; exit 1; }
cat "$out/MANIFEST"
echo "[gpu_deps] $out: $(du -sh "$out" | cut -f1), $(find "$out" -type f | wc -l) files; git ignores it: $(git -C "$root" check-ignore -q "$out" && echo yes || echo NO)"
echo "[gpu_deps] device call: carry [\".gpudeps\"], command \"bash bench/gpu.sh\""
