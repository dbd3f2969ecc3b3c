/*
 * Data-movement ops with a backward, CPU reference.
 * transpose12: inp (B,M,N) → out (B,N,M). Detect uses it to turn a head conv's (bs, na·no, ny, nx) into
 *   YOLOv5's (bs, na, ny, nx, no): view as (bs·na, no, ny·nx), transpose, view again.
 * space_to_depth2: Focus's slicing, inp (N,C,H,W) → out (N,4C,H/2,W/2), channel blocks in PyTorch's order
 *   x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2].
 * Backward accumulates into dinp (+=).
 * T: f32, f64, or f16 (both are copies, exact in f16; each input gets one gradient, added in float and rounded once).
 * The CUDA kernels (kernels/reshape.cu) share s2d_dy / s2d_dx.
 */
#pragma once
#include "kernels/common.h"
#if defined(__AVX2__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

#if defined(__AVX2__) && !defined(__CUDACC__)
// One 8×8 block of floats: dst row j (stride ld) = src column j (rows of stride ls), in registers: unpack pairs of
// rows, shuffle pairs of pairs, swap 128-bit halves (the usual AVX sequence). Add: dst row j += src column j.
template <bool Add = false> inline void transpose8x8_avx2(float* dst, int64_t ld, const float* src, int64_t ls) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; ++j) {
        __m256 lo = _mm256_permute2f128_ps(r[j], r[j + 4], 0x20), hi = _mm256_permute2f128_ps(r[j], r[j + 4], 0x31);
        if constexpr (Add) {
            lo = _mm256_add_ps(_mm256_loadu_ps(dst + j * ld), lo);
            hi = _mm256_add_ps(_mm256_loadu_ps(dst + (j + 4) * ld), hi);
        }
        _mm256_storeu_ps(dst + j * ld, lo);
        _mm256_storeu_ps(dst + (j + 4) * ld, hi);
    }
}
#endif

// oneDNN's channel-blocked images (nChw{B}c with C a multiple of B: blocks of P pixels × B lanes) into plain NCHW:
// src (G, P, B) → dst (G, B, P) over the blocks [g0, g1); Add: dst += (an accumulated gradient: the adds of oneDNN's
// sum reorder, dst + src per element). f32 on an AVX2 build in 8×8 register blocks (B a multiple of 8), the pixels
// past a multiple of 8 one by one. oneDNN 2.6's own reorder in this direction ran at 4–6 GB/s inside the training
// step (its sum variant at a quarter of the plain one's speed), the other direction at 19–32.
template <bool Add> void unblock_cpu(float* dst, const float* src, int64_t g0, int64_t g1, int64_t P, int B) {
    for (int64_t g = g0; g < g1; ++g) {
        float* d = dst + g * B * P;
        const float* s = src + g * P * B;
        int64_t p0 = 0;
#if defined(__AVX2__) && !defined(__CUDACC__)
        if (B % 8 == 0) {
            p0 = P / 8 * 8;
            for (int h = 0; h < B; h += 8)
                for (int64_t p = 0; p < p0; p += 8) transpose8x8_avx2<Add>(d + h * P + p, P, s + p * B + h, B);
        }
#endif
        for (int64_t p = p0; p < P; ++p)
            for (int l = 0; l < B; ++l) d[l * P + p] = Add ? d[l * P + p] + s[p * B + l] : s[p * B + l];
    }
}

// Columns [n0, n1) of each (M,N) matrix, i.e. rows n0..n1 of its (N,M) transpose (threads may split one matrix),
// in 16×16 tiles so that the reads (along n) and the writes (along m) each stay in a few cache lines; f32 on an
// AVX2 build in 8×8 register blocks (Detect's (no, P) ↔ (P, no) maps: 3× the scalar loop's speed), with the
// scalar loop for the edges.
template <class T> void transpose12_cols_cpu(T* out, const T* inp, int B, int M, int N, int n0, int n1) {
    constexpr int kTile = 16;
#if defined(__AVX2__) && !defined(__CUDACC__)
    if constexpr (std::is_same_v<T, float>) {
        const int n8 = n0 + (n1 - n0) / 8 * 8, m8 = M / 8 * 8;
        for (int64_t b = 0; b < B; ++b) {
            for (int n = n0; n < n8; n += 8) {
                for (int m = 0; m < m8; m += 8)
                    transpose8x8_avx2(out + (b * N + n) * M + m, M, inp + (b * M + m) * N + n, N);
                for (int i = n; i < n + 8; ++i)
                    for (int m = m8; m < M; ++m) out[(b * N + i) * M + m] = inp[(b * M + m) * N + i];
            }
            for (int n = n8; n < n1; ++n)
                for (int m = 0; m < M; ++m) out[(b * N + n) * M + m] = inp[(b * M + m) * N + n];
        }
        return;
    }
#endif
    for (int64_t b = 0; b < B; ++b)
        for (int i0 = n0; i0 < n1; i0 += kTile)
            for (int m0 = 0; m0 < M; m0 += kTile) {
                const int i1 = i0 + kTile < n1 ? i0 + kTile : n1, m1 = m0 + kTile < M ? m0 + kTile : M;
                for (int n = i0; n < i1; ++n)
                    for (int m = m0; m < m1; ++m) out[(b * N + n) * M + m] = inp[(b * M + m) * N + n];
            }
}

template <class T> void transpose12_forward_cpu(T* out, const T* inp, int B, int M, int N) {
    transpose12_cols_cpu<T>(out, inp, B, M, N, 0, N);
}

template <class T> void transpose12_backward_cpu(T* dinp, const T* dout, int B, int M, int N) {
    for (int64_t b = 0; b < B; ++b)
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                T& dx = dinp[(b * M + m) * N + n];
                dx = st<T>(ld(dx) + ld(dout[(b * N + n) * M + m]));
            }
}

// Source (row, column) offsets of channel block q: (0,0), (1,0), (0,1), (1,1).
Y5_HD int s2d_dy(int q) { return q & 1; }
Y5_HD int s2d_dx(int q) { return q >> 1; }

template <class T> void space_to_depth2_forward_cpu(T* out, const T* inp, int N, int C, int H, int W) {
    const int Ho = H / 2, Wo = W / 2;
    for (int n = 0; n < N; ++n)
        for (int q = 0; q < 4; ++q)
            for (int c = 0; c < C; ++c)
                for (int y = 0; y < Ho; ++y)
                    for (int x = 0; x < Wo; ++x)
                        out[(((int64_t)n * 4 * C + q * C + c) * Ho + y) * Wo + x] =
                            inp[(((int64_t)n * C + c) * H + 2 * y + s2d_dy(q)) * W + 2 * x + s2d_dx(q)];
}

template <class T> void space_to_depth2_backward_cpu(T* dinp, const T* dout, int N, int C, int H, int W) {
    const int Ho = H / 2, Wo = W / 2;
    for (int n = 0; n < N; ++n)
        for (int q = 0; q < 4; ++q)
            for (int c = 0; c < C; ++c)
                for (int y = 0; y < Ho; ++y)
                    for (int x = 0; x < Wo; ++x) {
                        T& dx = dinp[(((int64_t)n * C + c) * H + 2 * y + s2d_dy(q)) * W + 2 * x + s2d_dx(q)];
                        dx = st<T>(ld(dx) + ld(dout[(((int64_t)n * 4 * C + q * C + c) * Ho + y) * Wo + x]));
                    }
}

// CUDA launchers (kernels/reshape.cu, the CPU reference's arguments plus the stream; f32 and f16); built only with
// Y5_CUDA.
void transpose12_forward_cuda(float* out, const float* inp, int B, int M, int N, cudaStream_t stream);
void transpose12_forward_cuda(f16* out, const f16* inp, int B, int M, int N, cudaStream_t stream);
void transpose12_backward_cuda(float* dinp, const float* dout, int B, int M, int N, cudaStream_t stream);
void transpose12_backward_cuda(f16* dinp, const f16* dout, int B, int M, int N, cudaStream_t stream);
void space_to_depth2_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, cudaStream_t stream);
void space_to_depth2_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, cudaStream_t stream);
void space_to_depth2_backward_cuda(float* dinp, const float* dout, int N, int C, int H, int W, cudaStream_t stream);
void space_to_depth2_backward_cuda(f16* dinp, const f16* dout, int N, int C, int H, int W, cudaStream_t stream);

}  // namespace y5
