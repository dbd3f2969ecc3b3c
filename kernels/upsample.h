/*
 * Nearest-neighbour upsampling by an integer factor s (nn.Upsample(None, 2, 'nearest') in YOLOv5),
 * CPU reference. inp (N,C,H,W) → out (N,C,s·H,s·W), out[y][x] = inp[y/s][x/s].
 * Backward: dinp[y][x] += the sum of the s×s block of dout it was copied to.
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

template <class T> void upsample_nearest_backward_cpu(T* dinp, const T* dout, int N, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc)
        for (int y = 0; y < Ho; ++y)
            for (int x = 0; x < Wo; ++x) dinp[(nc * H + y / s) * W + x / s] += dout[(nc * Ho + y) * Wo + x];
}

// CUDA launchers (kernels/upsample.cu, f32, the CPU reference's arguments plus the stream); built only with Y5_CUDA.
void upsample_nearest_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int s, cudaStream_t stream);
void upsample_nearest_backward_cuda(float* dinp, const float* dout, int N, int C, int H, int W, int s,
                                    cudaStream_t stream);

}  // namespace y5
