/*
 * Pooling, CPU reference.
 * maxpool2d: inp (N,C,H,W) → out (N,C,Ho,Wo), Ho = (H + 2·pad − k)/stride + 1, padding never wins
 *   (PyTorch pads with −inf). The backward routes each output gradient to the first maximum of its
 *   window in row-major order (PyTorch's tie rule); it recomputes that argmax from inp instead of
 *   storing indices. SPPF uses k 5, stride 1, pad 2.
 * global_avgpool: inp (N,C,H,W) → out (N,C), the mean over H·W (ECA's squeeze).
 * Backward accumulates into dinp (+=).
 * The CUDA kernels (kernels/pool.cu) share maxpool_argmax, so both sides pick the same element.
 */
#pragma once
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// Index (h·W + w) of the first maximum in the window of output (ho, wo) of one (H,W) plane; −1 if the
// window lies wholly in the padding (impossible when pad ≤ k/2).
template <class T> Y5_HD int maxpool_argmax(const T* plane, int H, int W, int ho, int wo, int k, int stride, int pad) {
    int best = -1;
    T m = T(0);
    const int h0 = ho * stride - pad, w0 = wo * stride - pad;
    for (int i = 0; i < k; ++i) {
        int h = h0 + i;
        if (h < 0 || h >= H) continue;
        for (int j = 0; j < k; ++j) {
            int w = w0 + j;
            if (w < 0 || w >= W) continue;
            T v = plane[h * W + w];
            if (best < 0 || v > m || v != v) {
                best = h * W + w;
                m = v;
                if (v != v) return best;  // NaN propagates, as in PyTorch
            }
        }
    }
    return best;
}

template <class T>
void maxpool2d_forward_cpu(T* out, const T* inp, int N, int C, int H, int W, int k, int stride, int pad) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const T* plane = inp + nc * H * W;
        T* o = out + nc * Ho * Wo;
        for (int ho = 0; ho < Ho; ++ho)
            for (int wo = 0; wo < Wo; ++wo) {
                int a = maxpool_argmax(plane, H, W, ho, wo, k, stride, pad);
                o[ho * Wo + wo] = a >= 0 ? plane[a] : T(-INFINITY);
            }
    }
}

template <class T>
void maxpool2d_backward_cpu(T* dinp, const T* dout, const T* inp, int N, int C, int H, int W, int k, int stride,
                            int pad) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const T* plane = inp + nc * H * W;
        const T* dy = dout + nc * Ho * Wo;
        T* dx = dinp + nc * H * W;
        for (int ho = 0; ho < Ho; ++ho)
            for (int wo = 0; wo < Wo; ++wo) {
                int a = maxpool_argmax(plane, H, W, ho, wo, k, stride, pad);
                if (a >= 0) dx[a] += dy[ho * Wo + wo];
            }
    }
}

template <class T> void global_avgpool_forward_cpu(T* out, const T* inp, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        double s = 0;
        for (int i = 0; i < HW; ++i) s += inp[nc * HW + i];
        out[nc] = T(s / HW);
    }
}

template <class T> void global_avgpool_backward_cpu(T* dinp, const T* dout, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        T g = dout[nc] / T(HW);
        for (int i = 0; i < HW; ++i) dinp[nc * HW + i] += g;
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/pool.cu, f32, the CPU reference's arguments plus the stream); built only with
// Y5_CUDA. maxpool2d_backward_cuda takes `argmax`, N·C·Ho·Wo ints of device scratch for the call.

void maxpool2d_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, int stride, int pad,
                            cudaStream_t stream);
void maxpool2d_backward_cuda(float* dinp, const float* dout, const float* inp, int N, int C, int H, int W, int k,
                             int stride, int pad, int* argmax, cudaStream_t stream);
void global_avgpool_forward_cuda(float* out, const float* inp, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_backward_cuda(float* dinp, const float* dout, int N, int C, int HW, cudaStream_t stream);

}  // namespace y5
