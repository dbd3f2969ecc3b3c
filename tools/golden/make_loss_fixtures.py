#!/usr/bin/env python3
"""Golden fixtures for the YOLOv5 training loss (utils/loss.py ComputeLoss), from Ultralytics YOLOv5 v7.0
(PyPI `yolov5` 7.0.13) on the CPU, computed in float64.

Writes (relative to the repository root):
  tests/fixtures/loss.safetensors

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /root/y5venv/bin/python tools/golden/make_loss_fixtures.py
The fixture file is committed to the repository, so CI and the C++ tests never need Python or torch.
tools/golden/check_loss_nms_metrics_fixtures.py reloads it and re-verifies it against YOLOv5.
The output is byte-reproducible (numpy RandomState draws, sorted safetensors header).

Procedure (also summarised in the file's __metadata__):
  torch.set_default_dtype(torch.float64); model = yolov5.models.yolo.Model(config/models/yolov5n.yaml, nc=nc)
  .double() (Detect registers its anchors buffer with .float(), so .double() is needed; Detect.anchors is float64, in grid units = yaml anchors / strides 8, 16, 32);
  model.hyp = hyp (hyp.scratch-low values scaled the way train.py scales them for nl=3, imgsz=96, nc;
  label_smoothing / fl_gamma as the case says); compute_loss = yolov5.utils.loss.ComputeLoss(model).
  Input image H x W = 64 x 96, so the Detect maps are (bs, 3, ny, nx, 5+nc) with (ny, nx) = 8x12, 4x6, 2x3.
  p_i are float32 draws from U(-3, 3) (numpy RandomState), converted to float64 leaves requiring grad;
  targets are (image, class, x, y, w, h) normalised, on a 1/4096 grid (exact in f32, and x*nx, y*ny are
  exact in f32 too, so every cell / neighbour / `% 1 < 0.5` / `> 1` decision is exact in either precision).
  loss, loss_items = compute_loss(p, targets); loss.backward().

Tensors per case k (K = metadata `cases`; `case{k}` in metadata describes the case):
  case{k}.p{i}          F32 (bs, 3, ny, nx, 5+nc)   raw Detect maps (inputs; used as float64)
  case{k}.targets       F32 (nt, 6)                 (image, class, x, y, w, h)
  case{k}.anchors       F32 (3, 3, 2)               Detect.anchors (grid units) as used by build_targets
  case{k}.hyp           F64 (8,)                    [box, obj, cls, anchor_t, cls_pw, obj_pw, label_smoothing, fl_gamma]
  case{k}.lbox/lobj/lcls F64 (1,)                   loss_items (after the gains, before x bs)
  case{k}.loss          F64 (1,)                    total loss returned by ComputeLoss (already x bs)
  case{k}.grad.p{i}     F64 like p{i}               d loss / d p_i
  case{k}.bt{i}.indices I64 (4, n)                  build_targets rows b, a, gj, gi (gj/gi clamped), in YOLOv5's order
  case{k}.bt{i}.tbox    F64 (n, 4)                  (gxy - gij, gwh)
  case{k}.bt{i}.anch    F64 (n, 2)                  anchors[a]
  case{k}.bt{i}.tcls    I64 (n,)                    class
"""

import json
import math
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
import yolov5  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from yolov5.utils.loss import ComputeLoss  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / 'tests' / 'fixtures' / 'loss.safetensors'
MODEL_YAML = REPO / 'config' / 'models' / 'yolov5n.yaml'
HYP_YAML = REPO / 'config' / 'hyps' / 'hyp.scratch-low.yaml'
H, W = 64, 96
IMGSZ = 96  # train.py's imgsz for the obj gain scaling
GRIDS = [(H // s, W // s) for s in (8, 16, 32)]  # (ny, nx)
Q = 4096.0  # target coordinate grid
HYP_KEYS = ['box', 'obj', 'cls', 'anchor_t', 'cls_pw', 'obj_pw', 'label_smoothing', 'fl_gamma']


def scaled_hyp(nc, label_smoothing=0.0, nl=3):
    """train.py (v7.0) lines: hyp['box'] *= 3 / nl; hyp['cls'] *= nc / 80 * 3 / nl;
    hyp['obj'] *= (imgsz / 640) ** 2 * 3 / nl; hyp['label_smoothing'] = opt.label_smoothing."""
    hyp = yaml.safe_load(HYP_YAML.read_text())
    hyp['box'] *= 3 / nl
    hyp['cls'] *= nc / 80 * 3 / nl
    hyp['obj'] *= (IMGSZ / 640) ** 2 * 3 / nl
    hyp['label_smoothing'] = label_smoothing
    return hyp


_models = {}


def model_for(nc):
    if nc not in _models:
        torch.manual_seed(0)
        m = yolo.Model(str(MODEL_YAML), ch=3, nc=nc).double()  # Detect registers anchors with .float()
        det = m.model[-1]
        assert det.anchors.dtype == torch.float64, det.anchors.dtype
        assert det.stride.tolist() == [8.0, 16.0, 32.0], det.stride
        _models[nc] = m
    return _models[nc]


def q(v):
    """Round to the 1/4096 grid (exact in f32; x*12, x*6, x*3, y*8, ... stay exact)."""
    return np.round(np.asarray(v, dtype=np.float64) * Q) / Q


def random_targets(rs, n, nc, images, wh=(0.03, 0.6)):
    rows = []
    for _ in range(n):
        b = rs.choice(images)
        c = rs.randint(nc)
        w, h = rs.uniform(*wh, size=2)
        x = rs.uniform(w / 2, 1 - w / 2)
        y = rs.uniform(h / 2, 1 - h / 2)
        rows.append([b, c, *q([x, y, w, h])])
    return rows


def edge_targets():
    """Hand-placed targets (image, class, x, y, w, h) for the edge-case test. Level-0 grid is 8 x 12."""
    r = []
    # centres exactly on cell borders at every level: gx = 6, 3, 1.5 ; gy = 4, 2, 1
    r.append([0, 0, 0.5, 0.5, q(0.1), q(0.15)])
    # x = 0.25 -> gx = 3, 1.5, 0.75 ; y = 0.375 -> gy = 3, 1.5, 0.75 (integer and .5 fractions)
    r.append([1, 1, 0.25, 0.375, q(0.2), q(0.3)])
    # exact .5 fractions at level 0: x = 0.375 -> gx = 4.5 (not < 0.5: right neighbour), y = 0.4375 -> gy = 3.5
    r.append([0, 2, 0.375, 0.4375, q(0.12), q(0.2)])
    # just below / just above 0.5 fraction: gx = 4.5 -+ 3/1024 (one 1/4096 step in x)
    r.append([1, 0, 0.375 - 1 / Q, 0.6875, q(0.15), q(0.12)])
    r.append([1, 2, 0.375 + 1 / Q, 0.1875, q(0.15), q(0.12)])
    # within 1 cell of every border, where the `> 1` guards block the neighbour:
    # (sizes 0.2 x 0.3 so they match at level 0, all anchors, and level 1, anchors 0-1)
    r.append([0, 1, 80 / Q, 0.5 + 3 / Q, q(0.2), q(0.3)])             # left:  gx = 0.234 (frac < .5, gx <= 1)
    r.append([0, 1, 1 - 80 / Q, 0.5 - 5 / Q, q(0.2), q(0.3)])         # right: gxi = 0.234
    r.append([1, 0, 0.5 + 7 / Q, 96 / Q, q(0.2), q(0.3)])             # top:   gy = 0.1875
    r.append([1, 0, 0.5 - 9 / Q, 1 - 96 / Q, q(0.2), q(0.3)])         # bottom: gyi = 0.1875
    # gy exactly 1 (guard `1 > 1` false: no up neighbour; down neighbour 1.5 -> same cell 1 as the centre)
    r.append([0, 2, 416 / Q, 0.125, q(0.1), q(0.1)])                  # gx = 1.21875: left neighbour cell 0
    # centres exactly on the image border: gij = nx / ny -> in-place clamp to nx-1 / ny-1 (tbox uses clamped gij)
    r.append([1, 1, 1.0, 1.0, q(0.1), q(0.15)])
    r.append([1, 2, 0.0, 0.0, q(0.1), q(0.15)])                        # right/down neighbour 0.5 -> same cell 0
    r.append([0, 0, 1.0, 0.25, q(0.3), q(0.2)])
    # tiny boxes: one rejected at every level by anchor_t, one small but matched at level 0
    r.append([0, 1, q(0.3), q(0.7), 8 / Q, 8 / Q])
    r.append([1, 1, q(0.8), q(0.3), q(0.045), q(0.06)])
    # huge boxes: rejected by anchor_t at level-0 anchors 0-1 (level-0 anchor 2 and level 1 match; level-2
    # anchor 2 = 373x326 px rejects every box of a 96-px image)
    r.append([0, 0, 0.5, 0.5, q(0.9), q(0.85)])
    r.append([1, 2, q(0.45), q(0.55), q(0.75), q(0.95)])
    # two targets in the same cell with the same anchor (duplicate indices: last write wins for tobj)
    r.append([0, 1, q(0.7), q(0.3), q(0.2), q(0.25)])
    r.append([0, 2, q(0.71), q(0.31), q(0.21), q(0.24)])
    return r


def check_anchor_margins(targets, anchors, anchor_t):
    """No wh ratio within 1e-4 (relative) of anchor_t, so f32 and f64 make the same match decision."""
    for i, (ny, nx) in enumerate(GRIDS):
        for row in targets:
            gw, gh = row[4] * nx, row[5] * ny
            for a in range(3):
                aw, ah = anchors[i, a]
                r = max(gw / aw, aw / gw if gw else math.inf, gh / ah, ah / gh if gh else math.inf)
                assert abs(r - anchor_t) > 1e-4 * anchor_t, (row, i, a, r)


def build_case(rs, desc, nc, bs, targets, label_smoothing=0.0):
    model = model_for(nc)
    hyp = scaled_hyp(nc, label_smoothing)
    model.hyp = hyp
    compute_loss = ComputeLoss(model)
    det = model.model[-1]
    anchors = det.anchors.detach().clone()
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 6)
    t32 = targets.astype(np.float32)
    assert (t32.astype(np.float64) == targets).all(), 'targets not exact in f32'
    check_anchor_margins(targets, anchors.numpy(), hyp['anchor_t'])

    p32 = [rs.uniform(-3.0, 3.0, size=(bs, 3, ny, nx, 5 + nc)).astype(np.float32) for ny, nx in GRIDS]
    p = [torch.from_numpy(x).double().requires_grad_(True) for x in p32]
    tt = torch.from_numpy(t32).double()
    loss, items = compute_loss(p, tt)
    loss.backward()
    tcls, tbox, indices, anch = compute_loss.build_targets(p, tt)

    T = {}
    for i in range(3):
        T[f'p{i}'] = torch.from_numpy(p32[i])
        T[f'grad.p{i}'] = p[i].grad.detach().clone()
        T[f'bt{i}.indices'] = torch.stack([x.long() for x in indices[i]], 0)
        T[f'bt{i}.tbox'] = tbox[i].detach().double()
        T[f'bt{i}.anch'] = anch[i].detach().double()
        T[f'bt{i}.tcls'] = tcls[i].long()
    T['targets'] = torch.from_numpy(t32)
    T['anchors'] = anchors.float()
    assert torch.equal(T['anchors'].double(), anchors)
    T['hyp'] = torch.tensor([float(hyp[k]) for k in HYP_KEYS], dtype=torch.float64)
    T['lbox'], T['lobj'], T['lcls'] = (items[j:j + 1].detach().clone() for j in range(3))
    T['loss'] = loss.detach().reshape(1).clone()
    nmatch = [int(T[f'bt{i}.tcls'].numel()) for i in range(3)]
    info = (f'{desc}; nc={nc} bs={bs} nt={len(targets)} label_smoothing={label_smoothing}; '
            f'matches per level {nmatch}; loss={float(loss):.9g}')
    return T, info


def main():
    torch.set_default_dtype(torch.float64)
    rs = np.random.RandomState(20240601)
    cases = [
        lambda: build_case(rs, '(0) ordinary: 12 random targets over both images', 3, 2,
                           random_targets(rs, 12, 3, [0, 1])),
        lambda: build_case(rs, '(1) edge cases: centres on cell borders and at exact/near .5 fractions, targets '
                           'within 1 cell of every border (> 1 guards), centres at x/y = 0 and 1 (gi/gj clamps), '
                           'tiny box rejected everywhere, small box (level-0 anchor 0 only), huge boxes rejected by anchor_t at '
                           'level-0 anchors 0-1, '
                           'two targets in the same cell+anchor (duplicate index, last write wins)', 3, 2,
                           edge_targets()),
        lambda: build_case(rs, '(2) nc=1: no class loss (lcls = 0)', 1, 2, random_targets(rs, 8, 1, [0, 1])),
        lambda: build_case(rs, '(3) nc=80, bs=1, a few targets', 80, 1, random_targets(rs, 5, 80, [0])),
        lambda: build_case(rs, '(4) bs=2, all targets in image 0 (image 1 has none)', 3, 2,
                           random_targets(rs, 6, 3, [0])),
        lambda: build_case(rs, '(5) label_smoothing=0.1 (cp=0.95, cn=0.05)', 3, 2, random_targets(rs, 10, 3, [0, 1]),
                           label_smoothing=0.1),
        lambda: build_case(rs, '(6) no targets at all (nt=0): only the objectness loss', 3, 2, []),
    ]
    tensors, meta = {}, {}
    for k, make in enumerate(cases):
        T, info = make()
        for name, v in T.items():
            tensors[f'case{k}.{name}'] = v.contiguous()
        meta[f'case{k}'] = info
        print(f'case{k}: {info}')
        print(f'   hyp = {T["hyp"].tolist()}  items = {[float(T[x]) for x in ("lbox", "lobj", "lcls")]}')
    meta.update({
        'cases': str(len(cases)),
        'generator': 'tools/golden/make_loss_fixtures.py',
        'oracle': f'yolov5 {yolov5.__version__} (Ultralytics YOLOv5 v7.0) utils/loss.py ComputeLoss; '
                  f'torch {torch.__version__}; float64',
        'input_hw': json.dumps([H, W]),
        'grids': json.dumps(GRIDS),
        'strides': json.dumps([8, 16, 32]),
        'hyp_order': json.dumps(HYP_KEYS),
        'hyp_scaling': "train.py: box *= 3/nl; cls *= nc/80*3/nl; obj *= (imgsz/640)**2*3/nl with nl=3, imgsz=96, "
                       "from config/hyps/hyp.scratch-low.yaml",
        'balance': json.dumps([4.0, 1.0, 0.4]),
        'notes': 'p{i} are f32 values used as f64; loss/grads/build_targets computed in f64. bt{i}.* are in '
                 "build_targets' own order (offset-major, then anchor, then target), duplicates included; "
                 'tobj[b,a,gj,gi] = iou.detach().clamp(0) with duplicates: last row wins (CPU index_put).',
    })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=meta)
    canonicalize_header(OUT)
    print(f'wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size} bytes, {len(tensors)} tensors)')


if __name__ == '__main__':
    main()
