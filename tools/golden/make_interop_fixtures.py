#!/usr/bin/env python3
"""Fixture for tests/interop.sh: what YOLOv5 7.0's val.py and detect.py give with the official yolov5n.pt, made by
calling the `yolov5` package's (7.0.13) val.run and detect.run on the CPU.

Writes tests/fixtures/interop.txt, one record a line ('#' lines are comments):
  val all P R mAP50 mAP50-95                  val.run's overall mp, mr, map50, map (full precision)
  val class I P R mAP50 mAP50-95 NAME         ap_per_class's row of each class present in coco128, in val.py's order
  detect W H                                  bus.jpg's size in pixels
  detect CLS X Y W H CONF                     detect.py's labels/bus.txt lines as written (--save-txt --save-conf:
                                              normalised centre and size, %g), in its order

val.run: ../shared/data/coco128 (copied into a temporary folder, so val.py's labels .cache is not written into
../shared), ../shared/weights/yolov5n.pt, imgsz 640, batch 32, conf 0.001, iou 0.6, device cpu, half False.
Two changes to YOLOv5, both what y5 does (README, Differences from YOLOv5), made in this process only:
  - the rect-batch order: LoadImagesAndLabels sorts the aspect ratios with NumPy's default argsort, which is not
    stable (images of equal ratio, most of coco128, land in an order that depends on the NumPy build); y5 sorts
    stably, so __init__ is recompiled here with that one call made argsort(kind='stable');
  - the NMS time limit: non_max_suppression drops the images not done after 0.5 + 0.05 * batch seconds, which a
    slow shared CPU can hit; during val.py's NMS calls the clock utils.general reads is frozen, so it never expires
    and no image is dropped (y5 has no limit).
Shims for this environment, with no effect on the numbers: pkg_resources (common.py), torch.load's pre-2.6
default weights_only=False for the official checkpoint, np.trapz (numpy >= 2.4), and no network (the pip
package's Hugging Face lookup and check_dataset's font download are skipped).
detect.run: ../shared/data/images/bus.jpg, imgsz 640, conf 0.25, iou 0.45, max_det 1000, save_txt, save_conf,
nosave, device cpu (no change to YOLOv5).

Regenerate (from the repository root; CPU only, nothing downloaded, about a minute on 2 busy cores):
  /work/venv-torch/bin/python tools/golden/make_interop_fixtures.py
"""

import inspect
import os
import shutil
import sys
import tempfile
import textwrap
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()
# YOLOv5 7.0's attempt_load calls torch.load(w) from before torch 2.6 made weights_only the default; the official
# checkpoint pickles its model class, so restore the old default (set before torch is imported).
os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'

import numpy as np  # noqa: E402
import yaml  # noqa: E402
import yolov5.models.common as common  # noqa: E402
import yolov5.utils.downloads as downloads  # noqa: E402
import yolov5.detect as detect  # noqa: E402
import yolov5.utils.dataloaders as dataloaders  # noqa: E402
import yolov5.utils.general as general  # noqa: E402
import yolov5.val as val  # noqa: E402

if not hasattr(np, 'trapz'):  # numpy >= 2.4 removed np.trapz (renamed np.trapezoid); yolov5's compute_ap uses it
    np.trapz = np.trapezoid

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
COCO128 = SHARED / 'data' / 'coco128'
BUS = SHARED / 'data' / 'images' / 'bus.jpg'
OUT = REPO / 'tests' / 'fixtures' / 'interop.txt'


def stable_rect_sort():
    """LoadImagesAndLabels.__init__ with its one `ar.argsort()` made stable (y5's rect-batch order)."""
    cls = dataloaders.LoadImagesAndLabels
    src = textwrap.dedent(inspect.getsource(cls.__init__))
    old = 'irect = ar.argsort()'
    assert src.count(old) == 1, 'yolov5 changed: the rect sort line is not there once'
    ns = {}
    exec(compile(src.replace(old, "irect = ar.argsort(kind='stable')"), dataloaders.__file__, 'exec'),
         dataloaders.__dict__, ns)
    cls.__init__ = ns['__init__']


def nms_without_time_limit():
    """val.py's non_max_suppression with utils.general's clock frozen, so its time limit never expires."""
    nms = val.non_max_suppression
    frozen = types.SimpleNamespace(time=lambda: 0.0)

    def run(*args, **kwargs):
        real, general.time = general.time, frozen
        try:
            return nms(*args, **kwargs)
        finally:
            general.time = real

    val.non_max_suppression = run


def main():
    tmp = Path(tempfile.mkdtemp(prefix='y5_interop_'))
    try:
        data = tmp / 'coco128'
        shutil.copytree(COCO128, data)
        cfg = yaml.safe_load((COCO128 / 'coco128.yaml').read_text())
        cfg['path'] = str(data)  # YOLOv5 reads a relative path against its own folder
        (data / 'coco128.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))

        # The pip package first asks the Hugging Face hub about a weights name (its own addition; YOLOv5 7.0 has
        # none, and huggingface_hub is not installed): a local file needs no hub.
        common.attempt_download_from_hub = downloads.attempt_download_from_hub = lambda *a, **k: None
        general.check_font = lambda *a, **k: None  # check_dataset fetches a font for plots: none drawn, no network
        stable_rect_sort()
        nms_without_time_limit()
        rows = []  # ap_per_class's return (per-class P, R, AP), which val.run prints but does not return
        apc = val.ap_per_class

        def ap_per_class(*args, **kwargs):
            rows.append(apc(*args, **kwargs))
            return rows[-1]

        val.ap_per_class = ap_per_class
        (mp, mr, map50, map_, *_), *_ = val.run(data=str(data / 'coco128.yaml'), weights=str(WEIGHTS),
                                                  batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6,
                                                  device='cpu', half=False, workers=2, plots=False,
                                                  project=str(tmp / 'val'), name='exp')
        assert len(rows) == 1
        _, _, p, r, _, ap, ap_class = rows[0]
        names = cfg['names']

        detect.run(weights=str(WEIGHTS), source=str(BUS), data=str(data / 'coco128.yaml'), imgsz=640,
                   conf_thres=0.25, iou_thres=0.45, max_det=1000, device='cpu', save_txt=True, save_conf=True,
                   nosave=True, project=str(tmp / 'detect'), name='exp')
        boxes = (tmp / 'detect' / 'exp' / 'labels' / 'bus.txt').read_text().split('\n')
        boxes = [b for b in boxes if b.strip()]
        h, w = general.cv2.imread(str(BUS)).shape[:2]

        lines = ['# YOLOv5 7.0.13 val.run (stable rect sort, no NMS time limit) on coco128 and detect.run on bus.jpg',
                 '# with ../shared/weights/yolov5n.pt, CPU; made by tools/golden/make_interop_fixtures.py',
                 f'val all {mp:.9f} {mr:.9f} {map50:.9f} {map_:.9f}']
        for i, c in enumerate(ap_class):
            lines.append(f'val class {int(c)} {p[i]:.9f} {r[i]:.9f} {ap[i, 0]:.9f} {ap[i].mean():.9f} {names[int(c)]}')
        lines.append(f'detect {w} {h}')
        lines += [f'detect {b}' for b in boxes]
        OUT.write_text('\n'.join(lines) + '\n')
        print(f'wrote {OUT}: {len(ap_class)} classes, {len(boxes)} boxes; '
              f'P {mp:.4f} R {mr:.4f} mAP50 {map50:.4f} mAP50-95 {map_:.4f}')
    finally:
        shutil.rmtree(tmp)


if __name__ == '__main__':
    main()
