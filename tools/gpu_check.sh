#!/usr/bin/env bash
# One command for a machine with a GPU and the CUDA toolkit, inside 10 minutes: build, run every GPU test, time cuDNN's
# convolutions NCHW vs NHWC (bench_kernels --op conv_layout, issue #14), compute-sanitizer over the GPU tests (memcheck, racecheck, synccheck) and memcheck over a short training run, train yolov5n on ../shared/data/coco128 at 640 for
# 3 epochs on the GPU, validate and detect with the result, run the benchmarks, and print a summary table.
# Paste the summary into bench/RESULTS.md with the date and the GPU.
#   bash tools/gpu_check.sh            (Y5_BUILD_DIR=... to reuse a build folder)
# Y5_PREBUILT=1 with Y5_BUILD_DIR: the binaries are already built (tools/gpu_bundle.py packs them with their libraries
# for a GPU machine that has no build dependencies); setup, configure, build and the CPU unit tests are skipped.
# The steps run in order of what a short lease most needs: correctness on the device first, then training end to end,
# memory and speed, the sanitizers, then the longer benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
if ! command -v compute-sanitizer >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
build="${Y5_BUILD_DIR:-build-gpu}"
out="${Y5_GPU_CHECK_OUT:-runs/gpu_check}"
rm -rf "$out" && mkdir -p "$out"
declare -a names results
# Every step's limit is cut to what is left of the whole run's budget (Y5_GPU_CHECK_SECONDS, default 570), so the
# check ends inside a 10-minute call whatever hangs; a step with under 10 s left is skipped and says so.
deadline=$((SECONDS + ${Y5_GPU_CHECK_SECONDS:-570}))
step() {  # step NAME SECONDS COMMAND...: runs it under a time limit, records PASS/FAIL and its time
  local name="$1" limit="$2"; shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 10 ]; then skip "$name" "no time left in the run's budget"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "=== $name: $*"
  if timeout "$limit" "$@"; then results+=("PASS $((SECONDS - t0))s"); else results+=("FAIL (rc $?) $((SECONDS - t0))s"); fi
  names+=("$name")
}
skip() { names+=("$1"); results+=("skipped: $2"); echo "=== $1: skipped ($2)"; }
# A benchmark that finds no usable device prints so and exits 0 (right on a CPU machine); here it is a failure.
bench_on_gpu() {
  local log; log=$(mktemp)
  "$@" 2>&1 | tee "$log"; local rc=${PIPESTATUS[0]}
  if grep -qi "no usable CUDA device" "$log"; then echo "no usable CUDA device: counted as a failure"; rc=1; fi
  rm -f "$log"; return "$rc"
}
export -f bench_on_gpu  # step runs its command under timeout, which needs a program: bash -c calls the function

echo "=== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
nvcc --version | tail -1
date -u

prebuilt="${Y5_PREBUILT:-}"
if [ -z "$prebuilt" ]; then
  bash tools/setup.sh >/dev/null
  step "configure" 120 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DY5_CUDA=ON
  step "build" 300 cmake --build "$build" -j "$(nproc)"
fi
# The GPU test binary directly: its "no device" exit (77) counts as a failure here. Each case's time is printed.
step "GPU tests" 240 "$build/y5_tests_gpu" --durations yes  # with the whole-model tests (their CPU references)

synth="$out/synth"
"$build/y5data" --synthetic "$synth" --images 16 >/dev/null
coco=../shared/data/coco128/coco128.yaml
if [ -f "$coco" ]; then
  step "train yolov5n coco128 640 x3 (GPU)" 200 "$build/y5train" --data "$coco" --cfg config/models/yolov5n.yaml \
    --weights '' --imgsz 640 --epochs 3 --batch-size 16 --workers 4 --device 0 --project "$out" --name coco --exist-ok
  w="$out/coco/weights/last.safetensors"
  step "y5val on it (GPU)" 60 "$build/y5val" --data "$coco" --weights "$w" --imgsz 640 --device 0
  step "y5detect bus.jpg (GPU)" 30 "$build/y5detect" --source ../shared/data/images/bus.jpg --weights "$w" --device 0 \
    --project "$out" --name detect --exist-ok
else
  skip "train yolov5n coco128 640 x3 (GPU)" "$coco not found"
fi
# The training step's speed and memory (issue #15's table), before the sanitizers and the longer benchmarks.
[ -x "$build/bench_step" ] && step "bench_step" 90 bash -c 'set -o pipefail; bench_on_gpu "$@" | tee "'"$out"'/bench_step.log"' _ \
  "$build/bench_step"
# The same steps with the host waiting for each (y5train pipelines them: engine/app/step.h): what the pipeline buys.
[ -x "$build/bench_step" ] && step "bench_step --no-pipeline" 60 bash -c 'set -o pipefail; bench_on_gpu "$@" | tee "'"$out"'/bench_step_no_pipeline.log"' _ \
  "$build/bench_step" --no-pipeline --no-layers --batch 16 64
# With each step's forward, loss and backward replayed as a CUDA graph (y5train --cuda-graph, off by default until this
# measures it faster): on by default if it is.
[ -x "$build/bench_step" ] && step "bench_step --cuda-graph" 60 bash -c 'set -o pipefail; bench_on_gpu "$@" | tee "'"$out"'/bench_step_cuda_graph.log"' _ \
  "$build/bench_step" --cuda-graph --no-layers --batch 16 64
if command -v compute-sanitizer >/dev/null 2>&1; then
  # The GPU tests under each tool: memcheck (out-of-bounds and misaligned accesses, leaks), racecheck (shared-memory
  # hazards inside a block), synccheck (barriers and warp intrinsics used illegally). The kernel tests only: not the
  # whole-model cases (memcheck slows them past the budget), not [oom] (its deliberate failed cudaMalloc is an API
  # error to the tools); racecheck not the convolutions either: on an H200 it spent over 90 s in cuDNN's and
  # cuBLAS's kernels there (the 640 geometries, then conv2d_parts at 80x80), which are not ours to check.
  for tool in memcheck racecheck synccheck; do
    filter="~[model]~[oom]"
    [ "$tool" = racecheck ] && filter="~[model]~[oom]~[conv]"
    step "$tool: GPU kernel tests" 90 compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
      "$build/y5_tests_gpu" "$filter"
  done
else
  skip "compute-sanitizer" "compute-sanitizer not on PATH"
fi
step "CPU vs GPU: 1 epoch losses" 120 bash -c "
  for d in cpu 0; do \"$build/y5train\" --data \"$synth/data.yaml\" --cfg config/models/yolov5n.yaml --weights '' \
    --imgsz 64 --epochs 1 --batch-size 8 --workers 1 --noval --device \$d --project \"$out\" --name cmp\$d --exist-ok \
    >/dev/null || exit 1; done
  paste -d'\n' \"$out/cmpcpu/results.csv\" \"$out/cmp0/results.csv\" | cut -d, -f1-4"
# cuDNN NCHW vs NHWC at yolov5n's convolutions (issue #14: the layout decision); bench_kernels runs it only when named.
# About 29 geometries x 2 layouts x 3 passes x (20 + 2) runs, f16 and f32.
step "bench_kernels conv_layout" 150 bash -c 'set -o pipefail; bench_on_gpu "$@" | tee "'"$out"'/bench_kernels_conv_layout.log"' _ \
  "$build/bench_kernels" --op conv_layout --repeats 20
if command -v compute-sanitizer >/dev/null 2>&1; then
  step "memcheck: 2 training epochs" 150 compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
    "$build/y5train" --data "$synth/data.yaml" --cfg config/models/yolov5n.yaml --weights '' --imgsz 64 --epochs 2 \
    --batch-size 8 --workers 2 --device 0 --project "$out" --name memcheck --exist-ok
fi
shopt -s nullglob
benches=("$build"/bench_*)
if [ ${#benches[@]} -gt 0 ]; then
  for b in "${benches[@]}"; do
    [ "$(basename "$b")" = bench_step ] && continue
    step "$(basename "$b")" 90 bash -c 'set -o pipefail; bench_on_gpu "$@" | tee "'"$out"'/$(basename "$1").log"' _ "$b"
  done
else
  skip "benchmarks" "no bench_* programs built"
fi
# PyTorch YOLOv5 v7.0's step beside bench_step's (f32 and AMP, NCHW and channels_last), where this machine has torch
# and yolov5 (nothing is installed here: the machine may have no network). The ratio table compares like with like:
# y5 f32 with torch f32, y5 AMP with torch AMP, each batch size (NCHW torch; its channels_last rows are printed too).
# (without y5's LD_LIBRARY_PATH: a bundle's libraries (tools/gpu_bundle.py) are not PyTorch's)
if env -u LD_LIBRARY_PATH python3 -c "import torch, yolov5" >/dev/null 2>&1; then
  step "peer: PyTorch YOLOv5 step" 150 bash -c "set -o pipefail; env -u LD_LIBRARY_PATH python3 bench/peer_yolov5_step.py --device 0 --batch 16 32 64 --steps 20 \
    --warmup 3 --amp both --channels-last both | tee '$out/peer.log'"
  if [ -s "$out/bench_step.log" ] && [ -s "$out/peer.log" ]; then
    echo "=== y5 / PyTorch (images/s ratio > 1: y5 faster; memory ratio < 1: y5 smaller)"
    awk 'FNR == 1 { f++ }
         f == 1 && $1 ~ /^[0-9]+$/ && ($2 == "f32" || $2 == "amp") && $4 ~ /^[0-9.]+$/ {
           k = $1 " " $2; y5ips[k] = $5; y5mem[k] = $NF; sub(/GB/, "", y5mem[k]) }
         f == 2 && $1 ~ /^[0-9]+$/ && $3 == "no" { k = $1 " " $2; ptips[k] = $6; ptmem[k] = $NF; sub(/GB/, "", ptmem[k]) }
         END { printf "%6s %5s %12s %12s %10s %12s %12s %10s\n", "batch", "prec", "y5 img/s", "torch img/s", "ratio",
                 "y5 GPU GB", "torch rsvd GB", "ratio"
               for (k in y5ips) if (k in ptips) { split(k, a, " ")
                 printf "%6s %5s %12.1f %12.1f %10.2f %12.2f %12.2f %10.2f\n", a[1], a[2], y5ips[k], ptips[k],
                   y5ips[k] / ptips[k], y5mem[k], ptmem[k], (ptmem[k] > 0 ? y5mem[k] / ptmem[k] : 0) } }' \
      "$out/bench_step.log" "$out/peer.log" | sort -n
  fi
else
  skip "peer: PyTorch YOLOv5 step" "python3 cannot import torch and yolov5 here"
fi
[ -z "$prebuilt" ] && step "CPU unit tests" 120 ctest --test-dir "$build" -LE "gpu|e2e" -j "$(nproc)"

echo
printf '%-40s %s\n' "step" "result"
for i in "${!names[@]}"; do printf '%-40s %s\n' "${names[$i]}" "${results[$i]}"; done
for r in "${results[@]}"; do [[ "$r" == FAIL* ]] && exit 1; done
exit 0
