/*
 * Nearest-neighbour upsampling by an integer factor s (nn.Upsample(None, 2, 'nearest') in YOLOv5),
 * CPU reference over a storage type T (f32, f64, or f16: ld() loads, float arithmetic, st<T>() rounds).
 * inp (N,C,H,W) → out (N,C,s·H,s·W), out[y][x] = inp[y/s][x/s] (a copy, exact in f16).
 * Backward: dinp[y][x] += the sum of the s×s block of dout it was copied to, added onto dinp's value in
 * acc_t<T> in the block's row-major order and stored once (one rounding in f16).
 * CUDA launchers in kernels/upsample.cu.
 */
#pragma once
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

template <class T> void upsample_nearest_forward_cpu(T* out, const T* inp, int N, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc)
        for (int y = 0; y < Ho; ++y)
            for (int x = 0; x < Wo; ++x) out[(nc * Ho + y) * Wo + x] = inp[(nc * H + y / s) * W + x / s];
}

// dinp (h, w) gathers dout's block (s·h + a, s·w + b), a then b ascending.
template <class T> void upsample_nearest_backward_cpu(T* dinp, const T* dout, int N, int C, int H, int W, int s) {
    const int Wo = W * s;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc)
        for (int h = 0; h < H; ++h)
            for (int w = 0; w < W; ++w) {
                T* dx = dinp + (nc * H + h) * W + w;
                const T* dy = dout + (nc * H * s + (int64_t)h * s) * Wo + (int64_t)w * s;
                acc_t<T> acc = ld(*dx);
                for (int a = 0; a < s; ++a)
                    for (int b = 0; b < s; ++b) acc += ld(dy[(int64_t)a * Wo + b]);
                *dx = st<T>(acc);
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
