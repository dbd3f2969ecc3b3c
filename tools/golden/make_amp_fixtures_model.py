#!/usr/bin/env python3
"""Golden mixed-precision (AMP) fixtures for y5's yolov5n and yolov5n-eca: the training forward and backward under
y5's autocast scheme (Ctx::autocast), with the model, weights, input and loss weights of the f32 model fixtures.

Writes (paths relative to the repository root):
  tests/fixtures/amp_model_yolov5n.safetensors      from tests/fixtures/model_yolov5n.safetensors     (nc=80, seed 0)
  tests/fixtures/amp_model_yolov5n_eca.safetensors  from tests/fixtures/model_yolov5n_eca.safetensors (nc=1,  seed 1)

Regenerate (from the repository root; CPU only; the f32 model fixtures must exist, see make_model_fixtures.py):
  V/bin/python tools/golden/make_amp_fixtures_model.py
with V a virtualenv holding torch, numpy, safetensors and yolov5==7.0.13 (the virtualenv make_model_fixtures.py
describes). The output is byte-reproducible. It prints, per tensor and per group (max and median), max |a - b| /
max |b| of: AMP (this fixture) vs f32 (the f32 fixture's f64 results); the same scheme run in float32 arithmetic vs
AMP; real torch.autocast vs AMP and vs f32. The float32-arithmetic column is the floor for y5, whose arithmetic
between roundings is f32: where f32 and f64 land on different sides of an f16 rounding boundary the stored values
differ by an ulp, and train-mode BatchNorm over the few values per channel of the deep layers amplifies those flips
until whole-model results differ about as much as AMP and f32 do (layer 0 and Detect's bias gradients excepted).

The model comes from make_model_fixtures.build (yolov5's Model from config/models/*.yaml, its ECA); its state_dict,
the input and the loss weights lossw.{j} are read from the f32 fixture, which the C++ test also reads them from
(this fixture holds only results).

EMULATED, not real torch.autocast. torch.autocast(device_type="cpu", dtype=torch.float16) does run yolov5n on the
CPU (this script runs it for the comparison printed), but its op coverage differs from y5's scheme: BatchNorm
stores bn(x) in f16 and SiLU rounds again (y5 fuses act(bn(x)) into one f16 rounding), ECA's mean, 1-D conv and
sigmoid each round to f16 (y5 computes the gate in f32 and rounds only x·gate), and its gradients round at other
points. Each of those is an fp16 rounding of the same size as the ones the comparison is about: real autocast's
layer 0 differs from y5's scheme in 23% of its elements (11127 of 49152 for yolov5n; the same scheme in f32
arithmetic: 111), and its whole-model results differ from the scheme as much as from f32 (printed), so as a
reference it would test torch's rounding points rather than y5's. So the scheme is emulated in torch instead: the
model runs in float64 and every value y5 stores in f16 is rounded to f16 (nearest even) where y5 stores it:
  forward   every nn.Conv2d's output (conv with float accumulation, f16 output; Detect's convs too); every Conv
            module's output act(bn(x)) (BatchNorm reads the f16 conv output, f32/f64 parameters and statistics,
            one rounding after the activation); Bottleneck's output (the residual sum); ECA's output x·gate (the
            gate from the unrounded mean). Upsample, Concat, MaxPool (SPPF) and Detect's view/permute move f16
            values exactly, so they need no rounding. The input and the weights are f16-exact already.
  backward  the gradient of each of those stored tensors is rounded to f16 when it is complete (torch sums all
            consumers' contributions first, y5 may round partial sums: a sub-ulp difference); each nn.Conv2d's
            input gradient dx is rounded as the conv stores it; every conv weight gradient (Detect's weights and
            biases included) is rounded to f16, as the f16 weight copy's gradient is, then kept as the f32 master
            gradient. BatchNorm's gamma/beta and ECA's weight get f32 gradients (f64 here, stored F32).
  loss      L = sum_j sum(lossw.j * maps_j) on the f16 maps read as f32/f64; its seed lossw.j arrives at the f16
            map rounded to f16 (y5: cast(map, F32) and the f32 seed; the cast's backward rounds it).

Tensors (F16 where the value is an f16 by construction, so exact; F32 otherwise):
  out.layer.0           F16  layer 0's output SiLU(BN(conv(x))) (2, 16, 32, 48): before any flip has cascaded
  out.detect.{j}        F16  Detect's maps (bs, 3, ny, nx, 5+nc) of the training forward
  loss                  F64  (1,) L
  grad.{param}          F16  conv weights and Detect biases (f16 gradients)
                        F32  BatchNorm weights/biases, ECA weights
  after.{bn}.running_mean / running_var   F32  BN running statistics after that training forward
Metadata: the scheme, why it is emulated, the source fixture and its sha256, rel_max_median (the printed groups'
max and median per column), layer0_flips_f32_arithmetic and layer0_flips_real_autocast.
"""

import hashlib
import json
import os
import warnings

import make_model_fixtures as mf  # shims pkg_resources, imports yolov5, registers ECA
from common import canonicalize_header

import torch
import torch.nn as nn
import yolov5
from yolov5.models.common import Bottleneck, Conv
from safetensors.torch import load_file, save_file

REPO = mf.REPO
FIXTURES = mf.FIXTURES
CASES = [('yolov5n.yaml', 80, 0, 'model_yolov5n.safetensors', 'amp_model_yolov5n.safetensors'),
         ('yolov5n-eca.yaml', 1, 1, 'model_yolov5n_eca.safetensors', 'amp_model_yolov5n_eca.safetensors')]


def f16(t):
    """Round to the nearest f16 (ties to even) and back, keeping the dtype."""
    return t.half().to(t.dtype)


class RoundF16(torch.autograd.Function):
    """A tensor y5 stores in f16: rounded in the forward, and its (complete) gradient rounded in the backward."""

    @staticmethod
    def forward(ctx, x):
        return f16(x)

    @staticmethod
    def backward(ctx, g):
        return f16(g)


def ulp_key(t):
    """f16 values as integers in value order (adjacent f16 values differ by 1): distances in f16 ulps."""
    b = t.half().view(torch.int16).int()
    return torch.where(b < 0, -(b & 0x7fff), b)


def rel(a, b):
    """max |a - b| / max |b| over a tensor: the C++ test's per-tensor relative error."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def build_from(yaml_name, nc, seed, F):
    """yolov5's model for the yaml with the f32 fixture's (f16-exact) state_dict."""
    model = mf.build(yaml_name, nc, seed).float()
    sd = model.state_dict()
    for k in sd:
        if not k.endswith('num_batches_tracked'):
            sd[k] = F[k].float()
    model.load_state_dict(sd)
    return model


def losses(maps, F, dtype):
    L = torch.zeros((), dtype=torch.float64)
    for j, pj in enumerate(maps):
        L = L + (F[f'lossw.{j}'].to(dtype) * pj.to(dtype)).sum()
    return L


def run_emulated(model, F, dtype=torch.float64):
    """y5's autocast scheme in `dtype` arithmetic with f16 roundings at its storage points (see the docstring).
    float64 makes the fixture; float32 measures how far the same scheme lands when its arithmetic is f32, as y5's is."""
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # dx stored f16 (the input is f16-exact already); the output stored f16
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: (RoundF16.apply(inp[0]),) + tuple(inp[1:])))
            hooks.append(m.register_forward_hook(lambda mod, inp, out: RoundF16.apply(out)))
        elif isinstance(m, (Conv, Bottleneck, mf.ECA)):  # act(bn(x)), the residual sum, x·gate
            hooks.append(m.register_forward_hook(lambda mod, inp, out: RoundF16.apply(out)))
    layer0 = []  # registered after the rounding hooks, so it sees the rounded output
    hooks.append(model.model[0].register_forward_hook(lambda mod, inp, out: layer0.append(out.detach())))
    model = model.to(dtype).train()
    model.zero_grad(set_to_none=True)
    maps = model(F['input'].to(dtype))
    for h in hooks:
        h.remove()
    L = losses(maps, F, dtype)
    L.backward()
    with torch.no_grad():  # the f16 weight copies' gradients: f16, then the f32 master gradient
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.grad.copy_(f16(m.weight.grad))
                if m.bias is not None:
                    m.bias.grad.copy_(f16(m.bias.grad))
    return maps, L, model, layer0[0]


def run_autocast(model, F):
    """Real torch.autocast(cpu, float16) on the f32 model, for comparison only."""
    model = model.float().train()
    model.zero_grad(set_to_none=True)
    layer0 = []
    hook = model.model[0].register_forward_hook(lambda mod, inp, out: layer0.append(out.detach()))
    with torch.autocast(device_type='cpu', dtype=torch.float16):
        maps = model(F['input'].float())
    hook.remove()
    L = losses(maps, F, torch.float64)
    L.backward()
    return maps, L, model, layer0[0]


def results(maps, L, model, layer0=None):
    R = {f'out.detect.{j}': m.detach() for j, m in enumerate(maps)}
    R['loss'] = torch.tensor([L.item()], dtype=torch.float64)
    for name, p in model.named_parameters():
        R[f'grad.{name}'] = p.grad.detach()
    for mname, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            R[f'after.{mname}.running_mean'] = m.running_mean.detach().clone()
            R[f'after.{mname}.running_var'] = m.running_var.detach().clone()
    if layer0 is not None:
        R['out.layer.0'] = layer0
    return R


def make_fixture(yaml_name, nc, seed, src_name, out_name):
    src = FIXTURES / src_name
    out_path = FIXTURES / out_name
    print(f'\n===== {yaml_name} nc={nc} seed={seed}: {src.relative_to(REPO)} -> {out_path.relative_to(REPO)}')
    F = load_file(str(src))
    model_ref = build_from(yaml_name, nc, seed, F)
    emu = results(*run_emulated(build_from(yaml_name, nc, seed, F), F))
    emu32 = results(*run_emulated(build_from(yaml_name, nc, seed, F), F, torch.float32))
    real = results(*run_autocast(build_from(yaml_name, nc, seed, F), F))

    # Maps, layer 0 and Conv2d parameter gradients are f16 values: stored F16 (asserted exact); the rest F32, loss F64.
    conv16 = {f'grad.{n}.{pn}' for n, m in model_ref.named_modules() if isinstance(m, nn.Conv2d)
              for pn, _ in m.named_parameters(recurse=False)}
    T = {}
    for k, v in emu.items():
        if k == 'loss':
            T[k] = v
        elif k.startswith('out.') or k in conv16:
            h = v.half()
            assert torch.equal(h.double(), v.double()), f'{k} is not f16-exact'
            T[k] = h.contiguous()
        else:
            T[k] = v.float().contiguous()

    # Per tensor, max |a - b| / max |b| of: AMP (this fixture) vs f32 (the f32 fixture's f64 results); the same
    # scheme in f32 arithmetic vs AMP (its rounding flips cascade through train-mode BatchNorm: the floor any f32
    # implementation such as y5 can reach); real torch.autocast vs AMP and vs f32.
    cols = ('AMP-f32', 'f32ar-AMP', 'real-AMP', 'real-f32')
    print(f'{"tensor":44s}' + ''.join(f'{c:>10s}' for c in cols))
    per_cat = {}
    for k in emu:
        ref = F.get(k)
        nan = float('nan')
        d = (rel(emu[k], ref) if ref is not None else nan, rel(emu32[k], emu[k]), rel(real[k], emu[k]),
             rel(real[k], ref) if ref is not None else nan)
        print(f'{k:44s}' + ''.join(f'{x:10.2e}' for x in d))
        per_cat.setdefault(k.split('.')[0], []).append(d)
    stats = {}
    for cat, rows in per_cat.items():
        cs = list(zip(*rows))
        stats[cat] = [(max(c), sorted(c)[len(c) // 2]) for c in cs]
        print(f'{cat + " max / median":44s}' + ''.join(f'{mx:10.2e}' for mx, _ in stats[cat]))
        print(f'{"":44s}' + ''.join(f'{md:10.2e}' for _, md in stats[cat]))
    def differing(t):
        ulps = (ulp_key(t) - ulp_key(emu['out.layer.0'])).abs()
        return f'{int((ulps > 0).sum())} of {ulps.numel()} elements, at most {int(ulps.max())} ulp'
    flips, real_flips = differing(emu32['out.layer.0']), differing(real['out.layer.0'])
    print(f'out.layer.0 differing from AMP: f32 arithmetic {flips}; real autocast {real_flips}')
    print(f'loss: AMP {emu["loss"].item():.9g}, f32 arithmetic {emu32["loss"].item():.9g}, '
          f'real autocast {real["loss"].item():.9g}, f32 {F["loss"].item():.9g}')

    meta = {
        'format': 'y5 golden AMP model fixture v1',
        'emulation': 'emulated',
        'why_emulated': (
            'torch.autocast(cpu, float16) runs yolov5n but rounds at other points than y5 (BatchNorm output and '
            'SiLU output each in f16 where y5 rounds act(bn(x)) once; ECA mean, conv1d and sigmoid in f16 where y5 '
            'keeps the gate f32): its layer 0 differs from y5\'s scheme in ' + real_flips + ' (the scheme in f32 '
            'arithmetic: ' + flips + '), so the scheme is emulated: float64 compute, f16 rounding at y5\'s storage '
            'points.'),
        'scheme': (
            'forward: round to f16 every Conv2d output, every Conv module output act(bn(x)), Bottleneck output '
            '(residual sum), ECA output x*gate; Upsample/Concat/MaxPool/permute exact. backward: the gradient of '
            'each of those tensors rounded to f16 when complete, each Conv2d input gradient rounded, conv weight '
            'and Detect bias gradients rounded to f16 (then f32 master); BN gamma/beta and ECA weight gradients '
            'unrounded. loss = sum_j sum(lossw.j * out.detect.j), lossw from the source fixture.'),
        'source_fixture': f'tests/fixtures/{src_name}',
        'source_sha256': hashlib.sha256(src.read_bytes()).hexdigest(),
        'yaml': f'config/models/{yaml_name}',
        'nc': str(nc),
        'seed': str(seed),
        'yolov5_version': yolov5.__version__,
        'torch_version': torch.__version__.split('+')[0],
        'rel_max_median': json.dumps({f'{c} {col}': [float(f'{mx:.3g}'), float(f'{md:.3g}')]
                                      for c, st in stats.items() for col, (mx, md) in zip(cols, st)}, sort_keys=True),
        'layer0_flips_f32_arithmetic': flips,
        'layer0_flips_real_autocast': real_flips,
    }
    save_file(T, str(out_path), metadata=meta)
    canonicalize_header(out_path)
    n16 = sum(1 for v in T.values() if v.dtype == torch.float16)
    print(f'{len(T)} tensors ({n16} F16); file size {out_path.stat().st_size} bytes')


def main():
    warnings.simplefilter('ignore')
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    print(f'yolov5 {yolov5.__version__}, torch {torch.__version__}')
    for case in CASES:
        make_fixture(*case)


if __name__ == '__main__':
    main()
