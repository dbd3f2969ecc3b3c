#!/usr/bin/env python3
"""Golden fixtures for YOLOv5's NMS and validation metrics, from Ultralytics YOLOv5 v7.0 (PyPI `yolov5` 7.0.13)
on the CPU.

Writes (relative to the repository root):
  tests/fixtures/nms.safetensors       yolov5.utils.general.non_max_suppression (float32)
  tests/fixtures/metrics.safetensors   val.py process_batch, utils.metrics ap_per_class / ConfusionMatrix / fitness

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /root/y5venv/bin/python tools/golden/make_nms_metrics_fixtures.py
The fixture files are committed to the repository, so CI and the C++ tests never need Python or torch.
tools/golden/check_loss_nms_metrics_fixtures.py reloads them and re-verifies them against YOLOv5.
Outputs are byte-reproducible (numpy RandomState draws, sorted safetensors header).

Everything is computed by YOLOv5's own functions. Two environment shims, no behaviour change:
  * pkg_resources (yolov5 7.0.13 imports it; only parse_version is used), via make_model_fixtures.py;
  * numpy >= 2.4 removed np.trapz (used by utils/metrics.compute_ap): np.trapz = np.trapezoid (same function,
    renamed in numpy 2.0).

nms.safetensors, per case k:
  case{k}.pred     F32 (bs, N, 5+nc)  Detect's decoded output: cx, cy, w, h (pixels), obj, class scores
  case{k}.params   F64 (5,)           [conf_thres, iou_thres, agnostic (0/1), multi_label (0/1), max_det]
  case{k}.classes  I64 (c,)           the `classes` filter; c = 0 means None
  case{k}.out{b}   F32 (n, 6)         non_max_suppression's rows (x1, y1, x2, y2, conf, cls) for image b, in order
  Inputs are exact: integer cx, cy, w, h (so xyxy are integers or halves, also after the class offset
  cls * 7680), obj and class scores are k/4096 (so obj * cls is exact in f32). No pairwise IoU lies within 1e-3
  of iou_thres, no obj / conf within 1e-4 of conf_thres (except where a case says so: an exact 0.25), and within
  an image the candidate scores are all distinct, except in the tie cases, which keep <= 16 candidates per
  image (see the note `ties` in the metadata). The NMS wall-clock limit never triggers (each call is timed).

metrics.safetensors, per case k (a validation run of nimg images; val.py's loop is followed exactly):
  case{k}.nimg, case{k}.nc  I64 (1,)
  case{k}.det{j}     F32 (n, 6)  [x1, y1, x2, y2, conf, cls], sorted by conf descending (NMS output order)
  case{k}.lab{j}     F32 (m, 5)  [cls, x1, y1, x2, y2]
  case{k}.correct{j} U8 (n, 10)  val.process_batch(det, lab, iouv), iouv = torch.linspace(0.5, 0.95, 10) (f32);
                                 as val.py: all-zero when the image has no labels
  case{k}.tp, .fp, .p, .r, .f1  F64 (nc_present,)   ap_per_class(tp, conf, pred_cls, target_cls, plot=False)
  case{k}.ap         F64 (nc_present, 10)
  case{k}.ap_class   I64 (nc_present,)
  case{k}.summary    F64 (4,)   [mp, mr, map50, map] as val.py computes them
  case{k}.fitness    F64 (1,)   utils.metrics.fitness(np.array([[mp, mr, map50, map]]))
  case{k}.confusion  F64 (nc+1, nc+1)  ConfusionMatrix(nc, conf=0.25, iou_thres=0.45) fed as val.py feeds it:
                     images without detections -> process_batch(None, lab[:, 0]); images with detections and labels
                     -> process_batch(det, lab); images with detections but no labels -> not fed at all.
  case{k}.f1_index   I64 (1,)   diagnostic: the argmax of smooth(mean_c F1, 0.1) over the 1000-point conf grid
  iouv               F32 (10,)  the thresholds as val.py builds them
  Boxes are on a 1/8-pixel grid; no det/label IoU lies within 5e-4 of any iouv threshold or of 0.45; IoUs above 0.45
  of one label (or of one detection) are pairwise distinct, so the IoU sorts in process_batch / ConfusionMatrix
  never meet a tie that matters; detections with equal conf (case 1) have identical `correct` rows within
  a class, so ap_per_class's unstable np.argsort cannot change the result (checked by shuffling).
"""

import json
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import numpy as np  # noqa: E402

if not hasattr(np, 'trapz'):  # numpy >= 2.4; yolov5's compute_ap calls np.trapz
    np.trapz = np.trapezoid

import torch  # noqa: E402
import torchvision  # noqa: E402
import yolov5  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from yolov5.utils.general import non_max_suppression  # noqa: E402
from yolov5.utils.metrics import ConfusionMatrix, ap_per_class, fitness, smooth  # noqa: E402
from yolov5.val import process_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT_NMS = REPO / 'tests' / 'fixtures' / 'nms.safetensors'
OUT_METRICS = REPO / 'tests' / 'fixtures' / 'metrics.safetensors'
S = 4096  # score grid
IMG_W, IMG_H = 640, 480
ORACLE = (f'yolov5 {yolov5.__version__} (Ultralytics YOLOv5 v7.0); torch {torch.__version__}; '
          f'torchvision {torchvision.__version__}; numpy {np.__version__}')


def save(tensors, meta, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    canonicalize_header(path)
    print(f'wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes, {len(tensors)} tensors)')


def iou_matrix(a, b):
    """Pairwise IoU of xyxy boxes in float64 (only used to keep generated data away from thresholds)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    aa = (a[:, 2:] - a[:, :2]).prod(1)
    ab = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (aa[:, None] + ab[None, :] - inter)


def xywh_to_xyxy_np(b):
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.concatenate((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1)


# ----------------------------------------------------------------------------------------------------------- NMS
class Image:
    """One image of Detect output: integer xywh boxes, obj and class scores on the k/4096 grid."""

    def __init__(self, nc):
        self.nc, self.box, self.obj, self.cls = nc, [], [], []

    def add(self, cx, cy, w, h, obj, cls):
        """obj and cls given as integers k (score k/4096); cls is a list of nc integers."""
        assert len(cls) == self.nc
        self.box.append([cx, cy, w, h])
        self.obj.append(obj)
        self.cls.append(list(cls))

    def rows(self, n_pad=None):
        r = [[*b, o / S, *[c / S for c in cl]] for b, o, cl in zip(self.box, self.obj, self.cls)]
        while n_pad is not None and len(r) < n_pad:  # padding rows: obj 0, never candidates
            r.append([10, 10, 4, 4, 0.0] + [0.0] * self.nc)
        return r


def candidates(img, conf, multi_label, classes):
    """(box index, class, score) rows that reach torchvision.ops.nms, for the data checks only."""
    out = []
    for i, (o, cl) in enumerate(zip(img.obj, img.cls)):
        if not o / S > conf:
            continue
        sc = [np.float32(o / S) * np.float32(c / S) for c in cl]
        if multi_label and img.nc > 1:
            out += [(i, j, float(s)) for j, s in enumerate(sc) if s > conf]
        else:
            j = int(np.argmax(sc))
            if sc[j] > conf:
                out.append((i, j, float(sc[j])))
    if classes is not None:
        out = [r for r in out if r[1] in classes]
    return out


def check_image(img, conf, iou, multi_label, classes, allow_ties=False, allow_exact=()):
    """Data sanity: nothing near a threshold; distinct candidate scores unless this is a tie case."""
    xyxy = xywh_to_xyxy_np(img.box)
    m = iou_matrix(xyxy, xyxy)
    iu = np.triu_indices(len(xyxy), 1)
    bad = np.abs(m[iu] - iou) < 1e-3
    assert not bad.any(), f'IoU within 1e-3 of iou_thres: pairs {[(iu[0][k], iu[1][k]) for k in np.where(bad)[0]]}'
    for o, cl in zip(img.obj, img.cls):
        vals = [o / S] + [float(np.float32(o / S) * np.float32(c / S)) for c in cl]
        for v in vals:
            assert v in allow_exact or abs(v - conf) > 1e-4 or v == 0.0, f'score {v} near conf_thres {conf}'
    cand = candidates(img, conf, multi_label, classes)
    scores = [c[2] for c in cand]
    if allow_ties:
        assert len(cand) <= 16, 'tie cases must keep <= 16 candidates (torch argsort is stable only up to 16)'
    else:
        assert len(set(scores)) == len(scores), 'accidental score tie'
    return len(cand)


def random_scene(rs, nc, n, conf, iou, multi_label, classes=None, nclusters=6, spread=8, p_hi=0.6):
    """Clusters of jittered boxes of several classes; redraw a box or its scores until the data checks pass."""
    img = Image(nc)
    centres = [(rs.randint(60, IMG_W - 60), rs.randint(60, IMG_H - 60), rs.randint(20, 120), rs.randint(20, 120))
               for _ in range(nclusters)]

    def draw_box():
        cx, cy, bw, bh = centres[rs.randint(nclusters)]
        return [cx + rs.randint(-spread, spread + 1), cy + rs.randint(-spread, spread + 1),
                max(4, bw + rs.randint(-bw // 4, bw // 4 + 1)), max(4, bh + rs.randint(-bh // 4, bh // 4 + 1))]

    def draw_scores():
        obj = rs.randint(int(S * 0.4), S) if rs.rand() < p_hi else rs.randint(1, S)
        cl = [rs.randint(0, S // 4) for _ in range(nc)]
        cl[rs.randint(nc)] = rs.randint(S // 2, S)
        if multi_label and rs.rand() < 0.5:  # a second strong class
            cl[rs.randint(nc)] = rs.randint(S // 3, S)
        return obj, cl

    for _ in range(n):
        img.add(*draw_box(), *draw_scores())
    for _ in range(100000):
        xyxy = xywh_to_xyxy_np(img.box)
        m = iou_matrix(xyxy, xyxy)
        np.fill_diagonal(m, -1)
        bad = np.argwhere(np.abs(m - iou) < 1e-3)
        if len(bad):
            img.box[bad[0][1]] = draw_box()
            continue
        # scores: no value near conf_thres, candidate scores distinct
        fixed = True
        seen = {}
        for i, (o, cl) in enumerate(zip(img.obj, img.cls)):
            vals = [o / S] + [float(np.float32(o / S) * np.float32(c / S)) for c in cl]
            if any(v != 0.0 and abs(v - conf) <= 1e-4 for v in vals):
                img.obj[i], img.cls[i] = draw_scores()
                fixed = False
                break
        if not fixed:
            continue
        for bi, j, s in candidates(img, conf, multi_label, classes):
            if s in seen:
                img.obj[bi], img.cls[bi] = draw_scores()
                fixed = False
                break
            seen[s] = bi
        if fixed:
            break
    else:
        raise RuntimeError('could not make a clean scene')
    check_image(img, conf, iou, multi_label, classes)
    return img


def tie_image_a():
    """multi_label False, nc=3, thresholds 0.25 / 0.45. Scores: obj 3072 (0.75) x cls 3277/... -> ties."""
    img = Image(3)
    T = [0, 0, 0]

    def cls(j, k=3200):
        c = list(T)
        c[j] = k
        return c
    # conf = 0.75 * 3200/4096 = 0.5859375 for every tied box below; one box with higher conf placed late
    img.add(100, 100, 40, 40, 3072, cls(0))       # 0: tie
    img.add(118, 100, 40, 40, 3072, cls(0))       # 1: tie, same class, IoU(0,1) = 880/2320 = 0.379: both kept
    img.add(300, 300, 30, 30, 3072, cls(1))       # 2: tie, isolated
    img.add(500, 100, 50, 40, 3584, cls(2, 4000))  # 3: higher conf (0.875*4000/4096)
    img.add(300, 300, 30, 30, 3072, cls(1))       # 4: tie, identical to 2 (IoU 1) -> suppressed by 2
    img.add(104, 102, 40, 40, 3072, cls(2))       # 5: tie, overlaps 0 but class 2 -> kept (class offset)
    img.add(400, 400, 40, 40, 1536, cls(0))       # 6: conf 0.375*3200/4096, below the ties
    img.add(402, 398, 40, 40, 3072, cls(0))       # 7: tie, overlaps 6 strongly -> 6 suppressed
    img.add(200, 200, 20, 20, 1024, cls(0))       # 8: obj 0.25 exactly -> rejected (obj > conf is strict)
    return img


def tie_chain_image():
    """A chain of equal-score boxes: 0~1 and 1~2 overlap (IoU > 0.45), 0 and 2 do not. In index order greedy NMS
    keeps 0 and 2; any order that puts 1 first keeps only 1."""
    img = Image(3)
    c = [3000, 0, 0]
    img.add(100, 100, 40, 40, 2048, c)   # 0
    img.add(110, 100, 40, 40, 2048, c)   # 1: IoU(0,1) = 30*40/(2*1600-1200) = 0.6
    img.add(120, 100, 40, 40, 2048, c)   # 2: IoU(1,2) = 0.6, IoU(0,2) = 20*40/(3200-800) = 0.333
    img.add(300, 200, 60, 20, 2048, [0, 3000, 0])   # 3: tie, other class, isolated
    img.add(300, 260, 60, 20, 2048, c)   # 4: tie, isolated
    img.add(500, 300, 30, 30, 4000, [1000, 3900, 0])  # 5: highest conf, class 1
    img.add(502, 300, 30, 30, 2048, [0, 3000, 0])   # 6: tie, overlaps 5 (same class) -> suppressed
    # fill up to exactly 16 candidates with tied isolated boxes (16 is the largest n torch sorts stably)
    for q in range(9):
        img.add(40 + 60 * q, 440, 20, 20, 2048, [3000, 0, 0] if q % 2 else [0, 0, 3000])
    img.add(600, 40, 20, 20, 100, [4000, 0, 0])  # obj below conf: not a candidate
    return img


def tie_multilabel_image():
    """multi_label True, 0.001 / 0.6: one box whose two classes have the same score (two tied rows), etc."""
    img = Image(3)
    img.add(200, 200, 50, 50, 3000, [2000, 2000, 0])   # 0: rows (0,c0) and (0,c1) tie
    img.add(205, 200, 50, 50, 3000, [2000, 0, 0])      # 1: ties with 0/c0 and overlaps it (IoU 45*50/(5000-2250)=0.818)
    img.add(400, 100, 30, 60, 3000, [0, 2000, 1000])   # 2: ties on c1, isolated; c2 lower
    img.add(80, 300, 40, 40, 4000, [0, 0, 3500])       # 3: highest
    img.add(83, 300, 40, 40, 3000, [0, 0, 2000])       # 4: tie (c2), overlaps 3 (same class) -> suppressed
    img.add(500, 400, 40, 40, 3000, [0, 2000, 0])      # 5: tie c1, isolated
    return img


def empty_case_images():
    """bs=3, detect defaults: image 0 normal (+ an exact conf 0.25 row, rejected by the strict >),
    image 1: every obj below conf_thres, image 2: obj above but obj*cls below conf_thres."""
    rs = np.random.RandomState(77)
    im0 = random_scene(rs, 3, 10, 0.25, 0.45, False, nclusters=3)
    im0.add(600, 50, 30, 30, 2048, [2048, 100, 0])      # obj 0.5 * cls 0.5 = 0.25 exactly -> not > 0.25
    check_image(im0, 0.25, 0.45, False, None, allow_exact=(0.25,))
    im1 = Image(3)
    for q in range(6):
        im1.add(100 + 80 * q, 200, 40, 40, 200 + 100 * q, [3000, 100, 50])  # obj <= 700/4096 = 0.17
    check_image(im1, 0.25, 0.45, False, None)
    im2 = Image(3)
    for q in range(6):
        im2.add(100 + 80 * q, 300, 40, 40, 3000 + 100 * q, [1000, 900, 800])  # obj*cls <= 0.2 < 0.25
    check_image(im2, 0.25, 0.45, False, None)
    return [im0, im1, im2]


def run_nms(pred, conf, iou, classes, agnostic, multi_label, max_det):
    t0 = time.time()
    out = non_max_suppression(pred.clone(), conf_thres=conf, iou_thres=iou, classes=classes, agnostic=agnostic,
                              multi_label=multi_label, max_det=max_det)
    dt = time.time() - t0
    assert dt < 0.1, f'NMS took {dt:.3f}s: too close to its time limit'
    return out


def make_nms():
    rs = np.random.RandomState(12345)
    DET = dict(conf=0.25, iou=0.45, agnostic=False, multi_label=False, max_det=1000)  # detect.py
    VAL = dict(conf=0.001, iou=0.6, agnostic=False, multi_label=True, max_det=300)   # val.py
    cases = []

    def add(desc, images, s, classes=None, N=None):
        cases.append((desc, images, s, classes, N))

    def scenes(nc, bs, n, s, classes=None, **kw):
        return [random_scene(rs, nc, n, s['conf'], s['iou'], s['multi_label'] and nc > 1, classes, **kw)
                for _ in range(bs)]

    add('detect.py defaults (0.25, 0.45, best class only, max_det 1000); nc=3, bs=2, 40 boxes per image in '
        'clusters', scenes(3, 2, 40, DET), DET)
    add('val.py settings (0.001, 0.6, multi_label, max_det 300); nc=4, bs=2, 40 boxes per image', scenes(4, 2, 40, VAL),
        VAL)
    s = dict(DET, agnostic=True)
    add('agnostic NMS (detect defaults + agnostic); nc=3, bs=2, overlapping boxes of different classes suppress '
        'each other', scenes(3, 2, 40, s, nclusters=4), s)
    add('classes filter [0, 2] (detect defaults); nc=4, bs=2', scenes(4, 2, 40, DET, classes=[0, 2]), DET, [0, 2])
    s = dict(DET, max_det=5)
    add('max_det = 5 truncates (detect defaults otherwise); nc=3, bs=2, > 5 survivors per image',
        scenes(3, 2, 40, s, nclusters=8), s)
    add('crowded scene, val settings: nc=5, bs=1, 500 boxes in 60 clusters, multi_label (more than 300 survivors: '
        'max_det truncates)', scenes(5, 1, 500, VAL, nclusters=60, spread=16), VAL)
    ti = [tie_image_a(), tie_chain_image()]
    for im in ti:
        check_image(im, 0.25, 0.45, False, None, allow_ties=True, allow_exact=(0.25,))
    add('EXACT score ties, detect defaults: image 0 has 7 boxes with conf 0.5859375 (overlapping same-class, '
        'overlapping other-class, identical, isolated; a higher-conf box placed after them; obj exactly 0.25 '
        'rejected); image 1: a chain 0~1~2 of equal scores (index order keeps 0 and 2) and 16 candidates in all. '
        '<= 16 candidates per image, where torch argsort is stable: ties stay in index order', ti, DET)
    ti = [tie_multilabel_image()]
    check_image(ti[0], 0.001, 0.6, True, None, allow_ties=True)
    add('EXACT score ties with multi_label (val settings): two classes of one box with equal score, tied rows '
        'in (box, class) order; bs=1', ti, VAL)
    add('empty outputs next to a non-empty one (detect defaults), bs=3: image 0 normal plus a row with '
        'obj*cls == 0.25 exactly (rejected: conf > thres is strict); image 1 all obj below conf_thres; image 2 obj '
        'above but obj*cls below conf_thres', empty_case_images(), DET)
    s = dict(VAL)
    add('nc=1 with val settings: multi_label is switched off inside NMS (multi_label &= nc > 1); bs=2',
        scenes(1, 2, 40, s), s)

    # warm up torchvision's nms so the first timed call is not slow
    torchvision.ops.nms(torch.rand(8, 4) * 10 + torch.tensor([0, 0, 20, 20]), torch.rand(8), 0.5)

    tensors, meta = {}, {}
    for k, (desc, images, s, classes, _) in enumerate(cases):
        nc = images[0].nc
        n = max(len(im.box) for im in images)
        pred = torch.tensor([im.rows(n) for im in images], dtype=torch.float32)
        ref = torch.tensor([im.rows(n) for im in images], dtype=torch.float64)
        assert torch.equal(pred.double(), ref), 'pred not exact in f32'
        out = run_nms(pred, s['conf'], s['iou'], classes, s['agnostic'], s['multi_label'], s['max_det'])
        tensors[f'case{k}.pred'] = pred
        tensors[f'case{k}.params'] = torch.tensor([s['conf'], s['iou'], float(s['agnostic']),
                                                   float(s['multi_label']), float(s['max_det'])], dtype=torch.float64)
        tensors[f'case{k}.classes'] = torch.tensor(classes if classes else [], dtype=torch.int64)
        for b, o in enumerate(out):
            tensors[f'case{k}.out{b}'] = o.clone()
        counts = [len(o) for o in out]
        meta[f'case{k}'] = f'({k}) {desc}; nc={nc} bs={len(images)} N={n}; output rows per image {counts}'
        print(meta[f'case{k}'])
    meta.update({
        'cases': str(len(cases)),
        'generator': 'tools/golden/make_nms_metrics_fixtures.py',
        'oracle': ORACLE + '; yolov5.utils.general.non_max_suppression in float32',
        'params_order': json.dumps(['conf_thres', 'iou_thres', 'agnostic', 'multi_label', 'max_det']),
        'ties': 'YOLOv5 sorts candidates with x[:, 4].argsort(descending=True). On the CPU torch sorts <= 16 '
                'elements stably (insertion sort) but larger inputs with an unstable introsort (libstdc++ '
                'std::sort pattern), so equal scores keep their index order only for <= 16 candidates; '
                'torchvision.ops.nms itself sorts stably (descending). The tie cases keep <= 16 candidates per '
                'image; every other case has distinct candidate scores.',
        'max_wh': '7680', 'max_nms': '30000',
    })
    save(tensors, meta, OUT_NMS)


# ------------------------------------------------------------------------------------------------------- metrics
IOUV = torch.linspace(0.5, 0.95, 10)  # float32, exactly as val.py
CM_CONF, CM_IOU = 0.25, 0.45


def q8(v):
    return np.round(np.asarray(v, np.float64) * 8) / 8


def check_run(images):
    """Keep every IoU away from the iouv thresholds and 0.45; IoUs > 0.45 pairwise distinct within an image."""
    thr = np.concatenate((IOUV.double().numpy(), IOUV.numpy().astype(np.float64), [CM_IOU]))
    for j, (det, lab) in enumerate(images):
        if not len(det) or not len(lab):
            continue
        m = iou_matrix(np.asarray(lab)[:, 1:5], np.asarray(det)[:, :4])
        d = np.abs(m[..., None] - thr).min(-1)
        if (d < 5e-4).any():
            return False, f'image {j}: IoU near a threshold: {m[d < 5e-4]}'
        for vec in list(m) + list(m.T):  # per label and per detection: the matches that compete
            big = np.sort(vec[vec > 0.44])
            if len(big) > 1 and (np.diff(big) < 1e-5).any():
                return False, f'image {j}: tied IoUs {big}'
        c = np.asarray(det)[:, 4]
        if (np.abs(c - CM_CONF) < 1e-4).any():
            return False, f'image {j}: conf near 0.25'
    return True, ''


def jitter_box(rs, xyxy, amount):
    x1, y1, x2, y2 = xyxy
    w, h = x2 - x1, y2 - y1
    d = rs.uniform(-amount, amount, 4) * np.array([w, h, w, h])
    out = q8(np.array([x1, y1, x2, y2]) + d)
    out[2] = max(out[2], out[0] + 1)
    out[3] = max(out[3], out[1] + 1)
    return out


def rand_box(rs):
    w, h = rs.uniform(16, 200), rs.uniform(16, 200)
    x1, y1 = rs.uniform(0, IMG_W - w), rs.uniform(0, IMG_H - h)
    return q8([x1, y1, x1 + w, y1 + h])


def sort_dets(det):
    det = sorted(det, key=lambda r: -r[4])  # python sort: stable
    return det


def metrics_case0():
    """nc=4: classes 0-2 labelled, class 2 never predicted, class 3 predicted but never labelled."""
    imgs = []
    # image 0: A (cls 0) matched well + a duplicate; B (cls 1) found with the wrong class (2) and a good cls-1 det
    lab = [[0, 100, 100, 200, 180], [1, 300, 120, 380, 260]]
    det = [[102, 101, 201, 182, 0.92, 0],        # A, IoU ~0.96
           [110, 104, 205, 190, 0.81, 0],        # duplicate of A -> FP (label already taken)
           [296, 118, 381, 255, 0.77, 1],        # B, good
           [303, 125, 378, 262, 0.55, 3],        # B with class 3 (absent from labels)
           [500, 300, 560, 360, 0.40, 0]]        # background FP
    imgs.append((det, lab))
    # image 1: localisation-quality ladder for class 0; the higher-conf det has the LOWER IoU, so for
    # IoU thresholds it fails, the lower-conf duplicate becomes the TP (process_batch keeps the lowest det index)
    lab = [[0, 50, 50, 150, 150], [1, 400, 300, 480, 420], [2, 200, 200, 260, 300]]
    det = [[62, 50, 162, 150, 0.88, 0],          # IoU 88/112 = 0.7857
           [52, 51, 151, 152, 0.70, 0],          # IoU ~0.96: TP only where det 0 fails
           [405, 305, 490, 430, 0.66, 1],        # IoU ~0.76
           [207, 214, 266, 306, 0.12, 0],        # low conf (< 0.25), wrong class over the class-2 label
           [10, 400, 90, 470, 0.31, 1]]          # FP
    imgs.append((det, lab))
    # image 2: several objects, some missed
    lab = [[0, 20, 20, 80, 90], [0, 100, 20, 170, 100], [1, 300, 300, 400, 380], [1, 420, 50, 500, 150],
           [2, 560, 380, 630, 470]]
    det = [[21, 22, 80, 88, 0.95, 0],
           [112, 30, 180, 110, 0.59, 0],         # IoU ~0.62
           [300, 305, 395, 380, 0.83, 1],
           [430, 60, 505, 160, 0.49, 1],         # IoU ~0.7
           [150, 300, 200, 350, 0.27, 3]]        # class-3 FP, just above the CM conf
    imgs.append((det, lab))
    # image 3: a class-0 object predicted as class 3 only; a class-1 object found
    lab = [[0, 300, 200, 360, 280], [1, 40, 40, 140, 100]]
    det = [[301, 198, 362, 279, 0.74, 3],
           [42, 38, 139, 103, 0.64, 1],
           [45, 42, 150, 110, 0.21, 1]]          # duplicate below the CM conf
    imgs.append((det, lab))
    return 4, [(sort_dets(d), l) for d, l in imgs]


def metrics_case1():
    """Equal confidences; within a class, tied detections have identical `correct` rows."""
    imgs = []
    # class 0, conf 0.9: perfect TPs; class 0, conf 0.6: far-away FPs; class 1, conf 0.9: FPs;
    # class 1, conf 0.6: IoU ~0.97 TPs; class 1 conf 0.3: TPs
    lab0 = [[0, 10, 10, 60, 60], [0, 100, 10, 160, 70], [1, 300, 300, 360, 380], [1, 400, 100, 460, 170]]
    det0 = [[10, 10, 60, 60, 0.9, 0], [100, 10, 160, 70, 0.9, 0], [500, 400, 540, 440, 0.9, 1],
            [300, 300, 360, 381, 0.6, 1], [600, 10, 630, 40, 0.6, 0], [400, 100, 460, 170, 0.3, 1]]
    lab1 = [[0, 200, 200, 280, 260], [1, 20, 300, 100, 400], [0, 500, 50, 560, 120]]
    det1 = [[200, 200, 280, 260, 0.9, 0], [20, 300, 100, 401, 0.6, 1], [300, 10, 340, 50, 0.6, 0],
            [50, 200, 90, 240, 0.9, 1], [500, 50, 560, 120, 0.9, 0], [560, 300, 600, 350, 0.6, 0]]
    lab2 = [[1, 100, 100, 180, 200], [0, 300, 100, 360, 150]]
    det2 = [[100, 100, 180, 201, 0.6, 1], [300, 100, 360, 150, 0.9, 0], [200, 400, 260, 460, 0.9, 1],
            [400, 300, 450, 350, 0.6, 0], [10, 420, 60, 470, 0.3, 0],
            [100, 100, 180, 200, 0.3, 0]]  # wrong class on the class-1 label: FP; wins the confusion-matrix match
    for d, l in ((det0, lab0), (det1, lab1), (det2, lab2)):
        imgs.append((sort_dets(d), l))
    return 2, imgs


def metrics_case2():
    lab0 = [[0, 10, 10, 90, 90], [1, 200, 200, 300, 280]]
    det0 = [[12, 11, 92, 88, 0.8, 0], [205, 195, 298, 285, 0.6, 1], [400, 50, 450, 120, 0.45, 0]]
    lab1 = [[0, 100, 100, 200, 200], [1, 300, 50, 380, 150]]       # labels, no detections
    det1 = []
    lab2 = []                                                      # detections, no labels
    det2 = [[50, 50, 120, 140, 0.7, 1], [300, 300, 400, 380, 0.35, 0], [10, 10, 30, 30, 0.05, 0]]
    lab3, det3 = [], []                                            # neither: skipped by val.py
    lab4 = [[0, 400, 300, 500, 400], [1, 500, 20, 600, 90]]        # labels and detections, but no IoU > 0.45:
    det4 = [[50, 300, 150, 400, 0.66, 0], [200, 50, 260, 130, 0.52, 1], [470, 10, 540, 60, 0.4, 1]]
    imgs = [(sort_dets(d), l) for d, l in ((det0, lab0), (det1, lab1), (det2, lab2), (det3, lab3), (det4, lab4))]
    return 2, imgs


def metrics_case3():
    rs = np.random.RandomState(3)
    imgs, confs = [], iter(rs.permutation(np.arange(41, 1000, 7))[:40] / 1000)
    for _ in range(3):
        while True:
            lab = [[rs.randint(3), *rand_box(rs)] for _ in range(4)]
            det = [[*l[1:], 0.5, l[0]] for l in lab]
            if check_run([(det, lab)])[0]:
                break
        for d in det:
            d[4] = float(next(confs))
        imgs.append((sort_dets(det), lab))
    return 3, imgs


def metrics_case4(rs):
    nc, nimg = 5, 10
    imgs = []
    conf_pool = list(rs.permutation(np.arange(1, 4000)) / 4000.0)  # distinct confidences
    for j in range(nimg):
        for _ in range(1000):
            lab = [[rs.randint(nc), *rand_box(rs)] for _ in range(rs.randint(3, 13))]
            det = []
            for l in lab:
                for _ in range(rs.choice([0, 1, 1, 2, 3, 3])):
                    c = l[0] if rs.rand() > 0.1 else rs.randint(nc)
                    det.append([*jitter_box(rs, l[1:], rs.choice([0.02, 0.08, 0.2])), 0.5, c])
            for _ in range(rs.randint(4, 13)):
                det.append([*rand_box(rs), 0.5, rs.randint(nc)])
            ok, _ = check_run([(det, lab)])
            if ok:
                break
        else:
            raise RuntimeError('could not place image')
        for d in det:
            d[4] = conf_pool.pop()
            while abs(d[4] - CM_CONF) < 1e-4:
                d[4] = conf_pool.pop()
        imgs.append((sort_dets(det), lab))
    return nc, imgs


def as_det(det):
    return torch.tensor(det, dtype=torch.float32).reshape(-1, 6)


def as_lab(lab):
    return torch.tensor(lab, dtype=torch.float32).reshape(-1, 5)


def val_run(nc, images):
    """val.py's per-image loop (stats + confusion matrix feeding) followed by its metric computation."""
    stats, corrects = [], []
    cm = ConfusionMatrix(nc=nc, conf=CM_CONF, iou_thres=CM_IOU)
    niou = IOUV.numel()
    for det, lab in images:
        pred, labels = as_det(det), as_lab(lab)
        nl, npr = labels.shape[0], pred.shape[0]
        correct = torch.zeros(npr, niou, dtype=torch.bool)
        if npr == 0:
            if nl:
                stats.append((correct, *torch.zeros((2, 0)), labels[:, 0]))
                cm.process_batch(detections=None, labels=labels[:, 0])
            corrects.append(correct)
            continue
        if nl:
            correct = process_batch(pred, labels, IOUV)
            cm.process_batch(pred, labels)
        stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
        corrects.append(correct)
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)]
    assert len(stats) and stats[0].any()
    names = {i: str(i) for i in range(nc)}
    tp, fp, p, r, f1, ap, ap_class = ap_per_class(*stats, plot=False, save_dir='.', names=names)
    ap50, apm = ap[:, 0], ap.mean(1)
    mp, mr, map50, map_ = p.mean(), r.mean(), ap50.mean(), apm.mean()
    fit = fitness(np.array([mp, mr, map50, map_]).reshape(1, -1))
    return dict(corrects=corrects, stats=stats, tp=tp, fp=fp, p=p, r=r, f1=f1, ap=ap, ap_class=ap_class,
                summary=np.array([mp, mr, map50, map_], np.float64), fitness=np.asarray(fit, np.float64).reshape(1),
                confusion=cm.matrix.copy())


def f1_curve_index(stats):
    """Diagnostic only: the index ap_per_class picks and whether it is robust (no near-tie in the smoothed curve
    that would change P/R/F1). Uses ap_per_class itself on the stats and YOLOv5's smooth()."""
    # recompute the per-class curves exactly as ap_per_class does, by calling it with a hook on smooth
    captured = {}
    import yolov5.utils.metrics as M
    orig = M.smooth

    def spy(y, f=0.05):
        out = orig(y, f)
        captured['y'], captured['s'] = y, out
        return out
    M.smooth = spy
    try:
        names = {i: str(i) for i in range(200)}
        ap_per_class(*stats, plot=False, names=names)
    finally:
        M.smooth = orig
    s = captured['s']
    i = int(s.argmax())
    near = np.where(s >= s[i] - 1e-9 * max(1.0, abs(s[i])))[0]
    return i, near, captured['y']


def shuffled_equal(stats, ref):
    """ap_per_class is order-sensitive within equal confidences (np.argsort is unstable); make sure these data
    are not: permuting the inputs must give the same results."""
    rs = np.random.RandomState(0)
    names = {i: str(i) for i in range(200)}
    for _ in range(20):
        perm = rs.permutation(len(stats[1]))
        st = [stats[0][perm], stats[1][perm], stats[2][perm], stats[3]]
        out = ap_per_class(*st, plot=False, names=names)
        for a, b in zip(out, ref):
            if not np.allclose(a, b, rtol=0, atol=1e-12):
                return False
    return True


def make_metrics():
    rs = np.random.RandomState(4242)
    cases = [
        ('realistic mix: nc=4, 4 images; classes 0-2 labelled, class 2 never predicted (AP 0), class 3 predicted '
         'but never labelled (not in ap_class; confusion row 3); TPs, FPs, a duplicate, a wrong-class detection, a '
         'higher-conf lower-IoU duplicate (process_batch keeps the lowest detection index per label), '
         'detections below the confusion-matrix conf 0.25', metrics_case0()),
        ('many detections with equal confidence (0.9 / 0.6 / 0.3) over 3 images, nc=2; tied detections of a class '
         'share their correct row, so the result does not depend on the sort order of ties', metrics_case1()),
        ('image with labels but no detections (confusion: background FN), image with detections but no labels '
         '(stats only; val.py does not feed it to the confusion matrix), an image with neither (skipped), an image '
         'whose detections overlap no label (ConfusionMatrix counts its labels as background FN but, because its '
         'predicted-background loop sits under `if n:`, not its detections as background FP), nc=2',
         metrics_case2()),
        ('every detection perfect (boxes equal to the labels, distinct confs): AP = 0.995 for every class and '
         'threshold (101-point interp, trapezoid), nc=3, 3 images', metrics_case3()),
        ('random: nc=5, 10 images, detections from jittered labels (10% class flips) plus noise',
         metrics_case4(rs)),
    ]
    tensors, meta = {'iouv': IOUV.clone()}, {}
    for k, (desc, (nc, images)) in enumerate(cases):
        ok, why = check_run(images)
        assert ok, f'case {k}: {why}'
        for det, _ in images:
            c = [d[4] for d in det]
            assert c == sorted(c, reverse=True)
        R = val_run(nc, images)
        ref = (R['tp'], R['fp'], R['p'], R['r'], R['f1'], R['ap'], R['ap_class'])
        assert shuffled_equal(R['stats'], ref), f'case {k}: ap_per_class depends on the order of ties'
        fi, near, y = f1_curve_index(R['stats'])
        # robustness of the argmax: if several indices are within float noise of the smoothed maximum, the mean F1
        # must be constant across them (a flat region: P and R identical there), so any of them gives the same P/R
        assert len(near) == 1 or np.ptp(y[near.min():near.max() + 1]) == 0, (k, near)
        t = tensors
        t[f'case{k}.nimg'] = torch.tensor([len(images)], dtype=torch.int64)
        t[f'case{k}.nc'] = torch.tensor([nc], dtype=torch.int64)
        for j, (det, lab) in enumerate(images):
            t[f'case{k}.det{j}'] = as_det(det)
            t[f'case{k}.lab{j}'] = as_lab(lab)
            t[f'case{k}.correct{j}'] = R['corrects'][j].to(torch.uint8)
        for name in ('tp', 'fp', 'p', 'r', 'f1', 'ap'):
            t[f'case{k}.{name}'] = torch.from_numpy(np.ascontiguousarray(R[name], dtype=np.float64))
        t[f'case{k}.ap_class'] = torch.from_numpy(np.asarray(R['ap_class'], dtype=np.int64))
        t[f'case{k}.summary'] = torch.from_numpy(R['summary'])
        t[f'case{k}.fitness'] = torch.from_numpy(R['fitness'])
        t[f'case{k}.confusion'] = torch.from_numpy(R['confusion'].astype(np.float64))
        t[f'case{k}.f1_index'] = torch.tensor([fi], dtype=torch.int64)
        ndet = sum(len(d) for d, _ in images)
        nlab = sum(len(l) for _, l in images)
        meta[f'case{k}'] = (f'({k}) {desc}; nimg={len(images)} nc={nc} detections={ndet} labels={nlab}; '
                            f'summary [mp mr map50 map] = {np.round(R["summary"], 6).tolist()}; '
                            f'F1-curve argmax {fi} (near-max indices {near.min()}..{near.max()})')
        print(meta[f'case{k}'])
    meta.update({
        'cases': str(len(cases)),
        'generator': 'tools/golden/make_nms_metrics_fixtures.py',
        'oracle': ORACLE + '; val.py process_batch, utils.metrics ap_per_class (plot=False), ConfusionMatrix, '
                           'fitness',
        'confusion': 'ConfusionMatrix(nc, conf=0.25, iou_thres=0.45); rows = predicted class (nc = background), '
                     'columns = true class (nc = background); fed as val.py feeds it (see generator docstring)',
        'summary_order': json.dumps(['mp', 'mr', 'map50', 'map']),
    })
    save(tensors, meta, OUT_METRICS)


def main():
    make_nms()
    make_metrics()


if __name__ == '__main__':
    main()
