/*
 * The pieces of ECA (Wang et al. 2020) beyond pooling and sigmoid, CPU reference:
 * conv1d_channels: a 1-D convolution across the channel axis, no bias, zero padding (k−1)/2, k odd:
 *   inp (N,C), weight (k) → out (N,C), out[n][c] = Σ_j weight[j]·inp[n][c + j − (k−1)/2].
 *   (PyTorch: Conv1d(1, 1, k, padding=(k−1)/2, bias=False) on y.squeeze(−1).transpose(−1, −2).)
 * scale_channels: x (N,C,HW) times a per-(n,c) gate s (N,C) → out (N,C,HW).
 * ECA(x) = scale_channels(x, sigmoid(conv1d_channels(global_avgpool(x))), which eca_* below computes fused.
 * Backward accumulates (+=); any gradient pointer may be null to skip it.
 * Storage type T: f32, f64, or f16 (ld() loads, sums and products in acc_t<T> = float, st<T>() rounds each stored
 * value once; a weight gradient's sum over N·C products and ds's over HW go onto the old value in float and are
 * rounded once). In the unfused f16 ops every tensor is f16 (the model casts w, as autocast would). Fused ECA
 * with f16 x keeps w, its gradient, the saved means and gates and dz in f32: only x, out and dx are f16.
 * The CUDA kernels (kernels/eca.cu) share conv1d_channels_at and conv1d_channels_dinp_at.
 */
#pragma once
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// out[n][c] from row n of inp (C values): Σ_j weight[j]·row[c + j − p], zero padding, in acc_t<T>.
template <class T> Y5_HD acc_t<T> conv1d_channels_at(const T* row, const T* weight, int C, int k, int c) {
    const int p = (k - 1) / 2;
    acc_t<T> acc = 0;
    for (int j = 0; j < k; ++j) {
        int ci = c + j - p;
        if (ci >= 0 && ci < C) acc += ld(weight[j]) * ld(row[ci]);
    }
    return acc;
}

// dinp[n][ci] after the backward: acc (its value before) + Σ_j weight[j]·grow[ci − j + p], grow being row n
// of dout, added in ascending output channel (descending j).
template <class T>
Y5_HD acc_t<T> conv1d_channels_dinp_at(acc_t<T> acc, const T* grow, const T* weight, int C, int k, int ci) {
    const int p = (k - 1) / 2;
    for (int j = k - 1; j >= 0; --j) {
        int c = ci - j + p;
        if (c >= 0 && c < C) acc += ld(weight[j]) * ld(grow[c]);
    }
    return acc;
}

template <class T> void conv1d_channels_forward_cpu(T* out, const T* inp, const T* weight, int N, int C, int k) {
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c)
            out[(int64_t)n * C + c] = st<T>(conv1d_channels_at(inp + (int64_t)n * C, weight, C, k, c));
}

// dweight[j] adds its N·C products in (n, c) order onto its old value.
template <class T>
void conv1d_channels_backward_cpu(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int N, int C,
                                  int k) {
    const int p = (k - 1) / 2;
    if (dinp)
        for (int n = 0; n < N; ++n)
            for (int ci = 0; ci < C; ++ci) {
                T& dx = dinp[(int64_t)n * C + ci];
                dx = st<T>(conv1d_channels_dinp_at(ld(dx), dout + (int64_t)n * C, weight, C, k, ci));
            }
    if (dweight)
        for (int j = 0; j < k; ++j) {
            acc_t<T> acc = ld(dweight[j]);
            for (int n = 0; n < N; ++n)
                for (int c = 0; c < C; ++c) {
                    int ci = c + j - p;
                    if (ci >= 0 && ci < C) acc += ld(inp[(int64_t)n * C + ci]) * ld(dout[(int64_t)n * C + c]);
                }
            dweight[j] = st<T>(acc);
        }
}

template <class T> void scale_channels_forward_cpu(T* out, const T* x, const T* s, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const acc_t<T> sp = ld(s[nc]);
        for (int i = 0; i < HW; ++i) out[nc * HW + i] = st<T>(ld(x[nc * HW + i]) * sp);
    }
}

template <class T>
void scale_channels_backward_cpu(T* dx, T* ds, const T* dout, const T* x, const T* s, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const acc_t<T> sp = ld(s[nc]);
        acc_t<T> acc = 0;
        for (int i = 0; i < HW; ++i) {
            const acc_t<T> dy = ld(dout[nc * HW + i]);
            if (dx) dx[nc * HW + i] = st<T>(ld(dx[nc * HW + i]) + dy * sp);
            acc += dy * ld(x[nc * HW + i]);
        }
        if (ds) ds[nc] = st<T>(ld(ds[nc]) + acc);
    }
}

// ----------------------------------------------------------------------------------------------------
// ECA fused: out = x·σ(conv1d_channels(mean_hw(x), weight)), x/out (N,C,HW), weight (k). Forward in two passes
// (the channel means, then gate and scale in one pass over x), saving pooled and the gate s (N,C) for the
// backward, which also takes two passes over the planes:
//   ds = Σ_hw dout·x, dz = ds·s·(1 − s) (the sigmoid's gradient from its output), dweight += conv1d's weight
//   gradient of dz, dp = conv1d's input gradient of dz, then dx += dout·s + dp/HW.
// x, out, dout, dx have the storage type T; weight, dweight, pooled, gate and dz are acc_t<T> (f32 for f16 x).
// The per-(n,c) math below is shared with the CUDA kernels.

// The gate of plane (n, c) from row n of pooled.
template <class A> Y5_HD A eca_gate(const A* pooled_row, const A* weight, int C, int k, int c) {
    return sigmoid(conv1d_channels_at(pooled_row, weight, C, k, c));
}

// dx of one element: (dx + dout·s) + dp/HW, the order of the unfused ops' backward (scale, then the pool).
template <class A> Y5_HD A eca_dx(A dx, A dout, A s, A dp_over_hw) { return (dx + dout * s) + dp_over_hw; }

template <class T>
void eca_forward_cpu(T* out, acc_t<T>* pooled, acc_t<T>* gate, const T* x, const acc_t<T>* weight, int N, int C,
                     int HW, int k) {
    using A = acc_t<T>;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        double sum = 0;
        for (int i = 0; i < HW; ++i) sum += ld(x[nc * HW + i]);
        pooled[nc] = A(sum / HW);
    }
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const int64_t n = nc / C;
        const A s = eca_gate(pooled + n * C, weight, C, k, (int)(nc - n * C));
        gate[nc] = s;
        for (int i = 0; i < HW; ++i) out[nc * HW + i] = st<T>(ld(x[nc * HW + i]) * s);
    }
}

// dz: N·C values of scratch. dx, dweight may be null.
template <class T>
void eca_backward_cpu(T* dx, acc_t<T>* dweight, const T* dout, const T* x, const acc_t<T>* weight,
                      const acc_t<T>* pooled, const acc_t<T>* gate, int N, int C, int HW, int k, acc_t<T>* dz) {
    using A = acc_t<T>;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        A ds = 0;
        for (int i = 0; i < HW; ++i) ds += ld(dout[nc * HW + i]) * ld(x[nc * HW + i]);
        dz[nc] = ds * (gate[nc] * (A(1) - gate[nc]));
    }
    if (dweight) conv1d_channels_backward_cpu<A>(nullptr, dweight, dz, pooled, weight, N, C, k);
    if (!dx) return;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const int64_t n = nc / C;
        const A g = conv1d_channels_dinp_at(A(0), dz + n * C, weight, C, k, (int)(nc - n * C)) / A(HW);
        for (int i = 0; i < HW; ++i)
            dx[nc * HW + i] = st<T>(eca_dx(ld(dx[nc * HW + i]), ld(dout[nc * HW + i]), gate[nc], g));
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/eca.cu, the CPU reference's arguments plus the stream; f32 and f16); built only with
// Y5_CUDA. As on the CPU, any gradient pointer may be null.

void conv1d_channels_forward_cuda(float* out, const float* inp, const float* weight, int N, int C, int k,
                                  cudaStream_t stream);
void conv1d_channels_forward_cuda(f16* out, const f16* inp, const f16* weight, int N, int C, int k,
                                  cudaStream_t stream);
void conv1d_channels_backward_cuda(float* dinp, float* dweight, const float* dout, const float* inp,
                                   const float* weight, int N, int C, int k, cudaStream_t stream);
void conv1d_channels_backward_cuda(f16* dinp, f16* dweight, const f16* dout, const f16* inp, const f16* weight, int N,
                                   int C, int k, cudaStream_t stream);
void scale_channels_forward_cuda(float* out, const float* x, const float* s, int N, int C, int HW, cudaStream_t stream);
void scale_channels_forward_cuda(f16* out, const f16* x, const f16* s, int N, int C, int HW, cudaStream_t stream);
void scale_channels_backward_cuda(float* dx, float* ds, const float* dout, const float* x, const float* s, int N, int C,
                                  int HW, cudaStream_t stream);
void scale_channels_backward_cuda(f16* dx, f16* ds, const f16* dout, const f16* x, const f16* s, int N, int C, int HW,
                                  cudaStream_t stream);
// Fused ECA: pooled, gate, weight, dweight and dz are f32 for either x.
void eca_forward_cuda(float* out, float* pooled, float* gate, const float* x, const float* weight, int N, int C, int HW,
                      int k, cudaStream_t stream);
void eca_forward_cuda(f16* out, float* pooled, float* gate, const f16* x, const float* weight, int N, int C, int HW,
                      int k, cudaStream_t stream);
void eca_backward_cuda(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                       const float* pooled, const float* gate, int N, int C, int HW, int k, float* dz,
                       cudaStream_t stream);
void eca_backward_cuda(f16* dx, float* dweight, const f16* dout, const f16* x, const float* weight, const float* pooled,
                       const float* gate, int N, int C, int HW, int k, float* dz, cudaStream_t stream);

}  // namespace y5
