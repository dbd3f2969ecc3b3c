#!/usr/bin/env bash
# End to end on the CPU, as a user runs it: y5data --synthetic, y5train (2 epochs), y5val on best, y5detect on
# an image; checks the run folder, the results.csv header (YOLOv5's, byte for byte) and the outputs.
#   bash tests/train_smoke.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_smoke.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$build/y5data" --synthetic synth --images 8 >/dev/null
"$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp "$src/config/hyps/hyp.scratch-low.yaml" \
  --weights '' --imgsz 64 --epochs 2 --batch-size 4 --workers 2 --device cpu > train.log
run=runs/train/exp
# train.py's first line (plain: not a terminal), and which reading of the data yaml's relative path: was used.
grep -q "^hyperparameters: lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0, .*, iou_t=0.2, .*, copy_paste=0.0$" train.log ||
  { echo "no hyperparameters line as train.py prints it"; head -3 train.log; exit 1; }
grep -q "^data: path '.' is .*/synth, relative to the yaml's folder" train.log || { echo "no data path note"; head -3 train.log; exit 1; }
for f in opt.yaml hyp.yaml results.csv weights/last.safetensors weights/best.safetensors; do
  [ -s "$run/$f" ] || { echo "missing $run/$f"; cat train.log; exit 1; }
done
expected='               epoch,      train/box_loss,      train/obj_loss,      train/cls_loss,   metrics/precision,      metrics/recall,     metrics/mAP_0.5,metrics/mAP_0.5:0.95,        val/box_loss,        val/obj_loss,        val/cls_loss,               x/lr0,               x/lr1,               x/lr2'
[ "$(head -1 $run/results.csv)" == "$expected" ] || { echo "results.csv header differs from YOLOv5's"; head -1 $run/results.csv; exit 1; }
[ "$(wc -l < $run/results.csv)" -eq 3 ] || { echo "results.csv should have a header and 2 rows"; cat $run/results.csv; exit 1; }
# A second run goes to exp2, as YOLOv5 increments; bare yaml names as YOLOv5's tutorials write them resolve to
# y5's config/ folders (here, outside the source tree, those it was built from).
# It also takes --noplots (no picture at all in its folder, though it validates best at the end) and --sync-bn
# (accepted, a no-op on one device).
"$build/y5train" --data synth/data.yaml --cfg yolov5n.yaml --hyp hyp.scratch-low.yaml \
  --imgsz 64 --epochs 1 --batch-size 4 --workers 1 --nosave --noplots --sync-bn > train2.log
[ -s runs/train/exp2/results.csv ] || { echo "second run did not go to exp2"; exit 1; }
[ -s runs/train/exp2/weights/best.safetensors ] || { echo "the --noplots run saved no best"; exit 1; }
pics=$(find runs/train/exp2 -name '*.jpg' -o -name '*.png')
[ -z "$pics" ] || { echo "--noplots wrote pictures: $pics"; exit 1; }
grep -q "^noplots: true$" runs/train/exp2/opt.yaml && grep -q "^sync_bn: true$" runs/train/exp2/opt.yaml &&
  grep -q "^optimizer: SGD$" runs/train/exp2/opt.yaml || { echo "opt.yaml lacks optimizer/noplots/sync_bn"; exit 1; }
# smart_optimizer's line as train.py logs it (yolov5n: 57 BN weights, 60 conv weights, 60 biases).
grep -q "^optimizer: SGD(lr=0.01) with parameter groups 57 weight(decay=0.0), 60 weight(decay=0.0005), 60 bias$" train.log ||
  { echo "no smart_optimizer line"; cat train.log; exit 1; }
if "$build/y5train" --data synth/data.yaml --cfg yolov5n.yaml --optimizer RMSProp 2> opt.err; then exit 1; fi
grep -q -- "--optimizer: RMSProp not in {SGD,Adam,AdamW}" opt.err || { cat opt.err; exit 1; }
grep -q "^cfg: .*config/models/yolov5n.yaml$" runs/train/exp2/opt.yaml || { echo "--cfg yolov5n.yaml not resolved"; cat runs/train/exp2/opt.yaml; exit 1; }
# A name found nowhere is an error before any dataset work, saying where y5 looked.
if "$build/y5train" --data synth/data.yaml --cfg nosuch.yaml --imgsz 64 --epochs 1 > bad.log 2> bad.err; then exit 1; fi
grep -q "^y5train: error: .*--cfg nosuch.yaml: no such file, nor config/models/nosuch[.]yaml, nor " bad.err || { cat bad.err; exit 1; }
if grep -q "^train:" bad.log; then echo "the dataset was scanned before --cfg was checked"; exit 1; fi
# Fine-tuning as train.py: from y5's own weights with --cfg (the anchors excluded: 292 − 1 of 349 state_dict
# items, y5 files hold no num_batches_tracked), and from the official yolov5n.pt without --cfg (the model is the
# checkpoint's yaml with the data's nc; its Detect convolutions do not fit and start fresh) with --freeze 10.
"$build/y5train" --data synth/data.yaml --cfg yolov5n.yaml --weights $run/weights/best.safetensors --imgsz 64 \
  --epochs 1 --batch-size 4 --workers 1 --noplots --name ft > ft.log
grep -q "^Transferred 291/349 items from $run/weights/best.safetensors$" ft.log || { echo "no Transferred line"; cat ft.log; exit 1; }
[ -s runs/train/ft/weights/best.safetensors ] || { echo "the fine-tuning run saved no best"; cat ft.log; exit 1; }
if [ -f "$src/../shared/weights/yolov5n.pt" ]; then  # a user's clone has no ../shared
  "$build/y5train" --data synth/data.yaml --weights "$src/../shared/weights/yolov5n.pt" --freeze 10 --single-cls --imgsz 64 \
    --epochs 1 --batch-size 4 --workers 1 --noplots --name ftpt > ftpt.log
  grep -q "^Transferred 343/349 items from .*yolov5n.pt$" ftpt.log || { echo "no Transferred line"; cat ftpt.log; exit 1; }
  # train.py's named_parameters of model.0. .. model.9.: 99 weights and biases
  [ "$(grep -c "^freezing model\.[0-9]\." ftpt.log)" -eq 99 ] && ! grep -q "^freezing model\.1[0-9]" ftpt.log ||
    { echo "--freeze 10 froze other parameters"; grep "^freezing" ftpt.log; exit 1; }
  grep -q "^freeze: \[10\]$" runs/train/ftpt/opt.yaml || { echo "opt.yaml lacks freeze"; exit 1; }
  [ -s runs/train/ftpt/weights/best.safetensors ] || { echo "the .pt fine-tuning run saved no best"; cat ftpt.log; exit 1; }
else
  echo "../shared/weights/yolov5n.pt is absent: skipping the .pt fine-tuning run"
fi
"$build/y5val" --data synth/data.yaml --weights $run/weights/best.safetensors --imgsz 64 --workers 1 > val.log
grep -q "^ *all *2 " val.log || { echo "y5val table missing"; cat val.log; exit 1; }
# At its defaults (640, batch 32) on a full batch too: its arenas are sized for that, not fixed (3 GB overflowed).
"$build/y5data" --synthetic synth32 --images 128 >/dev/null
"$build/y5val" --data synth32/data.yaml --weights $run/weights/best.safetensors --workers 1 > val640.log 2>&1 ||
  { echo "y5val at its defaults failed"; cat val640.log; exit 1; }
grep -q "^ *all *32 " val640.log || { echo "y5val table missing at 640"; cat val640.log; exit 1; }
vals=(synth/images/val/*.jpg); img="${vals[0]}"
"$build/y5detect" --source "$img" --weights $run/weights/best.safetensors --imgsz 64 --conf-thres 0.001 --save-txt --save-conf > det.log
out="runs/detect/exp/$(basename "$img")"
[ -s "$out" ] || { echo "y5detect wrote no annotated image"; cat det.log; exit 1; }
grep -Eq "^Speed: [0-9.]+ms pre-process, [0-9.]+ms inference, [0-9.]+ms NMS per image at shape \(1, 3, 64, 64\)$" det.log ||
  { echo "y5detect's Speed line is not detect.py's"; cat det.log; exit 1; }
# --half (val.py's and detect.py's flag; f16 activations as y5train --amp) runs on the CPU too.
"$build/y5val" --data synth/data.yaml --weights $run/weights/best.safetensors --imgsz 64 --workers 1 --half > valh.log
grep -q "^ *all *2 " valh.log || { echo "y5val --half table missing"; cat valh.log; exit 1; }
"$build/y5detect" --source "$img" --weights $run/weights/best.safetensors --imgsz 64 --conf-thres 0.001 --save-txt \
  --save-conf --half --name half > deth.log
lab="labels/$(basename "${img%.*}").txt"
[ -s "runs/detect/half/$lab" ] || { echo "y5detect --half wrote no labels"; cat deth.log; exit 1; }
bus="$src/../shared/data/images/bus.jpg"
if [ -f "$bus" ]; then  # a user's clone has no ../shared
  "$build/y5detect" --source "$bus" --weights $run/weights/best.safetensors --imgsz 128 --name bus > bus.log
  [ -s runs/detect/bus/bus.jpg ] || { echo "y5detect wrote no annotated bus.jpg"; cat bus.log; exit 1; }
  # detect.py's shape is (1, 3, *imgsz), not the last letterbox (128x96 for the portrait bus.jpg).
  grep -q "^image 1/1 .*: 128x96 " bus.log && grep -q "at shape (1, 3, 128, 128)$" bus.log || { cat bus.log; exit 1; }
else
  echo "../shared/data/images/bus.jpg is absent: skipping the bus.jpg detection"
fi
coco="$src/../shared/data/coco128/coco128.yaml" pt="$src/../shared/weights/yolov5n.pt"
if [ -f "$coco" ] && [ -f "$pt" ]; then  # val.py's per-class rows: nc 80 needs --verbose
  "$build/y5val" --data "$coco" --weights "$pt" --imgsz 128 --workers 2 > v80.log
  "$build/y5val" --data "$coco" --weights "$pt" --imgsz 128 --workers 2 --verbose > v80v.log
  [ "$(grep -A1 '^ *all ' v80.log | tail -1 | cut -c1-6)" = "Speed:" ] || { echo "nc 80 printed class rows"; cat v80.log; exit 1; }
  grep -q "^ *person  *128 " v80v.log || { echo "--verbose printed no class rows"; cat v80v.log; exit 1; }
  grep -q "^data: path '.' is .*coco128, relative to the yaml's folder" v80.log || { cat v80.log; exit 1; }
else
  echo "../shared coco128 or yolov5n.pt is absent: skipping y5val's per-class rows check"
fi
# Bad input: a missing data yaml is one clear error line and exit 1.
if "$build/y5train" --data nope.yaml --cfg "$src/config/models/yolov5n.yaml" --epochs 1 2> err.log; then exit 1; fi
grep -q -- "--data nope.yaml: no such file, nor config/data/nope[.]yaml" err.log || { cat err.log; exit 1; }
# cuDNN flags: listed in --help, kept in opt.yaml (deterministic by default), a negative --workspace refused.
"$build/y5train" --help > help.log
grep -q -- "--no-deterministic" help.log && grep -q -- "--workspace" help.log || { echo "--help lacks the cuDNN flags"; cat help.log; exit 1; }
grep -q -- "--optimizer" help.log && grep -q -- "--noplots" help.log && grep -q -- "--sync-bn.*no effect" help.log ||
  { echo "--help lacks --optimizer, --noplots or --sync-bn"; cat help.log; exit 1; }
# train.py v7.0's flags but the logging services' are all taken: each name in --help.
for f in --weights --cfg --data --hyp --epochs --batch-size --imgsz --img-size --rect --resume --nosave --noval \
         --noautoanchor --noplots --evolve --bucket --cache --image-weights --device --multi-scale --single-cls \
         --optimizer --sync-bn --workers --project --name --exist-ok --quad --cos-lr --label-smoothing --patience \
         --freeze --save-period --seed --local_rank; do
  grep -q -- "$f" help.log || { echo "--help lacks train.py's $f"; exit 1; }
done
# DDP's --local_rank takes only -1 and --bucket only '' (one device; no Google Cloud SDK): other values refused.
if "$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --local_rank 0 2> lr.err; then exit 1; fi
grep -q -- "--local_rank: Value 0 not in range -1 to -1" lr.err || { cat lr.err; exit 1; }
if "$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --bucket b 2> bk.err; then exit 1; fi
grep -q -- "--bucket: gsutil buckets are not supported" bk.err || { cat bk.err; exit 1; }
grep -q "^deterministic: true" $run/opt.yaml && grep -q "^workspace: 256" $run/opt.yaml || { echo "opt.yaml lacks the cuDNN flags"; cat $run/opt.yaml; exit 1; }
if "$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --workspace -1 2> ws.err; then exit 1; fi
grep -q -- "--workspace: Value -1 not in range" ws.err || { cat ws.err; exit 1; }
if [ -x "$build/bench_kernels" ]; then  # CUDA builds: --op names are checked before the device
  if "$build/bench_kernels" --op nms,bogus 2> op.err; then echo "bench_kernels accepted --op bogus"; exit 1; fi
  grep -q -- "--op bogus: no such benchmark; valid: .*nms" op.err || { cat op.err; exit 1; }
fi
# A diverging run (lr0 1e30) stops at the first non-finite loss, naming the epoch and batch, and keeps the
# last good checkpoint.
sed 's/^lr0: .*/lr0: 1.0e30/' "$src/config/hyps/hyp.scratch-low.yaml" > hyp.diverge.yaml
if "$build/y5train" --data synth/data.yaml --cfg "$src/config/models/yolov5n.yaml" --hyp hyp.diverge.yaml \
     --imgsz 64 --epochs 3 --batch-size 4 --workers 1 --name diverge > diverge.log 2> diverge.err; then
  echo "a diverging run did not stop"; exit 1
fi
grep -q "y5train: error: .*loss is .* at epoch [0-9]*, batch [0-9]*; training stopped" diverge.err || { cat diverge.err; exit 1; }
[ "$(grep -c . diverge.err)" -eq 1 ] || { echo "the error should be one line"; cat diverge.err; exit 1; }
for f in results.png train_batch0.jpg val_batch0_labels.jpg val_batch0_pred.jpg; do
  [ -s "$run/$f" ] || { echo "missing $run/$f"; exit 1; }
done
echo "train smoke: OK"
