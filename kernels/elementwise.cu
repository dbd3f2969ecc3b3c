/*
 * CUDA side of kernels/elementwise.h: grid-stride loops over n floats, one thread per element.
 * Tested against the CPU references in tests/test_gpu.cpp.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

__global__ static void fill_kernel(float* out, float v, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = v;
}

__global__ static void copy_kernel(float* out, const float* inp, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = inp[i];
}

__global__ static void axpy_kernel(float* y, float a, const float* x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = axpy_op(a, x[i], y[i]);
}

__global__ static void add_kernel(float* out, const float* a, const float* b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// ----------------------------------------------------------------------------------------------------
// Launchers

void fill_cuda(float* out, float v, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    fill_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, v, n);
    Y5_LAUNCH_CHECK();
}

void copy_cuda(float* out, const float* inp, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    copy_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, inp, n);
    Y5_LAUNCH_CHECK();
}

void axpy_cuda(float* y, float a, const float* x, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    axpy_kernel<<<grid_1d(n), kBlock, 0, stream>>>(y, a, x, n);
    Y5_LAUNCH_CHECK();
}

void add_cuda(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, a, b, n);
    Y5_LAUNCH_CHECK();
}

}  // namespace y5
