#!/usr/bin/env python3
"""Independent re-check of the golden model fixtures written by make_model_fixtures.py.

For each tests/fixtures/model_*.safetensors: rebuild the model with yolov5 from the yaml stored in the
fixture's metadata (nc from the metadata), load the stored F16 weights (strictly: every state_dict tensor
except num_batches_tracked must be present), recompute the train-mode forward (every layer output and the
Detect maps), the loss from the stored lossw.*, the gradients, the BN running stats after the forward and the
eval-mode decoded output, and assert they match what is stored. Catches mis-stored / mis-named fixtures.

  /root/y5venv/bin/python tools/golden/check_model_fixtures.py [fixture.safetensors ...]

ECA is defined here again on purpose (not imported from make_model_fixtures.py) so a wrong definition there
would show up as a mismatch.
"""

import hashlib
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

try:
    import pkg_resources  # noqa: F401
except ImportError:  # setuptools >= 81 dropped it; yolov5 7.0.13 only needs parse_version
    from packaging.version import parse as _pv
    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=_pv)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import yaml  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from safetensors import safe_open  # noqa: E402


class ECA(nn.Module):
    def __init__(self, c2=None, k_size=3):  # yaml args [c2] or [c2, k]; c2 ignored
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        b, c = x.shape[:2]
        s = x.mean(dim=(2, 3)).view(b, 1, c)  # GAP, channels as a 1-D sequence
        return x * self.sigmoid(self.conv(s)).view(b, c, 1, 1)


yolo.ECA = ECA


def compare(name, got, ref, rtol=1e-4, atol_rel=1e-5):
    got, ref = got.detach().double(), ref.double()
    assert got.shape == ref.shape, f'{name}: shape {tuple(got.shape)} != stored {tuple(ref.shape)}'
    d = (got - ref).abs().max().item() if ref.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    ok = torch.allclose(got, ref, rtol=rtol, atol=atol_rel * max(scale, 1e-30))
    assert ok, f'{name}: max |diff| {d:.3g} (max |ref| {scale:.3g})'
    return d, scale


def check(path):
    print(f'== {path}')
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata()
        T = {k: f.get_tensor(k) for k in f.keys()}
    nc = int(meta['nc'])
    cfg_text = meta['yaml_text']
    cfg_file = REPO / meta['yaml']
    if cfg_file.exists() and hashlib.sha256(cfg_file.read_bytes()).hexdigest() != meta['yaml_sha256']:
        print(f'  WARNING: {meta["yaml"]} changed since the fixture was made (using the stored yaml)')
    torch.manual_seed(123)  # irrelevant: every parameter/buffer is overwritten below
    model = yolo.Model(yaml.safe_load(cfg_text), ch=3, nc=nc).float()  # weights load as f32, then f64 below

    # weights: exactly the state_dict keys (minus num_batches_tracked), stored as F16
    sd_keys = [k for k in model.state_dict() if not k.endswith('num_batches_tracked')]
    weight_keys = [k for k in T if k.startswith('model.')]
    assert sorted(sd_keys) == sorted(weight_keys), (set(sd_keys) ^ set(weight_keys))
    assert all(T[k].dtype == torch.float16 for k in weight_keys)
    missing, unexpected = model.load_state_dict({k: T[k].float() for k in weight_keys}, strict=False)
    assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing), (missing, unexpected)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (1e-3, 0.03), (m.eps, m.momentum)

    model = model.double()  # the fixtures hold float64 results (make_model_fixtures.py)
    x = T['input'].double()
    assert list(x.shape) == eval(meta['input_shape'])
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: outs.__setitem__(
        i, [o.detach().clone() for o in out] if isinstance(out, list) else out.detach().clone()))
        for i, m in enumerate(model.model)]
    model.train()
    p = model(x)
    for h in hooks:
        h.remove()
    n = 0
    worst = 0.0
    last = len(model.model) - 1
    for i in range(last):
        d, s = compare(f'out.layer.{i}', outs[i], T[f'out.layer.{i}'])
        worst, n = max(worst, d / max(s, 1e-30)), n + 1
    for j in range(len(p)):
        d, s = compare(f'out.detect.{j}', outs[last][j], T[f'out.detect.{j}'])
        worst, n = max(worst, d / max(s, 1e-30)), n + 1
    assert not any(k.startswith('out.layer.') and int(k.split('.')[2]) >= last for k in T)

    # loss: recomputed from the stored tensors alone (f64) and from the live forward (f32)
    L64 = sum((T[f'lossw.{j}'].double() * T[f'out.detect.{j}'].double()).sum() for j in range(len(p)))
    L = sum((T[f'lossw.{j}'] * pj).sum() for j, pj in enumerate(p))
    stored = T['loss'].item()
    assert T['loss'].dtype == torch.float64 and T['loss'].shape == (1,)
    assert abs(L64.item() - stored) <= 1e-4 * max(1.0, abs(stored)), (L64.item(), stored)
    assert abs(L.item() - stored) <= 1e-4 * max(1.0, abs(stored)), (L.item(), stored)
    L.backward()
    for name, prm in model.named_parameters():
        d, s = compare(f'grad.{name}', prm.grad, T[f'grad.{name}'], rtol=1e-3, atol_rel=1e-4)
        worst, n = max(worst, d / max(s, 1e-30)), n + 1
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            for b in ('running_mean', 'running_var'):
                compare(f'after.{name}.{b}', getattr(m, b), T[f'after.{name}.{b}'])
                n += 1
    model.eval()
    with torch.no_grad():
        dec = model(x)[0]
    compare('out.decoded', dec, T['out.decoded'])
    compare('stride', model.stride, T['stride'], rtol=0, atol_rel=0)
    grads = sum(k.startswith('grad.') for k in T)
    assert grads == sum(1 for _ in model.parameters())
    print(f'  OK: {len(T)} tensors, {n + 2} compared; loss stored {stored:.9g}, recomputed {L.item():.9g} '
          f'(f64 from stored maps {L64.item():.9g}); worst max|diff|/max|ref| over layers+grads {worst:.2g}')


def main():
    paths = [Path(a) for a in sys.argv[1:]] or sorted((REPO / 'tests' / 'fixtures').glob('model_*.safetensors'))
    assert paths, 'no fixtures found'
    for p in paths:
        check(p)
    print('all fixtures OK')


if __name__ == '__main__':
    main()
