#!/usr/bin/env bash
# y5train --evolve end to end on the CPU: 2 generations of 1 epoch on a tiny synthetic dataset write
# runs/evolve/exp/{evolve.csv (header + 2 rows), hyp_evolve.yaml, evolve.png} and no checkpoint; the same command
# with --exist-ok --name exp continues to 3 rows (train.py's --resume does the same); without it a new exp2 starts;
# and an evolve.csv written by YOLOv5's print_mutation (tests/fixtures/evolve.csv, 8 rows) is continued to 9.
#   bash tests/evolve.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_evolve.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 16 >/dev/null
common=(--data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --weights '' --imgsz 64 --epochs 1 --batch-size 8
        --workers 1 --device cpu)
args=("${common[@]}" --hyp "$src/config/hyps/hyp.scratch-low.yaml")
rows() { echo $(( $(wc -l < "$1") - 1 )); }
fail() { echo "$1"; tail -30 "$2"; exit 1; }

"$build/y5train" "${args[@]}" --evolve 2 > e1.log 2>&1 || fail "--evolve 2 failed" e1.log
run=runs/evolve/exp
for f in evolve.csv hyp_evolve.yaml evolve.png results.csv; do [ -s $run/$f ] || fail "missing $run/$f" e1.log; done
[ ! -e $run/weights ] && [ ! -e $run/opt.yaml ] || fail "--evolve saves no checkpoint and no opt.yaml, as train.py" e1.log
[ "$(rows $run/evolve.csv)" -eq 2 ] || fail "evolve.csv should have 2 rows" e1.log
header="$(head -1 "$src/tests/fixtures/evolve.csv")"  # YOLOv5's header for hyp.scratch-low + anchors
[ "$(head -1 $run/evolve.csv)" == "$header" ] || fail "evolve.csv header differs from print_mutation's" e1.log
# Generation 1 is hyp.scratch-low as it is (clipped and rounded): its row ends with those values, anchors 3.
sed -n 2p $run/evolve.csv | grep -qE '^ +[0-9.e+-]+(, *[0-9.e+-]+){6}, +0.01, +0.01, +0.937, +0.0005, +3, .*, +3$' ||
  fail "generation 1 should be the yaml's values" e1.log
grep -q "^# Last generation: 1$" $run/hyp_evolve.yaml || fail "hyp_evolve.yaml: no '# Last generation: 1'" e1.log
grep -q "^evolve: 2 generations finished, current result:" e1.log || fail "no print_mutation summary" e1.log
grep -q "^Hyperparameter evolution finished 2 generations" e1.log || fail "no final line" e1.log
[ "$(grep -c '^Starting training for 1 epochs' e1.log)" -eq 2 ] || fail "expected 2 trainings" e1.log

# Continue: --exist-ok --name exp appends a third generation (a mutation of one of the first two).
"$build/y5train" "${args[@]}" --evolve 1 --exist-ok --name exp > e2.log 2>&1 || fail "continuing failed" e2.log
[ "$(rows $run/evolve.csv)" -eq 3 ] || fail "evolve.csv should have 3 rows after continuing" e2.log
grep -q "^evolve: continuing $run/evolve.csv (2 generations)" e2.log || fail "no continuing note" e2.log
grep -q "^# Last generation: 2$" $run/hyp_evolve.yaml || fail "hyp_evolve.yaml not updated" e2.log
[ ! -e runs/evolve/exp2 ] || fail "--exist-ok should not make exp2" e2.log
# The evolved best is a hyp yaml y5train reads (anchors included).
"$build/y5train" "${common[@]}" --hyp $run/hyp_evolve.yaml --nosave --noplots --name fromyaml > e3.log 2>&1 ||
  fail "training with hyp_evolve.yaml failed" e3.log

# Continue YOLOv5's own evolve.csv (train.py's spelling: --resume under --evolve means exist_ok).
mkdir -p runs/evolve/yolo && cp "$src/tests/fixtures/evolve.csv" runs/evolve/yolo/
"$build/y5train" "${args[@]}" --evolve 1 --resume --name yolo > e4.log 2>&1 || fail "continuing YOLOv5's csv failed" e4.log
[ "$(rows runs/evolve/yolo/evolve.csv)" -eq 9 ] || fail "YOLOv5's evolve.csv should have 9 rows" e4.log
head -9 runs/evolve/yolo/evolve.csv | cmp -s - "$src/tests/fixtures/evolve.csv" || fail "YOLOv5's rows were changed" e4.log
echo "evolve: ok"
