/*
 * Optimizer updates over flat parameter ranges: CPU references here, CUDA launchers in kernels/sgd.cu (one
 * fused kernel per range, the same per-element functions).
 *   sgd: PyTorch SGD(momentum m, dampening 0, nesterov=True, weight_decay wd), per element:
 *        d = g + wd·p;  buf = m·buf + d;  d = d + m·buf;  p −= lr·d
 *        (torch starts buf as a copy of d; with buf zero-initialised m·0 + d is the same value)
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

template <class T> void ema_cpu(T* ema, const T* model, int64_t n, T d) {
    for (int64_t i = 0; i < n; ++i) ema[i] = ema_lerp(ema[i], model[i], d);
}

// g = amp_unscale(g, inv_scale) over n elements; returns whether any was inf or NaN.
template <class T> bool amp_unscale_cpu(T* g, int64_t n, float inv_scale) {
    bool found_inf = false;
    for (int64_t i = 0; i < n; ++i) found_inf |= amp_unscale(g[i], inv_scale);
    return found_inf;
}

// torch.nn.utils.clip_grad_norm_'s factor for a norm: min(1, max_norm / (norm + 1e-6)).
Y5_HD double clip_coef(double norm, double max_norm) { return y5_min(1.0, max_norm / (norm + 1e-6)); }

// ---- CUDA launchers (kernels/sgd.cu); built only with Y5_CUDA. f32, on the given stream.
// p, buf updated in place over n elements with sgd_nesterov.
void sgd_cuda(float* p, const float* g, float* buf, int64_t n, float lr, float m, float wd, cudaStream_t stream);
// ema = ema_lerp(ema, model, d) over n elements.
void ema_cuda(float* ema, const float* model, int64_t n, float d, cudaStream_t stream);
// Device scratch that clip_grad_norm_cuda needs (partial sums and the norm).
size_t clip_grad_norm_scratch_bytes();
// ‖g‖₂ over n elements (sum of squares in double by a two-stage reduction whose order depends only on n, so
// it is deterministic), then g *= clip_coef(norm, max_norm) on the device; returns the norm (one scalar
// copied to the host, which synchronises the stream). scratch: clip_grad_norm_scratch_bytes() of device
// memory, 8-byte aligned.
double clip_grad_norm_cuda(float* g, int64_t n, double max_norm, void* scratch, size_t scratch_bytes,
                           cudaStream_t stream);
// g = amp_unscale(g, inv_scale) over n elements; returns whether any was inf or NaN. The flag is an int in
// device scratch (amp_unscale_scratch_bytes(), 4-byte aligned) that every thread meeting a non-finite value sets
// to 1 (the same store from any number of threads: no atomics, deterministic), copied to the host once, which
// synchronises the stream: the caller decides on it right away (skip the step, back off the scale), as torch's
// scaler.step does with found_inf.item().
size_t amp_unscale_scratch_bytes();
bool amp_unscale_cuda(float* g, int64_t n, float inv_scale, void* scratch, size_t scratch_bytes, cudaStream_t stream);

}  // namespace y5
