#!/usr/bin/env python3
"""Golden smoothing fixtures for y5's figures (engine/app/metrics.cpp gaussian_filter1d and box_smooth), written by
scipy.ndimage.gaussian_filter1d (sigma 3, YOLOv5's plot_results smoothed line; mode 'reflect', truncate 4.0, the
defaults) and Ultralytics YOLOv5 v7.0's own utils/metrics.py smooth (plot_mc_curve's f = 0.05, ap_per_class's 0.1).

Writes tests/fixtures/plots_smooth.txt: per case three lines, '%.17g' numbers separated by spaces:
  kind n param      kind 0 = gaussian_filter1d (param = sigma), 1 = smooth (param = f)
  the input y (n values)
  the output (n values)
Inputs are seeded random values (lengths 1, 2, 3, 5, 13, 30 and 100 for the gaussian: shorter than the filter's
radius 12, where 'reflect' folds more than once, and longer; 1000 for smooth as in ap_per_class).
Read by tests/test_plots.cpp.

Regenerate (from the repository root; CPU only, nothing is downloaded):
  /work/venv-torch/bin/python tools/golden/make_plot_fixtures.py
"""

import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()
from yolov5.utils.metrics import smooth  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main():
    rng = np.random.default_rng(17)
    cases = []
    for n in (1, 2, 3, 5, 13, 30, 100):
        y = rng.uniform(0.0, 2.0, n) + np.linspace(1.0, 0.2, n)  # a falling loss-like curve with noise
        cases.append((0, 3.0, y, gaussian_filter1d(y, sigma=3)))
    y = rng.uniform(0.0, 1.0, 40)
    cases.append((0, 1.5, y, gaussian_filter1d(y, sigma=1.5)))
    for f in (0.05, 0.1):
        y = np.clip(np.sin(np.linspace(0, 3, 1000)) + rng.normal(0, 0.1, 1000), 0, 1)
        cases.append((1, f, y, smooth(y, f)))
    fmt = lambda v: ' '.join('%.17g' % x for x in v)  # noqa: E731
    lines = []
    for kind, param, y, out in cases:
        lines += ['%d %d %.17g' % (kind, len(y), param), fmt(y), fmt(out)]
    path = ROOT / 'tests/fixtures/plots_smooth.txt'
    path.write_text('\n'.join(lines) + '\n')
    print(f'wrote {path} ({len(cases)} cases)')


if __name__ == '__main__':
    main()
