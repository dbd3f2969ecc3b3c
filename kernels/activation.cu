/*
 * CUDA side of kernels/activation.h: grid-stride loops over n floats, one thread per element, calling the
 * same act_forward / act_grad as the CPU reference. Tested against it in tests/test_gpu_ops.cpp.
 */
#include "kernels/activation.h"
#include "kernels/cuda_utils.cuh"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

__global__ static void act_forward_kernel(float* out, const float* inp, int64_t n, Act a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = act_forward(a, inp[i]);
}

__global__ static void act_backward_kernel(float* dinp, const float* dout, const float* inp, int64_t n, Act a) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dinp[i] += dout[i] * act_grad(a, inp[i]);
}

// ----------------------------------------------------------------------------------------------------
// Launchers

void act_forward_cuda(float* out, const float* inp, int64_t n, Act a, cudaStream_t stream) {
    if (n == 0) return;
    act_forward_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, inp, n, a);
    Y5_LAUNCH_CHECK();
}

void act_backward_cuda(float* dinp, const float* dout, const float* inp, int64_t n, Act a, cudaStream_t stream) {
    if (n == 0) return;
    act_backward_kernel<<<grid_1d(n), kBlock, 0, stream>>>(dinp, dout, inp, n, a);
    Y5_LAUNCH_CHECK();
}

}  // namespace y5
