/*
 * Optimizer updates over flat parameter ranges, CPU reference (CUDA: one fused kernel per range later).
 *   sgd: PyTorch SGD(momentum m, dampening 0, nesterov=True, weight_decay wd), per element:
 *        d = g + wd·p;  buf = m·buf + d;  d = d + m·buf;  p −= lr·d
 *        (torch starts buf as a copy of d; with buf zero-initialised m·0 + d is the same value)
 *   ema: v = d·v + (1 − d)·w (YOLOv5 ModelEMA over every floating state entry)
 */
#pragma once
#include <cstdint>

#include "kernels/common.h"

namespace y5 {

template <class T> Y5_HD void sgd_nesterov(T& p, T g, T& buf, T lr, T m, T wd) {
    T d = g + wd * p;
    buf = m * buf + d;
    d = d + m * buf;
    p = p - lr * d;
}

template <class T> Y5_HD T ema_lerp(T v, T w, T d) { return d * v + (T(1) - d) * w; }

template <class T> void sgd_cpu(T* p, const T* g, T* buf, int64_t n, T lr, T m, T wd) {
    for (int64_t i = 0; i < n; ++i) sgd_nesterov(p[i], g[i], buf[i], lr, m, wd);
}

template <class T> void ema_cpu(T* ema, const T* model, int64_t n, T d) {
    for (int64_t i = 0; i < n; ++i) ema[i] = ema_lerp(ema[i], model[i], d);
}

}  // namespace y5
