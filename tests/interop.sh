#!/usr/bin/env bash
# y5val and y5detect, the binaries users run, against YOLOv5 7.0's val.py and detect.py with the official
# yolov5n.pt (issue 16). tests/fixtures/interop.txt holds what val.run and detect.run gave
# (tools/golden/make_interop_fixtures.py; val.py with y5's stable rect-batch sort and without its NMS time limit).
#   y5val on coco128 at 640 (batch 32, conf 0.001, iou 0.6): the overall P, R, mAP50, mAP50-95 and each class's
#     within 1e-3 of val.py's. y5val prints them as val.py does (%.3g), which rounds by up to 5e-4 of the 1e-3.
#   y5detect on bus.jpg (640, conf 0.25, iou 0.45, --save-txt --save-conf): detect.py's boxes, same count, classes
#     equal, conf within 1e-4 (f32 sums in another order differ by ~1e-6; %g keeps 6 digits), boxes within 0.01 px:
#     both round boxes to whole pixels (detect.py's scale_boxes(...).round()), so an agreeing box is the same
#     pixel box, up to %g's 6 digits of the normalised values (5e-7 * 1080 px).
# The lines are compared in file order: both write reversed(det), lowest confidence first.
# Usage: tests/interop.sh BUILD_DIR SOURCE_DIR. Skips (exit 0) when ../shared is absent (a user's clone).
set -euo pipefail
build=$(cd "$1" && pwd) src=$(cd "$2" && pwd)
fix="$src/tests/fixtures/interop.txt"
shared="$src/../shared"
pt="$shared/weights/yolov5n.pt" coco="$shared/data/coco128" bus="$shared/data/images/bus.jpg"
if [ ! -f "$pt" ] || [ ! -f "$coco/coco128.yaml" ] || [ ! -f "$bus" ]; then
  echo "../shared (yolov5n.pt, coco128, bus.jpg) is absent: skipping the val.py and detect.py parity checks"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
cp -r "$coco" coco128  # y5val writes its label cache beside the labels: never into ../shared

"$build/y5val" --data coco128/coco128.yaml --weights "$pt" --imgsz 640 --batch-size 32 --verbose --noplots \
  --workers 2 > val.log || { cat val.log; exit 1; }
# val.log's table rows: NAME (may hold spaces) Images Instances P R mAP50 mAP50-95.
awk -v tol=1e-3 '
  function abs(x) { return x < 0 ? -x : x }
  FNR == NR {  # the fixture: "val all P R M50 M" and "val class I P R M50 M NAME..."
    if ($1 != "val") next
    if ($2 == "all") { name = "all"; k = 3 } else { name = $8; for (i = 9; i <= NF; i++) name = name " " $i; k = 4 }
    want[name] = $k " " $(k + 1) " " $(k + 2) " " $(k + 3); nwant++; next
  }
  /^ +Class +Images/ { table = 1; next }
  /^Speed:/ { table = 0 }
  table && NF >= 7 {
    name = $1; for (i = 2; i <= NF - 6; i++) name = name " " $i
    if (!(name in want)) { printf "y5val row %s is not in val.py'"'"'s rows\n", name; bad++; next }
    split(want[name], w, " "); split("P R mAP50 mAP50-95", lab, " ")
    for (j = 1; j <= 4; j++) {
      d = abs($(NF - 4 + j) - w[j]); if (d > maxd) maxd = d
      if (d > tol) { printf "%s %s: y5val %s, val.py %.6f\n", name, lab[j], $(NF - 4 + j), w[j]; bad++ }
    }
    seen[name] = 1; ngot++
  }
  END {
    for (n in want) if (!(n in seen)) { printf "val.py row %s is missing from y5val\n", n; bad++ }
    printf "y5val: %d rows (all + classes) against val.py'"'"'s %d, largest difference %.2e\n", ngot, nwant, maxd
    exit bad > 0
  }' "$fix" val.log || { echo "y5val differs from val.py (tests/fixtures/interop.txt)"; cat val.log; exit 1; }

"$build/y5detect" --weights "$pt" --source "$bus" --imgsz 640 --conf-thres 0.25 --iou-thres 0.45 --max-det 1000 \
  --save-txt --save-conf --nosave --project runs/detect --name exp > detect.log || { cat detect.log; exit 1; }
got=runs/detect/exp/labels/bus.txt
[ -s "$got" ] || { echo "y5detect wrote no $got"; cat detect.log; exit 1; }
awk '$1 == "detect" && NF == 7 { $1 = ""; print }' "$fix" > want.txt
cp "$got" got.txt
size=$(awk '$1 == "detect" && NF == 3 { print $2, $3 }' "$fix")
awk -v size="$size" '
  function abs(x) { return x < 0 ? -x : x }
  BEGIN { split(size, s, " "); W = s[1]; H = s[2] }
  FNR == NR { want[++n] = $0; next }
  {
    m++; split(want[m], w, " ")
    if ($1 != w[1]) { printf "box %d: class %s, detect.py %s\n", m, $1, w[1]; bad++ }
    if (abs($6 - w[6]) > 1e-4) { printf "box %d: conf %s, detect.py %s\n", m, $6, w[6]; bad++ }
    for (j = 0; j < 2; j++) {  # x1, x2 then y1, y2 in pixels, from the normalised centre and size
      D = j ? H : W
      d1 = abs(($(2 + j) - $(4 + j) / 2) - (w[2 + j] - w[4 + j] / 2)) * D
      d2 = abs(($(2 + j) + $(4 + j) / 2) - (w[2 + j] + w[4 + j] / 2)) * D
      d = d1 > d2 ? d1 : d2; if (d > maxd) maxd = d
      if (d > 0.01) { printf "box %d: %s off by %.3f px\n", m, j ? "y" : "x", d; bad++ }
    }
  }
  END {
    if (m != n) { printf "y5detect %d boxes, detect.py %d\n", m, n; bad++ }
    printf "y5detect: %d boxes against detect.py'"'"'s %d, largest box difference %.2e px\n", m, n, maxd
    exit bad > 0
  }' want.txt got.txt || { echo "y5detect differs from detect.py (tests/fixtures/interop.txt)"; cat got.txt; exit 1; }
echo "interop: y5val and y5detect agree with val.py and detect.py"
