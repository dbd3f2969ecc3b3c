/*
 * The pieces of ECA (Wang et al. 2020) beyond pooling and sigmoid, CPU reference:
 * conv1d_channels: a 1-D convolution across the channel axis, no bias, zero padding (k−1)/2, k odd:
 *   inp (N,C), weight (k) → out (N,C), out[n][c] = Σ_j weight[j]·inp[n][c + j − (k−1)/2].
 *   (PyTorch: Conv1d(1, 1, k, padding=(k−1)/2, bias=False) on y.squeeze(−1).transpose(−1, −2).)
 * scale_channels: x (N,C,HW) times a per-(n,c) gate s (N,C) → out (N,C,HW).
 * ECA(x) = scale_channels(x, sigmoid(conv1d_channels(global_avgpool(x)))).
 * Backward accumulates (+=); any gradient pointer may be null to skip it.
 */
#pragma once
#include "kernels/common.h"

namespace y5 {

template <class T> void conv1d_channels_forward_cpu(T* out, const T* inp, const T* weight, int N, int C, int k) {
    const int p = (k - 1) / 2;
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            T acc = 0;
            for (int j = 0; j < k; ++j) {
                int ci = c + j - p;
                if (ci >= 0 && ci < C) acc += weight[j] * inp[(int64_t)n * C + ci];
            }
            out[(int64_t)n * C + c] = acc;
        }
}

template <class T>
void conv1d_channels_backward_cpu(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int N, int C,
                                  int k) {
    const int p = (k - 1) / 2;
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            T g = dout[(int64_t)n * C + c];
            for (int j = 0; j < k; ++j) {
                int ci = c + j - p;
                if (ci < 0 || ci >= C) continue;
                if (dinp) dinp[(int64_t)n * C + ci] += weight[j] * g;
                if (dweight) dweight[j] += inp[(int64_t)n * C + ci] * g;
            }
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

}  // namespace y5
