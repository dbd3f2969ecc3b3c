#!/usr/bin/env python3
"""Golden AutoAnchor fixtures for y5 (engine/app/autoanchor.cpp), computed by Ultralytics YOLOv5 v7.0's own
utils/autoanchor.py (PyPI `yolov5` 7.0.13: check_anchors, kmean_anchors, check_anchor_order) on the CPU.

Writes (path relative to the repository root):
  tests/fixtures/autoanchor.safetensors   (27 kB, byte-reproducible: seeded, sorted header keys as the other fixtures)
Read by tests/test_autoanchor.cpp.

Regenerate (from the repository root; CPU only, nothing is downloaded; needs scipy for kmean_anchors):
  /work/venv-torch/bin/python tools/golden/make_autoanchor_fixtures.py
Such a virtualenv can be created with:  python3 -m venv V && V/bin/pip install yolov5==7.0.13 torch safetensors scipy

Nothing of autoanchor.py is copied here. check_anchors is called with a stand-in dataset (its only used attributes,
.shapes (N,2) image w,h and .labels, one (n,5) cls,x,y,w,h array per image) and a model whose last module is a real
yolov5.models.yolo.Detect with strides 8/16/32 and yolov5n's anchors in grid units (as yolo.Model sets them up).
Its local variables (the label wh it built with its random ×U(0.9,1.1) scale, bpr, aat, new_bpr, the evolved
anchors) and kmean_anchors' (the filtered wh, the final fitness f) are read from their frames as they return
(sys.setprofile), so the numbers are those YOLOv5 computed. What each function printed is kept in the metadata.

Two datasets, thr = 4.0 (hyp anchor_t), imgsz 640, default anchors P3 10,13 16,30 33,23  P4 30,61 62,45 59,119
P5 116,90 156,198 373,326:
  fit.*   48 images, objects 6-350 px at 640 and 1.5% thin lines: 0.98 < BPR < 1, "Current anchors are a good fit" (no k-means)
  tiny.*  64 images, most objects 2-10 px at 640: BPR < 0.98, so kmean_anchors (scipy kmeans, 1000 generations)
          runs and the evolved anchors replace the model's
Tensors (per dataset D):
  D.shapes     F64 (N,2)   image width, height
  D.labels     F32 (M,5)   cls, x, y, w, h (normalised), images' labels back to back
  D.counts     I64 (N,)    labels per image
  D.scale      F64 (N,)    check_anchors' np.random.uniform(0.9, 1.1) draw, one per image
  D.wh         F32 (M,2)   check_anchors' wh (pixels at 640, scale applied), as it handed it to its metric
  D.bpr, D.aat F32 (1,)    its metric on the default anchors
  D.anchors_after F32 (3,3,2)  m.anchors after check_anchors (grid units)
  tiny.new_bpr      F32 (1,)    check_anchors' metric BPR of the evolved anchors
  tiny.kmean_k      F32 (9,2)   kmean_anchors' result (pixels, sorted by area)
  tiny.kmean_fitness F32 (1,)   its final fitness f (anchor_fitness on kmean_anchors' filtered wh)
  tiny.kmean_wh     F32 (K,2)   kmean_anchors' filtered wh (no scale; sides with any ≥ 2 px)
  tiny.seed_fitness F32 (S,)    the final fitness of kmean_anchors called directly with S other seeds: the spread of
                                YOLOv5's own genetic search, which bounds the margin y5's test allows
"""

import io
import re
import logging
import os
import random
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'autoanchor.safetensors'

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()
os.environ.setdefault('YOLOv5_VERBOSE', 'True')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from yolov5.models.yolo import Detect  # noqa: E402
from yolov5.utils import autoanchor  # noqa: E402

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
STRIDE = torch.tensor([8.0, 16.0, 32.0])
SEED_RUNS = 6


def make_model():
    m = Detect(nc=80, anchors=ANCHORS, ch=(64, 128, 256))  # anchors (nl, na, 2) pixels as registered
    m.stride = STRIDE.clone()
    autoanchor.check_anchor_order(m)  # as yolo.Model.__init__: order in pixels, then grid units
    m.anchors /= m.stride.view(-1, 1, 1)
    return SimpleNamespace(model=[m])


def make_dataset(rng, n_images, sizes_px):
    """Image shapes w,h in 200..1280 and labels whose longer-side-640 pixel sizes are drawn by sizes_px(rng, n)."""
    shapes = rng.integers(200, 1281, size=(n_images, 2)).astype(np.float64)
    labels = []
    for w, h in shapes:
        n = int(rng.integers(0, 12))
        px = sizes_px(rng, n)  # (n,2) pixels at imgsz 640
        s = 640.0 / max(w, h)
        wn, hn = px[:, 0] / (w * s), px[:, 1] / (h * s)
        wn, hn = np.clip(wn, 1e-4, 1.0), np.clip(hn, 1e-4, 1.0)
        xy = rng.uniform(0.3, 0.7, size=(n, 2))
        cls = rng.integers(0, 80, size=n).astype(np.float64)
        labels.append(np.stack([cls, xy[:, 0], xy[:, 1], wn, hn], 1).astype(np.float32) if n else
                      np.zeros((0, 5), np.float32))
    return SimpleNamespace(shapes=shapes, labels=labels)


def fit_sizes(rng, n):
    side = np.exp(rng.uniform(np.log(6), np.log(350), size=(n, 1)))
    wh = side * np.exp(rng.uniform(-0.7, 0.7, size=(n, 2)))
    line = rng.uniform(size=n) < 0.015  # a few thin lines (3-5 × 80-200 px) that no default anchor matches
    wh[line] = np.stack([rng.uniform(3, 5, size=line.sum()), rng.uniform(80, 200, size=line.sum())], 1)
    return wh


def tiny_sizes(rng, n):
    small = rng.uniform(size=(n, 1)) < 0.8
    side = np.where(small, rng.uniform(2, 10, size=(n, 1)), np.exp(rng.uniform(np.log(12), np.log(200), size=(n, 1))))
    return side * np.exp(rng.uniform(-0.3, 0.3, size=(n, 2)))


class Frames:
    """Locals of autoanchor.py's check_anchors / kmean_anchors as they return (the last call of each)."""

    def __init__(self):
        self.seen = {}

    def __call__(self, frame, event, arg):
        if event == 'return' and frame.f_code.co_filename == autoanchor.__file__:
            if frame.f_code.co_name in ('check_anchors', 'kmean_anchors'):
                self.seen[frame.f_code.co_name] = dict(frame.f_locals)


def run_check(ds, seed):
    """check_anchors(dataset, model, thr=4.0, imgsz=640) as train.py calls it; returns (model, locals, log)."""
    np.random.seed(seed), random.seed(seed), torch.manual_seed(seed)
    model, frames, log = make_model(), Frames(), io.StringIO()
    handler = logging.StreamHandler(log)
    autoanchor.LOGGER.addHandler(handler)
    sys.setprofile(frames)
    try:
        autoanchor.check_anchors(ds, model=model, thr=4.0, imgsz=640)
    finally:
        sys.setprofile(None)
        autoanchor.LOGGER.removeHandler(handler)
    assert 'check_anchors' in frames.seen, 'check_anchors did not run to its end:\n' + log.getvalue()
    return model, frames.seen, log.getvalue()


def f32(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def build():
    rng = np.random.default_rng(20260519)
    T, meta = {}, {}
    for name, sizes, n_images in (('fit', fit_sizes, 48), ('tiny', tiny_sizes, 64)):
        ds = make_dataset(rng, n_images, sizes)
        model, seen, log = run_check(ds, 0)
        c = seen['check_anchors']
        scale = c['scale']  # (N,1): its np.random.uniform(0.9, 1.1) draw
        T[f'{name}.shapes'] = torch.from_numpy(ds.shapes)
        T[f'{name}.labels'] = f32(np.concatenate(ds.labels))
        T[f'{name}.counts'] = torch.tensor([len(l) for l in ds.labels], dtype=torch.int64)
        T[f'{name}.scale'] = torch.from_numpy(scale[:, 0].copy())
        T[f'{name}.wh'] = c['wh'].float().contiguous()
        T[f'{name}.bpr'] = c['bpr'].reshape(1).float()
        T[f'{name}.aat'] = c['aat'].reshape(1).float()
        T[f'{name}.anchors_after'] = model.model[-1].anchors.detach().float().contiguous()
        meta[f'{name}_log'] = re.sub(r'\x1b\[[0-9;]*m', '', log)  # without colorstr's colours
        if name == 'tiny':
            k = seen['kmean_anchors']
            assert 'new_bpr' in c, 'the tiny dataset did not take the k-means path'
            T['tiny.new_bpr'] = c['new_bpr'].reshape(1).float()
            T['tiny.kmean_k'] = f32(c['anchors'])
            T['tiny.kmean_fitness'] = k['f'].reshape(1).float()
            T['tiny.kmean_wh'] = k['wh'].float().contiguous()
            fits = []
            for s in range(1, SEED_RUNS + 1):  # the same call with other seeds: YOLOv5's own run-to-run spread
                np.random.seed(s), random.seed(s), torch.manual_seed(s)
                frames = Frames()
                sys.setprofile(frames)
                try:
                    autoanchor.kmean_anchors(ds, n=9, img_size=640, thr=4.0, gen=1000, verbose=False)
                finally:
                    sys.setprofile(None)
                fits.append(float(frames.seen['kmean_anchors']['f']))
            T['tiny.seed_fitness'] = f32(fits)
    meta['about'] = ('YOLOv5 7.0.13 utils/autoanchor.py check_anchors / kmean_anchors on stand-in datasets; '
                     'see tools/golden/make_autoanchor_fixtures.py')
    return T, meta


def main():
    warnings.simplefilter('ignore')
    T, meta = build()
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in T.items()}, str(OUT_PATH), metadata=meta)
    canonicalize_header(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors')
    for k in sorted(T):
        v = T[k]
        print(f'  {k:20s} {str(v.dtype):14s} {tuple(v.shape)}' + (f'  {v.tolist()}' if v.numel() <= 6 else ''))
    print('tiny.kmean_k', T['tiny.kmean_k'].tolist())
    for k in ('fit_log', 'tiny_log'):
        print(f'--- {k}\n{meta[k]}')


if __name__ == '__main__':
    main()
