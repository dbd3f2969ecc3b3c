#!/usr/bin/env bash
# --resume continues a run killed after an epoch exactly as if it had not stopped: on the CPU with the same
# seed, the resumed run's per-epoch losses and lr equal an uninterrupted run's (results.csv rows compared).
#   bash tests/resume.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_resume.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 8 >/dev/null
args=(--data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp "$src/config/hyps/hyp.scratch-low.yaml"
      --weights '' --imgsz 64 --epochs 4 --batch-size 4 --workers 2 --noval --device cpu)
"$build/y5train" "${args[@]}" --name full > full.log
Y5_STOP_AFTER_EPOCH=1 "$build/y5train" "${args[@]}" --name cut > cut.log
[ "$(wc -l < runs/train/cut/results.csv)" -eq 3 ] || { echo "the cut run should have stopped after 2 epochs"; exit 1; }
"$build/y5train" --resume runs/train/cut/weights/last.safetensors > resumed.log
grep -q "Resuming training from runs/train/cut/weights/last.safetensors from epoch 2 to 4" resumed.log || { cat resumed.log; exit 1; }
# Train losses and lr (columns 1-4 and 12-14) of every epoch must match; validation runs only at the end.
cut -d, -f1-4,12-14 runs/train/full/results.csv > a.csv
cut -d, -f1-4,12-14 runs/train/cut/results.csv > b.csv
diff a.csv b.csv || { echo "resumed losses differ from the uninterrupted run"; exit 1; }
# A finished (stripped) checkpoint is not resumable.
if "$build/y5train" --resume runs/train/full/weights/last.safetensors 2> err.log; then exit 1; fi
grep -q "nothing to resume" err.log || { cat err.log; exit 1; }
echo "resume: OK"
