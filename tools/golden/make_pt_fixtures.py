#!/usr/bin/env python3
"""Fixtures for y5's YOLOv5 .pt reader (engine/core/torch_pt.h, Model::from_weights), made with torch and the
`yolov5` package (7.0.13).

Writes (paths relative to the repository root):
  tests/fixtures/pt_last_tiny.pt          a train.py-style last.pt: a tiny DetectionModel (yolov5n.yaml with
                                          width_multiple 0.0625 and `anchors: 3`, nc=2, names {0: 'cat', 1: 'dog'}),
                                          saved as train.py's ckpt dict: epoch, best_fitness (a numpy array, as
                                          train.py's fitness()), model and ema (fp16), updates, optimizer state
                                          (SGD with momentum buffers), opt (an argparse Namespace holding a
                                          pathlib path), git, date.
  tests/fixtures/pt_sums.safetensors      per state_dict tensor (num_batches_tracked left out), F64 [sum, sum of
                                          squares] of its values in float64:
                                            yolov5n.<name>     of ../shared/weights/yolov5n.pt's model
                                            last.<name>        of pt_last_tiny.pt's ema (what y5 must load)
                                            last_model.<name>  of pt_last_tiny.pt's model (what y5 must not load)
                                          and yolov5n.stride (F32), metadata yolov5n_nc, yolov5n_names, last_nc,
                                          last_names (names one per line), yolov5n_sha256.

Regenerate (from the repository root; CPU only, nothing downloaded):
  /work/venv-torch/bin/python tools/golden/make_pt_fixtures.py
"""

import argparse
import hashlib
import pathlib
import sys
from copy import deepcopy
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import torch  # noqa: E402
import yaml  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402  (also puts yolov5's folder on sys.path: `models.yolo` for torch.load)
from safetensors.torch import save_file  # noqa: E402
from yolov5.utils.autoanchor import check_anchor_order  # noqa: E402
from yolov5.utils.torch_utils import ModelEMA, smart_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / 'tests' / 'fixtures'
WEIGHTS = REPO.parent / 'shared' / 'weights' / 'yolov5n.pt'


def sums(model, prefix, out):
    for k, v in model.state_dict().items():
        if k.endswith('num_batches_tracked'):
            continue
        assert v.is_floating_point(), k
        d = v.double()
        out[f'{prefix}.{k}'] = torch.tensor([d.sum().item(), (d * d).sum().item()], dtype=torch.float64)


def official(out, meta):
    raw = WEIGHTS.read_bytes()
    ck = torch.load(WEIGHTS, map_location='cpu', weights_only=False)
    m = ck['model']
    sums(m, 'yolov5n', out)
    out['yolov5n.stride'] = m.stride.float().clone()
    meta['yolov5n_nc'] = str(m.nc)
    meta['yolov5n_names'] = '\n'.join(m.names if isinstance(m.names, list) else m.names.values())
    meta['yolov5n_sha256'] = hashlib.sha256(raw).hexdigest()
    print(f'{WEIGHTS}: {type(m).__module__}.{type(m).__name__}, {len(m.state_dict())} state_dict entries, nc={m.nc}')


def tiny_last(out, meta):
    torch.manual_seed(0)
    cfg = yaml.safe_load((REPO / 'config' / 'models' / 'yolov5n.yaml').read_text())
    cfg['width_multiple'] = 0.0625  # channels 8..64: a small file
    cfg['anchors'] = 3              # anchors from AutoAnchor, as yolov5-p2.yaml's `anchors: 3`
    model = yolo.DetectionModel(cfg, ch=3, nc=2)
    det = model.model[-1]
    # What AutoAnchor (check_anchors) writes: new anchors in pixels, stored in grid units, in stride order.
    px = torch.tensor([[12, 15, 20, 33, 35, 26], [31, 60, 64, 46, 58, 121], [118, 92, 160, 196, 370, 330.5]])
    det.anchors[:] = px.view(3, -1, 2) / det.stride.view(-1, 1, 1)
    check_anchor_order(det)
    model.names = {0: 'cat', 1: 'dog'}  # train.py: check_dataset turns a names list into {index: name}
    model.nc = 2
    model.hyp = yaml.safe_load((REPO / 'config' / 'hyps' / 'hyp.scratch-low.yaml').read_text())

    # A few SGD steps (momentum buffers in the optimizer state), the EMA a step behind: ema and model differ.
    optimizer = smart_optimizer(model, 'SGD', 0.01, 0.937, 5e-4)
    ema = ModelEMA(model)
    x = torch.rand(2, 3, 64, 64)
    for step in range(3):
        model.train()
        loss = sum(p.float().pow(2).mean() for p in model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step < 2:
            ema.update(model)

    opt = argparse.Namespace(weights='yolov5n.pt', cfg='yolov5n-tiny.yaml', data='coco128.yaml', epochs=3,
                             batch_size=2, imgsz=64, save_dir=pathlib.PurePosixPath('runs/train/exp'))
    ckpt = {
        'epoch': 2,
        'best_fitness': np.array([0.0123]),
        'model': deepcopy(model).half(),
        'ema': deepcopy(ema.ema).half(),
        'updates': ema.updates,
        'optimizer': optimizer.state_dict(),
        'opt': opt,
        'git': {'remote': 'https://github.com/ultralytics/yolov5', 'branch': 'master', 'commit': 'fixture'},
        'date': '2026-01-01T00:00:00'}
    path = FIXTURES / 'pt_last_tiny.pt'
    torch.save(ckpt, path)

    back = torch.load(path, map_location='cpu', weights_only=False)  # what was written, as torch reads it
    sums(back['ema'], 'last', out)
    sums(back['model'], 'last_model', out)
    meta['last_nc'] = '2'
    meta['last_names'] = 'cat\ndog'
    w = 'model.0.conv.weight'
    assert out[f'last.{w}'][1] != out[f'last_model.{w}'][1], 'ema and model should differ'
    print(f'{path.relative_to(REPO)}: {path.stat().st_size} bytes, '
          f'{sum(p.numel() for p in model.parameters())} parameters, class {type(model).__module__}')


def main():
    out, meta = {}, {}
    official(out, meta)
    tiny_last(out, meta)
    path = FIXTURES / 'pt_sums.safetensors'
    save_file(out, str(path), metadata=meta)
    canonicalize_header(path)
    print(f'{path.relative_to(REPO)}: {len(out)} tensors, {path.stat().st_size} bytes')


if __name__ == '__main__':
    main()
