/*
 * BatchNorm2d with PyTorch semantics, CPU reference. inp/out (N,C,HW), per-channel gamma, beta,
 * running_mean, running_var, save_mean, save_invstd (C). M = N·HW values per channel.
 * Training: normalise with the batch mean and the *biased* variance; update
 *   running_mean = (1−m)·running_mean + m·mean,  running_var = (1−m)·running_var + m·var·M/(M−1)
 * (the *unbiased* variance), m = momentum (YOLOv5: 0.03, eps 1e-3).
 * Eval: normalise with the running statistics.
 * Fused activation: every function takes an Act applied to the normalised value, out = act(bn(x)) (kNoAct for a
 * plain BatchNorm), so a Conv's BN+SiLU is one pass over memory and keeps no intermediate tensor: the backward
 * recomputes z = bn(x) from x and the statistics to get act'(z).
 * Backward accumulates into dinp, dgamma, dbeta (+=); any of them may be null.
 * Reductions accumulate in double whatever T is, so the reference is accurate at M = 64·320·320, each in kSumLanes
 * interleaved partial sums (value i of a row goes to lane i mod kSumLanes) added in a fixed tree at the end: the
 * compiler vectorises them (a single double chain is add-latency bound) and the order never depends on threads.
 * Mixed precision (torch's batch_norm under autocast): inp/out/dinp/dout may be f16 with everything per-channel
 * (gamma, beta, running and saved statistics, dgamma, dbeta) f32; f16 is widened on load, the math is float
 * (acc_t<T>), and each f16 output is rounded once. f32 and f64 keep one type throughout.
 * Each function handles channels [c_begin, min(C, c_end)) (all by default), so callers can split the
 * channels over threads; channels are independent.
 * The CUDA kernels (kernels/batchnorm.cu) share the per-element and per-channel math below.
 */
#pragma once
#include <climits>

#include "kernels/activation.h"
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

// The normalise step shared with the CUDA kernels: y = (x − mean)·invstd·gamma + beta.
template <class T> Y5_HD T bn_apply(T x, T mean, T invstd, T gamma, T beta) { return (x - mean) * invstd * gamma + beta; }

// The normalised value x̂ = (x − mean)·invstd.
template <class T> Y5_HD T bn_xhat(T x, T mean, T invstd) { return (x - mean) * invstd; }

// 1/std in training mode, from the batch's biased variance (computed in double).
Y5_HD double bn_invstd(double var, float eps) { return 1.0 / y5_sqrt(var + (double)eps); }

// 1/std in eval mode, from the running variance (in T, as PyTorch does).
template <class T> Y5_HD T bn_eval_invstd(T running_var, float eps) { return T(1) / y5_sqrt(running_var + T(eps)); }

// PyTorch's running-statistics update from the batch mean and biased variance of M values.
template <class T>
Y5_HD void bn_update_running(T* running_mean, T* running_var, double mean, double var, int64_t M, float momentum) {
    const double unbiased = M > 1 ? var * M / (M - 1) : var;
    *running_mean = T((1.0 - momentum) * *running_mean + momentum * mean);
    *running_var = T((1.0 - momentum) * *running_var + momentum * unbiased);
}

// Training-mode d x for one element, given the per-channel sums Σdy and Σdy·x̂ over M values:
// dx = gamma·invstd·(dy − Σdy/M − x̂·Σdy·x̂/M).
template <class T> Y5_HD T bn_train_dx(T dy, T xhat, T gamma, T invstd, T mean_dy, T mean_dy_xhat) {
    return gamma * invstd * (dy - mean_dy - xhat * mean_dy_xhat);
}

// Eval-mode d x for one element (the statistics are constants): dy·gamma·invstd.
template <class T> Y5_HD T bn_eval_dx(T dy, T gamma, T invstd) { return dy * gamma * invstd; }

// Partial sums in kSumLanes doubles: lanes_add_sqdev adds (x[i] − mean)² of a row to lane i mod kSumLanes
// (the gradient norm's sum of squares), lanes_total combines the lanes in a fixed tree.
constexpr int kSumLanes = 16;
inline double lanes_total(const double* s) {
    double t[kSumLanes];
    for (int l = 0; l < kSumLanes; ++l) t[l] = s[l];
    for (int w = kSumLanes / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) t[l] += t[l + w];
    return t[0];
}
template <class T> void lanes_add_sqdev(double* s, const T* x, int64_t n, double mean) {
    int64_t i = 0;
    for (; i + kSumLanes <= n; i += kSumLanes)
        for (int l = 0; l < kSumLanes; ++l) {
            const double d = (double)ld(x[i + l]) - mean;
            s[l] += d * d;
        }
    for (int l = 0; i + l < n; ++l) {
        const double d = (double)ld(x[i + l]) - mean;
        s[l] += d * d;
    }
}
// Σ(x − k) into s and Σ(x − k)² into ss, one pass: with k one of the channel's values, mean = k + Σ(x − k)/M and
// var = Σ(x − k)²/M − (Σ(x − k)/M)² lose nothing that matters in double (the shift keeps the two terms of the
// difference near var in size), where a second pass for Σ(x − mean)² read the channel again.
template <class T> void lanes_add_shifted(double* s, double* ss, const T* x, int64_t n, double k) {
    int64_t i = 0;
    for (; i + kSumLanes <= n; i += kSumLanes)
        for (int l = 0; l < kSumLanes; ++l) {
            const double d = (double)ld(x[i + l]) - k;
            s[l] += d;
            ss[l] += d * d;
        }
    for (int l = 0; i + l < n; ++l) {
        const double d = (double)ld(x[i + l]) - k;
        s[l] += d;
        ss[l] += d * d;
    }
}

// One row of the fused output: out = act(bn_apply(inp)) over n values, in chunks of kBnChunk through a buffer in
// the compute type A (so the float SiLU takes the vectorised loop, and f16 is rounded once per output); when T is
// A the chunk is out itself (the same values, one pass fewer).
constexpr int kBnChunk = 256;
template <class T, class A>
void bn_act_row_cpu(T* out, const T* inp, int64_t n, A mean, A invstd, A gamma, A beta, Act a) {
    A buf[kBnChunk];
    for (int64_t i0 = 0; i0 < n; i0 += kBnChunk) {
        const int m = (int)y5_min<int64_t>(kBnChunk, n - i0);
        A* z = buf;
        if constexpr (std::is_same_v<T, float>)
            if (a.kind == ActKind::SiLU) {  // one pass: bn_apply then silu_cpu_vec, act_forward_cpu's float SiLU
                for (int i = 0; i < m; ++i) out[i0 + i] = silu_cpu_vec(bn_apply<A>(inp[i0 + i], mean, invstd, gamma, beta));
                continue;
            }
        if constexpr (std::is_same_v<T, A>) z = out + i0;
        for (int i = 0; i < m; ++i) z[i] = bn_apply<A>(ld(inp[i0 + i]), mean, invstd, gamma, beta);
        if (a.kind != ActKind::Identity) act_forward_cpu<A>(z, z, m, a);
        if constexpr (!std::is_same_v<T, A>)
            for (int i = 0; i < m; ++i) out[i0 + i] = st<T>(z[i]);
    }
}

// The gradient at the BatchNorm output, dz = dout·act'(z), z = bn_apply(inp) recomputed (the fused op keeps no
// z), and x̂, for n ≤ kBnChunk values; dz and x̂ in the compute type A. dz may be dout (in place): each dout[i]
// is read before dz[i] is written.
template <class T, class A>
void bn_act_dz_cpu(A* dz, A* xhat, const T* dout, const T* inp, int n, A mean, A invstd, A gamma, A beta, Act a) {
    if constexpr (std::is_same_v<A, float>)
        if (a.kind == ActKind::SiLU) {  // one pass; z = x̂·gamma + beta is bn_apply's value, bit for bit
            for (int i = 0; i < n; ++i) {
                const float xh = bn_xhat<A>(ld(inp[i]), mean, invstd), z = xh * gamma + beta;
                xhat[i] = xh;
                dz[i] = silu_grad_cpu_vec(z) * ld(dout[i]);
            }
            return;
        }
    for (int i = 0; i < n; ++i) xhat[i] = bn_xhat<A>(ld(inp[i]), mean, invstd);
    if (a.kind == ActKind::Identity) {
        for (int i = 0; i < n; ++i) dz[i] = ld(dout[i]);
        return;
    }
    A g[kBnChunk] = {};
    for (int i = 0; i < n; ++i) g[i] = bn_apply<A>(ld(inp[i]), mean, invstd, gamma, beta);
    act_grad_cpu(g, g, n, a);
    for (int i = 0; i < n; ++i) dz[i] = g[i] * ld(dout[i]);
}

// Rows shorter than kBnGather values (yolov5n's 3×3, 6×6 and 10×10 maps) are processed kBnChunk / HW rows at a
// time, copied into one buffer, so that the vectorised loops run over whole vectors instead of each row's scalar
// tail; the per-element math is the same, so are the bits (the sums still restart their lanes at each row).
// One Zen 4 core, SiLU, N = 16, ns a value forward / backward: 6×6 maps 1.40 / 2.41 → 1.22 / 2.15; 3×3 2.0 / 3.3,
// unchanged (the per-row sums in double and the per-channel overhead dominate there); rows of 144 and more 0.70 /
// 1.35 → 0.70 / 1.18 (the backward's passes over segments).
constexpr int kBnGather = 128;

// Row n of channel c, value i: inp[((n·C + c)·HW + i].
inline int64_t bn_at(int n, int C, int HW, int c, int i = 0) { return ((int64_t)n * C + c) * HW + i; }

// Rows n0 .. n0 + r − 1 of channel c copied into buf one after another, and back. Inline copies: a memmove call per
// row of 9 values cost a fifth of the gathered pass.
template <class T> void bn_gather(T* buf, const T* src, int n0, int r, int C, int HW, int c) {
    for (int k = 0; k < r; ++k)
        for (int i = 0; i < HW; ++i) buf[k * HW + i] = src[bn_at(n0 + k, C, HW, c, i)];
}
template <class T> void bn_scatter(T* dst, const T* buf, int n0, int r, int C, int HW, int c) {
    for (int k = 0; k < r; ++k)
        for (int i = 0; i < HW; ++i) dst[bn_at(n0 + k, C, HW, c, i)] = buf[k * HW + i];
}

// out = act(bn_apply(inp)) over channel c's N rows.
template <class T, class A>
void bn_act_channel_cpu(T* out, const T* inp, int N, int C, int HW, int c, A mean, A invstd, A gamma, A beta, Act a) {
    if (HW >= kBnGather) {
        for (int n = 0; n < N; ++n) {
            const int64_t j = bn_at(n, C, HW, c);
            bn_act_row_cpu<T, A>(out + j, inp + j, HW, mean, invstd, gamma, beta, a);
        }
        return;
    }
    const int rows = kBnChunk / HW;
    T x[kBnChunk], y[kBnChunk];
    for (int n0 = 0; n0 < N; n0 += rows) {
        const int r = y5_min(rows, N - n0);
        bn_gather(x, inp, n0, r, C, HW, c);
        bn_act_row_cpu<T, A>(y, x, (int64_t)r * HW, mean, invstd, gamma, beta, a);
        bn_scatter(out, y, n0, r, C, HW, c);
    }
}

// T: the storage type of inp/out/dinp/dout (float, double, f16); A = acc_t<T>: the parameters, statistics and
// their gradients (f16's are float, as torch's batch_norm under autocast), and the per-element math.
template <class T, class A = acc_t<T>>
void batchnorm_forward_train_cpu(T* out, A* save_mean, A* save_invstd, A* running_mean, A* running_var, const T* inp,
                                 const A* gamma, const A* beta, int N, int C, int HW, float eps, float momentum, Act a,
                                 int c_begin = 0, int c_end = INT_MAX) {
    const int64_t M = (int64_t)N * HW;
    for (int c = c_begin; c < y5_min(C, c_end); ++c) {
        double s[kSumLanes] = {}, ss[kSumLanes] = {};
        const double k = (double)ld(inp[(int64_t)c * HW]);
        for (int n = 0; n < N; ++n) lanes_add_shifted(s, ss, inp + ((int64_t)n * C + c) * HW, HW, k);
        const double dm = lanes_total(s) / M, mean = k + dm;
        const double var = y5_max(lanes_total(ss) / M - dm * dm, 0.0);
        const A invstd = A(bn_invstd(var, eps));
        bn_act_channel_cpu<T, A>(out, inp, N, C, HW, c, A(mean), invstd, gamma[c], beta[c], a);
        save_mean[c] = A(mean);
        save_invstd[c] = invstd;
        bn_update_running(running_mean + c, running_var + c, mean, var, M, momentum);
    }
}

// out = act(bn_apply(inp)) with the given per-channel mean and invstd: with a training forward's saved statistics,
// its output bit for bit (recomputation rebuilds it in the backward instead of keeping it).
template <class T, class A = acc_t<T>>
void batchnorm_apply_cpu(T* out, const T* inp, const A* mean, const A* invstd, const A* gamma, const A* beta, int N,
                         int C, int HW, Act a, int c_begin = 0, int c_end = INT_MAX) {
    for (int c = c_begin; c < y5_min(C, c_end); ++c)
        bn_act_channel_cpu<T, A>(out, inp, N, C, HW, c, mean[c], invstd[c], gamma[c], beta[c], a);
}
template <class T, class A = acc_t<T>>
void batchnorm_forward_eval_cpu(T* out, const T* inp, const A* gamma, const A* beta, const A* running_mean,
                                const A* running_var, int N, int C, int HW, float eps, Act a, int c_begin = 0,
                                int c_end = INT_MAX) {
    for (int c = c_begin; c < y5_min(C, c_end); ++c) {
        const A invstd = bn_eval_invstd(running_var[c], eps);
        bn_act_channel_cpu<T, A>(out, inp, N, C, HW, c, running_mean[c], invstd, gamma[c], beta[c], a);
    }
}

// Backward of channel c given its statistics: mean and invstd are the saved batch ones (training) or the running
// mean and eval 1/std (eval). dgamma/dbeta (+=) are this channel's entries; training: dinp += bn_train_dx(dz),
// eval: dinp += bn_eval_dx(dz) (the statistics are constants); f16 dinp is rounded once, after the +=.
// overwrite: dinp = the gradient, not +=: its contents are ignored, and it may be dout itself (Tape::grad_from;
// every element of dout is read before dinp's is written). The first pass then parks dz there and the second
// reads it back instead of recomputing act'(z), the costly part on the CPU; same bits either way. Not for f16,
// whose dinp would round dz.
template <class T, class A = acc_t<T>>
void batchnorm_backward_channel_cpu(T* dinp, A* dgamma, A* dbeta, const T* dout, const T* inp, int N, int C, int HW,
                                    int c, A mean, A invstd, A gamma, A beta, Act a, bool training, bool overwrite) {
    const int64_t M = (int64_t)N * HW;
    const bool park = std::is_same_v<T, A> && dinp && overwrite;
    // Segments of at most kBnChunk values: part of one row, or (small maps) `rows` whole rows gathered.
    const bool gather = HW < kBnGather;
    const int rows = gather ? kBnChunk / HW : 1;
    T gx[kBnChunk], go[kBnChunk], gd[kBnChunk];  // gathered rows of inp, dout (or the parked dz), dinp
    auto view = [&](T* buf, const T* src, int n0, int r, int i0) -> const T* {
        if (!gather) return src + bn_at(n0, C, HW, c, i0);
        bn_gather(buf, src, n0, r, C, HW, c);
        return buf;
    };
    A dz[kBnChunk], xh[kBnChunk];
    double sdy_l[kSumLanes] = {}, sdyx_l[kSumLanes] = {};  // lanes of Σdz and Σdz·x̂ (kBnChunk is a multiple)
    for (int n0 = 0; n0 < N; n0 += rows) {
        const int r = y5_min(rows, N - n0);
        for (int i0 = 0; i0 < HW; i0 += kBnChunk) {
            const int m = y5_min(kBnChunk, HW - i0);
            const T *po = view(go, dout, n0, r, i0), *px = view(gx, inp, n0, r, i0);
            A* d = dz;
            if constexpr (std::is_same_v<T, A>) d = park && !gather ? dinp + bn_at(n0, C, HW, c, i0) : dz;
            bn_act_dz_cpu<T, A>(d, xh, po, px, r * m, mean, invstd, gamma, beta, a);
            for (int k = 0; k < r; ++k) {  // each row's values from lane 0
                const A *dk = d + k * m, *xk = xh + k * m;
                int i = 0;
                for (; i + kSumLanes <= m; i += kSumLanes)
                    for (int l = 0; l < kSumLanes; ++l) {
                        sdy_l[l] += (double)dk[i + l];
                        sdyx_l[l] += (double)dk[i + l] * xk[i + l];
                    }
                for (int l = 0; i + l < m; ++l) {
                    sdy_l[l] += (double)dk[i + l];
                    sdyx_l[l] += (double)dk[i + l] * xk[i + l];
                }
            }
            if constexpr (std::is_same_v<T, A>)
                if (park && gather) bn_scatter(dinp, dz, n0, r, C, HW, c);
        }
    }
    const double sdy = lanes_total(sdy_l), sdyx = lanes_total(sdyx_l);
    if (dbeta) *dbeta += A(sdy);
    if (dgamma) *dgamma += A(sdyx);
    if (!dinp) return;
    const A mdy = A(sdy / M), mdyx = A(sdyx / M);
    for (int n0 = 0; n0 < N; n0 += rows) {
        const int r = y5_min(rows, N - n0);
        for (int i0 = 0; i0 < HW; i0 += kBnChunk) {
            const int len = r * y5_min(kBnChunk, HW - i0);
            const T* px = view(gx, inp, n0, r, i0);
            T* out = gather ? gd : dinp + bn_at(n0, C, HW, c, i0);
            if constexpr (std::is_same_v<T, A>)
                if (park) {
                    const T* pg = view(go, dinp, n0, r, i0);
                    for (int i = 0; i < len; ++i) {
                        const A x = bn_xhat(px[i], mean, invstd), g = pg[i];
                        out[i] = training ? bn_train_dx(g, x, gamma, invstd, mdy, mdyx) : bn_eval_dx(g, gamma, invstd);
                    }
                    if (gather) bn_scatter(dinp, out, n0, r, C, HW, c);
                    continue;
                }
            bn_act_dz_cpu<T, A>(dz, xh, view(go, dout, n0, r, i0), px, len, mean, invstd, gamma, beta, a);
            const T* pd = overwrite ? nullptr : view(gd, dinp, n0, r, i0);
            for (int i = 0; i < len; ++i) {
                const A d =
                    training ? bn_train_dx(dz[i], xh[i], gamma, invstd, mdy, mdyx) : bn_eval_dx(dz[i], gamma, invstd);
                out[i] = st<T>((overwrite ? A(0) : ld(pd[i])) + d);
            }
            if (gather) bn_scatter(dinp, out, n0, r, C, HW, c);
        }
    }
}

template <class T, class A = acc_t<T>>
void batchnorm_backward_train_cpu(T* dinp, A* dgamma, A* dbeta, const T* dout, const T* inp, const A* gamma,
                                  const A* beta, const A* save_mean, const A* save_invstd, int N, int C, int HW, Act a,
                                  int c_begin = 0, int c_end = INT_MAX, bool overwrite = false) {
    for (int c = c_begin; c < y5_min(C, c_end); ++c)
        batchnorm_backward_channel_cpu<T, A>(dinp, dgamma ? dgamma + c : nullptr, dbeta ? dbeta + c : nullptr, dout,
                                             inp, N, C, HW, c, save_mean[c], save_invstd[c], gamma[c], beta[c], a, true,
                                             overwrite);
}

template <class T, class A = acc_t<T>>
void batchnorm_backward_eval_cpu(T* dinp, A* dgamma, A* dbeta, const T* dout, const T* inp, const A* gamma,
                                 const A* beta, const A* running_mean, const A* running_var, int N, int C, int HW,
                                 float eps, Act a, int c_begin = 0, int c_end = INT_MAX, bool overwrite = false) {
    for (int c = c_begin; c < y5_min(C, c_end); ++c)
        batchnorm_backward_channel_cpu<T, A>(dinp, dgamma ? dgamma + c : nullptr, dbeta ? dbeta + c : nullptr, dout,
                                             inp, N, C, HW, c, running_mean[c], bn_eval_invstd(running_var[c], eps),
                                             gamma[c], beta[c], a, false, overwrite);
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/batchnorm.cu, the CPU reference's arguments for all channels plus scratch and the
// stream): f32, and f16 inp/out/dinp/dout with f32 per-channel tensors; built only with Y5_CUDA. `scratch` is
// batchnorm_cuda_scratch(N, C, HW) floats of device workspace for the call (per-block partial statistics), for
// either storage type. Backward: dinp, dgamma, dbeta may each be null; overwrite as the CPU reference's.

int64_t batchnorm_cuda_scratch(int N, int C, int HW);
void batchnorm_forward_train_cuda(float* out, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, const float* inp, const float* gamma, const float* beta, int N,
                                  int C, int HW, float eps, float momentum, Act a, float* scratch, cudaStream_t stream);
void batchnorm_forward_eval_cuda(float* out, const float* inp, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, int N, int C, int HW, float eps,
                                 Act a, float* scratch, cudaStream_t stream);
// batchnorm_apply_cpu's launcher: the training forward's normalising kernel, so the same bits.
void batchnorm_apply_cuda(float* out, const float* inp, const float* mean, const float* invstd, const float* gamma,
                          const float* beta, int N, int C, int HW, Act a, cudaStream_t stream);
void batchnorm_apply_cuda(f16* out, const f16* inp, const float* mean, const float* invstd, const float* gamma,
                          const float* beta, int N, int C, int HW, Act a, cudaStream_t stream);
void batchnorm_backward_train_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                                   const float* gamma, const float* beta, const float* save_mean,
                                   const float* save_invstd, int N, int C, int HW, Act a, bool overwrite, float* scratch,
                                   cudaStream_t stream);
void batchnorm_backward_eval_cuda(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, int N, int C, int HW, float eps, Act a, bool overwrite, float* scratch,
                                  cudaStream_t stream);
void batchnorm_forward_train_cuda(f16* out, float* save_mean, float* save_invstd, float* running_mean,
                                  float* running_var, const f16* inp, const float* gamma, const float* beta, int N,
                                  int C, int HW, float eps, float momentum, Act a, float* scratch, cudaStream_t stream);
void batchnorm_forward_eval_cuda(f16* out, const f16* inp, const float* gamma, const float* beta,
                                 const float* running_mean, const float* running_var, int N, int C, int HW, float eps,
                                 Act a, float* scratch, cudaStream_t stream);
void batchnorm_backward_train_cuda(f16* dinp, float* dgamma, float* dbeta, const f16* dout, const f16* inp,
                                   const float* gamma, const float* beta, const float* save_mean,
                                   const float* save_invstd, int N, int C, int HW, Act a, bool overwrite, float* scratch,
                                   cudaStream_t stream);
void batchnorm_backward_eval_cuda(f16* dinp, float* dgamma, float* dbeta, const f16* dout, const f16* inp,
                                  const float* gamma, const float* beta, const float* running_mean,
                                  const float* running_var, int N, int C, int HW, float eps, Act a, bool overwrite, float* scratch,
                                  cudaStream_t stream);

}  // namespace y5
