#!/usr/bin/env python3
"""Golden loss-scaler fixtures for y5's GradScaler (engine/autograd/optim.h), computed with torch's own
torch.amp.GradScaler on the CPU (the same _amp_update_scale_ / _amp_foreach_non_finite_check_and_unscale_ semantics
as torch.cuda.amp.GradScaler, which YOLOv5 v7.0's train.py builds as GradScaler(enabled=amp)).

Writes (path relative to the repository root):
  tests/fixtures/amp_scaler.safetensors   (< 200 KB, byte-reproducible: sorted header keys, see common.py)

Regenerate (from the repository root; CPU only; needs torch, numpy, safetensors, not yolov5):
  V/bin/python tools/golden/make_amp_fixtures.py     (V: a virtualenv made with python3 -m venv V &&
                                                      V/bin/pip install torch numpy safetensors)

Each step of a run is driven as train.py drives the scaler (accumulate 1, so every batch is an optimizer step):
  scaler.scale(loss).backward(); scaler.unscale_(optimizer); scaler.step(optimizer); scaler.update();
  optimizer.zero_grad()
on one f32 parameter p (8 elements, zeros) with loss = (p * w).sum(), so the scaled gradient is exactly the f32
product scale * w (asserted every step). A chosen step gets an inf / -inf / NaN written into one element of p.grad
after backward (a gradient that overflowed). w holds one huge element (1e34 in runs 0 and 1), so scale * w overflows
to inf by itself whenever the scale exceeds ~3.4e4: the scale saw-tooths between 2^15 and 2^16 as in fp16 training.
Whether the optimizer step was skipped is observed by wrapping optimizer.step (scaler.step calls it only when no
inf/NaN was found).

Tensors:
 1) Scaler runs r = 0..2 (metadata `runs` = 3, a description in metadata `run{r}`):
      run 0: torch's defaults (init 2^16, growth 2, backoff 0.5, growth_interval 2000), 4500 steps, injections at
             scripted steps (single ones, two elements in one step, a burst of 5) and w with a 1e34 element: two
             growths, two overflows by the scale alone
      run 1: growth_interval 3, 2000 steps, random injections (p = 0.08) and bursts of 12 consecutive, 1e34 in w
      run 2: growth_interval 1, small w: the scale grows to 2^127, stays there (2^128 is inf, so torch keeps the
             old scale and resets the tracker), then 290 consecutive injected steps back it off through the
             subnormals to 0 (1/0 makes inv_scale inf), then 10 clean steps at scale 0
    run{r}.config        F64 (5,)   [init_scale, growth_factor, backoff_factor, growth_interval, steps]
    run{r}.w             F32 (8,)   the loss weights (the scaled gradient is scale * w in f32)
    run{r}.inject        I32 (K,3)  [step, element, kind]: kind 0 +inf, 1 -inf, 2 NaN written into p.grad[element]
    run{r}.scale_before  F32 (S,)   scaler.get_scale() before the step's backward (the scale the loss is scaled by)
    run{r}.found_inf     U8  (S,)   found_inf of unscale_ (scaler._found_inf_per_device(optimizer))
    run{r}.skipped       U8  (S,)   1 where scaler.step(optimizer) did not call optimizer.step
    run{r}.scale_after   F32 (S,)   scaler.get_scale() after update()
    run{r}.tracker_after I32 (S,)   the growth tracker after update() (state_dict()['_growth_tracker'])
    run{r}.grad0         F32 (S,)   p.grad[0] after unscale_ (w[0] * scale, unscaled)
 2) Unscale, bit for bit: scaler.unscale_ on a parameter whose .grad is set directly, for M scales (each scaler
    built with that init_scale; torch keeps the scale as an f32 tensor):
    unscale.scales F32 (M,)       65536, 1 (torch's inv_scale == 1 shortcut), 3 (inv_scale not a power of two),
                                  2^-10 (inv_scale 1024: large finite gradients overflow to inf AFTER the check, so
                                  they are not flagged), 2^-130 (subnormal: 1/scale overflows f32, inv_scale inf),
                                  0 (inv_scale inf), 2^127, 1e-3
    unscale.inv    F32 (M,)       torch's inv_scale = scale.double().reciprocal().float()
    unscale.g      F32 (2,N)      row 0 finite gradients of varied magnitude (normal, subnormal, +-0, +-FLT_MAX),
                                  row 1 the same with +inf, -inf and NaN at random positions; N = 384
    unscale.out    F32 (M,2,N)    p.grad after unscale_
    unscale.found  U8  (M,2)      found_inf of each unscale_
    unscale.g64    F64 (N64,)     f64 gradients (varied magnitudes, some inf / NaN); N64 = 128
    unscale.out64  F64 (M,N64)    after unscale_ (torch multiplies f64 gradients by the f32 inv_scale widened)
    unscale.found64 U8 (M,)
"""

import json
import math
import warnings
from pathlib import Path

from common import canonicalize_header

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'amp_scaler.safetensors'

NP = 8  # parameter elements
KINDS = [math.inf, -math.inf, math.nan]
SCALES = [65536.0, 1.0, 3.0, 2.0 ** -10, 2.0 ** -130, 0.0, 2.0 ** 127, 1e-3]
N_UNSCALE, N_UNSCALE64 = 384, 128


# ----------------------------------------------------------------------------------------------------------------
# 1) scaler runs
def run_scaler(w, steps, inject, **kw):
    """train.py's per-step scaler calls (accumulate 1) on p (NP zeros) with loss (p * w).sum(); inject: {step:
    [(element, kind)]}. Returns the per-step records."""
    scaler = torch.amp.GradScaler('cpu', **kw)
    p = torch.nn.Parameter(torch.zeros(NP, dtype=torch.float32))
    optimizer = torch.optim.SGD([p], lr=2.0 ** -10)
    calls = [0]
    real_step = optimizer.step

    def counted_step(*a, **k):
        calls[0] += 1
        return real_step(*a, **k)

    optimizer.step = counted_step
    wt = torch.from_numpy(w)
    rec = {k: [] for k in ('scale_before', 'found_inf', 'skipped', 'scale_after', 'tracker_after', 'grad0')}
    for s in range(steps):
        scale_before = scaler.get_scale()
        loss = (p * wt).sum()
        scaler.scale(loss).backward()
        assert torch.equal(p.grad, torch.from_numpy(np.float32(scale_before) * w)), s  # scale * w, one f32 rounding
        assert scaler.get_scale() == scale_before
        with torch.no_grad():
            for e, kind in inject.get(s, []):
                p.grad[e] = KINDS[kind]
        scaler.unscale_(optimizer)
        found = float(scaler._found_inf_per_device(optimizer)[torch.device('cpu')].item())
        grad0 = float(p.grad[0].item())
        before = calls[0]
        scaler.step(optimizer)
        skipped = calls[0] == before
        scaler.update()
        optimizer.zero_grad()
        rec['scale_before'].append(scale_before)
        rec['found_inf'].append(found != 0)
        rec['skipped'].append(skipped)
        rec['scale_after'].append(scaler.get_scale())
        rec['tracker_after'].append(scaler.state_dict()['_growth_tracker'])
        rec['grad0'].append(grad0)
    return dict(scale_before=np.array(rec['scale_before'], np.float32), found_inf=np.array(rec['found_inf'], np.uint8),
                skipped=np.array(rec['skipped'], np.uint8), scale_after=np.array(rec['scale_after'], np.float32),
                tracker_after=np.array(rec['tracker_after'], np.int32), grad0=np.array(rec['grad0'], np.float32))


def make_runs(rng):
    runs = []
    # run 0: defaults
    w0 = np.array([0.75, -1.5, 3.25, 1e34, -2e-3, 40.0, -7e20, 1e-30], np.float32)
    # step 0 overflows by itself (2^16 * 1e34) -> 2^15; the injection at 7 -> 2^14; 2000 clean steps grow it at 2007
    # and at 4007 back to 2^16, which overflows again at 4008; then a burst of 5 and two more single ones
    inj0 = {7: [(2, 0)], 4300: [(0, 1), (6, 2)], 4301: [(5, 2)]}
    for s in range(4100, 4105):
        inj0[s] = [(int(rng.integers(NP)), int(rng.integers(3)))]
    runs.append(dict(w=w0, steps=4500, inject=inj0,
                     kw=dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000),
                     desc='torch defaults (2^16, 2, 0.5, 2000), 4500 steps, scripted injections incl. a burst of 5, '
                          'w[3] = 1e34 overflows at scale 2^16 (steps 0 and 4008)'))
    # run 1: growth_interval 3
    w1 = np.array([-0.3, 1e34, 5.0, -9e30, 1e-20, -1.0, 2.5e10, 0.0], np.float32)
    inj1 = {}
    for s in range(2000):
        if rng.random() < 0.08:
            inj1[s] = [(int(rng.integers(NP)), int(rng.integers(3)))]
    for start in (500, 1400):
        for s in range(start, start + 12):
            inj1[s] = [(int(rng.integers(NP)), int(rng.integers(3)))]
    runs.append(dict(w=w1, steps=2000, inject=inj1,
                     kw=dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
                     desc='growth_interval 3, 2000 steps, random injections (p 0.08) and two bursts of 12, '
                          'w[1] = 1e34'))
    # run 2: growth_interval 1 up to the f32 ceiling, then down to 0
    w2 = np.array([0.5, -1.25, 1.0, 0.0, 1.5, -0.75, 1e-3, 1.9], np.float32)
    up, hold, down, tail = 111, 20, 290, 10  # 2^16 * 2^111 = 2^127; 2^127 / 2^277 = 2^-150 rounds to 0
    inj2 = {s: [(int(rng.integers(NP)), int(rng.integers(3)))] for s in range(up + hold, up + hold + down)}
    runs.append(dict(w=w2, steps=up + hold + down + tail, inject=inj2,
                     kw=dict(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),
                     desc=f'growth_interval 1: grows to 2^127 in {up} steps, holds {hold} (2^128 would be inf), '
                          f'{down} injected steps back off to 0, {tail} steps at scale 0'))
    out = []
    for r in runs:
        rec = run_scaler(r['w'], r['steps'], r['inject'], **r['kw'])
        kw = r['kw']
        cfg = np.array([kw['init_scale'], kw['growth_factor'], kw['backoff_factor'], kw['growth_interval'], r['steps']],
                       np.float64)
        inj = np.array([[s, e, k] for s in sorted(r['inject']) for e, k in r['inject'][s]], np.int32).reshape(-1, 3)
        out.append((cfg, r['w'], inj, rec, r['desc']))
    return out


# ----------------------------------------------------------------------------------------------------------------
# 2) unscale, bit for bit
def varied(rng, n, dtype):
    """Finite values of every magnitude of dtype: sign random, exponent uniform over the normal range, some
    subnormals, +-0, +-max."""
    fi = np.finfo(dtype)
    lo, hi = math.log2(fi.tiny), math.log2(fi.max) - 1  # (1 + u) * 2^e stays below max
    v = np.sign(rng.random(n) - 0.5) * (1 + rng.random(n)) * np.exp2(np.floor(rng.uniform(lo, hi, n)))
    v = v.astype(dtype)
    v[rng.choice(n, 8, replace=False)] = (rng.random(8) - 0.5).astype(dtype) * fi.tiny  # subnormals
    v[:6] = np.array([0.0, -0.0, fi.max, -fi.max, 1.0, -3.0], dtype)
    v[rng.choice(np.arange(6, n), n // 4, replace=False)] = rng.normal(0, 1, n // 4).astype(dtype)  # ordinary ones
    assert np.isfinite(v).all()
    return v


def with_nonfinite(rng, v, k):
    v = v.copy()
    pos = rng.choice(np.arange(6, v.size), k, replace=False)
    v[pos] = np.array(KINDS * k, v.dtype)[:k]
    return v


def torch_unscale(g, scale):
    """scaler.unscale_ on one parameter whose .grad is g; returns (inv_scale, grad after, found_inf)."""
    scaler = torch.amp.GradScaler('cpu', init_scale=scale)
    p = torch.nn.Parameter(torch.zeros(g.size, dtype=torch.from_numpy(g).dtype))
    optimizer = torch.optim.SGD([p], lr=0.1)
    scaler.scale(torch.ones((), dtype=torch.float32))  # lazily creates the f32 scale tensor
    p.grad = torch.from_numpy(g.copy())
    scaler.unscale_(optimizer)
    inv = scaler._scale.double().reciprocal().float().item()
    found = scaler._found_inf_per_device(optimizer)[torch.device('cpu')].item()
    return inv, p.grad.numpy().copy(), found != 0


def make_unscale(rng):
    fin = varied(rng, N_UNSCALE, np.float32)
    g = np.stack([fin, with_nonfinite(rng, fin, 9)])
    g64 = with_nonfinite(rng, varied(rng, N_UNSCALE64, np.float64), 5)
    inv, out, found, out64, found64 = [], [], [], [], []
    for s in SCALES:
        rows = [torch_unscale(g[k], s) for k in range(2)]
        inv.append(rows[0][0])
        out.append(np.stack([r[1] for r in rows]))
        found.append([r[2] for r in rows])
        i64, o64, f64 = torch_unscale(g64, s)
        assert i64 == rows[0][0]
        out64.append(o64)
        found64.append(f64)
    return {'unscale.scales': np.array(SCALES, np.float32), 'unscale.inv': np.array(inv, np.float32),
            'unscale.g': g, 'unscale.out': np.stack(out), 'unscale.found': np.array(found, np.uint8),
            'unscale.g64': g64, 'unscale.out64': np.stack(out64), 'unscale.found64': np.array(found64, np.uint8)}


def build():
    rng = np.random.default_rng(20240701)
    T, meta = {}, {}
    runs = make_runs(rng)
    for r, (cfg, w, inj, rec, desc) in enumerate(runs):
        T[f'run{r}.config'] = cfg
        T[f'run{r}.w'] = w
        T[f'run{r}.inject'] = inj
        for k, v in rec.items():
            T[f'run{r}.{k}'] = v
        meta[f'run{r}'] = (f"{desc}; found_inf {int(rec['found_inf'].sum())}, "
                           f"scale from {rec['scale_after'].min()!r} to {rec['scale_after'].max()!r}")
    meta['runs'] = str(len(runs))
    T.update(make_unscale(rng))
    meta['generator'] = 'tools/golden/make_amp_fixtures.py'
    meta['versions'] = json.dumps(dict(torch=torch.__version__.split('+')[0], numpy=np.__version__))
    meta['notes'] = (
        'torch.amp.GradScaler (CPU kernels; the CUDA kernels compute the same): unscale_ uses inv_scale = '
        'f32(1 / f64(scale)); each gradient element sets found_inf if it is inf/NaN BEFORE scaling, then becomes '
        'g * inv_scale (g itself when inv_scale == 1). update(): found_inf -> scale = f32(scale * 0.5), tracker 0; '
        'else tracker + 1, and when it reaches growth_interval scale = f32(scale * 2) unless that is inf, tracker 0. '
        'step() calls optimizer.step only when found_inf is 0.')
    return T, meta


def write(path):
    T, meta = build()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in T.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    canonicalize_header(path)
    return T, meta


def main():
    warnings.simplefilter('ignore')
    T, meta = write(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors')
    for k in sorted(T):
        v = T[k]
        print(f'  {k:22s} {str(v.dtype):8s} {tuple(v.shape)}')
    for r in range(int(meta['runs'])):
        print(f"  run{r}: {meta[f'run{r}']}")


if __name__ == '__main__':
    main()
