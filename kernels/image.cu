/*
 * CUDA side of kernels/image.h: uint8 → float / 255 over a flat batch. Four elements per thread (one 32-bit
 * load, one 128-bit store) when both pointers allow it, element by element otherwise and for the tail.
 * Tested against the CPU reference in tests/test_gpu_optim.cpp (bit-identical).
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

}  // namespace

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
