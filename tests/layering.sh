#!/usr/bin/env bash
# The house is one-way: every #include "..." of a y5 file points to its own folder or to a floor below it.
#   0 kernels/   1 engine/device/   2 engine/core/   3 engine/autograd/, engine/data/   4 engine/ops/
#   5 layers/   6 engine/app/   7 tools/, bench/, tests/ (tests/ and its folders, the emulator's among them, are one)
# (The build enforces the floors between libraries too: each library's include root links only what is
# below it. This test also covers the order inside the engine and headers no build compiles alone.)
#   bash tests/layering.sh [source dir]        prints each upward include as file:line: include, exits 1 if any
set -euo pipefail
src="${1:-$(dirname "$0")/..}"
cd "$src"

rank() {  # rank of a repository-relative path; "?" for a file outside every floor
    case "$1" in
        kernels/*) echo 0 ;;
        engine/device/*) echo 1 ;;
        engine/core/*) echo 2 ;;
        engine/autograd/* | engine/data/*) echo 3 ;;
        engine/ops/*) echo 4 ;;
        layers/*) echo 5 ;;
        engine/app/*) echo 6 ;;
        tools/* | bench/* | tests/*) echo 7 ;;
        *) echo "?" ;;
    esac
}

bad=0
files=$(git ls-files 'kernels/*' 'engine/*' 'layers/*' 'tools/*' 'bench/*' 'tests/*' 2>/dev/null ||
        find kernels engine layers tools bench tests -type f)
for f in $files; do
    case "$f" in *.h | *.cpp | *.cu | *.cuh) ;; *) continue ;; esac
    r=$(rank "$f")
    if [ "$r" = "?" ]; then
        echo "$f: not in any floor (kernels, engine/{device,core,autograd,data,ops,app}, layers, tools, bench, tests)"
        bad=1
        continue
    fi
    dir=$(dirname "$f")
    while IFS=: read -r line inc; do
        [ -n "$inc" ] || continue
        case "$inc" in kernels/* | engine/* | layers/* | tools/* | bench/* | tests/*) ;; *) continue ;; esac
        ri=$(rank "$inc")
        same_dir=0
        [ "$(dirname "$inc")" = "$dir" ] && same_dir=1
        case "$dir/:$inc" in tests/*:tests/*) same_dir=1 ;; esac
        if [ "$same_dir" = 0 ] && { [ "$ri" = "?" ] || [ "$ri" -ge "$r" ]; }; then
            echo "$f:$line: includes \"$inc\" (floor $ri, from floor $r)"
            bad=1
        fi
    done < <(grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" | sed -E 's/^([0-9]+):[^"]*"([^"]*)".*/\1:\2/')
done
[ "$bad" = 0 ] && echo "layering: every include points to its own folder or below"
exit "$bad"
