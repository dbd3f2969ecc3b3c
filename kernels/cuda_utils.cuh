/*
 * Helpers shared by the .cu files in kernels/ (CUDA only): launch geometry and deterministic block
 * reductions. Every reduction here adds in a fixed order, so a kernel gives the same bits on every run.
 */
#pragma once
#include <cstdint>

#include "kernels/cuda.h"
#include "kernels/common.h"

namespace y5 {

static constexpr int kBlock = 256;  // threads per block for the element-wise and plane kernels

// 1-D grid for a grid-stride loop over n elements (capped: past that, threads loop).
static inline int grid_1d(int64_t n, int block = kBlock) {
    int64_t g = CEIL_DIV(n, (int64_t)block);
    return (int)(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}

// Grid for "plane" kernels over P planes of L elements each (an (N,C,H,W) tensor is N·C planes of H·W):
// y walks the planes (a grid-stride loop past 65535, the gridDim.y limit), x the elements of a plane,
// about four per thread.
static inline dim3 plane_grid(int64_t P, int64_t L) {
    int64_t gx = CEIL_DIV(L, (int64_t)kBlock * 4);
    gx = gx < 1 ? 1 : (gx > 65535 ? 65535 : gx);
    int64_t gy = P < 1 ? 1 : (P > 65535 ? 65535 : P);
    return dim3((unsigned)gx, (unsigned)gy);
}

// A block for block_sum (and batchnorm.cu's block_welford): whole warps, at most 32 of them. Their full-mask
// shuffles name all 32 lanes of a warp, and the last step reads one partial per warp from a lane.
constexpr bool whole_warps(int threads) { return threads >= 32 && threads <= 1024 && threads % 32 == 0; }
static_assert(whole_warps(kBlock), "kBlock: the reductions' blocks must be whole warps, at most 1024 threads");

// One block per plane for a per-plane reduction (block_sum): threads, a multiple of 32, and blocks (a grid-stride
// loop over the P planes past the cap).
static inline int plane_reduce_block(int64_t L) {
    const int threads = L >= kBlock ? kBlock : (int)CEIL_DIV(L, (int64_t)32) * 32;
    Y5_CHECK(whole_warps(threads), "plane_reduce_block: %d threads for planes of %lld; block_sum needs a multiple of 32 "
             "up to 1024", threads, (long long)L);
    return threads;
}
static inline int plane_reduce_grid(int64_t P) { return (int)(P < 65535 * 8 ? P : 65535 * 8); }

// Sum over the 32 lanes of a warp; every lane gets the same result (xor butterfly, addition is commutative).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024: whole_warps), valid in every thread. Safe to call
// repeatedly (in a loop): the first barrier keeps a fast warp from overwriting `part` while a slow one
// still reads the previous call's values. Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? part[lane] : 0.f);
}

}  // namespace y5
