/*
 * Flat element-wise ops over n elements: fill, copy, axpy (y += a·x), add (out = a + b).
 * CPU references here; CUDA launchers in kernels/elementwise.cu with the same argument order plus
 * the stream. The tape uses fill to zero gradients and axpy/add to accumulate them.
 */
#pragma once
#include <cstdint>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

template <class T> Y5_HD T axpy_op(T a, T x, T y) { return a * x + y; }

template <class T> void fill_cpu(T* out, T v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = v;
}
template <class T> void copy_cpu(T* out, const T* inp, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = inp[i];
}
template <class T> void axpy_cpu(T* y, T a, const T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = axpy_op(a, x[i], y[i]);
}
template <class T> void add_cpu(T* out, const T* a, const T* b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// CUDA launchers (kernels/elementwise.cu); built only with Y5_CUDA.
void fill_cuda(float* out, float v, int64_t n, cudaStream_t stream);
void copy_cuda(float* out, const float* inp, int64_t n, cudaStream_t stream);
void axpy_cuda(float* y, float a, const float* x, int64_t n, cudaStream_t stream);
void add_cuda(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream);

}  // namespace y5
