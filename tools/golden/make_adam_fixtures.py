#!/usr/bin/env python3
"""Golden Adam / AdamW fixtures for y5's --optimizer Adam|AdamW, computed with Ultralytics YOLOv5 v7.0 (PyPI `yolov5`
7.0.13) and torch on the CPU.

Writes (path relative to the repository root):
  tests/fixtures/optim_adam.safetensors   (< 100 kB, byte-reproducible: sorted header keys)

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /work/venv-torch/bin/python tools/golden/make_adam_fixtures.py

Real objects used: yolov5.utils.torch_utils.smart_optimizer(model, 'Adam'|'AdamW', lr0, momentum, decay), which
builds torch.optim.Adam(g[2] biases, lr, betas=(momentum, 0.999)) / torch.optim.AdamW(..., weight_decay=0.0) and adds
g[0] (weights, weight_decay=decay) and g[1] (BN weights, weight_decay=0.0): param_groups 0 biases, 1 decayed
weights, 2 BN weights, as y5's ParamStore groups. The tiny model is make_optim_fixtures.py's (16 + 172 + 12 = 200).
Each step sets every group's lr as train.py's warmup does (np.interp rows of make_optim_fixtures.run_schedule, run 0,
at iterations ADAM_NI: the bias lr falls from 0.1, the others rise from 0, the last one after warmup) and leaves the
betas alone: train.py sets x['momentum'] only `if 'momentum' in x`, and Adam's groups have no such key (asserted).
On the CPU torch runs its single-tensor Adam (per tensor: step += 1; AdamW: p *= 1 - lr*wd; Adam: g = g + wd*p;
m.lerp_(g, 1 - beta1); v = v*beta2 + (1 - beta2)*g*g; p += -(lr / (1 - beta1^step)) * m / (sqrt(v) /
(1 - beta2^step)^0.5 + eps)), the scalars in Python doubles.

Tensors (n = 200 parameters, flattened group after group, each tensor row-major; T = len(ADAM_NI) steps):
  adam.sizes  I64 (3,)    elements per group [biases, decayed weights, BN weights]
  adam.p0     F32 (n,)    initial parameters (used as given in f32, widened exactly for f64)
  adam.grad   F32 (T,n)   the gradient of step t: uniform(-1, 1) times 10^uniform(-4, 0), so some are near eps's scale
  adam.lr     F64 (T,3)   each group's lr at step t
  adam.wd     F64 (3,)    each group's weight_decay [0, decay, 0]
  adam.hyper  F64 (4,)    [beta1, beta2, eps, decay]
  {Adam,AdamW}.{f32,f64}.p / .exp_avg / .exp_avg_sq   (T,n) in that dtype: parameters and optimizer state after step t
  {Adam,AdamW}.{f32,f64}.step   F64 (T,)   state['step'] after step t (the same for every tensor)
"""

import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_optim_fixtures as mk  # noqa: E402  (applies the pkg_resources shim, imports yolov5)
from common import canonicalize_header  # noqa: E402

np, torch = mk.np, mk.torch
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'optim_adam.safetensors'
ADAM_NI = [0, 20, 45, 70, 100, 130, 145]  # iterations of schedule run 0 (nw = 100; 130 and 145 are after warmup)


def run(name, dtype, p0, G, LR):
    model = mk.tiny_model().to(dtype)
    h = mk.HYP
    opt = mk.quiet_smart_optimizer(model, name, h['lr0'], h['momentum'], h['weight_decay'])
    assert type(opt).__name__ == name
    for g in opt.param_groups:
        assert 'momentum' not in g and g['betas'] == (h['momentum'], 0.999) and g['eps'] == 1e-8
        assert not g['amsgrad'] and not g['maximize'] and not g['foreach'] and not g['fused']
    assert [g['weight_decay'] for g in opt.param_groups] == [0.0, h['weight_decay'], 0.0]
    mk.set_flat_groups(opt, torch.from_numpy(p0).to(dtype))
    T, n = G.shape
    npdt = np.float32 if dtype == torch.float32 else np.float64
    out = {k: np.zeros((T, n), npdt) for k in ('p', 'exp_avg', 'exp_avg_sq')}
    steps = np.zeros(T)
    for t in range(T):
        for j, g in enumerate(opt.param_groups):
            g['lr'] = float(LR[t, j])
        mk.set_flat_groups(opt, torch.from_numpy(G[t]).to(dtype), 'grad')
        opt.step()
        out['p'][t] = mk.flat_groups(opt).numpy()
        for k in ('exp_avg', 'exp_avg_sq'):
            out[k][t] = torch.cat([opt.state[p][k].reshape(-1) for g in opt.param_groups for p in g['params']]).numpy()
        st = {float(opt.state[p]['step']) for g in opt.param_groups for p in g['params']}
        assert len(st) == 1
        steps[t] = st.pop()
    return out, steps, mk.group_layout(opt, model)


def build():
    rng = np.random.default_rng(20260412)
    _, LR_all, _, _, _, _, _ = mk.run_schedule(5, 30, 16, False)
    LR = np.stack([LR_all[ni] for ni in ADAM_NI])
    model = mk.tiny_model()
    sizes = np.array([16, 172, 12], np.int64)
    assert sum(p.numel() for p in model.parameters()) == sizes.sum()
    n = int(sizes.sum())
    p0 = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    G = (rng.uniform(-1, 1, (len(ADAM_NI), n)) * 10.0 ** rng.uniform(-4, 0, (len(ADAM_NI), n))).astype(np.float32)
    h = mk.HYP
    T = dict(**{'adam.sizes': sizes, 'adam.p0': p0, 'adam.grad': G, 'adam.lr': LR,
                'adam.wd': np.array([0.0, h['weight_decay'], 0.0]),
                'adam.hyper': np.array([h['momentum'], 0.999, 1e-8, h['weight_decay']])})
    meta = {}
    for name in ('Adam', 'AdamW'):
        for dt, tag in ((torch.float32, 'f32'), (torch.float64, 'f64')):
            out, steps, layout = run(name, dt, p0, G, LR)
            for k, v in out.items():
                T[f'{name}.{tag}.{k}'] = v
            T[f'{name}.{tag}.step'] = steps
            meta['layout'] = json.dumps(layout)
    meta['adam_ni'] = json.dumps(ADAM_NI)
    meta['generator'] = 'tools/golden/make_adam_fixtures.py'
    meta['versions'] = json.dumps(dict(yolov5=mk.yolov5.__version__, torch=torch.__version__.split('+')[0],
                                       numpy=np.__version__))
    return T, meta


def main():
    warnings.simplefilter('ignore')
    os.environ.setdefault('YOLOv5_VERBOSE', 'False')
    T, meta = build()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in T.items()}
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT_PATH), metadata=meta)
    canonicalize_header(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors')
    for k in sorted(T):
        print(f'  {k:26s} {str(T[k].dtype):8s} {tuple(T[k].shape)}')


if __name__ == '__main__':
    main()
