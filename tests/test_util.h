/*
 * Test helpers: a CPU context with its arenas, seeded random tensors, a per-element tolerance compare that
 * reports the worst element (fatal or not), and a finite-difference gradient check in double through the ops
 * and the tape.
 */
#pragma once
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/core/arena.h"
#include "engine/ops/ops.h"
#include "engine/core/rng.h"
#include "engine/autograd/tape.h"
#include "engine/data/loader.h"

namespace y5test {
using namespace y5;

// A convolution's geometry for the conv tests (CPU, oneDNN, GPU): input (N,C,H,W), weight (K,C,R,S), with or without bias.
struct Geo {
    int N, C, H, W, K, R, S, stride, pad;
    bool bias;
};

inline std::string geo_str(const Geo& g) {
    char s[128];
    snprintf(s, sizeof s, "x (%d,%d,%d,%d) w (%d,%d,%d,%d) s%d p%d%s", g.N, g.C, g.H, g.W, g.K, g.C, g.R, g.S, g.stride,
             g.pad, g.bias ? " +bias" : "");
    return s;
}

// A CPU context: activations, scratch, gradients, and a separate arena for test-owned tensors.
struct TestCtx {
    Arena act{"test activations", Device::CPU, size_t(1) << 30};
    Arena work{"test workspace", Device::CPU, size_t(1) << 29};
    Arena grads{"test gradients", Device::CPU, size_t(1) << 30};
    Arena data{"test data", Device::CPU, size_t(1) << 29};
    Tape tape{&grads};
    Ctx ctx;
    TestCtx() {
        ctx.act = &act;
        ctx.work = &work;
        ctx.tape = &tape;
    }
};

// Uniform [lo, hi) values (never all zeros), in f32, f64 or f16 (rounded to nearest).
inline Tensor rand_tensor(Arena& a, Shape s, DType t, Rng& rng, double lo = -1.0, double hi = 1.0) {
    Tensor x = a.tensor(s, t);
    for (int64_t i = 0; i < x.numel(); ++i) {
        double v = rng.uniform_double(lo, hi);
        if (t == DType::F64) x.ptr<double>()[i] = v;
        else if (t == DType::F16) x.ptr<f16>()[i] = f32_to_f16((float)v);
        else x.ptr<float>()[i] = (float)v;
    }
    return x;
}

// A host tensor's values in dtype t (f32, f64, f16; f16 rounds to nearest even).
inline Tensor as_dtype(Arena& a, const Tensor& x, DType t) {
    Tensor y = a.tensor(x.shape, t);
    for (int64_t i = 0; i < x.numel(); ++i) {
        const double v = x.dtype == DType::F64 ? x.ptr<double>()[i]
                         : x.dtype == DType::F16 ? (double)f16_to_f32(x.ptr<f16>()[i])
                                                 : (double)x.ptr<float>()[i];
        if (t == DType::F64) y.ptr<double>()[i] = v;
        else if (t == DType::F16) y.ptr<f16>()[i] = f32_to_f16((float)v);
        else y.ptr<float>()[i] = (float)v;
    }
    return y;
}

// A host copy of a host tensor in arena a.
inline Tensor copy_of(Arena& a, const Tensor& t) {
    Tensor c = a.tensor(t.shape, t.dtype);
    std::memcpy(c.data, t.data, t.bytes());
    return c;
}

inline Tensor f64_zeros(Arena& a, Shape s) {
    Tensor x = a.tensor(s, DType::F64);
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<double>()[i] = 0.0;
    return x;
}

// Distinct values spaced at least `gap` apart, shuffled: max-pool windows then have no near-ties.
inline Tensor distinct_tensor(Arena& a, Shape s, Rng& rng, double gap) {
    Tensor x = a.tensor(s, DType::F64);
    double* p = x.ptr<double>();
    const int64_t n = x.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = (i - n / 2) * gap;
    for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[rng.randint((uint32_t)(i + 1))]);
    return x;
}

inline std::string fmt(double v) {
    char s[32];
    snprintf(s, sizeof s, "%.4g", v);
    return s;
}

inline double at(const Tensor& t, int64_t i) {
    return t.dtype == DType::F64   ? t.ptr<double>()[i]
           : t.dtype == DType::F16 ? (double)f16_to_f32(t.ptr<f16>()[i])
                                   : (double)t.ptr<float>()[i];
}

// |got − want| ≤ atol + rtol·|want| element by element: the element furthest over its bound (−1 when none is
// over; a NaN is always over), the largest absolute error, and the largest share of its bound an element used
// (over 1 fails; reported, so a failure says by how much).
struct CloseStats {
    int64_t worst = -1;
    double max_abs = 0, used = 0;
};

inline CloseStats close_stats(const Tensor& got, const Tensor& want, double atol, double rtol) {
    CloseStats r;
    double worst_excess = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
        const double g = at(got, i), w = at(want, i), err = std::fabs(g - w), bound = atol + rtol * std::fabs(w);
        r.max_abs = std::max(r.max_abs, err);
        const double u = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0.0);
        r.used = std::isnan(u) || std::isnan(r.used) ? NAN : std::max(r.used, u);
        const double excess = err - bound;
        if (!(excess <= 0) && (r.worst < 0 || excess > worst_excess || std::isnan(err))) {
            r.worst = i;
            worst_excess = excess;
        }
    }
    return r;
}

inline std::string close_report(const CloseStats& r, const Tensor& got, const Tensor& want, const std::string& what) {
    return what + ": max abs err " + fmt(r.max_abs) + ", " + fmt(r.used) + " of the bound" +
           (r.worst >= 0 ? "; worst at " + std::to_string(r.worst) + ": got " + fmt(at(got, r.worst)) + " want " +
                               fmt(at(want, r.worst))
                         : std::string());
}

// |got − want| ≤ atol + rtol·|want| everywhere; on failure reports the worst element and ends the test case.
inline void require_close(const Tensor& got, const Tensor& want, double atol, double rtol, const std::string& what) {
    REQUIRE(got.shape == want.shape);
    const CloseStats r = close_stats(got, want, atol, rtol);
    INFO(close_report(r, got, want, what));
    REQUIRE(r.worst < 0);
}

// As require_close, but a failure is recorded and the test case goes on (many tensors, each reported).
inline void check_close(const Tensor& got, const Tensor& want, double atol, double rtol, const std::string& what) {
    REQUIRE(got.shape == want.shape);
    const CloseStats r = close_stats(got, want, atol, rtol);
    INFO(close_report(r, got, want, what));
    CHECK(r.worst < 0);
}

struct GradCheck {
    int max_checks = 200;  // finite-difference probes per input (chosen at random when the input is larger)
    double h = 1e-6;
    double rtol = 1e-6;    // relative to the input's largest analytic gradient, plus per element
};

using OpFn = std::function<Var(Ctx&, const std::vector<Var>&)>;

struct GradResult {
    int bad = 0;          // probes over tolerance, all inputs
    double worst = 0;     // largest relative error seen
    std::string report;   // one line per input
};

// Compares the tape's gradient of L = Σ w ⊙ f(inputs), w random, with central differences
// (L(x+h) − L(x−h)) / 2h in double. Inputs must be f64 CPU tensors; each becomes a tape leaf. The error
// of a probe is |numeric − analytic| / (max |analytic| over that input + |analytic|).
inline GradResult gradcheck_run(TestCtx& tc, const std::vector<Tensor>& inputs, const OpFn& f, Rng& rng,
                                GradCheck opt = {}) {
    Ctx& c = tc.ctx;
    tc.tape.clear();
    tc.act.reset();
    std::vector<Var> leaves;
    for (const Tensor& x : inputs) {
        REQUIRE(x.dtype == DType::F64);
        leaves.push_back(tc.tape.leaf(x));
    }
    Var out = f(c, leaves);
    Tensor w = rand_tensor(tc.data, out.shape(), DType::F64, rng);
    tc.tape.backward(out, &w);

    auto loss = [&]() {
        size_t m = tc.act.mark();
        NoGrad ng(tc.tape);
        std::vector<Var> consts;
        for (const Tensor& x : inputs) consts.push_back(Tape::constant(x));
        Var o = f(c, consts);
        long double L = 0;  // extended precision: the sum has up to millions of terms
        for (int64_t i = 0; i < o.t.numel(); ++i) L += (long double)w.ptr<double>()[i] * o.t.ptr<double>()[i];
        tc.act.reset(m);
        return (double)L;
    };

    GradResult r;
    for (size_t k = 0; k < inputs.size(); ++k) {
        Tensor g = tc.tape.grad(leaves[k]);
        const int64_t n = inputs[k].numel();
        double scale = 1e-12;
        for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(g.ptr<double>()[i]));
        const int probes = (int)std::min<int64_t>(n, opt.max_checks);
        int bad = 0;
        double worst = 0;
        std::string first_bad;
        for (int p = 0; p < probes; ++p) {
            int64_t i = n <= opt.max_checks ? p : rng.randint((uint32_t)n);
            double* xi = inputs[k].ptr<double>() + i;
            const double x0 = *xi;
            *xi = x0 + opt.h;
            double Lp = loss();
            *xi = x0 - opt.h;
            double Lm = loss();
            *xi = x0;
            double num = (Lp - Lm) / (2 * opt.h), ana = g.ptr<double>()[i];
            double err = std::fabs(num - ana) / (scale + std::fabs(ana));
            worst = std::max(worst, err);
            if (!(err <= opt.rtol) && !bad++)
                first_bad = "element " + std::to_string(i) + ": analytic " + fmt(ana) + " numeric " + fmt(num);
        }
        r.bad += bad;
        r.worst = std::max(r.worst, worst);
        r.report += "input " + std::to_string(k) + " " + inputs[k].str() + ": " + std::to_string(probes) +
                    " probes, worst rel err " + fmt(worst) + ", " + std::to_string(bad) + " over tolerance" +
                    (bad ? " (first: " + first_bad + ")" : std::string()) + "\n";
    }
    tc.tape.clear();
    tc.act.reset();
    return r;
}

inline void gradcheck(TestCtx& tc, const std::vector<Tensor>& inputs, const OpFn& f, Rng& rng, GradCheck opt = {}) {
    GradResult r = gradcheck_run(tc, inputs, f, rng, opt);
    INFO(r.report);
    CHECK(r.bad == 0);
}

// A fixed synthetic batch: textured uint8 images (n, 3, h, w) with 1–3 filled rectangles each, and their
// targets (image, class, x, y, w, h) normalised, as the loader hands them to train.cpp.
inline Batch synthetic_batch(Rng& rng, int n, int h, int w, int nc) {
    Batch b;
    b.n = n, b.h = h, b.w = w;
    b.images.resize((size_t)n * 3 * h * w);
    for (int i = 0; i < n; ++i) {
        uint8_t* im = b.images.data() + (size_t)i * 3 * h * w;
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                    im[((size_t)c * h + y) * w + x] = (uint8_t)(96 + 40 * std::sin(0.21 * x + 0.13 * y + c) + rng.randint(24));
        const int objects = 1 + (int)rng.randint(3);
        for (int k = 0; k < objects; ++k) {
            const int bw = 12 + (int)rng.randint(w / 2), bh = 12 + (int)rng.randint(h / 2);
            const int x0 = (int)rng.randint(w - bw), y0 = (int)rng.randint(h - bh), cls = (int)rng.randint(nc);
            const uint8_t col[3] = {(uint8_t)rng.randint(256), (uint8_t)rng.randint(256), (uint8_t)rng.randint(256)};
            for (int c = 0; c < 3; ++c)
                for (int y = y0; y < y0 + bh; ++y)
                    for (int x = x0; x < x0 + bw; ++x) im[((size_t)c * h + y) * w + x] = col[c];
            b.targets.insert(b.targets.end(), {(float)i, (float)cls, (x0 + bw / 2.0f) / w, (y0 + bh / 2.0f) / h,
                                               (float)bw / w, (float)bh / h});
        }
    }
    return b;
}

// Bytes of the f16 copies an autocast forward of a YOLOv5 model makes of its parameters (layers/modules.cpp amp():
// every convolution's weight, and Detect's biases, model.24.m.*): their gradients are the only ones the tape zeroes
// in a training step (the weight gradients add into them), whatever the batch. M: layers/model.h's Model.
template <class M> size_t autocast_copy_bytes(const M& m) {
    size_t b = 0;
    for (int i = 0; i < m.params.size(); ++i) {
        const auto& p = m.params[i];
        if (p.shape.ndim == 4 || p.name.rfind("model.24.m.", 0) == 0) b += 2 * (size_t)p.shape.numel();
    }
    return b;
}

}  // namespace y5test
