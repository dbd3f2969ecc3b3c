#!/usr/bin/env bash
# End to end on the emulated CUDA device (a -DY5_CUDA_EMU=ON build, tests/cudaemu), against the CPU:
#  1. y5train --device 0 gives the --device cpu run's per-batch losses (Y5_LOSS_LOG) to 1e-4 relative in f32 and
#     to AMP_TOL with --amp (f16 storage on both sides, see below), and the same lr;
#  2. a device run (AMP, the device's default) stopped after epoch 0 (Y5_STOP_AFTER_EPOCH) and resumed gives the
#     uninterrupted device run's results.csv and per-batch losses exactly, and so does a run with --cuda-graph;
#  3. y5val and y5detect --device 0 (fused BN, NMS on the device) give the CPU's table and detections with the
#     weights of 1 (tolerances below);
#  4. a diverging device run stops at its first non-finite loss with one line, at the CPU run's epoch and batch.
# Two images at batch 1: 2 batches an epoch. The warmup's accumulation is 2 from the second batch on, so the
# optimizer steps at batch 0 only in epoch 0 and the checkpoint the resume starts from holds accumulated
# gradients. The model is yolov5n at half width: the emulator's time goes to the BatchNorm reductions (a block
# of 256 threads per channel, whatever the batch), so yolov5n itself takes ~3 min here against ~1.5; the code
# paths are the same, and tests/test_gpu_model.cpp compares yolov5n itself on both devices.
#   bash tests/emu_e2e.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
work="$(mktemp -d /tmp/y5_emu_e2e.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# The emulator fills every allocation with 0xFF: a 4 GB device (16 by default) keeps the arenas y5 sizes from
# its free memory small; these runs need under 1 GB.
export CUDAEMU_MEMORY_MB=4096
"$build/y5data" --synthetic synth --images 2 >/dev/null
sed 's/^width_multiple: .*/width_multiple: 0.125/' "$src/config/models/yolov5n.yaml" > yolov5n-half.yaml
"$build/y5data" --synthetic eval --images 16 --seed 1 >/dev/null  # for y5val and y5detect: 16 other images
args=(--data synth/data.yaml --cfg yolov5n-half.yaml --hyp "$src/config/hyps/hyp.scratch-low.yaml"
      --weights '' --imgsz 64 --epochs 2 --batch-size 1 --workers 2)
fail() { echo "emu_e2e: $1"; shift; for f in "$@"; do echo "--- $f"; tail -n 30 "$f"; done; exit 1; }

# 1. Per batch: epoch, batch, lbox, lobj, lcls, lr0-2. The lr come from the host schedule: equal as text. In f32 the
# two sides differ by the order of float sums (measured 8.5e-6). With --amp each stored f16 value can differ by one
# f16 rounding (2^-11) where those sums straddle a rounding boundary: the first batch's losses (the same weights on
# both sides) differ by up to 1.5e-3 (measured), against 9.5e-3 between the CPU's f32 and AMP runs, so 3e-3 there
# tells f16 from f32. Every optimizer step (biases at lr 0.1 in warmup, this tiny model's deep BatchNorms over a
# few values per channel) amplifies the difference: 1.9e-2 by the second batch (the CPU's own f32 and AMP runs
# are 3e-3 to 1e-2 apart there), so later batches get 5e-2, and the first batch must be nearer the CPU's AMP
# losses than its f32 ones.
AMP_TOL0=3e-3 AMP_TOL=5e-2
for mode in f32 amp; do
  flag=--no-amp; tol0=1e-4; tol=1e-4
  [ "$mode" = amp ] && flag=--amp && tol0=$AMP_TOL0 && tol=$AMP_TOL
  Y5_LOSS_LOG=cpu$mode.log "$build/y5train" "${args[@]}" $flag --device cpu --name cpu$mode > cpu$mode.out 2>&1 ||
    fail "CPU $mode training failed" cpu$mode.out
  Y5_LOSS_LOG=dev$mode.log "$build/y5train" "${args[@]}" $flag --device 0 --name dev$mode > dev$mode.out 2>&1 ||
    fail "device $mode training failed" dev$mode.out
  [ "$(wc -l < cpu$mode.log)" -eq 4 ] || fail "the CPU run should have logged 4 batches" cpu$mode.log
  awk -v tol0="$tol0" -v tol="$tol" -v mode="$mode" 'NR == FNR { c[FNR] = $0; next }
       { split(c[FNR], a, " ")
         if (a[1] != $1 || a[2] != $2 || a[6] != $6 || a[7] != $7 || a[8] != $8) { print "line " FNR " differs: " c[FNR] " | " $0; bad = 1 }
         for (k = 3; k <= 5; ++k) {
           d = a[k] - $k; d = d < 0 ? -d : d; m = a[k] < 0 ? -a[k] : a[k]; r = m > 0 ? d / m : d
           if (r > worst) worst = r
           if (r > (FNR == 1 ? tol0 : tol)) { print "epoch " $1 " batch " $2 " loss " k - 2 ": cpu " a[k] ", device " $k; bad = 1 } } }
       END { if (FNR != length(c)) { print "the logs differ in length"; bad = 1 }
             printf "emu_e2e: %s per-batch losses, device against CPU: largest relative difference %.2g\n", mode, worst
             exit bad }' cpu$mode.log dev$mode.log ||
    fail "$mode device losses differ from the CPU's by more than $tol0 (first batch) or $tol" cpu$mode.log dev$mode.log
done
# The device's AMP run is f16: its first batch's losses are nearer the CPU's AMP ones than the CPU's f32 ones.
paste -d' ' <(head -1 devamp.log) <(head -1 cpuamp.log) <(head -1 cpuf32.log) | awk '
  function rel(p, q) { return (p > q ? p - q : q - p) / q }
  { da = rel($3, $11) + rel($4, $12) + rel($5, $13); df = rel($3, $19) + rel($4, $20) + rel($5, $21)
    printf "emu_e2e: first batch, device AMP against the CPU: AMP %.2g, f32 %.2g (summed relative differences)\n", da, df
    exit !(da < df) }' || fail "the device's --amp losses are not nearer the CPU's AMP losses than its f32 ones"
grep -q "^AMP: mixed precision" devamp.out || fail "--amp did not train in mixed precision" devamp.out
if cmp -s <(cut -d' ' -f3-5 cpuf32.log) <(cut -d' ' -f3-5 cpuamp.log); then fail "the --amp losses equal the f32 ones"; fi

# 2. Resume on the device: stopped after epoch 0, continued; every results.csv column and every batch's losses
# (all printed digits) as the uninterrupted device run.
Y5_STOP_AFTER_EPOCH=0 Y5_LOSS_LOG=cut.log "$build/y5train" "${args[@]}" --device 0 --name cut > cut.out 2>&1 ||
  fail "the device run to be cut failed" cut.out
[ "$(wc -l < runs/train/cut/results.csv)" -eq 2 ] || fail "the cut run should have stopped after epoch 0" cut.out
Y5_LOSS_LOG=cut.log "$build/y5train" --resume runs/train/cut/weights/last.safetensors > resumed.out 2>&1 ||
  fail "resuming on the device failed" resumed.out
grep -q "Resuming training from runs/train/cut/weights/last.safetensors from epoch 1 to 2" resumed.out ||
  fail "no resume message" resumed.out
Y5_LOSS_LOG=dev.log "$build/y5train" "${args[@]}" --device 0 --name dev > dev.out 2>&1 || fail "device training failed" dev.out
grep -q "^AMP: mixed precision" dev.out || fail "the device's default is not AMP" dev.out
diff runs/train/dev/results.csv runs/train/cut/results.csv || fail "the resumed device run's results.csv differs from the uninterrupted one's"
diff dev.log cut.log || fail "the resumed device run's per-batch losses differ from the uninterrupted one's"

# 2b. --cuda-graph: each batch shape's second step captured, later ones replayed (epoch 0's second batch captured,
# epoch 1's two replayed): the uninterrupted device run's results.csv and per-batch losses exactly.
Y5_LOSS_LOG=graph.log "$build/y5train" "${args[@]}" --device 0 --cuda-graph --name graph > graph.out 2>&1 ||
  fail "device training with --cuda-graph failed" graph.out
grep -q "^cuda_graph: true" runs/train/graph/opt.yaml || fail "opt.yaml does not record --cuda-graph" graph.out
grep -Eq "^CUDA graphs: [1-9][0-9]* captured, [1-9][0-9]* replayed" graph.out || fail "no CUDA graph was replayed" graph.out
diff runs/train/dev/results.csv runs/train/graph/results.csv || fail "the --cuda-graph run's results.csv differs"
diff dev.log graph.log || fail "the --cuda-graph run's per-batch losses differ"

# 3. y5val and y5detect (both fold BN; NMS on the device) with the device-trained weights, at 128 px. The two
# forwards differ by float rounding in a few outputs only (measured: 8 of 6048 decoded values, by <= 5.2e-7
# relative) and the device NMS equals the CPU's bit for bit on equal inputs, so the results can differ only
# through ties: an untrained model gives many boxes the same score, greedy NMS keeps whichever of two
# overlapping tied boxes comes first and suppresses differently from there. How chaotic that is: the CPU's
# own y5val table changes twofold when the weights are perturbed by 1e-6 relative, so a tolerance on the
# table could not tell a bug from a tie, and the table must be equal. y5detect's labels, read in NMS order (score
# descending: the files list them reversed, lowest first, as detect.py writes them), must be equal (class, box within 0.01 = y5detect's 1-px rounding, conf within 1e-4 relative)
# up to the first group of tied scores (2e-5 relative: %g prints 6 digits) that holds different detections;
# each of those must have a counterpart on the other side of the same class overlapping it by IoU > 0.45 (the
# one NMS kept instead). That image is compared no further, and at least 3/4 of all detections must have been.
w=runs/train/dev/weights/best.safetensors
for d in cpu 0; do
  "$build/y5val" --data eval/data.yaml --task train --weights "$w" --imgsz 128 --workers 1 --device "$d" --noplots \
    > "val_$d.out" 2>&1 || fail "y5val --device $d failed" "val_$d.out"
  grep -v -e "^Speed:" -e "^Results saved to" "val_$d.out" > "val_$d.table"
  "$build/y5detect" --source eval/images/train --weights "$w" --imgsz 128 --conf-thres 0.001 --save-txt --save-conf \
    --nosave --name "det_$d" --device "$d" > "det_$d.out" 2>&1 || fail "y5detect --device $d failed" "det_$d.out"
done
grep -q "^ *all *16 *33 " val_cpu.table || fail "y5val printed no table" val_cpu.out
diff val_cpu.table val_0.table || fail "y5val's table on the device differs from the CPU's"
(cd runs/detect/det_cpu/labels && ls) > det_cpu.files
(cd runs/detect/det_0/labels && ls) > det_0.files
diff det_cpu.files det_0.files || fail "y5detect wrote labels for different images"
[ "$(wc -l < det_cpu.files)" -eq 16 ] || fail "y5detect should have found detections in all 16 images" det_cpu.out
while read -r f; do
  awk -v img="$f" '
    function abs(x) { return x < 0 ? -x : x }
    function rel(p, q, tol) { return abs(p - q) <= tol * (abs(p) > abs(q) ? abs(p) : abs(q)) }
    function same(p, q,  a, b) {
      split(p, a, " "); split(q, b, " ")
      return a[1] == b[1] && abs(a[2] - b[2]) <= 0.01 && abs(a[3] - b[3]) <= 0.01 && abs(a[4] - b[4]) <= 0.01 &&
             abs(a[5] - b[5]) <= 0.01 && rel(a[6], b[6], 1e-4)
    }
    function rival(p, q,  a, b, w, h) {  # same class and IoU > 0.45 (normalised xywh)
      split(p, a, " "); split(q, b, " ")
      w = (a[2] + a[4] / 2 < b[2] + b[4] / 2 ? a[2] + a[4] / 2 : b[2] + b[4] / 2) - (a[2] - a[4] / 2 > b[2] - b[4] / 2 ? a[2] - a[4] / 2 : b[2] - b[4] / 2)
      h = (a[3] + a[5] / 2 < b[3] + b[5] / 2 ? a[3] + a[5] / 2 : b[3] + b[5] / 2) - (a[3] - a[5] / 2 > b[3] - b[5] / 2 ? a[3] - a[5] / 2 : b[3] - b[5] / 2)
      if (a[1] != b[1] || w <= 0 || h <= 0) return 0
      return w * h / (a[4] * a[5] + b[4] * b[5] - w * h) > 0.45
    }
    function conf(p,  a) { split(p, a, " "); return a[6] }
    NR == FNR { n1++; A[n1] = $0; next }
    { n2++; B[n2] = $0 }
    END {
      i = j = 1; diverged = 0
      while (i <= n1 && j <= n2 && !diverged) {
        if (same(A[i], B[j])) { ++i; ++j; continue }
        c = conf(A[i])
        if (!rel(c, conf(B[j]), 2e-5)) { print img ": detection " i " differs, not at a tie: " A[i] " | " B[j]; exit 1 }
        for (e1 = i; e1 < n1 && rel(conf(A[e1 + 1]), c, 2e-5); ++e1) {}  # the tied group on each side
        for (e2 = j; e2 < n2 && rel(conf(B[e2 + 1]), c, 2e-5); ++e2) {}
        split("", ua); split("", ub); left = 0
        for (k = i; k <= e1; ++k)
          for (l = j; l <= e2 && !ua[k]; ++l) if (!ub[l] && same(A[k], B[l])) ua[k] = ub[l] = 1
        for (k = i; k <= e1; ++k) if (!ua[k]) {
          ++left; ok = 0
          for (l = j; l <= e2 && !ok; ++l) ok = !ub[l] && rival(A[k], B[l])
          if (!ok) { print img ": only on the CPU, with no tied rival on the device: " A[k]; exit 1 }
        }
        for (l = j; l <= e2; ++l) if (!ub[l]) {
          ++left; ok = 0
          for (k = i; k <= e1 && !ok; ++k) ok = !ua[k] && rival(A[k], B[l])
          if (!ok) { print img ": only on the device, with no tied rival on the CPU: " B[l]; exit 1 }
        }
        if (left) diverged = 1
        else { i = e1 + 1; j = e2 + 1 }  # the same detections, tied, in another order
      }
      if (!diverged && (i <= n1 || j <= n2)) { print img ": " n1 " detections on the CPU, " n2 " on the device"; exit 1 }
      print n1, i - 1, diverged > "/dev/stderr"
    }' <(tac "runs/detect/det_cpu/labels/$f") <(tac "runs/detect/det_0/labels/$f") 2>> det.counts ||
    fail "y5detect's detections on the device differ from the CPU's ($f)"
done < det_cpu.files
awk '{ n += $1; m += $2; t += $3 }
     END { printf "emu_e2e: y5detect: %d of %d detections equal in NMS order; %d of %d images diverge after a tie\n", m, n, t, NR
           exit m < 0.75 * n }' det.counts || fail "fewer than 3/4 of the detections could be compared"
# 4. A diverging device run (lr0 1e30, as tests/train_smoke.sh on the CPU): the pipelined step collects a step's
# losses one step late, and the run still stops with one line naming the epoch and batch of the first non-finite
# loss, the CPU run's (measured: epoch 1, batch 1 on both).
sed 's/^lr0: .*/lr0: 1.0e30/' "$src/config/hyps/hyp.scratch-low.yaml" > hyp.diverge.yaml
if "$build/y5train" --data synth/data.yaml --cfg yolov5n-half.yaml --hyp hyp.diverge.yaml --weights '' --imgsz 64 \
     --epochs 3 --batch-size 1 --workers 1 --device 0 --name diverge > diverge.out 2> diverge.err; then
  fail "a diverging device run did not stop" diverge.out
fi
grep -q "y5train: error: .*loss is .* at epoch [0-9]*, batch [0-9]*; training stopped" diverge.err ||
  fail "the diverging device run did not stop at its non-finite loss" diverge.err diverge.out
[ "$(grep -c . diverge.err)" -eq 1 ] || fail "the diverging device run's error should be one line" diverge.err
"$build/y5train" --data synth/data.yaml --cfg yolov5n-half.yaml --hyp hyp.diverge.yaml --weights '' --imgsz 64 \
  --epochs 3 --batch-size 1 --workers 1 --device cpu --name diverge_cpu > diverge_cpu.out 2> diverge_cpu.err || true
at() { grep -o "at epoch [0-9]*, batch [0-9]*" "$1"; }
[ -n "$(at diverge_cpu.err)" ] && [ "$(at diverge.err)" = "$(at diverge_cpu.err)" ] ||
  fail "the device and the CPU stop at different batches" diverge.err diverge_cpu.err
echo "emu_e2e: OK"
