/*
 * The CUDA helpers of kernels/ (included by its .cu files only): the block size, the launch grids, the
 * block-size precondition of the reductions, and the one deterministic block reduction. Every reduction
 * in kernels/ that combines values across the threads of a block goes through block_reduce (or, for a
 * block of one warp, warp_reduce), so its order is stated once, here, and tested once
 * (tests/test_gpu_ops.cpp, "block_reduce order").
 */
#pragma once
#include <cstdint>

#include "kernels/cuda.h"
#include "kernels/common.h"

namespace y5 {

static constexpr int kBlock = 256;        // threads per block, for every kernel not shaped otherwise
static constexpr int kMaxGridX = 65535 * 8;  // cap of grid-stride grids along x (past it, threads loop)
static constexpr int kMaxGridY = 65535;      // the hardware's gridDim.y limit

// ----------------------------------------------------------------------------------------------------
// Launch grids

// 1-D grid for a grid-stride loop over n items, `per_block` items per block per pass: kBlock for one thread
// per item, 1 for one block per item (a plane, a channel). At least one block, at most kMaxGridX.
static inline int grid_1d(int64_t n, int64_t per_block = kBlock) {
    const int64_t g = CEIL_DIV(n, per_block);
    return (int)(g < 1 ? 1 : (g > kMaxGridX ? kMaxGridX : g));
}

// 2-D grid over P items of gx blocks each: x the blocks within an item (at most 65535), y the items
// (a grid-stride loop past kMaxGridY).
static inline dim3 grid_2d(int64_t gx, int64_t P) {
    gx = gx < 1 ? 1 : (gx > 65535 ? 65535 : gx);
    const int64_t gy = P < 1 ? 1 : (P > kMaxGridY ? kMaxGridY : P);
    return dim3((unsigned)gx, (unsigned)gy);
}

// Grid for "plane" kernels over P planes of L elements each (an (N,C,H,W) tensor is N·C planes of H·W):
// y walks the planes, x the elements of a plane, about four per thread of a kBlock block.
static inline dim3 plane_grid(int64_t P, int64_t L) { return grid_2d(CEIL_DIV(L, (int64_t)kBlock * 4), P); }

// ----------------------------------------------------------------------------------------------------
// Block-size precondition of block_reduce

// Whole warps, at most 32 of them: the full-mask shuffles name all 32 lanes of a warp, and the second step
// reads one partial per warp from a lane.
constexpr bool reduce_block_ok(int threads) { return threads >= 32 && threads <= 1024 && threads % 32 == 0; }
static_assert(reduce_block_ok(kBlock), "kBlock: block_reduce's blocks must be whole warps, at most 1024 threads");

// Threads for a block_reduce kernel launched with one block per plane of L elements (grid_1d(P, 1)):
// kBlock, or fewer whole warps for a small plane.
static inline int plane_reduce_block(int64_t L) {
    const int threads = L >= kBlock ? kBlock : (int)CEIL_DIV(L, (int64_t)32) * 32;
    Y5_CHECK(reduce_block_ok(threads), "plane_reduce_block: %d threads for planes of %lld; block_reduce needs a "
             "multiple of 32 up to 1024", threads, (long long)L);
    return threads;
}

// ----------------------------------------------------------------------------------------------------
// Deterministic reductions

// The combining ops. A state T{} (zero) must be op's identity: op(a, T{}) == a.
struct SumOp {
    template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// v from lane (this lane ^ o) of the warp; a struct state overloads it (shuffles move 8 bytes at most).
template <class T> __device__ __forceinline__ T shfl_xor(T v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }

// Combines v over the 32 lanes of a warp by an xor butterfly: for o = 16, 8, 4, 2, 1 each lane sets
// v = op(v, v of lane ^ o). Lane 0 gets ((v0 ∘ v16) ∘ (v8 ∘ v24)) ∘ ... , the pairwise tree over lanes whose
// index differs in bit 4 first, then bit 3, ..., then bit 0. With a commutative op (+) every lane gets
// lane 0's bits. All 32 lanes must call it.
template <class T, class Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
    return v;
}

// Combines v over the block (blockDim.x: reduce_block_ok). Order, fixed by the block size alone: warp_reduce
// within each warp; then warp w's result (from its lane 0) becomes lane w's value in a second warp_reduce,
// lanes past the last warp holding T{}. So thread 0's result is, for a block of W warps,
// warp_reduce(r_0, ..., r_{W-1}, T{}, ...) with r_w = warp_reduce(v of threads 32w .. 32w + 31): the same
// bits on every run and in any thread order. With a commutative op every thread gets thread 0's bits;
// otherwise only thread 0's value follows this order (the others combine the same values in lane order).
// Every thread of the block must call it; safe to call repeatedly (the first barrier keeps a fast warp
// from overwriting `part` while a slow one still reads the previous call's partials).
template <class T, class Op> __device__ __forceinline__ T block_reduce(T v, Op op) {
    __shared__ T part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_reduce(lane < nwarps ? part[lane] : T{}, op);
}

template <class T> __device__ __forceinline__ T block_sum(T v) { return block_reduce(v, SumOp{}); }
template <class T> __device__ __forceinline__ T warp_sum(T v) { return warp_reduce(v, SumOp{}); }

}  // namespace y5
