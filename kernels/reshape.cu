/*
 * CUDA side of kernels/reshape.h.
 * transpose12: 32×32 tiles through shared memory (one column of padding against bank conflicts), so both
 *   the loads and the stores are coalesced; block (32, 8), each thread moving 4 elements. Grid x: column
 *   tiles, y: row tiles, z: batch (y and z loop past 65535). The backward is the transpose back, added.
 * space_to_depth2: one thread per output element over the N·4C output planes; every input element has
 *   exactly one output, so the backward adds without races.
 * Kernels templated over the storage type (float or f16, the backward's add in float); f32 and f16 launchers.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/reshape.h"

namespace y5 {

static constexpr int kTile = 32, kTileRows = 8;

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// inp (B,R,K) → out (B,K,R): out = inp^T (Acc: out += inp^T).
template <class T, bool Acc>
__global__ static void transpose_kernel(T* out, const T* inp, int B, int R, int K) {
    __shared__ T tile[kTile][kTile + 1];
    const int k0 = blockIdx.x * kTile;
    for (int64_t b = blockIdx.z; b < B; b += gridDim.z)
        for (int r0 = blockIdx.y * kTile; r0 < R; r0 += gridDim.y * kTile) {
            const T* src = inp + b * R * K;
            T* dst = out + b * R * K;
            for (int t = threadIdx.y; t < kTile; t += kTileRows) {  // rows r0 + t, columns k0 + threadIdx.x
                const int r = r0 + t, k = k0 + threadIdx.x;
                if (r < R && k < K) tile[t][threadIdx.x] = src[(int64_t)r * K + k];
            }
            __syncthreads();
            for (int t = threadIdx.y; t < kTile; t += kTileRows) {  // out rows k0 + t, columns r0 + threadIdx.x
                const int k = k0 + t, r = r0 + threadIdx.x;
                if (r < R && k < K) {
                    T* o = dst + (int64_t)k * R + r;
                    if constexpr (Acc) *o = st<T>(ld(*o) + ld(tile[threadIdx.x][t]));
                    else *o = tile[threadIdx.x][t];
                }
            }
            __syncthreads();  // the tile is reloaded on the next iteration
        }
}

// Output plane p of (N,4C,H/2,W/2) is (n, q, c) = (p / 4C, (p % 4C) / C, p % C); its element (y, x) comes
// from input (n, c, 2y + s2d_dy(q), 2x + s2d_dx(q)). Forward copies, backward adds (Acc).
template <class T, bool Acc>
__global__ static void space_to_depth2_kernel(T* dst, const T* src, int C, int H, int W, int64_t P) {
    const int Ho = H / 2, Wo = W / 2, L = Ho * Wo;
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int64_t n = p / (4 * C);
        const int qc = (int)(p - n * 4 * C), q = qc / C, c = qc - q * C;
        const int64_t in_plane = (n * C + c) * H * W;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < L; j += gridDim.x * blockDim.x) {
            const int y = j / Wo, x = j - y * Wo;
            const int64_t i = in_plane + (int64_t)(2 * y + s2d_dy(q)) * W + 2 * x + s2d_dx(q), o = p * L + j;
            if constexpr (Acc) dst[i] = st<T>(ld(dst[i]) + ld(src[o]));
            else dst[o] = src[i];
        }
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

static dim3 transpose_grid(int B, int R, int K) {
    const int ty = CEIL_DIV(R, kTile);
    return dim3((unsigned)CEIL_DIV(K, kTile), (unsigned)(ty < 65535 ? ty : 65535), (unsigned)(B < 65535 ? B : 65535));
}

template <class T>
static void transpose12_forward_launch(T* out, const T* inp, int B, int M, int N, cudaStream_t stream) {
    if ((int64_t)B * M * N == 0) return;
    transpose_kernel<T, false><<<transpose_grid(B, M, N), dim3(kTile, kTileRows), 0, stream>>>(out, inp, B, M, N);
    Y5_LAUNCH_CHECK();
}
void transpose12_forward_cuda(float* out, const float* inp, int B, int M, int N, cudaStream_t stream) {
    transpose12_forward_launch(out, inp, B, M, N, stream);
}
void transpose12_forward_cuda(f16* out, const f16* inp, int B, int M, int N, cudaStream_t stream) {
    transpose12_forward_launch(out, inp, B, M, N, stream);
}

// dinp (B,M,N) += the transpose of dout (B,N,M).
template <class T>
static void transpose12_backward_launch(T* dinp, const T* dout, int B, int M, int N, cudaStream_t stream) {
    if ((int64_t)B * M * N == 0) return;
    transpose_kernel<T, true><<<transpose_grid(B, N, M), dim3(kTile, kTileRows), 0, stream>>>(dinp, dout, B, N, M);
    Y5_LAUNCH_CHECK();
}
void transpose12_backward_cuda(float* dinp, const float* dout, int B, int M, int N, cudaStream_t stream) {
    transpose12_backward_launch(dinp, dout, B, M, N, stream);
}
void transpose12_backward_cuda(f16* dinp, const f16* dout, int B, int M, int N, cudaStream_t stream) {
    transpose12_backward_launch(dinp, dout, B, M, N, stream);
}

// Acc false: out = s2d(inp); true: dinp += the backward of dout.
template <bool Acc, class T>
static void space_to_depth2_launch(T* dst, const T* src, int N, int C, int H, int W, cudaStream_t stream) {
    const int64_t P = (int64_t)N * 4 * C, L = (int64_t)(H / 2) * (W / 2);
    if (P * L == 0) return;
    space_to_depth2_kernel<T, Acc><<<plane_grid(P, L), kBlock, 0, stream>>>(dst, src, C, H, W, P);
    Y5_LAUNCH_CHECK();
}
void space_to_depth2_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, cudaStream_t stream) {
    space_to_depth2_launch<false>(out, inp, N, C, H, W, stream);
}
void space_to_depth2_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, cudaStream_t stream) {
    space_to_depth2_launch<false>(out, inp, N, C, H, W, stream);
}
void space_to_depth2_backward_cuda(float* dinp, const float* dout, int N, int C, int H, int W, cudaStream_t stream) {
    space_to_depth2_launch<true>(dinp, dout, N, C, H, W, stream);
}
void space_to_depth2_backward_cuda(f16* dinp, const f16* dout, int N, int C, int H, int W, cudaStream_t stream) {
    space_to_depth2_launch<true>(dinp, dout, N, C, H, W, stream);
}

}  // namespace y5
