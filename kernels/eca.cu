/*
 * CUDA side of kernels/eca.h.
 * conv1d_channels: one thread per (n, c) for the output and the input gradient (a gather, with the CPU's
 *   order of additions); the weight gradient is one block per tap j reducing its N·C products (per-thread
 *   float sums, then block_sum). The tensors are small ((N,C) pooled vectors).
 * scale_channels: forward is a plane kernel over the N·C planes; backward is one block per plane, which
 *   writes dx and reduces Σ dout·x for ds (per-thread float sums, then block_sum).
 * eca (fused): the pool's mean kernel, then one plane pass that computes each plane's gate and scales it;
 *   backward: one block per plane for dz, the weight-gradient kernel, then one plane pass for dx.
 * No atomics: every run gives the same bits.
 * Kernels templated over the storage type T (float or f16: ld() loads, float sums, one st<T>() per stored value);
 * fused ECA's pooled, gate, weight, dweight and dz are float for either T. f32 and f16 launchers share them.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/eca.h"
#include "kernels/pool.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

template <class T>
__global__ static void conv1d_channels_forward_kernel(T* out, const T* inp, const T* weight, int C, int k, int64_t NC) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < NC; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = i / C;
        out[i] = st<T>(conv1d_channels_at(inp + n * C, weight, C, k, (int)(i - n * C)));
    }
}

template <class T>
__global__ static void conv1d_channels_dinp_kernel(T* dinp, const T* dout, const T* weight, int C, int k, int64_t NC) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < NC; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = i / C;
        dinp[i] = st<T>(conv1d_channels_dinp_at(ld(dinp[i]), dout + n * C, weight, C, k, (int)(i - n * C)));
    }
}

// Block j (grid k): dweight[j] += Σ_{n,c} inp[n][c + j − p]·dout[n][c] over the in-range c.
template <class T>
__global__ static void conv1d_channels_dweight_kernel(T* dweight, const T* dout, const T* inp, int C, int k,
                                                      int64_t NC) {
    const int j = blockIdx.x, p = (k - 1) / 2;
    float acc = 0.f;
    for (int64_t i = threadIdx.x; i < NC; i += blockDim.x) {
        const int64_t n = i / C;
        const int ci = (int)(i - n * C) + j - p;
        if (ci >= 0 && ci < C) acc += ld(inp[n * C + ci]) * ld(dout[i]);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) dweight[j] = st<T>(ld(dweight[j]) + acc);
}

// out = x·s[plane] over the P planes of HW (plane grid).
template <class T>
__global__ static void scale_channels_forward_kernel(T* out, const T* x, const T* s, int HW, int64_t P) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const float sp = ld(s[p]);
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x)
            out[p * HW + i] = st<T>(ld(x[p * HW + i]) * sp);
    }
}

// One block per plane (grid-stride over the P planes): dx += dout·s[p] (dx may be null); ds[p] += Σ dout·x
// (ds may be null).
template <class T>
__global__ static void scale_channels_backward_kernel(T* dx, T* ds, const T* dout, const T* x, const T* s, int HW,
                                                      int64_t P) {
    for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
        const float sp = ld(s[p]);
        const T *dy = dout + p * HW, *xp = x + p * HW;
        float acc = 0.f;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) {
            const float g = ld(dy[i]);
            if (dx) dx[p * HW + i] = st<T>(ld(dx[p * HW + i]) + g * sp);
            acc += g * ld(xp[i]);
        }
        if (ds) {  // the same for the whole block, so every thread calls block_sum
            acc = block_sum(acc);
            if (threadIdx.x == 0) ds[p] = st<T>(ld(ds[p]) + acc);
        }
    }
}

// ECA forward, pass 2 (pass 1 is the pool's mean kernel): plane grid; every block of plane p computes its gate
// from row n of pooled (k multiply-adds), the x = 0 block stores it, and all scale their part of the plane.
template <class T>
__global__ static void eca_scale_kernel(T* out, float* gate, const T* x, const float* pooled, const float* weight,
                                        int C, int HW, int k, int64_t P) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int64_t n = p / C;
        const float s = eca_gate(pooled + n * C, weight, C, k, (int)(p - n * C));
        if (blockIdx.x == 0 && threadIdx.x == 0) gate[p] = s;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x)
            out[p * HW + i] = st<T>(ld(x[p * HW + i]) * s);
    }
}

// ECA backward, pass 1: one block per plane: dz[p] = (Σ dout·x)·s(1 − s).
template <class T>
__global__ static void eca_dz_kernel(float* dz, const T* dout, const T* x, const float* gate, int HW, int64_t P) {
    for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
        const T *dy = dout + p * HW, *xp = x + p * HW;
        float acc = 0.f;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) acc += ld(dy[i]) * ld(xp[i]);
        acc = block_sum(acc);
        if (threadIdx.x == 0) dz[p] = acc * (gate[p] * (1.f - gate[p]));
    }
}

// ECA backward, pass 2 (after the weight gradient's kernel): plane grid, dx += dout·s + dp/HW with dp from dz.
template <class T>
__global__ static void eca_dx_kernel(T* dx, const T* dout, const float* gate, const float* dz, const float* weight,
                                     int C, int HW, int k, int64_t P) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int64_t n = p / C;
        const float g = conv1d_channels_dinp_at(0.f, dz + n * C, weight, C, k, (int)(p - n * C)) / (float)HW;
        const float s = gate[p];
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x)
            dx[p * HW + i] = st<T>(eca_dx(ld(dx[p * HW + i]), ld(dout[p * HW + i]), s, g));
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T>
static void conv1d_channels_forward_launch(T* out, const T* inp, const T* weight, int N, int C, int k,
                                           cudaStream_t stream) {
    const int64_t NC = (int64_t)N * C;
    if (NC == 0) return;
    conv1d_channels_forward_kernel<T><<<grid_1d(NC), kBlock, 0, stream>>>(out, inp, weight, C, k, NC);
    Y5_LAUNCH_CHECK();
}
void conv1d_channels_forward_cuda(float* out, const float* inp, const float* weight, int N, int C, int k,
                                  cudaStream_t stream) {
    conv1d_channels_forward_launch(out, inp, weight, N, C, k, stream);
}
void conv1d_channels_forward_cuda(f16* out, const f16* inp, const f16* weight, int N, int C, int k,
                                  cudaStream_t stream) {
    conv1d_channels_forward_launch(out, inp, weight, N, C, k, stream);
}

template <class T>
static void conv1d_channels_backward_launch(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int N,
                                            int C, int k, cudaStream_t stream) {
    const int64_t NC = (int64_t)N * C;
    if (NC == 0) return;
    if (dinp) {
        conv1d_channels_dinp_kernel<T><<<grid_1d(NC), kBlock, 0, stream>>>(dinp, dout, weight, C, k, NC);
        Y5_LAUNCH_CHECK();
    }
    if (dweight) {
        conv1d_channels_dweight_kernel<T><<<k, kBlock, 0, stream>>>(dweight, dout, inp, C, k, NC);
        Y5_LAUNCH_CHECK();
    }
}
void conv1d_channels_backward_cuda(float* dinp, float* dweight, const float* dout, const float* inp,
                                   const float* weight, int N, int C, int k, cudaStream_t stream) {
    conv1d_channels_backward_launch(dinp, dweight, dout, inp, weight, N, C, k, stream);
}
void conv1d_channels_backward_cuda(f16* dinp, f16* dweight, const f16* dout, const f16* inp, const f16* weight, int N,
                                   int C, int k, cudaStream_t stream) {
    conv1d_channels_backward_launch(dinp, dweight, dout, inp, weight, N, C, k, stream);
}

template <class T>
static void scale_channels_forward_launch(T* out, const T* x, const T* s, int N, int C, int HW, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0) return;
    scale_channels_forward_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(out, x, s, HW, P);
    Y5_LAUNCH_CHECK();
}
void scale_channels_forward_cuda(float* out, const float* x, const float* s, int N, int C, int HW, cudaStream_t stream) {
    scale_channels_forward_launch(out, x, s, N, C, HW, stream);
}
void scale_channels_forward_cuda(f16* out, const f16* x, const f16* s, int N, int C, int HW, cudaStream_t stream) {
    scale_channels_forward_launch(out, x, s, N, C, HW, stream);
}

template <class T>
static void scale_channels_backward_launch(T* dx, T* ds, const T* dout, const T* x, const T* s, int N, int C, int HW,
                                           cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0 || !(dx || ds)) return;
    scale_channels_backward_kernel<T><<<grid_1d(P, 1), plane_reduce_block(HW), 0, stream>>>(dx, ds, dout, x, s, HW, P);
    Y5_LAUNCH_CHECK();
}
void scale_channels_backward_cuda(float* dx, float* ds, const float* dout, const float* x, const float* s, int N, int C,
                                  int HW, cudaStream_t stream) {
    scale_channels_backward_launch(dx, ds, dout, x, s, N, C, HW, stream);
}
void scale_channels_backward_cuda(f16* dx, f16* ds, const f16* dout, const f16* x, const f16* s, int N, int C, int HW,
                                  cudaStream_t stream) {
    scale_channels_backward_launch(dx, ds, dout, x, s, N, C, HW, stream);
}

template <class T>
static void eca_forward_launch(T* out, float* pooled, float* gate, const T* x, const float* weight, int N, int C,
                               int HW, int k, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0) return;
    global_avgpool_forward_cuda(pooled, x, N, C, HW, stream);
    eca_scale_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(out, gate, x, pooled, weight, C, HW, k, P);
    Y5_LAUNCH_CHECK();
}
void eca_forward_cuda(float* out, float* pooled, float* gate, const float* x, const float* weight, int N, int C, int HW,
                      int k, cudaStream_t stream) {
    eca_forward_launch(out, pooled, gate, x, weight, N, C, HW, k, stream);
}
void eca_forward_cuda(f16* out, float* pooled, float* gate, const f16* x, const float* weight, int N, int C, int HW,
                      int k, cudaStream_t stream) {
    eca_forward_launch(out, pooled, gate, x, weight, N, C, HW, k, stream);
}

template <class T>
static void eca_backward_launch(T* dx, float* dweight, const T* dout, const T* x, const float* weight,
                                const float* pooled, const float* gate, int N, int C, int HW, int k, float* dz,
                                cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0 || !(dx || dweight)) return;
    eca_dz_kernel<T><<<grid_1d(P, 1), plane_reduce_block(HW), 0, stream>>>(dz, dout, x, gate, HW, P);
    Y5_LAUNCH_CHECK();
    if (dweight) conv1d_channels_backward_cuda(nullptr, dweight, dz, pooled, weight, N, C, k, stream);
    if (dx) {
        eca_dx_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(dx, dout, gate, dz, weight, C, HW, k, P);
        Y5_LAUNCH_CHECK();
    }
}
void eca_backward_cuda(float* dx, float* dweight, const float* dout, const float* x, const float* weight,
                       const float* pooled, const float* gate, int N, int C, int HW, int k, float* dz,
                       cudaStream_t stream) {
    eca_backward_launch(dx, dweight, dout, x, weight, pooled, gate, N, C, HW, k, dz, stream);
}
void eca_backward_cuda(f16* dx, float* dweight, const f16* dout, const f16* x, const float* weight, const float* pooled,
                       const float* gate, int N, int C, int HW, int k, float* dz, cudaStream_t stream) {
    eca_backward_launch(dx, dweight, dout, x, weight, pooled, gate, N, C, HW, k, dz, stream);
}

}  // namespace y5
