/*
 * CUDA side of kernels/detect.h: the inference decode, one thread per output element of one level
 * (grid-stride over bs·na·ny·nx·no), through the same detect_decode_value as the CPU reference. The map is f32
 * or f16 (read as float); the output f32.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/detect.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// map (bs, na, ny, nx, no) of S → out rows [offset, offset + na·ny·nx) of (bs, total, no); anchors (na, 2).
template <class S>
__global__ static void detect_decode_kernel(float* out, const S* map, const float* anchors, float stride, int na,
                                           int ny, int nx, int no, int64_t total, int64_t offset, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % no);
        int64_t r = i / no;  // ((b·na + a)·ny + y)·nx + x
        const int x = (int)(r % nx);
        r /= nx;
        const int y = (int)(r % ny);
        r /= ny;
        const int a = (int)(r % na);
        const int64_t b = r / na;
        const int64_t row = b * total + offset + ((int64_t)a * ny + y) * nx + x;
        out[row * no + j] = detect_decode_value(j, ld(map[i]), x, y, anchors[2 * a], anchors[2 * a + 1], stride);
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class S>
static void detect_decode_cuda_t(float* out, const S* map, const float* anchors, float stride, int bs, int na, int ny,
                                 int nx, int no, int64_t total, int64_t offset, cudaStream_t stream) {
    const int64_t n = (int64_t)bs * na * ny * nx * no;
    if (n == 0) return;
    detect_decode_kernel<S><<<grid_1d(n), kBlock, 0, stream>>>(out, map, anchors, stride, na, ny, nx, no, total, offset, n);
    Y5_LAUNCH_CHECK();
}

void detect_decode_cuda(float* out, const float* map, const float* anchors, float stride, int bs, int na, int ny, int nx,
                        int no, int64_t total, int64_t offset, cudaStream_t stream) {
    detect_decode_cuda_t(out, map, anchors, stride, bs, na, ny, nx, no, total, offset, stream);
}
void detect_decode_cuda(float* out, const f16* map, const float* anchors, float stride, int bs, int na, int ny, int nx,
                        int no, int64_t total, int64_t offset, cudaStream_t stream) {
    detect_decode_cuda_t(out, map, anchors, stride, bs, na, ny, nx, no, total, offset, stream);
}

}  // namespace y5
