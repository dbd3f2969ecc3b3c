/*
 * conv2d, CPU reference: im2col + BLAS GEMM, per image. groups = 1, dilation = 1, optional bias.
 *   inp (N,C,H,W), weight (K,C,R,S), bias (K) or null, out (N,K,Ho,Wo),
 *   Ho = (H + 2·pad − R)/stride + 1 (likewise Wo).
 * Passes are named as in CUTLASS: fprop (forward), dgrad (d inp), wgrad (d weight, d bias).
 * Backward accumulates into dinp/dweight/dbias (+=); any of them may be null to skip it.
 * col is caller-provided workspace of conv2d_col_elems(...) elements (0 for 1×1, stride 1, pad 0,
 * where the image itself is the column matrix). Templated on T so gradient checks run in double.
 * f16 (mixed precision, torch.autocast's semantics): f16 operands, float arithmetic, one rounding per output.
 * The *_f16_cpu references convert one image at a time to float scratch, run the f32 passes and round once.
 * CUDA: the same three passes through cuDNN (kernels/conv2d.cu), declared at the end of this file; f32 or f16.
 * The ops call the *_run passes: f32 through oneDNN (kernels/conv2d_dnnl.h) when it is on, else these references.
 */
#pragma once
#include <cblas.h>

#include <cstring>

#include <algorithm>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/common.h"
#include "kernels/conv2d_dnnl.h"
#include "kernels/elementwise.h"

namespace y5 {

inline int conv_out_size(int H, int R, int stride, int pad) { return (H + 2 * pad - R) / stride + 1; }

inline bool conv_is_pointwise(int R, int S, int stride, int pad) { return R == 1 && S == 1 && stride == 1 && pad == 0; }

inline int64_t conv2d_col_elems(int C, int R, int S, int Ho, int Wo, int stride, int pad) {
    return conv_is_pointwise(R, S, stride, pad) ? 0 : (int64_t)C * R * S * Ho * Wo;
}

// Row-major C (M,N) = alpha·op(A)·op(B) + beta·C, op(A) (M,K), op(B) (K,N).
inline void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                 int ldb, float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
                 int ldb, double beta, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

// The references' GEMM (OpenBLAS); the pointwise GEMM path below passes its own (PwGemm) to the same loops.
struct BlasGemm {
    template <class T>
    void operator()(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
                    T* C, int ldc) const {
        gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
};

// img (C,H,W) → col (C·R·S, Ho·Wo); row (c,r,s), column (ho,wo); zero where the window is in the padding.
// Per output row, the columns whose tap lands inside the image are [lo, hi): zeros, a (strided) copy, zeros.
template <class T>
void im2col(T* col, const T* img, int C, int H, int W, int R, int S, int stride, int pad, int Ho, int Wo) {
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r)
            for (int s = 0; s < S; ++s) {
                T* row = col + ((int64_t)(c * R + r) * S + s) * Ho * Wo;
                const T* plane = img + (int64_t)c * H * W;
                const int off = s - pad;  // w = wo·stride + off
                int lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
                int hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / stride + 1;
                lo = lo < Wo ? lo : Wo;
                hi = hi < Wo ? (hi > lo ? hi : lo) : Wo;
                for (int ho = 0; ho < Ho; ++ho) {
                    T* dst = row + (int64_t)ho * Wo;
                    const int h = ho * stride - pad + r;
                    if (h < 0 || h >= H) {
                        std::memset(dst, 0, sizeof(T) * Wo);
                        continue;
                    }
                    const T* line = plane + (int64_t)h * W;
                    for (int wo = 0; wo < lo; ++wo) dst[wo] = T(0);
                    if (stride == 1) std::memcpy(dst + lo, line + lo + off, sizeof(T) * (hi - lo));
                    else
                        for (int wo = lo; wo < hi; ++wo) dst[wo] = line[wo * stride + off];
                    for (int wo = hi; wo < Wo; ++wo) dst[wo] = T(0);
                }
            }
}

// The adjoint of im2col: img (C,H,W) += scatter of col.
template <class T>
void col2im(T* img, const T* col, int C, int H, int W, int R, int S, int stride, int pad, int Ho, int Wo) {
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r)
            for (int s = 0; s < S; ++s) {
                const T* row = col + ((int64_t)(c * R + r) * S + s) * Ho * Wo;
                T* plane = img + (int64_t)c * H * W;
                for (int ho = 0; ho < Ho; ++ho) {
                    int h = ho * stride - pad + r;
                    if (h < 0 || h >= H) continue;
                    for (int wo = 0; wo < Wo; ++wo) {
                        int w = wo * stride - pad + s;
                        if (w >= 0 && w < W) plane[h * W + w] += row[ho * Wo + wo];
                    }
                }
            }
}

// One image's bias gradient: dbias[k] += Σ_p dy[k][p], dy (K,P).
template <class T> void bias_grad_cpu(T* dbias, const T* dy, int K, int P) {
    for (int k = 0; k < K; ++k) {
        T acc = 0;
        for (int p = 0; p < P; ++p) acc += dy[(int64_t)k * P + p];
        dbias[k] += acc;
    }
}

template <class T, class Gemm = BlasGemm>
void conv2d_fprop_cpu(T* out, const T* inp, const T* weight, const T* bias, T* col, int N, int C, int H, int W,
                      int K, int R, int S, int stride, int pad, Gemm mm = {}) {
    const int Ho = conv_out_size(H, R, stride, pad), Wo = conv_out_size(W, S, stride, pad);
    const int P = Ho * Wo, CRS = C * R * S;
    const bool pointwise = conv_is_pointwise(R, S, stride, pad);
    for (int n = 0; n < N; ++n) {
        const T* x = inp + (int64_t)n * C * H * W;
        T* y = out + (int64_t)n * K * P;
        if (!pointwise) im2col(col, x, C, H, W, R, S, stride, pad, Ho, Wo);
        mm(false, false, K, P, CRS, T(1), weight, CRS, pointwise ? x : col, P, T(0), y, P);  // (K,CRS)·(CRS,P)
        if (bias)
            for (int k = 0; k < K; ++k)
                for (int p = 0; p < P; ++p) y[(int64_t)k * P + p] += bias[k];
    }
}

template <class T, class Gemm = BlasGemm>
void conv2d_backward_cpu(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, T* col, int N,
                         int C, int H, int W, int K, int R, int S, int stride, int pad, Gemm mm = {}) {
    const int Ho = conv_out_size(H, R, stride, pad), Wo = conv_out_size(W, S, stride, pad);
    const int P = Ho * Wo, CRS = C * R * S;
    const bool pointwise = conv_is_pointwise(R, S, stride, pad);
    for (int n = 0; n < N; ++n) {
        const T* x = inp + (int64_t)n * C * H * W;
        const T* dy = dout + (int64_t)n * K * P;
        if (dbias) bias_grad_cpu(dbias, dy, K, P);
        if (dweight) {  // wgrad: dW (K,CRS) += dy (K,P) · colᵀ (P,CRS)
            if (!pointwise) im2col(col, x, C, H, W, R, S, stride, pad, Ho, Wo);
            mm(false, true, K, CRS, P, T(1), dy, P, pointwise ? x : col, P, T(1), dweight, CRS);
        }
        if (dinp) {  // dgrad: dcol (CRS,P) = Wᵀ (CRS,K) · dy (K,P), then scatter back
            T* dx = dinp + (int64_t)n * C * H * W;
            if (pointwise) {
                mm(true, false, CRS, P, K, T(1), weight, CRS, dy, P, T(1), dx, P);
            } else {
                mm(true, false, CRS, P, K, T(1), weight, CRS, dy, P, T(0), col, P);
                col2im(dx, col, C, H, W, R, S, stride, pad, Ho, Wo);
            }
        }
    }
}

// oneDNN on, f32: pointwise convolutions run as GEMMs on y5's NCHW images (per image y = W·x, dx += Wᵀ·dy,
// dW += dy·xᵀ: the references' arithmetic) where that beats oneDNN's convolution with its reorders into and out of
// its blocked layout. Per image on one thread (this AVX-512 EPYC, 2026-12-05; bench/RESULTS.md): fprop and dgrad
// from 64 output pixels (dgrad 1.5–2.9× faster, fprop 1.1–1.9×), and below that for up to 128 input channels at 36
// pixels or more, 64 below (oneDNN's stays faster for 256–512 channels at 6×6 and 3×3); wgrad below 256 pixels
// (1.1–3× faster; level around 24×24, and from 80×80 OpenBLAS's is slower than oneDNN's). The rules read the input
// channels, not the output channels, so batch-1 inference's output-channel split (conv_k_parts) takes the same path
// as the whole convolution. The fprop and dgrad GEMMs of at least kConvSgemmPixels columns run on oneDNN's sgemm
// (1.1–1.9× OpenBLAS's from 12×12 with 64 channels or more), smaller ones on OpenBLAS (faster at 6×6), and the
// wgrad GEMMs on OpenBLAS (oneDNN's sgemm is slower for dy·xᵀ at every size measured).
constexpr int64_t kConvGemmMinPixels = 64, kConvGemmWgradPixels = 256, kConvSgemmPixels = 128;
inline bool conv_gemm_data(int C, int R, int S, int stride, int pad, int64_t P) {
    return conv_is_pointwise(R, S, stride, pad) && (P >= kConvGemmMinPixels || (P >= 36 && C <= 128) || C <= 64);
}
inline bool conv_gemm_wgrad(int R, int S, int stride, int pad, int64_t P) {
    return conv_is_pointwise(R, S, stride, pad) && P < kConvGemmWgradPixels;
}
// The pointwise GEMMs' backend, given to the references' loops: oneDNN's sgemm for y = W·x and dx = Wᵀ·dy from
// kConvSgemmPixels pixels P, OpenBLAS otherwise and for every dW = dy·xᵀ (the one with B transposed).
struct PwGemm {
    int64_t P;
    void operator()(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                    int ldb, float beta, float* C, int ldc) const {
        if (P >= kConvSgemmPixels && !tb) conv_dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        else gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
};

// The passes y5's ops run: f32 through oneDNN when it is on (built with Y5_DNNL, Y5_CONV not "ref"; the pointwise
// GEMMs above where they apply), else the
// references above (always for f64). work: conv2d_run_work_elems(...) elements of T, the references' im2col
// columns or oneDNN's work memory (reordered tensors, its scratchpad). The bias gradient is bias_grad_cpu's either way.
inline int64_t conv2d_run_work_elems(bool f32, int C, int H, int W, int K, int R, int S, int stride, int pad) {
    const int64_t col = conv2d_col_elems(C, R, S, conv_out_size(H, R, stride, pad), conv_out_size(W, S, stride, pad),
                                         stride, pad);
    if (!f32 || !conv_dnnl_on()) return col;
    return std::max(col, (int64_t)((conv2d_dnnl_work_bytes(C, H, W, K, R, S, stride, pad, 1) + 3) / 4));
}

// Fewer images than threads (batch-1 inference): the ops split each image's output channels into conv_k_parts(K, want)
// ranges [conv_k_start(K, parts, j), conv_k_start(K, parts, j + 1)), whole blocks of 16 (oneDNN's AVX-512 block),
// one per thread, each a convolution of its own (weight rows k0.., bias k0.., output planes k0..).
inline int conv_k_parts(int K, int want) { return std::max(1, std::min(want, (K + 15) / 16)); }
inline int conv_k_start(int K, int parts, int j) { return std::min(K, 16 * (((K + 15) / 16) * j / parts)); }

// oneDNN f32: an op's weights reordered once for all its calls of one pass (fprop, or dgrad when `dgrad`), rather than
// per call: conv2d_weights_run_elems(...) floats (0: nothing to prepare: `use` false, the references run, or oneDNN
// reads (K,C,R,S) as it is), written by conv2d_weights_run; the passes below take them as wre (null: reordered per
// call). bias and act as the fprop calls'. The calls must run with the preparing thread's oneDNN thread count (1 in
// training).
inline int64_t conv2d_weights_run_elems(bool use, bool dgrad, bool bias, Act act, int C, int H, int W, int K, int R,
                                        int S, int stride, int pad) {
    const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
    if (!use || !conv_dnnl_on() || conv_gemm_data(C, R, S, stride, pad, P)) return 0;
    return (int64_t)conv2d_dnnl_weights_floats(dgrad, bias, conv_dnnl_act_fusable(act) ? act : kNoAct, C, H, W, K, R,
                                               S, stride, pad);
}
// Part j of parts (≤ conv2d_weights_run_parts(..., want)), for the callers' threads.
inline int conv2d_weights_run_parts(bool dgrad, bool bias, Act act, int C, int H, int W, int K, int R, int S,
                                    int stride, int pad, int want) {
    return conv2d_dnnl_weights_parts(dgrad, bias, conv_dnnl_act_fusable(act) ? act : kNoAct, C, H, W, K, R, S, stride,
                                     pad, want);
}
inline void conv2d_weights_run(float* wre, bool dgrad, bool bias, Act act, const float* weight, int C, int H, int W,
                               int K, int R, int S, int stride, int pad, int part = 0, int parts = 1) {
    if (wre)
        conv2d_dnnl_weights(wre, dgrad, bias, conv_dnnl_act_fusable(act) ? act : kNoAct, weight, C, H, W, K, R, S,
                            stride, pad, part, parts);
}

// act (inference): out = act(conv + bias), in oneDNN's primitive (its post-op) when it has the kind, else
// act_forward_cpu over the output afterwards (the activation op's bits).
template <class T>
void conv2d_fprop_run(T* out, const T* inp, const T* weight, const T* bias, T* work, int N, int C, int H, int W, int K,
                      int R, int S, int stride, int pad, Act act = kNoAct, const float* wre = nullptr) {
    const int64_t n_out = (int64_t)N * K * conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
    const bool apply = act.kind != ActKind::Identity;
    if constexpr (std::is_same_v<T, float>) {
        const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
        if (conv_dnnl_on() && conv_gemm_data(C, R, S, stride, pad, P)) {
            conv2d_fprop_cpu<float>(out, inp, weight, bias, work, N, C, H, W, K, R, S, stride, pad, PwGemm{P});
            if (apply) act_forward_cpu<float>(out, out, n_out, act);
            return;
        } else if (conv_dnnl_on()) {
            const bool fuse = conv_dnnl_act_fusable(act);
            conv2d_dnnl_fprop(out, inp, weight, bias, work, N, C, H, W, K, R, S, stride, pad, fuse ? act : kNoAct, wre);
            if (apply && !fuse) act_forward_cpu<float>(out, out, n_out, act);
            return;
        }
    }
    conv2d_fprop_cpu<T>(out, inp, weight, bias, work, N, C, H, W, K, R, S, stride, pad);
    if (apply) act_forward_cpu<T>(out, out, n_out, act);
}

template <class T>
void conv2d_backward_run(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, T* work, int N,
                         int C, int H, int W, int K, int R, int S, int stride, int pad, const float* wre = nullptr) {
    if constexpr (std::is_same_v<T, float>)
        if (conv_dnnl_on()) {
            const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
            if (dbias)
                for (int n = 0; n < N; ++n) bias_grad_cpu(dbias, dout + n * K * P, K, (int)P);
            const bool gd = dinp && conv_gemm_data(C, R, S, stride, pad, P),
                       gw = dweight && conv_gemm_wgrad(R, S, stride, pad, P);
            if (gd || gw)
                conv2d_backward_cpu<float>(gd ? dinp : nullptr, gw ? dweight : nullptr, nullptr, dout, inp, weight, work,
                                           N, C, H, W, K, R, S, stride, pad, PwGemm{P});
            if ((dinp && !gd) || (dweight && !gw))
                conv2d_dnnl_backward(gd ? nullptr : dinp, gw ? nullptr : dweight, dout, inp, weight, work, N, C, H, W,
                                     K, R, S, stride, pad, wre);
            return;
        }
    conv2d_backward_cpu<T>(dinp, dweight, dbias, dout, inp, weight, work, N, C, H, W, K, R, S, stride, pad);
}

// oneDNN f32 with the weight gradient summed blocked (written over dwb, conv2d_dnnl_wgrad_blocked): where dgrad runs
// on oneDNN too, both passes image by image on one reorder of dy (conv2d_dnnl_backward_blocked), else one after the
// other. dinp may be null.
inline void conv2d_backward_blocked_run(float* dinp, float* dwb, float* dbias, const float* dout, const float* inp,
                                        const float* weight, float* work, int N, int C, int H, int W, int K, int R,
                                        int S, int stride, int pad, const float* wre) {
    const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
    if (dinp && !conv_gemm_data(C, R, S, stride, pad, P)) {
        if (dbias)
            for (int n = 0; n < N; ++n) bias_grad_cpu(dbias, dout + n * K * P, K, (int)P);
        conv2d_dnnl_backward_blocked(dinp, dwb, dout, inp, weight, wre, work, N, C, H, W, K, R, S, stride, pad);
        return;
    }
    conv2d_backward_run<float>(dinp, nullptr, dbias, dout, nullptr, weight, work, N, C, H, W, K, R, S, stride, pad,
                               wre);
    conv2d_dnnl_wgrad_blocked(dwb, false, dout, inp, work, N, C, H, W, K, R, S, stride, pad);
}

// ----------------------------------------------------------------------------------------------------
// f16 passes. Per image the f16 operands are converted to float scratch, the f32 pass the ops run (_run) runs, and each output
// is rounded once: fprop out = st(conv + bias); dgrad dinp = st(ld(dinp) + dgrad). The weight gradients stay
// float: dweight32/dbias32 are float accumulators (+=) that the caller sums over its groups of images and adds
// into the f16 gradients with one rounding (engine/ops/ops.cpp). Both sums over images run in the f32 pass's order,
// so from zeroed gradients every f16 result is the f32 result rounded once.
// scratch: conv2d_f16_scratch_elems(...) floats per thread: the weight and bias, one image's x, y or dy, and dx.

inline int64_t conv2d_f16_scratch_elems(int C, int H, int W, int K, int R, int S, int Ho, int Wo) {
    return (int64_t)K * C * R * S + K + 2 * (int64_t)C * H * W + (int64_t)K * Ho * Wo;
}

inline void conv2d_fprop_f16_cpu(f16* out, const f16* inp, const f16* weight, const f16* bias, float* col,
                                 float* scratch, int N, int C, int H, int W, int K, int R, int S, int stride, int pad) {
    const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
    const int64_t nw = (int64_t)K * C * R * S, in_img = (int64_t)C * H * W;
    float *w = scratch, *b = bias ? w + nw : nullptr, *x = w + nw + K, *y = x + in_img;
    cast_cpu(w, weight, nw);
    if (bias) cast_cpu(b, bias, K);
    for (int n = 0; n < N; ++n) {
        cast_cpu(x, inp + n * in_img, in_img);
        conv2d_fprop_run<float>(y, x, w, b, col, 1, C, H, W, K, R, S, stride, pad);
        cast_cpu(out + n * K * P, y, K * P);
    }
}

// dinp may be null (no dgrad), dweight32/dbias32 too; weight is read only for dgrad, inp only for wgrad.
inline void conv2d_backward_f16_cpu(f16* dinp, float* dweight32, float* dbias32, const f16* dout, const f16* inp,
                                    const f16* weight, float* col, float* scratch, int N, int C, int H, int W, int K,
                                    int R, int S, int stride, int pad) {
    const int64_t P = (int64_t)conv_out_size(H, R, stride, pad) * conv_out_size(W, S, stride, pad);
    const int64_t nw = (int64_t)K * C * R * S, in_img = (int64_t)C * H * W;
    float *w = scratch, *x = w + nw + K, *dx = x + in_img, *dy = dx + in_img;
    if (dinp) cast_cpu(w, weight, nw);
    for (int n = 0; n < N; ++n) {
        cast_cpu(dy, dout + n * K * P, K * P);
        if (dweight32) cast_cpu(x, inp + n * in_img, in_img);
        if (dinp) fill_cpu(dx, 0.0f, in_img);
        conv2d_backward_run<float>(dinp ? dx : nullptr, dweight32, dbias32, dy, x, w, col, 1, C, H, W, K, R, S, stride,
                                   pad);
        if (dinp) cast_add_cpu(dinp + n * in_img, dx, in_img);
    }
}

// ----------------------------------------------------------------------------------------------------
// 1×1 convolution over channel parts: conv2d(cat(x_0, …, x_{m−1}), weight) without the concat. x_i (N,C_i,P),
// weight (K,C) with C = Σ C_i; part i meets the columns [c_i, c_i + C_i) of the weight, a submatrix with
// leading dimension C, which BLAS takes as it is. Per image: out (K,P) = Σ_i W_i·x_i (+ bias),
// dx_i += W_iᵀ·dout, dW_i += dout·x_iᵀ. The reduction over C is split at the part boundaries, so results
// equal conv2d of the concat up to float reassociation. xs/dxs: m pointers, each already offset to image 0
// of this call; a null dxs entry skips that part's dgrad.

constexpr int kConv1x1PartsMax = 8;  // parts the runs below take (ops.h's kMaxConvParts): local arrays of pointers

template <class T, class Gemm = BlasGemm>
void conv1x1_parts_fprop_cpu(T* out, const T* const* xs, const int* Cs, int m, const T* weight, const T* bias, int N,
                             int K, int P, Gemm mm = {}) {
    int C = 0;
    for (int i = 0; i < m; ++i) C += Cs[i];
    for (int n = 0; n < N; ++n) {
        T* y = out + (int64_t)n * K * P;
        for (int i = 0, c0 = 0; i < m; c0 += Cs[i++])
            mm(false, false, K, P, Cs[i], T(1), weight + c0, C, xs[i] + (int64_t)n * Cs[i] * P, P, T(i ? 1 : 0), y, P);
        if (bias)
            for (int k = 0; k < K; ++k)
                for (int p = 0; p < P; ++p) y[(int64_t)k * P + p] += bias[k];
    }
}

template <class T, class Gemm = BlasGemm>
void conv1x1_parts_backward_cpu(T* const* dxs, T* dweight, T* dbias, const T* dout, const T* const* xs, const int* Cs,
                                int m, const T* weight, int N, int K, int P, Gemm mm = {}) {
    int C = 0;
    for (int i = 0; i < m; ++i) C += Cs[i];
    for (int n = 0; n < N; ++n) {
        const T* dy = dout + (int64_t)n * K * P;
        if (dbias) bias_grad_cpu(dbias, dy, K, P);
        for (int i = 0, c0 = 0; i < m; c0 += Cs[i++]) {
            const int64_t off = (int64_t)n * Cs[i] * P;
            if (dweight) mm(false, true, K, Cs[i], P, T(1), dy, P, xs[i] + off, P, T(1), dweight + c0, C);
            if (dxs[i]) mm(true, false, Cs[i], P, K, T(1), weight + c0, C, dy, P, T(1), dxs[i] + off, P);
        }
    }
}

// The parts as the ops run them: f32 with oneDNN on, the passes conv_gemm_data / conv_gemm_wgrad choose run as the
// references' GEMMs, each part in place, and the others through oneDNN (per image the parts copied into one (C,P)
// buffer, then conv2d's 1×1 passes over it; dx through a zeroed (C,P) buffer added into each part); else the
// references.
// work: conv1x1_parts_run_work_elems(...) elements of T (0 when the references run).
inline int64_t conv1x1_parts_run_work_elems(bool f32, int C, int K, int P) {
    if (!f32 || !conv_dnnl_on()) return 0;
    return 2 * (int64_t)C * P + conv2d_run_work_elems(true, C, 1, P, K, 1, 1, 1, 0);
}

// act (inference) and wre: as conv2d_fprop_run's (the weights prepared for geometry (C, 1, P, K, 1, 1, 1, 0)).
template <class T>
void conv1x1_parts_fprop_run(T* out, const T* const* xs, const int* Cs, int m, const T* weight, const T* bias, T* work,
                             int N, int K, int P, Act act = kNoAct, const float* wre = nullptr) {
    if constexpr (std::is_same_v<T, float>) {
        int C = 0;
        for (int i = 0; i < m; ++i) C += Cs[i];
        if (conv_dnnl_on() && conv_gemm_data(C, 1, 1, 1, 0, P)) {  // the reference's GEMMs, each part in place
            conv1x1_parts_fprop_cpu<float>(out, xs, Cs, m, weight, bias, N, K, P, PwGemm{P});
            if (act.kind != ActKind::Identity) act_forward_cpu<float>(out, out, (int64_t)N * K * P, act);
            return;
        } else if (conv_dnnl_on()) {
            float *xc = work, *wk = work + 2 * (int64_t)C * P;
            for (int n = 0; n < N; ++n) {
                for (int i = 0, c0 = 0; i < m; c0 += Cs[i++])
                    std::memcpy(xc + (int64_t)c0 * P, xs[i] + (int64_t)n * Cs[i] * P, sizeof(float) * Cs[i] * P);
                conv2d_fprop_run<float>(out + (int64_t)n * K * P, xc, weight, bias, wk, 1, C, 1, P, K, 1, 1, 1, 0, act,
                                        wre);
            }
            return;
        }
    }
    conv1x1_parts_fprop_cpu<T>(out, xs, Cs, m, weight, bias, N, K, P);
    if (act.kind != ActKind::Identity) act_forward_cpu<T>(out, out, (int64_t)N * K * P, act);
}

// dwb (oneDNN on, f32, dweight null): the weight gradient summed into oneDNN's blocked layout instead, image 0's
// written over it (conv2d_dnnl_wgrad_blocked with geometry (C, 1, P, K, 1, 1, 1, 0)); wre: the weights prepared for
// dgrad in that geometry (conv2d_weights_run), or null.
template <class T>
void conv1x1_parts_backward_run(T* const* dxs, T* dweight, T* dbias, const T* dout, const T* const* xs, const int* Cs,
                                int m, const T* weight, T* work, int N, int K, int P, float* dwb = nullptr,
                                const float* wre = nullptr) {
    if constexpr (std::is_same_v<T, float>)
        if (conv_dnnl_on()) {
            int C = 0;
            bool any_dx = false;
            for (int i = 0; i < m; ++i) C += Cs[i], any_dx = any_dx || dxs[i];
            // GEMMs (kernels above): dgrad per part in place, wgrad per part in place where it is a GEMM too, else
            // oneDNN's over the parts copied into one buffer (into dwb, or dweight).
            const bool gd = conv_gemm_data(C, 1, 1, 1, 0, P), gw = conv_gemm_wgrad(1, 1, 1, 0, P);
            Y5_CHECK(!(gw && dwb), "conv1x1 parts: a blocked weight gradient for a GEMM wgrad (P %d)", P);
            const bool dnnl_dx = any_dx && !gd, dnnl_dw = (dweight && !gw) || dwb;
            float* gdx[kConv1x1PartsMax];  // the parts' gradients the GEMMs give (with the bias gradient)
            Y5_CHECK(m <= kConv1x1PartsMax, "conv1x1 parts: %d parts, at most %d", m, kConv1x1PartsMax);
            for (int i = 0; i < m; ++i) gdx[i] = gd ? dxs[i] : nullptr;
            conv1x1_parts_backward_cpu<float>(gdx, gw ? dweight : nullptr, dbias, dout, xs, Cs, m, weight, N, K, P,
                                              PwGemm{P});
            float *xc = work, *dxc = work + (int64_t)C * P, *wk = work + 2 * (int64_t)C * P;
            for (int n = 0; n < N && (dnnl_dx || dnnl_dw); ++n) {
                const float* dy = dout + (int64_t)n * K * P;
                if (dnnl_dw)
                    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++])
                        std::memcpy(xc + (int64_t)c0 * P, xs[i] + (int64_t)n * Cs[i] * P, sizeof(float) * Cs[i] * P);
                if (dnnl_dx) fill_cpu(dxc, 0.0f, (int64_t)C * P);
                if (dnnl_dx || (dweight && !gw))
                    conv2d_dnnl_backward(dnnl_dx ? dxc : nullptr, gw ? nullptr : dweight, dy, xc, weight, wk, 1, C, 1,
                                         P, K, 1, 1, 1, 0, wre);
                if (dwb) conv2d_dnnl_wgrad_blocked(dwb, n > 0, dy, xc, wk, 1, C, 1, P, K, 1, 1, 1, 0);
                if (dnnl_dx)
                    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++])
                        if (dxs[i])
                            axpy_cpu(dxs[i] + (int64_t)n * Cs[i] * P, 1.0f, dxc + (int64_t)c0 * P, (int64_t)Cs[i] * P);
            }
            return;
        }
    conv1x1_parts_backward_cpu<T>(dxs, dweight, dbias, dout, xs, Cs, m, weight, N, K, P);
}

// f16 parts, as the f16 convolution above: per image the parts (C·P), the output or its gradient (K·P) and the parts'
// gradients (C·P) in float scratch of conv1x1_parts_f16_scratch_elems(...) floats per thread, with the weight and
// bias; out and dxs rounded once per element, dweight32/dbias32 float accumulators for the caller.

inline int64_t conv1x1_parts_f16_scratch_elems(int C, int K, int P) {
    return (int64_t)K * C + K + 2 * (int64_t)C * P + (int64_t)K * P + conv1x1_parts_run_work_elems(true, C, K, P);
}

inline void conv1x1_parts_fprop_f16_cpu(f16* out, const f16* const* xs, const int* Cs, int m, const f16* weight,
                                        const f16* bias, float* scratch, int N, int K, int P) {
    int C = 0;
    for (int i = 0; i < m; ++i) C += Cs[i];
    Y5_CHECK(m <= kConv1x1PartsMax, "conv1x1 parts (f16): %d parts, at most %d", m, kConv1x1PartsMax);
    float *w = scratch, *b = bias ? w + (int64_t)K * C : nullptr, *x = w + (int64_t)K * C + K, *y = x + (int64_t)C * P;
    float* x32[kConv1x1PartsMax];
    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++]) x32[i] = x + (int64_t)c0 * P;
    cast_cpu(w, weight, (int64_t)K * C);
    if (bias) cast_cpu(b, bias, K);
    for (int n = 0; n < N; ++n) {
        for (int i = 0; i < m; ++i) cast_cpu(x32[i], xs[i] + (int64_t)n * Cs[i] * P, (int64_t)Cs[i] * P);
        conv1x1_parts_fprop_run<float>(y, x32, Cs, m, w, b, y + (int64_t)K * P, 1, K, P);
        cast_cpu(out + (int64_t)n * K * P, y, (int64_t)K * P);
    }
}

inline void conv1x1_parts_backward_f16_cpu(f16* const* dxs, float* dweight32, float* dbias32, const f16* dout,
                                           const f16* const* xs, const int* Cs, int m, const f16* weight,
                                           float* scratch, int N, int K, int P) {
    int C = 0;
    bool any_dx = false;
    for (int i = 0; i < m; ++i) C += Cs[i], any_dx = any_dx || dxs[i];
    Y5_CHECK(m <= kConv1x1PartsMax, "conv1x1 parts (f16): %d parts, at most %d", m, kConv1x1PartsMax);
    float *w = scratch, *x = w + (int64_t)K * C + K, *dx = x + (int64_t)C * P, *dy = dx + (int64_t)C * P;
    float* x32[kConv1x1PartsMax];
    float* dx32[kConv1x1PartsMax];
    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++]) {
        x32[i] = x + (int64_t)c0 * P;
        dx32[i] = dxs[i] ? dx + (int64_t)c0 * P : nullptr;
    }
    if (any_dx) cast_cpu(w, weight, (int64_t)K * C);
    for (int n = 0; n < N; ++n) {
        cast_cpu(dy, dout + (int64_t)n * K * P, (int64_t)K * P);
        for (int i = 0; i < m; ++i) {
            const int64_t off = (int64_t)n * Cs[i] * P, len = (int64_t)Cs[i] * P;
            if (dweight32) cast_cpu(x32[i], xs[i] + off, len);
            if (dx32[i]) fill_cpu(dx32[i], 0.0f, len);
        }
        conv1x1_parts_backward_run<float>(dx32, dweight32, dbias32, dy, x32, Cs, m, w, dy + (int64_t)K * P, 1, K, P);
        for (int i = 0; i < m; ++i)
            if (dxs[i]) cast_add_cpu(dxs[i] + (int64_t)n * Cs[i] * P, dx32[i], (int64_t)Cs[i] * P);
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA (kernels/conv2d.cu; built only with Y5_CUDA): cuDNN's legacy convolution API, NCHW (or NHWC, below), groups 1,
// dilation 1, cross-correlation (PyTorch's conv2d). The same semantics as the CPU reference: fprop writes
// out (= conv + bias); wgrad ACCUMULATES into dweight / dbias (cuDNN's beta = 1), dgrad into dinp, or writes a fresh
// dinp (beta = 0: a gradient's first producer, which then needs no zeroed dinp).
// All calls run on the context's stream (its cuDNN handle is bound to it).
// f32, or f16 (Conv2dGeom::f16 and the f16 overloads): CUDNN_DATA_HALF tensors and filter with a float compute type
// (PSEUDO_HALF_CONFIG, what PyTorch's autocast runs), tensor-op math; every output is rounded to f16 once: the
// bias is written into out first and the convolution added with beta = 1, the gradients are added with beta = 1
// (dweight, dinp; or dinp written with beta = 0) or by the bias-gradient kernel in float (dbias): one rounding each.
//
// Algorithms: chosen once per (device, geometry, pass, settings) and cached with their descriptors, never
// per call. By default from cuDNN's heuristics (cudnnGet*_v7), as PyTorch does with
// torch.backends.cudnn.benchmark = False (YOLOv5 v7.0's setting); with conv_set_benchmark(true) by timing
// (cudnnFind*, which cudaMallocs its own buffers at that first use). Either way the first candidate, in
// cuDNN's order (fastest first), that succeeds, fits the workspace limit, is deterministic when
// determinism is on, and uses an allowed math type.
// Workspace: the caller asks conv2d_workspace_cuda for the pass's bytes (this selects the algorithm on first
// use) and passes that much device memory (ops.cpp takes it from the Ctx's work arena, so the step never
// cudaMallocs). Dgrad and wgrad may share one buffer: they run one after the other on the stream.
//
// Layout (Conv2dGeom::nhwc, the one switch point; issue #14): false, y5's layout: inp (N,C,H,W), weight (K,C,R,S),
// out (N,K,Ho,Wo). true: channels last, inp (N,H,W,C), weight (K,R,S,C), out (N,Ho,Wo,K): CUDNN_TENSOR_NHWC on the
// x, y and filter descriptors, which cuDNN's tensor-core kernels for f16 prefer. The bias kernels (its add in
// fprop, its gradient in wgrad) index either layout; the bias gradient sums each channel in the same order in both,
// so it is bit-identical across layouts. y5's ops pass NCHW; NHWC is for measuring (bench_kernels conv_layout)
// and tests/test_gpu_conv_layout.cpp. The 1×1 convolution over parts (cuBLAS, below) is NCHW only.

struct CudaContext;

struct Conv2dGeom {
    int N, C, H, W;  // input (N,C,H,W)
    int K, R, S;     // weight (K,C,R,S)
    int stride, pad;
    bool f16 = false;   // f16 tensors (else f32); part of the plan cache's key
    bool nhwc = false;  // channels-last tensors and filter (else NCHW, y5's layout); part of the plan cache's key
};

enum class ConvPass : int { Fprop = 0, Dgrad = 1, Wgrad = 2 };

// Workspace bytes the pass's algorithm needs (0 is possible); selects and caches the algorithm on first use.
size_t conv2d_workspace_cuda(CudaContext* ctx, const Conv2dGeom& g, ConvPass pass);
// out (N,K,Ho,Wo) = conv(inp, weight) + bias (bias may be null); shapes as above for g.nhwc.
void conv2d_fprop_cuda(CudaContext* ctx, const Conv2dGeom& g, float* out, const float* inp, const float* weight,
                       const float* bias, void* workspace, size_t workspace_bytes);
// dinp += dgrad(dout, weight), or with fresh dinp = dgrad(dout, weight) (dinp not read).
void conv2d_dgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, float* dinp, const float* dout, const float* weight,
                       void* workspace, size_t workspace_bytes, bool fresh);
// dweight += wgrad(dout, inp) (skipped when null); dbias[k] += Σ_{n,h,w} dout[n,k,h,w] (skipped when null),
// by a fixed-order reduction, so it is deterministic.
void conv2d_wgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, float* dweight, float* dbias, const float* dout,
                       const float* inp, void* workspace, size_t workspace_bytes);
// The same for f16 (g.f16 set).
void conv2d_fprop_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* out, const f16* inp, const f16* weight,
                       const f16* bias, void* workspace, size_t workspace_bytes);
void conv2d_dgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* dinp, const f16* dout, const f16* weight,
                       void* workspace, size_t workspace_bytes, bool fresh);
void conv2d_wgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* dweight, f16* dbias, const f16* dout,
                       const f16* inp, void* workspace, size_t workspace_bytes);

// Settings (process-wide; each combination has its own cache entries, so changing one never reuses an
// algorithm chosen under another).
//   workspace limit: the most workspace one pass may use; default 256 MiB. The work arena must have room
//     for it (plus what the other ops take from it at the same time).
//   deterministic: only CUDNN_DETERMINISTIC algorithms (some dgrad/wgrad algorithms accumulate with
//     atomics, so their results vary run to run); default on, as YOLOv5 v7.0's train.py runs
//     (init_seeds(deterministic=True) sets torch.backends.cudnn.deterministic).
//   allow TF32: off → CUDNN_FMA_MATH (plain f32 FMA kernels; CUDNN_DEFAULT_MATH would allow TF32 on sm_80+);
//     on → CUDNN_DEFAULT_MATH / tensor-op math, TF32 on sm_80+. Default on, PyTorch's default
//     (torch.backends.cudnn.allow_tf32 = True), which YOLOv5 trains with; the GPU tests turn it off to
//     compare with the CPU reference at f32 tolerances.
//   benchmark: choose by timing (cudnnFind*) instead of heuristics; default off (YOLOv5 v7.0 leaves
//     torch.backends.cudnn.benchmark off).
void conv_set_workspace_limit(size_t bytes);
void conv_set_deterministic(bool on);
void conv_set_allow_tf32(bool on);
void conv_set_benchmark(bool on);
size_t conv_workspace_limit();
bool conv_deterministic();
bool conv_allow_tf32();
bool conv_benchmark();
// Destroys every cached descriptor and forgets every chosen algorithm.
void conv_clear_cache();

// The 1×1 convolution over channel parts on the GPU, through cuBLAS (a 1×1 convolution is a GEMM per image;
// cuDNN's filter descriptors cannot address a column slice of the weight, cuBLAS's leading dimension can).
// Arguments as the CPU reference, per part (xs/dxs are device pointers in a host array). TF32 follows
// conv_allow_tf32(), as cuDNN's 1×1 convolutions in PyTorch do. Every sum has a fixed order: wgrad writes one
// partial per image (cuBLAS strided-batched) and a kernel adds them in image order, no atomics.
// conv1x1_parts_workspace_cuda: bytes of device scratch the backward needs (N·K·max C_i floats).
// f16: cublasGemmStridedBatchedEx with f16 A and B and float accumulation (CUBLAS_COMPUTE_32F, reductions kept in
// float). The forward sums the parts into a float buffer of conv1x1_parts_fprop_workspace_cuda bytes (N·K·P
// floats; none for f32) and rounds once with the bias added; dx_i is an f16 C with beta = 1 (one rounding); the
// weight gradient's per-image partials are float, added into dweight with one rounding.
// dx_fresh[i]: part i's dx_i = its gradient (beta 0, dx_i not read: its first producer), else dx_i += it (beta 1).
size_t conv1x1_parts_workspace_cuda(int N, int K, const int* Cs, int m);
size_t conv1x1_parts_fprop_workspace_cuda(int N, int K, int P, bool f16);
void conv1x1_parts_fprop_cuda(CudaContext* ctx, float* out, const float* const* xs, const int* Cs, int m,
                              const float* weight, const float* bias, int N, int K, int P);
void conv1x1_parts_fprop_cuda(CudaContext* ctx, f16* out, const f16* const* xs, const int* Cs, int m, const f16* weight,
                              const f16* bias, int N, int K, int P, void* workspace, size_t workspace_bytes);
void conv1x1_parts_backward_cuda(CudaContext* ctx, float* const* dxs, const bool* dx_fresh, float* dweight,
                                 float* dbias, const float* dout, const float* const* xs, const int* Cs, int m,
                                 const float* weight, int N, int K, int P, void* workspace, size_t workspace_bytes);
void conv1x1_parts_backward_cuda(CudaContext* ctx, f16* const* dxs, const bool* dx_fresh, f16* dweight, f16* dbias,
                                 const f16* dout, const f16* const* xs, const int* Cs, int m, const f16* weight, int N,
                                 int K, int P, void* workspace, size_t workspace_bytes);

}  // namespace y5
