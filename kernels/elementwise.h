/*
 * Flat element-wise ops over n elements: fill, copy, axpy (y += a·x), add (out = a + b), and the dtype conversions
 * of mixed precision: cast (dst = src as dst's type), cast_add (dst += src, the cast's backward).
 * CPU references here; CUDA launchers in kernels/elementwise.cu with the same argument order plus
 * the stream. The tape uses fill to zero gradients and axpy/add to accumulate them.
 * The templates over a storage type T load with ld() and store with st<T>() (kernels/common.h): f16 is stored
 * as f16 and added in float.
 */
#pragma once
#include <cstdint>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

template <class T> Y5_HD T axpy_op(T a, T x, T y) { return a * x + y; }

template <class T> void fill_cpu(T* out, acc_t<T> v, int64_t n) {
    const T s = st<T>(v);
    for (int64_t i = 0; i < n; ++i) out[i] = s;
}
template <class T> void copy_cpu(T* out, const T* inp, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = inp[i];
}
// fresh: y unread, taken as zero (a gradient's first producer: the bits of an axpy into a zeroed y).
template <class T> void axpy_cpu(T* y, acc_t<T> a, const T* x, int64_t n, bool fresh = false) {
    for (int64_t i = 0; i < n; ++i) y[i] = st<T>(axpy_op(a, ld(x[i]), fresh ? acc_t<T>(0) : ld(y[i])));
}
template <class T> void add_cpu(T* out, const T* a, const T* b, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = st<T>(ld(a[i]) + ld(b[i]));
}
// D, S: float and f16 either way round (or the same type).
template <class D, class S> void cast_cpu(D* dst, const S* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = st<D>((acc_t<D>)ld(src[i]));
}
template <class D, class S> void cast_add_cpu(D* dst, const S* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = st<D>(ld(dst[i]) + (acc_t<D>)ld(src[i]));
}

// CUDA launchers (kernels/elementwise.cu); built only with Y5_CUDA.
void fill_cuda(float* out, float v, int64_t n, cudaStream_t stream);
void copy_cuda(float* out, const float* inp, int64_t n, cudaStream_t stream);
void axpy_cuda(float* y, float a, const float* x, int64_t n, bool fresh, cudaStream_t stream);
void fill_cuda(f16* out, float v, int64_t n, cudaStream_t stream);
void axpy_cuda(f16* y, float a, const f16* x, int64_t n, bool fresh, cudaStream_t stream);
void add_cuda(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream);
void add_cuda(f16* out, const f16* a, const f16* b, int64_t n, cudaStream_t stream);
void cast_cuda(f16* dst, const float* src, int64_t n, cudaStream_t stream);
void cast_cuda(float* dst, const f16* src, int64_t n, cudaStream_t stream);
void cast_add_cuda(f16* dst, const float* src, int64_t n, cudaStream_t stream);
void cast_add_cuda(float* dst, const f16* src, int64_t n, cudaStream_t stream);

}  // namespace y5
