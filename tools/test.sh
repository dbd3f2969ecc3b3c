#!/usr/bin/env bash
# One command: install what is missing, build y5 (with CUDA when the toolkit is present), run every test; then build
# y5's CUDA code for the emulated CUDA device (tests/cudaemu) and run the GPU suite on it, in forward and in
# reverse thread order, with the emulator's own tests.
#   bash tools/test.sh            GPU tests in the first build skip themselves (CTest "skipped") when no GPU is present
#   Y5_BUILD_DIR=... overrides the build folder (default: build); Y5_EMU_BUILD_DIR the emulated one (build-emu)
#   Y5_SKIP_EMU=1 runs only the first build's tests
#   Y5_SKIP_SANITIZE=1 skips the last step: the CPU suite under ASan + UBSan and the fuzz harnesses
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
build="${Y5_BUILD_DIR:-build}"
jobs="$(nproc)"
took() { echo "test.sh: $1 done, $((SECONDS / 60)) min $((SECONDS % 60)) s since the start"; }  # CI's time per phase
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
took "build"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
took "tests"
[ "${Y5_SKIP_EMU:-0}" = 1 ] && exit 0

emu="${Y5_EMU_BUILD_DIR:-build-emu}"
cmake -S . -B "$emu" -DCMAKE_BUILD_TYPE=Release -DY5_CUDA_EMU=ON
# Only what runs there: the CPU suite already ran above.
cmake --build "$emu" -j "$jobs" --target y5_tests_gpu cudaemu_selftest cudaemu_selftest_asan y5train y5val y5detect y5data bench_step
took "emulated build"
ctest --test-dir "$emu" --output-on-failure -j "$jobs" -L "emu|cudaemu"
took "emulated tests"

# Sanitizers, last (measured on 2 cores: ASan build of y5_tests 8.9 min of CPU at -O1, its run 3.7 min as CTest
# tests side by side, 5.6 in one process; fuzz build 2 min of CPU, 7 harnesses x 20 s, one per core at a time).
# The whole CPU suite (y5_tests) under ASan + UBSan (tools/sanitize.sh), then every libFuzzer harness on its seed
# corpus with the same sanitizers (tools/fuzz.sh, clang): any report fails.
[ "${Y5_SKIP_SANITIZE:-0}" = 1 ] && exit 0
bash tools/sanitize.sh
took "sanitizers"
bash tools/fuzz.sh
took "fuzzing"
