/*
 * Channel concat, CPU reference, one input at a time so that any number of inputs works and the CUDA
 * side can later have producers write straight into their slice.
 *   inp (N,Ci,HW) → out (N,Co,HW) channels [c0, c0+Ci).
 * Backward: dinp (N,Ci,HW) += the same slice of dout.
 * T: f32, f64, or f16 (the copy is exact; the backward's one add is in float, rounded once).
 * CUDA launchers in kernels/concat.cu.
 */
#pragma once
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

template <class T> void concat_forward_cpu(T* out, const T* inp, int N, int Ci, int HW, int Co, int c0) {
    for (int n = 0; n < N; ++n)
        for (int64_t i = 0; i < (int64_t)Ci * HW; ++i) out[((int64_t)n * Co + c0) * HW + i] = inp[(int64_t)n * Ci * HW + i];
}

template <class T> void concat_backward_cpu(T* dinp, const T* dout, int N, int Ci, int HW, int Co, int c0) {
    for (int n = 0; n < N; ++n)
        for (int64_t i = 0; i < (int64_t)Ci * HW; ++i) {
            T& dx = dinp[(int64_t)n * Ci * HW + i];
            dx = st<T>(ld(dx) + ld(dout[((int64_t)n * Co + c0) * HW + i]));
        }
}

// CUDA launchers (kernels/concat.cu, the CPU reference's arguments plus the stream; f32 and f16); built only with
// Y5_CUDA.
void concat_forward_cuda(float* out, const float* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream);
void concat_forward_cuda(f16* out, const f16* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream);
void concat_backward_cuda(float* dinp, const float* dout, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream);
void concat_backward_cuda(f16* dinp, const f16* dout, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream);

}  // namespace y5
