/*
 * CUDA side of kernels/upsample.h: plane kernels over the N·C planes (grid y: planes, x: elements).
 * Forward: one thread per output element. Backward without atomics: one thread per input element sums
 * its s×s block in the CPU reference's order (rows, then columns), so the result is bitwise the CPU's.
 * Templates over the storage type (float or f16: float sum onto the old value, one rounding); the launchers'
 * f32 and f16 overloads share them.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/upsample.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// out plane (s·H, s·W) from inp plane (H, W): out[y][x] = inp[y/s][x/s].
template <class T>
__global__ static void upsample_forward_kernel(T* out, const T* inp, int H, int W, int s, int64_t P) {
    const int Wo = W * s, L = H * s * Wo;
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const T* x = inp + p * H * W;
        T* y = out + p * L;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < L; j += gridDim.x * blockDim.x) {
            const int r = j / Wo, c = j - r * Wo;
            y[j] = x[(r / s) * W + c / s];
        }
    }
}

// dinp[h][w] += Σ over the s×s block of dout at (s·h, s·w).
template <class T>
__global__ static void upsample_backward_kernel(T* dinp, const T* dout, int H, int W, int s, int64_t P) {
    const int HW = H * W, Wo = W * s;
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const T* dy = dout + p * HW * s * s;
        T* dx = dinp + p * HW;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < HW; j += gridDim.x * blockDim.x) {
            const int h = j / W, w = j - h * W;
            float acc = ld(dx[j]);
            for (int a = 0; a < s; ++a)
                for (int b = 0; b < s; ++b) acc += ld(dy[(h * s + a) * Wo + w * s + b]);
            dx[j] = st<T>(acc);
        }
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T>
static void upsample_forward_launch(T* out, const T* inp, int N, int C, int H, int W, int s, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C, L = (int64_t)H * s * W * s;
    if (P * L == 0) return;
    upsample_forward_kernel<T><<<plane_grid(P, L), kBlock, 0, stream>>>(out, inp, H, W, s, P);
    Y5_LAUNCH_CHECK();
}
void upsample_nearest_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int s, cudaStream_t stream) {
    upsample_forward_launch(out, inp, N, C, H, W, s, stream);
}
void upsample_nearest_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int s, cudaStream_t stream) {
    upsample_forward_launch(out, inp, N, C, H, W, s, stream);
}

template <class T>
static void upsample_backward_launch(T* dinp, const T* dout, int N, int C, int H, int W, int s, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C, L = (int64_t)H * W;
    if (P * L * s == 0) return;
    upsample_backward_kernel<T><<<plane_grid(P, L), kBlock, 0, stream>>>(dinp, dout, H, W, s, P);
    Y5_LAUNCH_CHECK();
}
void upsample_nearest_backward_cuda(float* dinp, const float* dout, int N, int C, int H, int W, int s,
                                    cudaStream_t stream) {
    upsample_backward_launch(dinp, dout, N, C, H, W, s, stream);
}
void upsample_nearest_backward_cuda(f16* dinp, const f16* dout, int N, int C, int H, int W, int s,
                                    cudaStream_t stream) {
    upsample_backward_launch(dinp, dout, N, C, H, W, s, stream);
}

}  // namespace y5
