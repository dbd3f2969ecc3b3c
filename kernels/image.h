/*
 * Batch images uint8 → float: x = v / 255 per element, the layout kept. The loader already writes batches as
 * (N,3,H,W) CHW RGB (engine/data/loader.cpp: HWC BGR → CHW RGB), so this is YOLOv5's `imgs.float() / 255` on
 * the flat batch. CPU reference here (engine/app/val.cpp's batch_images calls it); CUDA launcher in
 * kernels/image.cu. Both use u8_to_unit, and float division is exact-rounded on both sides, so the results
 * are bit-identical.
 */
#pragma once
#include <cstdint>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

Y5_HD float u8_to_unit(uint8_t v) { return (float)v / 255.0f; }

inline void images_u8_to_f32_cpu(float* out, const uint8_t* in, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = u8_to_unit(in[i]);
}

// CUDA launcher (kernels/image.cu); built only with Y5_CUDA. in and out are device pointers.
void images_u8_to_f32_cuda(float* out, const uint8_t* in, int64_t n, cudaStream_t stream);

}  // namespace y5
