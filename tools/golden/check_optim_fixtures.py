#!/usr/bin/env python3
"""Re-verify tests/fixtures/optim.safetensors (written by tools/golden/make_optim_fixtures.py).

  /root/y5venv/bin/python tools/golden/check_optim_fixtures.py [--no-regen] [--file PATH]

Checks, exiting non-zero on any failure:
  * the header is canonical (sorted keys, compact, 8-byte padded); exactly the documented tensors are present with
    the documented dtypes/shapes; metadata schedule_runs = 4 and a description per run;
  * schedules: re-derived by a plain-Python model of train.py (no torch, no LambdaLR), compared bit-exactly:
      warmup (ni <= nw): accumulate = max(1, round_half_even(np.interp(ni, [0, nw], [1, nbs/bs]))),
                         lr_j = np.interp(ni, [0, nw], [0.1 if j == 0 else 0.0, lr0 * lf(epoch)]),
                         momentum = np.interp(ni, [0, nw], [0.8, 0.937]);
      after warmup: accumulate keeps its value at ni = nw; momentum 0.937; lr = lr0 * lf(epoch) in the epoch where
                    warmup ended (the value set at ni = nw), else lr0 * lf(epoch - 1) (LambdaLR's off-by-one:
                    train.py resets last_epoch to -1, so the step() that ends epoch e sets lf(e));
      step: ni - last_opt_step >= accumulate with last_opt_step = -1 at start; epoch_lr = lr of the epoch's last
            iteration; weight_decay = 5e-4 * bs * round(64/bs) / 64;
  * sgd: torch.optim.SGD (via smart_optimizer) re-run from the stored inputs must reproduce sgd.p bit-exactly, and a
    numpy transcription of the update (the spec for the C++ f64 path) must agree to 1e-12;
  * clip: clip_grad_norm_ re-run bit-exactly; numpy formula g * min(10 / (norm + 1e-6), 1) to 1e-12;
  * ema: ModelEMA re-run from the stored states bit-exactly; numpy v*d + (1-d)*w to 1e-12; decay/updates exact;
  * unless --no-regen: the generator is re-run into a temporary file, which must be byte-identical.
"""

import argparse
import json
import math
import struct
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_optim_fixtures as mk  # noqa: E402  (applies the pkg_resources shim, imports yolov5)

np, torch = mk.np, mk.torch
from safetensors import safe_open  # noqa: E402

FAILS = []
TOL = 1e-12


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print('FAIL', msg)


def exact(a, b, name):
    a, b = np.asarray(a), np.asarray(b)
    ok = a.shape == b.shape and np.array_equal(a, b)
    if not ok and a.shape == b.shape and a.size:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        print(f'  {name}: max |diff| {d.max()}, {int((d > 0).sum())} elements differ')
    check(ok, f'{name}: not bit-identical ({a.dtype}{a.shape} vs {b.dtype}{b.shape})')


def close(a, b, name, tol=TOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = float(np.abs(a - b).max()) if a.shape == b.shape else float('inf')
    check(d <= tol, f'{name}: max |diff| {d} > {tol}')
    return d


def load(path):
    raw = Path(path).read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    hdr_bytes = raw[8:8 + n]
    header = json.loads(hdr_bytes)
    canon = json.dumps(header, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    canon += b' ' * (-len(canon) % 8)
    check(hdr_bytes == canon, 'header is not canonical (sorted keys, compact, 8-byte padded)')
    T = {}
    with safe_open(str(path), framework='np') as f:
        meta = f.metadata()
        for k in f.keys():
            T[k] = f.get_tensor(k)
    return T, meta, len(raw)


def expected_specs(T):
    n = int(T['sgd.sizes'].sum()) if 'sgd.sizes' in T else 200
    m = T['ema.init'].shape[0] if 'ema.init' in T else 0
    S = {}
    for r, (E, nb, bs, cos) in enumerate(mk.RUNS):
        N = E * nb
        S.update({f'sched{r}.config': ('float64', (6,)), f'sched{r}.lr': ('float64', (N, 3)),
                  f'sched{r}.momentum': ('float64', (N, 3)), f'sched{r}.accumulate': ('int64', (N,)),
                  f'sched{r}.step': ('uint8', (N,)), f'sched{r}.epoch_lr': ('float64', (E, 3))})
    Tn = len(mk.SGD_NI)
    S.update({'sgd.p0': ('float32', (n,)), 'sgd.sizes': ('int64', (3,)), 'sgd.lr': ('float64', (Tn, 3)),
              'sgd.momentum': ('float64', (Tn, 3)), 'sgd.wd': ('float64', (3,)), 'sgd.grad': ('float32', (Tn, n)),
              'sgd.p': ('float64', (Tn, n))})
    S.update({'clip.g': ('float32', (n,)), 'clip.g_small': ('float32', (n,)), 'clip.out': ('float64', (n,)),
              'clip.out_small': ('float64', (n,)), 'clip.norm': ('float64', (2,))})
    K = mk.EMA_K
    S.update({'ema.init': ('float64', (m,)), 'ema.model': ('float64', (K, m)), 'ema.out': ('float64', (K, m)),
              'ema.updates': ('int64', (K,)), 'ema.decay': ('float64', (K,))})
    return S


# ----------------------------------------------------------------------------------------------------------------
def derive_schedule(E, nb, bs, cos, hyp=mk.HYP, nbs=64):
    """Plain-Python model of train.py's schedule (no torch): the executable spec for the C++ port."""
    lr0, lrf = hyp['lr0'], hyp['lrf']
    if cos:
        lf = lambda x: ((1 - math.cos(x * math.pi / E)) / 2) * (lrf - 1) + 1  # noqa: E731
    else:
        lf = lambda x: (1 - x / E) * (1.0 - lrf) + lrf  # noqa: E731
    acc0 = max(round(nbs / bs), 1)
    wd = hyp['weight_decay'] * (bs * acc0 / nbs)
    nw = max(round(hyp['warmup_epochs'] * nb), 100)
    N = E * nb
    LR, MOM = np.zeros((N, 3)), np.zeros((N, 3))
    ACC, STEP, ELR = np.zeros(N, np.int64), np.zeros(N, np.uint8), np.zeros((E, 3))
    acc, last, lr, mom = acc0, -1, [lr0 * lf(0)] * 3, hyp['momentum']  # LambdaLR's constructor sets lr0*lf(0)
    for e in range(E):
        for i in range(nb):
            ni = i + nb * e
            if ni <= nw:
                a = float(np.interp(ni, [0, nw], [1, nbs / bs]))
                acc = max(1, int(np.round(a)))  # numpy rounds half to even
                lr = [float(np.interp(ni, [0, nw], [hyp['warmup_bias_lr'] if j == 0 else 0.0, lr0 * lf(e)]))
                      for j in range(3)]
                mom = float(np.interp(ni, [0, nw], [hyp['warmup_momentum'], hyp['momentum']]))
            LR[ni], MOM[ni], ACC[ni] = lr, mom, acc
            if ni - last >= acc:
                STEP[ni], last = 1, ni
        ELR[e] = lr
        lr = [lr0 * lf(e)] * 3  # scheduler.step(): last_epoch -1 -> 0 at the end of epoch 0, ... e at the end of e
    cfg = np.array([E, nb, bs, nbs, 1.0 if cos else 0.0, wd])
    return cfg, LR, MOM, ACC, STEP, ELR, nw


def check_schedules(T, meta):
    check(meta.get('schedule_runs') == str(len(mk.RUNS)), 'metadata schedule_runs')
    for r, (E, nb, bs, cos) in enumerate(mk.RUNS):
        check(f'sched{r}' in meta, f'metadata sched{r} missing')
        cfg, LR, MOM, ACC, STEP, ELR, nw = derive_schedule(E, nb, bs, cos)
        for name, v in (('config', cfg), ('lr', LR), ('momentum', MOM), ('accumulate', ACC), ('step', STEP),
                        ('epoch_lr', ELR)):
            exact(T[f'sched{r}.{name}'], v, f'sched{r}.{name} vs plain-Python model')
        # the post-warmup off-by-one, stated explicitly
        lf = (lambda x: ((1 - math.cos(x * math.pi / E)) / 2) * (0.01 - 1) + 1) if cos else \
            (lambda x: (1 - x / E) * 0.99 + 0.01)
        for e in range(E):
            if nb * e > nw:  # whole epoch after warmup
                check(np.all(T[f'sched{r}.lr'][nb * e:nb * (e + 1)] == 0.01 * lf(e - 1)),
                      f'sched{r}: epoch {e} should train with lr0*lf({e - 1})')
        check(T[f'sched{r}.step'][0] == 1, f'sched{r}: step must fire at ni = 0')
        print(f'  sched{r}: nw {nw}, {int(STEP.sum())} steps, accumulate {sorted(set(ACC.tolist()))}')
    # real torch objects again (LambdaLR / smart_optimizer / one_cycle), bit-exact
    for r, (E, nb, bs, cos) in enumerate(mk.RUNS):
        cfg, LR, MOM, ACC, STEP, ELR, info = mk.run_schedule(E, nb, bs, cos)
        for name, v in (('config', cfg), ('lr', LR), ('momentum', MOM), ('accumulate', ACC), ('step', STEP),
                        ('epoch_lr', ELR)):
            exact(T[f'sched{r}.{name}'], v, f'sched{r}.{name} vs torch re-run')


def check_sgd(T):
    sizes = T['sgd.sizes']
    model = mk.tiny_model().double()
    opt = mk.quiet_smart_optimizer(model, 'SGD', mk.HYP['lr0'], mk.HYP['momentum'], mk.HYP['weight_decay'])
    exact(np.array([sum(p.numel() for p in g['params']) for g in opt.param_groups]), sizes, 'sgd.sizes')
    exact(np.array([g['weight_decay'] for g in opt.param_groups]), T['sgd.wd'], 'sgd.wd')
    exact(T['sgd.wd'], np.array([0.0, 5e-4, 0.0]), 'sgd.wd values')
    mk.set_flat_groups(opt, torch.from_numpy(T['sgd.p0'].astype(np.float64)))
    # numpy spec
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    p = T['sgd.p0'].astype(np.float64)
    buf = None
    worst = 0.0
    for t in range(T['sgd.lr'].shape[0]):
        for j, g in enumerate(opt.param_groups):
            g['lr'], g['momentum'] = float(T['sgd.lr'][t, j]), float(T['sgd.momentum'][t, j])
        mk.set_flat_groups(opt, torch.from_numpy(T['sgd.grad'][t].astype(np.float64)), 'grad')
        opt.step()
        exact(mk.flat_groups(opt).numpy(), T['sgd.p'][t], f'sgd.p[{t}] vs torch re-run')
        grad = T['sgd.grad'][t].astype(np.float64)
        nb_ = np.empty_like(p)
        newp = np.empty_like(p)
        for j in range(3):
            s = slice(bounds[j], bounds[j + 1])
            lr, m, wd = T['sgd.lr'][t, j], T['sgd.momentum'][t, j], T['sgd.wd'][j]
            g = grad[s] + wd * p[s]
            b = g.copy() if buf is None else m * buf[s] + g
            d = g + m * b
            nb_[s], newp[s] = b, p[s] - lr * d
        buf, p = nb_, newp
        worst = max(worst, close(p, T['sgd.p'][t], f'sgd.p[{t}] vs numpy spec'))
    print(f'  sgd: n {int(sizes.sum())} sizes {sizes.tolist()}, numpy spec max |diff| {worst:.3g}')


def check_clip(T):
    model = mk.tiny_model().double()
    params = list(model.parameters())
    norms = []
    for gname, oname in (('clip.g', 'clip.out'), ('clip.g_small', 'clip.out_small')):
        g = T[gname]
        k = 0
        for p in params:
            p.grad = torch.from_numpy(g[k:k + p.numel()].astype(np.float64)).reshape(p.shape).clone()
            k += p.numel()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)))
        exact(torch.cat([p.grad.reshape(-1) for p in params]).numpy(), T[oname], f'{oname} vs torch re-run')
        g64 = g.astype(np.float64)
        nrm = math.sqrt(float(np.sum(g64 * g64)))
        close(nrm, T['clip.norm'][len(norms) - 1], f'{gname} norm vs numpy', 1e-12)
        close(g64 * min(10.0 / (nrm + 1e-6), 1.0), T[oname], f'{oname} vs numpy spec')
    exact(np.array(norms), T['clip.norm'], 'clip.norm vs torch re-run')
    check(T['clip.norm'][0] > 10 > T['clip.norm'][1], 'clip norms must straddle 10')
    exact(T['clip.out_small'], T['clip.g_small'].astype(np.float64), 'clip.out_small == g_small (coef clamps to 1)')
    print(f'  clip: norms {T["clip.norm"].tolist()}')


def check_ema(T, meta):
    model = mk.tiny_model().double()
    layout = [(k, list(v.shape)) for k, v in mk.floating_state(model)]
    check(json.loads(meta['ema_layout']) == [list(x) for x in layout], 'ema_layout metadata')
    mk.set_state(model, T['ema.init'].copy())
    ema = mk.ModelEMA(model)
    exact(mk.flat_state(ema.ema), T['ema.init'], 'ema.init')
    v = T['ema.init'].copy()
    worst = 0.0
    for k in range(T['ema.model'].shape[0]):
        mk.set_state(model, T['ema.model'][k].copy())
        ema.update(model)
        exact(ema.updates, T['ema.updates'][k], f'ema.updates[{k}]')
        d = 0.9999 * (1 - math.exp(-(k + 1) / 2000))
        exact(d, T['ema.decay'][k], f'ema.decay[{k}] vs formula')
        exact(mk.flat_state(ema.ema), T['ema.out'][k], f'ema.out[{k}] vs ModelEMA re-run')
        v = v * d + (1 - d) * T['ema.model'][k]
        worst = max(worst, close(v, T['ema.out'][k], f'ema.out[{k}] vs numpy spec'))
    print(f'  ema: m {T["ema.init"].size}, decay {T["ema.decay"].tolist()}, numpy spec max |diff| {worst:.3g}')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--no-regen', action='store_true')
    ap.add_argument('--file', default=str(mk.OUT_PATH))
    args = ap.parse_args()
    warnings.simplefilter('ignore')
    T, meta, size = load(args.file)
    print(f'{args.file}: {size} bytes, {len(T)} tensors')
    check(size < 1 << 20, 'file must be < 1 MB')
    S = expected_specs(T)
    check(set(T) == set(S), f'tensor names differ: missing {sorted(set(S) - set(T))}, extra {sorted(set(T) - set(S))}')
    for k, (dt, shape) in S.items():
        if k in T:
            check(str(T[k].dtype) == dt and tuple(T[k].shape) == shape,
                  f'{k}: {T[k].dtype}{T[k].shape}, expected {dt}{shape}')
    if FAILS:
        sys.exit(1)
    check_schedules(T, meta)
    check_sgd(T)
    check_clip(T)
    check_ema(T, meta)
    if not args.no_regen:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / 'optim.safetensors'
            mk.write(p)
            same_bytes = p.read_bytes() == Path(args.file).read_bytes()
            check(same_bytes, 'regenerated file is not byte-identical')
        if same_bytes:
            print('  regeneration: byte-identical')
    if FAILS:
        print(f'{len(FAILS)} FAILURES')
        sys.exit(1)
    print('OK')


if __name__ == '__main__':
    main()
