/*
 * YOLOv5 modules: Conv, Bottleneck, C3, SPPF, SPP, Focus, ECA, Upsample, Concat, Detect.
 * Forward code mirrors models/common.py line for line; the parameter names are its state_dict keys.
 */
#include "layers/modules.h"

#include <cmath>
#include <cstring>

#include "engine/ops/op.h"
#include "kernels/detect.h"
#include "kernels/pool.h"
#include "kernels/upsample.h"

#if Y5_CUDA
#include "kernels/cuda.h"
#endif

namespace y5 {

static Var param(Ctx& c, ParamStore& ps, int i) { return c.tape->param(ps[i].value, ps[i].grad); }

// A convolution's argument under autocast (Ctx::autocast): as f16, through the differentiable cast, so an f32
// weight's gradient arrives in f32 (torch's autocast casts conv inputs, weights and biases the same way). The
// f16 weight copies are made per forward, from the f32 master weights the optimizer updates.
static Var amp(Ctx& c, const Var& v) { return c.autocast ? cast(c, v, DType::F16) : v; }

// v, an intermediate the forward no longer reads (unless `out` is v itself: an op that returned its input), goes
// back to the tracking activation arena (engine/core/arena.h) at once: in inference (Model::forward's liveness),
// or in training when the tape can rebuild it for the backward (Ctx::recompute: a BatchNorm + activation output).
static void drop(Ctx& c, const Var& v, const Var& out) {
    if (v.t.data == out.t.data || !c.act->tracking()) return;
    if (!c.tape->recording()) c.act->release(v.t.data);
    else if (c.recompute && c.tape->recomputable(v)) c.tape->drop(v, c.act);
}

// ----------------------------------------------------------------------------------------------------
// ConvBN

void ConvBN::setup(ParamStore& store, const std::string& prefix, int c1_, int c2_, int k_, int s_, int p_, Act act_) {
    ps = &store;
    c1 = c1_, c2 = c2_, k = k_, s = s_, p = p_, act = act_;
    w = store.add(prefix + ".conv.weight", {c2, c1, k, k}, ParamKind::Weight);
    bn_w = store.add(prefix + ".bn.weight", {c2}, ParamKind::NormWeight);
    bn_b = store.add(prefix + ".bn.bias", {c2}, ParamKind::Bias);
    rm = store.add(prefix + ".bn.running_mean", {c2}, ParamKind::Buffer);
    rv = store.add(prefix + ".bn.running_var", {c2}, ParamKind::Buffer);
    store.conv_bns.push_back({w, bn_w, bn_b, rm, rv});
}

// The Conv's convolution (conv(weight, bias) over the input, or over its parts), then BN + activation; or, in a
// fused model's inference (Model::fuse), the folded weight and bias and the activation. Training, or a
// recording tape (gradients wanted for the real parameters), takes the conv → BN path.
template <class ConvFn> static Var conv_bn(Ctx& c, const ConvBN& m, bool training, ConvFn&& conv) {
    const ParamStore::Fold* f = training || c.tape->recording() ? nullptr : m.ps->fold(m.w);
    if (f) {  // the activation inside the conv op (conv2d_act)
        const Var b = amp(c, Tape::constant(f->b));
        return conv(amp(c, Tape::constant(f->w)), &b, m.act);
    }
    const Var z = conv(amp(c, param(c, *m.ps, m.w)), nullptr, kNoAct);
    const Var a = batchnorm2d(c, z, param(c, *m.ps, m.bn_w), param(c, *m.ps, m.bn_b), (*m.ps)[m.rm].value,
                              (*m.ps)[m.rv].value, training, kBnEps, kBnMomentum, m.act);
    drop(c, z, a);
    return a;
}

Var ConvBN::forward(Ctx& c, const Var& x, bool training) const {
    const Var xa = amp(c, x);
    const Var y = conv_bn(c, *this, training,
                          [&](const Var& wv, const Var* b, Act a) { return conv2d_act(c, xa, wv, b, s, p, a); });
    if (xa.t.data != x.t.data && c.tape->recording()) drop(c, xa, y);  // the image's f16 copy, if rebuildable
    return y;
}

Var ConvBN::forward(Ctx& c, const std::vector<Var>& parts, bool training) const {
    if (parts.size() == 1) return forward(c, parts[0], training);
    if (k != 1 || s != 1 || p != 0 || parts.size() > (size_t)kMaxConvParts) return forward(c, concat(c, parts), training);
    std::vector<Var> pa;
    for (const Var& v : parts) pa.push_back(amp(c, v));
    return conv_bn(c, *this, training,
                   [&](const Var& wv, const Var* b, Act a) { return conv2d_parts_act(c, pa, wv, b, a); });
}

// ----------------------------------------------------------------------------------------------------
// Blocked inference

const void* BlockedWeights::get(const float* weight, const BConv& g, Act act, bool add) {
    const uint64_t layout = dnnl_bconv_weights_layout(g, act, add);
    std::lock_guard<std::mutex> lock(mu_);
    Copy& w = m_[{weight, layout}];
    if (!w.mem) {
        w.bytes = (dnnl_bconv_weights_bytes(g, act, add) + 63) / 64 * 64;
        w.mem.reset(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(w.bytes, 64))));
        Y5_CHECK(w.mem, "blocked weights: out of memory (%zu bytes)", w.bytes);
        dnnl_bconv_weights(w.mem.get(), weight, g, act, add);
    }
    return w.mem.get();
}

size_t BlockedWeights::bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t b = 0;
    for (const auto& [k, v] : m_) b += v.bytes;
    return b;
}

float* BRun::scratch(size_t n) {
    n = (n + 15) / 16 * 16;  // whole 64-byte lines
    while (chunk_ < chunks_.size() && used_ + n > chunks_[chunk_].n) ++chunk_, used_ = 0;
    if (chunk_ == chunks_.size()) {
        const size_t m = std::max<size_t>(n, (size_t)8 << 20);  // 32 MB chunks
        float* mem = static_cast<float*>(std::aligned_alloc(64, m * sizeof(float)));  // m: whole 64-byte lines
        Y5_CHECK(mem, "blocked inference: out of memory for a %zu MB arena", m * sizeof(float) >> 20);
        chunks_.push_back({std::unique_ptr<float, Free>(mem), m});
        used_ = 0;
    }
    float* p = chunks_[chunk_].mem.get() + used_;
    used_ += n;
    return p;
}

BT BRun::alloc(int c, int h, int w) { return BT{scratch((size_t)(c + B - 1) / B * B * h * w), c, h, w}; }

size_t BRun::bytes() const {
    size_t b = 0;
    for (const Chunk& c : chunks_) b += c.n * sizeof(float);
    return b;
}

// y = act(conv(x, weight (K, x.c, k, k)) + bias) (+ addend) into *into or a new BT, weights from the run's cache.
static BT bconv(BRun& r, const BT& x, const float* weight, const float* bias, int K, int k, int s, int p, Act act,
                const BT* into, const BT* addend) {
    const int Ho = (x.h + 2 * p - k) / s + 1, Wo = (x.w + 2 * p - k) / s + 1;
    const BT y = into ? *into : r.alloc(K, Ho, Wo);
    Y5_CHECK(y.c == K && y.h == Ho && y.w == Wo, "conv (blocked): output (%d,%d,%d) for (%d,%d,%d)", y.c, y.h, y.w, K,
             Ho, Wo);
    const BConv g{x.c, x.h, x.w, K, k, k, s, p, x.nchw, r.threads};
    dnnl_bconv(y.p, x.p, r.weights->get(weight, g, act, addend != nullptr), bias, g, act, addend ? addend->p : nullptr);
    return y;
}

BT ConvBN::forward_blocked(BRun& r, const BT& x, const BT* into, const BT* addend) const {
    const ParamStore::Fold* f = ps->fold(w);
    Y5_CHECK(f && x.c == c1, "ConvBN::forward_blocked: not fused, or %d input channels for %d", x.c, c1);
    return bconv(r, x, f->w.ptr<float>(), f->b.ptr<float>(), c2, k, s, p, act, into, addend);
}

// The planes of a blocked tensor (one per channel block) over the run's threads.
static void planes(const BRun& r, const BT& t, const std::function<void(int64_t)>& fn) {
    r.par((t.c + r.B - 1) / r.B, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) fn(p);
    });
}

Shape ConvBN::out_shape(Shape in) const {
    return Shape{in[0], c2, conv_out(in[2]), conv_out(in[3])};
}

int64_t ConvBN::conv_out(int64_t h) const { return (h + 2 * p - k) / s + 1; }

double ConvBN::macs(Shape in) const {
    double out = (double)out_shape(in).numel();
    return out * c1 * k * k + 4 * out;
}

// ----------------------------------------------------------------------------------------------------
// Conv, Bottleneck, C3

namespace {

struct Conv : Module {
    ConvBN cv;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        return {cv.forward(c, in[0], training)};
    }
    Shape out_shape(const std::vector<Shape>& in) const override { return cv.out_shape(in[0]); }
    double macs(const std::vector<Shape>& in) const override { return cv.macs(in[0]); }
    int torch_modules() const override { return 3; }  // Conv, Conv2d, BatchNorm2d (the activation is shared)
    bool blocked(int, bool) const override { return dnnl_post_op(cv.act); }
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override { return cv.forward_blocked(r, in[0]); }
    int64_t conv_values(const std::vector<Shape>& in) const override { return cv.values(in[0]); }
};

// Bottleneck(c1, c2, shortcut, e=1.0 inside C3 / 0.5 alone): cv2(cv1(x)) (+ x when shortcut and c1 == c2)
struct BottleneckBlock {
    ConvBN cv1, cv2;
    bool add = false;
    void setup(ParamStore& ps, const std::string& prefix, int c1, int c2, bool shortcut, double e, Act act) {
        int c_ = (int)(c2 * e);
        cv1.setup(ps, prefix + ".cv1", c1, c_, 1, 1, 0, act);
        cv2.setup(ps, prefix + ".cv2", c_, c2, 3, 1, 1, act);
        add = shortcut && c1 == c2;
    }
    Var forward(Ctx& c, const Var& x, bool training) const {
        const Var h = cv1.forward(c, x, training), y = cv2.forward(c, h, training);
        drop(c, h, y);
        if (!add) return y;
        const Var s = ::y5::add(c, x, y);
        drop(c, y, s);
        return s;
    }
    Shape out_shape(Shape in) const { return cv2.out_shape(cv1.out_shape(in)); }
    double macs(Shape in) const { return cv1.macs(in) + cv2.macs(cv1.out_shape(in)); }
    int64_t params() const { return cv1.params() + cv2.params(); }
    int64_t values(Shape in) const { return cv1.values(in) + cv2.values(cv1.out_shape(in)); }
};

struct Bottleneck : Module {
    BottleneckBlock b;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        return {b.forward(c, in[0], training)};
    }
    Shape out_shape(const std::vector<Shape>& in) const override { return b.out_shape(in[0]); }
    double macs(const std::vector<Shape>& in) const override { return b.macs(in[0]); }
    int torch_modules() const override { return 7; }
    int64_t conv_values(const std::vector<Shape>& in) const override { return b.values(in[0]); }
    bool blocked(int, bool nchw_in) const override {
        return !nchw_in && dnnl_post_op(b.cv1.act) && dnnl_post_op(b.cv2.act);
    }
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        const BT t = b.cv1.forward_blocked(r, in[0]);
        return b.cv2.forward_blocked(r, t, nullptr, b.add ? &in[0] : nullptr);
    }
};

// C3(c1, c2, n, shortcut): cv3(cat(m(cv1(x)), cv2(x))), c_ = c2/2, m = n Bottlenecks(c_, c_, e=1.0).
// Neither concat is built: x may arrive as a Concat's parts, and cv3 (1×1) reads its two halves in place.
struct C3 : Module {
    ConvBN cv1, cv2, cv3;
    std::vector<BottleneckBlock> m;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        Var y = cv1.forward(c, in, training);
        for (const BottleneckBlock& b : m) {
            const Var next = b.forward(c, y, training);
            drop(c, y, next);
            y = next;
        }
        const Var y2 = cv2.forward(c, in, training), out = cv3.forward(c, std::vector<Var>{y, y2}, training);
        drop(c, y, out);
        drop(c, y2, out);
        return {out};
    }
    bool takes_parts() const override { return true; }
    Shape out_shape(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv3.out_shape(Shape{h[0], 2 * h[1], h[2], h[3]});
    }
    double macs(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        double t = cv1.macs(in[0]) + cv2.macs(in[0]);
        for (const BottleneckBlock& b : m) t += b.macs(h);
        return t + cv3.macs(Shape{h[0], 2 * h[1], h[2], h[3]});
    }
    int torch_modules() const override { return 11 + 7 * (int)m.size(); }  // C3, 3 Conv, Sequential, Bottlenecks
    bool blocked(int B, bool) const override {
        bool ok = cv1.c2 % B == 0 && dnnl_post_op(cv1.act) && dnnl_post_op(cv2.act) && dnnl_post_op(cv3.act);
        for (const BottleneckBlock& b : m) ok = ok && dnnl_post_op(b.cv1.act) && dnnl_post_op(b.cv2.act);
        return ok;
    }
    // cat = (m(cv1(x)), cv2(x)) built in place: the last of cv1 and the Bottlenecks writes the first half (a
    // shortcut adds the Bottleneck's input inside its cv2), cv2 the second half.
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        const BT& x = in[0];
        const int c_ = cv1.c2, h = (int)cv1.conv_out(x.h), w = (int)cv1.conv_out(x.w);
        const BT cat = r.alloc(2 * c_, h, w), half = cat.part(0, c_, r.B);
        BT cur = cv1.forward_blocked(r, x, m.empty() ? &half : nullptr);
        for (size_t i = 0; i < m.size(); ++i) {
            const BT t = m[i].cv1.forward_blocked(r, cur);
            cur = m[i].cv2.forward_blocked(r, t, i + 1 == m.size() ? &half : nullptr, m[i].add ? &cur : nullptr);
        }
        const BT second = cat.part(c_, c_, r.B);
        cv2.forward_blocked(r, x, &second);
        return cv3.forward_blocked(r, cat);
    }
    int64_t conv_values(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        int64_t v = cv1.values(in[0]) + cv2.values(in[0]) + cv3.values(Shape{h[0], 2 * h[1], h[2], h[3]});
        for (const BottleneckBlock& b : m) v += b.values(h);
        return v;
    }
};

// SPPF(c1, c2, k): x = cv1(x); y1 = m(x); y2 = m(y1); cv2(cat(x, y1, y2, m(y2))), m = MaxPool2d(k, 1, k//2)
struct SPPF : Module {
    ConvBN cv1, cv2;
    int k = 5;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        const Var h = cv1.forward(c, in[0], training), p = sppf_pool(c, h, k);  // the cascade, fused
        drop(c, h, p);
        const Var out = cv2.forward(c, p, training);
        drop(c, p, out);
        return {out};
    }
    Shape out_shape(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv2.out_shape(Shape{h[0], 4 * h[1], h[2], h[3]});
    }
    double macs(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv1.macs(in[0]) + cv2.macs(Shape{h[0], 4 * h[1], h[2], h[3]});
    }
    int torch_modules() const override { return 8; }  // SPPF, 2 Conv, MaxPool2d
    bool blocked(int B, bool) const override {
        return cv1.c2 % B == 0 && dnnl_post_op(cv1.act) && dnnl_post_op(cv2.act);
    }
    // cat(x, y1, y2, y3) built in place: cv1 writes the first quarter, each pool the next from the one before.
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        return forward_pools(r, in[0], cv1, cv2, {k, k, k}, true);
    }
    // SPPF's cascade (each pool of the previous part) or SPP's pools of x (cascade false).
    static BT forward_pools(BRun& r, const BT& x, const ConvBN& cv1, const ConvBN& cv2, const std::vector<int>& ks,
                            bool cascade) {
        const int c_ = cv1.c2, h = (int)cv1.conv_out(x.h), w = (int)cv1.conv_out(x.w), B = r.B;
        const BT cat = r.alloc((int)(ks.size() + 1) * c_, h, w), first = cat.part(0, c_, B);
        cv1.forward_blocked(r, x, &first);
        float* rowmax = r.scratch((size_t)c_ * h * w);
        const int64_t plane = (int64_t)h * w * B;
        for (size_t i = 0; i < ks.size(); ++i) {
            const BT src = cat.part(cascade ? (int)i * c_ : 0, c_, B), dst = cat.part((int)(i + 1) * c_, c_, B);
            planes(r, dst, [&](int64_t p) {
                maxpool_s1_blocked(dst.p + p * plane, rowmax + p * plane, src.p + p * plane, h, w, B, ks[i]);
            });
        }
        return cv2.forward_blocked(r, cat);
    }
    int64_t conv_values(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv1.values(in[0]) + cv2.values(Shape{h[0], 4 * h[1], h[2], h[3]});
    }
};

// SPP(c1, c2, k=(5, 9, 13)): x = cv1(x); cv2(cat(x, *(pool_k(x) for k)))
struct SPP : Module {
    ConvBN cv1, cv2;
    std::vector<int> ks;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        Var x = cv1.forward(c, in[0], training);
        std::vector<Var> parts = {x};
        for (int k : ks) parts.push_back(maxpool2d(c, x, k, 1, k / 2));
        return {cv2.forward(c, concat(c, parts), training)};
    }
    Shape out_shape(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv2.out_shape(Shape{h[0], (int64_t)(ks.size() + 1) * h[1], h[2], h[3]});
    }
    double macs(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv1.macs(in[0]) + cv2.macs(Shape{h[0], (int64_t)(ks.size() + 1) * h[1], h[2], h[3]});
    }
    int torch_modules() const override { return 8 + (int)ks.size(); }  // SPP, 2 Conv, ModuleList, pools
    bool blocked(int B, bool) const override {
        return cv1.c2 % B == 0 && dnnl_post_op(cv1.act) && dnnl_post_op(cv2.act);
    }
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        return SPPF::forward_pools(r, in[0], cv1, cv2, ks, false);
    }
    int64_t conv_values(const std::vector<Shape>& in) const override {
        Shape h = cv1.out_shape(in[0]);
        return cv1.values(in[0]) + cv2.values(Shape{h[0], (int64_t)(ks.size() + 1) * h[1], h[2], h[3]});
    }
};

// Focus(c1, c2, k, s, p): conv(cat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]))
struct Focus : Module {
    ConvBN conv;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override {
        return {conv.forward(c, space_to_depth2(c, in[0]), training)};
    }
    Shape out_shape(const std::vector<Shape>& in) const override {
        return conv.out_shape(Shape{in[0][0], 4 * in[0][1], in[0][2] / 2, in[0][3] / 2});
    }
    double macs(const std::vector<Shape>& in) const override {
        return conv.macs(Shape{in[0][0], 4 * in[0][1], in[0][2] / 2, in[0][3] / 2});
    }
    int torch_modules() const override { return 4; }
    int64_t conv_values(const std::vector<Shape>& in) const override {
        return conv.values(Shape{in[0][0], 4 * in[0][1], in[0][2] / 2, in[0][3] / 2});
    }
};

// ECA (Efficient Channel Attention, Wang et al. 2020; a y5 extension, not in YOLOv5): x · σ(conv1d_k(avgpool(x)))
// across channels, no bias; parameter "conv.weight" (1, 1, k).
struct ECA : Module {
    ParamStore* ps = nullptr;
    int w = -1, k = 3;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool) override {
        const Param& p = (*ps)[w];
        Var wv = c.tape->param(p.value, p.grad);
        Var flat{wv.t.view({k}), wv.id};
        return {eca(c, in[0], flat)};  // x·σ(conv1d(avgpool(x))), fused
    }
    Shape out_shape(const std::vector<Shape>& in) const override { return in[0]; }
    double macs(const std::vector<Shape>& in) const override {
        double C = (double)in[0][1], HW = (double)(in[0][2] * in[0][3]);
        return C * (HW + 1) + C * k;  // thop: adaptive avg pool (adds + 1 divide per output), Conv1d
    }
    int torch_modules() const override { return 4; }  // ECA, AdaptiveAvgPool2d, Conv1d, Sigmoid
};

struct Upsample : Module {
    int scale = 2;
    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool) override {
        return {upsample_nearest(c, in[0], scale)};
    }
    Shape out_shape(const std::vector<Shape>& in) const override {
        return Shape{in[0][0], in[0][1], in[0][2] * scale, in[0][3] * scale};
    }
    double macs(const std::vector<Shape>&) const override { return 0; }
    int torch_modules() const override { return 1; }
    bool blocked(int, bool nchw_in) const override { return !nchw_in; }
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        const BT& x = in[0];
        const BT y = r.alloc(x.c, x.h * scale, x.w * scale);
        planes(r, y, [&](int64_t p) {
            upsample_nearest_blocked(y.p + p * y.h * y.w * r.B, x.p + p * x.h * x.w * r.B, x.h, x.w, r.B, scale);
        });
        return y;
    }
};

// Concat returns its inputs as parts: the consumer (a C3 in every YOLOv5 head) reads them in place, and the model
// concatenates them only for a module that cannot.
struct Concat : Module {
    std::vector<Var> forward(Ctx&, const std::vector<Var>& in, bool) override { return in; }
    bool takes_parts() const override { return true; }
    // Blocked: the parts' blocks one after the other (the model checks that every part is whole blocks).
    bool blocked(int, bool nchw_in) const override { return !nchw_in; }
    BT forward_blocked(BRun& r, const std::vector<BT>& in) const override {
        int c = 0;
        for (const BT& t : in) c += t.c;
        const BT y = r.alloc(c, in[0].h, in[0].w);
        float* o = y.p;
        for (const BT& t : in) {
            Y5_CHECK(t.c % r.B == 0 && t.h == y.h && t.w == y.w, "Concat (blocked): part (%d,%d,%d)", t.c, t.h, t.w);
            std::memcpy(o, t.p, (size_t)t.c * t.h * t.w * sizeof(float));
            o += (int64_t)t.c * t.h * t.w;
        }
        return y;
    }
    Shape out_shape(const std::vector<Shape>& in) const override {
        Shape s = in[0];
        s[1] = 0;
        for (const Shape& i : in) s[1] += i[1];
        return s;
    }
    double macs(const std::vector<Shape>&) const override { return 0; }
    int torch_modules() const override { return 1; }
};

}  // namespace

// ----------------------------------------------------------------------------------------------------
// Factories

std::unique_ptr<Module> make_conv(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, int s, int p, Act act) {
    auto m = std::make_unique<Conv>();
    m->cv.setup(ps, prefix, c1, c2, k, s, p, act);
    m->c2 = c2;
    m->nparams = m->cv.params();
    return m;
}

std::unique_ptr<Module> make_bottleneck(ParamStore& ps, const std::string& prefix, int c1, int c2, bool shortcut, Act act) {
    auto m = std::make_unique<Bottleneck>();
    m->b.setup(ps, prefix, c1, c2, shortcut, 0.5, act);
    m->c2 = c2;
    m->nparams = m->b.params();
    return m;
}

std::unique_ptr<Module> make_c3(ParamStore& ps, const std::string& prefix, int c1, int c2, int n, bool shortcut, Act act) {
    auto m = std::make_unique<C3>();
    const int c_ = c2 / 2;  // int(c2 * 0.5)
    m->cv1.setup(ps, prefix + ".cv1", c1, c_, 1, 1, 0, act);
    m->cv2.setup(ps, prefix + ".cv2", c1, c_, 1, 1, 0, act);
    m->cv3.setup(ps, prefix + ".cv3", 2 * c_, c2, 1, 1, 0, act);
    m->m.resize(n);
    for (int i = 0; i < n; ++i) m->m[i].setup(ps, prefix + ".m." + std::to_string(i), c_, c_, shortcut, 1.0, act);
    m->c2 = c2;
    m->nparams = m->cv1.params() + m->cv2.params() + m->cv3.params();
    for (const auto& b : m->m) m->nparams += b.params();
    return m;
}

std::unique_ptr<Module> make_sppf(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, Act act) {
    auto m = std::make_unique<SPPF>();
    const int c_ = c1 / 2;
    m->cv1.setup(ps, prefix + ".cv1", c1, c_, 1, 1, 0, act);
    m->cv2.setup(ps, prefix + ".cv2", 4 * c_, c2, 1, 1, 0, act);
    m->k = k;
    m->c2 = c2;
    m->nparams = m->cv1.params() + m->cv2.params();
    return m;
}

std::unique_ptr<Module> make_spp(ParamStore& ps, const std::string& prefix, int c1, int c2, std::vector<int> ks, Act act) {
    auto m = std::make_unique<SPP>();
    const int c_ = c1 / 2;
    m->cv1.setup(ps, prefix + ".cv1", c1, c_, 1, 1, 0, act);
    m->cv2.setup(ps, prefix + ".cv2", c_ * ((int)ks.size() + 1), c2, 1, 1, 0, act);
    m->ks = std::move(ks);
    m->c2 = c2;
    m->nparams = m->cv1.params() + m->cv2.params();
    return m;
}

std::unique_ptr<Module> make_focus(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, int s, int p, Act act) {
    auto m = std::make_unique<Focus>();
    m->conv.setup(ps, prefix + ".conv", 4 * c1, c2, k, s, p, act);
    m->c2 = c2;
    m->nparams = m->conv.params();
    return m;
}

std::unique_ptr<Module> make_eca(ParamStore& ps, const std::string& prefix, int c, int k) {
    auto m = std::make_unique<ECA>();
    m->ps = &ps;
    m->k = k;
    m->w = ps.add(prefix + ".conv.weight", {1, 1, k}, ParamKind::Weight);
    m->c2 = c;
    m->nparams = k;
    return m;
}

std::unique_ptr<Module> make_upsample(int c, int scale) {
    auto m = std::make_unique<Upsample>();
    m->scale = scale;
    m->c2 = c;
    return m;
}

std::unique_ptr<Module> make_concat(int c2) {
    auto m = std::make_unique<Concat>();
    m->c2 = c2;
    return m;
}

// ----------------------------------------------------------------------------------------------------
// Detect

std::unique_ptr<Detect> make_detect(ParamStore& ps, const std::string& prefix, int nc,
                                    const std::vector<std::vector<float>>& anchors, const std::vector<int>& ch) {
    auto d = std::make_unique<Detect>();
    d->ps = &ps;
    d->nc = nc;
    d->no = nc + 5;
    d->nl = (int)anchors.size();
    d->na = (int)anchors[0].size() / 2;
    d->ch = ch;
    for (const auto& a : anchors) d->anchors_px.insert(d->anchors_px.end(), a.begin(), a.end());
    d->anchors = ps.add(prefix + ".anchors", {d->nl, d->na, 2}, ParamKind::Buffer);
    for (int i = 0; i < d->nl; ++i) {
        d->w.push_back(ps.add(prefix + ".m." + std::to_string(i) + ".weight", {d->na * d->no, ch[i], 1, 1}, ParamKind::Weight));
        d->b.push_back(ps.add(prefix + ".m." + std::to_string(i) + ".bias", {d->na * d->no}, ParamKind::Bias));
        d->nparams += (int64_t)d->na * d->no * (ch[i] + 1);
    }
    d->c2 = d->na * d->no;
    return d;
}

std::vector<Var> Detect::forward(Ctx& c, const std::vector<Var>& in, bool) {
    std::vector<Var> maps;
    for (int i = 0; i < nl; ++i) {
        Var bias = amp(c, param(c, *ps, b[i]));
        // (bs, na, ny, nx, no): the conv's (bs, na·no, ny, nx) output exists only in scratch
        maps.push_back(conv1x1_maps(c, amp(c, in[i]), amp(c, param(c, *ps, w[i])), &bias, na));
    }
    return maps;
}

// Each level: the 1×1 conv (bias, no activation) into a blocked buffer, its values put in map order (into maps, or
// with maps empty a grid row's buffer), decoded.
void Detect::forward_blocked(BRun& r, const std::vector<BT>& in, const std::vector<Tensor>& maps,
                             const Tensor& decoded, int64_t n) const {
    const int K = na * no;
    const int64_t total = decoded.dim(1);
    const float* anc = (*ps)[anchors].value.ptr<float>();
    int64_t offset = 0;
    for (int i = 0; i < nl; ++i) {
        const BT& x = in[i];
        Y5_CHECK(x.c == ch[i], "Detect (blocked): level %d has %d channels for %d", i, x.c, ch[i]);
        const BT y = bconv(r, x, (*ps)[w[i]].value.ptr<float>(), (*ps)[b[i]].value.ptr<float>(), K, 1, 1, 0, kNoAct,
                           nullptr, nullptr);
        const int64_t row = (int64_t)x.w * no, plane = x.h * row;  // one anchor's grid row, its whole map
        float* m = maps.empty() ? nullptr : maps[i].ptr<float>() + n * (int64_t)K * x.h * x.w;
        float* d = decoded.ptr<float>() + (n * total + offset) * no;
        r.par(x.h, [&](int64_t y0, int64_t y1) {
            thread_local std::vector<float> buf;  // no maps wanted: a grid row's values, all anchors
            if (!m && (int64_t)buf.size() < na * row) buf.resize(na * row);
            for (int gy = (int)y0; gy < (int)y1; ++gy) {  // a grid row at a time: its maps still in cache for the decode
                float* src = m ? m + gy * row : buf.data();
                const int64_t astride = m ? plane : row;
                detect_maps_from_blocked(src, astride, y.p, na, no, x.h, x.w, r.B, gy, gy + 1);
                for (int a = 0; a < na; ++a)
                    detect_decode_row_cpu<float>(d + a * plane + gy * row, src + a * astride, anc[2 * (na * i + a)],
                                                 anc[2 * (na * i + a) + 1], stride[i], x.w, no, gy);
            }
        });
        offset += (int64_t)na * x.h * x.w;
    }
}

double Detect::macs(const std::vector<Shape>& in) const {
    double t = 0;
    for (int i = 0; i < nl; ++i) t += (double)in[i][0] * na * no * in[i][2] * in[i][3] * (ch[i] + 1);
    return t;
}

Tensor Detect::decode(Ctx& c, const std::vector<Var>& maps) const {
    Y5_CHECK((int)maps.size() == nl, "Detect.decode: %zu maps for %d levels", maps.size(), nl);
    const int64_t bs = maps[0].t.dim(0);
    int64_t total = 0;
    for (const Var& m : maps) total += m.t.dim(1) * m.t.dim(2) * m.t.dim(3);
    const bool f16m = maps[0].t.dtype == DType::F16;  // mixed precision's maps: read as float, decoded into f32
    Tensor out = c.act->tensor(Shape{bs, total, no}, f16m ? DType::F32 : maps[0].t.dtype);
    const Tensor anc = (*ps)[anchors].value;
    int64_t offset = 0;
    for (int i = 0; i < nl; ++i) {
        const Tensor& m = maps[i].t;
        const int ny = m.dim(2), nx = m.dim(3);
        if (m.device == Device::CUDA) {
#if Y5_CUDA
            Y5_CHECK((m.dtype == DType::F32 || m.dtype == DType::F16) && anc.device == Device::CUDA, "Detect.decode: "
                     "CUDA maps must be f32 or f16 with the anchors on the device, got %s and %s", m.str().c_str(),
                     anc.str().c_str());
            if (f16m)
                detect_decode_cuda(out.ptr<float>(), m.ptr<f16>(), anc.ptr<float>() + 2 * na * i, stride[i], (int)bs, na,
                                   ny, nx, no, total, offset, c.cuda->stream);
            else
                detect_decode_cuda(out.ptr<float>(), m.ptr<float>(), anc.ptr<float>() + 2 * na * i, stride[i], (int)bs,
                                   na, ny, nx, no, total, offset, c.cuda->stream);
#else
            Y5_FAIL("Detect.decode: CUDA tensor in a build without CUDA");
#endif
        } else {  // the CPU threads split the level's grid rows
            par(ny, [&](int64_t y0, int64_t y1) {
                if (m.dtype == DType::F64)
                    detect_decode_rows_cpu<double>(out.ptr<double>(), m.ptr<double>(), anc.ptr<double>() + 2 * na * i,
                                                   stride[i], bs, na, ny, nx, no, total, offset, (int)y0, (int)y1);
                else if (f16m)
                    detect_decode_rows_cpu<f16>(out.ptr<float>(), m.ptr<f16>(), anc.ptr<float>() + 2 * na * i,
                                                stride[i], bs, na, ny, nx, no, total, offset, (int)y0, (int)y1);
                else
                    detect_decode_rows_cpu<float>(out.ptr<float>(), m.ptr<float>(), anc.ptr<float>() + 2 * na * i,
                                                  stride[i], bs, na, ny, nx, no, total, offset, (int)y0, (int)y1);
            }, 4);
        }
        offset += (int64_t)na * ny * nx;
    }
    return out;
}

}  // namespace y5
