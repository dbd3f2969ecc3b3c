#!/usr/bin/env bash
# --resume continues a run killed after an epoch exactly as if it had not stopped: on the CPU with the same
# seed, the resumed run's per-epoch losses and lr equal an uninterrupted run's (results.csv rows compared); in f32,
# with --amp (opt.yaml brings the mode back, the checkpoint the loss scaler's state) and with --optimizer Adam (the
# checkpoint holds exp_avg, exp_avg_sq and the step counts of its bias correction), and with --quad --multi-scale
# --image-weights --cache disk (opt.yaml brings them back; the draws depend on the seed, epoch and batch only).
#   bash tests/resume.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_resume.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 8 >/dev/null
args=(--data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp "$src/config/hyps/hyp.scratch-low.yaml"
      --weights '' --epochs 4 --workers 2 --noval --device cpu)
for mode in f32 amp adam flags; do
  extra=(--imgsz 64 --batch-size 4); [ "$mode" = amp ] && extra+=(--amp); [ "$mode" = adam ] && extra+=(--optimizer Adam)
  # quad's 2x and multi-scale's 0.5x: at 64 a one-image batch of 32 px would leave BatchNorm one value per channel
  [ "$mode" = flags ] && extra=(--imgsz 128 --batch-size 8 --quad --multi-scale --image-weights --cache disk)
  "$build/y5train" "${args[@]}" "${extra[@]}" --name full$mode > full$mode.log
  Y5_STOP_AFTER_EPOCH=1 "$build/y5train" "${args[@]}" "${extra[@]}" --name cut$mode > cut$mode.log
  [ "$(wc -l < runs/train/cut$mode/results.csv)" -eq 3 ] || { echo "the cut $mode run should have stopped after 2 epochs"; exit 1; }
  scale=$(grep -ao '"amp_scale":"[^"]*"' runs/train/cut$mode/weights/last.safetensors | cut -d'"' -f4 || true)
  # Adam's state in the cut checkpoint (read before resuming, which strips it at the end): exp_avg_sq, step counts.
  adam_state=$({ grep -aoE '"optimizer[.]exp_avg_sq[.]model[.]0[.]conv[.]weight"|"adam_step":"[1-9][0-9]*,' \
    runs/train/cut$mode/weights/last.safetensors || true; } | sort -u | wc -l)
  "$build/y5train" --resume runs/train/cut$mode/weights/last.safetensors > resumed$mode.log
  grep -q "Resuming training from runs/train/cut$mode/weights/last.safetensors from epoch 2 to 4" resumed$mode.log ||
    { cat resumed$mode.log; exit 1; }
  if [ "$mode" = amp ]; then
    grep -q "^AMP: mixed precision" resumed$mode.log || { echo "--resume lost --amp"; exit 1; }
    # The scaler's state: in the cut checkpoint's metadata (read before resuming), and back in the resumed run.
    [ -n "$scale" ] || { echo "no scaler state saved"; exit 1; }
    grep -q "^AMP: loss scale $scale, [0-9]* steps since" resumed$mode.log || { echo "scaler state $scale not restored"; exit 1; }
  fi
  if [ "$mode" = flags ]; then
    [ "$(grep -cE '^(image_weights|quad|multi_scale): true|^cache: disk' runs/train/cut$mode/opt.yaml)" = 4 ] ||
      { echo "opt.yaml lacks --quad, --multi-scale, --image-weights or --cache disk"; exit 1; }
  fi
  if [ "$mode" = adam ]; then
    grep -q "^optimizer: Adam(lr=0.01) with parameter groups " resumed$mode.log || { echo "--resume lost --optimizer Adam"; exit 1; }
    [ "$adam_state" = 2 ] || { echo "the cut Adam checkpoint lacks exp_avg_sq or its step counts"; exit 1; }
  fi
  # Train losses and lr (columns 1-4 and 12-14) of every epoch must match; validation runs only at the end.
  cut -d, -f1-4,12-14 runs/train/full$mode/results.csv > a.csv
  cut -d, -f1-4,12-14 runs/train/cut$mode/results.csv > b.csv
  diff a.csv b.csv || { echo "resumed $mode losses differ from the uninterrupted run"; exit 1; }
done
# The AMP run trained in f16, the Adam run with Adam: their losses are not the f32 SGD run's.
for other in amp adam; do
  if cmp -s <(cut -d, -f2-4 runs/train/fullf32/results.csv) <(cut -d, -f2-4 runs/train/full$other/results.csv); then
    echo "the $other run's losses equal the f32 SGD run's"; exit 1
  fi
done
# A finished (stripped) checkpoint is not resumable.
if "$build/y5train" --resume runs/train/fullf32/weights/last.safetensors 2> err.log; then exit 1; fi
grep -q "nothing to resume" err.log || { cat err.log; exit 1; }
echo "resume: OK"
