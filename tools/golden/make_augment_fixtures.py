#!/usr/bin/env python3
"""Golden data-augmentation fixtures for y5, computed with Ultralytics YOLOv5 v7.0 (PyPI `yolov5` 7.0.13) + OpenCV.

Writes (path relative to the repository root):
  tests/fixtures/augment.safetensors

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /root/y5venv/bin/python tools/golden/make_augment_fixtures.py
Re-verify the committed file (re-runs YOLOv5 on the stored inputs/draws and checks the file regenerates
byte-identically):
  /root/y5venv/bin/python tools/golden/check_augment_fixtures.py
Such a virtualenv can be created with:  python3 -m venv V && V/bin/pip install yolov5==7.0.13 torch safetensors
(opencv-python or opencv-python-headless comes with yolov5). The cv2 / numpy / yolov5 versions used are stored in
the metadata (`cv2_version`, ...): OpenCV's pixel results are only guaranteed for that version (and can differ by
1 on a few pixels between SIMD code paths of the same version, see NOTES / metadata `notes`).
check_augment_fixtures.py also re-derives every output with a pure-numpy port (no cv2, no yolov5) that matches
bit-exactly: it is the executable spec of the OpenCV kernels (resize LINEAR/AREA, warpAffine/warpPerspective,
BGR<->HSV) for the C++/CUDA port.

Every output comes from YOLOv5's own functions, called unchanged; only their random sources (and, to observe
them, cv2 / box_candidates) are replaced by recording wrappers:
  yolov5.utils.augmentations.random  -> proxy whose uniform(a, b) = random.Random(seed).uniform(a, b), recorded
  numpy.random.uniform               -> np.random.RandomState(seed).uniform, recorded (augment_hsv only)
  yolov5.utils.augmentations.cv2     -> proxy that records warpAffine/warpPerspective/resize/... calls (matrix,
                                        dsize, flags) and then calls the real cv2 function
  yolov5.utils.augmentations.box_candidates -> wrapper that records the boolean mask it returns
Inputs are synthetic (integer-only arithmetic from np.random.default_rng, so they are platform-independent):
smooth colour gradients + solid rectangles + light noise, small sides (40..128 px) to keep the file small.

Tensors (k = case index; counts in metadata letterbox_cases, load_cases, perspective_cases, hsv_cases; a one-line
description of each case in metadata under its prefix, e.g. `lb0`):
 1) letterbox(im, new_shape=(new_h, new_w), color=(c, c, c), auto, scaleFill, scaleup, stride)
    lb{k}.img U8 (h, w, 3) BGR; lb{k}.params F64 (7,) [new_h, new_w, auto, scaleFill, scaleup, stride, color];
    lb{k}.out U8; lb{k}.ratio F64 (2,) (w ratio, h ratio); lb{k}.pad F64 (2,) (dw, dh) as returned (halves).
 2) LoadImagesAndLabels.load_image, the REAL method called unbound on a minimal stand-in object
    (ims=[None], npy_files=[<temp .npy holding the image>], img_size, augment), so its own resize lines run:
    li{k}.img U8; li{k}.params F64 (2,) [img_size, augment]; li{k}.out U8; li{k}.hw I64 (2,) resized (h, w).
 3) random_perspective(im, targets, degrees, translate, scale, shear, perspective, border=(bh, bw)):
    rp{k}.img U8; rp{k}.targets F64 (n, 5) [cls, x1, y1, x2, y2] px; rp{k}.params F64 (7,)
    [degrees, translate, scale, shear, perspective, border_h, border_w]; rp{k}.draws F64 (8,) every
    random.uniform value in draw order: Px, Py, angle a (deg), scale s, shear x (deg), shear y (deg), Tx frac, Ty frac
    (always 8 draws, even when a range is 0: uniform(-0, 0) still consumes the generator);
    rp{k}.M F64 (3, 3) = T @ S @ R @ P @ C recomputed from the draws and asserted bit-identical to the matrix
    captured from the cv2.warpAffine (M[:2]) / cv2.warpPerspective call; rp{k}.out U8 (h + 2*bh, w + 2*bw, 3);
    rp{k}.out_targets F64 (m, 5) as returned; rp{k}.keep U8 (n,) the box_candidates mask over the input targets.
 4) augment_hsv(im, hgain, sgain, vgain) (in place): hsv{k}.img U8 in; hsv{k}.gains F64 (3,);
    hsv{k}.r F64 (3,) the np.random.uniform(-1, 1, 3) draw (before * gains + 1); hsv{k}.out U8.
 5) Rect batch shapes, from the REAL LoadImagesAndLabels.__init__ (rect=True, augment=False, workers=0) run on a
    temporary directory of solid-colour PNGs of the listed sizes (one label each), so its own rect block runs:
    rect.wh I64 (n, 2) image (w, h); rect.params F64 (4,) [img_size, batch_size, stride, pad];
    rect.order I64 (n,) irect = (h/w).argsort() (aspect ratios are all distinct here: numpy's sort is not stable and
    its tie order is implementation-dependent); rect.batch_shapes I64 (nb, 2) (h, w) per batch.
 6) xyxy2xywhn(x, w, h, clip=True, eps): conv.xyxy F64 (n, 4) px (before the in-place clip); conv.params F64 (3,)
    [w, h, eps]; conv.xywhn F64 (n, 4).
"""

import math
import os
import random
import sys
import tempfile
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'augment.safetensors'



from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()
os.environ.setdefault('YOLOv5_VERBOSE', 'False')

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yolov5  # noqa: E402
import yolov5.utils.augmentations as aug  # noqa: E402
import yolov5.utils.dataloaders as dl  # noqa: E402
import yolov5.utils.general as gen  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402



# ----------------------------------------------------------------------------------------------------------------
# Recording wrappers (also used by check_augment_fixtures.py to replay stored draws)
# ----------------------------------------------------------------------------------------------------------------
class RandomRecorder:
    """Stands in for the `random` module inside yolov5.utils.augmentations. uniform(a, b) either draws from a
    seeded random.Random (record mode) or returns the next stored value (replay mode, asserting a <= v <= b)."""

    def __init__(self, seed=None, replay=None):
        self._rng = random.Random(seed)
        self._replay = None if replay is None else [float(v) for v in replay]
        self.draws = []

    def uniform(self, a, b):
        if self._replay is not None:
            v = self._replay[len(self.draws)]
            lo, hi = min(a, b), max(a, b)
            assert lo <= v <= hi, f'replayed draw {v} outside [{a}, {b}]'
        else:
            v = self._rng.uniform(a, b)
        self.draws.append(v)
        return v

    def __getattr__(self, name):  # anything else (random.random, choice, ...) would be unrecorded: refuse
        raise AttributeError(f'unexpected use of random.{name} in the wrapped function')


class Cv2Recorder:
    """Stands in for the `cv2` module inside a yolov5 module; records the calls that matter, then calls cv2."""

    RECORDED = ('warpAffine', 'warpPerspective', 'resize', 'copyMakeBorder', 'cvtColor', 'LUT', 'merge', 'split')

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        real = getattr(cv2, name)
        if name not in self.RECORDED:
            return real

        def wrapper(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return real(*args, **kwargs)

        return wrapper


class Patched:
    """Context manager: temporarily set module attributes."""

    def __init__(self, *triples):
        self.triples = triples
        self.saved = []

    def __enter__(self):
        for mod, name, val in self.triples:
            self.saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, val)
        return self

    def __exit__(self, *exc):
        for mod, name, val in reversed(self.saved):
            setattr(mod, name, val)
        return False


# ----------------------------------------------------------------------------------------------------------------
# Synthetic inputs (integer-only, platform-independent)
# ----------------------------------------------------------------------------------------------------------------
def smooth_image(rng, h, w, grid=(4, 5), rects=3, noise=5):
    """Bilinear blend of a random control grid (exact integer arithmetic), a few solid rectangles, light noise."""
    gh, gw = grid
    ctrl = rng.integers(0, 256, (gh, gw, 3), dtype=np.int64)
    H, W = max(h - 1, 1), max(w - 1, 1)
    ys = np.arange(h, dtype=np.int64) * (gh - 1)
    xs = np.arange(w, dtype=np.int64) * (gw - 1)
    y0, fy = ys // H, ys % H
    x0, fx = xs // W, xs % W
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy, fx = fy[:, None, None], fx[None, :, None]
    acc = (ctrl[y0][:, x0] * (H - fy) * (W - fx) + ctrl[y0][:, x1] * (H - fy) * fx +
           ctrl[y1][:, x0] * fy * (W - fx) + ctrl[y1][:, x1] * fy * fx)
    im = (acc + (H * W) // 2) // (H * W)
    for _ in range(rects):
        ry0, rx0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        ry1 = int(rng.integers(ry0 + 3, min(h, ry0 + h // 2) + 1))
        rx1 = int(rng.integers(rx0 + 3, min(w, rx0 + w // 2) + 1))
        im[ry0:ry1, rx0:rx1] = rng.integers(0, 256, 3)
    if noise:
        im = im + rng.integers(-noise, noise + 1, im.shape)
    return np.clip(im, 0, 255).astype(np.uint8)


def f64(*v):
    return np.array(v, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# 1) letterbox
# ----------------------------------------------------------------------------------------------------------------
# (h, w, new_h, new_w, auto, scaleFill, scaleup, stride, description)
LETTERBOX_CASES = [
    (90, 120, 64, 64, False, False, True, 32, 'downscale 90x120 -> 64x64, auto=False (train/val style), r=8/15'),
    (45, 60, 96, 96, False, False, True, 32, 'upscale allowed 45x60 -> 96x96, r=1.6'),
    (45, 60, 96, 96, False, False, False, 32, 'upscale disallowed (scaleup=False): r=1, no resize, odd pad dh=25.5'),
    (71, 100, 128, 128, True, False, True, 32, 'auto=True stride 32 (detect.py): 71x100 -> 91x128 padded to 96x128'),
    (61, 111, 64, 128, False, False, False, 32,
     'non-square target (64,128) as rect val uses (scaleup=False): no resize, dw=8.5, dh=1.5'),
    (77, 54, 64, 64, False, False, True, 32,
     'odd pad after resize: 77x54 -> 64x45 (r=64/77, 44.88 -> 45), dw=19/2=9.5 -> left 9, right 10'),
    (50, 80, 64, 64, False, True, True, 32, 'scaleFill: stretch 50x80 -> 64x64, ratio=(0.8, 1.28), pad 0'),
    (90, 45, 45, 63, False, False, True, 32,
     'round-half-even: w 45*0.5=22.5 -> 22 (Python round), dw=41/2=20.5 -> left 20, right 21'),
    (57, 87, 128, 128, True, False, False, 32,
     'auto=True, scaleup=False (no resize): dw=41%32=9 -> 4.5, dh=71%32=7 -> 3.5, odd in both directions'),
]


def make_letterbox(T, meta, rng):
    cases = []
    for k, (h, w, nh, nw, auto, fill, up, stride, desc) in enumerate(LETTERBOX_CASES):
        im = smooth_image(rng, h, w)
        c = 114
        rec = Cv2Recorder()
        with Patched((aug, 'cv2', rec)):
            out, ratio, pad = aug.letterbox(im.copy(), new_shape=(nh, nw), color=(c, c, c), auto=auto, scaleFill=fill,
                                            scaleup=up, stride=stride)
        for name, args, kwargs in rec.calls:  # document the flags actually used
            if name == 'resize':
                assert kwargs.get('interpolation') == cv2.INTER_LINEAR
            if name == 'copyMakeBorder':
                assert args[5] == cv2.BORDER_CONSTANT
        T[f'lb{k}.img'] = im
        T[f'lb{k}.params'] = f64(nh, nw, auto, fill, up, stride, c)
        T[f'lb{k}.out'] = np.ascontiguousarray(out)
        T[f'lb{k}.ratio'] = f64(*ratio)
        T[f'lb{k}.pad'] = f64(*pad)
        meta[f'lb{k}'] = desc
        cases.append((k, out.shape, ratio, pad, [n for n, _, _ in rec.calls]))
    meta['letterbox_cases'] = str(len(LETTERBOX_CASES))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# 2) load_image
# ----------------------------------------------------------------------------------------------------------------
LOAD_CASES = [  # (h, w, img_size, augment, description)
    (90, 120, 64, False, 'downscale 90x120 -> 48x64, augment=False: INTER_AREA, non-integer factor 1.875'),
    (90, 120, 64, True, 'downscale 90x120 -> 48x64, augment=True: INTER_LINEAR'),
    (30, 40, 64, False, 'upscale 30x40 -> 48x64 (r=1.6 > 1): INTER_LINEAR even without augment'),
    (48, 64, 64, False, 'already the right size (r == 1): returned unchanged'),
    (77, 100, 64, False, 'ceil not round: 77*0.64=49.28 -> 50 rows, INTER_AREA'),
    (96, 128, 64, False, 'integer factor 2 downscale, INTER_AREA (OpenCV fast area path)'),
    (128, 49, 64, True, 'portrait, ceil(49*0.5)=25 (24.5 -> 25), INTER_LINEAR'),
    (50, 85, 44, False, 'float ceil overshoot: r=44/85, ceil(85*r)=45 (not 44!), INTER_AREA'),
    (30, 38, 42, False, 'float ceil overshoot on upscale: r=42/38, ceil(38*r)=43, INTER_LINEAR'),
]


def load_image_real(im, img_size, augment, tmpdir):
    """Call the real LoadImagesAndLabels.load_image on a minimal stand-in; it np.load()s the image from .npy."""
    fn = Path(tmpdir) / 'im.npy'
    np.save(fn, im)
    stand_in = types.SimpleNamespace(ims=[None], im_files=[str(Path(tmpdir) / 'missing.jpg')], npy_files=[fn],
                                     img_size=img_size, augment=augment)
    rec = Cv2Recorder()
    with Patched((dl, 'cv2', rec)):
        out, hw0, hw = dl.LoadImagesAndLabels.load_image(stand_in, 0)
    fn.unlink()
    assert tuple(hw0) == im.shape[:2]
    return out, hw, rec.calls


def make_load(T, meta, rng):
    cases = []
    with tempfile.TemporaryDirectory() as td:
        for k, (h, w, size, augment, desc) in enumerate(LOAD_CASES):
            im = smooth_image(rng, h, w)
            out, hw, calls = load_image_real(im, size, augment, td)
            r = size / max(h, w)
            if r != 1:  # assert the rule we document
                (name, args, kwargs), = calls
                assert name == 'resize' and args[1] == (math.ceil(w * r), math.ceil(h * r))
                assert kwargs['interpolation'] == (cv2.INTER_LINEAR if (augment or r > 1) else cv2.INTER_AREA)
            else:
                assert not calls and out is not None
            T[f'li{k}.img'] = im
            T[f'li{k}.params'] = f64(size, augment)
            T[f'li{k}.out'] = np.ascontiguousarray(out)
            T[f'li{k}.hw'] = np.array(hw, dtype=np.int64)
            meta[f'li{k}'] = desc
            cases.append((k, im.shape, out.shape, [(n, kw) for n, _, kw in calls]))
    meta['load_cases'] = str(len(LOAD_CASES))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# 3) random_perspective
# ----------------------------------------------------------------------------------------------------------------
def perspective_matrix(draws, img_shape, border, perspective):
    """M = T @ S @ R @ P @ C from the 8 draws, with the same numpy operations as random_perspective."""
    px, py, a, s, shx, shy, tx, ty = draws
    height = img_shape[0] + border[0] * 2
    width = img_shape[1] + border[1] * 2
    C = np.eye(3)
    C[0, 2] = -img_shape[1] / 2
    C[1, 2] = -img_shape[0] / 2
    P = np.eye(3)
    P[2, 0] = px
    P[2, 1] = py
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(shx * math.pi / 180)
    S[1, 0] = math.tan(shy * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = tx * width
    T[1, 2] = ty * height
    return T @ S @ R @ P @ C


def rotation_matrix_formula(a, s):
    """What cv2.getRotationMatrix2D(center=(0,0)) computes (imgproc/src/imgwarp.cpp): angle *= CV_PI/180."""
    ang = a * (math.pi / 180)
    alpha, beta = math.cos(ang) * s, math.sin(ang) * s
    return np.array([[alpha, beta, (1 - alpha) * 0 - beta * 0], [-beta, alpha, beta * 0 + (1 - alpha) * 0]])


def run_random_perspective(im, targets, params, seed=None, replay=None):
    degrees, translate, scale, shear, persp, bh, bw = [float(v) for v in params]
    border = (int(bh), int(bw))
    rnd = RandomRecorder(seed=seed, replay=replay)
    rec = Cv2Recorder()
    keep = []

    def box_candidates_rec(*args, **kwargs):
        m = orig_bc(*args, **kwargs)
        keep.append(np.asarray(m).copy())
        return m

    orig_bc = aug.box_candidates
    with Patched((aug, 'random', rnd), (aug, 'cv2', rec), (aug, 'box_candidates', box_candidates_rec)):
        out, out_t = aug.random_perspective(im.copy(), targets.copy(), degrees=degrees, translate=translate,
                                            scale=scale, shear=shear, perspective=persp, border=border)
    assert len(rnd.draws) == 8, rnd.draws
    warps = [(n, a, kw) for n, a, kw in rec.calls if n in ('warpAffine', 'warpPerspective')]
    assert len(warps) == 1, [c[0] for c in rec.calls]
    name, args, kwargs = warps[0]
    Mrec = np.asarray(args[1], dtype=np.float64)
    M = perspective_matrix(rnd.draws, im.shape, border, persp)
    if persp:
        assert name == 'warpPerspective' and Mrec.shape == (3, 3)
        assert np.array_equal(Mrec, M), (Mrec, M)
    else:
        assert name == 'warpAffine' and Mrec.shape == (2, 3)
        assert np.array_equal(Mrec, M[:2]), (Mrec, M)
        assert np.array_equal(M[2], [0, 0, 1])
    height, width = im.shape[0] + 2 * border[0], im.shape[1] + 2 * border[1]
    assert kwargs['dsize'] == (width, height) and kwargs['borderValue'] == (114, 114, 114)
    assert 'flags' not in kwargs and 'borderMode' not in kwargs and len(args) == 2  # defaults: LINEAR, CONSTANT
    # the R block must be reproducible from the closed formula a C++ port would use
    assert np.array_equal(cv2.getRotationMatrix2D(angle=rnd.draws[2], center=(0, 0), scale=rnd.draws[3]),
                          rotation_matrix_formula(rnd.draws[2], rnd.draws[3]))
    assert len(keep) == (1 if len(targets) else 0)
    keep = keep[0] if keep else np.zeros(0, bool)
    return out, out_t, np.array(rnd.draws, dtype=np.float64), M, keep.astype(np.uint8), name


def mosaic_canvas(rng, S):
    """A 2S x 2S mosaic-like canvas: 114 background, 4 smooth tiles meeting at a centre (xc, yc)."""
    img = np.full((2 * S, 2 * S, 3), 114, np.uint8)
    xc, yc = int(rng.integers(S // 2, 3 * S // 2)), int(rng.integers(S // 2, 3 * S // 2))
    tiles = [(max(xc - S, 0), max(yc - 3 * S // 4, 0), xc, yc), (xc, max(yc - S, 0), min(xc + 3 * S // 4, 2 * S), yc),
             (max(xc - 3 * S // 4, 0), yc, xc, min(yc + S, 2 * S)), (xc, yc, min(xc + S, 2 * S), min(yc + S, 2 * S))]
    for x1, y1, x2, y2 in tiles:
        img[y1:y2, x1:x2] = smooth_image(rng, y2 - y1, x2 - x1, rects=2)
    return img


def make_targets(rng, W, H, n_big, n_tiny, extra=()):
    """cls + xyxy in pixels on a half-pixel grid (exact in float32 too)."""
    rows = []
    for _ in range(n_big):
        w, h = int(rng.integers(8, W // 3)), int(rng.integers(8, H // 3))
        x1, y1 = rng.integers(0, W - w) + 0.5 * rng.integers(0, 2), rng.integers(0, H - h)
        rows.append([rng.integers(0, 80), x1, y1, x1 + w, y1 + h])
    for _ in range(n_tiny):  # 3..4 px: removed by box_candidates when s < ~0.7
        w, h = 3 + 0.5 * rng.integers(0, 3), 3 + 0.5 * rng.integers(0, 3)
        x1, y1 = rng.integers(W // 4, 3 * W // 4), rng.integers(H // 4, 3 * H // 4)
        rows.append([rng.integers(0, 80), x1, y1, x1 + w, y1 + h])
    rows += [list(e) for e in extra]
    return np.array(rows, dtype=np.float64)


S_RP = 64
# (seed, description, kind, params) with params = [degrees, translate, scale, shear, perspective, border_h, border_w]
PERSPECTIVE_CASES = [
    (3, 'hyp.scratch-low (deg 0, translate 0.1, scale 0.5, shear 0, persp 0) on a 2S mosaic canvas, border -S/2',
     'mosaic', [0.0, 0.1, 0.5, 0.0, 0.0, -S_RP // 2, -S_RP // 2]),
    (5, 'hyp.scratch-low without border (non-mosaic path, S x S letterboxed image)',
     'single', [0.0, 0.1, 0.5, 0.0, 0.0, 0, 0]),
    (7, 'degrees 10, shear 5 (rotation + shear exercised), translate 0.1, scale 0.5, mosaic border',
     'mosaic', [10.0, 0.1, 0.5, 5.0, 0.0, -S_RP // 2, -S_RP // 2]),
    (11, 'perspective 0.001 (warpPerspective path) + degrees 5, shear 2, scale 0.3, no border',
     'single', [5.0, 0.1, 0.3, 2.0, 0.001, 0, 0]),
    (13, 'boxes clipped at the edges and removed by box_candidates (tiny after s<1, pushed out of the crop)',
     'mosaic', [0.0, 0.1, 0.5, 0.0, 0.0, -S_RP // 2, -S_RP // 2]),
    (17, 'perspective 0.0005 with mosaic border, degrees 3, shear 3', 'mosaic', [3.0, 0.1, 0.5, 3.0, 0.0005,
                                                                             -S_RP // 2, -S_RP // 2]),
]


def make_perspective(T, meta, rng):
    cases = []
    for k, (seed, desc, kind, params) in enumerate(PERSPECTIVE_CASES):
        if kind == 'mosaic':
            im = mosaic_canvas(rng, S_RP)
            W = H = 2 * S_RP
            # corner boxes (mostly outside the central crop) + a box straddling the crop edge
            extra = [(1, 0, 0, 20, 14), (2, 110.5, 100, 128, 128), (3, 20, 40, 50, 60.5)]
        else:
            im = smooth_image(rng, S_RP, S_RP)
            W = H = S_RP
            extra = [(1, 0, 10, 12, 30), (2, 50, 52, 64, 64)]
        n_tiny = 4 if k == 4 else 2
        targets = make_targets(rng, W, H, n_big=5, n_tiny=n_tiny, extra=extra)
        if k == 4:  # force a scale draw < 0.7 so the tiny boxes fail box_candidates: pick the seed by search
            seed0 = seed
            while True:
                rnd = random.Random(seed)
                d = [rnd.uniform(-0.0, 0.0) for _ in range(2)] + [rnd.uniform(-0.0, 0.0), rnd.uniform(0.5, 1.5)]
                if d[3] < 0.7:
                    break
                seed += 1
            desc += f' (seed {seed}, first seed tried {seed0})'
        out, out_t, draws, M, keep, warp = run_random_perspective(im, targets, params, seed=seed)
        T[f'rp{k}.img'] = im
        T[f'rp{k}.targets'] = targets
        T[f'rp{k}.params'] = f64(*params)
        T[f'rp{k}.draws'] = draws
        T[f'rp{k}.M'] = M
        T[f'rp{k}.out'] = np.ascontiguousarray(out)
        T[f'rp{k}.out_targets'] = np.asarray(out_t, dtype=np.float64).reshape(-1, 5)
        T[f'rp{k}.keep'] = keep
        meta[f'rp{k}'] = desc + f' [{warp}, seed {seed}]'
        cases.append((k, warp, im.shape, out.shape, len(targets), int(keep.sum()), draws))
    meta['perspective_cases'] = str(len(PERSPECTIVE_CASES))
    # coverage: clipping and removal must both appear
    o = T['rp4.out_targets']
    assert T['rp4.keep'].min() == 0, 'rp4 must remove boxes'
    assert ((o[:, [1, 3]] == 0) | (o[:, [1, 3]] == S_RP) | (o[:, [2, 4]] == 0) | (o[:, [2, 4]] == S_RP)).any(), \
        'rp4 must clip boxes'
    return cases


# ----------------------------------------------------------------------------------------------------------------
# 4) augment_hsv
# ----------------------------------------------------------------------------------------------------------------
HSV_CASES = [  # (seed, gains, description)
    (21, (0.015, 0.7, 0.4), 'hyp.scratch-low gains (0.015, 0.7, 0.4)'),
    (22, (0.015, 0.7, 0.4), 'hyp.scratch-low gains, another draw'),
    (23, (0.5, 0.9, 0.9), 'large gains: hue wraps at 180 (% 180), S/V clip at 255'),
    (24, (0.0, 0.0, 0.5), 'value gain only (hgain = sgain = 0, still one 3-value draw)'),
    (25, (0.9, 0.0, 0.0), 'hue gain only, 0.9'),
]


def hsv_image(rng, h=40, w=64):  # w % 64 == 0: every pixel takes cv2's SIMD HSV2BGR path (see check script)
    im = smooth_image(rng, h, w)
    # pure / grey / extreme patches: S = 0 (hue 0), V = 0, V = 255, primaries, near-red hue wrap (~179)
    patches = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255), (0, 0, 0), (128, 128, 128), (200, 0, 255),
               (255, 0, 254), (1, 2, 3), (250, 251, 252), (3, 0, 255), (0, 128, 255), (60, 200, 90)]
    for i, c in enumerate(patches):
        y, x = 2 + (i // 5) * 6, 2 + (i % 5) * 6
        im[y:y + 5, x:x + 5] = c
    return im


def run_augment_hsv(im, gains, seed=None, replay=None):
    rs = np.random.RandomState(seed if seed is not None else 0)
    drawn = []
    orig_uniform = np.random.uniform

    def uniform(low=0.0, high=1.0, size=None):
        assert (low, high, size) == (-1, 1, 3)
        v = np.array(replay, dtype=np.float64) if replay is not None else rs.uniform(low, high, size)
        drawn.append(v.copy())
        return v

    rec = Cv2Recorder()
    img = im.copy()
    with Patched((np.random, 'uniform', uniform), (aug, 'cv2', rec)):
        aug.augment_hsv(img, hgain=gains[0], sgain=gains[1], vgain=gains[2])
    assert np.random.uniform is orig_uniform
    assert len(drawn) == 1
    names = [n for n, _, _ in rec.calls]
    assert names == ['cvtColor', 'split', 'LUT', 'LUT', 'LUT', 'merge', 'cvtColor'], names
    assert rec.calls[0][1][1] == cv2.COLOR_BGR2HSV and rec.calls[-1][1][1] == cv2.COLOR_HSV2BGR
    return img, drawn[0]


def make_hsv(T, meta, rng):
    cases = []
    for k, (seed, gains, desc) in enumerate(HSV_CASES):
        im = hsv_image(rng)
        out, r = run_augment_hsv(im, gains, seed=seed)
        T[f'hsv{k}.img'] = im
        T[f'hsv{k}.gains'] = f64(*gains)
        T[f'hsv{k}.r'] = r
        T[f'hsv{k}.out'] = out
        meta[f'hsv{k}'] = desc + f' [np.random.RandomState({seed})]'
        cases.append((k, gains, r))
    meta['hsv_cases'] = str(len(HSV_CASES))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# 5) rect batch shapes
# ----------------------------------------------------------------------------------------------------------------
RECT_WH = [  # (w, h): 23 images, mixed aspect ratios, all h/w distinct
    (640, 480), (480, 640), (500, 333), (427, 640), (640, 426), (612, 611), (640, 360), (375, 499), (640, 512),
    (333, 500), (640, 427), (1000, 250), (250, 1000), (640, 640), (600, 399), (512, 640), (640, 590), (590, 640),
    (320, 640), (640, 320), (800, 601), (97, 130), (640, 481)]
RECT_PARAMS = (640, 4, 32, 0.5)


def rect_real(wh, img_size, batch_size, stride, pad):
    """Run the real LoadImagesAndLabels.__init__ (rect=True) on a temporary dataset of solid PNGs."""
    from PIL import Image
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / 'images').mkdir()
        (Path(td) / 'labels').mkdir()
        for i, (w, h) in enumerate(wh):
            Image.new('RGB', (int(w), int(h)), (114, 114, 114)).save(Path(td) / 'images' / f'im{i:03d}.png')
            (Path(td) / 'labels' / f'im{i:03d}.txt').write_text('0 0.5 0.5 0.25 0.25\n')
        ds = dl.LoadImagesAndLabels(str(Path(td) / 'images'), img_size=int(img_size), batch_size=int(batch_size),
                                    augment=False, hyp=None, rect=True, stride=int(stride), pad=float(pad),
                                    workers=0)
        order = np.array([int(Path(f).stem[2:]) for f in ds.im_files], dtype=np.int64)
        assert np.array_equal(ds.shapes, np.asarray(wh)[order])
        return order, np.asarray(ds.batch_shapes, dtype=np.int64), np.asarray(ds.batch, dtype=np.int64)


def make_rect(T, meta):
    wh = np.array(RECT_WH, dtype=np.int64)
    ar = wh[:, 1] / wh[:, 0]
    assert len(np.unique(ar)) == len(ar), 'aspect ratios must be distinct (argsort tie order is not portable)'
    order, shapes, batch = rect_real(wh, *RECT_PARAMS)
    assert np.array_equal(order, np.argsort(ar, kind='stable'))
    T['rect.wh'] = wh
    T['rect.params'] = f64(*RECT_PARAMS)
    T['rect.order'] = order
    T['rect.batch_shapes'] = shapes
    meta['rect'] = (f'{len(wh)} images (w,h), img_size 640, batch 4, stride 32, pad 0.5 (val): batch_shapes (h,w) from '
                    'LoadImagesAndLabels(rect=True)')
    return order, shapes, batch


# ----------------------------------------------------------------------------------------------------------------
# 6) xyxy2xywhn
# ----------------------------------------------------------------------------------------------------------------
def make_conv(T, meta, rng):
    w, h, eps = 96, 80, 1e-3
    xyxy = np.array([[10, 12, 50, 40], [-5, 3, 30.5, 20], [60, -8, 100, 30], [0, 0, 96, 80], [-20, -20, 120, 100],
                     [95.9995, 79.9995, 97, 81], [40.25, 30.75, 41, 31.5], [100, 90, 110, 95], [95.9, 10, 96, 20],
                     [0, 79.99, 5, 80]], dtype=np.float64)
    rnd = rng.integers(-200, 1200, (6, 4)) / 10.0  # random, some outside
    rnd = np.concatenate((np.minimum(rnd[:, :2], rnd[:, 2:]), np.maximum(rnd[:, :2], rnd[:, 2:])), 1)
    xyxy = np.concatenate((xyxy, rnd), 0)
    out = gen.xyxy2xywhn(xyxy.copy(), w=w, h=h, clip=True, eps=eps)
    T['conv.xyxy'] = xyxy
    T['conv.params'] = f64(w, h, eps)
    T['conv.xywhn'] = out
    meta['conv'] = f'xyxy2xywhn(x, w={w}, h={h}, clip=True, eps={eps}): clip x to [0, w-eps], y to [0, h-eps] first'
    return out


NOTES = ('Pixels are cv2 ' + cv2.__version__ + ' on x86-64 (AVX2 dispatch). check_augment_fixtures.py holds a '
         'pure-numpy port that reproduces every stored pixel; read it for the exact kernels. OpenCV output can '
         'depend on the SIMD path: COLOR_HSV2BGR truncates in its SIMD blocks (32 px AVX2 / 64 px AVX-512) but '
         'rounds in the scalar row tail, so HSV fixture widths are multiples of 64; cv2.setUseOptimized(False) changes '
         'warpPerspective / HSV2BGR by 1 on a few pixels. In the real pipeline labels are float32 (so are '
         'random_perspective outputs); these fixtures use float64 targets.')


def build():
    T, meta = {}, {}
    rng = np.random.default_rng(20240607)
    summary = {
        'letterbox': make_letterbox(T, meta, rng),
        'load': make_load(T, meta, rng),
        'perspective': make_perspective(T, meta, rng),
        'hsv': make_hsv(T, meta, rng),
        'rect': make_rect(T, meta),
        'conv': make_conv(T, meta, rng)}
    meta.update({
        'generator': 'tools/golden/make_augment_fixtures.py',
        'reference': f'Ultralytics YOLOv5 v7.0 (PyPI yolov5 {yolov5.__version__})',
        'cv2_version': cv2.__version__,
        'numpy_version': np.__version__,
        'notes': NOTES})
    return T, meta, summary


def write(path=OUT_PATH):
    T, meta, summary = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    T = {k: np.ascontiguousarray(v) for k, v in T.items()}
    save_file(T, str(path), metadata=meta)
    canonicalize_header(path)
    return T, meta, summary


def main():
    T, meta, summary = write(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors, '
          f'cv2 {cv2.__version__}')
    for k, shape, ratio, pad, calls in summary['letterbox']:
        print(f'  lb{k}: out {shape} ratio {ratio} pad {pad} calls {calls}')
    for k, ishape, oshape, calls in summary['load']:
        print(f'  li{k}: {ishape} -> {oshape} {calls}')
    for k, warp, ishape, oshape, n, nk, draws in summary['perspective']:
        print(f'  rp{k}: {warp} {ishape} -> {oshape}, keep {nk}/{n}, draws {np.round(draws, 4).tolist()}')
    for k, gains, r in summary['hsv']:
        print(f'  hsv{k}: gains {gains} r {r}')
    order, shapes, batch = summary['rect']
    print(f'  rect: order {order.tolist()}\n        batch_shapes {shapes.tolist()}')
    print(f'  conv: {summary["conv"].shape}')


if __name__ == '__main__':
    main()
