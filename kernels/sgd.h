/*
 * Optimizer updates over flat parameter ranges: CPU references here, CUDA launchers in kernels/sgd.cu (one
 * fused kernel per range, the same per-element functions).
 *   sgd: PyTorch SGD(momentum m, dampening 0, nesterov=True, weight_decay wd), per element:
 *        d = g + wd·p;  buf = m·buf + d;  d = d + m·buf;  p −= lr·d
 *        (torch starts buf as a copy of d; with buf zero-initialised m·0 + d is the same value)
 *   adam: torch.optim.Adam / AdamW (single-tensor path, amsgrad off) at step t, per element:
 *        AdamW: p = p·(1 − lr·wd);  Adam: g = g + wd·p
 *        m = lerp(m, g, 1 − β1);  v = β2·v + (1 − β2)·g·g
 *        p = p + (−step_size)·m / (sqrt(v) / bc2_sqrt + eps)
 *        with step_size = lr / (1 − β1^t), bc2_sqrt = (1 − β2^t)^0.5: per group in double on the host, as torch
 *        computes them in Python, then rounded to T. The L2 add, the lerp and the v update are fused
 *        multiply-adds, as torch's vectorised CPU kernels compute them (f32 results within an ulp of torch's:
 *        tests/test_adam.cpp).
 *   ema: v = d·v + (1 − d)·w (YOLOv5 ModelEMA over every floating state entry)
 *   amp_unscale: torch's _amp_foreach_non_finite_check_and_unscale_ (GradScaler.unscale_), per element:
 *        found_inf |= !isfinite(g) (on g as it comes in, before scaling);  g = inv_scale == 1 ? g : g·inv_scale
 */
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

template <class T> Y5_HD void sgd_nesterov(T& p, T g, T& buf, T lr, T m, T wd) {
    T d = g + wd * p;
    buf = m * buf + d;
    d = d + m * buf;
    p = p - lr * d;
}

// One group's Adam scalars for a step, rounded to T (adam_scalars in engine/autograd/optim.cpp computes them).
template <class T> struct AdamScalars {
    T keep;            // AdamW: 1 − lr·wd (1: no decoupled decay)
    T l2;              // Adam: wd, added to the gradient (0: none)
    T w1, beta2, w2;   // 1 − β1 (lerp weight), β2, 1 − β2
    T neg_step_size;   // −lr / (1 − β1^t)
    T bc2_sqrt, eps;   // (1 − β2^t)^0.5, eps
};

Y5_HD float y5_fma(float a, float b, float c) { return fmaf(a, b, c); }
Y5_HD double y5_fma(double a, double b, double c) { return fma(a, b, c); }

// torch's lerp(a, b, w) as its vectorised CPU kernel computes it (one rounding: fmadd): a + w·(b − a) for
// |w| < 0.5, else b + (w − 1)·(b − a).
template <class T> Y5_HD T torch_lerp(T a, T b, T w) {
    return (w < T(0.5) && w > T(-0.5)) ? y5_fma(w, b - a, a) : y5_fma(w - T(1), b - a, b);
}

template <class T> Y5_HD void adam_update(T& p, T g, T& m, T& v, const AdamScalars<T>& s) {
    if (s.keep != T(1)) p = p * s.keep;
    if (s.l2 != T(0)) g = y5_fma(s.l2, p, g);
    m = torch_lerp(m, g, s.w1);
    v = y5_fma(s.w2 * g, g, v * s.beta2);
    const T denom = y5_sqrt(v) / s.bc2_sqrt + s.eps;
    p = p + s.neg_step_size * m / denom;
}

template <class T> Y5_HD T ema_lerp(T v, T w, T d) { return d * v + (T(1) - d) * w; }

// Not inf and not NaN: the device's isfinite in device code, std::isfinite on the host.
template <class T> Y5_HD bool y5_isfinite(T x) {
#if defined(__CUDA_ARCH__)
    return isfinite(x);
#else
    return std::isfinite(x);
#endif
}

// One gradient element of GradScaler.unscale_: returns whether g is inf or NaN (decided before the multiply, so a
// finite g that g·inv_scale overflows is not flagged, as in torch) and sets g = g·inv_scale in T (an f64 gradient
// is multiplied by the f32 inv_scale widened), leaving g as it is when inv_scale is 1 (torch's shortcut). A NaN
// stays a NaN: on x86 with its bits, as torch's CPU kernel (the fixture checks them); a GPU makes its own NaN.
template <class T> Y5_HD bool amp_unscale(T& g, float inv_scale) {
    const bool nonfinite = !y5_isfinite(g);
    if (inv_scale != 1.f) g = g * (T)inv_scale;
    return nonfinite;
}

template <class T> void sgd_cpu(T* p, const T* g, T* buf, int64_t n, T lr, T m, T wd) {
    for (int64_t i = 0; i < n; ++i) sgd_nesterov(p[i], g[i], buf[i], lr, m, wd);
}

template <class T> void adam_cpu(T* p, const T* g, T* m, T* v, int64_t n, const AdamScalars<T>& s) {
    for (int64_t i = 0; i < n; ++i) adam_update(p[i], g[i], m[i], v[i], s);
}

template <class T> void ema_cpu(T* ema, const T* model, int64_t n, T d) {
    for (int64_t i = 0; i < n; ++i) ema[i] = ema_lerp(ema[i], model[i], d);
}

// g = amp_unscale(g, inv_scale) over n elements; returns whether any was inf or NaN.
template <class T> bool amp_unscale_cpu(T* g, int64_t n, float inv_scale) {
    bool found_inf = false;
    for (int64_t i = 0; i < n; ++i) found_inf |= amp_unscale(g[i], inv_scale);
    return found_inf;
}

// GradScaler's state where the scaler runs on the device (engine/app/step.h's pipelined mixed precision): the f32
// scale, torch's int32 growth tracker, and the last unscale's inf/NaN flag.
struct AmpState {
    float scale;
    int32_t tracker;
    int32_t found_inf;
    int32_t unused;
};

// torch's _amp_update_scale_ on (scale, tracker): found_inf → scale·backoff, tracker 0; else the tracker counts the
// step and at growth_interval the scale grows by growth (kept when that would be inf), tracker 0. The products in
// double, rounded to f32. GradScaler::update on the host and amp_update_cuda on the device.
Y5_HD void amp_update_scale(float& scale, int32_t& tracker, bool found_inf, double growth, double backoff,
                            int growth_interval) {
    if (found_inf) {
        scale = (float)((double)scale * backoff);
        tracker = 0;
        return;
    }
    const int32_t successful = tracker + 1;
    if (successful == growth_interval) {
        const float grown = (float)((double)scale * growth);
        if (y5_isfinite(grown)) scale = grown;
        tracker = 0;
    } else {
        tracker = successful;
    }
}

// torch's inv_scale: the f32 reciprocal of the scale computed in double (GradScaler::inv_scale, the device's unscale).
Y5_HD float amp_inv_scale(float scale) { return (float)(1.0 / (double)scale); }

// torch.nn.utils.clip_grad_norm_'s factor for a norm: min(1, max_norm / (norm + 1e-6)).
Y5_HD double clip_coef(double norm, double max_norm) { return y5_min(1.0, max_norm / (norm + 1e-6)); }

// ---- CUDA launchers (kernels/sgd.cu); built only with Y5_CUDA. f32, on the given stream.
// p, buf updated in place over n elements with sgd_nesterov; nothing when skip (a device int, may be null) is set.
void sgd_cuda(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd, cudaStream_t stream,
              const int32_t* skip = nullptr);
// p, m (exp_avg), v (exp_avg_sq) updated in place over n elements with adam_update.
void adam_cuda(float* p, const float* g, float* m, float* v, int64_t n, const AdamScalars<float>& s,
               cudaStream_t stream);
// ema = ema_lerp(ema, model, d) over n elements.
void ema_cuda(float* ema, const float* model, int64_t n, float d, cudaStream_t stream);
// Device scratch that clip_grad_norm_cuda needs (partial sums and the norm).
size_t clip_grad_norm_scratch_bytes();
// ‖g‖₂ over n elements (sum of squares in double by a two-stage reduction whose order depends only on n, so
// it is deterministic), then g *= clip_coef(norm, max_norm) on the device; the norm is copied to the host's
// *norm in stream order: page-locked memory receives it later (no host wait), ordinary memory before the call
// returns (the copy waits). scratch: clip_grad_norm_scratch_bytes() of device memory, 8-byte aligned.
void clip_grad_norm_cuda(float* g, int64_t n, double max_norm, void* scratch, size_t scratch_bytes, double* norm,
                         cudaStream_t stream);
// g = amp_unscale(g, inv_scale) over n elements; returns whether any was inf or NaN. The flag is an int in
// device scratch (amp_unscale_scratch_bytes(), 4-byte aligned) that every thread meeting a non-finite value sets
// to 1 (the same store from any number of threads: no atomics, deterministic), copied to the host once, which
// synchronises the stream: the caller decides on it right away (skip the step, back off the scale), as torch's
// scaler.step does with found_inf.item().
size_t amp_unscale_scratch_bytes();
bool amp_unscale_cuda(float* g, int64_t n, float inv_scale, void* scratch, size_t scratch_bytes, cudaStream_t stream);
// The scaler on the device, no host wait (st: one AmpState in device memory):
// amp_unscale_state_cuda: g = amp_unscale(g, amp_inv_scale(st->scale)) over n elements, st->found_inf = any inf/NaN;
// amp_update_cuda: amp_update_scale on st's scale and tracker with st->found_inf;
// amp_seed_cuda: *seed (a device f32) = st->scale · gain rounded to f32 (the backward's seed, as the host's
// (float)(scale · gain)).
void amp_unscale_state_cuda(float* g, int64_t n, AmpState* st, cudaStream_t stream);
void amp_update_cuda(AmpState* st, double growth, double backoff, int growth_interval, cudaStream_t stream);
void amp_seed_cuda(float* seed, const AmpState* st, double gain, cudaStream_t stream);

}  // namespace y5
