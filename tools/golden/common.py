"""Shared by the golden-fixture scripts: the pkg_resources stand-in yolov5 7.0.13 needs, and the safetensors
header canonicalisation that makes regenerated fixtures byte-identical."""

import json
import struct
import sys
import types
from pathlib import Path


def shim_pkg_resources():
    """yolov5 7.0.13 does `import pkg_resources as pkg` and only uses pkg.parse_version.

    setuptools >= 81 no longer ships pkg_resources; provide a minimal stand-in (packaging is a torch/yolov5
    dependency). The installed package files are not modified. Call before importing yolov5.
    """
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        from packaging.version import parse as parse_version
        shim = types.ModuleType('pkg_resources')
        shim.parse_version = parse_version
        sys.modules['pkg_resources'] = shim


def canonicalize_header(path):
    """Rewrite the safetensors JSON header with sorted keys (the Rust writer emits __metadata__ in hash order),
    so that regenerating the fixtures gives byte-identical files. The tensor data is untouched."""
    raw = Path(path).read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header['__metadata__'] = dict(sorted(header['__metadata__'].items()))
    h = json.dumps(header, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    h += b' ' * (-len(h) % 8)  # keep the data 8-byte aligned, as safetensors does
    Path(path).write_bytes(struct.pack('<Q', len(h)) + h + raw[8 + n:])
