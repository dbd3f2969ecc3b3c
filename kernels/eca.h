/*
 * The pieces of ECA (Wang et al. 2020) beyond pooling and sigmoid, CPU reference:
 * conv1d_channels: a 1-D convolution across the channel axis, no bias, zero padding (k−1)/2, k odd:
 *   inp (N,C), weight (k) → out (N,C), out[n][c] = Σ_j weight[j]·inp[n][c + j − (k−1)/2].
 *   (PyTorch: Conv1d(1, 1, k, padding=(k−1)/2, bias=False) on y.squeeze(−1).transpose(−1, −2).)
 * scale_channels: x (N,C,HW) times a per-(n,c) gate s (N,C) → out (N,C,HW).
 * ECA(x) = scale_channels(x, sigmoid(conv1d_channels(global_avgpool(x)))), which eca_* below computes fused.
 * Backward accumulates (+=); any gradient pointer may be null to skip it.
 * The CUDA kernels (kernels/eca.cu) share conv1d_channels_at and conv1d_channels_dinp_at.
 */
#pragma once
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// out[n][c] from row n of inp (C values): Σ_j weight[j]·row[c + j − p], zero padding.
template <class T> Y5_HD T conv1d_channels_at(const T* row, const T* weight, int C, int k, int c) {
    const int p = (k - 1) / 2;
    T acc = 0;
    for (int j = 0; j < k; ++j) {
        int ci = c + j - p;
        if (ci >= 0 && ci < C) acc += weight[j] * row[ci];
    }
    return acc;
}

// dinp[n][ci] after the backward: acc (its value before) + Σ_j weight[j]·grow[ci − j + p], grow being row n
// of dout, added in ascending output channel (descending j).
template <class T> Y5_HD T conv1d_channels_dinp_at(T acc, const T* grow, const T* weight, int C, int k, int ci) {
    const int p = (k - 1) / 2;
    for (int j = k - 1; j >= 0; --j) {
        int c = ci - j + p;
        if (c >= 0 && c < C) acc += weight[j] * grow[c];
    }
    return acc;
}

template <class T> void conv1d_channels_forward_cpu(T* out, const T* inp, const T* weight, int N, int C, int k) {
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) out[(int64_t)n * C + c] = conv1d_channels_at(inp + (int64_t)n * C, weight, C, k, c);
}

template <class T>
void conv1d_channels_backward_cpu(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int N, int C,
                                  int k) {
    const int p = (k - 1) / 2;
    if (dinp)
        for (int n = 0; n < N; ++n)
            for (int ci = 0; ci < C; ++ci)
                dinp[(int64_t)n * C + ci] =
                    conv1d_channels_dinp_at(dinp[(int64_t)n * C + ci], dout + (int64_t)n * C, weight, C, k, ci);
    if (dweight)
        for (int n = 0; n < N; ++n)
            for (int c = 0; c < C; ++c)
                for (int j = 0; j < k; ++j) {
                    int ci = c + j - p;
                    if (ci >= 0 && ci < C) dweight[j] += inp[(int64_t)n * C + ci] * dout[(int64_t)n * C + c];
                }
}

template <class T> void scale_channels_forward_cpu(T* out, const T* x, const T* s, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc)
        for (int i = 0; i < HW; ++i) out[nc * HW + i] = x[nc * HW + i] * s[nc];
}

template <class T>
void scale_channels_backward_cpu(T* dx, T* ds, const T* dout, const T* x, const T* s, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        T acc = 0;
        for (int i = 0; i < HW; ++i) {
            if (dx) dx[nc * HW + i] += dout[nc * HW + i] * s[nc];
            acc += dout[nc * HW + i] * x[nc * HW + i];
        }
        if (ds) ds[nc] += acc;
    }
}

// ----------------------------------------------------------------------------------------------------
// ECA fused: out = x·σ(conv1d_channels(mean_hw(x), weight)), x/out (N,C,HW), weight (k). Forward in two passes
// (the channel means, then gate and scale in one pass over x), saving pooled and the gate s (N,C) for the
// backward, which also takes two passes over the planes:
//   ds = Σ_hw dout·x, dz = ds·s·(1 − s) (the sigmoid's gradient from its output), dweight += conv1d's weight
//   gradient of dz, dp = conv1d's input gradient of dz, then dx += dout·s + dp/HW.
// The per-(n,c) math below is shared with the CUDA kernels.

// The gate of plane (n, c) from row n of pooled.
template <class T> Y5_HD T eca_gate(const T* pooled_row, const T* weight, int C, int k, int c) {
    return sigmoid(conv1d_channels_at(pooled_row, weight, C, k, c));
}

// dx of one element: (dx + dout·s) + dp/HW, the order of the unfused ops' backward (scale, then the pool).
template <class T> Y5_HD T eca_dx(T dx, T dout, T s, T dp_over_hw) { return (dx + dout * s) + dp_over_hw; }

template <class T>
void eca_forward_cpu(T* out, T* pooled, T* gate, const T* x, const T* weight, int N, int C, int HW, int k) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        double sum = 0;
        for (int i = 0; i < HW; ++i) sum += x[nc * HW + i];
        pooled[nc] = T(sum / HW);
    }
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const int64_t n = nc / C;
        const T s = eca_gate(pooled + n * C, weight, C, k, (int)(nc - n * C));
        gate[nc] = s;
        for (int i = 0; i < HW; ++i) out[nc * HW + i] = x[nc * HW + i] * s;
    }
}

// dz: N·C values of scratch. dx, dweight may be null.
template <class T>
void eca_backward_cpu(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* pooled, const T* gate,
                      int N, int C, int HW, int k, T* dz) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        T ds = 0;
        for (int i = 0; i < HW; ++i) ds += dout[nc * HW + i] * x[nc * HW + i];
        dz[nc] = ds * (gate[nc] * (T(1) - gate[nc]));
    }
    if (dweight) conv1d_channels_backward_cpu<T>(nullptr, dweight, dz, pooled, weight, N, C, k);
    if (!dx) return;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const int64_t n = nc / C;
        const T g = conv1d_channels_dinp_at(T(0), dz + n * C, weight, C, k, (int)(nc - n * C)) / T(HW);
        for (int i = 0; i < HW; ++i) dx[nc * HW + i] = eca_dx(dx[nc * HW + i], dout[nc * HW + i], gate[nc], g);
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/eca.cu, f32, the CPU reference's arguments plus the stream); built only with Y5_CUDA.
// As on the CPU, any gradient pointer may be null.

void conv1d_channels_forward_cuda(float* out, const float* inp, const float* weight, int N, int C, int k,
                                  cudaStream_t stream);
void conv1d_channels_backward_cuda(float* dinp, float* dweight, const float* dout, const float* inp,
                                   const float* weight, int N, int C, int k, cudaStream_t stream);
void scale_channels_forward_cuda(float* out, const float* x, const float* s, int N, int C, int HW, cudaStream_t stream);
void scale_channels_backward_cuda(float* dx, float* ds, const float* dout, const float* x, const float* s, int N, int C,
                                  int HW, cudaStream_t stream);
void eca_forward_cuda(float* out, float* pooled, float* gate, const float* x, const float* weight, int N, int C, int HW,
                      int k, cudaStream_t stream);
void eca_backward_cuda(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                       const float* pooled, const float* gate, int N, int C, int HW, int k, float* dz,
                       cudaStream_t stream);

}  // namespace y5
