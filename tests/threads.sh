#!/usr/bin/env bash
# A seeded CPU run is reproducible across machines: the same results.csv (losses, metrics, lr: every column) with
# one CPU thread and one loader worker as with three of each (Y5_THREADS, --workers). The CPU convolutions' weight
# gradients are summed over image groups fixed by the batch (engine/ops/op.h, grad_groups), not by the threads.
# The same with --amp (the f16 datapath's CPU convolutions keep those groups).
#   bash tests/threads.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_threads.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 16 >/dev/null
args=(--data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp "$src/config/hyps/hyp.scratch-low.yaml"
      --weights '' --imgsz 64 --epochs 2 --batch-size 8 --device cpu --seed 5 --exist-ok)
for mode in f32 amp; do
  extra=(); [ "$mode" = amp ] && extra=(--amp)
  Y5_THREADS=1 "$build/y5train" "${args[@]}" "${extra[@]}" --workers 1 --name t1$mode > t1$mode.log
  Y5_THREADS=3 "$build/y5train" "${args[@]}" "${extra[@]}" --workers 3 --name t3$mode > t3$mode.log
  cmp runs/train/t1$mode/results.csv runs/train/t3$mode/results.csv || {
      echo "$mode results.csv differs between 1 and 3 threads:"; diff runs/train/t1$mode/results.csv runs/train/t3$mode/results.csv; exit 1; }
done
echo "threads: OK"
