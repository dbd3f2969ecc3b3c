"""Golden fixtures for y5train's --image-weights and --quad (tests/test_trainflags.cpp), made by YOLOv5 v7.0's own
functions:
  iw.*    utils/general.py labels_to_class_weights and labels_to_image_weights on a small label set, with train.py's
          per-epoch class weights cw = class_weights * (1 - maps)**2 / nc (class_weights = float32(labels_to_class_weights)
          * nc, as train.py attaches it to the model)
  quad.*  utils/dataloaders.py LoadImagesAndLabels.collate_fn4 on 8 deterministic uint8 images (2 output images):
          random.random is patched to return the choices in quad.choice (0.3: the 2x upscale, 0.7: the 2x2 tile)
  bilinear.*  torch.nn.functional.interpolate(bilinear, align_corners=False) of a float image to a size and by 2x
  ms.*    train.py's own --multi-scale lines (read from its source and run) for every value random.randrange can
          return, at imgsz 64, 320 and 640 (gs 32): the sizes, and the resized shapes of 640x640, 384x640 and 320x512
  npy.*   the bytes np.save writes for a small uint8 HWC image (--cache disk's file format) and the image

Run:  /work/venv-torch/bin/python tools/golden/make_trainflags_fixtures.py
writes tests/fixtures/trainflags.safetensors (small; byte-reproducible: seeded, sorted header keys).
"""

import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[2]
OUT_PATH = REPO / 'tests' / 'fixtures' / 'trainflags.safetensors'

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import canonicalize_header, shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from yolov5.utils.dataloaders import LoadImagesAndLabels  # noqa: E402
from yolov5.utils.general import labels_to_class_weights, labels_to_image_weights  # noqa: E402


def image_weights(T):
    # 7 images, nc 4: class 3 never appears (its bincount 0 becomes 1), image 5 is a background.
    labels = [[0, 0, 1], [1], [0, 2, 2, 2], [0], [2, 0, 0, 0, 1], [], [1, 1]]
    nc = 4
    arrs = [np.array([[c, 0.5, 0.5, 0.1, 0.1] for c in lb], dtype=np.float32).reshape(-1, 5) for lb in labels]
    class_weights = labels_to_class_weights(arrs, nc) * nc  # train.py: model.class_weights (float32)
    maps = np.array([0.0, 0.25, 0.5, 0.1])
    for name, m in (('zero', np.zeros(nc)), ('maps', maps)):
        cw = class_weights.cpu().numpy() * (1 - m) ** 2 / nc  # train.py, per epoch
        iw = labels_to_image_weights(arrs, nc=nc, class_weights=cw)
        T[f'iw.{name}.cw'] = torch.from_numpy(cw.astype(np.float64))
        T[f'iw.{name}.iw'] = torch.from_numpy(iw.astype(np.float64))
    T['iw.maps'] = torch.from_numpy(maps)
    T['iw.class_weights'] = class_weights.float()
    flat = [c for lb in labels for c in lb]
    T['iw.classes'] = torch.tensor(flat, dtype=torch.float32)
    T['iw.counts'] = torch.tensor([len(lb) for lb in labels], dtype=torch.float32)


def quad(T):
    g = torch.Generator().manual_seed(0)
    n, h, w = 8, 6, 10
    ims = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    batch = []
    for i in range(n):
        k = i % 3  # 0, 1 or 2 labels per image
        lb = torch.zeros(k, 6)
        if k:
            lb[:, 1] = torch.arange(k, dtype=torch.float32) + i
            lb[:, 2:] = torch.rand(k, 4, generator=g) * 0.8 + 0.1
        batch.append((ims[i], lb, f'im{i}.jpg', ((h, w), ((1.0, 1.0), (0.0, 0.0)))))
    for name, choices in (('up_tile', [0.3, 0.7]), ('tile_up', [0.7, 0.3])):
        with mock.patch('random.random', side_effect=list(choices)):
            im4, lb4, _, _ = LoadImagesAndLabels.collate_fn4(batch)
        T[f'quad.{name}.images'] = im4.contiguous()
        T[f'quad.{name}.targets'] = lb4.contiguous()
        T[f'quad.{name}.choice'] = torch.tensor(choices, dtype=torch.float64)
    T['quad.images'] = ims
    T['quad.targets'] = torch.cat([torch.cat((torch.full((len(b[1]), 1), float(i)), b[1][:, 1:]), 1)
                                   for i, b in enumerate(batch)], 0)


def bilinear(T):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 7, 12, generator=g) * 255
    T['bilinear.x'] = x[0].contiguous()
    for name, kw in (('up2', dict(scale_factor=2.0)), ('down', dict(size=(4, 5))), ('up', dict(size=(11, 17)))):
        T[f'bilinear.{name}'] = F.interpolate(x, mode='bilinear', align_corners=False, **kw)[0].contiguous()


def multi_scale(T):
    import yolov5
    lines = (Path(yolov5.__file__).parent / 'train.py').read_text().splitlines()
    pick = lambda key: next(ln.strip() for ln in lines if key in ln)  # noqa: E731
    sz_line, sf_line, ns_line = pick('sz = random.randrange'), pick('sf = sz / max'), pick('ns = [math.ceil')
    gs = 32
    shapes = [(640, 640), (384, 640), (320, 512)]
    for imgsz in (64, 320, 640):
        lo, hi = int(imgsz * 0.5), int(imgsz * 1.5) + gs
        sizes, ns_all = [], []
        for k in range(hi - lo):
            env = {'random': type('R', (), {'randrange': staticmethod(lambda a, b, k=k: a + k)}), 'imgsz': imgsz, 'gs': gs}
            exec(sz_line, env)
            sizes.append(env['sz'])
            for h, w in shapes:
                env['imgs'] = type('I', (), {'shape': (1, 3, h, w)})
                env['math'] = __import__('math')
                exec(sf_line, env)
                if env['sf'] != 1:
                    exec(ns_line, env)
                    ns_all.append(list(env['ns']))
                else:
                    ns_all.append([0, 0])
        T[f'ms.{imgsz}.sizes'] = torch.tensor(sizes, dtype=torch.float32)
        T[f'ms.{imgsz}.ns'] = torch.tensor(ns_all, dtype=torch.float32)
    T['ms.shapes'] = torch.tensor(shapes, dtype=torch.float32)


def npy(T):
    import io
    im = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, im)
    T['npy.bytes'] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    T['npy.image'] = torch.from_numpy(im)


def main():
    T = {}
    multi_scale(T)
    npy(T)
    image_weights(T)
    quad(T)
    bilinear(T)
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in T.items()}, str(OUT_PATH), metadata={'source': 'yolov5 7.0.13'})
    canonicalize_header(OUT_PATH)
    print(f'wrote {OUT_PATH.relative_to(REPO)}: {OUT_PATH.stat().st_size} bytes, {len(T)} tensors')
    for k in sorted(T):
        v = T[k]
        print(f'  {k:24s} {str(v.dtype):14s} {tuple(v.shape)}' + (f'  {v.tolist()}' if v.numel() <= 8 else ''))


if __name__ == '__main__':
    main()
