/*
 * CUDA side of kernels/concat.h: one launch per input, copying its N blocks of Ci·HW contiguous values
 * into (or, backward, adding from) channels [c0, c0 + Ci) of the (N,Co,HW) output. Grid y: images
 * (grid-stride past 65535), x: grid-stride over the Ci·HW values of one image, so loads and stores are
 * contiguous. Kernels templated over the storage type (float or f16, the add in float); f32 and f16 launchers.
 */
#include "kernels/concat.h"
#include "kernels/cuda_utils.cuh"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// out[n·out_stride + offset + i] = inp[n·L + i], i < L.
template <class T>
__global__ static void concat_forward_kernel(T* out, const T* inp, int N, int64_t L, int64_t out_stride,
                                             int64_t offset) {
    for (int64_t n = blockIdx.y; n < N; n += gridDim.y)
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.x * blockDim.x)
            out[n * out_stride + offset + i] = inp[n * L + i];
}

// dinp[n·L + i] += dout[n·out_stride + offset + i], i < L.
template <class T>
__global__ static void concat_backward_kernel(T* dinp, const T* dout, int N, int64_t L, int64_t out_stride,
                                              int64_t offset) {
    for (int64_t n = blockIdx.y; n < N; n += gridDim.y)
        for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < L; i += (int64_t)gridDim.x * blockDim.x)
            dinp[n * L + i] = st<T>(ld(dinp[n * L + i]) + ld(dout[n * out_stride + offset + i]));
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T>
static void concat_forward_launch(T* out, const T* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    const int64_t L = (int64_t)Ci * HW;
    if (N * L == 0) return;
    concat_forward_kernel<T><<<plane_grid(N, L), kBlock, 0, stream>>>(out, inp, N, L, (int64_t)Co * HW,
                                                                      (int64_t)c0 * HW);
    Y5_LAUNCH_CHECK();
}
void concat_forward_cuda(float* out, const float* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    concat_forward_launch(out, inp, N, Ci, HW, Co, c0, stream);
}
void concat_forward_cuda(f16* out, const f16* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    concat_forward_launch(out, inp, N, Ci, HW, Co, c0, stream);
}

template <class T>
static void concat_backward_launch(T* dinp, const T* dout, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    const int64_t L = (int64_t)Ci * HW;
    if (N * L == 0) return;
    concat_backward_kernel<T><<<plane_grid(N, L), kBlock, 0, stream>>>(dinp, dout, N, L, (int64_t)Co * HW,
                                                                       (int64_t)c0 * HW);
    Y5_LAUNCH_CHECK();
}
void concat_backward_cuda(float* dinp, const float* dout, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    concat_backward_launch(dinp, dout, N, Ci, HW, Co, c0, stream);
}
void concat_backward_cuda(f16* dinp, const f16* dout, int N, int Ci, int HW, int Co, int c0, cudaStream_t stream) {
    concat_backward_launch(dinp, dout, N, Ci, HW, Co, c0, stream);
}

}  // namespace y5
