#!/usr/bin/env bash
# One command for a machine with a GPU and the CUDA toolkit: build, run every GPU test, run
# compute-sanitizer memcheck over the GPU tests, then the training run and benchmarks once those exist,
# and print a summary table. Meant to finish inside 10 minutes; paste its output into bench/RESULTS.md
# with the date and the GPU.
#   bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
build="${Y5_BUILD_DIR:-build-gpu}"
declare -a names results
step() {  # step NAME COMMAND...: runs it, records PASS/FAIL with the time it took
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  if "$@"; then results+=("PASS $((SECONDS - t0))s"); else results+=("FAIL $((SECONDS - t0))s"); fi
  names+=("$name")
}
skip() { names+=("$1"); results+=("not available yet: $2"); echo "=== $1: skipped ($2)"; }

echo "=== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
nvcc --version | tail -1

bash tools/setup.sh >/dev/null
step "configure" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DY5_CUDA=ON
step "build" cmake --build "$build" -j "$(nproc)"
step "GPU tests" ctest --test-dir "$build" -L gpu --output-on-failure
if command -v compute-sanitizer >/dev/null 2>&1; then
  step "memcheck (GPU tests)" compute-sanitizer --tool memcheck --error-exitcode 1 "$build/y5_tests_gpu"
else
  skip "memcheck (GPU tests)" "compute-sanitizer not on PATH"
fi
step "CPU tests" ctest --test-dir "$build" -LE gpu -j "$(nproc)"
skip "train yolov5n coco128 640 x3 epochs" "y5train has no training loop yet"
skip "benchmarks" "bench/ has no programs yet"

echo
printf '%-40s %s\n' "step" "result"
for i in "${!names[@]}"; do printf '%-40s %s\n' "${names[$i]}" "${results[$i]}"; done
for r in "${results[@]}"; do [[ "$r" == FAIL* ]] && exit 1; done
exit 0
