#!/usr/bin/env python3
"""Golden optimizer / LR-schedule / warmup / clipping / EMA fixtures for y5, computed with Ultralytics YOLOv5 v7.0
(PyPI `yolov5` 7.0.13) and torch on the CPU.

Writes (path relative to the repository root):
  tests/fixtures/optim.safetensors   (< 1 MB, byte-reproducible: sorted header keys as make_model_fixtures.py does)

Regenerate (from the repository root; CPU only, nothing is downloaded at run time):
  /root/y5venv/bin/python tools/golden/make_optim_fixtures.py
Re-verify the committed file (independent re-derivation + byte-identical regeneration):
  /root/y5venv/bin/python tools/golden/check_optim_fixtures.py
Such a virtualenv can be created with:  python3 -m venv V && V/bin/pip install yolov5==7.0.13 torch safetensors

Real objects used: yolov5.utils.torch_utils.smart_optimizer (-> torch.optim.SGD, nesterov=True, 3 groups),
yolov5.utils.torch_utils.ModelEMA, yolov5.utils.general.one_cycle, torch.optim.lr_scheduler.LambdaLR,
torch.nn.utils.clip_grad_norm_, yolov5.models.common.Conv (conv + BatchNorm2d + SiLU).
train.py's training loop lives inside train() and cannot be called alone; run_schedule() below mirrors ONLY these
lines of yolov5/train.py (7.0.13, installed package), each quoted in a comment next to its copy:
  172-175  nbs = 64; accumulate = max(round(nbs / batch_size), 1); hyp['weight_decay'] *= batch_size * accumulate
           / nbs; optimizer = smart_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
  178-182  lf = one_cycle(1, hyp['lrf'], epochs) if opt.cos_lr else lambda x: (1 - x / epochs) * (1.0 - hyp['lrf'])
           + hyp['lrf']; scheduler = lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
  268, 270 nw = max(round(hyp['warmup_epochs'] * nb), 100); last_opt_step = -1
  273      scheduler.last_epoch = start_epoch - 1  # do not move
  282      for epoch in range(start_epoch, epochs):
  303-306  optimizer.zero_grad(); for i, ... in pbar: ni = i + nb * epoch
  309-318  the warmup block (accumulate, per-group lr and momentum by np.interp)
  341-349  if ni - last_opt_step >= accumulate: (unscale_,) clip_grad_norm_(max_norm=10.0), (scaler.)step(optimizer),
           (update,) optimizer.zero_grad(), ema.update(model), last_opt_step = ni
  363-364  lr = [x['lr'] for x in optimizer.param_groups]  # for loggers; scheduler.step()
No loss/backward is computed in the schedule runs: every .grad is None, so optimizer.step() (called exactly where
train.py calls it) leaves the parameters unchanged.

Tensors:
 1) Schedules, runs r = 0..3 (metadata `schedule_runs` = 4, a description in metadata `sched{r}`); hyp.scratch-low:
    lr0 0.01, lrf 0.01, momentum 0.937, weight_decay 5e-4, warmup_epochs 3, warmup_momentum 0.8, warmup_bias_lr 0.1.
      run 0: linear lf,            E=5, nb=30, bs=16 (nw = 100: warmup ends at epoch 3, i = 10; accumulate -> 4)
      run 1: --cos-lr one_cycle lf, E=5, nb=30, bs=16
      run 2: linear lf,            E=3, nb=50, bs=64 (accumulate 1; nw = 150 > 149: the whole run is warmup)
      run 3: linear lf,            E=4, nb=7,  bs=8  (nw = 100 > 27: the whole run is warmup; accumulate ramps 1..3
                                                      and would reach 8 only at ni = 100)
    sched{r}.config     F64 (6,)     [epochs, nb, batch_size, nbs, cos_lr (0/1), weight_decay after scaling]
    sched{r}.lr         F64 (E*nb,3) optimizer.param_groups[j]['lr'] right after the warmup block at iteration ni
                                     (= the lr that iteration's optimizer.step() would use); j = 0 biases,
                                     1 decayed weights, 2 BN weights
    sched{r}.momentum   F64 (E*nb,3) same for 'momentum'
    sched{r}.accumulate I64 (E*nb,)  `accumulate` right after the warmup block (train.py holds it as a np.float64
                                     or int; the value is integral)
    sched{r}.step       U8  (E*nb,)  1 where `ni - last_opt_step >= accumulate` fires (optimizer.step() is called)
    sched{r}.epoch_lr   F64 (E,3)    `lr` logged to results.csv (x/lr0..2) at the end of each epoch, read before
                                     scheduler.step()
 2) SGD update parity (torch.optim.SGD built by smart_optimizer on the float64 tiny model, nesterov=True,
    dampening 0; groups in smart_optimizer's order):
    sgd.sizes    I64 (3,)   element counts of group 0 (biases), 1 (decayed weights), 2 (BN weights); n = sum = 200
    sgd.p0       F32 (n,)   initial params, flattened group by group, each group in its param order (see metadata
                            `sgd_layout`), each tensor in row-major order; used as float64
    sgd.lr       F64 (T,3)  per-step lr of each group (T = 5; warmup values of sched0 at ni = 0, 20, 45, 70, 100)
    sgd.momentum F64 (T,3)  per-step momentum of each group
    sgd.wd       F64 (3,)   weight_decay per group (0, 5e-4, 0)
    sgd.grad     F32 (T,n)  the gradient given to step t (used as float64)
    sgd.p        F64 (T,n)  params after step t, from torch's SGD in float64
    torch's SGD (maximize=False, dampening=0, nesterov): g = grad + wd*p; buf = g at the first step (clone, not
    m*0+g), else buf = m*buf + g; g = g + m*buf; p = p - lr*g   (m, lr = the group's values AT that step).
 3) Gradient clipping, torch.nn.utils.clip_grad_norm_(params, max_norm=10.0) in float64 on the tiny model's
    parameters (flattened in model.parameters() order, see metadata `clip_layout`; the total norm is torch's norm of
    the per-tensor 2-norms):
    clip.g F32 (n,) (norm > 10); clip.out F64 (n,); clip.g_small F32 (n,) (norm < 10); clip.out_small F64 (n,);
    clip.norm F64 (2,) the returned total norms [big, small]. out = g * min(10 / (norm + 1e-6), 1).
 4) EMA, yolov5 ModelEMA (decay 0.9999, tau 2000, updates 0) on a float64 tiny model with BatchNorm:
    m = number of floating state_dict elements; flattening = model.state_dict() order, floating entries only
    (num_batches_tracked skipped), each tensor row-major (metadata `ema_layout`).
    ema.init    F64 (m,)    EMA state at construction (deepcopy of the model)
    ema.model   F64 (K,m)   the live model's floating state handed to update k (K = 4)
    ema.out     F64 (K,m)   EMA floating state after update k: v = v*d + (1-d)*w (torch: v *= d; v += (1 - d) * w)
    ema.updates I64 (K,)    ema.updates after update k (1..4)
    ema.decay   F64 (K,)    d = 0.9999 * (1 - exp(-updates / 2000)) used by update k
"""

import copy
import json
import math
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'optim.safetensors'



from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()
os.environ.setdefault('YOLOv5_VERBOSE', 'False')

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import yolov5  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.optim import lr_scheduler  # noqa: E402
from yolov5.models.common import Conv  # noqa: E402
from yolov5.utils.general import one_cycle  # noqa: E402
from yolov5.utils.torch_utils import ModelEMA, smart_optimizer  # noqa: E402

HYP = dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0, warmup_momentum=0.8,
           warmup_bias_lr=0.1)  # data/hyps/hyp.scratch-low.yaml (the optimizer/schedule keys)
NBS = 64
# (epochs, nb, batch_size, cos_lr)
RUNS = [(5, 30, 16, False), (5, 30, 16, True), (3, 50, 64, False), (4, 7, 8, False)]
SGD_NI = [0, 20, 45, 70, 100]  # warmup iterations of sched0 whose lr/momentum drive the SGD parity steps
EMA_K = 4



def tiny_model():
    """Conv(3,4,3) + Conv(4,8,1) (YOLOv5 Conv: bias-free conv + BN + SiLU) + nn.Conv2d(8,4,1) with a bias.
    smart_optimizer groups: 0 biases [bn1.bias 4, bn2.bias 8, conv.bias 4] = 16; 1 decayed [108, 32, 32] = 172;
    2 BN weights [4, 8] = 12; n = 200. Its init values are irrelevant (overwritten from the stored data)."""
    torch.manual_seed(0)
    return nn.Sequential(Conv(3, 4, 3), Conv(4, 8, 1), nn.Conv2d(8, 4, 1, bias=True))


def quiet_smart_optimizer(model, *a):
    import logging
    lg = logging.getLogger('yolov5')
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        return smart_optimizer(model, *a)
    finally:
        lg.setLevel(old)


# ----------------------------------------------------------------------------------------------------------------
# 1) schedules
def run_schedule(epochs, nb, batch_size, cos_lr):
    hyp = dict(HYP)
    model = tiny_model()
    # train.py 172-175 (mirrored):
    nbs = 64  # nominal batch size
    accumulate = max(round(nbs / batch_size), 1)  # accumulate loss before optimizing
    hyp['weight_decay'] *= batch_size * accumulate / nbs  # scale weight_decay
    optimizer = quiet_smart_optimizer(model, 'SGD', hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
    # train.py 178-182 (mirrored):
    if cos_lr:
        lf = one_cycle(1, hyp['lrf'], epochs)  # cosine 1->hyp['lrf']
    else:
        lf = lambda x: (1 - x / epochs) * (1.0 - hyp['lrf']) + hyp['lrf']  # linear  # noqa: E731
    scheduler = lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    after_ctor = dict(last_epoch=scheduler.last_epoch, lr=[g['lr'] for g in optimizer.param_groups])
    start_epoch = 0
    # train.py 268, 270, 273 (mirrored):
    nw = max(round(hyp['warmup_epochs'] * nb), 100)  # number of warmup iterations, max(3 epochs, 100 iterations)
    last_opt_step = -1
    scheduler.last_epoch = start_epoch - 1  # do not move

    n = epochs * nb
    LR, MOM = np.zeros((n, 3)), np.zeros((n, 3))
    ACC, STEP = np.zeros(n, np.int64), np.zeros(n, np.uint8)
    ELR = np.zeros((epochs, 3))
    for epoch in range(start_epoch, epochs):  # train.py 282
        optimizer.zero_grad()  # train.py 303
        for i in range(nb):  # train.py 304
            ni = i + nb * epoch  # train.py 306: number integrated batches (since train start)
            # train.py 309-318 (mirrored): Warmup
            if ni <= nw:
                xi = [0, nw]  # x interp
                accumulate = max(1, np.interp(ni, xi, [1, nbs / batch_size]).round())
                for j, x in enumerate(optimizer.param_groups):
                    # bias lr falls from 0.1 to lr0, all other lrs rise from 0.0 to lr0
                    x['lr'] = np.interp(ni, xi, [hyp['warmup_bias_lr'] if j == 0 else 0.0, x['initial_lr'] * lf(epoch)])
                    if 'momentum' in x:
                        x['momentum'] = np.interp(ni, xi, [hyp['warmup_momentum'], hyp['momentum']])
            # (forward / loss / backward skipped: every .grad stays None)
            for j, x in enumerate(optimizer.param_groups):
                LR[ni, j], MOM[ni, j] = float(x['lr']), float(x['momentum'])
            assert float(accumulate) == int(accumulate)
            ACC[ni] = int(accumulate)
            # train.py 341-349 (mirrored; no GradScaler / EMA here):
            if ni - last_opt_step >= accumulate:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # clip gradients (no grads: no-op)
                optimizer.step()
                optimizer.zero_grad()
                last_opt_step = ni
                STEP[ni] = 1
        # train.py 363-364 (mirrored): Scheduler
        lr = [x['lr'] for x in optimizer.param_groups]  # for loggers
        ELR[epoch] = [float(v) for v in lr]
        scheduler.step()
    cfg = np.array([epochs, nb, batch_size, nbs, 1.0 if cos_lr else 0.0, hyp['weight_decay']], np.float64)
    info = dict(nw=nw, after_ctor=after_ctor, final_last_epoch=scheduler.last_epoch)
    return cfg, LR, MOM, ACC, STEP, ELR, info


# ----------------------------------------------------------------------------------------------------------------
def group_layout(opt, model):
    names = {id(p): k for k, p in model.named_parameters()}
    return [[(names[id(p)], list(p.shape)) for p in g['params']] for g in opt.param_groups]


def flat_groups(opt, attr=None):
    out = []
    for g in opt.param_groups:
        for p in g['params']:
            t = p if attr is None else getattr(p, attr)
            out.append(t.detach().reshape(-1))
    return torch.cat(out)


def set_flat_groups(opt, vec, attr=None):
    k = 0
    for g in opt.param_groups:
        for p in g['params']:
            m = p.numel()
            v = vec[k:k + m].reshape(p.shape).clone()
            if attr is None:
                with torch.no_grad():
                    p.copy_(v)
            else:
                setattr(p, attr, v)
            k += m
    assert k == vec.numel()


def make_sgd(rng, sched0):
    model = tiny_model().double()
    opt = quiet_smart_optimizer(model, 'SGD', HYP['lr0'], HYP['momentum'], HYP['weight_decay'])
    sizes = np.array([sum(p.numel() for p in g['params']) for g in opt.param_groups], np.int64)
    n = int(sizes.sum())
    p0 = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    set_flat_groups(opt, torch.from_numpy(p0.astype(np.float64)))
    wd = np.array([g['weight_decay'] for g in opt.param_groups], np.float64)
    _, lr_s, mom_s = sched0
    T = len(SGD_NI)
    LR = np.stack([lr_s[ni] for ni in SGD_NI])
    MOM = np.stack([mom_s[ni] for ni in SGD_NI])
    G = rng.uniform(-1.0, 1.0, (T, n)).astype(np.float32)
    P = np.zeros((T, n))
    for t in range(T):
        for j, g in enumerate(opt.param_groups):
            g['lr'], g['momentum'] = float(LR[t, j]), float(MOM[t, j])
        set_flat_groups(opt, torch.from_numpy(G[t].astype(np.float64)), 'grad')
        opt.step()
        P[t] = flat_groups(opt).numpy()
    assert all(g['nesterov'] and g['dampening'] == 0 for g in opt.param_groups)
    return dict(sizes=sizes, p0=p0, lr=LR, momentum=MOM, wd=wd, grad=G, p=P), group_layout(opt, model)


def make_clip(rng):
    model = tiny_model().double()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    layout = [(k, list(p.shape)) for k, p in model.named_parameters()]
    res = {}
    norms = []
    for name, scale in (('g', 2.0), ('g_small', 0.5)):
        g = rng.uniform(-scale, scale, n).astype(np.float32)
        k = 0
        for p in params:
            p.grad = torch.from_numpy(g[k:k + p.numel()].astype(np.float64)).reshape(p.shape).clone()
            k += p.numel()
        tn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        norms.append(float(tn))
        res[name] = g
        res['out' + name[1:]] = torch.cat([p.grad.reshape(-1) for p in params]).numpy().copy()
    res['norm'] = np.array(norms)
    assert norms[0] > 10 > norms[1]
    return res, layout


def floating_state(model):
    return [(k, v) for k, v in model.state_dict().items() if v.dtype.is_floating_point]


def flat_state(model):
    return torch.cat([v.detach().reshape(-1) for _, v in floating_state(model)]).numpy().copy()


def set_state(model, vec):
    k = 0
    sd = model.state_dict()
    for name, v in floating_state(model):
        m = v.numel()
        with torch.no_grad():
            sd[name].copy_(torch.from_numpy(vec[k:k + m]).reshape(v.shape))
        k += m
    assert k == vec.size


def ema_state_sample(rng, model):
    parts = []
    for name, v in floating_state(model):
        if name.endswith('running_var'):
            parts.append(rng.uniform(0.5, 1.5, v.numel()))
        elif name.endswith('bn.weight'):
            parts.append(rng.uniform(0.5, 1.5, v.numel()))
        else:
            parts.append(rng.uniform(-0.5, 0.5, v.numel()))
    return np.concatenate(parts)


def make_ema(rng):
    model = tiny_model().double()
    set_state(model, ema_state_sample(rng, model))
    ema = ModelEMA(model)  # decay=0.9999, tau=2000, updates=0
    assert ema.updates == 0
    init = flat_state(ema.ema)
    M, O = np.zeros((EMA_K, init.size)), np.zeros((EMA_K, init.size))
    U, D = np.zeros(EMA_K, np.int64), np.zeros(EMA_K)
    for k in range(EMA_K):
        M[k] = ema_state_sample(rng, model)
        set_state(model, M[k])
        ema.update(model)
        U[k] = ema.updates
        D[k] = ema.decay(ema.updates)
        O[k] = flat_state(ema.ema)
    layout = [(k, list(v.shape)) for k, v in floating_state(model)]
    skipped = [k for k, v in model.state_dict().items() if not v.dtype.is_floating_point]
    return dict(init=init, model=M, out=O, updates=U, decay=D), layout, skipped


# ----------------------------------------------------------------------------------------------------------------
def build():
    T, meta = {}, {}
    sched_info = []
    runs_out = []
    for r, (E, nb, bs, cos) in enumerate(RUNS):
        cfg, LR, MOM, ACC, STEP, ELR, info = run_schedule(E, nb, bs, cos)
        runs_out.append((LR, MOM))
        T[f'sched{r}.config'] = cfg
        T[f'sched{r}.lr'] = LR
        T[f'sched{r}.momentum'] = MOM
        T[f'sched{r}.accumulate'] = ACC
        T[f'sched{r}.step'] = STEP
        T[f'sched{r}.epoch_lr'] = ELR
        meta[f'sched{r}'] = (f"{'cos (one_cycle)' if cos else 'linear'} lf, epochs {E}, nb {nb}, batch_size {bs}, "
                             f"nbs {NBS}, nw {info['nw']}, weight_decay {float(cfg[5])!r}, steps {int(STEP.sum())}")
        sched_info.append(info)
    meta['schedule_runs'] = str(len(RUNS))
    meta['sched_nw'] = json.dumps([i['nw'] for i in sched_info])
    meta['hyp'] = json.dumps(HYP, sort_keys=True)

    rng = np.random.default_rng(20240607)
    sgd, sgd_layout = make_sgd(rng, (None, *runs_out[0]))
    for k, v in sgd.items():
        T[f'sgd.{k}'] = v
    clip, clip_layout = make_clip(rng)
    for k, v in clip.items():
        T[f'clip.{k}'] = v
    ema, ema_layout, ema_skipped = make_ema(rng)
    for k, v in ema.items():
        T[f'ema.{k}'] = v

    meta['sgd_layout'] = json.dumps(sgd_layout)
    meta['sgd_ni'] = json.dumps(SGD_NI)
    meta['clip_layout'] = json.dumps(clip_layout)
    meta['ema_layout'] = json.dumps(ema_layout)
    meta['ema_skipped'] = json.dumps(ema_skipped)
    meta['generator'] = 'tools/golden/make_optim_fixtures.py'
    meta['versions'] = json.dumps(dict(yolov5=yolov5.__version__, torch=torch.__version__.split('+')[0],
                                       numpy=np.__version__))
    meta['notes'] = (
        'LambdaLR construction calls step() once: last_epoch 0, lr = initial_lr*lf(0), initial_lr = lr0 stored in each '
        'group; train.py then sets last_epoch = -1, so the scheduler.step() ending epoch e sets lr = lr0*lf(e): '
        'after warmup, epoch e trains with lr0*lf(e-1) while the warmup target uses lf(epoch). '
        'Iteration 0 of epoch 0 is a warmup iteration (ni 0 <= nw): lr = [warmup_bias_lr, 0, 0], momentum 0.8. '
        'accumulate = max(1, np.interp(...).round()): numpy rounds half to even (run 0: ni 50 gives 2.5 -> 2). '
        'The step condition fires at ni = 0 (last_opt_step = -1, accumulate 1). '
        'np.interp returns fp[-1] exactly at x == nw.')
    return T, meta, sched_info


def write(path):
    T, meta, info = build()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in T.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    canonicalize_header(path)
    return T, meta, info


def main():
    warnings.simplefilter('ignore')
    T, meta, info = write(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors')
    for k in sorted(T):
        v = T[k]
        print(f'  {k:22s} {str(v.dtype):8s} {tuple(v.shape)}')
    for r in range(len(RUNS)):
        print(f"  sched{r}: {meta[f'sched{r}']}; LambdaLR after construction {info[r]['after_ctor']}")


if __name__ == '__main__':
    main()
