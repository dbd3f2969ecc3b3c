"""JPEGs that do not end with FFD9, as YOLOv5 v7.0's verify_image_label treats them: restored (kept) or skipped
(PIL: image file is truncated). Cuts the last bytes off COCO128 images (optionally appending FFD9 and garbage,
so the file still does not end with FFD9) and records what verify_image_label did with each.
Writes tests/fixtures/jpeg_eoi.txt: `name cut pad kept` per line (pad 1: b'\\xff\\xd9xxxxx' appended after the cut).
    /work/venv-torch/bin/python tools/golden/make_jpeg_eoi_fixtures.py ../shared/data/coco128/images/train2017
"""
import sys
import tempfile
from pathlib import Path

from common import shim_pkg_resources

shim_pkg_resources()
from yolov5.utils.dataloaders import verify_image_label  # noqa: E402

src = Path(sys.argv[1])
out = Path(__file__).resolve().parents[2] / 'tests' / 'fixtures' / 'jpeg_eoi.txt'
lines = []
with tempfile.TemporaryDirectory() as tmp:
    for f in sorted(src.glob('*.jpg'))[:40]:
        b = f.read_bytes()
        for cut, pad in ((1, 0), (2, 0), (3, 0), (6, 0), (3, 1)):
            data = b[:-cut] + (b'\xff\xd9xxxxx' if pad else b'')
            im, lb = Path(tmp) / f.name, Path(tmp) / (f.stem + '.txt')
            im.write_bytes(data)
            lb.write_text('0 0.5 0.5 0.2 0.2\n')
            kept = verify_image_label((str(im), str(lb), ''))[0] is not None
            lines.append(f'{f.name} {cut} {pad} {int(kept)}')
out.write_text('\n'.join(lines) + '\n')
print(out, len(lines), 'cases,', sum(l.endswith(' 1') for l in lines), 'kept')
