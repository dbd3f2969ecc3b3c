/*
 * Nearest-neighbour upsampling by an integer factor s (nn.Upsample(None, 2, 'nearest') in YOLOv5),
 * CPU reference over a storage type T (f32, f64, or f16: ld() loads, float arithmetic, st<T>() rounds).
 * inp (N,C,H,W) → out (N,C,s·H,s·W), out[y][x] = inp[y/s][x/s] (a copy, exact in f16).
 * Backward: dinp[y][x] += the sum of the s×s block of dout it was copied to, added onto dinp's value in
 * acc_t<T> in the block's row-major order and stored once (one rounding in f16).
 * CUDA launchers in kernels/upsample.cu.
 */
#pragma once
#include <cstring>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// Input row r = nc·H + h becomes output rows r·s .. r·s + s − 1: the first built by repeating each value s times,
// the others copies of it (no index division per element).
template <class T> void upsample_nearest_forward_cpu(T* out, const T* inp, int N, int C, int H, int W, int s) {
    const int64_t Wo = (int64_t)W * s;
    for (int64_t r = 0; r < (int64_t)N * C * H; ++r) {
        const T* x = inp + r * W;
        T* o = out + r * s * Wo;
        if (s == 2)
            for (int w = 0; w < W; ++w) o[2 * w] = x[w], o[2 * w + 1] = x[w];
        else
            for (int w = 0; w < W; ++w)
                for (int b = 0; b < s; ++b) o[(int64_t)w * s + b] = x[w];
        for (int a = 1; a < s; ++a) std::memcpy(o + a * Wo, o, Wo * sizeof(T));
    }
}

// One channel block of a blocked tensor (H, W, B floats, layers' CPU inference in nChw{B}c) → (s·H, s·W, B):
// each pixel's B lanes copied s×s times.
inline void upsample_nearest_blocked(float* out, const float* in, int H, int W, int B, int s) {
    const int64_t Wo = (int64_t)W * s;
    for (int h = 0; h < H; ++h) {
        float* o = out + (int64_t)h * s * Wo * B;
        for (int w = 0; w < W; ++w)
            for (int a = 0; a < s; ++a)
                std::memcpy(o + ((int64_t)w * s + a) * B, in + ((int64_t)h * W + w) * B, B * sizeof(float));
        for (int a = 1; a < s; ++a) std::memcpy(o + a * Wo * B, o, Wo * B * sizeof(float));
    }
}

// dinp (h, w) gathers dout's block (s·h + a, s·w + b), a then b ascending (s = 2 spelled out, so it vectorises).
template <class T> void upsample_nearest_backward_cpu(T* dinp, const T* dout, int N, int C, int H, int W, int s) {
    const int64_t Wo = (int64_t)W * s;
    for (int64_t r = 0; r < (int64_t)N * C * H; ++r) {
        T* dx = dinp + r * W;
        const T *d0 = dout + r * s * Wo, *d1 = d0 + Wo;
        if (s == 2)
            for (int w = 0; w < W; ++w) {
                acc_t<T> acc = ld(dx[w]);
                acc += ld(d0[2 * w]);
                acc += ld(d0[2 * w + 1]);
                acc += ld(d1[2 * w]);
                acc += ld(d1[2 * w + 1]);
                dx[w] = st<T>(acc);
            }
        else
            for (int w = 0; w < W; ++w) {
                acc_t<T> acc = ld(dx[w]);
                for (int a = 0; a < s; ++a)
                    for (int b = 0; b < s; ++b) acc += ld(d0[a * Wo + (int64_t)w * s + b]);
                dx[w] = st<T>(acc);
            }
    }
}

// CUDA launchers (kernels/upsample.cu, the CPU reference's arguments plus the stream; f32 and f16); built only
// with Y5_CUDA.
void upsample_nearest_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int s, cudaStream_t stream);
void upsample_nearest_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int s, cudaStream_t stream);
void upsample_nearest_backward_cuda(float* dinp, const float* dout, int N, int C, int H, int W, int s,
                                    cudaStream_t stream);
void upsample_nearest_backward_cuda(f16* dinp, const f16* dout, int N, int C, int H, int W, int s,
                                    cudaStream_t stream);

}  // namespace y5
