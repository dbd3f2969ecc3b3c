#!/usr/bin/env python3
"""Independent re-check of tests/fixtures/{loss,nms,metrics}.safetensors (written by make_loss_fixtures.py and
make_nms_metrics_fixtures.py) against Ultralytics YOLOv5 v7.0 (PyPI `yolov5` 7.0.13), CPU only:

  /root/y5venv/bin/python tools/golden/check_loss_nms_metrics_fixtures.py

loss:    rebuilds yolov5n (float64) for each case's nc, checks the stored hyp against train.py's scaling of
         config/hyps/hyp.scratch-low.yaml and the anchors against Detect.anchors, reruns ComputeLoss on the
         stored p/targets and compares loss, loss items, gradients (rel. 1e-12) and build_targets (exact). Also
         checks the quirk the C++ must copy: tobj[b, a, gj, gi] = iou with duplicate indices keeps the LAST write.
nms:     reruns yolov5.utils.general.non_max_suppression on every stored pred/params/classes; outputs must be
         bitwise equal. Also prints how torch orders equal scores (argsort) and checks truncation cases truncate.
metrics: replays val.py's loop on the stored det/lab: process_batch (exact), ConfusionMatrix (exact),
         ap_per_class / summary / fitness (abs 1e-12).
Exits non-zero on any mismatch. The fixtures are committed; this is only needed when regenerating them.
"""

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / 'tests' / 'fixtures'

try:
    import pkg_resources  # noqa: F401
except ImportError:  # setuptools >= 81 dropped it; yolov5 7.0.13 only needs parse_version
    from packaging.version import parse as _pv
    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=_pv)

import numpy as np  # noqa: E402

if not hasattr(np, 'trapz'):  # numpy >= 2.4 removed np.trapz (renamed np.trapezoid); yolov5's compute_ap uses it
    np.trapz = np.trapezoid

import torch  # noqa: E402
import yaml  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from safetensors import safe_open  # noqa: E402
from yolov5.utils.general import non_max_suppression  # noqa: E402
from yolov5.utils.loss import ComputeLoss  # noqa: E402
from yolov5.utils.metrics import ConfusionMatrix, ap_per_class, bbox_iou, fitness  # noqa: E402
from yolov5.val import process_batch  # noqa: E402

FAILS = []


def fail(msg):
    FAILS.append(msg)
    print('FAIL:', msg)


def load(path):
    with safe_open(str(path), 'pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def close(name, got, want, rtol=1e-12, atol=0.0):
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    if got.shape != want.shape:
        return fail(f'{name}: shape {tuple(got.shape)} != {tuple(want.shape)}')
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        return fail(f'{name}: max abs diff {(got - want).abs().max().item():.3e}')


def exact(name, got, want):
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape or got.dtype != want.dtype or not torch.equal(got, want):
        fail(f'{name}: not identical (shape {tuple(got.shape)} vs {tuple(want.shape)}, {got.dtype} vs {want.dtype})')


# ------------------------------------------------------------------------------------------------------------ loss
def check_loss():
    T, meta = load(FIX / 'loss.safetensors')
    K = int(meta['cases'])
    print(f'loss.safetensors: {K} cases')
    torch.set_default_dtype(torch.float64)
    base = yaml.safe_load((REPO / 'config' / 'hyps' / 'hyp.scratch-low.yaml').read_text())
    models = {}
    dup_seen = False
    for k in range(K):
        c = f'case{k}.'
        p32 = [T[c + f'p{i}'] for i in range(3)]
        nc = p32[0].shape[-1] - 5
        hv = T[c + 'hyp'].tolist()
        keys = ['box', 'obj', 'cls', 'anchor_t', 'cls_pw', 'obj_pw', 'label_smoothing', 'fl_gamma']
        hyp = dict(zip(keys, hv))
        nl, imgsz = 3, 96
        want_h = [base['box'] * (3 / nl), base['obj'] * ((imgsz / 640) ** 2 * 3 / nl),
                  base['cls'] * (nc / 80 * 3 / nl), base['anchor_t'], base['cls_pw'], base['obj_pw']]
        if hv[:6] != want_h or hv[7] != 0.0 or hv[6] not in (0.0, 0.1):
            fail(f'{c}hyp {hv} != train.py scaling {want_h}')
        if nc not in models:
            torch.manual_seed(0)
            models[nc] = yolo.Model(str(REPO / 'config' / 'models' / 'yolov5n.yaml'), ch=3, nc=nc).double()
        model = models[nc]
        model.hyp = hyp
        cl = ComputeLoss(model)
        exact(c + 'anchors', T[c + 'anchors'].double(), model.model[-1].anchors)
        p = [x.double().requires_grad_(True) for x in p32]
        tg = T[c + 'targets'].double()
        loss, items = cl(p, tg)
        loss.backward()
        close(c + 'loss', loss.detach().reshape(1), T[c + 'loss'])
        for j, n in enumerate(('lbox', 'lobj', 'lcls')):
            close(c + n, items[j:j + 1], T[c + n], atol=1e-15)
        for i in range(3):
            close(c + f'grad.p{i}', p[i].grad, T[c + f'grad.p{i}'], atol=1e-15)
        tcls, tbox, indices, anch = cl.build_targets(p, tg)
        for i in range(3):
            exact(c + f'bt{i}.indices', torch.stack(indices[i], 0), T[c + f'bt{i}.indices'])
            exact(c + f'bt{i}.tcls', tcls[i], T[c + f'bt{i}.tcls'])
            exact(c + f'bt{i}.tbox', tbox[i], T[c + f'bt{i}.tbox'])
            exact(c + f'bt{i}.anch', anch[i], T[c + f'bt{i}.anch'])
            # quirk: duplicate (b, a, gj, gi) -> the last write wins in tobj (as CPU index_put_ does here)
            b, a, gj, gi = indices[i]
            if len(b):
                with torch.no_grad():
                    pxy, pwh, _, _ = p[i][b, a, gj, gi].split((2, 2, 1, nc), 1)
                    pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anch[i]), 1)
                    iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1).clamp(0)
                    tobj = torch.zeros(p[i].shape[:4])
                    tobj[b, a, gj, gi] = iou
                    seq = torch.zeros(p[i].shape[:4])
                    for n in range(len(b)):
                        seq[b[n], a[n], gj[n], gi[n]] = iou[n]
                if not torch.equal(tobj, seq):
                    fail(f'{c}level {i}: tobj index_put with duplicates is not last-write-wins')
                keys_ = list(zip(b.tolist(), a.tolist(), gj.tolist(), gi.tolist()))
                groups = {}
                for n, kk in enumerate(keys_):
                    groups.setdefault(kk, set()).add(round(float(iou[n]), 12))
                dup_seen |= any(len(v) > 1 for v in groups.values())
        print(f'  case{k}: nc={nc} loss={float(loss):.12g} items={items.tolist()} '
              f'matches={[len(x) for x in tcls]}')
    if not dup_seen:
        fail('no case has duplicate build_targets indices with different IoUs (last-write-wins untested)')
    torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------------------------------------------- nms
def check_nms():
    T, meta = load(FIX / 'nms.safetensors')
    K = int(meta['cases'])
    print(f'nms.safetensors: {K} cases')
    for k in range(K):
        c = f'case{k}.'
        pred = T[c + 'pred']
        conf, iou, agn, ml, max_det = T[c + 'params'].tolist()
        classes = T[c + 'classes'].tolist() or None
        out = non_max_suppression(pred.clone(), conf, iou, classes=classes, agnostic=bool(agn), multi_label=bool(ml),
                                  max_det=int(max_det))
        for b, o in enumerate(out):
            exact(c + f'out{b}', o, T[c + f'out{b}'])
        full = non_max_suppression(pred.clone(), conf, iou, classes=classes, agnostic=bool(agn),
                                   multi_label=bool(ml), max_det=10 ** 6)
        n_full = [len(o) for o in full]
        trunc = any(n > max_det for n in n_full)
        print(f'  case{k}: params={T[c + "params"].tolist()} classes={classes} rows={[len(o) for o in out]} '
              f'(untruncated {n_full}{", TRUNCATED by max_det" if trunc else ""})')
        if 'max_det' in meta[f'case{k}'] and 'truncat' in meta[f'case{k}'] and not trunc:
            fail(f'{c}: case says max_det truncates but it does not')

    # how ties are ordered (informational)
    for n in (16, 17):
        s = torch.full((n,), 0.5)
        o = s.argsort(descending=True).tolist()
        print(f'  torch CPU argsort(descending) of {n} equal scores: {o}{"  (index order)" if o == list(range(n)) else ""}')


# --------------------------------------------------------------------------------------------------------- metrics
def check_metrics():
    T, meta = load(FIX / 'metrics.safetensors')
    K = int(meta['cases'])
    print(f'metrics.safetensors: {K} cases')
    iouv = torch.linspace(0.5, 0.95, 10)
    exact('iouv', iouv, T['iouv'])
    for k in range(K):
        c = f'case{k}.'
        nimg, nc = int(T[c + 'nimg']), int(T[c + 'nc'])
        cm = ConfusionMatrix(nc=nc, conf=0.25, iou_thres=0.45)
        stats = []
        for j in range(nimg):
            pred, labels = T[c + f'det{j}'], T[c + f'lab{j}']
            if len(pred) and not (pred[:-1, 4] >= pred[1:, 4]).all():
                fail(f'{c}det{j} not sorted by conf')
            nl, npr = labels.shape[0], pred.shape[0]
            correct = torch.zeros(npr, 10, dtype=torch.bool)
            if npr == 0:
                if nl:
                    stats.append((correct, *torch.zeros((2, 0)), labels[:, 0]))
                    cm.process_batch(detections=None, labels=labels[:, 0])
            else:
                if nl:
                    correct = process_batch(pred, labels, iouv)
                    cm.process_batch(pred, labels)
                stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
            exact(c + f'correct{j}', correct.to(torch.uint8), T[c + f'correct{j}'])
        stats = [torch.cat(x, 0).numpy() for x in zip(*stats)]
        tp, fp, p, r, f1, ap, ap_class = ap_per_class(*stats, plot=False, names={i: str(i) for i in range(nc)})
        for n, v in (('tp', tp), ('fp', fp), ('p', p), ('r', r), ('f1', f1), ('ap', ap)):
            close(c + n, torch.from_numpy(np.asarray(v, np.float64)), T[c + n], rtol=0, atol=1e-12)
        exact(c + 'ap_class', torch.from_numpy(ap_class.astype(np.int64)), T[c + 'ap_class'])
        mp, mr, map50, map_ = p.mean(), r.mean(), ap[:, 0].mean(), ap.mean(1).mean()
        close(c + 'summary', torch.tensor([mp, mr, map50, map_]), T[c + 'summary'], rtol=0, atol=1e-12)
        fi = fitness(np.array([mp, mr, map50, map_]).reshape(1, -1))
        close(c + 'fitness', torch.from_numpy(np.asarray(fi, np.float64)), T[c + 'fitness'], rtol=0, atol=1e-12)
        exact(c + 'confusion', torch.from_numpy(cm.matrix), T[c + 'confusion'])
        print(f'  case{k}: nimg={nimg} nc={nc} ap_class={ap_class.tolist()} '
              f'[mp mr map50 map]={np.round([mp, mr, map50, map_], 6).tolist()} fitness={float(fi[0]):.6f}')


def main():
    check_loss()
    check_nms()
    check_metrics()
    if FAILS:
        print(f'\n{len(FAILS)} FAILURE(S)')
        sys.exit(1)
    print('\nall loss / nms / metrics fixtures verified')


if __name__ == '__main__':
    main()
