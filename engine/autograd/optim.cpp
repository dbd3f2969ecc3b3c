#include "engine/autograd/optim.h"

#include <algorithm>
#include <cstring>

#include "engine/core/threadpool.h"
#include "engine/device/device.h"
#include "kernels/batchnorm.h"
#include "kernels/check.h"
#include "kernels/sgd.h"

#if Y5_CUDA
#include "kernels/cuda.h"
#endif

namespace y5 {

template <class F> static void on_host(const ParamStore& ps, const char* what, F&& f) {
    Tensor t = ps.values_flat();
    Y5_CHECK(t.device == Device::CPU, "internal: %s: CPU path for parameters on %s", what, device_name(t.device));
    if (t.dtype == DType::F64) f(double(0));
    else f(float(0));
}

// CUDA stores run the kernels of kernels/sgd.cu on the stream of the context they were allocated with.
static bool on_device(const ParamStore& ps, const char* what) {
    Y5_CHECK(ps.allocated(), "%s: parameter blocks not allocated", what);
    if (ps.device() != Device::CUDA) return false;
#if Y5_CUDA
    Y5_CHECK(ps.dtype() == DType::F32, "%s: CUDA parameters must be f32, got %s", what, dtype_name(ps.dtype()));
    Y5_CHECK(ps.cuda() != nullptr, "%s: the CUDA parameter store was allocated without a CUDA context", what);
    return true;
#else
    Y5_FAIL("%s: CUDA parameters in a build without CUDA", what);
#endif
}

void sgd_step(ParamStore& ps, const SgdGroup groups[3], const int32_t* skip_device) {
    if (on_device(ps, "sgd_step")) {
#if Y5_CUDA
        float* p = ps.trainable_flat().ptr<float>();
        const float* g = ps.grads_flat().ptr<float>();
        float* buf = ps.momentum_flat().ptr<float>();
        for (int k = 0; k < 3; ++k)
            for (auto r : ps.update_ranges(k))
                sgd_cuda(p + r.first, g + r.first, buf + r.first, r.second - r.first, float(groups[k].lr),
                         float(groups[k].momentum), float(groups[k].weight_decay), ps.cuda()->stream, skip_device);
#endif
        return;
    }
    Y5_CHECK(!skip_device, "sgd_step: a device skip flag for a CPU store");
    on_host(ps, "sgd_step", [&](auto z) {
        using T = decltype(z);
        T* p = ps.trainable_flat().ptr<T>();
        const T* g = ps.grads_flat().ptr<T>();
        T* buf = ps.momentum_flat().ptr<T>();
        for (int k = 0; k < 3; ++k)
            for (auto r : ps.update_ranges(k))
                par(r.second - r.first, [&](int64_t i0, int64_t i1) {  // elementwise: same bits however split
                    const int64_t o = r.first + i0;
                    sgd_cpu<T>(p + o, g + o, buf + o, i1 - i0, T(groups[k].lr), T(groups[k].momentum),
                               T(groups[k].weight_decay));
                }, kElemChunk);
    });
}

OptimizerKind parse_optimizer(const std::string& name) {
    if (name == "SGD") return OptimizerKind::SGD;
    if (name == "Adam") return OptimizerKind::Adam;
    if (name == "AdamW") return OptimizerKind::AdamW;
    Y5_FAIL("--optimizer %s: expected SGD, Adam or AdamW", name.c_str());
}

const char* optimizer_name(OptimizerKind kind) {
    return kind == OptimizerKind::Adam ? "Adam" : kind == OptimizerKind::AdamW ? "AdamW" : "SGD";
}

Optimizer::Optimizer(OptimizerKind kind, double beta1) : kind(kind), beta1(beta1) {}

void Optimizer::allocate(const ParamStore& ps) {
    Y5_CHECK(ps.allocated(), "Optimizer::allocate: parameter blocks not allocated");
    if (kind == OptimizerKind::SGD) return;
    n_ = ps.trainable_elems(), dtype_ = ps.dtype();
    const size_t bytes = std::max<int64_t>(n_, 1) * dtype_size(dtype_);
    exp_avg_sq_ = std::make_unique<Arena>("exp_avg_sq", ps.device(), bytes);
    exp_avg_sq_->alloc(bytes);
    if (ps.device() == Device::CPU) std::memset(exp_avg_sq_->base(), 0, bytes);
    else device_memset(exp_avg_sq_->base(), 0, bytes, ps.cuda());
}

Tensor Optimizer::exp_avg_sq_flat() const {
    Y5_CHECK(exp_avg_sq_, "%s: no exp_avg_sq (an SGD optimizer, or allocate() not called)", optimizer_name(kind));
    return Tensor(exp_avg_sq_->base(), Shape{n_}, dtype_, exp_avg_sq_->device());
}

Tensor Optimizer::exp_avg_sq(const ParamStore& ps, int i) const {
    const Param& p = ps[i];
    Y5_CHECK(p.trainable(), "parameter '%s' is a buffer and has no optimizer state", p.name.c_str());
    return Tensor(static_cast<char*>(exp_avg_sq_flat().data) + p.offset * dtype_size(dtype_), p.shape, dtype_,
                  exp_avg_sq_->device());
}

// torch's per-group scalars for step t, in double as its Python code computes them, then rounded to T.
template <class T> static AdamScalars<T> adam_scalars(const Optimizer& o, const SgdGroup& g, int64_t t) {
    const bool decoupled = o.kind == OptimizerKind::AdamW;
    AdamScalars<T> s;
    s.keep = T(decoupled && g.weight_decay != 0 ? 1 - g.lr * g.weight_decay : 1.0);
    s.l2 = T(decoupled ? 0.0 : g.weight_decay);
    s.w1 = T(1 - o.beta1), s.beta2 = T(o.beta2), s.w2 = T(1 - o.beta2);
    s.neg_step_size = T(-(g.lr / (1 - std::pow(o.beta1, (double)t))));
    s.bc2_sqrt = T(std::pow(1 - std::pow(o.beta2, (double)t), 0.5));
    s.eps = T(o.eps);
    return s;
}

void Optimizer::step(ParamStore& ps, const SgdGroup groups[3]) {
    if (kind == OptimizerKind::SGD) return sgd_step(ps, groups);
    Tensor v = exp_avg_sq_flat();
    Y5_CHECK(v.numel() == ps.trainable_elems() && v.device == ps.device() && v.dtype == ps.dtype(),
             "%s: optimizer state allocated for another parameter store", optimizer_name(kind));
    for (int k = 0; k < 3; ++k) ++steps[k];
    if (on_device(ps, "adam_step")) {
#if Y5_CUDA
        float* p = ps.trainable_flat().ptr<float>();
        const float* g = ps.grads_flat().ptr<float>();
        float *m = ps.momentum_flat().ptr<float>(), *vp = v.ptr<float>();
        for (int k = 0; k < 3; ++k)
            for (auto r : ps.update_ranges(k))
                adam_cuda(p + r.first, g + r.first, m + r.first, vp + r.first, r.second - r.first,
                          adam_scalars<float>(*this, groups[k], steps[k]), ps.cuda()->stream);
#endif
        return;
    }
    on_host(ps, "adam_step", [&](auto z) {
        using T = decltype(z);
        T* p = ps.trainable_flat().ptr<T>();
        const T* g = ps.grads_flat().ptr<T>();
        T *m = ps.momentum_flat().ptr<T>(), *vp = v.ptr<T>();
        for (int k = 0; k < 3; ++k)
            for (auto r : ps.update_ranges(k)) {
                const AdamScalars<T> sc = adam_scalars<T>(*this, groups[k], steps[k]);
                par(r.second - r.first, [&](int64_t i0, int64_t i1) {
                    const int64_t o = r.first + i0;
                    adam_cpu<T>(p + o, g + o, m + o, vp + o, i1 - i0, sc);
                }, kElemChunk);
            }
    });
}

double clip_grad_norm(ParamStore& ps, double max_norm, double* norm_pinned) {
    ps.zero_frozen_grads();  // frozen: no gradient in torch, so none in the norm
    if (on_device(ps, "clip_grad_norm")) {
#if Y5_CUDA
        double norm = 0;  // ordinary memory: the copy into it waits
        clip_grad_norm_cuda(ps.grads_flat().ptr<float>(), ps.grads_flat().numel(), max_norm, ps.device_scratch(),
                            ParamStore::kDeviceScratchBytes, norm_pinned ? norm_pinned : &norm, ps.cuda()->stream);
        return norm;
#endif
    }
    double norm = 0;
    on_host(ps, "clip_grad_norm", [&](auto z) {
        using T = decltype(z);
        T* g = ps.grads_flat().ptr<T>();
        const int64_t n = ps.grads_flat().numel();
        double lanes[kSumLanes] = {};  // Σ g² in BatchNorm's fixed-order lanes (one chain is latency bound)
        lanes_add_sqdev(lanes, g, n, 0.0);
        norm = std::sqrt(lanes_total(lanes));
        const double coef = clip_coef(norm, max_norm);
        if (coef != 1.0)  // g · 1 is g
            par(n, [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) g[i] = T(g[i] * coef);
            }, kElemChunk);
    });
    if (norm_pinned) *norm_pinned = norm;
    return norm;
}

double ema_decay(int64_t updates, double decay, double tau) { return decay * (1 - std::exp(-(double)updates / tau)); }

void ema_update(ParamStore& ema, const ParamStore& model, double d) {
    Y5_CHECK(ema.values_flat().numel() == model.values_flat().numel(), "EMA and model parameter blocks differ in size");
    Y5_CHECK(ema.device() == model.device() && ema.dtype() == model.dtype(), "ema_update: EMA on %s %s, model on %s %s",
             device_name(ema.device()), dtype_name(ema.dtype()), device_name(model.device()), dtype_name(model.dtype()));
    if (on_device(ema, "ema_update")) {
#if Y5_CUDA
        ema_cuda(ema.values_flat().ptr<float>(), model.values_flat().ptr<float>(), ema.values_flat().numel(), float(d),
                 ema.cuda()->stream);
#endif
        return;
    }
    on_host(ema, "ema_update", [&](auto z) {
        using T = decltype(z);
        T* e = ema.values_flat().ptr<T>();
        const T* m = model.values_flat().ptr<T>();
        par(ema.values_flat().numel(), [&](int64_t i0, int64_t i1) { ema_cpu<T>(e + i0, m + i0, i1 - i0, T(d)); },
            kElemChunk);
    });
}

GradScaler::GradScaler(float init_scale, double growth_factor, double backoff_factor, int growth_interval)
    : scale_(init_scale), growth_factor_(growth_factor), backoff_factor_(backoff_factor),
      growth_interval_(growth_interval) {
    Y5_CHECK(growth_factor > 1.0 && backoff_factor < 1.0 && growth_interval > 0,
             "GradScaler: growth factor %g must be > 1, backoff factor %g < 1, growth interval %d > 0", growth_factor,
             backoff_factor, growth_interval);
}

bool GradScaler::unscale(ParamStore& ps) const {
    const float inv = inv_scale();
    ps.zero_frozen_grads();  // frozen: no gradient in torch, so no inf/NaN from them either
    if (on_device(ps, "GradScaler::unscale")) {
#if Y5_CUDA
        // The flag lives in the store's optimizer scratch, which clip_grad_norm also uses: both run in the order
        // of the store's stream and copy their result back before they return.
        return amp_unscale_cuda(ps.grads_flat().ptr<float>(), ps.grads_flat().numel(), inv, ps.device_scratch(),
                                ParamStore::kDeviceScratchBytes, ps.cuda()->stream);
#endif
    }
    bool found_inf = false;
    on_host(ps, "GradScaler::unscale", [&](auto z) {
        using T = decltype(z);
        found_inf = amp_unscale_cpu<T>(ps.grads_flat().ptr<T>(), ps.grads_flat().numel(), inv);
    });
    return found_inf;
}

// torch's _amp_update_scale_ (the factors are doubles there too: f32 scale times double, rounded to f32).
void GradScaler::update(bool found_inf) {
    amp_update_scale(scale_, tracker_, found_inf, growth_factor_, backoff_factor_, growth_interval_);
}

void GradScaler::unscale_on_device(ParamStore& ps, AmpState* st) const {
    ps.zero_frozen_grads();
    Y5_CHECK(on_device(ps, "GradScaler::unscale_on_device"), "GradScaler::unscale_on_device: a CPU parameter store");
#if Y5_CUDA
    amp_unscale_state_cuda(ps.grads_flat().ptr<float>(), ps.grads_flat().numel(), st, ps.cuda()->stream);
#else
    (void)st;
#endif
}

void GradScaler::update_on_device(AmpState* st, CudaContext* cuda) const {
#if Y5_CUDA
    amp_update_cuda(st, growth_factor_, backoff_factor_, growth_interval_, cuda->stream);
#else
    (void)st, (void)cuda;
    Y5_FAIL("GradScaler::update_on_device: a build without CUDA");
#endif
}

Schedule::Schedule(double lr0, double lrf, double momentum, double warmup_epochs, double warmup_momentum,
                   double warmup_bias_lr, int epochs, int nb, int bs, bool cos_lr, int nbs)
    : lr0_(lr0), lrf_(lrf), momentum_(momentum), warmup_momentum_(warmup_momentum), warmup_bias_lr_(warmup_bias_lr),
      epochs_(epochs), nb_(nb), bs_(bs), nbs_(nbs), cos_(cos_lr) {
    nw_ = warmup_epochs > 0 ? std::max((int)std::nearbyint(warmup_epochs * nb), 100) : -1;
    acc0_ = std::max((int)std::nearbyint((double)nbs / bs), 1);
}

ScheduleState Schedule::at(int64_t ni, int epoch, int accumulate) const {
    ScheduleState s;
    // Outside warmup the lr is what LambdaLR set at the end of the previous epoch (lf(epoch − 1); lf(0) in
    // epoch 0), except in the epoch where warmup ended, which keeps the warmup end point lf(epoch).
    const bool warmup_epoch = nw_ >= 0 && epoch == nw_ / nb_;
    const double after = lr0_ * lf(warmup_epoch ? epoch : std::max(epoch - 1, 0));
    for (int j = 0; j < 3; ++j) s.lr[j] = after, s.momentum[j] = momentum_;
    s.accumulate = accumulate;
    if (ni <= nw_) {
        const double base = lr0_ * lf(epoch);
        auto interp = [&](double a, double b) {  // np.interp(ni, [0, nw], [a, b]), numpy's arithmetic
            if (ni == nw_) return b;
            const double slope = (b - a) / (double)nw_;
            return slope * (double)ni + a;
        };
        s.accumulate = std::max(1, (int)std::nearbyint(interp(1, (double)nbs_ / bs_)));
        for (int j = 0; j < 3; ++j) {
            s.lr[j] = interp(j == 0 ? warmup_bias_lr_ : 0.0, base);
            s.momentum[j] = interp(warmup_momentum_, momentum_);
        }
    }
    return s;
}

}  // namespace y5
