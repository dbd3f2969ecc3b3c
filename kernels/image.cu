/*
 * CUDA side of kernels/image.h: uint8 → float / 255 over a flat batch. Four elements per thread (one 32-bit
 * load, one 128-bit store) when both pointers allow it, element by element otherwise and for the tail.
 * Tested against the CPU reference in tests/test_gpu_optim.cpp (bit-identical). The bilinear resize: one thread
 * per output element (tests/test_gpu_trainflags.cpp).
 */
#include <algorithm>
#include <cstdint>

#include "kernels/cuda_utils.cuh"
#include "kernels/image.h"

namespace y5 {

namespace {

// n4 groups of four: in as uchar4 (4-byte aligned), out as float4 (16-byte aligned).
__global__ void u8_to_f32_vec4_kernel(float4* out, const uchar4* in, int64_t n4) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        const uchar4 v = in[i];
        out[i] = make_float4(u8_to_unit(v.x), u8_to_unit(v.y), u8_to_unit(v.z), u8_to_unit(v.w));
    }
}

__global__ void u8_to_f32_kernel(float* out, const uint8_t* in, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = u8_to_unit(in[i]);
}

// One output element per thread: (plane, oy, ox) from the flat index.
__global__ void resize_bilinear_kernel(float* out, const float* in, int64_t n, int h, int w, int oh, int ow) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int ox = (int)(i % ow), oy = (int)(i / ow % oh);
        const int64_t p = i / ((int64_t)ow * oh);
        out[i] = bilinear_at(in + p * h * w, h, w, oh, ow, oy, ox);
    }
}

}  // namespace

void images_resize_bilinear_cuda(float* out, const float* in, int64_t planes, int h, int w, int oh, int ow,
                                 cudaStream_t stream) {
    const int64_t n = planes * oh * ow;
    if (n <= 0) return;
    resize_bilinear_kernel<<<grid_1d(n), kBlock, 0, stream>>>(out, in, n, h, w, oh, ow);
    Y5_LAUNCH_CHECK();
}

void images_u8_to_f32_cuda(float* out, const uint8_t* in, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    const bool aligned = (uintptr_t)in % 4 == 0 && (uintptr_t)out % 16 == 0;
    const int64_t n4 = aligned ? n / 4 : 0, tail = n - 4 * n4;
    if (n4 > 0) {
        u8_to_f32_vec4_kernel<<<grid_1d(n4), kBlock, 0, stream>>>(reinterpret_cast<float4*>(out),
                                                                    reinterpret_cast<const uchar4*>(in), n4);
        Y5_LAUNCH_CHECK();
    }
    if (tail > 0) {
        u8_to_f32_kernel<<<grid_1d(tail), kBlock, 0, stream>>>(out + 4 * n4, in + 4 * n4, tail);
        Y5_LAUNCH_CHECK();
    }
}

}  // namespace y5
