/*
 * Pooling, CPU reference, over a storage type T: f32, f64 (gradient checks) or f16 (mixed precision: loads with
 * ld(), float arithmetic, one st<T>() rounding per stored value).
 * maxpool2d: inp (N,C,H,W) → out (N,C,Ho,Wo), Ho = (H + 2·pad − k)/stride + 1, padding never wins
 *   (PyTorch pads with −inf). The backward routes each output gradient to the first maximum of its
 *   window in row-major order (PyTorch's tie rule); it recomputes that argmax from inp instead of
 *   storing indices. SPPF uses k 5, stride 1, pad 2. Forward copies (exact in f16); the backward adds each
 *   input's routed gradients onto its old value in acc_t<T> (outputs row-major) and rounds once.
 * sppf: SPPF's three cascaded stride-1 pools fused into one op that writes cat(x, y1, y2, y3). Its backward
 *   keeps the cascade's intermediate gradients in acc_t<T> (float for f16) and rounds dinp once.
 * global_avgpool: inp (N,C,H,W) → out (N,C), the mean over H·W (ECA's squeeze), summed in double on the CPU.
 * Backward accumulates into dinp (+=).
 * The CUDA kernels (kernels/pool.cu) share maxpool_argmax, so both sides pick the same element.
 */
#pragma once
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// Index (h·W + w) of the first maximum in the window of output (ho, wo) of one (H,W) plane; −1 if the
// window lies wholly in the padding (impossible when pad ≤ k/2).
template <class T> Y5_HD int maxpool_argmax(const T* plane, int H, int W, int ho, int wo, int k, int stride, int pad) {
    int best = -1;
    acc_t<T> m = 0;
    const int h0 = ho * stride - pad, w0 = wo * stride - pad;
    for (int i = 0; i < k; ++i) {
        int h = h0 + i;
        if (h < 0 || h >= H) continue;
        for (int j = 0; j < k; ++j) {
            int w = w0 + j;
            if (w < 0 || w >= W) continue;
            const acc_t<T> v = ld(plane[h * W + w]);
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
                o[ho * Wo + wo] = a >= 0 ? plane[a] : st<T>(-INFINITY);
            }
    }
}

// One plane's routing: dx[argmax of output o] += dy[o] for the outputs in row-major order, in A (acc_t of the
// storage type) whatever dy's and plane's storage types.
template <class A, class G, class T>
void maxpool2d_route_plane(A* dx, const G* dy, const T* plane, int H, int W, int k, int stride, int pad) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    for (int ho = 0; ho < Ho; ++ho)
        for (int wo = 0; wo < Wo; ++wo) {
            int a = maxpool_argmax(plane, H, W, ho, wo, k, stride, pad);
            if (a >= 0) dx[a] += ld(dy[ho * Wo + wo]);
        }
}

// f16: each plane of dinp goes through a float copy, so every element is rounded once after all its routes.
template <class T>
void maxpool2d_backward_cpu(T* dinp, const T* dout, const T* inp, int N, int C, int H, int W, int k, int stride,
                            int pad) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1, HW = H * W;
    constexpr bool kF16 = std::is_same_v<T, f16>;
    std::vector<float> acc(kF16 ? HW : 0);
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const T *plane = inp + nc * HW, *dy = dout + nc * Ho * Wo;
        T* dx = dinp + nc * HW;
        if constexpr (kF16) {
            for (int i = 0; i < HW; ++i) acc[i] = ld(dx[i]);
            maxpool2d_route_plane(acc.data(), dy, plane, H, W, k, stride, pad);
            for (int i = 0; i < HW; ++i) dx[i] = st<T>(acc[i]);
        } else maxpool2d_route_plane(dx, dy, plane, H, W, k, stride, pad);
    }
}

// Stride-1 pooling with pad k/2 (SPPF's), separably: the first maximum of each row's window, then the first of
// those down the column's window. That is the row-major first maximum of the k×k window, NaN rule included, so
// maxpool_argmax's choice, in 2k comparisons instead of k². arg (H·W): each output's input index h·W + w;
// rowarg (H·W): scratch.
template <class A> inline bool pool_takes(A m, A v) { return m == m && (v > m || v != v); }
template <class T> void maxpool_s1_argmax_plane(int* arg, int* rowarg, const T* plane, int H, int W, int k) {
    using A = acc_t<T>;
    const int p = k / 2;
    for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
            const int j1 = y5_min(W - 1, w + p);
            int b = h * W + y5_max(0, w - p);
            A m = ld(plane[b]);
            for (int j = h * W + y5_max(0, w - p) + 1; j <= h * W + j1; ++j) {
                const A v = ld(plane[j]);
                const bool t = pool_takes(m, v);
                b = t ? j : b, m = t ? v : m;
            }
            rowarg[h * W + w] = b;
        }
    for (int h = 0; h < H; ++h) {
        const int i0 = y5_max(0, h - p), i1 = y5_min(H - 1, h + p);
        for (int w = 0; w < W; ++w) {
            int b = rowarg[i0 * W + w];
            A m = ld(plane[b]);
            for (int i = i0 + 1; i <= i1; ++i) {
                const int c = rowarg[i * W + w];
                const A v = ld(plane[c]);
                const bool t = pool_takes(m, v);
                b = t ? c : b, m = t ? v : m;
            }
            arg[h * W + w] = b;
        }
    }
}

// SPPF's three cascaded pools, fused: x (N,C,H,W) → out (N,4C,H,W) = cat(x, y1, y2, y3) along channels,
// y1 = m(x), y2 = m(y1), y3 = m(y2), m = maxpool(k, stride 1, pad k/2). The pools write straight into their
// channel slices, so neither the three pooled tensors nor a concat copy exist. Slice s of plane p = n·C + c
// starts at sppf_slice(p, s).
Y5_HD int64_t sppf_slice(int64_t p, int s, int C, int HW) { return ((p / C * 4 + s) * C + p % C) * HW; }

// The forward's values alone: maxpool_s1_argmax_plane's comparisons in the same order (a row's window left to
// right, then the column's rows top to bottom), keeping the value taken instead of its index, so out[i] is
// plane[arg[i]] without the gathers; the column pass runs along rows (GCC vectorises it). rowmax (H·W): scratch.
template <class T> void maxpool_s1_plane(T* out, T* rowmax, const T* plane, int H, int W, int k) {
    const int p = k / 2;
    for (int h = 0; h < H; ++h) {
        const T* r = plane + (int64_t)h * W;
        for (int w = 0; w < W; ++w) {
            const int j1 = y5_min(W - 1, w + p);
            T b = r[y5_max(0, w - p)];
            for (int j = y5_max(0, w - p) + 1; j <= j1; ++j) b = pool_takes(ld(b), ld(r[j])) ? r[j] : b;
            rowmax[(int64_t)h * W + w] = b;
        }
    }
    for (int h = 0; h < H; ++h) {
        const int i0 = y5_max(0, h - p), i1 = y5_min(H - 1, h + p);
        T* o = out + (int64_t)h * W;
        for (int w = 0; w < W; ++w) o[w] = rowmax[(int64_t)i0 * W + w];
        for (int i = i0 + 1; i <= i1; ++i) {
            const T* c = rowmax + (int64_t)i * W;
            for (int w = 0; w < W; ++w) o[w] = pool_takes(ld(o[w]), ld(c[w])) ? c[w] : o[w];
        }
    }
}

// The same pool over one channel block of a blocked tensor (H, W, B floats: layers' CPU inference in oneDNN's
// nChw{B}c layout), each of the B lanes a plane: maxpool_s1_plane's comparisons in the same order, B lanes at a
// time. rowmax: H·W·B floats of scratch.
inline void maxpool_s1_blocked(float* out, float* rowmax, const float* in, int H, int W, int B, int k) {
    const int p = k / 2;
    for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w) {
            const float* r = in + (int64_t)h * W * B;
            float* m = rowmax + ((int64_t)h * W + w) * B;
            const int j0 = y5_max(0, w - p), j1 = y5_min(W - 1, w + p);
            for (int b = 0; b < B; ++b) m[b] = r[(int64_t)j0 * B + b];
            for (int j = j0 + 1; j <= j1; ++j) {
                const float* v = r + (int64_t)j * B;
                for (int b = 0; b < B; ++b) m[b] = pool_takes(m[b], v[b]) ? v[b] : m[b];
            }
        }
    const int64_t row = (int64_t)W * B;
    for (int h = 0; h < H; ++h) {
        const int i0 = y5_max(0, h - p), i1 = y5_min(H - 1, h + p);
        float* o = out + h * row;
        std::memcpy(o, rowmax + i0 * row, row * sizeof(float));
        for (int i = i0 + 1; i <= i1; ++i) {
            const float* c = rowmax + i * row;
            for (int64_t j = 0; j < row; ++j) o[j] = pool_takes(o[j], c[j]) ? c[j] : o[j];
        }
    }
}

template <class T> void sppf_forward_cpu(T* out, const T* inp, int64_t p0, int64_t p1, int C, int H, int W, int k) {
    const int HW = H * W;
    std::vector<T> rowmax((size_t)HW);
    for (int64_t p = p0; p < p1; ++p) {
        T* y[4];
        for (int s = 0; s < 4; ++s) y[s] = out + sppf_slice(p, s, C, HW);
        for (int i = 0; i < HW; ++i) y[0][i] = inp[p * HW + i];
        for (int s = 1; s < 4; ++s) maxpool_s1_plane(y[s], rowmax.data(), y[s - 1], H, W, k);
    }
}

// The backward of the cascade, in the order the tape runs the unfused ops (so in f32 and f64 the sums are
// bitwise the same): with g_s the output gradient's slices and R(d | y) maxpool's routing of d to the maxima in y,
//   d2 = g2 + R(g3 | y2),  d1 = g1 + R(d2 | y1),  dinp += g0 + R(d1 | x).
// d2, d1 and dinp's new value are held in acc_t<T> (float for f16) and dinp is rounded once at the end, where
// the unfused f16 ops would round d2 and d1 and every add. fresh: dinp's old value taken as zero, unread (its
// first producer writes it).
// out: the forward's output (its slices are the pools' inputs). scratch: 3·H·W values.
template <class T>
void sppf_backward_cpu(T* dinp, const T* dout, const T* out, int64_t p0, int64_t p1, int C, int H, int W, int k,
                       acc_t<T>* scratch, bool fresh) {
    const int HW = H * W;
    acc_t<T> *d2 = scratch, *d1 = scratch + HW, *acc = scratch + 2 * HW;
    std::vector<int> arg(2 * (size_t)HW);
    // R(d | y) with each output's argmax from maxpool_s1_argmax_plane, added in row-major output order (as
    // maxpool2d_route_plane does, so the same sums).
    auto route = [&](acc_t<T>* dst, const auto* d, const T* y) {
        maxpool_s1_argmax_plane(arg.data(), arg.data() + HW, y, H, W, k);
        for (int i = 0; i < HW; ++i) dst[arg[i]] += ld(d[i]);
    };
    for (int64_t p = p0; p < p1; ++p) {
        const T *g[4], *y[4];
        for (int s = 0; s < 4; ++s) g[s] = dout + sppf_slice(p, s, C, HW), y[s] = out + sppf_slice(p, s, C, HW);
        T* dx = dinp + p * HW;
        for (int i = 0; i < HW; ++i)
            d2[i] = ld(g[2][i]), d1[i] = ld(g[1][i]), acc[i] = (fresh ? acc_t<T>(0) : ld(dx[i])) + ld(g[0][i]);
        route(d2, g[3], y[2]);
        route(d1, d2, y[1]);
        route(acc, d1, y[0]);
        for (int i = 0; i < HW; ++i) dx[i] = st<T>(acc[i]);
    }
}

// O: the output's storage type, T by default (fused ECA keeps f16 x's means in float).
template <class T, class O = T> void global_avgpool_forward_cpu(O* out, const T* inp, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        double s = 0;
        for (int i = 0; i < HW; ++i) s += ld(inp[nc * HW + i]);
        out[nc] = st<O>((acc_t<O>)(s / HW));
    }
}

template <class T> void global_avgpool_backward_cpu(T* dinp, const T* dout, int N, int C, int HW) {
    for (int64_t nc = 0; nc < (int64_t)N * C; ++nc) {
        const acc_t<T> g = ld(dout[nc]) / acc_t<T>(HW);
        for (int i = 0; i < HW; ++i) dinp[nc * HW + i] = st<T>(ld(dinp[nc * HW + i]) + g);
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/pool.cu, the CPU reference's arguments plus the stream; f32 and f16 overloads); built
// only with Y5_CUDA. maxpool2d_backward_cuda takes `argmax`, N·C·Ho·Wo ints of device scratch for the call.

void maxpool2d_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, int stride, int pad,
                            cudaStream_t stream);
void maxpool2d_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int k, int stride, int pad,
                            cudaStream_t stream);
void maxpool2d_backward_cuda(float* dinp, const float* dout, const float* inp, int N, int C, int H, int W, int k,
                             int stride, int pad, int* argmax, cudaStream_t stream);
void maxpool2d_backward_cuda(f16* dinp, const f16* dout, const f16* inp, int N, int C, int H, int W, int k,
                             int stride, int pad, int* argmax, cudaStream_t stream);
// sppf_backward_cuda takes sppf_cuda_scratch(N, C, H, W) bytes of device scratch for the call (either dtype: the
// cascade's intermediate gradients are float).
void sppf_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, cudaStream_t stream);
void sppf_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int k, cudaStream_t stream);
size_t sppf_cuda_scratch(int N, int C, int H, int W);
void sppf_backward_cuda(float* dinp, const float* dout, const float* out, int N, int C, int H, int W, int k,
                        void* scratch, bool fresh, cudaStream_t stream);
void sppf_backward_cuda(f16* dinp, const f16* dout, const f16* out, int N, int C, int H, int W, int k, void* scratch,
                        bool fresh, cudaStream_t stream);
// global_avgpool forward: f32 → f32, f16 → f16, and f16 → f32 (fused ECA's means).
void global_avgpool_forward_cuda(float* out, const float* inp, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_forward_cuda(f16* out, const f16* inp, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_forward_cuda(float* out, const f16* inp, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_backward_cuda(float* dinp, const float* dout, int N, int C, int HW, cudaStream_t stream);
void global_avgpool_backward_cuda(f16* dinp, const f16* dout, int N, int C, int HW, cudaStream_t stream);

}  // namespace y5
