/*
 * Batch images uint8 → float: x = v / 255 per element, the layout kept. The loader already writes batches as
 * (N,3,H,W) CHW RGB (engine/data/loader.cpp: HWC BGR → CHW RGB), so this is YOLOv5's `imgs.float() / 255` on
 * the flat batch. CPU reference here (engine/app/val.cpp's batch_images calls it); CUDA launcher in
 * kernels/image.cu. Both use u8_to_unit, and float division is exact-rounded on both sides, so the results
 * are bit-identical. Also the bilinear resize of float planes (--multi-scale): bilinear_at, CPU and CUDA.
 */
#pragma once
#include <cstdint>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

Y5_HD float u8_to_unit(uint8_t v) { return (float)v / 255.0f; }

inline void images_u8_to_f32_cpu(float* out, const uint8_t* in, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = u8_to_unit(in[i]);
}

// CUDA launcher (kernels/image.cu); built only with Y5_CUDA. in and out are device pointers.
void images_u8_to_f32_cuda(float* out, const uint8_t* in, int64_t n, cudaStream_t stream);

// --multi-scale's resize: F.interpolate(x, size=(oh, ow), mode='bilinear', align_corners=False) of planes
// (p, h, w) → (p, oh, ow), as PyTorch's CPU kernel: per axis scale = in/out (float), source (d + 0.5)·scale − 0.5
// clamped at 0, i0 = (int)src, i1 = i0 + (i0 < in − 1), λ1 = src − i0, λ0 = 1 − λ1; the row pair blended first.
Y5_HD void bilinear_tap(int d, int in, int out, int* i0, int* i1, float* l0, float* l1) {
    const float scale = (float)in / (float)out;
    float src = scale * ((float)d + 0.5f) - 0.5f;
    src = src < 0.0f ? 0.0f : src;
    *i0 = (int)src;
    *i1 = *i0 + (*i0 < in - 1 ? 1 : 0);
    *l1 = src - (float)*i0;
    *l0 = 1.0f - *l1;
}

Y5_HD float bilinear_at(const float* plane, int h, int w, int oh, int ow, int oy, int ox) {
    int y0, y1, x0, x1;
    float a0, a1, b0, b1;
    bilinear_tap(oy, h, oh, &y0, &y1, &a0, &a1);
    bilinear_tap(ox, w, ow, &x0, &x1, &b0, &b1);
    const float* r0 = plane + (int64_t)y0 * w;
    const float* r1 = plane + (int64_t)y1 * w;
    return a0 * (b0 * r0[x0] + b1 * r0[x1]) + a1 * (b0 * r1[x0] + b1 * r1[x1]);
}

inline void images_resize_bilinear_cpu(float* out, const float* in, int64_t planes, int h, int w, int oh, int ow) {
    for (int64_t p = 0; p < planes; ++p)
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox)
                out[(p * oh + oy) * ow + ox] = bilinear_at(in + p * h * w, h, w, oh, ow, oy, ox);
}

// CUDA launcher (kernels/image.cu); in and out are device pointers of planes·h·w and planes·oh·ow floats.
void images_resize_bilinear_cuda(float* out, const float* in, int64_t planes, int h, int w, int oh, int ow,
                                 cudaStream_t stream);

}  // namespace y5
