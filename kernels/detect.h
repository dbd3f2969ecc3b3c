/*
 * Detect's inference decode (YOLOv5 v7.0 Detect.forward, eval mode), CPU reference.
 *   map (bs, na, ny, nx, no) raw head output of one level, anchors (na, 2) in grid units, stride s
 *   → out rows [offset, offset + na·ny·nx) of (bs, total, no):
 *   xy = (σ·2 + (grid − 0.5))·s,  wh = (σ·2)²·(anchor·s),  conf and classes = σ.
 * The arithmetic follows PyTorch's order so that f32 results match to rounding; the CPU and CUDA decodes share
 * detect_decode_value, so their boxes are the same bits (a σ differing by 2e-7 between them changed y5val's mAP
 * against the GPU's: tests/emu_e2e.sh); its σ is a polynomial exp that the CPU vectorises (detect_sigmoid).
 * map stored as S (f32, f64, or mixed precision's f16), read as T = acc_t<S>; out, anchors and stride T (an f16
 * map decodes into f32, exactly the f32 decode of its values widened to float).
 * CUDA launchers in kernels/detect.cu (same arguments plus the stream; anchors on the device), f32 or f16 map.
 */
#pragma once
#include <algorithm>
#include <cstring>

#include "kernels/activation.h"
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// Element j of one prediction from p = σ(raw value) at grid cell (gx, gy) with anchor (aw, ah) in grid units.
template <class T> Y5_HD T detect_decode_p(int j, T p, int gx, int gy, T aw, T ah, T s) {
    if (j == 0) return (p * T(2) + (T(gx) - T(0.5))) * s;
    if (j == 1) return (p * T(2) + (T(gy) - T(0.5))) * s;
    if (j == 2 || j == 3) {
        T q = p * T(2);
        return q * q * ((j == 2 ? aw : ah) * s);
    }
    return p;
}

// σ of a raw value: in float 1 / (1 + e^−x) with exp_cpu_vec's polynomial (explicit FMAs, ≤ 2e-7 from expf,
// vectorised by GCC on the CPU, the same bits in the CUDA kernel); in double the exact sigmoid.
template <class T> Y5_HD T detect_sigmoid(T v) {
    if constexpr (sizeof(T) == 4) return 1.0f / (1.0f + exp_cpu_vec(-v));
    else return sigmoid(v);
}

template <class T> Y5_HD T detect_decode_value(int j, T v, int gx, int gy, T aw, T ah, T s) {
    return detect_decode_p(j, detect_sigmoid(v), gx, gy, aw, ah, s);
}

// One grid row y of one anchor (aw, ah): m and o its nx·no contiguous values in the map and the output.
template <class S>
void detect_decode_row_cpu(acc_t<S>* o, const S* m, acc_t<S> aw, acc_t<S> ah, acc_t<S> stride, int nx, int no, int y) {
    for (int64_t k = 0; k < (int64_t)nx * no; ++k) o[k] = detect_sigmoid(ld(m[k]));  // σ first
    for (int x = 0; x < nx; ++x)  // then the box, as detect_decode_value
        for (int j = 0; j < 4; ++j) o[x * no + j] = detect_decode_p(j, o[x * no + j], x, y, aw, ah, stride);
}

// Grid rows [y0, y1) of every image and anchor, so that threads can split a level; detect_decode_cpu: all rows.
template <class S>
void detect_decode_rows_cpu(acc_t<S>* out, const S* map, const acc_t<S>* anchors, acc_t<S> stride, int bs, int na,
                            int ny, int nx, int no, int64_t total, int64_t offset, int y0, int y1) {
    for (int b = 0; b < bs; ++b)
        for (int a = 0; a < na; ++a)
            for (int y = y0; y < y1; ++y)
                detect_decode_row_cpu<S>(out + ((int64_t)b * total + offset + ((int64_t)a * ny + y) * nx) * no,
                                         map + (((int64_t)b * na + a) * ny + y) * nx * no, anchors[2 * a],
                                         anchors[2 * a + 1], stride, nx, no, y);
}

template <class S>
void detect_decode_cpu(acc_t<S>* out, const S* map, const acc_t<S>* anchors, acc_t<S> stride, int bs, int na, int ny,
                       int nx, int no, int64_t total, int64_t offset) {
    detect_decode_rows_cpu<S>(out, map, anchors, stride, bs, na, ny, nx, no, total, offset, 0, ny);
}

// One image's head output in oneDNN's blocked layout (⌈na·no/B⌉, ny, nx, B floats, channel c = a·no + j, the last
// block's lanes past na·no padding) → grid row y of anchor a at maps + a·astride + (y − y0)·nx·no, (nx, no), for
// rows [y0, y1): layers' CPU inference (astride ny·nx·no with maps at row y0 of the maps (na, ny, nx, no); nx·no
// for one row's buffer). A prediction's no channels are a few runs of contiguous lanes (one per block it spans),
// copied as runs, a whole block's as one vector.
inline void detect_maps_from_blocked(float* maps, int64_t astride, const float* blk, int na, int no, int ny, int nx,
                                     int B, int y0, int y1) {
    const int64_t plane = (int64_t)ny * nx * B;
    for (int a = 0; a < na; ++a)
        for (int y = y0; y < y1; ++y)
            for (int x = 0; x < nx; ++x) {
                float* dst = maps + a * astride + ((int64_t)(y - y0) * nx + x) * no;
                const float* px = blk + ((int64_t)y * nx + x) * B;
                for (int j = 0; j < no;) {
                    const int c = a * no + j, l = c % B, n = std::min(B - l, no - j);
                    const float* src = px + (c / B) * plane + l;
                    if (n == 8) std::memcpy(dst + j, src, 8 * sizeof(float));
                    else if (n == 16) std::memcpy(dst + j, src, 16 * sizeof(float));
                    else
                        for (int k = 0; k < n; ++k) dst[j + k] = src[k];
                    j += n;
                }
            }
}

void detect_decode_cuda(float* out, const float* map, const float* anchors, float stride, int bs, int na, int ny, int nx,
                        int no, int64_t total, int64_t offset, cudaStream_t stream);
void detect_decode_cuda(float* out, const f16* map, const float* anchors, float stride, int bs, int na, int ny, int nx,
                        int no, int64_t total, int64_t offset, cudaStream_t stream);

}  // namespace y5
