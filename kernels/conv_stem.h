/*
 * The model's first convolution on the CPU's blocked inference path (kernels/conv2d_dnnl.h, dnnl_bconv): an NCHW
 * image of a few channels (yolov5n's stem: 3 → 16, 6×6, stride 2, pad 2) straight into the blocked layout, direct
 * in AVX2 registers. oneDNN 2.6's avx2 kernel for that shape reaches about 30 GFLOP/s on one core (6.1 ms of a
 * 65 ms image at 640), its other convolutions 55–90.
 *   in (C, H, W) one image; w8 (K/8, C, R, S, 8) from stem_weights; bias (K); out (K/B, Ho, Wo, B), B 8 or 16;
 *   out = act(conv(in, w, stride, pad) + bias) over output rows [oy0, oy1) (threads split the rows).
 * Each output is Σ over (c, ky, kx) in that order with one fused multiply-add per tap (taps in the zero padding
 * skipped), + bias, then act_forward_cpu: the same bits for any row split. Register tile: two 8-channel groups ×
 * 6 output pixels (12 accumulators, 2 weight vectors, 1 broadcast input value). An AVX-512 build with B = 16 takes
 * the two groups as one 512-bit vector (stem_tile16, the same bits): yolov5n's stem at 640, SiLU included, timed
 * inside bench_detect on one Zen 4 core, 4.7 → 4.6 ms (a standalone loop whose arguments were all compile-time
 * constants had shown 5.6 → 4.0: that is the room left).
 */
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/activation.h"
#if defined(__AVX2__) && defined(__FMA__) && !defined(__CUDACC__)
#include <immintrin.h>
#define Y5_STEM_AVX2 1
#else
#define Y5_STEM_AVX2 0
#endif
#if Y5_STEM_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
#define Y5_STEM_AVX512 1
#else
#define Y5_STEM_AVX512 0
#endif

namespace y5 {

// Whether stem_conv takes this convolution: an AVX2 + FMA build, few input channels, whole 8-channel groups
// and whole B-blocks of outputs.
inline bool stem_conv_fits(int C, int K, int B) {
    return Y5_STEM_AVX2 && C >= 1 && C <= 4 && K % 8 == 0 && (B == 8 || B == 16) && K % B == 0;
}

inline int64_t stem_weights_floats(int C, int K, int R, int S) { return (int64_t)K * C * R * S; }

// weight (K, C, R, S) → w8 (K/8, C, R, S, 8).
inline void stem_weights(float* w8, const float* weight, int C, int K, int R, int S) {
    const int64_t taps = (int64_t)C * R * S;
    for (int k = 0; k < K; ++k)
        for (int64_t t = 0; t < taps; ++t) w8[((int64_t)(k / 8) * taps + t) * 8 + k % 8] = weight[k * taps + t];
}

#if Y5_STEM_AVX2
// G (1 or 2) groups from group g × NP pixels from ox: interior pixels (every tap in range) unless Checked.
// Stride: 1 or 2 as a constant (the pixels' inputs then at fixed offsets, no register per pixel), 0: `stride`.
// KS: the kernel's width as a constant (6, yolov5n's: the taps' loop unrolled, each input value loaded once for
// the pixels that share it), 0: S.
template <int G, int NP, bool Checked, int Stride, int KS>
inline void stem_tile(float* out, const float* in, const float* w8, const float* bias, int C, int H, int W, int R,
                      int S_, int stride_, int pad, int Ho, int Wo, int B, int g, int oy, int ox) {
    const int stride = Stride ? Stride : stride_, S = KS ? KS : S_;
    __m256 acc[G][NP];
    for (int q = 0; q < G; ++q)
        for (int p = 0; p < NP; ++p) acc[q][p] = _mm256_setzero_ps();
    const int64_t taps = (int64_t)C * R * S;
    for (int c = 0; c < C; ++c)
        for (int ky = 0; ky < R; ++ky) {
            const int iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= H) continue;
            const float* row = in + ((int64_t)c * H + iy) * W;
            const float* wt = w8 + ((int64_t)g * taps + ((int64_t)c * R + ky) * S) * 8;
            for (int kx = 0; kx < S; ++kx) {
                __m256 wv[G];
                for (int q = 0; q < G; ++q) wv[q] = _mm256_loadu_ps(wt + q * taps * 8 + kx * 8);
                const float* xp = row + (ox * stride - pad + kx);
                for (int p = 0; p < NP; ++p) {
                    if (Checked) {
                        const int ix = (ox + p) * stride - pad + kx;
                        if (ix < 0 || ix >= W) continue;
                    }
                    const __m256 xv = _mm256_broadcast_ss(xp + p * stride);
                    for (int q = 0; q < G; ++q) acc[q][p] = _mm256_fmadd_ps(xv, wv[q], acc[q][p]);
                }
            }
        }
    for (int q = 0; q < G; ++q) {
        const int k0 = (g + q) * 8;
        const __m256 bv = _mm256_loadu_ps(bias + k0);
        float* o = out + (int64_t)(k0 / B) * Ho * Wo * B + k0 % B;
        for (int p = 0; p < NP; ++p)
            _mm256_storeu_ps(o + ((int64_t)oy * Wo + ox + p) * B, _mm256_add_ps(acc[q][p], bv));
    }
}
#endif

#if Y5_STEM_AVX512
// Groups g and g + 1 (k0 = 8g a multiple of 16, so one 16-channel block of out) as one 512-bit vector × NP interior
// pixels: each lane the same fused multiply-adds in the same order as stem_tile's, so the same bits, with one weight
// vector per tap for NP pixels where stem_tile loads two per 6.
template <int NP, int Stride, int KS>
inline void stem_tile16(float* out, const float* in, const float* w8, const float* bias, int C, int H, int W, int R,
                        int S_, int stride_, int pad, int Ho, int Wo, int g, int oy, int ox) {
    const int stride = Stride ? Stride : stride_, S = KS ? KS : S_;
    __m512 acc[NP];
    for (int p = 0; p < NP; ++p) acc[p] = _mm512_setzero_ps();
    const int64_t taps = (int64_t)C * R * S;
    const float* w0 = w8 + (int64_t)g * taps * 8;
    const float* w1 = w0 + taps * 8;
    for (int c = 0; c < C; ++c)
        for (int ky = 0; ky < R; ++ky) {
            const int iy = oy * stride - pad + ky;
            if (iy < 0 || iy >= H) continue;
            const float* xp = in + ((int64_t)c * H + iy) * W + (ox * stride - pad);
            const int64_t t = ((int64_t)c * R + ky) * S * 8;
            for (int kx = 0; kx < S; ++kx) {
                const __m512 wv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(w0 + t + kx * 8)),
                                                     _mm256_loadu_ps(w1 + t + kx * 8), 1);
                for (int p = 0; p < NP; ++p) acc[p] = _mm512_fmadd_ps(_mm512_set1_ps(xp[p * stride + kx]), wv, acc[p]);
            }
        }
    const __m512 bv = _mm512_loadu_ps(bias + g * 8);
    float* o = out + (int64_t)(g / 2) * Ho * Wo * 16 + ((int64_t)oy * Wo + ox) * 16;
    for (int p = 0; p < NP; ++p) _mm512_storeu_ps(o + p * 16, _mm512_add_ps(acc[p], bv));
}
#endif

inline void stem_conv(float* out, const float* in, const float* w8, const float* bias, int C, int H, int W, int K,
                      int R, int S, int stride, int pad, int B, Act act, int oy0, int oy1) {
#if Y5_STEM_AVX2
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    // Output columns whose taps all lie inside the image: [lo, hi).
    const int lo = std::min(Wo, (pad + stride - 1) / stride);
    const int hi = std::max(lo, std::min(Wo, (W + pad - S) / stride + 1));
    constexpr int NP = 6;  // also the 512-bit tiles' width (6, 8, 12, 14, 16 in a standalone loop: 6 and 12 fastest)
    const int groups = K / 8;
    // One tile at (g, oy, ox): groups g and g + 1, or the last group alone; P pixels, edge-checked or not, the
    // stride (1, 2) and the width (6) constants or not (0).
    auto tile = [&](auto pixels, auto checked, auto stride_c, auto width, int g, int oy, int ox) {
        constexpr int P = decltype(pixels)::value, St = decltype(stride_c)::value, KS = decltype(width)::value;
        constexpr bool Ch = decltype(checked)::value;
        if (g + 1 < groups)
            stem_tile<2, P, Ch, St, KS>(out, in, w8, bias, C, H, W, R, S, stride, pad, Ho, Wo, B, g, oy, ox);
        else stem_tile<1, P, Ch, St, KS>(out, in, w8, bias, C, H, W, R, S, stride, pad, Ho, Wo, B, g, oy, ox);
    };
    const std::true_type edge;
    const std::false_type inside;
    const std::integral_constant<int, 0> any;  // a stride other than 1 and 2, a width other than 6
    const std::integral_constant<int, 1> one;
    const std::integral_constant<int, 2> two;
    const std::integral_constant<int, 6> six;
    const std::integral_constant<int, NP> np;
    // run(stride, width) for an interior tile: the stride and yolov5n's width as constants where they are.
    auto interior = [&](auto&& run) {
        if (stride == 2 && S == 6) run(two, six);
        else if (stride == 2) run(two, any);
        else if (stride == 1) run(one, any);
        else run(any, any);
    };
    for (int oy = oy0; oy < oy1; ++oy) {
        for (int g = 0; g < groups; g += 2) {
            for (int ox = 0; ox < lo; ++ox) tile(one, edge, any, any, g, oy, ox);
            int ox = lo;
#if Y5_STEM_AVX512
            if (B == 16 && g + 1 < groups) {  // a whole 16-channel block: 512-bit tiles
                auto tile16 = [&](auto pixels, auto stride_c, auto width) {
                    constexpr int P = decltype(pixels)::value, St = decltype(stride_c)::value;
                    constexpr int KS = decltype(width)::value;
                    stem_tile16<P, St, KS>(out, in, w8, bias, C, H, W, R, S, stride, pad, Ho, Wo, g, oy, ox);
                };
                for (; ox + NP <= hi; ox += NP) interior([&](auto st, auto ks) { tile16(np, st, ks); });
                for (; ox < hi; ++ox) tile16(one, any, any);
            }
#endif
            for (; ox + NP <= hi; ox += NP) interior([&](auto st, auto ks) { tile(np, inside, st, ks, g, oy, ox); });
            for (; ox < Wo; ++ox) tile(one, edge, any, any, g, oy, ox);
        }
        if (act.kind != ActKind::Identity)
            for (int b = 0; b < K / B; ++b) {
                float* o = out + ((int64_t)b * Ho + oy) * Wo * B;
                act_forward_cpu(o, o, (int64_t)Wo * B, act);
            }
    }
#else
    (void)out, (void)in, (void)w8, (void)bias, (void)C, (void)H, (void)W, (void)K, (void)R, (void)S, (void)stride,
        (void)pad, (void)B, (void)act, (void)oy0, (void)oy1;
#endif
}

}  // namespace y5
