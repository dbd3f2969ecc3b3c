#!/usr/bin/env bash
# y5's main job in one command, on a fresh Debian machine and on the CPU: install what is missing, build,
# write the built-in synthetic dataset (circles, rectangles, triangles on textures), train yolov5n on it
# from scratch with YOLOv5's recipe, print its mAP table, and run y5detect on the validation images.
#   bash tools/demo.sh            (about 6 minutes on 2 cores; Y5_DEMO_EPOCHS=N to change the length)
# 300 epochs of 64 images are only 300 optimizer steps (YOLOv5's nominal batch is 64): the model is just
# beginning to detect then (val mAP50 about 0.13 measured); longer runs keep improving.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
epochs="${Y5_DEMO_EPOCHS:-300}"
data=runs/demo/synth
rm -rf runs/demo && ./build/y5data --synthetic "$data" --images 64
# Batch 64 is YOLOv5's nominal batch, so every epoch of the 64 training images is one optimizer step.
./build/y5train --data "$data/data.yaml" --cfg config/models/yolov5n.yaml --weights '' --imgsz 96 \
  --epochs "$epochs" --batch-size 64 --noval --cache ram --workers "$(nproc)" --device cpu --project runs/train --name demo --exist-ok
./build/y5detect --source "$data/images/val" --weights runs/train/demo/weights/best.safetensors --imgsz 96 \
  --project runs/detect --name demo --exist-ok
echo
echo "Training run: runs/train/demo (results.csv, results.png, weights/best.safetensors)"
echo "Annotated images: runs/detect/demo/ (one per validation image)"
