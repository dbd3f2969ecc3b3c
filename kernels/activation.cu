/*
 * CUDA side of kernels/activation.h: grid-stride loops over n values (f32, or f16 loaded and stored around float
 * math), one thread per element, calling the same act_forward / act_grad as the CPU reference. Tested against it
 * in tests/test_gpu_ops.cpp (f32) and tests/test_gpu_f16_bn.cpp (f16).
 */
#include "kernels/activation.h"
#include "kernels/cuda_utils.cuh"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

template <class T> __global__ static void act_forward_kernel(T* out, const T* inp, int64_t n, Act a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = st<T>(act_forward(a, ld(inp[i])));
}

template <class T> __global__ static void act_backward_kernel(T* dinp, const T* dout, const T* inp, int64_t n, Act a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dinp[i] = st<T>(ld(dinp[i]) + ld(dout[i]) * act_grad(a, ld(inp[i])));
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T> static void act_forward_launch(T* out, const T* inp, int64_t n, Act a, cudaStream_t stream) {
    if (n == 0) return;
    act_forward_kernel<T><<<grid_1d(n), kBlock, 0, stream>>>(out, inp, n, a);
    Y5_LAUNCH_CHECK();
}
void act_forward_cuda(float* out, const float* inp, int64_t n, Act a, cudaStream_t stream) {
    act_forward_launch(out, inp, n, a, stream);
}
void act_forward_cuda(f16* out, const f16* inp, int64_t n, Act a, cudaStream_t stream) {
    act_forward_launch(out, inp, n, a, stream);
}

template <class T>
static void act_backward_launch(T* dinp, const T* dout, const T* inp, int64_t n, Act a, cudaStream_t stream) {
    if (n == 0) return;
    act_backward_kernel<T><<<grid_1d(n), kBlock, 0, stream>>>(dinp, dout, inp, n, a);
    Y5_LAUNCH_CHECK();
}
void act_backward_cuda(float* dinp, const float* dout, const float* inp, int64_t n, Act a, cudaStream_t stream) {
    act_backward_launch(dinp, dout, inp, n, a, stream);
}
void act_backward_cuda(f16* dinp, const f16* dout, const f16* inp, int64_t n, Act a, cudaStream_t stream) {
    act_backward_launch(dinp, dout, inp, n, a, stream);
}

}  // namespace y5
