#!/usr/bin/env python3
"""Seed files for the safetensors and .pt fuzz harnesses (fuzz/corpus/safetensors, fuzz/corpus/torch_pt), made with
torch, safetensors and the `yolov5` package (7.0.13). The other corpora are copies of repository files, coco128
labels, hand-written labels and the label caches y5data wrote for a three-image dataset.

Writes:
  fuzz/corpus/safetensors/tiny.safetensors   F32, F16, BF16, F64, I64 tensors (one 0-d) and metadata, as y5 reads them
  fuzz/corpus/torch_pt/tiny_model.pt         a YOLOv5 checkpoint dict {'epoch', 'model'} holding a fp16
                                             DetectionModel of three Conv rows and Detect (a few KB)
  fuzz/corpus/torch_pt/state_dict.pkl        a data.pkl alone (the harness zips it): an OrderedDict of tensors
                                             over storages 0..3 (the harness's), one a strided view

Regenerate (from the repository root; CPU only, nothing downloaded):
  /work/venv-torch/bin/python fuzz/make_seeds.py
"""

import io
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools' / 'golden'))
from common import shim_pkg_resources  # noqa: E402

shim_pkg_resources()

import torch  # noqa: E402
import yolov5.models.yolo as yolo  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CORPUS = Path(__file__).resolve().parent / 'corpus'

TINY_YAML = {
    'nc': 1, 'depth_multiple': 1.0, 'width_multiple': 1.0,
    'anchors': [[10, 13, 16, 30]],
    'backbone': [[-1, 1, 'Conv', [4, 3, 2]], [-1, 1, 'Conv', [8, 3, 2]], [-1, 1, 'Conv', [8, 3, 2]]],
    'head': [[[2], 1, 'Detect', ['nc', 'anchors']]],
}


def main():
    torch.manual_seed(0)
    save_file({'a.weight': torch.randn(2, 3), 'b.half': torch.randn(4).half(), 'c.bf16': torch.randn(2, 2).bfloat16(),
               'd.f64': torch.randn(3).double(), 'e.steps': torch.tensor([3, 5]), 'f.scalar': torch.tensor(1.5)},
              CORPUS / 'safetensors' / 'tiny.safetensors', metadata={'yaml': 'nc: 1\n', 'nc': '1', 'names': 'a'})

    model = yolo.DetectionModel(TINY_YAML, ch=3, nc=1).half()
    torch.save({'epoch': -1, 'model': model}, CORPUS / 'torch_pt' / 'tiny_model.pt')

    # A torch.save zip's data.pkl for four storages named 0..3 (the harness packs it with its own storages).
    s = torch.arange(16, dtype=torch.float32)
    sd = OrderedDict([('w', s[:8].view(2, 4)), ('t', s[:8].view(2, 4).t()), ('h', torch.zeros(4).half()),
                      ('d', torch.zeros(2).double())])
    buf = io.BytesIO()
    torch.save(sd, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = next(n for n in z.namelist() if n.endswith('/data.pkl'))
        (CORPUS / 'torch_pt' / 'state_dict.pkl').write_bytes(z.read(pkl))
    for p in sorted((CORPUS / 'safetensors').iterdir()) + sorted((CORPUS / 'torch_pt').iterdir()):
        print(f'{p.relative_to(CORPUS.parent.parent)}: {p.stat().st_size} bytes')


if __name__ == '__main__':
    main()
