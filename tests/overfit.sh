#!/usr/bin/env bash
# Training really learns: yolov5n overfits 8 synthetic images (CPU, imgsz 96, no augmentation, one optimizer
# step per epoch since batch 64 = YOLOv5's nominal batch): the box loss falls below half of its start and
# mAP50 on those images rises above 0.5. About 2 minutes on 2 cores. Extra arguments go to y5train (CTest
# overfit_amp passes --amp: the same with mixed precision).
#   bash tests/overfit.sh BUILD_DIR SOURCE_DIR [y5train args...]
set -euo pipefail
build="$1"; src="$2"; shift 2
work="$(mktemp -d /tmp/y5_overfit.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 8 >/dev/null
sed -i 's#^val: .*#val: images/train#' synth/data.yaml
sed -e 's/^mosaic: .*/mosaic: 0.0/' -e 's/^fliplr: .*/fliplr: 0.0/' -e 's/^scale: .*/scale: 0.0/' \
    -e 's/^translate: .*/translate: 0.0/' -e 's/^hsv_\([hsv]\): .*/hsv_\1: 0.0/' \
    "$src/config/hyps/hyp.scratch-low.yaml" > hyp.yaml
"$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp hyp.yaml --weights '' \
  --imgsz 96 --epochs 600 --batch-size 64 --workers 2 --noval --device cpu "$@" > train.log
csv=runs/train/exp/results.csv
first=$(sed -n 2p $csv | cut -d, -f2 | tr -d ' ')
last=$(tail -1 $csv | cut -d, -f2 | tr -d ' ')
map50=$(tail -1 $csv | cut -d, -f7 | tr -d ' ')
echo "box loss $first -> $last, mAP50 $map50"
awk -v f="$first" -v l="$last" 'BEGIN { exit !(l < f / 2) }' || { echo "box loss did not halve"; exit 1; }
awk -v m="$map50" 'BEGIN { exit !(m > 0.5) }' || { echo "mAP50 $map50 is not above 0.5"; tail -20 train.log; exit 1; }
echo "overfit: OK"
