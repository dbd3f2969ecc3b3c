/*
 * CUDA side of kernels/batchnorm.h. inp/out (N,C,HW), f32 or f16 (loaded as float, each output rounded once; the
 * per-channel tensors and all statistics stay f32 either way); a channel's M = N·HW values are N rows of HW.
 * Statistics in two deterministic steps, so the GPU is busy even with few channels (16 channels of
 * 64·320·320 values in yolov5n's first layer):
 *   1. grid (S, C): block (s, c) reduces slice s of channel c's values, taken in (n, i) order and cut into
 *      S contiguous slices, to one partial: per-thread float accumulation (Welford for the mean and
 *      variance, plain sums for the backward), then block_reduce (kernels/cuda_utils.cuh);
 *   2. one warp per channel merges its S partials in double, in a fixed order.
 * The element-wise passes (normalise, dx) run over the N·C planes with the per-channel values in registers.
 * The activation is fused: the forward writes act(bn(x)) only, and the backward recomputes z = bn(x) where it
 * needs act'(z), so neither z nor its gradient is ever stored.
 * No atomics: every run gives the same bits.
 */
#include "kernels/batchnorm.h"
#include "kernels/cuda_utils.cuh"

namespace y5 {

// Slices per channel: about 16 values per thread, at most 1024 partials per channel.
static int bn_slices(int N, int HW) {
    const int64_t s = CEIL_DIV((int64_t)N * HW, (int64_t)kBlock * 16);
    return (int)(s < 1 ? 1 : (s > 1024 ? 1024 : s));
}

// Scratch layout (floats): partials, C·S·3 (forward: count, mean, M2; backward: Σdy, Σdy·x̂), then three
// per-channel arrays: mean dy, mean dy·x̂, eval 1/std.
int64_t batchnorm_cuda_scratch(int N, int C, int HW) { return (int64_t)C * bn_slices(N, HW) * 3 + 3 * (int64_t)C; }

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// (n, i) of the flat index m = n·HW + i, advanced by a fixed step without a division per element.
struct RowWalk {
    int n, i, dn, di, HW;
    __device__ RowWalk(int64_t m, int step, int hw)
        : n((int)(m / hw)), i((int)(m % hw)), dn(step / hw), di(step % hw), HW(hw) {}
    __device__ void next() {
        i += di;
        n += dn;
        if (i >= HW) {
            i -= HW;
            ++n;
        }
    }
};

// Welford state of the values seen so far: count n, mean, M2 = Σ(x − mean)².
template <class T> struct Welford {
    T n, mean, m2;
};

// Welford's update with one value.
__device__ __forceinline__ void welford_add(Welford<float>& w, float x) {
    w.n += 1.f;
    const float d = x - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (x - w.mean);
}

// Chan et al.'s merge of state b into a (float within a block, double across blocks), the combine op of
// block_reduce / warp_reduce. The zero state is its identity (b.n == 0 returns a unchanged).
struct WelfordMerge {
    template <class T> __device__ __forceinline__ Welford<T> operator()(Welford<T> a, Welford<T> b) const {
        if (b.n == T(0)) return a;
        const T nn = a.n + b.n, d = b.mean - a.mean, f = b.n / nn;
        a.mean += d * f;
        a.m2 += b.m2 + d * d * a.n * f;
        a.n = nn;
        return a;
    }
};

// warp_reduce's shuffle for a state: one shuffle per field.
template <class T> __device__ __forceinline__ Welford<T> shfl_xor(Welford<T> w, int o) {
    return {shfl_xor(w.n, o), shfl_xor(w.mean, o), shfl_xor(w.m2, o)};
}

// Step 1 of the forward statistics: grid (S, ≤ C), block kBlock. partial[(c·S + s)·3] = (count, mean, M2).
template <class T> __global__ static void bn_stats_kernel(float* partial, const T* inp, int N, int C, int HW, int S) {
    const int64_t M = (int64_t)N * HW, len = CEIL_DIV(M, (int64_t)S);
    const int64_t m0 = blockIdx.x * len, m1 = y5_min(M, m0 + len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        Welford<float> st{};
        RowWalk w(m0 + threadIdx.x, blockDim.x, HW);
        for (int64_t m = m0 + threadIdx.x; m < m1; m += blockDim.x, w.next())
            welford_add(st, ld(inp[((int64_t)w.n * C + c) * HW + w.i]));
        st = block_reduce(st, WelfordMerge{});  // merge is not commutative: thread 0 holds the stated order
        if (threadIdx.x == 0) {
            float* p = partial + ((int64_t)c * S + blockIdx.x) * 3;
            p[0] = st.n;
            p[1] = st.mean;
            p[2] = st.m2;
        }
    }
}

// Step 2: one warp per channel (grid-stride over channels). Lane 0 writes the saved mean and 1/std (from the
// biased variance) and updates the running statistics (unbiased variance, momentum).
__global__ static void bn_stats_finalize_kernel(float* save_mean, float* save_invstd, float* running_mean,
                                                float* running_var, const float* partial, int C, int S, int64_t M,
                                                float eps, float momentum) {
    const int lane = threadIdx.x;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        Welford<double> st{};
        for (int s = lane; s < S; s += 32) {
            const float* p = partial + ((int64_t)c * S + s) * 3;
            st = WelfordMerge{}(st, Welford<double>{p[0], p[1], p[2]});
        }
        st = warp_reduce(st, WelfordMerge{});
        if (lane == 0) {
            const double var = st.m2 / (double)M;
            save_mean[c] = (float)st.mean;
            save_invstd[c] = (float)bn_invstd(var, eps);
            bn_update_running(running_mean + c, running_var + c, st.mean, var, M, momentum);
        }
    }
}

// out = act(bn_apply(inp)) over P = N·C planes of HW (plane grid); channel c = plane % C.
template <class T>
__global__ static void bn_normalize_kernel(T* out, const T* inp, const float* mean, const float* invstd,
                                           const float* gamma, const float* beta, int C, int HW, int64_t P, Act a) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int c = (int)(p % C);
        const float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
        const T* x = inp + p * HW;
        T* y = out + p * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x)
            y[i] = st<T>(act_forward(a, bn_apply(ld(x[i]), mu, is, g, b)));
    }
}

// Eval mode's per-channel 1/std from the running variance.
__global__ static void bn_eval_invstd_kernel(float* invstd, const float* running_var, int C, float eps) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x)
        invstd[c] = bn_eval_invstd(running_var[c], eps);
}

// The gradient at the BatchNorm output: dz = dy·act'(z) with z = bn_apply(x) recomputed (Identity: dz = dy).
__device__ __forceinline__ float bn_dz(float dy, float x, float mu, float is, float g, float b, Act a) {
    return a.kind == ActKind::Identity ? dy : dy * act_grad(a, bn_apply(x, mu, is, g, b));
}

// Step 1 of the backward sums, slices as bn_stats_kernel: partial[(c·S + s)·2] = (Σdz, Σdz·x̂).
template <class T>
__global__ static void bn_grad_sums_kernel(float* partial, const T* dout, const T* inp, const float* mean,
                                           const float* invstd, const float* gamma, const float* beta, int N, int C,
                                           int HW, int S, Act a) {
    const int64_t M = (int64_t)N * HW, len = CEIL_DIV(M, (int64_t)S);
    const int64_t m0 = blockIdx.x * len, m1 = y5_min(M, m0 + len);
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
        float sdy = 0.f, sdyx = 0.f;
        RowWalk w(m0 + threadIdx.x, blockDim.x, HW);
        for (int64_t m = m0 + threadIdx.x; m < m1; m += blockDim.x, w.next()) {
            const int64_t j = ((int64_t)w.n * C + c) * HW + w.i;
            const float x = ld(inp[j]), dz = bn_dz(ld(dout[j]), x, mu, is, g, b, a);
            sdy += dz;
            sdyx += dz * bn_xhat(x, mu, is);
        }
        sdy = block_sum(sdy);
        sdyx = block_sum(sdyx);
        if (threadIdx.x == 0) {
            float* p = partial + ((int64_t)c * S + blockIdx.x) * 2;
            p[0] = sdy;
            p[1] = sdyx;
        }
    }
}

// Step 2: one warp per channel sums the S partials in double; lane 0 accumulates dgamma/dbeta (either may be
// null) and writes the means Σdy/M and Σdy·x̂/M for the dx pass.
__global__ static void bn_grad_finalize_kernel(float* dgamma, float* dbeta, float* mean_dy, float* mean_dyx,
                                               const float* partial, int C, int S, int64_t M) {
    const int lane = threadIdx.x;
    for (int c = blockIdx.x; c < C; c += gridDim.x) {
        double sdy = 0, sdyx = 0;
        for (int s = lane; s < S; s += 32) {
            const float* p = partial + ((int64_t)c * S + s) * 2;
            sdy += p[0];
            sdyx += p[1];
        }
        sdy = warp_sum(sdy);
        sdyx = warp_sum(sdyx);
        if (lane == 0) {
            if (dbeta) dbeta[c] += (float)sdy;
            if (dgamma) dgamma[c] += (float)sdyx;
            mean_dy[c] = (float)(sdy / M);
            mean_dyx[c] = (float)(sdyx / M);
        }
    }
}

// dinp += bn_train_dx(dz, ...) (training) or bn_eval_dx(dz, ...) (eval: mean_dy/mean_dyx unused) over the
// N·C planes (plane grid); overwrite: dinp = it (dinp may be dout: each thread reads dy[i] before writing dx[i]).
template <class T>
__global__ static void bn_dx_kernel(T* dinp, const T* dout, const T* inp, const float* mean, const float* invstd,
                                    const float* gamma, const float* beta, const float* mean_dy, const float* mean_dyx,
                                    int C, int HW, int64_t P, Act a, bool training, bool overwrite) {
    for (int64_t p = blockIdx.y; p < P; p += gridDim.y) {
        const int c = (int)(p % C);
        const float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
        const float mdy = training ? mean_dy[c] : 0.f, mdyx = training ? mean_dyx[c] : 0.f;
        const T *x = inp + p * HW, *dy = dout + p * HW;
        T* dx = dinp + p * HW;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += gridDim.x * blockDim.x) {
            const float xi = ld(x[i]), dz = bn_dz(ld(dy[i]), xi, mu, is, g, b, a);
            dx[i] = st<T>((overwrite ? 0.f : ld(dx[i])) + (training ? bn_train_dx(dz, bn_xhat(xi, mu, is), g, is, mdy, mdyx)
                                                : bn_eval_dx(dz, g, is)));
        }
    }
}

// ----------------------------------------------------------------------------------------------------
// Launchers

// Σdz, Σdz·x̂ per channel: dgamma/dbeta += them; mean_dy, mean_dyx = them / M.
template <class T>
static void bn_grad_sums(float* dgamma, float* dbeta, float* mean_dy, float* mean_dyx, const T* dout, const T* inp,
                         const float* mean, const float* invstd, const float* gamma, const float* beta, int N, int C,
                         int HW, Act a, float* partial, cudaStream_t stream) {
    const int S = bn_slices(N, HW);
    bn_grad_sums_kernel<T><<<grid_2d(S, C), kBlock, 0, stream>>>(partial, dout, inp, mean, invstd, gamma, beta, N, C,
                                                                 HW, S, a);
    Y5_LAUNCH_CHECK();
    bn_grad_finalize_kernel<<<grid_1d(C, 1), 32, 0, stream>>>(dgamma, dbeta, mean_dy, mean_dyx, partial, C, S,
                                                              (int64_t)N * HW);
    Y5_LAUNCH_CHECK();
}

template <class T>
static void bn_forward_train(T* out, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                             const T* inp, const float* gamma, const float* beta, int N, int C, int HW, float eps,
                             float momentum, Act a, float* scratch, cudaStream_t stream) {
    if ((int64_t)N * C * HW == 0) return;
    const int S = bn_slices(N, HW);
    bn_stats_kernel<T><<<grid_2d(S, C), kBlock, 0, stream>>>(scratch, inp, N, C, HW, S);
    Y5_LAUNCH_CHECK();
    bn_stats_finalize_kernel<<<grid_1d(C, 1), 32, 0, stream>>>(save_mean, save_invstd, running_mean, running_var,
                                                               scratch, C, S, (int64_t)N * HW, eps, momentum);
    Y5_LAUNCH_CHECK();
    const int64_t P = (int64_t)N * C;
    bn_normalize_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(out, inp, save_mean, save_invstd, gamma, beta, C,
                                                                     HW, P, a);
    Y5_LAUNCH_CHECK();
}

template <class T>
static void bn_apply(T* out, const T* inp, const float* mean, const float* invstd, const float* gamma, const float* beta,
                     int N, int C, int HW, Act a, cudaStream_t stream) {
    if ((int64_t)N * C * HW == 0) return;
    const int64_t P = (int64_t)N * C;
    bn_normalize_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(out, inp, mean, invstd, gamma, beta, C, HW, P, a);
    Y5_LAUNCH_CHECK();
}

template <class T>
static void bn_forward_eval(T* out, const T* inp, const float* gamma, const float* beta, const float* running_mean,
                            const float* running_var, int N, int C, int HW, float eps, Act a, float* scratch,
                            cudaStream_t stream) {
    if ((int64_t)N * C * HW == 0) return;
    float* invstd = scratch + batchnorm_cuda_scratch(N, C, HW) - C;
    bn_eval_invstd_kernel<<<grid_1d(C), kBlock, 0, stream>>>(invstd, running_var, C, eps);
    Y5_LAUNCH_CHECK();
    const int64_t P = (int64_t)N * C;
    bn_normalize_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(out, inp, running_mean, invstd, gamma, beta, C,
                                                                     HW, P, a);
    Y5_LAUNCH_CHECK();
}

template <class T>
static void bn_backward_train(T* dinp, float* dgamma, float* dbeta, const T* dout, const T* inp, const float* gamma,
                              const float* beta, const float* save_mean, const float* save_invstd, int N, int C,
                              int HW, Act a, bool overwrite, float* scratch, cudaStream_t stream) {
    if ((int64_t)N * C * HW == 0 || !(dinp || dgamma || dbeta)) return;
    float* mean_dy = scratch + batchnorm_cuda_scratch(N, C, HW) - 3 * C;
    float* mean_dyx = mean_dy + C;
    bn_grad_sums<T>(dgamma, dbeta, mean_dy, mean_dyx, dout, inp, save_mean, save_invstd, gamma, beta, N, C, HW, a,
                    scratch, stream);
    if (!dinp) return;
    const int64_t P = (int64_t)N * C;
    bn_dx_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(dinp, dout, inp, save_mean, save_invstd, gamma, beta,
                                                              mean_dy, mean_dyx, C, HW, P, a, true, overwrite);
    Y5_LAUNCH_CHECK();
}

template <class T>
static void bn_backward_eval(T* dinp, float* dgamma, float* dbeta, const T* dout, const T* inp, const float* gamma,
                             const float* beta, const float* running_mean, const float* running_var, int N, int C,
                             int HW, float eps, Act a, bool overwrite, float* scratch, cudaStream_t stream) {
    if ((int64_t)N * C * HW == 0 || !(dinp || dgamma || dbeta)) return;
    float* mean_dy = scratch + batchnorm_cuda_scratch(N, C, HW) - 3 * C;
    float *mean_dyx = mean_dy + C, *invstd = mean_dy + 2 * C;
    bn_eval_invstd_kernel<<<grid_1d(C), kBlock, 0, stream>>>(invstd, running_var, C, eps);
    Y5_LAUNCH_CHECK();
    if (dgamma || dbeta)
        bn_grad_sums<T>(dgamma, dbeta, mean_dy, mean_dyx, dout, inp, running_mean, invstd, gamma, beta, N, C, HW, a,
                        scratch, stream);
    if (!dinp) return;
    const int64_t P = (int64_t)N * C;
    bn_dx_kernel<T><<<plane_grid(P, HW), kBlock, 0, stream>>>(dinp, dout, inp, running_mean, invstd, gamma, beta,
                                                              mean_dy, mean_dyx, C, HW, P, a, false, overwrite);
    Y5_LAUNCH_CHECK();
}

void batchnorm_forward_train_cuda(float* out, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, const float* inp, const float* gamma, const float* beta, int N,
                                  int C, int HW, float eps, float momentum, Act a, float* scratch, cudaStream_t stream) {
    bn_forward_train(out, save_mean, save_invstd, running_mean, running_var, inp, gamma, beta, N, C, HW, eps, momentum,
                     a, scratch, stream);
}
void batchnorm_forward_train_cuda(f16* out, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, const f16* inp, const float* gamma, const float* beta, int N,
                                  int C, int HW, float eps, float momentum, Act a, float* scratch, cudaStream_t stream) {
    bn_forward_train(out, save_mean, save_invstd, running_mean, running_var, inp, gamma, beta, N, C, HW, eps, momentum,
                     a, scratch, stream);
}

void batchnorm_apply_cuda(float* out, const float* inp, const float* mean, const float* invstd, const float* gamma,
                          const float* beta, int N, int C, int HW, Act a, cudaStream_t stream) {
    bn_apply(out, inp, mean, invstd, gamma, beta, N, C, HW, a, stream);
}
void batchnorm_apply_cuda(f16* out, const f16* inp, const float* mean, const float* invstd, const float* gamma,
                          const float* beta, int N, int C, int HW, Act a, cudaStream_t stream) {
    bn_apply(out, inp, mean, invstd, gamma, beta, N, C, HW, a, stream);
}

void batchnorm_forward_eval_cuda(float* out, const float* inp, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, int N, int C, int HW, float eps,
                                 Act a, float* scratch, cudaStream_t stream) {
    bn_forward_eval(out, inp, gamma, beta, running_mean, running_var, N, C, HW, eps, a, scratch, stream);
}
void batchnorm_forward_eval_cuda(f16* out, const f16* inp, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, int N, int C, int HW, float eps,
                                 Act a, float* scratch, cudaStream_t stream) {
    bn_forward_eval(out, inp, gamma, beta, running_mean, running_var, N, C, HW, eps, a, scratch, stream);
}

void batchnorm_backward_train_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                                   const float* gamma, const float* beta, const float* save_mean,
                                   const float* save_invstd, int N, int C, int HW, Act a, bool overwrite, float* scratch,
                                   cudaStream_t stream) {
    bn_backward_train(dinp, dgamma, dbeta, dout, inp, gamma, beta, save_mean, save_invstd, N, C, HW, a, overwrite, scratch, stream);
}
void batchnorm_backward_train_cuda(f16* dinp, float* dgamma, float* dbeta, const f16* dout, const f16* inp,
                                   const float* gamma, const float* beta, const float* save_mean,
                                   const float* save_invstd, int N, int C, int HW, Act a, bool overwrite, float* scratch,
                                   cudaStream_t stream) {
    bn_backward_train(dinp, dgamma, dbeta, dout, inp, gamma, beta, save_mean, save_invstd, N, C, HW, a, overwrite, scratch, stream);
}

void batchnorm_backward_eval_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, int N, int C, int HW, float eps, Act a, bool overwrite, float* scratch,
                                  cudaStream_t stream) {
    bn_backward_eval(dinp, dgamma, dbeta, dout, inp, gamma, beta, running_mean, running_var, N, C, HW, eps, a, overwrite, scratch,
                     stream);
}
void batchnorm_backward_eval_cuda(f16* dinp, float* dgamma, float* dbeta, const f16* dout, const f16* inp,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, int N, int C, int HW, float eps, Act a, bool overwrite, float* scratch,
                                  cudaStream_t stream) {
    bn_backward_eval(dinp, dgamma, dbeta, dout, inp, gamma, beta, running_mean, running_var, N, C, HW, eps, a, overwrite, scratch,
                     stream);
}

}  // namespace y5
