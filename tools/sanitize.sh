#!/usr/bin/env bash
# Builds y5 and its CPU tests with AddressSanitizer and UndefinedBehaviorSanitizer (-DY5_SANITIZE=ON, gcc or clang,
# CPU only, in build-asan) and runs the whole CPU suite (y5_tests) under them. Any report fails the run: UBSan is
# built not to recover, ASan aborts, LeakSanitizer checks at exit.
#   bash tools/sanitize.sh             every CPU test, each in its own process, one per core at a time (CTest label
#                                      unit; measured on 2 shared cores: build 8.9 min of CPU at -O1, the level
#                                      CMakeLists.txt sets for it; run 3.7 min, 5.6 in one process)
#   bash tools/sanitize.sh "[data],[pt]"   a Catch2 test spec instead, in one process
#   Y5_SANITIZE_BUILD_DIR overrides the build folder (default build-asan)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${Y5_SANITIZE_BUILD_DIR:-build-asan}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DY5_SANITIZE=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target y5_tests
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$PWD/tools/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"  # system libraries' process-long memory
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
if (($#)); then "$build/y5_tests" "$@"
else ctest --test-dir "$build" -L '^unit$' -j "$(nproc)" --output-on-failure; fi
echo "sanitize.sh: y5_tests ${1:-(every CPU test)} passed under ASan + UBSan"
