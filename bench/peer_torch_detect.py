"""PyTorch's row of bench_detect's table: YOLOv5 v7.0's own fused model (yolov5 7.0.13 + torch), CPU, batch 1.

    python bench/peer_torch_detect.py --weights ../shared/weights/yolov5n.pt [--imgsz 640] [--runs 10] [--threads 1 2]

Outside CI (`pip install yolov5==7.0.13 torch`). Same protocol as bench/bench_detect.cpp and peer_onnxruntime.py:
one random image (uniform 0..1), --warmup untimed runs, the median of --runs timed runs (host clock) of the
forward with Detect's decode (detect.py's model(im), no NMS), torch.set_num_threads set to each count, fp32.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools' / 'golden'))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()
# The official checkpoint pickles its model class: torch.load's pre-2.6 default (set before torch is imported).
os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'

import torch  # noqa: E402
import yolov5.models.yolo  # noqa: E402,F401  (puts yolov5's folder on sys.path: `models.yolo` for torch.load)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--weights', required=True)
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--threads', type=int, nargs='*', default=None, help='default: 1 and all cores')
    a = ap.parse_args()
    n_all = os.cpu_count() or 1
    threads = a.threads or ([1, n_all] if n_all > 1 else [1])
    model = torch.load(a.weights, map_location='cpu')['model'].float().fuse().eval()  # attempt_load's steps
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 3, a.imgsz, a.imgsz), generator=g)
    print(f'peer_torch_detect: {a.weights} at {a.imgsz}, batch 1, median of {a.runs} runs after {a.warmup} warmup')
    print(f"{'runtime':<34} {'threads':>8} {'ms/image':>12}")
    for n in threads:
        torch.set_num_threads(n)
        t = []
        with torch.inference_mode():
            for i in range(a.warmup + a.runs):
                t0 = time.perf_counter()
                model(x)
                if i >= a.warmup:
                    t.append((time.perf_counter() - t0) * 1e3)
        print(f"{'PyTorch ' + torch.__version__ + ' (YOLOv5 fused)':<34} {n:>8} {statistics.median(t):>12.1f}", flush=True)


if __name__ == '__main__':
    main()
