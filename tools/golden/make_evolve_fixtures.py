#!/usr/bin/env python3
"""Golden hyperparameter-evolution fixtures for y5 (engine/app/evolve.cpp), written by Ultralytics YOLOv5 v7.0's own
utils/general.py print_mutation and utils/metrics.py fitness (PyPI `yolov5` 7.0.13), and the mutation rule of
train.py's `--evolve` branch evaluated with numpy.

Writes (paths relative to the repository root; all small text files):
  tests/fixtures/evolve_inputs.txt   8 generations' inputs as print_mutation got them: one line each, the 7 results
                                     (P, R, mAP50, mAP50-95, val box/obj/cls loss) then the 29 hyp values, '%.17g'
                                     (the hyp keys are the header's columns 8-36 of evolve.csv)
  tests/fixtures/evolve.csv          what print_mutation appended, generation after generation
  tests/fixtures/hyp_evolve.yaml     what print_mutation wrote after the last generation
  tests/fixtures/evolve_select.txt   train.py's parent selection on that evolve.csv: the top n = 5 rows' indices
                                     (np.argsort(-fitness(x))[:5]) and their weights w = fitness - min + 1e-6
  tests/fixtures/evolve_v.txt        statistics of the mutation factor v for gains 1, 0.3 and 2 over 400000 numpy draws
                                     of train.py's expression (one line per gain: gain, mean, std, P(v == 1), and the
                                     1, 5, 25, 50, 75, 95, 99 % quantiles)
Read by tests/test_evolve.cpp.

Regenerate (from the repository root; CPU only, nothing is downloaded):
  /work/venv-torch/bin/python tools/golden/make_evolve_fixtures.py
The hyp values are config/hyps/hyp.scratch-low.yaml with 'anchors: 3' appended (as train.py adds it), mutated with
train.py's rule from a seeded numpy stream and clipped/rounded as train.py does, so the rows look like a real run's;
the results are made-up numbers chosen to exercise '%20.5g' (tiny, exponent, integer-valued and 5-digit values).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()
from yolov5.utils.general import print_mutation  # noqa: E402
from yolov5.utils.metrics import fitness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / 'tests' / 'fixtures'

# train.py's meta gains (mutation scale) and limits, needed here only to make realistic rows.
META = {
    'lr0': (1, 1e-5, 1e-1), 'lrf': (1, 0.01, 1.0), 'momentum': (0.3, 0.6, 0.98), 'weight_decay': (1, 0.0, 0.001),
    'warmup_epochs': (1, 0.0, 5.0), 'warmup_momentum': (1, 0.0, 0.95), 'warmup_bias_lr': (1, 0.0, 0.2),
    'box': (1, 0.02, 0.2), 'cls': (1, 0.2, 4.0), 'cls_pw': (1, 0.5, 2.0), 'obj': (1, 0.2, 4.0),
    'obj_pw': (1, 0.5, 2.0), 'iou_t': (0, 0.1, 0.7), 'anchor_t': (1, 2.0, 8.0), 'anchors': (2, 2.0, 10.0),
    'fl_gamma': (0, 0.0, 2.0), 'hsv_h': (1, 0.0, 0.1), 'hsv_s': (1, 0.0, 0.9), 'hsv_v': (1, 0.0, 0.9),
    'degrees': (1, 0.0, 45.0), 'translate': (1, 0.0, 0.9), 'scale': (1, 0.0, 0.9), 'shear': (1, 0.0, 10.0),
    'perspective': (0, 0.0, 0.001), 'flipud': (1, 0.0, 1.0), 'fliplr': (0, 0.0, 1.0), 'mosaic': (1, 0.0, 1.0),
    'mixup': (1, 0.0, 1.0), 'copy_paste': (1, 0.0, 1.0)}

KEYS = ('metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss',
        'val/obj_loss', 'val/cls_loss')

RESULTS = [  # P, R, mAP50, mAP50-95, val box/obj/cls loss; fitness 0.1*mAP50 + 0.9*mAP50-95, no ties in the top 5
    (0.0, 0.0, 0.0, 0.0, 0.11234567, 0.0456789, 0.0312345678),
    (0.51234567, 0.4, 0.31415926, 0.1, 0.0987654321, 0.04, 0.03),
    (0.98765, 0.876543219, 0.6, 0.41234, 0.08, 0.035123456, 0.0251),
    (1.0, 1.0, 1.23456789e-05, 2.5e-06, 1.5, 2.0, 3.0),
    (0.7, 0.6, 0.55, 0.33333333, 0.0712, 0.0333, 0.0222),
    (0.65, 0.6, 0.5, 0.3, 0.07, 0.033, 0.021),
    (0.8, 0.7, 0.62, 0.35, 0.069, 0.032, 0.02),
    (0.123456789, 0.2, 0.25, 0.12, 0.09, 0.041, 0.031)]


def mutate(hyp, rng):
    """train.py's rule (gain, mp = 0.8, s = 0.2, clip 0.3 .. 3.0, repeated until a change), then its limits and round."""
    g = np.array([META[k][0] for k in hyp])
    v = np.ones(len(g))
    while all(v == 1):
        v = (g * (rng.random(len(g)) < 0.8) * rng.standard_normal(len(g)) * rng.random() * 0.2 + 1).clip(0.3, 3.0)
    out = {k: float(hyp[k] * v[i]) for i, k in enumerate(hyp)}
    for k, (_, lo, hi) in META.items():
        out[k] = round(min(max(out[k], lo), hi), 5)
    return out


def v_stats(gain, n, rng):
    """Statistics of train.py's v for one key of the given gain (the while-loop's redraw is ignored: with 29 keys
    all v == 1 has probability ~1e-3 per generation)."""
    v = (gain * (rng.random(n) < 0.8) * rng.standard_normal(n) * rng.random(n) * 0.2 + 1).clip(0.3, 3.0)
    q = np.quantile(v, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return [gain, v.mean(), v.std(), (v == 1).mean(), *q]


def main():
    hyp = yaml.safe_load((ROOT / 'config' / 'hyps' / 'hyp.scratch-low.yaml').read_text())
    hyp['anchors'] = 3  # train.py: 'anchors' is commented out in the yaml
    hyp = {k: round(min(max(float(hyp[k]), META[k][1]), META[k][2]), 5) for k in hyp}
    rng = np.random.default_rng(20260107)
    inputs = []
    with tempfile.TemporaryDirectory() as d:
        for gen, results in enumerate(RESULTS):
            h = hyp if gen == 0 else mutate(hyp, rng)
            if gen == 5:
                h['lr0'], h['weight_decay'] = 1e-05, 0.00012  # exponent and leading-zero formats
            inputs.append(list(results) + list(h.values()))
            print_mutation(KEYS, results, h.copy(), Path(d), '')
        (OUT / 'evolve.csv').write_text((Path(d) / 'evolve.csv').read_text())
        (OUT / 'hyp_evolve.yaml').write_text((Path(d) / 'hyp_evolve.yaml').read_text())
    (OUT / 'evolve_inputs.txt').write_text(''.join(' '.join('%.17g' % x for x in row) + '\n' for row in inputs))

    x = np.loadtxt(OUT / 'evolve.csv', ndmin=2, delimiter=',', skiprows=1)  # as train.py reads it
    order = np.argsort(-fitness(x))[:5]
    top = x[order]
    w = fitness(top) - fitness(top).min() + 1E-6
    (OUT / 'evolve_select.txt').write_text(' '.join(str(i) for i in order) + '\n' +
                                           ' '.join('%.17g' % v for v in w) + '\n')

    vr = np.random.default_rng(7)
    (OUT / 'evolve_v.txt').write_text(''.join(' '.join('%.9g' % s for s in v_stats(gain, 400000, vr)) + '\n'
                                              for gain in (1.0, 0.3, 2.0)))
    print('wrote', *(p for p in ('evolve_inputs.txt', 'evolve.csv', 'hyp_evolve.yaml', 'evolve_select.txt',
                                 'evolve_v.txt')))


if __name__ == '__main__':
    main()
