#!/usr/bin/env python3
"""Golden model fixtures for y5, computed with Ultralytics YOLOv5 v7.0 (PyPI `yolov5` 7.0.13) on the CPU.

Writes (paths relative to the repository root):
  tests/fixtures/model_yolov5n.safetensors      yolov5n,     nc=80, from config/models/yolov5n.yaml, seed 0
  tests/fixtures/model_yolov5n_eca.safetensors  yolov5n-eca, nc=1,  from config/models/yolov5n-eca.yaml, seed 1

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /root/y5venv/bin/python tools/golden/make_model_fixtures.py
Such a virtualenv can be created with:
  python3 -m venv V && V/bin/pip install yolov5==7.0.13 torch safetensors
(`python tools/golden/make_model_fixtures.py --summary` also prints the parameter counts / GFLOPs of
yolov5n, yolov5s and yolov5n-eca for nc=1 and nc=80.)

The fixture files are committed to the repository, so CI and the C++ tests never need Python or torch.
tools/golden/check_model_fixtures.py reloads them and re-verifies them against torch.

Procedure per fixture (also stored in the safetensors __metadata__):
  build    torch.manual_seed(seed); yolov5.models.yolo.Model(yaml, ch=3, nc=nc). YOLOv5's own init is kept
           (PyTorch default conv init, Detect _initialize_biases, initialize_weights: BN eps=1e-3 momentum=0.03).
           Then, from torch.Generator().manual_seed(1000 + seed): every BatchNorm2d gets weight U(0.5,1.5),
           bias U(-0.2,0.2), running_mean U(-0.1,0.1), running_var U(0.5,1.5); every ECA conv weight U(-1,1);
           finally EVERY floating state_dict tensor is rounded to float16 and back (so F16 storage is exact).
           Input: 2x3x64x96, U(0,1) from the same generator, rounded to f16 and back.
  (a) state_dict before any forward: every floating tensor (parameters, BN buffers, Detect anchors) as F16
      under its PyTorch state_dict name (num_batches_tracked skipped). Input as `input` (F16, exact).
  (b) from here on the model and input are float64 (model.double()), results stored as F32;
      model.train(); one forward; every top-level layer output model.model[i] as `out.layer.{i}` (F32);
      the Detect output (a list in training mode) as `out.detect.{j}`, shape (bs, na=3, ny, nx, 5+nc).
  (c) lossw.{j} = U(-1,1) of the Detect map shapes (same generator, F32);
      L = sum_j sum(lossw.j * out.detect.j) in f64; L.backward(); `loss` = L (F64, shape [1]);
      `grad.{param name}` = every parameter's .grad (F32).
  (d) `after.{name}` = every BN running_mean / running_var after that training forward (F32).
  (e) model.eval(); torch.no_grad() forward of the same input: decoded inference output (bs, N, 5+nc)
      as `out.decoded` (F32), using the running stats from (d); `stride` = Detect strides (F32).
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / 'tests' / 'fixtures'
MODELS = REPO / 'config' / 'models'

BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # what yolov5's initialize_weights sets
INPUT_SHAPE = (2, 3, 64, 96)  # non-square on purpose; small to keep the fixtures small



from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()
os.environ.setdefault('YOLOv5_VERBOSE', 'True')

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import yolov5  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


class ECA(nn.Module):
    """ECA as the widely copied YOLO seed code writes it (k_size=3, sigmoid gate, no-bias 1-D conv).

    The seed's signature is ECA(c1, c2, k_size=3) and ignores c1/c2. yolov5's parse_model does not know ECA,
    so it takes the generic branch: it calls ECA(*args) with the yaml args unchanged ([c2] or [c2, k]) and
    sets c2 = ch[f]. Hence this signature: c2 is accepted and ignored, k_size is the optional 2nd arg.
    (The seed signature would raise "missing 1 required positional argument: 'c2'" for args [256].)
    """

    def __init__(self, c2=None, k_size=3):
        super().__init__()
        if not k_size:
            raise NotImplementedError('k=0 (adaptive kernel) is not supported by the seed ECA')
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)  # (b, c, 1, 1)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)  # 1-D conv across channels
        y = self.sigmoid(y)
        return x * y.expand_as(x)



# parse_model resolves module names with eval() in yolov5.models.yolo's globals: make ECA visible there.
yolo.ECA = ECA


def build(yaml_name, nc, seed):
    torch.manual_seed(seed)
    model = yolo.Model(str(MODELS / yaml_name), ch=3, nc=nc)
    return model


def bn_settings(model):
    return sorted({(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)})


def randomize_and_round(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=gen))
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.2, 0.2, generator=gen))
                m.running_mean.copy_(torch.empty_like(m.running_mean).uniform_(-0.1, 0.1, generator=gen))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 1.5, generator=gen))
            elif isinstance(m, ECA):
                m.conv.weight.copy_(torch.empty_like(m.conv.weight).uniform_(-1.0, 1.0, generator=gen))
        for k, v in model.state_dict().items():  # references to the live tensors
            if v.is_floating_point():
                v.copy_(v.half().float())


def make_fixture(yaml_name, nc, seed, out_path):
    print(f'\n===== {yaml_name} nc={nc} seed={seed} -> {out_path.relative_to(REPO)}')
    model = build(yaml_name, nc, seed)
    model = model.float().cpu()
    bn = bn_settings(model)
    print(f'BatchNorm2d (eps, momentum) observed: {bn}')
    assert bn == [(BN_EPS, BN_MOMENTUM)], bn
    n_params = sum(p.numel() for p in model.parameters())
    print(f'parameters: {n_params}')

    gen = torch.Generator().manual_seed(1000 + seed)
    randomize_and_round(model, gen)
    x = torch.rand(INPUT_SHAPE, generator=gen).half().float()

    T = {}
    # (a) state_dict before any forward (F16, exact)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith('num_batches_tracked'):
            continue
        assert v.is_floating_point(), k
        h = v.detach().half()
        assert torch.equal(h.float(), v), f'{k} not exactly representable in f16'
        T[k] = h.contiguous()
    T['input'] = x.half().contiguous()

    # Everything below runs in float64: with train-mode BatchNorm over the few values per channel that the
    # deep layers have at this input size, float32 rounding is amplified to ~1e-4 relative by layer 23,
    # in torch as in y5, so float32 results could not tell a bug from noise. The exact (f64) values are
    # stored as F32 (6e-8 relative rounding); y5 compares its f64 path tightly and its f32 path loosely.
    model = model.double()
    x = x.double()

    # (b) train-mode forward with hooks on every top-level layer
    detect = model.model[-1]
    outs = {}
    hooks = []
    for i, m in enumerate(model.model):
        def hook(mod, inp, out, i=i):
            outs[i] = [o.detach().clone() for o in out] if isinstance(out, (list, tuple)) else out.detach().clone()
        hooks.append(m.register_forward_hook(hook))
    model.train()
    model.zero_grad(set_to_none=True)
    p = model(x)
    for h in hooks:
        h.remove()
    assert isinstance(p, list) and len(p) == detect.nl
    for i, o in outs.items():
        if i == len(model.model) - 1:
            for j, oj in enumerate(o):
                assert oj.shape == (INPUT_SHAPE[0], detect.na, oj.shape[2], oj.shape[3], 5 + nc), oj.shape
                T[f'out.detect.{j}'] = oj.float().contiguous()
        else:
            T[f'out.layer.{i}'] = o.float().contiguous()

    # (c) fixed scalar loss and gradients
    L = torch.zeros((), dtype=torch.float64)
    for j, pj in enumerate(p):
        w = torch.empty(pj.shape, dtype=torch.float32).uniform_(-1.0, 1.0, generator=gen)
        T[f'lossw.{j}'] = w.contiguous()
        L = L + (w.double() * pj).sum()
    L.backward()
    T['loss'] = torch.tensor([L.item()], dtype=torch.float64)
    for name, prm in model.named_parameters():
        assert prm.grad is not None, f'no grad for {name}'
        T[f'grad.{name}'] = prm.grad.detach().float().contiguous()

    # (d) BN running stats after the training forward
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            T[f'after.{mname}.running_mean'] = m.running_mean.detach().float().clone()
            T[f'after.{mname}.running_var'] = m.running_var.detach().float().clone()

    # (e) eval-mode decoded output
    model.eval()
    with torch.no_grad():
        dec = model(x)[0]
    assert dec.shape[0] == INPUT_SHAPE[0] and dec.shape[2] == 5 + nc, dec.shape
    T['out.decoded'] = dec.float().contiguous()
    T['stride'] = model.stride.detach().float().clone()

    yaml_path = MODELS / yaml_name
    yaml_text = yaml_path.read_text(encoding='utf-8')
    meta = {
        'format': 'y5 golden model fixture v1',
        'yolov5_version': yolov5.__version__,
        'torch_version': torch.__version__,
        'compute_dtype': 'float64 after (a); results stored as F32',
        'yaml': f'config/models/{yaml_name}',
        'yaml_sha256': hashlib.sha256(yaml_text.encode('utf-8')).hexdigest(),
        'yaml_text': yaml_text,
        'nc': str(nc),
        'seed': str(seed),
        'generator_seed': str(1000 + seed),
        'input_shape': json.dumps(list(INPUT_SHAPE)),
        'bn_eps': repr(BN_EPS),
        'bn_momentum': repr(BN_MOMENTUM),
        'num_layers': str(len(model.model)),
        'num_parameters': str(n_params),
        'procedure': (
            'build: torch.manual_seed(seed); yolov5.models.yolo.Model(yaml, ch=3, nc=nc) (yolov5 init kept); '
            'Generator(seed 1000+seed): BN weight U(0.5,1.5), bias U(-0.2,0.2), running_mean U(-0.1,0.1), '
            'running_var U(0.5,1.5), ECA conv weight U(-1,1); every floating state_dict tensor rounded to f16; '
            'input U(0,1) rounded to f16 (stored as input, F16). '
            '(a) state_dict before any forward as F16 under PyTorch names (num_batches_tracked skipped); '
            '(b) model.train(), one forward; out.layer.{i} = model.model[i] output, out.detect.{j} = Detect '
            'maps (bs,3,ny,nx,5+nc); (c) lossw.{j} ~ U(-1,1); loss = sum_j sum(lossw.j*out.detect.j) (f32 '
            'computed, stored F64); backward; grad.{param} = .grad; (d) after.{bn}.running_mean/var after the '
            'train forward; (e) model.eval(), no_grad forward: out.decoded (bs,N,5+nc); stride.'),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(T, str(out_path), metadata=meta)
    canonicalize_header(out_path)

    # size breakdown
    cats = {}
    for k, v in T.items():
        c = k.split('.')[0] if k.split('.')[0] in ('out', 'grad', 'after', 'lossw') else (
            'input/loss/stride' if k in ('input', 'loss', 'stride') else 'weights(F16)')
        if c == 'out':
            c = 'out.' + k.split('.')[1]
        cats[c] = cats.get(c, 0) + v.numel() * v.element_size()
    print(f'loss = {L.item():.9g}; decoded shape {tuple(dec.shape)}; stride {model.stride.tolist()}')
    print(f'{len(T)} tensors; bytes by category: ' + ', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in sorted(cats.items())))
    print(f'file size: {out_path.stat().st_size} bytes ({out_path.stat().st_size / 1e6:.2f} MB)')
    return out_path.stat().st_size


def summary():
    for yaml_name in ('yolov5n.yaml', 'yolov5s.yaml', 'yolov5n-eca.yaml'):
        for nc in (80, 1):
            print(f'\n----- {yaml_name} nc={nc}')
            m = build(yaml_name, nc, 0)  # Model() logs the "summary: layers, parameters, gradients, GFLOPs" line
            print(f'{yaml_name} nc={nc}: {sum(p.numel() for p in m.parameters())} parameters')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--summary', action='store_true', help='only print model summaries (no fixtures written)')
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    print(f'yolov5 {yolov5.__version__}, torch {torch.__version__}')
    if args.summary:
        summary()
        return
    total = 0
    total += make_fixture('yolov5n.yaml', 80, 0, FIXTURES / 'model_yolov5n.safetensors')
    total += make_fixture('yolov5n-eca.yaml', 1, 1, FIXTURES / 'model_yolov5n_eca.safetensors')
    print(f'\nall fixtures: {total} bytes ({total / 1e6:.2f} MB)')


if __name__ == '__main__':
    main()
