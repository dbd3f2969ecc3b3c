#!/usr/bin/env python3
"""Re-verify tests/fixtures/augment.safetensors (written by tools/golden/make_augment_fixtures.py).

  /root/y5venv/bin/python tools/golden/check_augment_fixtures.py [--no-regen] [--file PATH]

Checks, exiting non-zero on any failure:
  * the header is canonical (sorted keys, 8-byte aligned) and every documented tensor is present with the documented
    dtype/shape; the case counts in the metadata match;
  * every output is recomputed by YOLOv5's own functions from the STORED inputs, with the stored random draws
    replayed (random_perspective: the 8 rp{k}.draws are returned by random.uniform in order; augment_hsv: hsv{k}.r is
    returned by np.random.uniform), and compared exactly (pixels, matrices, boxes, masks);
  * rp{k}.M is recomputed from the draws (T @ S @ R @ P @ C) and matches the matrix handed to cv2.warp*;
  * unless --no-regen: the generator is re-run into a temporary file, which must be byte-identical.
"""

import argparse
import json
import math
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_augment_fixtures as mk  # noqa: E402  (applies the pkg_resources shim, imports yolov5)

np = mk.np
aug, dl, gen, cv2 = mk.aug, mk.dl, mk.gen, mk.cv2
from safetensors import safe_open  # noqa: E402

FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print('FAIL', msg)


def same(a, b, name):
    a, b = np.asarray(a), np.asarray(b)
    ok = a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    if not ok and a.shape == b.shape and a.size:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        print(f'  {name}: max |diff| {d.max()}, {int((d > 0).sum())} elements differ')
    check(ok, f'{name}: mismatch ({a.dtype}{a.shape} vs {b.dtype}{b.shape})')


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
    return T, meta


def expect(T, name, dtype, shape):
    check(name in T, f'missing tensor {name}')
    if name not in T:
        return
    t = T[name]
    check(t.dtype == np.dtype(dtype), f'{name}: dtype {t.dtype} != {dtype}')
    check(len(t.shape) == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape)),
          f'{name}: shape {t.shape} !~ {shape}')


def check_schema(T, meta):
    n = {g: int(meta[f'{g}_cases']) for g in ('letterbox', 'load', 'perspective', 'hsv')}
    names = set()
    for k in range(n['letterbox']):
        for nm, dt, sh in ((f'lb{k}.img', 'u1', (None, None, 3)), (f'lb{k}.params', 'f8', (7,)),
                           (f'lb{k}.out', 'u1', (None, None, 3)), (f'lb{k}.ratio', 'f8', (2,)),
                           (f'lb{k}.pad', 'f8', (2,))):
            expect(T, nm, dt, sh)
            names.add(nm)
        check(f'lb{k}' in meta, f'metadata lb{k} missing')
    for k in range(n['load']):
        for nm, dt, sh in ((f'li{k}.img', 'u1', (None, None, 3)), (f'li{k}.params', 'f8', (2,)),
                           (f'li{k}.out', 'u1', (None, None, 3)), (f'li{k}.hw', 'i8', (2,))):
            expect(T, nm, dt, sh)
            names.add(nm)
        check(f'li{k}' in meta, f'metadata li{k} missing')
    for k in range(n['perspective']):
        nt = T[f'rp{k}.targets'].shape[0] if f'rp{k}.targets' in T else None
        for nm, dt, sh in ((f'rp{k}.img', 'u1', (None, None, 3)), (f'rp{k}.targets', 'f8', (None, 5)),
                           (f'rp{k}.params', 'f8', (7,)), (f'rp{k}.draws', 'f8', (8,)), (f'rp{k}.M', 'f8', (3, 3)),
                           (f'rp{k}.out', 'u1', (None, None, 3)), (f'rp{k}.out_targets', 'f8', (None, 5)),
                           (f'rp{k}.keep', 'u1', (nt,))):
            expect(T, nm, dt, sh)
            names.add(nm)
        check(f'rp{k}' in meta, f'metadata rp{k} missing')
    for k in range(n['hsv']):
        for nm, dt, sh in ((f'hsv{k}.img', 'u1', (None, None, 3)), (f'hsv{k}.gains', 'f8', (3,)),
                           (f'hsv{k}.r', 'f8', (3,)), (f'hsv{k}.out', 'u1', (None, None, 3))):
            expect(T, nm, dt, sh)
            names.add(nm)
        check(f'hsv{k}' in meta, f'metadata hsv{k} missing')
    for nm, dt, sh in (('rect.wh', 'i8', (None, 2)), ('rect.params', 'f8', (4,)), ('rect.order', 'i8', (None,)),
                       ('rect.batch_shapes', 'i8', (None, 2)), ('conv.xyxy', 'f8', (None, 4)),
                       ('conv.params', 'f8', (3,)), ('conv.xywhn', 'f8', (None, 4))):
        expect(T, nm, dt, sh)
        names.add(nm)
    check(set(T) == names, f'unexpected tensors: {sorted(set(T) - names)}')
    return n


def check_letterbox(T, n):
    for k in range(n):
        nh, nw, auto, fill, up, stride, c = T[f'lb{k}.params'].tolist()
        out, ratio, pad = aug.letterbox(T[f'lb{k}.img'].copy(), new_shape=(int(nh), int(nw)), color=(c, c, c),
                                        auto=bool(auto), scaleFill=bool(fill), scaleup=bool(up), stride=int(stride))
        same(np.ascontiguousarray(out), T[f'lb{k}.out'], f'lb{k}.out')
        same(np.array(ratio, np.float64), T[f'lb{k}.ratio'], f'lb{k}.ratio')
        same(np.array(pad, np.float64), T[f'lb{k}.pad'], f'lb{k}.pad')


def check_load(T, n):
    with tempfile.TemporaryDirectory() as td:
        for k in range(n):
            size, augment = T[f'li{k}.params'].tolist()
            out, hw, _ = mk.load_image_real(T[f'li{k}.img'], int(size), bool(augment), td)
            same(np.ascontiguousarray(out), T[f'li{k}.out'], f'li{k}.out')
            same(np.array(hw, np.int64), T[f'li{k}.hw'], f'li{k}.hw')


def check_perspective(T, n):
    for k in range(n):
        # run_random_perspective asserts: 8 draws, the warp matrix == M recomputed from the draws, dsize/border
        out, out_t, draws, M, keep, _ = mk.run_random_perspective(T[f'rp{k}.img'], T[f'rp{k}.targets'],
                                                                  T[f'rp{k}.params'], replay=T[f'rp{k}.draws'])
        same(draws, T[f'rp{k}.draws'], f'rp{k}.draws')
        same(M, T[f'rp{k}.M'], f'rp{k}.M')
        same(np.ascontiguousarray(out), T[f'rp{k}.out'], f'rp{k}.out')
        same(np.asarray(out_t, np.float64).reshape(-1, 5), T[f'rp{k}.out_targets'], f'rp{k}.out_targets')
        same(keep, T[f'rp{k}.keep'], f'rp{k}.keep')
        check(int(T[f'rp{k}.keep'].sum()) == T[f'rp{k}.out_targets'].shape[0], f'rp{k}: keep count != #out_targets')


def check_hsv(T, n):
    for k in range(n):
        out, r = mk.run_augment_hsv(T[f'hsv{k}.img'], T[f'hsv{k}.gains'].tolist(), replay=T[f'hsv{k}.r'])
        same(out, T[f'hsv{k}.out'], f'hsv{k}.out')


def check_rect(T):
    img_size, bs, stride, pad = T['rect.params'].tolist()
    order, shapes, _ = mk.rect_real(T['rect.wh'], img_size, bs, stride, pad)
    same(order, T['rect.order'], 'rect.order')
    same(shapes, T['rect.batch_shapes'], 'rect.batch_shapes')


def check_conv(T):
    w, h, eps = T['conv.params'].tolist()
    out = gen.xyxy2xywhn(T['conv.xyxy'].copy(), w=w, h=h, clip=True, eps=eps)
    same(out, T['conv.xywhn'], 'conv.xywhn')


# ================================================================================================================
# Independent pure-numpy port (no cv2, no yolov5) of everything above, checked against the stored outputs.
# It is the executable spec for the C++/CUDA port: every OpenCV 8-bit kernel below reproduces cv2 5.0.0 bit-exactly
# on these fixtures (see the rounding notes). float32 arithmetic is done in numpy float32; fma(a, b, c) for float32
# is emulated as float64 a*b (exact) + c, rounded once to float32.
# ================================================================================================================
f32 = np.float32


def fma32(a, b, c):
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(f32)


def port_resize_linear(im, dw, dh):
    """cv2.resize INTER_LINEAR, 8U: fixed point, 11-bit coefficients (INTER_RESIZE_COEF_SCALE = 2048).
    Per axis: f = float32((d + 0.5) * (src/dst) - 0.5) [(src/dst) = 1 / (double(dst)/src)], i = floor(f), f -= i;
    x only: i < 0 -> (i, f) = (0, 0); i >= src-1 -> (src-1, 0). y: rows clamp(i), clamp(i+1), f kept.
    weights: w0 = rint(float32(1 - f) * 2048), w1 = rint(f * 2048) (round half to even).
    Horizontal: H = S[x0]*w0 + S[x1]*w1 (int). Vertical, as OpenCV's SIMD path computes it (it matches every pixel):
    out = ((((H0 >> 4) * b0) >> 16) + (((H1 >> 4) * b1) >> 16) + 2) >> 2, saturated to [0, 255].
    (The textbook (H0*b0 + H1*b1 + 2^21) >> 22 differs by 1 on ~12% of values.)"""
    h, w = im.shape[:2]

    def axis(src, dst, clamp_frac):
        scale = 1.0 / (dst / src)
        f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(f32)
        i = np.floor(f).astype(np.int64)
        f = (f - i.astype(f32)).astype(f32)
        if clamp_frac:
            f[i < 0] = 0
            i[i < 0] = 0
            hi = i >= src - 1
            f[hi] = 0
            i[hi] = src - 1
        w0 = np.rint((f32(1) - f).astype(f32) * f32(2048)).astype(np.int64)
        w1 = np.rint(f * f32(2048)).astype(np.int64)
        return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, w1

    x0, x1, a0, a1 = axis(w, dw, True)
    y0, y1, b0, b1 = axis(h, dh, False)
    S = im.astype(np.int64)
    H = S[:, x0] * a0[None, :, None] + S[:, x1] * a1[None, :, None]
    v = ((((H[y0] >> 4) * b0[:, None, None]) >> 16) + (((H[y1] >> 4) * b1[:, None, None]) >> 16) + 2) >> 2
    return np.clip(v, 0, 255).astype(np.uint8)


def port_resize_area(im, dw, dh):
    """cv2.resize INTER_AREA (downscale), 8U. Integer factors (|scale - round(scale)| < DBL_EPSILON on both axes):
    block mean; 2x2 -> (sum + 2) >> 2, other k x l -> rint(float32(sum) * float32(1/(k*l))).
    Otherwise OpenCV's computeResizeAreaTab weights (float32) and float32 accumulation in this exact order:
    buf[dx] += S[sx] * alpha over the x-table, then sum = beta * buf (first source row of a dst row) or
    sum += beta * buf; out = rint(sum) saturated."""
    h, w, c = im.shape
    sx_, sy_ = 1.0 / (dw / w), 1.0 / (dh / h)
    ix, iy = int(np.rint(sx_)), int(np.rint(sy_))
    if abs(sx_ - ix) < np.finfo(np.float64).eps and abs(sy_ - iy) < np.finfo(np.float64).eps:
        blk = im[:dh * iy, :dw * ix].astype(np.int64).reshape(dh, iy, dw, ix, c).sum((1, 3))
        if ix == 2 and iy == 2:
            return ((blk + 2) >> 2).astype(np.uint8)
        return np.clip(np.rint(blk.astype(f32) * f32(1.0 / (ix * iy))), 0, 255).astype(np.uint8)

    def tab(ssize, dsize, scale):
        t = []
        for d in range(dsize):
            fs1 = d * scale
            fs2 = fs1 + scale
            cell = min(scale, ssize - fs1)
            s1, s2 = math.ceil(fs1), math.floor(fs2)
            s2 = min(s2, ssize - 1)
            s1 = min(s1, s2)
            if s1 - fs1 > 1e-3:
                t.append((d, s1 - 1, f32((s1 - fs1) / cell)))
            t += [(d, s, f32(1.0 / cell)) for s in range(s1, s2)]
            if fs2 - s2 > 1e-3:
                t.append((d, s2, f32(min(min(fs2 - s2, 1.0), cell) / cell)))
        return t

    xt, yt = tab(w, dw, sx_), tab(h, dh, sy_)
    S = im.astype(f32)
    out = np.zeros((dh, dw, c), np.uint8)
    acc, prev = None, yt[0][0]
    for dy, sy, beta in yt:
        buf = np.zeros((dw, c), f32)
        for dx, sx, alpha in xt:
            buf[dx] = buf[dx] + S[sy, sx] * alpha
        if acc is not None and dy != prev:
            out[prev] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
            acc, prev = None, dy
        acc = beta * buf if acc is None else (acc + beta * buf).astype(f32)
    out[prev] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out


def port_invert_affine(M):
    """cv2.warpAffine inverts the 2x3 matrix in double like this (imgwarp.cpp)."""
    m = [float(v) for v in np.asarray(M, np.float64).ravel()[:6]]
    D = m[0] * m[4] - m[1] * m[3]
    D = 1.0 / D if D != 0 else 0.0
    a11, a22 = m[4] * D, m[0] * D
    m[0], m[1], m[3], m[4] = a11, m[1] * -D, m[3] * -D, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def port_invert3(S):
    """cv::invert(DECOMP_LU) for 3x3 double: Cramer's rule (what cv2.warpPerspective uses)."""
    m = lambda i, j: float(S[i][j])  # noqa: E731
    d = (m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0)) +
         m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)))
    d = 1.0 / d
    return [(m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) * d, (m(0, 2) * m(2, 1) - m(0, 1) * m(2, 2)) * d,
            (m(0, 1) * m(1, 2) - m(0, 2) * m(1, 1)) * d, (m(1, 2) * m(2, 0) - m(1, 0) * m(2, 2)) * d,
            (m(0, 0) * m(2, 2) - m(0, 2) * m(2, 0)) * d, (m(0, 2) * m(1, 0) - m(0, 0) * m(1, 2)) * d,
            (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0)) * d, (m(0, 1) * m(2, 0) - m(0, 0) * m(2, 1)) * d,
            (m(0, 0) * m(1, 1) - m(0, 1) * m(1, 0)) * d]


def port_warp(im, M, dsize, perspective, border=114):
    """cv2.warpAffine / warpPerspective, INTER_LINEAR, BORDER_CONSTANT, 8UC3 (OpenCV >= 4.11 float kernels).
    Mi = inverse (double) cast to float32. Per dst row y: r_k = float32(float32(y) * Mi[k] + Mi[k+1]) (NOT fused);
    per pixel: sx = fma(Mi0, x, r_x), sy = fma(Mi3, x, r_y) [, sw = fma(Mi6, x, r_w); sx /= sw; sy /= sw] (float32).
    ix = floor(sx), ax = sx - ix (same for y). Taps outside the image read the border value; a pixel whose whole
    2x2 footprint is outside (ix < -1 or ix >= W or iy < -1 or iy >= H) is the border value.
    v0 = fma(ax, p01 - p00, p00); v1 = fma(ax, p11 - p10, p10); v = fma(ay, v1 - v0, v0) (float32);
    out = rint(v) (half to even) saturated to [0, 255]."""
    Wd, Hd = dsize
    Mi = np.array(port_invert3(M) if perspective else port_invert_affine(M), np.float64).astype(f32)
    x = np.arange(Wd, dtype=f32)[None, :]
    y = np.arange(Hd, dtype=f32)[:, None]

    def row(a, b):
        return ((y * Mi[a]).astype(f32) + Mi[b]).astype(f32)

    sx = fma32(Mi[0], x, row(1, 2))
    sy = fma32(Mi[3], x, row(4, 5))
    if perspective:
        sw = fma32(Mi[6], x, row(7, 8))
        sx, sy = (sx / sw).astype(f32), (sy / sw).astype(f32)
    h, w, c = im.shape
    ix, iy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    ax = (sx - ix.astype(f32)).astype(f32)[..., None]
    ay = (sy - iy.astype(f32)).astype(f32)[..., None]

    def tap(dy, dx):
        yy, xx = iy + dy, ix + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = np.full(ix.shape + (c,), border, f32)
        v[inside] = im[yy[inside], xx[inside]]
        return v

    p00, p01, p10, p11 = tap(0, 0), tap(0, 1), tap(1, 0), tap(1, 1)
    v0 = fma32(ax, p01 - p00, p00)
    v1 = fma32(ax, p11 - p10, p10)
    v = fma32(ay, v1 - v0, v0)
    out = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    out[(ix < -1) | (ix >= w) | (iy < -1) | (iy >= h)] = border
    return out


def port_bgr2hsv(im):
    """cv2.cvtColor COLOR_BGR2HSV, 8U (integer, hsv_shift = 12): H in [0, 180), S, V in [0, 255]."""
    i = np.arange(256, dtype=np.float64)
    i1 = np.where(i > 0, i, 1)
    sdiv = np.where(i > 0, np.rint((255 << 12) / i1), 0).astype(np.int64)
    hdiv = np.where(i > 0, np.rint((180 << 12) / (6.0 * i1)), 0).astype(np.int64)
    b, g, r = (im[..., k].astype(np.int64) for k in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    s = (diff * sdiv[v] + (1 << 11)) >> 12
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff] + (1 << 11)) >> 12
    h = h + np.where(h < 0, 180, 0)
    return np.stack([h, s, v], -1).astype(np.uint8)


def port_hsv2bgr(hsv, block=32):
    """cv2.cvtColor COLOR_HSV2BGR, 8U, float32. OpenCV runs, per image row, a SIMD loop over blocks of
    4 * (float32 lanes) pixels (32 with AVX2, 64 with AVX-512, 16 with SSE/NEON) and a scalar loop for the rest
    of the row; the two round differently. With row widths that are multiples of 64 (the fixtures, and 640-px
    training images) every pixel takes the SIMD path, which is:
      s = S * float32(1/255); v = V * float32(1/255); h = H * float32(6/180);
      pre = trunc(h); h -= pre; sector = pre - trunc(pre * float32(1/6)) * 6;
      tab = [v, v*(1-s), v*fma(-s, h, 1), v*fma(-s, 1-h, 1)]   (the 1 - s*h products are FMA-contracted)
      (b, g, r) = tab[SECTOR[sector]], SECTOR = [[1,3,0],[1,0,2],[3,0,1],[0,2,1],[0,1,3],[2,1,0]];
      out = TRUNC(channel * 255) (v_trunc, NOT rounding), saturated to [0, 255].
    Scalar tail (x >= block * floor(W / block)): same tab (FMA-contracted in the AVX2 build), sector = floor(h) % 6,
      s == 0 -> b = g = r = v, out = rint(channel * 255) (saturate_cast rounds half to even)."""
    one = f32(1)
    sector_data = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])
    h = (hsv[..., 0].astype(f32) * f32(6.0 / 180)).astype(f32)
    s = (hsv[..., 1].astype(f32) * f32(1 / 255.0)).astype(f32)
    v = (hsv[..., 2].astype(f32) * f32(1 / 255.0)).astype(f32)

    def table(hf):
        return np.stack([v, (v * (one - s)).astype(f32), (v * fma32(-s, hf, one)).astype(f32),
                         (v * fma32(-s, (one - hf).astype(f32), one)).astype(f32)], -1)

    pre = np.trunc(h).astype(f32)  # SIMD
    sec = (pre - np.trunc((pre * f32(1 / 6.0)).astype(f32)) * f32(6)).astype(np.int64)
    simd = np.take_along_axis(table((h - pre).astype(f32)), sector_data[sec], -1)
    simd = np.clip(np.trunc((simd * f32(255)).astype(f32)), 0, 255).astype(np.uint8)
    fl = np.floor(h)  # scalar
    sc = np.take_along_axis(table((h - fl.astype(f32)).astype(f32)), sector_data[fl.astype(np.int64) % 6], -1)
    sc = np.where((s == 0)[..., None], v[..., None], sc)
    sc = np.clip(np.rint((sc * f32(255)).astype(f32)), 0, 255).astype(np.uint8)
    nb = (hsv.shape[1] // block) * block
    return np.concatenate((simd[:, :nb], sc[:, nb:]), 1)


def port_letterbox(im, nh, nw, auto, fill, up, stride, c):
    h, w = im.shape[:2]
    r = min(nh / h, nw / w)
    if not up:
        r = min(r, 1.0)
    ratio = (r, r)
    uw, uh = int(round(w * r)), int(round(h * r))  # Python round: half to even (45 * 0.5 = 22.5 -> 22)
    dw, dh = nw - uw, nh - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    elif fill:
        dw, dh = 0.0, 0.0
        uw, uh = nw, nh
        ratio = (nw / w, nh / h)
    dw, dh = dw / 2, dh / 2
    if (w, h) != (uw, uh):
        im = port_resize_linear(im, uw, uh)  # letterbox always uses INTER_LINEAR
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = np.full((uh + top + bottom, uw + left + right, 3), c, np.uint8)
    out[top:top + uh, left:left + uw] = im
    return out, ratio, (dw, dh)


def port_load_image(im, size, augment):
    h0, w0 = im.shape[:2]
    r = size / max(h0, w0)
    if r == 1:
        return im
    dw, dh = math.ceil(w0 * r), math.ceil(h0 * r)  # ceil, not round
    return port_resize_linear(im, dw, dh) if (augment or r > 1) else port_resize_area(im, dw, dh)


def port_matrix(draws, shape, border):
    """M = T @ S @ R @ P @ C written out with plain float products (no numpy matmul)."""
    px, py, a, s, shx, shy, tx, ty = [float(v) for v in draws]
    height, width = shape[0] + 2 * border[0], shape[1] + 2 * border[1]
    ang = a * (math.pi / 180)
    al, be = math.cos(ang) * s, math.sin(ang) * s  # cv2.getRotationMatrix2D(center=(0,0), angle=a, scale=s)
    C = [[1, 0, -shape[1] / 2], [0, 1, -shape[0] / 2], [0, 0, 1]]
    P = [[1, 0, 0], [0, 1, 0], [px, py, 1]]
    R = [[al, be, 0], [-be, al, 0], [0, 0, 1]]
    S = [[1, math.tan(shx * math.pi / 180), 0], [math.tan(shy * math.pi / 180), 1, 0], [0, 0, 1]]
    T = [[1, 0, tx * width], [0, 1, ty * height], [0, 0, 1]]

    def mm(A, B):
        return [[A[i][0] * B[0][j] + A[i][1] * B[1][j] + A[i][2] * B[2][j] for j in range(3)] for i in range(3)]

    return np.array(mm(T, mm(S, mm(R, mm(P, C)))))


def port_random_perspective(im, targets, params, draws, M):
    _, _, _, _, persp, bh, bw = params.tolist()
    border = (int(bh), int(bw))
    height, width = im.shape[0] + 2 * border[0], im.shape[1] + 2 * border[1]
    s = float(draws[3])
    if border != (0, 0) or (M != np.eye(3)).any():
        im = port_warp(im, M if persp else M[:2], (width, height), bool(persp))
    n = len(targets)
    if not n:
        return im, targets, np.zeros(0, np.uint8)
    xy = np.ones((n * 4, 3))
    xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # corners x1y1, x2y2, x1y2, x2y1
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if persp else xy[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    b1 = targets[:, 1:5] * s  # box_candidates compares with the ORIGINAL box scaled by s
    w1, h1 = b1[:, 2] - b1[:, 0], b1[:, 3] - b1[:, 1]
    w2, h2 = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    keep = (w2 > 2) & (h2 > 2) & (w2 * h2 / (w1 * h1 + 1e-16) > 0.1) & (ar < 100)
    out_t = targets[keep].copy()
    out_t[:, 1:5] = new[keep]
    return im, out_t, keep.astype(np.uint8)


def port_augment_hsv(im, gains, r_draw):
    r = r_draw * np.asarray(gains, np.float64) + 1
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)  # Python/numpy floor-mod, then truncation
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = port_bgr2hsv(im)
    return port_hsv2bgr(np.stack((lut_h[hsv[..., 0]], lut_s[hsv[..., 1]], lut_v[hsv[..., 2]]), -1))


def port_rect(wh, img_size, bs, stride, pad):
    ar = wh[:, 1] / wh[:, 0]  # h / w
    irect = np.argsort(ar, kind='stable')
    ar = ar[irect]
    bi = np.floor(np.arange(len(wh)) / bs).astype(int)
    shapes = []
    for i in range(bi[-1] + 1):
        a = ar[bi == i]
        shapes.append([a.max(), 1] if a.max() < 1 else [1, 1 / a.min()] if a.min() > 1 else [1, 1])
    return irect, np.ceil(np.array(shapes) * img_size / stride + pad).astype(np.int64) * int(stride)


def port_xyxy2xywhn(x, w, h, eps):
    x = x.copy()
    x[:, [0, 2]] = x[:, [0, 2]].clip(0, w - eps)
    x[:, [1, 3]] = x[:, [1, 3]].clip(0, h - eps)
    return np.stack(((x[:, 0] + x[:, 2]) / 2 / w, (x[:, 1] + x[:, 3]) / 2 / h, (x[:, 2] - x[:, 0]) / w,
                     (x[:, 3] - x[:, 1]) / h), 1)


def check_port(T, n):
    before = len(FAILS)
    for k in range(n['letterbox']):
        nh, nw, auto, fill, up, stride, c = T[f'lb{k}.params'].tolist()
        out, ratio, pad = port_letterbox(T[f'lb{k}.img'], int(nh), int(nw), bool(auto), bool(fill), bool(up),
                                         int(stride), int(c))
        same(out, T[f'lb{k}.out'], f'port lb{k}.out')
        same(np.array(ratio, np.float64), T[f'lb{k}.ratio'], f'port lb{k}.ratio')
        same(np.array(pad, np.float64), T[f'lb{k}.pad'], f'port lb{k}.pad')
    for k in range(n['load']):
        size, augment = T[f'li{k}.params'].tolist()
        same(port_load_image(T[f'li{k}.img'], int(size), bool(augment)), T[f'li{k}.out'], f'port li{k}.out')
    worst_m = 0.0
    for k in range(n['perspective']):
        img, tg, prm, dr, M = (T[f'rp{k}.{x}'] for x in ('img', 'targets', 'params', 'draws', 'M'))
        Mp = port_matrix(dr, img.shape, (int(prm[5]), int(prm[6])))
        worst_m = max(worst_m, float(np.abs(Mp - M).max() / np.abs(M).max()))
        check(np.allclose(Mp, M, rtol=1e-13, atol=1e-13), f'port rp{k}.M (plain products) too far from stored M')
        out, out_t, keep = port_random_perspective(img, tg, prm, dr, M)  # the stored M, bit-exact
        same(out, T[f'rp{k}.out'], f'port rp{k}.out')
        same(keep, T[f'rp{k}.keep'], f'port rp{k}.keep')
        check(out_t.shape == T[f'rp{k}.out_targets'].shape and np.allclose(out_t, T[f'rp{k}.out_targets'], rtol=0,
              atol=1e-9), f'port rp{k}.out_targets')
    for k in range(n['hsv']):
        out = port_augment_hsv(T[f'hsv{k}.img'], T[f'hsv{k}.gains'], T[f'hsv{k}.r'])
        same(out, T[f'hsv{k}.out'], f'port hsv{k}.out')
    order, shapes = port_rect(T['rect.wh'], *T['rect.params'].tolist())
    same(order, T['rect.order'], 'port rect.order')
    same(shapes, T['rect.batch_shapes'], 'port rect.batch_shapes')
    w, h, eps = T['conv.params'].tolist()
    check(np.allclose(port_xyxy2xywhn(T['conv.xyxy'], w, h, eps), T['conv.xywhn'], rtol=0, atol=1e-15),
          'port conv.xywhn')
    print(f'numpy port (no cv2/yolov5) vs stored outputs: {"OK" if len(FAILS) == before else "FAILED"} '
          f'(M from plain products: max rel diff {worst_m:.2e})')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--file', default=str(mk.OUT_PATH))
    ap.add_argument('--no-regen', action='store_true', help='skip the byte-identical regeneration check')
    ap.add_argument('--no-port', action='store_true', help='skip the pure-numpy port check')
    opt = ap.parse_args()
    path = Path(opt.file)
    T, meta = load(path)
    print(f'{path}: {path.stat().st_size} bytes, {len(T)} tensors; made with cv2 {meta.get("cv2_version")}, '
          f'numpy {meta.get("numpy_version")}; now cv2 {cv2.__version__}, numpy {np.__version__}')
    n = check_schema(T, meta)
    check_letterbox(T, n['letterbox'])
    check_load(T, n['load'])
    check_perspective(T, n['perspective'])
    check_hsv(T, n['hsv'])
    check_rect(T)
    check_conv(T)
    print(f'recomputed from stored inputs/draws: {"OK" if not FAILS else f"{len(FAILS)} failures"}')
    if not opt.no_port:
        check_port(T, n)
    if not opt.no_regen:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td) / 'augment.safetensors'
            mk.write(tmp)
            check(tmp.read_bytes() == path.read_bytes(), 'regenerated file is not byte-identical')
        print(f'regeneration byte-identical: {"OK" if not FAILS else "FAILED"}')
    if FAILS:
        print(f'{len(FAILS)} FAILURES')
        sys.exit(1)
    print('all augment fixture checks passed')


if __name__ == '__main__':
    main()
