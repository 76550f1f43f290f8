#!/usr/bin/env bash
# Keeps the layer order of src/: a file may include its own layer and the layers below it, never one
# above. The order (README, "Layout"):
#   common < catalog < data < model < eval < train < engine < cli
# Usage: tests/check_layers.sh [SRC_DIR]     (default: the src/ beside this script)
#        tests/check_layers.sh --self-test   (shows that a violation fails the check)
set -euo pipefail

layers=(common catalog data model eval train engine cli)
order="common < catalog < data < model < eval < train < engine < cli"

# Includes that break the order today, each waiting on a change already under way. Delete the line
# when that change lands; the check then holds the ground. Format: FILE:LAYER_INCLUDED_PATH.
allowed=(
)

rank() {
  local i
  for i in "${!layers[@]}"; do
    [[ ${layers[$i]} == "$1" ]] && { echo "$i"; return; }
  done
  echo -1
}

check() {
  local src=$1 bad=0 file rel layer inc top r_file r_inc a ok
  [[ -d $src ]] || { echo "check_layers: no directory $src" >&2; return 2; }
  while IFS= read -r file; do
    rel=${file#"$src"/}
    layer=${rel%%/*}
    r_file=$(rank "$layer")
    if [[ $r_file -lt 0 ]]; then
      echo "check_layers: $rel is in no layer (known: ${layers[*]})"
      bad=1
      continue
    fi
    while IFS= read -r inc; do
      top=${inc%%/*}
      if [[ $inc != */* ]]; then continue; fi  # a sibling header by bare name
      if [[ $top == ".." ]]; then
        echo "check_layers: $rel includes \"$inc\"; include by layer path (\"layer/file.h\") instead"
        bad=1
        continue
      fi
      r_inc=$(rank "$top")
      [[ $r_inc -lt 0 || $r_inc -le $r_file ]] && continue
      ok=0
      for a in "${allowed[@]}"; do [[ $a == "$rel:$inc" ]] && ok=1; done
      if [[ $ok == 1 ]]; then continue; fi
      echo "check_layers: $rel ($layer) includes \"$inc\" ($top), a higher layer; order: $order"
      bad=1
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
  done < <(find "$src" -type f \( -name '*.h' -o -name '*.cpp' \) | sort)
  return $bad
}

if [[ ${1:-} == --self-test ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/common" "$tmp/engine" "$tmp/cli"
  printf '#include "common/a.h"\n' >"$tmp/engine/b.cpp"
  printf '#include "engine/b.h"\n#include "common/a.h"\n' >"$tmp/cli/c.cpp"
  check "$tmp" >/dev/null || { echo "self-test: a clean tree failed the check"; exit 1; }
  printf '#include "engine/b.h"\n' >"$tmp/common/a.cpp"
  if out=$(check "$tmp"); then
    echo "self-test: common/a.cpp including engine/b.h passed the check"
    exit 1
  fi
  echo "self-test: ok, the violation was caught: $out"
  exit 0
fi

src=${1:-$(cd "$(dirname "$0")/../src" && pwd)}
check "$src" && echo "check_layers: ok ($order)"
