/*
 * Pooling, CPU reference.
 * maxpool2d: inp (N,C,H,W) → out (N,C,Ho,Wo), Ho = (H + 2·pad − k)/stride + 1, padding never wins
 *   (PyTorch pads with −inf). The backward routes each output gradient to the first maximum of its
 *   window in row-major order (PyTorch's tie rule); it recomputes that argmax from inp instead of
 *   storing indices. SPPF uses k 5, stride 1, pad 2.
 * sppf: SPPF's three cascaded stride-1 pools fused into one op that writes cat(x, y1, y2, y3).
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

// SPPF's three cascaded pools, fused: x (N,C,H,W) → out (N,4C,H,W) = cat(x, y1, y2, y3) along channels,
// y1 = m(x), y2 = m(y1), y3 = m(y2), m = maxpool(k, stride 1, pad k/2). The pools write straight into their
// channel slices, so neither the three pooled tensors nor a concat copy exist. Slice s of plane p = n·C + c
// starts at sppf_slice(p, s).
Y5_HD int64_t sppf_slice(int64_t p, int s, int C, int HW) { return ((p / C * 4 + s) * C + p % C) * HW; }

template <class T> void sppf_forward_cpu(T* out, const T* inp, int64_t p0, int64_t p1, int C, int H, int W, int k) {
    const int HW = H * W;
    for (int64_t p = p0; p < p1; ++p) {
        T* y[4];
        for (int s = 0; s < 4; ++s) y[s] = out + sppf_slice(p, s, C, HW);
        for (int i = 0; i < HW; ++i) y[0][i] = inp[p * HW + i];
        for (int s = 1; s < 4; ++s) maxpool2d_forward_cpu(y[s], y[s - 1], 1, 1, H, W, k, 1, k / 2);
    }
}

// The backward of the cascade, in the order the tape runs the unfused ops (so the sums are bitwise the
// same): with g_s the output gradient's slices and R(d | y) maxpool's routing of d to the maxima in y,
//   d2 = g2 + R(g3 | y2),  d1 = g1 + R(d2 | y1),  dinp += g0 + R(d1 | x).
// out: the forward's output (its slices are the pools' inputs). scratch: 2·H·W values.
template <class T>
void sppf_backward_cpu(T* dinp, const T* dout, const T* out, int64_t p0, int64_t p1, int C, int H, int W, int k,
                       T* scratch) {
    const int HW = H * W, pad = k / 2;
    T *d2 = scratch, *d1 = scratch + HW;
    for (int64_t p = p0; p < p1; ++p) {
        const T *g[4], *y[4];
        for (int s = 0; s < 4; ++s) g[s] = dout + sppf_slice(p, s, C, HW), y[s] = out + sppf_slice(p, s, C, HW);
        T* dx = dinp + p * HW;
        for (int i = 0; i < HW; ++i) d2[i] = g[2][i], d1[i] = g[1][i], dx[i] += g[0][i];
        maxpool2d_backward_cpu(d2, g[3], y[2], 1, 1, H, W, k, 1, pad);
        maxpool2d_backward_cpu(d1, d2, y[1], 1, 1, H, W, k, 1, pad);
        maxpool2d_backward_cpu(dx, d1, y[0], 1, 1, H, W, k, 1, pad);
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
// sppf_backward_cuda takes sppf_cuda_scratch(N, C, H, W) bytes of device scratch for the call.
void sppf_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, cudaStream_t stream);
size_t sppf_cuda_scratch(int N, int C, int H, int W);
void sppf_backward_cuda(float* dinp, const float* dout, const float* out, int N, int C, int H, int W, int k,
                        void* scratch, cudaStream_t stream);
void global_avgpool_forward_cuda(float* out, const float* inp, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_backward_cuda(float* dinp, const float* dout, int N, int C, int HW, cudaStream_t stream);

}  // namespace y5
