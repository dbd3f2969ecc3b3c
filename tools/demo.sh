#!/usr/bin/env bash
# y5's main job in one command, on a fresh Debian machine and on the CPU: install what is missing, build,
# write the built-in synthetic dataset (circles, rectangles, triangles on textures; 512 training and 128
# validation images), train yolov5n on it from scratch with YOLOv5's recipe, print its mAP table, and run
# y5detect on the validation images.
#   bash tools/demo.sh            (about 3 minutes of training on 2 cores after the first build; Y5_DEMO_EPOCHS=N to change the length)
# Training is at 96 px with config/hyps/hyp.demo.yaml: hyp.scratch-low.yaml with mosaic off, because at
# this size a mosaic shrinks the shapes to a few pixels (the file says what was measured).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
epochs="${Y5_DEMO_EPOCHS:-100}"
data=runs/demo/synth
rm -rf runs/demo && ./build/y5data --synthetic "$data" --images 512
./build/y5train --data "$data/data.yaml" --cfg config/models/yolov5n.yaml --hyp config/hyps/hyp.demo.yaml --weights '' \
  --imgsz 96 --epochs "$epochs" --batch-size 16 --cache ram --workers "$(nproc)" --device cpu \
  --project runs/train --name demo --exist-ok
./build/y5detect --source "$data/images/val" --weights runs/train/demo/weights/best.safetensors --imgsz 96 \
  --project runs/detect --name demo --exist-ok
echo
echo "Training run: runs/train/demo (results.csv, results.png, val_batch*_pred.jpg, weights/best.safetensors)"
echo "Annotated images: runs/detect/demo/ (one per validation image, e.g. runs/detect/demo/00000.jpg)"
