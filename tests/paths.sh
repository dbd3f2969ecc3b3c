#!/usr/bin/env bash
# No stale paths: every repository file that a source, script, config or document names (kernels/..., engine/...,
# layers/..., tools/..., bench/..., tests/..., config/... with a file extension) exists. Patterns with * and
# paths under runs/ or a build folder are not files of the repository and are not checked.
#   bash tests/paths.sh [source dir]        prints each missing path with the file that names it, exits 1 if any
set -euo pipefail
src="${1:-$(dirname "$0")/..}"
cd "$src"

bad=0
files=$(git ls-files 2>/dev/null || find . -type f -not -path './.git/*' -not -path './build*' | sed 's|^\./||')
re='\b(kernels|engine|layers|tools|bench|tests|config)/[A-Za-z0-9_./*-]+\.(h|cpp|cu|cuh|sh|py|yaml|md|txt|safetensors)\b'
for f in $files; do
    case "$f" in tests/fixtures/* | *.png | *.jpg | *.safetensors) continue ;; esac
    [ -f "$f" ] || continue
    while IFS= read -r p; do
        case "$p" in *'*'*) continue ;; esac
        if [ ! -e "$p" ]; then
            echo "$f: names $p, which does not exist"
            bad=1
        fi
    done < <(grep -ohE "$re" "$f" 2>/dev/null | sort -u)
done
[ "$bad" = 0 ] && echo "paths: every repository path named in the tree exists"
exit "$bad"
