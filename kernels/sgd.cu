/*
 * CUDA side of kernels/sgd.h: the optimizer's element-wise updates (nesterov SGD, EMA) as one grid-stride
 * kernel each over a flat range, calling the same Y5_HD functions as the CPU references, and
 * clip_grad_norm's norm as a deterministic two-stage reduction in double followed by the scaling, with the
 * factor computed on the device.
 * Tested against engine/autograd/optim.cpp's CPU path in tests/test_gpu_optim.cpp.
 */
#include <algorithm>
#include <cstdint>

#include "kernels/cuda.h"
#include "kernels/sgd.h"

namespace y5 {

namespace {

constexpr int kBlock = 256;
constexpr int kReduceBlocks = 1024;  // most first-stage blocks (partial sums); the second stage is one block of this size
constexpr int64_t kReducePerThread = 16;

int grid_for(int64_t n) {
    int64_t g = CEIL_DIV(n, (int64_t)kBlock);
    return (int)(g < 65535 * 8 ? (g > 0 ? g : 1) : 65535 * 8);
}

__global__ void sgd_kernel(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float pi = p[i], bi = buf[i];
        sgd_nesterov<float>(pi, g[i], bi, lr, m, wd);
        p[i] = pi;
        buf[i] = bi;
    }
}

__global__ void ema_kernel(float* ema, const float* model, int64_t n, float d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        ema[i] = ema_lerp<float>(ema[i], model[i], d);
}

// In-block tree sum of one double per thread (blockDim.x == B, a power of two); the result in s[0].
template <int B> __device__ void block_sum(double* s, double v) {
    static_assert(B >= 1 && B <= 1024 && (B & (B - 1)) == 0, "block_sum<B>: the tree halves B, at most 1024 threads");
    s[threadIdx.x] = v;
    __syncthreads();
    for (int h = B / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
}

// Stage 1: partial[b] = Σ g[i]² over block b's grid-stride share, in double.
__global__ void sumsq_partial_kernel(double* partial, const float* g, int64_t n) {
    __shared__ double s[kBlock];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)kBlock + threadIdx.x; i < n; i += (int64_t)gridDim.x * kBlock) {
        const double v = g[i];
        acc += v * v;
    }
    block_sum<kBlock>(s, acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// Stage 2 (one block of kReduceBlocks threads): out[0] = ‖g‖₂, out[1] = clip_coef(‖g‖₂, max_norm).
__global__ void sumsq_final_kernel(double* out, const double* partial, int blocks, double max_norm) {
    __shared__ double s[kReduceBlocks];
    block_sum<kReduceBlocks>(s, (int)threadIdx.x < blocks ? partial[threadIdx.x] : 0.0);
    if (threadIdx.x == 0) {
        const double norm = sqrt(s[0]);
        out[0] = norm;
        out[1] = clip_coef(norm, max_norm);
    }
}

// g *= coef (in double, rounded once to f32, as the CPU path); nothing to do when coef is 1.
__global__ void scale_kernel(float* g, int64_t n, const double* coef_ptr) {
    const double coef = *coef_ptr;
    if (!(coef < 1.0)) return;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        g[i] = (float)((double)g[i] * coef);
}

}  // namespace

void sgd_cuda(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd, cudaStream_t stream) {
    if (n <= 0) return;
    sgd_kernel<<<grid_for(n), kBlock, 0, stream>>>(p, g, buf, n, lr, m, wd);
    Y5_LAUNCH_CHECK();
}

void ema_cuda(float* ema, const float* model, int64_t n, float d, cudaStream_t stream) {
    if (n <= 0) return;
    ema_kernel<<<grid_for(n), kBlock, 0, stream>>>(ema, model, n, d);
    Y5_LAUNCH_CHECK();
}

size_t clip_grad_norm_scratch_bytes() { return (kReduceBlocks + 2) * sizeof(double); }

double clip_grad_norm_cuda(float* g, int64_t n, double max_norm, void* scratch, size_t scratch_bytes,
                           cudaStream_t stream) {
    Y5_CHECK(scratch && scratch_bytes >= clip_grad_norm_scratch_bytes() && (uintptr_t)scratch % alignof(double) == 0,
             "clip_grad_norm_cuda: needs %zu bytes of aligned device scratch, got %zu", clip_grad_norm_scratch_bytes(),
             scratch_bytes);
    if (n <= 0) return 0.0;
    double* partial = static_cast<double*>(scratch);
    double* out = partial + kReduceBlocks;  // norm, coef
    // The block count depends only on n, so the summation order (and the result) is the same every run.
    const int blocks = (int)std::min<int64_t>(kReduceBlocks, std::max<int64_t>(1, CEIL_DIV(n, kBlock * kReducePerThread)));
    sumsq_partial_kernel<<<blocks, kBlock, 0, stream>>>(partial, g, n);
    Y5_LAUNCH_CHECK();
    sumsq_final_kernel<<<1, kReduceBlocks, 0, stream>>>(out, partial, blocks, max_norm);
    Y5_LAUNCH_CHECK();
    scale_kernel<<<grid_for(n), kBlock, 0, stream>>>(g, n, out + 1);
    Y5_LAUNCH_CHECK();
    double norm = 0.0;
    CUDA_CHECK(cudaMemcpyAsync(&norm, out, sizeof(double), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return norm;
}

}  // namespace y5
