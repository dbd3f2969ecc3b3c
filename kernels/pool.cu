/*
 * CUDA side of kernels/pool.h. Images (N,C,H,W) are N·C planes; the plane kernels walk them with a plane
 * grid (y: planes, x: elements of a plane).
 * maxpool2d forward: one thread per output, maxpool_argmax as on the CPU.
 * maxpool2d backward without atomics: one pass stores each output's argmax (as the CPU recomputes it),
 *   then one thread per input gathers the outputs whose window covers it and whose argmax it is, adding
 *   them in the CPU reference's order (outputs row-major), so the result is bitwise the CPU's.
 * SPPF: one block per plane runs the three pools in turn with a barrier between them, writing the concat's
 *   slices directly; its backward runs the cascade's three routings the same way (gather, no atomics).
 * global_avgpool forward: one block per plane, per-thread float sums then block_sum; backward is a
 *   plane kernel.
 * Every kernel is a template over the storage type (float or f16): loads with ld(), float arithmetic, one st<T>()
 * per stored value; the gathers add onto the old value in float and round once, in the CPU reference's order, so
 * f16 results are also bitwise the CPU's. The launchers' f32 and f16 overloads share one static template each.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/pool.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// Forward (Store = false: out = the window maxima) or the backward's first pass (Store = true: argmax =
// each output's argmax in its plane, −1 for a window wholly in the padding). P planes, plane grid over Ho·Wo.
template <class T, bool Store>
__global__ static void maxpool_window_kernel(T* out, int* argmax, const T* inp, int H, int W, int Ho, int Wo, int k,
                                             int stride, int pad, int64_t P) {
    const int L = Ho * Wo;
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const T* plane = inp + p * H * W;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < L; j += gridDim.x * blockDim.x) {
            const int ho = j / Wo, wo = j - ho * Wo;
            const int a = maxpool_argmax(plane, H, W, ho, wo, k, stride, pad);
            if constexpr (Store) argmax[p * L + j] = a;
            else out[p * L + j] = a >= 0 ? plane[a] : st<T>(-INFINITY);
        }
    }
}

// First output index whose window [o·stride − pad, o·stride − pad + k) reaches input row/column h.
__device__ __forceinline__ int first_window(int h, int k, int stride, int pad) {
    const int t = h + pad - k + 1;
    return t <= 0 ? 0 : (t + stride - 1) / stride;
}

// acc plus dout of every output of one plane whose argmax is input j = h·W + w, outputs in row-major order as
// maxpool2d_backward_cpu adds them; dy is float or f16, the sum float.
template <class G>
__device__ __forceinline__ float gather_routes(float acc, const G* dy, const int* arg, int j, int W, int Ho, int Wo,
                                               int k, int stride, int pad) {
    const int h = j / W, w = j - h * W;
    const int ho0 = first_window(h, k, stride, pad), ho1 = y5_min(Ho - 1, (h + pad) / stride);
    const int wo0 = first_window(w, k, stride, pad), wo1 = y5_min(Wo - 1, (w + pad) / stride);
    for (int ho = ho0; ho <= ho1; ++ho)
        for (int wo = wo0; wo <= wo1; ++wo)
            if (arg[ho * Wo + wo] == j) acc += ld(dy[ho * Wo + wo]);
    return acc;
}

// Backward gather: one thread per input element (plane grid over H·W).
template <class T>
__global__ static void maxpool_backward_kernel(T* dinp, const T* dout, const int* argmax, int H, int W, int Ho, int Wo,
                                               int k, int stride, int pad, int64_t P) {
    const int HW = H * W, L = Ho * Wo;
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int* arg = argmax + p * L;
        const T* dy = dout + p * L;
        T* dx = dinp + p * HW;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < HW; j += gridDim.x * blockDim.x)
            dx[j] = st<T>(gather_routes(ld(dx[j]), dy, arg, j, W, Ho, Wo, k, stride, pad));
    }
}

// SPPF forward: one block per plane p = n·C + c (grid-stride over the P planes). The block copies x into slice
// 0, then pools slice s − 1 into slice s; a barrier between the stages makes slice s − 1 complete (global
// writes before __syncthreads are visible to the whole block). The planes are small (H·W = 400 at 640) and
// stay in L1/L2 between the stages.
template <class T>
__global__ static void sppf_forward_kernel(T* out, const T* inp, int C, int H, int W, int k, int64_t P) {
    const int HW = H * W;
    for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
        for (int j = threadIdx.x; j < HW; j += blockDim.x) out[sppf_slice(p, 0, C, HW) + j] = inp[p * HW + j];
        for (int s = 1; s < 4; ++s) {
            const T* src = s == 1 ? inp + p * HW : out + sppf_slice(p, s - 1, C, HW);
            T* dst = out + sppf_slice(p, s, C, HW);
            for (int j = threadIdx.x; j < HW; j += blockDim.x) {
                const int a = maxpool_argmax(src, H, W, j / W, j % W, k, 1, k / 2);
                dst[j] = src[a];  // pad = k/2: every window holds at least its centre
            }
            __syncthreads();
        }
    }
}

// SPPF backward, one block per plane as the forward, with the block's own scratch: arg (H·W ints) and d2, d1
// (H·W floats each, whatever T). Stage by stage as sppf_backward_cpu: the argmax of every window of the stage's
// input (a slice of the forward output), a barrier, then each input element gathers the gradient routed to it;
// dinp's element is rounded once, after its last stage.
template <class T> __device__ static void sppf_argmax(int* arg, const T* y, int H, int W, int k) {
    for (int j = threadIdx.x; j < H * W; j += blockDim.x) arg[j] = maxpool_argmax(y, H, W, j / W, j % W, k, 1, k / 2);
    __syncthreads();  // arg complete
}

template <class T>
__global__ static void sppf_backward_kernel(T* dinp, const T* dout, const T* out, int C, int H, int W, int k, int64_t P,
                                            float* fscratch, int* iscratch, bool fresh) {
    const int HW = H * W, pad = k / 2;
    float *d2 = fscratch + (int64_t)blockIdx.x * 2 * HW, *d1 = d2 + HW;
    int* arg = iscratch + (int64_t)blockIdx.x * HW;
    for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
        const T *g[4], *y[3];
        for (int s = 0; s < 4; ++s) g[s] = dout + sppf_slice(p, s, C, HW);
        for (int s = 0; s < 3; ++s) y[s] = out + sppf_slice(p, s, C, HW);
        T* dx = dinp + p * HW;
        // Each stage s routes d_{s+1} (g3, then d2, then d1) to the maxima in y_s onto g_s (dx + g0 for s = 0); the
        // barrier after a stage completes its output before the next reads it and arg is rewritten.
        sppf_argmax(arg, y[2], H, W, k);
        for (int j = threadIdx.x; j < HW; j += blockDim.x)
            d2[j] = gather_routes(ld(g[2][j]), g[3], arg, j, W, H, W, k, 1, pad);
        __syncthreads();
        sppf_argmax(arg, y[1], H, W, k);
        for (int j = threadIdx.x; j < HW; j += blockDim.x)
            d1[j] = gather_routes(ld(g[1][j]), d2, arg, j, W, H, W, k, 1, pad);
        __syncthreads();
        sppf_argmax(arg, y[0], H, W, k);
        for (int j = threadIdx.x; j < HW; j += blockDim.x)
            dx[j] = st<T>(gather_routes((fresh ? 0.0f : ld(dx[j])) + ld(g[0][j]), d1, arg, j, W, H, W, k, 1, pad));
        __syncthreads();
    }
}

// One block per plane (grid-stride over the P planes): out[p] = mean of its HW values (T in, O out).
template <class T, class O>
__global__ static void global_avgpool_forward_kernel(O* out, const T* inp, int HW, int64_t P) {
    for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
        const T* x = inp + p * HW;
        float s = 0.f;
        for (int i = threadIdx.x; i < HW; i += blockDim.x) s += ld(x[i]);
        s = block_sum(s);
        if (threadIdx.x == 0) out[p] = st<O>(s / (float)HW);
    }
}

// dinp += dout[p] / HW over the P planes (plane grid).
template <class T>
__global__ static void global_avgpool_backward_kernel(T* dinp, const T* dout, int HW, int64_t P) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const float g = ld(dout[p]) / (float)HW;
        T* dx = dinp + p * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x)
            dx[i] = st<T>(ld(dx[i]) + g);
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class T>
static void maxpool2d_forward_launch(T* out, const T* inp, int N, int C, int H, int W, int k, int stride, int pad,
                                     cudaStream_t stream) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    const int64_t P = (int64_t)N * C;
    if (P * Ho * Wo == 0) return;
    maxpool_window_kernel<T, false><<<plane_grid(P, (int64_t)Ho * Wo), kBlock, 0, stream>>>(out, nullptr, inp, H, W, Ho,
                                                                                            Wo, k, stride, pad, P);
    Y5_LAUNCH_CHECK();
}
void maxpool2d_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, int stride, int pad,
                            cudaStream_t stream) {
    maxpool2d_forward_launch(out, inp, N, C, H, W, k, stride, pad, stream);
}
void maxpool2d_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int k, int stride, int pad,
                            cudaStream_t stream) {
    maxpool2d_forward_launch(out, inp, N, C, H, W, k, stride, pad, stream);
}

template <class T>
static void maxpool2d_backward_launch(T* dinp, const T* dout, const T* inp, int N, int C, int H, int W, int k,
                                      int stride, int pad, int* argmax, cudaStream_t stream) {
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    const int64_t P = (int64_t)N * C;
    if (P * Ho * Wo == 0 || (int64_t)H * W == 0) return;
    maxpool_window_kernel<T, true><<<plane_grid(P, (int64_t)Ho * Wo), kBlock, 0, stream>>>(nullptr, argmax, inp, H, W,
                                                                                           Ho, Wo, k, stride, pad, P);
    Y5_LAUNCH_CHECK();
    maxpool_backward_kernel<T><<<plane_grid(P, (int64_t)H * W), kBlock, 0, stream>>>(dinp, dout, argmax, H, W, Ho, Wo,
                                                                                     k, stride, pad, P);
    Y5_LAUNCH_CHECK();
}
void maxpool2d_backward_cuda(float* dinp, const float* dout, const float* inp, int N, int C, int H, int W, int k,
                             int stride, int pad, int* argmax, cudaStream_t stream) {
    maxpool2d_backward_launch(dinp, dout, inp, N, C, H, W, k, stride, pad, argmax, stream);
}
void maxpool2d_backward_cuda(f16* dinp, const f16* dout, const f16* inp, int N, int C, int H, int W, int k,
                             int stride, int pad, int* argmax, cudaStream_t stream) {
    maxpool2d_backward_launch(dinp, dout, inp, N, C, H, W, k, stride, pad, argmax, stream);
}

// Blocks for the SPPF kernels: one per plane up to this many (the backward's scratch is per block).
static constexpr int kSppfBlocks = 2048;

static int sppf_blocks(int64_t P) { return (int)(P < kSppfBlocks ? P : kSppfBlocks); }

template <class T>
static void sppf_forward_launch(T* out, const T* inp, int N, int C, int H, int W, int k, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * H * W == 0) return;
    sppf_forward_kernel<T><<<sppf_blocks(P), kBlock, 0, stream>>>(out, inp, C, H, W, k, P);
    Y5_LAUNCH_CHECK();
}
void sppf_forward_cuda(float* out, const float* inp, int N, int C, int H, int W, int k, cudaStream_t stream) {
    sppf_forward_launch(out, inp, N, C, H, W, k, stream);
}
void sppf_forward_cuda(f16* out, const f16* inp, int N, int C, int H, int W, int k, cudaStream_t stream) {
    sppf_forward_launch(out, inp, N, C, H, W, k, stream);
}

size_t sppf_cuda_scratch(int N, int C, int H, int W) {
    return (size_t)sppf_blocks((int64_t)N * C) * H * W * (2 * sizeof(float) + sizeof(int));
}

template <class T>
static void sppf_backward_launch(T* dinp, const T* dout, const T* out, int N, int C, int H, int W, int k, void* scratch,
                                 bool fresh, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * H * W == 0) return;
    const int B = sppf_blocks(P);
    float* f = static_cast<float*>(scratch);
    int* i = reinterpret_cast<int*>(f + (int64_t)B * 2 * H * W);
    sppf_backward_kernel<T><<<B, kBlock, 0, stream>>>(dinp, dout, out, C, H, W, k, P, f, i, fresh);
    Y5_LAUNCH_CHECK();
}
void sppf_backward_cuda(float* dinp, const float* dout, const float* out, int N, int C, int H, int W, int k,
                        void* scratch, bool fresh, cudaStream_t stream) {
    sppf_backward_launch(dinp, dout, out, N, C, H, W, k, scratch, fresh, stream);
}
void sppf_backward_cuda(f16* dinp, const f16* dout, const f16* out, int N, int C, int H, int W, int k, void* scratch,
                        bool fresh, cudaStream_t stream) {
    sppf_backward_launch(dinp, dout, out, N, C, H, W, k, scratch, fresh, stream);
}

template <class T, class O>
static void global_avgpool_forward_launch(O* out, const T* inp, int N, int C, int HW, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0) return;
    global_avgpool_forward_kernel<T, O><<<grid_1d(P, 1), plane_reduce_block(HW), 0, stream>>>(out, inp, HW, P);
    Y5_LAUNCH_CHECK();
}
void global_avgpool_forward_cuda(float* out, const float* inp, int N, int C, int HW, cudaStream_t stream) {
    global_avgpool_forward_launch(out, inp, N, C, HW, stream);
}
void global_avgpool_forward_cuda(f16* out, const f16* inp, int N, int C, int HW, cudaStream_t stream) {
    global_avgpool_forward_launch(out, inp, N, C, HW, stream);
}
void global_avgpool_forward_cuda(float* out, const f16* inp, int N, int C, int HW, cudaStream_t stream) {
    global_avgpool_forward_launch(out, inp, N, C, HW, stream);
}

template <class T>
static void global_avgpool_backward_launch(T* dinp, const T* dout, int N, int C, int HW, cudaStream_t stream) {
    const int64_t P = (int64_t)N * C;
    if (P * HW == 0) return;
    global_avgpool_backward_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(dinp, dout, HW, P);
    Y5_LAUNCH_CHECK();
}
void global_avgpool_backward_cuda(float* dinp, const float* dout, int N, int C, int HW, cudaStream_t stream) {
    global_avgpool_backward_launch(dinp, dout, N, C, HW, stream);
}
void global_avgpool_backward_cuda(f16* dinp, const f16* dout, int N, int C, int HW, cudaStream_t stream) {
    global_avgpool_backward_launch(dinp, dout, N, C, HW, stream);
}

}  // namespace y5
