/*
 * CUDA side of kernels/sgd.h: the optimizer's element-wise updates (nesterov SGD, Adam/AdamW, EMA) as one grid-stride
 * kernel each over a flat range, calling the same Y5_HD functions as the CPU references, and
 * clip_grad_norm's norm as a deterministic two-stage reduction in double followed by the scaling, with the
 * factor computed on the device; GradScaler's unscale as one grid-stride kernel that raises a device flag on an
 * inf or NaN.
 * Tested against engine/autograd/optim.cpp's CPU path in tests/test_gpu_optim.cpp.
 */
#include <algorithm>
#include <cstdint>

#include "kernels/cuda_utils.cuh"
#include "kernels/sgd.h"

namespace y5 {

namespace {

constexpr int kReduceBlocks = 1024;  // most first-stage blocks (partial sums); the second stage is one block of this size
constexpr int64_t kReducePerThread = 16;
static_assert(reduce_block_ok(kReduceBlocks), "sumsq_final_kernel: one block of kReduceBlocks threads for block_sum");

__global__ void sgd_kernel(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd,
                           const int32_t* skip) {
    if (skip && *skip) return;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float pi = p[i], bi = buf[i];
        sgd_nesterov<float>(pi, g[i], bi, lr, m, wd);
        p[i] = pi;
        buf[i] = bi;
    }
}

__global__ void adam_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamScalars<float> s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float pi = p[i], mi = m[i], vi = v[i];
        adam_update<float>(pi, g[i], mi, vi, s);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

__global__ void ema_kernel(float* ema, const float* model, int64_t n, float d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        ema[i] = ema_lerp<float>(ema[i], model[i], d);
}

// Stage 1: partial[b] = Σ g[i]² over block b's grid-stride share, in double.
__global__ void sumsq_partial_kernel(double* partial, const float* g, int64_t n) {
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)kBlock + threadIdx.x; i < n; i += (int64_t)gridDim.x * kBlock) {
        const double v = g[i];
        acc += v * v;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Stage 2 (one block of kReduceBlocks threads): out[0] = ‖g‖₂, out[1] = clip_coef(‖g‖₂, max_norm).
__global__ void sumsq_final_kernel(double* out, const double* partial, int blocks, double max_norm) {
    const double sum = block_sum((int)threadIdx.x < blocks ? partial[threadIdx.x] : 0.0);
    if (threadIdx.x == 0) {
        const double norm = sqrt(sum);
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

// g = amp_unscale(g, inv_scale); *found_inf = 1 if any g was inf or NaN (only ever 1 is stored, so the racing
// stores of several threads leave the same value).
__global__ void amp_unscale_kernel(float* g, int64_t n, float inv_scale, int* found_inf) {
    bool found = false;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        found |= amp_unscale<float>(gi, inv_scale);
        g[i] = gi;
    }
    if (found) *found_inf = 1;
}

// amp_unscale_kernel with the scale read on the device.
__global__ void amp_unscale_state_kernel(float* g, int64_t n, AmpState* st) {
    const float inv_scale = amp_inv_scale(st->scale);
    bool found = false;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        found |= amp_unscale<float>(gi, inv_scale);
        g[i] = gi;
    }
    if (found) st->found_inf = 1;
}

__global__ void amp_update_kernel(AmpState* st, double growth, double backoff, int growth_interval) {
    amp_update_scale(st->scale, st->tracker, st->found_inf != 0, growth, backoff, growth_interval);
}

__global__ void amp_seed_kernel(float* seed, const AmpState* st, double gain) {
    *seed = (float)((double)st->scale * gain);
}

}  // namespace

void sgd_cuda(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd, cudaStream_t stream,
              const int32_t* skip) {
    if (n <= 0) return;
    sgd_kernel<<<grid_1d(n), kBlock, 0, stream>>>(p, g, buf, n, lr, m, wd, skip);
    Y5_LAUNCH_CHECK();
}

void adam_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars<float>& s,
               cudaStream_t stream) {
    if (n <= 0) return;
    adam_kernel<<<grid_1d(n), kBlock, 0, stream>>>(p, g, m, v, n, s);
    Y5_LAUNCH_CHECK();
}

void ema_cuda(float* ema, const float* model, int64_t n, float d, cudaStream_t stream) {
    if (n <= 0) return;
    ema_kernel<<<grid_1d(n), kBlock, 0, stream>>>(ema, model, n, d);
    Y5_LAUNCH_CHECK();
}

size_t clip_grad_norm_scratch_bytes() { return (kReduceBlocks + 2) * sizeof(double); }

void clip_grad_norm_cuda(float* g, int64_t n, double max_norm, void* scratch, size_t scratch_bytes, double* norm,
                         cudaStream_t stream) {
    Y5_CHECK(scratch && scratch_bytes >= clip_grad_norm_scratch_bytes() && (uintptr_t)scratch % alignof(double) == 0,
             "clip_grad_norm_cuda: needs %zu bytes of aligned device scratch, got %zu", clip_grad_norm_scratch_bytes(),
             scratch_bytes);
    if (n <= 0) {
        *norm = 0.0;
        return;
    }
    double* partial = static_cast<double*>(scratch);
    double* out = partial + kReduceBlocks;  // norm, coef
    // The block count depends only on n, so the summation order (and the result) is the same every run.
    const int blocks = (int)std::min<int64_t>(kReduceBlocks, std::max<int64_t>(1, CEIL_DIV(n, kBlock * kReducePerThread)));
    sumsq_partial_kernel<<<blocks, kBlock, 0, stream>>>(partial, g, n);
    Y5_LAUNCH_CHECK();
    sumsq_final_kernel<<<1, kReduceBlocks, 0, stream>>>(out, partial, blocks, max_norm);
    Y5_LAUNCH_CHECK();
    scale_kernel<<<grid_1d(n), kBlock, 0, stream>>>(g, n, out + 1);
    Y5_LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(norm, out, sizeof(double), cudaMemcpyDeviceToHost, stream));
}

size_t amp_unscale_scratch_bytes() { return sizeof(int); }

bool amp_unscale_cuda(float* g, int64_t n, float inv_scale, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    Y5_CHECK(scratch && scratch_bytes >= amp_unscale_scratch_bytes() && (uintptr_t)scratch % alignof(int) == 0,
             "amp_unscale_cuda: needs %zu bytes of aligned device scratch, got %zu", amp_unscale_scratch_bytes(),
             scratch_bytes);
    if (n <= 0) return false;
    int* flag = static_cast<int*>(scratch);
    CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), stream));
    amp_unscale_kernel<<<grid_1d(n), kBlock, 0, stream>>>(g, n, inv_scale, flag);
    Y5_LAUNCH_CHECK();
    int found = 0;
    CUDA_CHECK(cudaMemcpyAsync(&found, flag, sizeof(int), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return found != 0;
}

void amp_unscale_state_cuda(float* g, int64_t n, AmpState* st, cudaStream_t stream) {
    CUDA_CHECK(cudaMemsetAsync(&st->found_inf, 0, sizeof(int32_t), stream));
    if (n <= 0) return;
    amp_unscale_state_kernel<<<grid_1d(n), kBlock, 0, stream>>>(g, n, st);
    Y5_LAUNCH_CHECK();
}

void amp_update_cuda(AmpState* st, double growth, double backoff, int growth_interval, cudaStream_t stream) {
    amp_update_kernel<<<1, 1, 0, stream>>>(st, growth, backoff, growth_interval);
    Y5_LAUNCH_CHECK();
}

void amp_seed_cuda(float* seed, const AmpState* st, double gain, cudaStream_t stream) {
    amp_seed_kernel<<<1, 1, 0, stream>>>(seed, st, gain);
    Y5_LAUNCH_CHECK();
}

}  // namespace y5
