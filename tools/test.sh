#!/usr/bin/env bash
# One command: install what is missing, build y5 (with CUDA when the toolkit is present), run every test.
#   bash tools/test.sh            GPU tests skip themselves (CTest "skipped") when no GPU is present
#   Y5_BUILD_DIR=... overrides the build folder (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
build="${Y5_BUILD_DIR:-build}"
jobs="$(nproc)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
