"""ONNX Runtime's row of bench_detect's table: the ONNX file y5export wrote, CPU, batch 1, 1 thread and all.

    ./build/y5export --weights ../shared/weights/yolov5n.pt --include onnx        # writes ../shared/weights/yolov5n.onnx
    python bench/peer_onnxruntime.py --onnx yolov5n.onnx [--imgsz 640] [--warmup 2] [--runs 10] [--threads 1 2]

Outside CI (onnxruntime is a PyPI package, `pip install onnxruntime numpy`). Same protocol as bench/bench_detect.cpp:
one random image (uniform 0..1), --warmup untimed runs, the median of --runs timed runs (host clock), the session's
intra_op_num_threads set to each count (inter_op 1, sequential execution), and the same row format.
"""
import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--onnx', required=True)
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--runs', type=int, default=10)
    ap.add_argument('--threads', type=int, nargs='*', default=None, help='default: 1 and all cores')
    a = ap.parse_args()
    n_all = os.cpu_count() or 1
    threads = a.threads or ([1, n_all] if n_all > 1 else [1])
    x = np.random.default_rng(1).random((1, 3, a.imgsz, a.imgsz), dtype=np.float32)
    print(f'peer_onnxruntime: {a.onnx} at {a.imgsz}, batch 1, median of {a.runs} runs after {a.warmup} warmup')
    print(f"{'runtime':<34} {'threads':>8} {'ms/image':>12}")
    for n in threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        s = ort.InferenceSession(a.onnx, so, providers=['CPUExecutionProvider'])
        t = []
        for i in range(a.warmup + a.runs):
            t0 = time.perf_counter()
            s.run(['output0'], {'images': x})
            if i >= a.warmup:
                t.append((time.perf_counter() - t0) * 1e3)
        print(f"{'ONNX Runtime ' + ort.__version__ + ' (ONNX)':<34} {n:>8} {statistics.median(t):>12.1f}", flush=True)


if __name__ == '__main__':
    main()
