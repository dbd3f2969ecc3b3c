/*
 * CUDA side of kernels/elementwise.h: grid-stride loops over n elements, one thread per element.
 * Tested against the CPU references in tests/test_gpu.cpp.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

template <class T> __global__ static void fill_kernel(T* out, T v, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = v;
}

__global__ static void copy_kernel(float* out, const float* inp, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = inp[i];
}

// fresh as axpy_cpu's.
template <class T> __global__ static void axpy_kernel(T* y, float a, const T* x, int64_t n, bool fresh) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = st<T>(axpy_op(a, ld(x[i]), fresh ? 0.0f : ld(y[i])));
}

template <class T> __global__ static void add_kernel(T* out, const T* a, const T* b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = st<T>(ld(a[i]) + ld(b[i]));
}

template <class D, class S> __global__ static void cast_kernel(D* dst, const S* src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = st<D>((acc_t<D>)ld(src[i]));
}

template <class D, class S> __global__ static void cast_add_kernel(D* dst, const S* src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = st<D>(ld(dst[i]) + (acc_t<D>)ld(src[i]));
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T> static void fill_launch(T* out, float v, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    fill_kernel<T><<<grid_1d(n), kBlock, 0, stream>>>(out, st<T>(v), n);
    Y5_LAUNCH_CHECK();
}
void fill_cuda(float* out, float v, int64_t n, cudaStream_t stream) { fill_launch(out, v, n, stream); }
void fill_cuda(f16* out, float v, int64_t n, cudaStream_t stream) { fill_launch(out, v, n, stream); }

void copy_cuda(float* out, const float* inp, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    copy_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, inp, n);
    Y5_LAUNCH_CHECK();
}

template <class T> static void axpy_launch(T* y, float a, const T* x, int64_t n, bool fresh, cudaStream_t stream) {
    if (n == 0) return;
    axpy_kernel<T><<<grid_1d(n), kBlock, 0, stream>>>(y, a, x, n, fresh);
    Y5_LAUNCH_CHECK();
}
void axpy_cuda(float* y, float a, const float* x, int64_t n, bool fresh, cudaStream_t stream) {
    axpy_launch(y, a, x, n, fresh, stream);
}
void axpy_cuda(f16* y, float a, const f16* x, int64_t n, bool fresh, cudaStream_t stream) {
    axpy_launch(y, a, x, n, fresh, stream);
}

template <class T> static void add_launch(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_kernel<T><<<grid_1d(n), kBlock, 0, stream>>>(out, a, b, n);
    Y5_LAUNCH_CHECK();
}
void add_cuda(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream) { add_launch(out, a, b, n, stream); }
void add_cuda(f16* out, const f16* a, const f16* b, int64_t n, cudaStream_t stream) { add_launch(out, a, b, n, stream); }

template <class D, class S> static void cast_launch(D* dst, const S* src, int64_t n, bool add, cudaStream_t stream) {
    if (n == 0) return;
    if (add) cast_add_kernel<D, S><<<grid_1d(n), kBlock, 0, stream>>>(dst, src, n);
    else cast_kernel<D, S><<<grid_1d(n), kBlock, 0, stream>>>(dst, src, n);
    Y5_LAUNCH_CHECK();
}
void cast_cuda(f16* dst, const float* src, int64_t n, cudaStream_t stream) { cast_launch(dst, src, n, false, stream); }
void cast_cuda(float* dst, const f16* src, int64_t n, cudaStream_t stream) { cast_launch(dst, src, n, false, stream); }
void cast_add_cuda(f16* dst, const float* src, int64_t n, cudaStream_t stream) { cast_launch(dst, src, n, true, stream); }
void cast_add_cuda(float* dst, const f16* src, int64_t n, cudaStream_t stream) { cast_launch(dst, src, n, true, stream); }

}  // namespace y5
