/*
 * Ops, each one function in the pattern of engine/ops/op.h (which also says how to add one): argument checks,
 * the output's shape, the forward (dispatch: the CPU reference over par() chunks, or the CUDA launcher) and
 * the backward (finish: recorded on the tape, the same two branches). The math lives in kernels/ (CPU
 * references in the headers, CUDA launchers in the .cu files); nothing here loops over elements.
 */
#include "engine/ops/op.h"

#include <array>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine/device/device.h"
#include "engine/core/threadpool.h"
#include "kernels/batchnorm.h"
#include "kernels/concat.h"
#include "kernels/conv2d.h"
#include "kernels/eca.h"
#include "kernels/elementwise.h"
#include "kernels/pool.h"
#include "kernels/reshape.h"
#include "kernels/upsample.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// Tensor utilities

void fill(Ctx& c, Tensor t, double v) {
    dispatch<kF16>("fill", t, [&](auto d) {
        using T = typename decltype(d)::T;
        if constexpr (d.cuda) {
            Y5_CHECK(c.cuda, "fill: CUDA tensor %s needs a CUDA context", t.str().c_str());
            fill_cuda(t.ptr<T>(), (acc_t<T>)v, t.numel(), stream(c));
        } else fill_cpu<T>(t.ptr<T>(), (acc_t<T>)v, t.numel());
    });
}

void copy(Ctx& c, Tensor dst, const Tensor& src) {
    Y5_CHECK(dst.shape == src.shape && dst.dtype == src.dtype, "copy: %s into %s", src.str().c_str(),
             dst.str().c_str());
    // A null context would mean the legacy default stream, not ordered with the context's non-blocking one.
    Y5_CHECK((dst.device == Device::CPU && src.device == Device::CPU) || c.cuda,
             "copy: %s into %s needs the context's CUDA context", src.str().c_str(), dst.str().c_str());
    if (dst.device == Device::CPU && src.device == Device::CPU) std::memcpy(dst.data, src.data, dst.bytes());
    else if (dst.device == Device::CUDA && src.device == Device::CPU) copy_host_to_device(dst.data, src.data, dst.bytes(), c.cuda);
    else if (dst.device == Device::CPU) copy_device_to_host(dst.data, src.data, dst.bytes(), c.cuda);
    else copy_device_to_device(dst.data, src.data, dst.bytes(), c.cuda);
}

void axpy(Ctx& c, Tensor y, double a, const Tensor& x, bool y_fresh) {
    check_same("axpy", y, x);
    Y5_CHECK(y.shape == x.shape, "axpy: y %s and x %s differ in shape", y.str().c_str(), x.str().c_str());
    dispatch<kF16>("axpy", y, [&](auto d) {
        using T = typename decltype(d)::T;
        if constexpr (d.cuda) {
            Y5_CHECK(c.cuda, "axpy: CUDA tensor %s but the context has no CUDA context", y.str().c_str());
            axpy_cuda(y.ptr<T>(), (acc_t<T>)a, x.ptr<T>(), y.numel(), y_fresh, stream(c));
        } else {
            T* yp = y.ptr<T>();
            const T* xp = x.ptr<T>();
            par(y.numel(), [&](int64_t i0, int64_t i1) {
                axpy_cpu<T>(yp + i0, (acc_t<T>)a, xp + i0, i1 - i0, y_fresh);
            }, kElemChunk);
        }
    });
}

// dst = src converted, or (add) dst += src converted: f32 ↔ f16 (or the same dtype), over par() chunks on the CPU.
static void convert_impl(Ctx& c, Tensor dst, const Tensor& src, bool add) {
    const char* op = add ? "convert_add" : "convert";
    Y5_CHECK(dst.shape.numel() == src.shape.numel() && dst.device == src.device, "%s: %s into %s", op,
             src.str().c_str(), dst.str().c_str());
    Y5_CHECK(dst.dtype != DType::F64 && src.dtype != DType::F64, "%s: %s into %s (f32 and f16 only)", op,
             src.str().c_str(), dst.str().c_str());
    const int64_t n = dst.numel();
    auto run = [&](auto* dp, const auto* sp) {
        if (dst.device == Device::CUDA) {
            if constexpr (kCudaBuild) {
                Y5_CHECK(c.cuda, "%s: CUDA tensor %s but the context has no CUDA context", op, dst.str().c_str());
                if constexpr (std::is_same_v<decltype(dp), decltype(sp)>) Y5_FAIL("%s: same dtype on CUDA", op);
                else if (add) cast_add_cuda(dp, sp, n, stream(c));
                else cast_cuda(dp, sp, n, stream(c));
            }
        } else {
            par(n, [&](int64_t i0, int64_t i1) {
                if (add) cast_add_cpu(dp + i0, sp + i0, i1 - i0);
                else cast_cpu(dp + i0, sp + i0, i1 - i0);
            }, kElemChunk);
        }
    };
    if (dst.dtype == DType::F16 && src.dtype == DType::F32) run(dst.ptr<f16>(), src.ptr<float>());
    else if (dst.dtype == DType::F32 && src.dtype == DType::F16) run(dst.ptr<float>(), src.ptr<f16>());
    else if (dst.dtype == src.dtype && add) axpy(c, dst, 1.0, src.view(dst.shape));
    else if (dst.dtype == src.dtype) copy(c, dst, src.view(dst.shape));
    else Y5_FAIL("%s: %s into %s", op, src.str().c_str(), dst.str().c_str());
}

void convert(Ctx& c, Tensor dst, const Tensor& src) { convert_impl(c, dst, src, false); }
void convert_add(Ctx& c, Tensor dst, const Tensor& src) { convert_impl(c, dst, src, true); }

Var cast(Ctx& c, const Var& x, DType to) {
    if (x.t.dtype == to) return x;
    check_ctx("cast", c, x.t);
    Tensor out = c.act->tensor(x.t.shape, to);
    convert(c, out, x.t);
    const Var y = finish<kF16>(c, "cast", out, {&x}, [&c, x](auto, const Var& y) {
        convert_add(c, c.tape->grad(x), c.tape->grad(y));
    });
    // A rebuildable constant's copy (the image under autocast) is rebuildable too: from x, itself rebuilt if dropped.
    if (c.recompute && !y.requires_grad() && c.tape->recomputable(x))
        return c.tape->rebuildable(out, [&c, x](Tensor dst) { convert(c, dst, c.tape->value(x)); });
    return y;
}

// ----------------------------------------------------------------------------------------------------
// conv2d

// The CPU convolutions' backward over grad_groups(N) groups of images: fn(g, slot, dw_g, db_g) for each group g,
// group 0 accumulating into dw/db themselves and groups 1..G−1 into zeroed partials of nw and K values that are
// added in group order afterwards. The groups depend on the batch alone, so the gradients have the same bits
// whatever the number of CPU threads and their timing; the threads take the groups in turn, and slot (< threads)
// names the thread's own scratch (its im2col buffer). dw/db may be null. extra: xfn(e, slot) for e < extra, tasks the
// slots take before the groups (the caller's own outputs; conv2d's weight gradient over wgrad_groups).
// f16: the gradients are summed in float (fn gets float partials, group 0's zeroed too), in the same order, and
// added into the f16 dw/db with one rounding each; from zeroed gradients that is the f32 result rounded once.
struct NoTasks {
    void operator()(int64_t, int64_t) const {}
};
template <class T, class F, class X = NoTasks>
static void par_weight_grads(Scratch& ws, T* dw, T* db, int64_t nw, int K, int G, F&& fn, int extra = 0,
                             X&& xfn = NoTasks{}) {
    using A = acc_t<T>;
    constexpr bool half = !std::is_same_v<A, T>;
    const int np = half ? G : G - 1;  // partials; f32/f64 accumulate group 0 into dw/db themselves
    A* pw = dw ? ws.get<A>(nw * np) : nullptr;
    A* pb = db ? ws.get<A>((int64_t)K * np) : nullptr;
    if (pb) fill_cpu(pb, A(0), (int64_t)K * np);
    auto part = [&](A* p, T* own, int64_t g, int64_t n) -> A* {
        if constexpr (half) return p + g * n;
        else return g ? p + (g - 1) * n : own;
    };
    // The tasks (the extra ones first, then the groups) taken in turn by the slots as they come free.
    const int S = grad_slots(G);
    std::atomic<int> next{0};
    par(S, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s)
            for (int t = next++; t < G + extra; t = next++) {
                if (t < extra) {
                    xfn(t, s);
                    continue;
                }
                const int64_t g = t - extra;
                A* gw = dw ? part(pw, dw, g, nw) : nullptr;
                if (gw && (half || g > 0)) std::memset(gw, 0, nw * sizeof(A));  // a partial, zeroed while it is hot
                fn(g, s, gw, db ? part(pb, db, g, K) : nullptr);
            }
    });
    // Each element's partials added in group order, the elements over the threads.
    if (dw)
        par(nw, [&](int64_t i0, int64_t i1) {
            for (int g = 1; g < G; ++g) axpy_cpu(part(pw, dw, 0, nw) + i0, A(1), part(pw, dw, g, nw) + i0, i1 - i0);
        }, kElemChunk);
    for (int g = 1; g < G && db; ++g) axpy_cpu(part(pb, db, 0, K), A(1), part(pb, db, g, K), (int64_t)K);
    if constexpr (half) {
        if (dw) cast_add_cpu(dw, pw, nw);
        if (db) cast_add_cpu(db, pb, (int64_t)K);
    }
}

// oneDNN f32: the Gb groups' blocked weight-gradient partials added in group order over the threads (element ranges),
// then into dw (kernels/conv2d_dnnl.h).
static void wgrad_blocked_finish(float* dw, float* pwb, int Gb, int C, int H, int W, int K, int R, int S, int stride,
                                 int pad) {
    const int64_t nb = (int64_t)conv2d_dnnl_wgrad_floats(C, H, W, K, R, S, stride, pad);
    par(nb, [&](int64_t i0, int64_t i1) { conv2d_dnnl_wgrad_sum(pwb, Gb, nb, i0, i1); }, kElemChunk);
    const int parts = nb >= kElemChunk ? conv2d_dnnl_wgrad_parts(C, H, W, K, R, S, stride, pad, cpu_op_threads()) : 1;
    par(parts, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) conv2d_dnnl_wgrad_finish(dw, pwb, C, H, W, K, R, S, stride, pad, (int)j, parts);
    });
}

// oneDNN f32: an op's weights reordered once, in ws, for all its calls of one pass (fprop, or dgrad when `dgrad`; bias
// and act as the fprop calls'), which take them as wre; null where there is nothing to prepare (`use` false, not
// f32, oneDNN off, or it reads (K,C,R,S) as it is) and the calls reorder per call.
template <class T>
static const float* prepared_weights(Scratch& ws, bool use, bool dgrad, bool bias, Act act, const T* w, int C, int H,
                                     int W, int K, int R, int S, int stride, int pad) {
    if constexpr (std::is_same_v<T, float>) {
        const int64_t n = conv2d_weights_run_elems(use, dgrad, bias, act, C, H, W, K, R, S, stride, pad);
        float* wre = ws.get<float>(n);
        // Over the threads (output-channel parts) where the weights are large enough to pay for it.
        const int parts = n >= kElemChunk ? conv2d_weights_run_parts(dgrad, bias, act, C, H, W, K, R, S, stride, pad,
                                                                     cpu_op_threads())
                                          : 1;
        par(parts, [&](int64_t j0, int64_t j1) {
            for (int64_t j = j0; j < j1; ++j)
                conv2d_weights_run(wre, dgrad, bias, act, w, C, H, W, K, R, S, stride, pad, (int)j, parts);
        });
        return wre;
    }
    return nullptr;
}

// CPU: the batch split into G groups of whole images, one per CPU thread, each with its own im2col buffer.
// CUDA: cuDNN (kernels/conv2d.cu). Each pass's workspace comes from Ctx::conv_work (else work) for the call; the
// algorithm (and so the size) is chosen on the first call for the geometry and cached.
// f16 (x, w, b and the output; mixed dtypes are an error): float arithmetic, one rounding per output and per
// gradient element; the CPU threads also get float scratch for one image and the weights (kernels/conv2d.h).
// act: applied to the output by the CPU forward (conv2d_act's inference path; kNoAct for conv2d itself).
static Var conv2d_impl(Ctx& c, const Var& x, const Var& w, const Var* b, int stride, int pad, Act act) {
    const char* op = "conv2d";
    check_rank(op, "input", x.t, 4);
    check_rank(op, "weight", w.t, 4);
    check_same(op, x.t, w.t);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3);
    const int K = w.t.dim(0), R = w.t.dim(2), S = w.t.dim(3);
    Y5_CHECK(w.t.dim(1) == C, "conv2d: input %s has %d channels but weight %s expects %lld", x.t.str().c_str(), C,
             w.t.str().c_str(), (long long)w.t.dim(1));
    Y5_CHECK(stride >= 1 && pad >= 0, "conv2d: stride %d, pad %d", stride, pad);
    Var bias = b ? *b : Var{};
    if (b) {
        check_same(op, x.t, b->t);
        Y5_CHECK(b->t.ndim() == 1 && b->t.dim(0) == K, "conv2d: bias %s does not match %d output channels",
                 b->t.str().c_str(), K);
    }
    const int Ho = conv_out_size(H, R, stride, pad), Wo = conv_out_size(W, S, stride, pad);
    Y5_CHECK(H + 2 * pad >= R && W + 2 * pad >= S, "conv2d: kernel %dx%d larger than padded input %s", R, S,
             x.t.str().c_str());
    Tensor out = c.act->tensor(Shape{N, K, Ho, Wo}, x.t.dtype);
    const Conv2dGeom g{N, C, H, W, K, R, S, stride, pad, x.t.dtype == DType::F16};
    int64_t ncol = conv2d_run_work_elems(x.t.dtype != DType::F64, C, H, W, K, R, S, stride, pad);
    const int64_t nscr = x.t.dtype == DType::F16 ? conv2d_f16_scratch_elems(C, H, W, K, R, S, Ho, Wo) : 0;
    const int G = std::min(N, cpu_op_threads());
    // oneDNN, fewer images than threads (batch-1 inference): each image's output channels split over the threads too.
    const int KS = conv_dnnl_on() && x.t.dtype != DType::F64 ? conv_k_parts(K, cpu_op_threads() / G) : 1;
    for (int j = 0; j < KS; ++j)
        ncol = std::max(ncol, conv2d_run_work_elems(true, C, H, W, conv_k_start(K, KS, j + 1) - conv_k_start(K, KS, j),
                                                    R, S, stride, pad));
    const int64_t in_img = (int64_t)C * H * W, out_img = (int64_t)K * Ho * Wo, P = (int64_t)Ho * Wo;
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>(), *wp = w.t.ptr<T>(), *bp = b ? b->t.ptr<T>() : nullptr;
        if constexpr (d.cuda) {
            Scratch ws(c.conv_work ? c.conv_work : c.work);
            const size_t bytes = conv2d_workspace_cuda(c.cuda, g, ConvPass::Fprop);
            conv2d_fprop_cuda(c.cuda, g, yp, xp, wp, bp, ws.get<char>((int64_t)bytes), bytes);
        } else {
            Scratch ws(c.work);
            acc_t<T>* col = ws.get<acc_t<T>>(ncol * G * KS);
            float* scr = ws.get<float>(nscr * G * KS);
            // Over whole images (KS 1): the weights reordered once for all the groups, not once per group.
            const float* wre = prepared_weights(ws, KS == 1, false, b != nullptr, act, wp, C, H, W, K, R, S, stride, pad);
            par(G * KS, [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t gi = t / KS;
                    const int n0 = (int)(N * gi / G), n1 = (int)(N * (gi + 1) / G);
                    const int k0 = conv_k_start(K, KS, (int)(t % KS)), k1 = conv_k_start(K, KS, (int)(t % KS) + 1);
                    acc_t<T>* cg = col ? col + t * ncol : nullptr;
                    const T* bk = bp ? bp + k0 : nullptr;
                    const int step = KS > 1 ? 1 : n1 - n0;  // split channels: one image at a time
                    for (int n = n0; n < n1; n += step) {
                        T* yk = yp + n * out_img + k0 * P;
                        const T* wk = wp + (int64_t)k0 * C * R * S;
                        if constexpr (std::is_same_v<T, f16>) {
                            conv2d_fprop_f16_cpu(yk, xp + n * in_img, wk, bk, cg, scr + t * nscr, step, C, H, W,
                                                 k1 - k0, R, S, stride, pad);
                            if (act.kind != ActKind::Identity) act_forward_cpu<T>(yk, yk, step * (k1 - k0) * P, act);
                        } else {
                            conv2d_fprop_run<T>(yk, xp + n * in_img, wk, bk, cg, step, C, H, W, k1 - k0, R, S, stride,
                                                pad, act, wre);
                        }
                    }
                }
            });
        }
    });
    return finish<kF16>(c, op, out, {&x, &w, b}, [&c, x, w, bias, g, ncol, nscr, in_img, out_img](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        bool dx_fresh;  // CUDA: dgrad writes dx; CPU: each group zeroes its images' dx before its dgrad adds to it
        T *dx = grad_ptr_lazy<T>(c, x, &dx_fresh), *dw = grad_ptr<T>(c, w), *db = grad_ptr<T>(c, bias);
        const T* dy = c.tape->grad(y).template ptr<T>();
        const T* xp = dw ? c.tape->value(x).template ptr<T>() : x.t.ptr<T>();  // read for dw only: recomputed if dropped
        if constexpr (d.cuda) {
            // dgrad and wgrad run one after the other on the stream, so they share one workspace.
            size_t bytes = 0;
            if (dx) bytes = conv2d_workspace_cuda(c.cuda, g, ConvPass::Dgrad);
            if (dw) bytes = std::max(bytes, conv2d_workspace_cuda(c.cuda, g, ConvPass::Wgrad));
            Scratch ws(c.conv_work ? c.conv_work : c.work);
            void* wsp = ws.get<char>((int64_t)bytes);
            if (dx) conv2d_dgrad_cuda(c.cuda, g, dx, dy, w.t.ptr<T>(), wsp, bytes, dx_fresh);
            if (dw || db) conv2d_wgrad_cuda(c.cuda, g, dw, db, dy, xp, wsp, bytes);
        } else {
            using A = acc_t<T>;
            Scratch ws(c.work);
            const int Gb = grad_groups(g.N);
            // oneDNN f32: each group's weight gradient summed in oneDNN's blocked layout, the groups' sums added in
            // group order, then one reorder adds them into dw (kernels/conv2d_dnnl.h); the bias as below.
            const bool blocked = std::is_same_v<T, float> && dw && conv_dnnl_on() &&
                                 !conv_gemm_wgrad(g.R, g.S, g.stride, g.pad, out_img / g.K);
            const int64_t nwb =
                blocked ? (int64_t)conv2d_dnnl_wgrad_floats(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad) : 0;
            // Small maps: the weight gradient over Gw < Gb larger groups, one oneDNN call each (engine/ops/op.h,
            // wgrad_groups), taken by the slots beside the Gb groups' dgrad; channels counted as oneDNN pads them.
            const int64_t pixels = out_img / g.K;
            int Gw = blocked ? wgrad_groups(g.N, dnnl_padded_channels(g.C) * g.H * g.W,
                                            dnnl_padded_channels(g.K) * pixels, pixels)
                             : Gb;
            const int mw = (g.N + Gw - 1) / Gw;  // the groups have mw or mw − 1 images
            const bool grouped =
                Gw < Gb && conv2d_dnnl_wgrad_group_ok(mw, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad) &&
                conv2d_dnnl_wgrad_group_ok(std::max(mw - 1, 1), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
            if (!grouped) Gw = Gb;
            const int64_t nslot =
                grouped ? std::max(ncol, (int64_t)((conv2d_dnnl_wgrad_group_bytes(mw, g.C, g.H, g.W, g.K, g.R, g.S,
                                                                                  g.stride, g.pad) +
                                                    sizeof(A) - 1) / sizeof(A)))
                        : ncol;
            float* pwb = ws.get<float>(nwb * Gw);
            A* col = ws.get<A>(nslot * grad_slots(Gb));
            float* scr = ws.get<float>(nscr * grad_slots(Gb));
            const float* wre = prepared_weights(ws, dx != nullptr, true, false, kNoAct, w.t.ptr<T>(), g.C, g.H, g.W,
                                                g.K, g.R, g.S, g.stride, g.pad);  // dgrad's, once for all the groups
            par_weight_grads<T>(ws, blocked ? nullptr : dw, db, (int64_t)g.K * g.C * g.R * g.S, g.K, Gb,
                                [&](int64_t gi, int64_t slot, A* gw, A* gb) {
                const int n0 = (int)(g.N * gi / Gb), n1 = (int)(g.N * (gi + 1) / Gb);
                if (dx_fresh) std::memset(dx + n0 * in_img, 0, (n1 - n0) * in_img * sizeof(T));
                A* cs = col ? col + slot * nslot : nullptr;
                if constexpr (std::is_same_v<T, float>)
                    if (blocked) {
                        if (grouped)  // the weight gradient in the extra tasks
                            conv2d_backward_run<T>(dx ? dx + n0 * in_img : nullptr, nullptr, gb, dy + n0 * out_img,
                                                   nullptr, w.t.ptr<T>(), cs, n1 - n0, g.C, g.H, g.W, g.K, g.R, g.S,
                                                   g.stride, g.pad, wre);
                        else
                            conv2d_backward_blocked_run(dx ? dx + n0 * in_img : nullptr, pwb + gi * nwb, gb,
                                                        dy + n0 * out_img, xp + n0 * in_img, w.t.ptr<T>(), cs, n1 - n0,
                                                        g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, wre);
                        return;
                    }
                if constexpr (std::is_same_v<T, f16>)
                    conv2d_backward_f16_cpu(dx ? dx + n0 * in_img : nullptr, gw, gb, dy + n0 * out_img,
                                            xp + n0 * in_img, w.t.ptr<T>(), cs, scr + slot * nscr, n1 - n0,
                                            g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
                else
                    conv2d_backward_run<T>(dx ? dx + n0 * in_img : nullptr, gw, gb, dy + n0 * out_img,
                                           xp + n0 * in_img, w.t.ptr<T>(), cs, n1 - n0, g.C, g.H, g.W, g.K,
                                           g.R, g.S, g.stride, g.pad, wre);
            }, grouped ? Gw : 0, [&](int64_t gi, int64_t slot) {
                if constexpr (std::is_same_v<T, float>) {
                    const int n0 = (int)(g.N * gi / Gw), n1 = (int)(g.N * (gi + 1) / Gw);
                    conv2d_dnnl_wgrad_group(pwb + gi * nwb, dy + n0 * out_img, xp + n0 * in_img, col + slot * nslot,
                                            n1 - n0, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
                }
            });
            if constexpr (std::is_same_v<T, float>)
                if (blocked)
                    wgrad_blocked_finish(dw, pwb, Gw, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        }
    });
}

Var conv2d(Ctx& c, const Var& x, const Var& w, const Var* b, int stride, int pad) {
    return conv2d_impl(c, x, w, b, stride, pad, kNoAct);
}

// y = conv(...), then act(y) by the activation op, y released to a tracking arena (inference's liveness).
template <class ConvFn> static Var conv_then_act(Ctx& c, Act act, ConvFn&& conv) {
    const Var y = conv();
    const Var a = activation(c, y, act);
    if (c.act->tracking() && !c.tape->recording()) c.act->release(y.t.data);
    return a;
}

Var conv2d_act(Ctx& c, const Var& x, const Var& w, const Var* b, int stride, int pad, Act act) {
    if (act.kind == ActKind::Identity) return conv2d(c, x, w, b, stride, pad);
    if (x.t.device != Device::CPU || c.tape->recording())
        return conv_then_act(c, act, [&] { return conv2d(c, x, w, b, stride, pad); });
    return conv2d_impl(c, x, w, b, stride, pad, act);
}

// The most images of a CUDA chunk: their staging (img_bytes each: Detect's (K, H, W) maps, the f16 parts' float
// sums) and a pass's cuDNN workspace fit in what the arena has free (halving from all N; at least 1). The arena
// (Ctx::conv_work, else the work arena) is sized for cuDNN's capped workspace and one image's staging (recorded in
// Ctx::staged when measuring: the plan's StepMemory::staged), so k = 1 always fits and the staging costs no memory
// that grows with the batch.
inline int stage_chunk_cuda(Ctx& c, Arena* a, Conv2dGeom g, int64_t img_bytes,
                            std::initializer_list<ConvPass> passes) {
    if (c.staged) *c.staged = std::max(*c.staged, (size_t)img_bytes + 5 * Arena::kAlign);
    const size_t free_b = a->capacity() - a->used();
    for (int k = g.N;; k = (k + 1) / 2) {
        g.N = k;
        size_t ws = 0;
        for (ConvPass p : passes) ws = std::max(ws, conv2d_workspace_cuda(c.cuda, g, p));
        if (k == 1 || (size_t)k * img_bytes + ws + 4 * Arena::kAlign <= free_b) return k;
    }
}

// A 1×1 convolution over the parts' channels in turn, with each part's own pointer (per group of images on the
// CPU); the backward's CUDA weight gradient needs conv1x1_parts_workspace_cuda bytes of scratch, the f16 forward
// conv1x1_parts_fprop_workspace_cuda bytes (its float sum). f16 as conv2d: float arithmetic, one rounding per
// element; on the CPU with float scratch per thread (kernels/conv2d.h).
static Var conv2d_parts_impl(Ctx& c, const std::vector<Var>& xs, const Var& w, const Var* b, Act act) {
    const char* op = "conv2d_parts";
    Y5_CHECK(!xs.empty(), "conv2d_parts: no inputs");
    if (xs.size() == 1) return conv2d_impl(c, xs[0], w, b, 1, 0, act);
    const int m = (int)xs.size();
    Y5_CHECK(m <= kMaxConvParts, "conv2d_parts: %d parts, at most %d", m, kMaxConvParts);
    check_rank(op, "weight", w.t, 4);
    const int N = xs[0].t.dim(0), H = xs[0].t.dim(2), W = xs[0].t.dim(3), P = H * W, K = w.t.dim(0);
    std::array<int, kMaxConvParts> Cs{};
    int C = 0;
    for (int i = 0; i < m; ++i) {
        const Tensor& t = xs[i].t;
        check_rank(op, "input", t, 4);
        check_same(op, w.t, t);
        Y5_CHECK(t.dim(0) == N && t.dim(2) == H && t.dim(3) == W,
                 "conv2d_parts: part %s does not match %s outside the channel dimension", t.str().c_str(),
                 xs[0].t.str().c_str());
        Cs[i] = (int)t.dim(1);
        C += Cs[i];
    }
    check_ctx(op, c, xs[0].t);
    Y5_CHECK(w.t.dim(1) == C && w.t.dim(2) == 1 && w.t.dim(3) == 1,
             "conv2d_parts: weight %s must be (K, %d, 1, 1) for parts of %d channels in all", w.t.str().c_str(), C, C);
    Var bias = b ? *b : Var{};
    if (b) {
        check_same(op, w.t, b->t);
        Y5_CHECK(b->t.ndim() == 1 && b->t.dim(0) == K, "conv2d_parts: bias %s does not match %d output channels",
                 b->t.str().c_str(), K);
    }
    Tensor out = c.act->tensor(Shape{N, K, H, W}, xs[0].t.dtype);
    const int G = std::min(N, cpu_op_threads());
    static_assert(kMaxConvParts <= kConv1x1PartsMax, "the CPU parts runs take kMaxConvParts parts");
    const int64_t nscr = xs[0].t.dtype == DType::F16 ? conv1x1_parts_f16_scratch_elems(C, K, P) : 0;
    // oneDNN (f32): each group's parts copied into one buffer per image (nwk elements of work per thread); fewer
    // images than threads split the output channels as conv2d does (KS parts).
    const bool f32 = xs[0].t.dtype == DType::F32;
    const int KS = f32 && conv_dnnl_on() ? conv_k_parts(K, cpu_op_threads() / G) : 1;
    int64_t nwk = conv1x1_parts_run_work_elems(f32, C, K, P);
    for (int j = 0; j < KS; ++j)
        nwk = std::max(nwk, conv1x1_parts_run_work_elems(f32, C, conv_k_start(K, KS, j + 1) - conv_k_start(K, KS, j), P));
    dispatch<kF16>(op, xs[0].t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *wp = w.t.ptr<T>(), *bp = b ? b->t.ptr<T>() : nullptr;
        if constexpr (d.cuda) {
            const T* xp[kMaxConvParts];
            for (int i = 0; i < m; ++i) xp[i] = xs[i].t.ptr<T>();
            if constexpr (std::is_same_v<T, f16>) {
                // The parts' float sums staged for as many images as fit, at least one.
                Arena* sa = c.conv_work ? c.conv_work : c.work;
                Scratch ws(sa);
                const size_t img = conv1x1_parts_fprop_workspace_cuda(1, K, P, true);
                const int k = stage_chunk_cuda(c, sa, Conv2dGeom{N, C, H, W, K, 1, 1, 1, 0, true}, (int64_t)img, {});
                char* acc = ws.get<char>((int64_t)(k * img));
                for (int n0 = 0; n0 < N; n0 += k) {
                    const T* xk[kMaxConvParts];
                    for (int i = 0; i < m; ++i) xk[i] = xp[i] + (int64_t)n0 * Cs[i] * P;
                    conv1x1_parts_fprop_cuda(c.cuda, yp + (int64_t)n0 * K * P, xk, Cs.data(), m, wp, bp,
                                             std::min(k, N - n0), K, P, acc, k * img);
                }
            } else {
                conv1x1_parts_fprop_cuda(c.cuda, yp, xp, Cs.data(), m, wp, bp, N, K, P);
            }
        } else {
            Scratch ws(c.work);
            float* scr = ws.get<float>(nscr * G);
            T* wk = ws.get<T>(nwk * G * KS);
            // Over whole images (KS 1): the weights reordered once for all the images.
            const float* wre = prepared_weights(ws, KS == 1, false, b != nullptr, act, wp, C, 1, P, K, 1, 1, 1, 0);
            par(G * KS, [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) {
                    const int64_t g = t / KS;  // KS > 1: one image per group
                    const int n0 = (int)(N * g / G), n1 = (int)(N * (g + 1) / G);
                    const int k0 = conv_k_start(K, KS, (int)(t % KS)), k1 = conv_k_start(K, KS, (int)(t % KS) + 1);
                    const T* xp[kMaxConvParts];
                    for (int i = 0; i < m; ++i) xp[i] = xs[i].t.ptr<T>() + (int64_t)n0 * Cs[i] * P;
                    if constexpr (std::is_same_v<T, f16>) {
                        T* yg = yp + (int64_t)n0 * K * P;
                        conv1x1_parts_fprop_f16_cpu(yg, xp, Cs.data(), m, wp, bp, scr + g * nscr, n1 - n0, K, P);
                        if (act.kind != ActKind::Identity) act_forward_cpu<T>(yg, yg, (int64_t)(n1 - n0) * K * P, act);
                    } else {
                        conv1x1_parts_fprop_run<T>(yp + ((int64_t)n0 * K + k0) * P, xp, Cs.data(), m,
                                                   wp + (int64_t)k0 * C, bp ? bp + k0 : nullptr,
                                                   wk ? wk + t * nwk : nullptr, n1 - n0, k1 - k0, P, act, wre);
                    }
                }
            });
        }
    });
    const bool grad = any_grad(xs) || any_grad({&w, b});
    return finish<kF16>(c, op, out, grad, [&c, xs, w, bias, m, N, K, P, Cs, nscr, f32, C](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        Scratch ws(c.work);
        T* dxp[kMaxConvParts];
        bool fresh[kMaxConvParts];  // CUDA: written; CPU: each group zeroes its images' part of a fresh dx first
        for (int i = 0; i < m; ++i) dxp[i] = grad_ptr_lazy<T>(c, xs[i], &fresh[i]);
        T *dw = grad_ptr<T>(c, w), *db = grad_ptr<T>(c, bias);
        const T* dy = c.tape->grad(y).template ptr<T>();
        const T* xv[kMaxConvParts];  // the parts, recomputed if dropped
        for (int i = 0; i < m; ++i) xv[i] = dw ? c.tape->value(xs[i]).template ptr<T>() : xs[i].t.ptr<T>();
        if constexpr (d.cuda) {
            const T* xp[kMaxConvParts];
            for (int i = 0; i < m; ++i) xp[i] = xv[i];
            const size_t bytes = dw ? conv1x1_parts_workspace_cuda(N, K, Cs.data(), m) : 0;
            conv1x1_parts_backward_cuda(c.cuda, dxp, fresh, dw, db, dy, xp, Cs.data(), m, w.t.ptr<T>(), N, K, P,
                                        ws.get<char>((int64_t)bytes), bytes);
        } else {
            using A = acc_t<T>;
            const int Gb = grad_groups(N);
            float* scr = ws.get<float>(nscr * grad_slots(Gb));
            const int64_t nwk = conv1x1_parts_run_work_elems(f32, C, K, P);
            T* wk = ws.get<T>(nwk * grad_slots(Gb));
            // oneDNN f32: the weight gradient in blocked group partials, as conv2d's (a 1×1 conv over (C, 1, P)).
            const bool blocked = std::is_same_v<T, float> && dw && conv_dnnl_on() && !conv_gemm_wgrad(1, 1, 1, 0, P);
            const int64_t nwb = blocked ? (int64_t)conv2d_dnnl_wgrad_floats(C, 1, P, K, 1, 1, 1, 0) : 0;
            float* pwb = ws.get<float>(nwb * Gb);
            bool any_dx = false;  // the weights reordered for dgrad once for all the images
            for (int i = 0; i < m; ++i) any_dx = any_dx || dxp[i];
            const float* wre = prepared_weights(ws, any_dx, true, false, kNoAct, w.t.ptr<T>(), C, 1, P, K, 1, 1, 1, 0);
            par_weight_grads<T>(ws, blocked ? nullptr : dw, db, w.t.numel(), K, Gb,
                                [&](int64_t g, int64_t slot, A* gw, A* gb) {
                const int n0 = (int)(N * g / Gb), n1 = (int)(N * (g + 1) / Gb);
                const T* xg[kMaxConvParts];
                T* dxg[kMaxConvParts];
                for (int i = 0; i < m; ++i) {
                    const int64_t off = (int64_t)n0 * Cs[i] * P;
                    xg[i] = xv[i] + off;
                    dxg[i] = dxp[i] ? dxp[i] + off : nullptr;
                    if (fresh[i]) std::memset(dxg[i], 0, (int64_t)(n1 - n0) * Cs[i] * P * sizeof(T));
                }
                if constexpr (std::is_same_v<T, f16>)
                    conv1x1_parts_backward_f16_cpu(dxg, gw, gb, dy + (int64_t)n0 * K * P, xg, Cs.data(), m,
                                                   w.t.ptr<T>(), scr + slot * nscr, n1 - n0, K, P);
                else
                    conv1x1_parts_backward_run<T>(dxg, gw, gb, dy + (int64_t)n0 * K * P, xg, Cs.data(), m,
                                                  w.t.ptr<T>(), wk ? wk + slot * nwk : nullptr, n1 - n0, K, P,
                                                  blocked ? pwb + g * nwb : nullptr, wre);
            });
            if constexpr (std::is_same_v<T, float>)
                if (blocked)
                    wgrad_blocked_finish(dw, pwb, Gb, C, 1, P, K, 1, 1, 1, 0);
        }
    });
}

Var conv2d_parts(Ctx& c, const std::vector<Var>& xs, const Var& w, const Var* b) {
    return conv2d_parts_impl(c, xs, w, b, kNoAct);
}

Var conv2d_parts_act(Ctx& c, const std::vector<Var>& xs, const Var& w, const Var* b, Act act) {
    if (act.kind == ActKind::Identity) return conv2d_parts(c, xs, w, b);
    if (xs.empty() || xs[0].t.device != Device::CPU || c.tape->recording())
        return conv_then_act(c, act, [&] { return conv2d_parts(c, xs, w, b); });
    return conv2d_parts_impl(c, xs, w, b, act);
}

// ----------------------------------------------------------------------------------------------------
// batchnorm2d

// CPU: channels are independent, so par() splits them. CUDA: batchnorm_cuda_scratch(N, C, HW) floats of scratch
// per pass. Training saves the batch mean and invstd for the backward; eval reads the running statistics.
// dtypes: x f32 or f64 with per-channel tensors of the same dtype, or (mixed precision) x f16 with f32 ones; out
// and dx have x's dtype, the saved statistics and dgamma/dbeta the parameters' (A = acc_t<T>).
Var batchnorm2d(Ctx& c, const Var& x, const Var& gamma, const Var& beta, Tensor running_mean, Tensor running_var,
                bool training, float eps, float momentum, Act act) {
    const char* op = "batchnorm2d";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), HW = x.t.dim(2) * x.t.dim(3);
    const DType pdt = x.t.dtype == DType::F16 ? DType::F32 : x.t.dtype;  // the per-channel tensors' dtype
    for (const Tensor* t : std::initializer_list<const Tensor*>{&gamma.t, &beta.t, &running_mean, &running_var}) {
        Y5_CHECK(t->device == x.t.device, "batchnorm2d: tensors on different devices: %s and %s", x.t.str().c_str(),
                 t->str().c_str());
        Y5_CHECK(t->dtype == pdt, "batchnorm2d: input %s needs %s per-channel tensors, got %s", x.t.str().c_str(),
                 dtype_name(pdt), t->str().c_str());
        Y5_CHECK(t->ndim() == 1 && t->dim(0) == C, "batchnorm2d: per-channel tensor %s does not match input %s",
                 t->str().c_str(), x.t.str().c_str());
    }
    Y5_CHECK(!training || (int64_t)N * HW > 1,
             "batchnorm2d: training mode needs more than one value per channel, input %s", x.t.str().c_str());
    Tensor out = c.act->tensor(x.t.shape, x.t.dtype);
    Tensor mean, invstd;  // (C), training only
    if (training) {
        mean = c.act->tensor(Shape{C}, pdt);
        invstd = c.act->tensor(Shape{C}, pdt);
    }
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        using A = acc_t<T>;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        A *gp = gamma.t.ptr<A>(), *bp = beta.t.ptr<A>(), *rm = running_mean.ptr<A>(), *rv = running_var.ptr<A>();
        A *mp = training ? mean.ptr<A>() : nullptr, *ip = training ? invstd.ptr<A>() : nullptr;
        if constexpr (d.cuda) {
            Scratch ws(c.work);
            float* scratch = ws.get<float>(batchnorm_cuda_scratch(N, C, HW));
            if (training)
                batchnorm_forward_train_cuda(yp, mp, ip, rm, rv, xp, gp, bp, N, C, HW, eps, momentum, act, scratch,
                                             stream(c));
            else batchnorm_forward_eval_cuda(yp, xp, gp, bp, rm, rv, N, C, HW, eps, act, scratch, stream(c));
        } else {
            par(C, [&](int64_t c0, int64_t c1) {
                if (training)
                    batchnorm_forward_train_cpu<T>(yp, mp, ip, rm, rv, xp, gp, bp, N, C, HW, eps, momentum, act,
                                                   (int)c0, (int)c1);
                else
                    batchnorm_forward_eval_cpu<T>(yp, xp, gp, bp, rm, rv, N, C, HW, eps, act, (int)c0, (int)c1);
            });
        }
    });
    Var y = finish<kF16>(c, op, out, {&x, &gamma, &beta},
                        [&c, x, gamma, beta, mean, invstd, running_mean, running_var, training, eps, act, N, C,
                         HW](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        using A = acc_t<T>;
        // dx only when x wants one (the kernels take null gradients). Its first producer (a Conv's BN: always) writes
        // it in place of dy (Tape::grad_from), so the two never take memory at once; else it adds to it.
        const T* dy = c.tape->grad(y).template ptr<T>();
        const bool over = x.requires_grad() && !c.tape->has_grad(x);
        T* dx = over ? c.tape->grad_from(x, y).template ptr<T>() : grad_ptr<T>(c, x);
        A *dg = grad_ptr<A>(c, gamma), *db = grad_ptr<A>(c, beta);
        T* xp = c.tape->value(x).template ptr<T>();
        A *gp = gamma.t.ptr<A>(), *bp = beta.t.ptr<A>();
        if constexpr (d.cuda) {
            Scratch ws(c.work);
            float* scratch = ws.get<float>(batchnorm_cuda_scratch(N, C, HW));
            if (training)
                batchnorm_backward_train_cuda(dx, dg, db, dy, xp, gp, bp, mean.ptr<A>(), invstd.ptr<A>(), N, C, HW,
                                              act, over, scratch, stream(c));
            else
                batchnorm_backward_eval_cuda(dx, dg, db, dy, xp, gp, bp, running_mean.ptr<A>(), running_var.ptr<A>(),
                                             N, C, HW, eps, act, over, scratch, stream(c));
        } else {
            par(C, [&](int64_t c0, int64_t c1) {
                if (training)
                    batchnorm_backward_train_cpu<T>(dx, dg, db, dy, xp, gp, bp, mean.ptr<A>(), invstd.ptr<A>(), N, C,
                                                    HW, act, (int)c0, (int)c1, over);
                else
                    batchnorm_backward_eval_cpu<T>(dx, dg, db, dy, xp, gp, bp, running_mean.ptr<A>(),
                                                   running_var.ptr<A>(), N, C, HW, eps, act, (int)c0, (int)c1, over);
            });
        }
    });
    // Recomputation: the output again from x and the saved statistics, the forward's own normalising pass.
    if (c.recompute && training && y.requires_grad())
        c.tape->set_recompute(y, [&c, x, gamma, beta, mean, invstd, act, N, C, HW](Tensor dst) {
            dispatch<kF16>("batchnorm2d (recompute)", dst, [&](auto d) {
                using T = typename decltype(d)::T;
                using A = acc_t<T>;
                const T* xp = c.tape->value(x).template ptr<T>();
                T* yp = dst.ptr<T>();
                const A *mp = mean.ptr<A>(), *ip = invstd.ptr<A>(), *gp = gamma.t.ptr<A>(), *bp = beta.t.ptr<A>();
                if constexpr (d.cuda) batchnorm_apply_cuda(yp, xp, mp, ip, gp, bp, N, C, HW, act, stream(c));
                else par(C, [&](int64_t c0, int64_t c1) {
                    batchnorm_apply_cpu<T>(yp, xp, mp, ip, gp, bp, N, C, HW, act, (int)c0, (int)c1);
                });
            });
        });
    return y;
}

// ----------------------------------------------------------------------------------------------------
// activation, sigmoid

// Any shape, element by element: the CPU splits it into chunks of at least kElemChunk. f16: float math, one
// rounding per output.
Var activation(Ctx& c, const Var& x, Act a) {
    const char* op = "activation";
    check_ctx(op, c, x.t);
    Tensor out = c.act->tensor(x.t.shape, x.t.dtype);
    const int64_t n = x.t.numel();
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        if constexpr (d.cuda) act_forward_cuda(yp, xp, n, a, stream(c));
        else par(n, [&](int64_t b, int64_t e) { act_forward_cpu<T>(yp + b, xp + b, e - b, a); }, kElemChunk);
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, a, n](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T *dx = grad_ptr<T>(c, x), *xp = c.tape->value(x).template ptr<T>();
        const T* dy = c.tape->grad(y).template ptr<T>();
        if constexpr (d.cuda) act_backward_cuda(dx, dy, xp, n, a, stream(c));
        else par(n, [&](int64_t b, int64_t e) { act_backward_cpu<T>(dx + b, dy + b, xp + b, e - b, a); }, kElemChunk);
    });
}

Var sigmoid(Ctx& c, const Var& x) { return activation(c, x, Act{ActKind::Sigmoid, 0.f}); }

// ----------------------------------------------------------------------------------------------------
// maxpool2d, sppf_pool, upsample_nearest: the CPU splits the N·C planes, which are independent.

Var maxpool2d(Ctx& c, const Var& x, int k, int stride, int pad) {
    const char* op = "maxpool2d";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    Y5_CHECK(k >= 1 && stride >= 1 && pad >= 0 && 2 * pad <= k,
             "maxpool2d: kernel %d, stride %d, pad %d (PyTorch requires pad <= kernel/2)", k, stride, pad);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3);
    Y5_CHECK(H + 2 * pad >= k && W + 2 * pad >= k, "maxpool2d: kernel %d larger than padded input %s", k,
             x.t.str().c_str());
    const int Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
    Tensor out = c.act->tensor(Shape{N, C, Ho, Wo}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        if constexpr (d.cuda) maxpool2d_forward_cuda(yp, xp, N, C, H, W, k, stride, pad, stream(c));
        else
            par((int64_t)N * C, [&](int64_t p0, int64_t p1) {
                maxpool2d_forward_cpu<T>(yp + p0 * Ho * Wo, xp + p0 * H * W, 1, (int)(p1 - p0), H, W, k, stride, pad);
            });
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, N, C, H, W, Ho, Wo, k, stride, pad](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T *dx = grad_ptr<T>(c, x), *xp = c.tape->value(x).template ptr<T>();
        const T* dy = c.tape->grad(y).template ptr<T>();
        if constexpr (d.cuda) {
            Scratch ws(c.work);  // each output's argmax, as the CPU reference recomputes it
            maxpool2d_backward_cuda(dx, dy, xp, N, C, H, W, k, stride, pad, ws.get<int>((int64_t)N * C * Ho * Wo),
                                    stream(c));
        } else {
            par((int64_t)N * C, [&](int64_t p0, int64_t p1) {
                maxpool2d_backward_cpu<T>(dx + p0 * H * W, dy + p0 * Ho * Wo, xp + p0 * H * W, 1, (int)(p1 - p0), H, W,
                                          k, stride, pad);
            });
        }
    });
}

Var sppf_pool(Ctx& c, const Var& x, int k) {
    const char* op = "sppf_pool";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    Y5_CHECK(k >= 1 && k % 2 == 1, "sppf_pool: kernel %d (SPPF pools with an odd kernel, stride 1, pad k/2)", k);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3);
    const int64_t P = (int64_t)N * C;
    Tensor out = c.act->tensor(Shape{N, 4 * C, H, W}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        if constexpr (d.cuda) sppf_forward_cuda(yp, xp, N, C, H, W, k, stream(c));
        else par(P, [&](int64_t p0, int64_t p1) { sppf_forward_cpu<T>(yp, xp, p0, p1, C, H, W, k); });
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, N, C, H, W, P, k](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        Scratch ws(c.work);
        bool fresh;  // written, not added to: x's gradient has no other producer yet
        T *dx = grad_ptr_lazy<T>(c, x, &fresh), *yp = y.t.ptr<T>();
        const T* dy = c.tape->grad(y).template ptr<T>();
        if constexpr (d.cuda) {
            sppf_backward_cuda(dx, dy, yp, N, C, H, W, k, ws.get<char>((int64_t)sppf_cuda_scratch(N, C, H, W)), fresh,
                               stream(c));
        } else {
            // One range of planes per CPU thread, each with its own 3·H·W scratch (float for f16).
            const int R = (int)std::min<int64_t>(P, cpu_op_threads());
            acc_t<T>* scratch = ws.get<acc_t<T>>((int64_t)R * 3 * H * W);
            par(R, [&](int64_t r0, int64_t r1) {
                for (int64_t r = r0; r < r1; ++r)
                    sppf_backward_cpu<T>(dx, dy, yp, P * r / R, P * (r + 1) / R, C, H, W, k, scratch + r * 3 * H * W,
                                         fresh);
            });
        }
    });
}

Var upsample_nearest(Ctx& c, const Var& x, int s) {
    const char* op = "upsample_nearest";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    Y5_CHECK(s >= 1, "upsample_nearest: scale factor %d", s);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3);
    Tensor out = c.act->tensor(Shape{N, C, (int64_t)H * s, (int64_t)W * s}, x.t.dtype);
    auto forward = [&c, N, C, H, W, s](Tensor dst, const Tensor& src) {
        dispatch<kF16>("upsample_nearest", src, [&](auto d) {
            using T = typename decltype(d)::T;
            T *yp = dst.ptr<T>(), *xp = src.ptr<T>();
            if constexpr (d.cuda) upsample_nearest_forward_cuda(yp, xp, N, C, H, W, s, stream(c));
            else
                par((int64_t)N * C, [&](int64_t p0, int64_t p1) {
                    upsample_nearest_forward_cpu<T>(yp + p0 * H * W * s * s, xp + p0 * H * W, 1, (int)(p1 - p0), H, W,
                                                    s);
                });
        });
    };
    forward(out, x.t);
    Var y = finish<kF16>(c, op, out, {&x}, [&c, x, N, C, H, W, s](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T* dx = grad_ptr<T>(c, x);
        const T* dy = c.tape->grad(y).template ptr<T>();
        if constexpr (d.cuda) upsample_nearest_backward_cuda(dx, dy, N, C, H, W, s, stream(c));
        else
            par((int64_t)N * C, [&](int64_t p0, int64_t p1) {
                upsample_nearest_backward_cpu<T>(dx + p0 * H * W, dy + p0 * H * W * s * s, 1, (int)(p1 - p0), H, W, s);
            });
    });
    if (c.recompute && y.requires_grad())  // a copy of its input (itself rebuilt if dropped): s² times smaller kept
        c.tape->set_recompute(y, [&c, x, forward](Tensor dst) { forward(dst, c.tape->value(x)); });
    return y;
}

// ----------------------------------------------------------------------------------------------------
// concat, add

// Each input is copied into (and its gradient read back from) its channel range [c0, c0 + Ci) of the output.
Var concat(Ctx& c, const std::vector<Var>& xs) {
    const char* op = "concat";
    Y5_CHECK(!xs.empty(), "concat: no inputs");
    for (const Var& v : xs) {
        check_rank(op, "input", v.t, 4);
        check_same(op, xs[0].t, v.t);
        Y5_CHECK(v.t.dim(0) == xs[0].t.dim(0) && v.t.dim(2) == xs[0].t.dim(2) && v.t.dim(3) == xs[0].t.dim(3),
                 "concat: input %s does not match %s outside the channel dimension", v.t.str().c_str(),
                 xs[0].t.str().c_str());
    }
    check_ctx(op, c, xs[0].t);
    const int N = xs[0].t.dim(0), HW = xs[0].t.dim(2) * xs[0].t.dim(3);
    int Co = 0;
    for (const Var& v : xs) Co += v.t.dim(1);
    Tensor out = c.act->tensor(Shape{N, Co, xs[0].t.dim(2), xs[0].t.dim(3)}, xs[0].t.dtype);
    dispatch<kF16>(op, xs[0].t, [&](auto d) {
        using T = typename decltype(d)::T;
        int c0 = 0;
        for (const Var& v : xs) {
            Y5_CPU_OR_CUDA(concat_forward, out.ptr<T>(), v.t.ptr<T>(), N, v.t.dim(1), HW, Co, c0);
            c0 += v.t.dim(1);
        }
    });
    return finish<kF16>(c, op, out, any_grad(xs), [&c, xs, N, HW, Co](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        const T* dy = c.tape->grad(y).template ptr<T>();
        int c0 = 0;
        for (const Var& v : xs) {
            if (v.requires_grad()) {
                Y5_CPU_OR_CUDA(concat_backward, grad_ptr<T>(c, v), dy, N, v.t.dim(1), HW, Co, c0);
            }
            c0 += v.t.dim(1);
        }
    });
}

// out = a + b over n elements: the CUDA kernel, or the CPU's over par() chunks of at least kElemChunk.
template <class T, bool cuda> static void add_n(Ctx& c, T* out, const T* a, const T* b, int64_t n) {
    if constexpr (cuda) add_cuda(out, a, b, n, stream(c));
    else par(n, [&](int64_t i0, int64_t i1) { add_cpu<T>(out + i0, a + i0, b + i0, i1 - i0); }, kElemChunk);
}

Var add(Ctx& c, const Var& a, const Var& b) {
    const char* op = "add";
    check_same(op, a.t, b.t);
    Y5_CHECK(a.t.shape == b.t.shape, "add: shapes %s and %s differ", a.t.str().c_str(), b.t.str().c_str());
    check_ctx(op, c, a.t);
    Tensor out = c.act->tensor(a.t.shape, a.t.dtype);
    dispatch<kF16>(op, a.t, [&](auto d) {
        using T = typename decltype(d)::T;
        add_n<T, d.cuda>(c, out.ptr<T>(), a.t.ptr<T>(), b.t.ptr<T>(), out.numel());
    });
    // The backward adds dy into b's gradient, then into a's; a's first gradient is dy itself: y's gradient memory
    // handed over (Tape::grad_from), or a copy where it cannot be.
    Var y = finish<kF16>(c, op, out, {&a, &b}, [&c, a, b](auto, const Var& y) {  // axpy dispatches itself
        Tensor dy = c.tape->grad(y);
        if (b.requires_grad()) {
            bool fresh;
            const Tensor db = c.tape->grad_lazy(b, &fresh);
            axpy(c, db.view(dy.shape), 1.0, dy, fresh);
        }
        if (!a.requires_grad()) return;
        if (c.tape->has_grad(a)) {
            axpy(c, c.tape->grad(a).view(dy.shape), 1.0, dy);
        } else {
            Tensor da = c.tape->grad_from(a, y);
            if (da.data != dy.data) copy(c, da.view(dy.shape), dy);
        }
    });
    if (c.recompute && y.requires_grad())  // rebuilt from its inputs (themselves rebuilt if dropped)
        c.tape->set_recompute(y, [&c, a, b](Tensor dst) {
            const Tensor av = c.tape->value(a), bv = c.tape->value(b);
            dispatch<kF16>("add (recompute)", dst, [&](auto d) {
                using T = typename decltype(d)::T;
                add_n<T, d.cuda>(c, dst.ptr<T>(), av.ptr<T>(), bv.ptr<T>(), dst.numel());
            });
        });
    return y;
}

// ----------------------------------------------------------------------------------------------------
// global_avgpool, conv1d_channels, scale_channels, eca (ECA's pieces, and ECA fused)

Var global_avgpool(Ctx& c, const Var& x) {
    const char* op = "global_avgpool";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), HW = x.t.dim(2) * x.t.dim(3);
    Y5_CHECK(HW > 0, "global_avgpool: empty input %s", x.t.str().c_str());
    Tensor out = c.act->tensor(Shape{N, C}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        Y5_CPU_OR_CUDA(global_avgpool_forward, out.ptr<T>(), x.t.ptr<T>(), N, C, HW);
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, N, C, HW](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T* dx = grad_ptr<T>(c, x);
        const T* dy = c.tape->grad(y).template ptr<T>();
        Y5_CPU_OR_CUDA(global_avgpool_backward, dx, dy, N, C, HW);
    });
}

Var conv1d_channels(Ctx& c, const Var& x, const Var& w) {
    const char* op = "conv1d_channels";
    check_rank(op, "input", x.t, 2);
    check_rank(op, "weight", w.t, 1);
    check_same(op, x.t, w.t);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), k = w.t.dim(0);
    Y5_CHECK(k % 2 == 1, "conv1d_channels: kernel size %d must be odd", k);
    Tensor out = c.act->tensor(Shape{N, C}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>(), *wp = w.t.ptr<T>();
        Y5_CPU_OR_CUDA(conv1d_channels_forward, yp, xp, wp, N, C, k);
    });
    return finish<kF16>(c, op, out, {&x, &w}, [&c, x, w, N, C, k](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T *dx = grad_ptr<T>(c, x), *dw = grad_ptr<T>(c, w);
        const T* dy = c.tape->grad(y).template ptr<T>();
        Y5_CPU_OR_CUDA(conv1d_channels_backward, dx, dw, dy, c.tape->value(x).template ptr<T>(), w.t.ptr<T>(), N, C, k);
    });
}

Var scale_channels(Ctx& c, const Var& x, const Var& s) {
    const char* op = "scale_channels";
    check_rank(op, "input", x.t, 4);
    check_rank(op, "scale", s.t, 2);
    check_same(op, x.t, s.t);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), HW = x.t.dim(2) * x.t.dim(3);
    Y5_CHECK(s.t.dim(0) == N && s.t.dim(1) == C, "scale_channels: scale %s does not match input %s",
             s.t.str().c_str(), x.t.str().c_str());
    Tensor out = c.act->tensor(x.t.shape, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>(), *sp = s.t.ptr<T>();
        Y5_CPU_OR_CUDA(scale_channels_forward, yp, xp, sp, N, C, HW);
    });
    return finish<kF16>(c, op, out, {&x, &s}, [&c, x, s, N, C, HW](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T *dx = grad_ptr<T>(c, x), *ds = grad_ptr<T>(c, s);
        const T* dy = c.tape->grad(y).template ptr<T>();
        Y5_CPU_OR_CUDA(scale_channels_backward, dx, ds, dy, c.tape->value(x).template ptr<T>(),
                       c.tape->value(s).template ptr<T>(), N, C, HW);
    });
}

// Saves the (N,C) pooled means and gates for the backward, which takes N·C values of scratch. Mixed precision:
// with f16 x (and out, dx), w, its gradient, the means, gates and scratch stay f32.
Var eca(Ctx& c, const Var& x, const Var& w) {
    const char* op = "eca";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    const DType pdt = x.t.dtype == DType::F16 ? DType::F32 : x.t.dtype;  // w's, the means' and the gates' dtype
    Y5_CHECK(w.t.device == x.t.device && w.t.dtype == pdt, "eca: weight %s for input %s must be %s on its device",
             w.t.str().c_str(), x.t.str().c_str(), dtype_name(pdt));
    Y5_CHECK(w.t.ndim() == 1 && w.t.dim(0) % 2 == 1, "eca: weight %s must be (k) with k odd", w.t.str().c_str());
    const int N = x.t.dim(0), C = x.t.dim(1), HW = x.t.dim(2) * x.t.dim(3), k = w.t.dim(0);
    Tensor out = c.act->tensor(x.t.shape, x.t.dtype);
    Tensor pooled = c.act->tensor(Shape{N, C}, pdt), gate = c.act->tensor(Shape{N, C}, pdt);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        using A = acc_t<T>;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        A *pp = pooled.ptr<A>(), *gp = gate.ptr<A>(), *wp = w.t.ptr<A>();
        Y5_CPU_OR_CUDA(eca_forward, yp, pp, gp, xp, wp, N, C, HW, k);
    });
    return finish<kF16>(c, op, out, {&x, &w}, [&c, x, w, pooled, gate, N, C, HW, k](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        using A = acc_t<T>;
        Scratch ws(c.work);
        T *dx = grad_ptr<T>(c, x), *xp = c.tape->value(x).template ptr<T>();
        A *dw = grad_ptr<A>(c, w), *wp = w.t.ptr<A>(), *pp = pooled.ptr<A>(), *gp = gate.ptr<A>();
        A* scratch = ws.get<A>((int64_t)N * C);
        const T* dy = c.tape->grad(y).template ptr<T>();
        Y5_CPU_OR_CUDA(eca_backward, dx, dw, dy, xp, wp, pp, gp, N, C, HW, k, scratch);
    });
}

// ----------------------------------------------------------------------------------------------------
// transpose12, space_to_depth2

Var transpose12(Ctx& c, const Var& x, Shape out_shape) {
    const char* op = "transpose12";
    check_ctx(op, c, x.t);
    Y5_CHECK(x.t.ndim() == 3, "transpose12: input must be viewed as (B,M,N), got %s", x.t.str().c_str());
    const int B = x.t.dim(0), M = x.t.dim(1), N = x.t.dim(2);
    Y5_CHECK(out_shape.numel() == x.t.numel(), "transpose12: output shape %s does not hold %s",
             out_shape.str().c_str(), x.t.str().c_str());
    Tensor out = c.act->tensor(out_shape, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>();
        if constexpr (d.cuda) transpose12_forward_cuda(yp, xp, B, M, N, stream(c));
        else
            par(B, [&](int64_t b0, int64_t b1) {  // matrices are independent
                transpose12_forward_cpu<T>(yp + b0 * M * N, xp + b0 * M * N, (int)(b1 - b0), M, N);
            });
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, B, M, N](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T* dx = grad_ptr<T>(c, x);
        const T* dy = c.tape->grad(y).template ptr<T>();
        if constexpr (d.cuda) transpose12_backward_cuda(dx, dy, B, M, N, stream(c));
        else
            par(B, [&](int64_t b0, int64_t b1) {
                transpose12_backward_cpu<T>(dx + b0 * M * N, dy + b0 * M * N, (int)(b1 - b0), M, N);
            });
    });
}

// Detect's head: conv2d(x, w, b) (1×1, stride 1) viewed (N·na, no, H·W) and transposed to (N, na, H, W, no), with
// the convolution's output only in scratch: per image on the CPU (a buffer per thread; the same per-image passes
// as conv2d, so the same bits as conv2d then transpose12), per chunk of images on CUDA (staged in the work arena).
Var conv1x1_maps(Ctx& c, const Var& x, const Var& w, const Var* b, int na) {
    const char* op = "conv1x1_maps";
    check_rank(op, "input", x.t, 4);
    check_rank(op, "weight", w.t, 4);
    check_same(op, x.t, w.t);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3), K = w.t.dim(0);
    Y5_CHECK(w.t.dim(1) == C && w.t.dim(2) == 1 && w.t.dim(3) == 1, "conv1x1_maps: weight %s is not a 1x1 "
             "convolution over the %d channels of %s", w.t.str().c_str(), C, x.t.str().c_str());
    Y5_CHECK(na >= 1 && K % na == 0, "conv1x1_maps: %d output channels are not %d anchors' worth", K, na);
    Var bias = b ? *b : Var{};
    if (b) {
        check_same(op, x.t, b->t);
        Y5_CHECK(b->t.ndim() == 1 && b->t.dim(0) == K, "conv1x1_maps: bias %s does not match %d output channels",
                 b->t.str().c_str(), K);
    }
    const int no = K / na, P = H * W;
    const int64_t in_img = (int64_t)C * P, out_img = (int64_t)K * P;
    const bool half = x.t.dtype == DType::F16;
    const int64_t nscr = half ? conv2d_f16_scratch_elems(C, H, W, K, 1, 1, H, W) : 0;
    const int64_t nwk = conv2d_run_work_elems(x.t.dtype != DType::F64, C, H, W, K, 1, 1, 1, 0);  // oneDNN's, per thread
    Tensor out = c.act->tensor(Shape{N, na, H, W, no}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        T *yp = out.ptr<T>(), *xp = x.t.ptr<T>(), *wp = w.t.ptr<T>(), *bp = b ? b->t.ptr<T>() : nullptr;
        if constexpr (d.cuda) {
            Arena* sa = c.conv_work ? c.conv_work : c.work;  // staged beside cuDNN's workspace (memory.h: staged)
            Scratch stage(sa);
            const int k = stage_chunk_cuda(c, sa, Conv2dGeom{N, C, H, W, K, 1, 1, 1, 0, half}, out_img * sizeof(T),
                                          {ConvPass::Fprop});
            T* tmp = stage.get<T>(k * out_img);
            for (int n0 = 0; n0 < N; n0 += k) {
                const Conv2dGeom g{std::min(k, N - n0), C, H, W, K, 1, 1, 1, 0, half};
                Scratch ws(sa);
                const size_t bytes = conv2d_workspace_cuda(c.cuda, g, ConvPass::Fprop);
                conv2d_fprop_cuda(c.cuda, g, tmp, xp + n0 * in_img, wp, bp, ws.get<char>((int64_t)bytes), bytes);
                transpose12_forward_cuda(yp + n0 * out_img, tmp, g.N * na, no, P, stream(c));
            }
        } else {
            Scratch ws(c.work);
            const int G = std::min(N, cpu_op_threads());
            // As conv2d: fewer images than threads split each image's output channels over the threads (KS parts).
            const int KS = conv_dnnl_on() && !std::is_same_v<T, double> ? conv_k_parts(K, cpu_op_threads() / G) : 1;
            int64_t nwk_k = nwk;
            for (int j = 0; j < KS; ++j)
                nwk_k = std::max(nwk_k, conv2d_run_work_elems(true, C, H, W, conv_k_start(K, KS, j + 1) -
                                                                  conv_k_start(K, KS, j), 1, 1, 1, 0));
            T* tmp = ws.get<T>(out_img * G);
            float* scr = ws.get<float>(nscr * G * KS);
            acc_t<T>* wk = ws.get<acc_t<T>>(nwk_k * G * KS);
            // Over whole images (KS 1): the weights reordered once for all the images.
            const float* wre = prepared_weights(ws, KS == 1, false, bp != nullptr, kNoAct, wp, C, H, W, K, 1, 1, 1, 0);
            // Output channels [k0, k1) of image n into t (K, P), with task slot s's scratch.
            auto conv = [&](int n, int64_t s, T* t, int k0, int k1) {
                acc_t<T>* wg = wk ? wk + s * nwk_k : nullptr;
                const T* bk = bp ? bp + k0 : nullptr;
                if constexpr (std::is_same_v<T, f16>)
                    conv2d_fprop_f16_cpu(t + k0 * P, xp + n * in_img, wp + (int64_t)k0 * C, bk, wg, scr + s * nscr, 1,
                                         C, H, W, k1 - k0, 1, 1, 1, 0);
                else
                    conv2d_fprop_run<T>(t + k0 * P, xp + n * in_img, wp + (int64_t)k0 * C, bk, wg, 1, C, H, W, k1 - k0,
                                        1, 1, 1, 0, kNoAct, wre);
            };
            if (KS == 1) {
                par(G, [&](int64_t g0, int64_t g1) {
                    for (int64_t gi = g0; gi < g1; ++gi)
                        for (int n = (int)(N * gi / G); n < (int)(N * (gi + 1) / G); ++n) {
                            T* t = tmp + gi * out_img;  // (K, P): this image's convolution
                            conv(n, gi, t, 0, K);
                            transpose12_forward_cpu<T>(yp + n * out_img, t, na, no, P);
                        }
                });
            } else {  // G = N: image n's KS parts, then its transpose
                par(G * KS, [&](int64_t t0, int64_t t1) {
                    for (int64_t s = t0; s < t1; ++s) {
                        const int j = (int)(s % KS);
                        conv((int)(s / KS), s, tmp + s / KS * out_img, conv_k_start(K, KS, j), conv_k_start(K, KS, j + 1));
                    }
                });
                par(P, [&](int64_t p0, int64_t p1) {  // the transposes split over pixels, for the threads too
                    for (int64_t n = 0; n < N; ++n)
                        transpose12_cols_cpu<T>(yp + n * out_img, tmp + n * out_img, na, no, P, (int)p0, (int)p1);
                }, 256);
            }
        }
    });
    return finish<kF16>(c, op, out, {&x, &w, b}, [&c, x, w, bias, N, C, H, W, K, na, no, P, in_img, out_img, nscr,
                                                   nwk, half](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        bool dx_fresh;  // CUDA: each chunk's dgrad writes its images; CPU: each group zeroes its images' dx first
        T *dx = grad_ptr_lazy<T>(c, x, &dx_fresh), *dw = grad_ptr<T>(c, w), *db = grad_ptr<T>(c, bias);
        const T* dy = c.tape->grad(y).template ptr<T>();  // (N, na, P, no)
        const T* xp = dw ? c.tape->value(x).template ptr<T>() : x.t.ptr<T>();
        if constexpr (d.cuda) {
            // Per chunk: the gradient transposed back to (k, K, H, W) in the work arena, then dgrad and wgrad.
            Arena* sa = c.conv_work ? c.conv_work : c.work;
            Scratch stage(sa);
            const int k = stage_chunk_cuda(c, sa, Conv2dGeom{N, C, H, W, K, 1, 1, 1, 0, half}, out_img * sizeof(T),
                                          {ConvPass::Dgrad, ConvPass::Wgrad});
            T* tmp = stage.get<T>(k * out_img);
            for (int n0 = 0; n0 < N; n0 += k) {
                const Conv2dGeom g{std::min(k, N - n0), C, H, W, K, 1, 1, 1, 0, half};
                transpose12_forward_cuda(tmp, dy + n0 * out_img, g.N * na, P, no, stream(c));
                size_t bytes = 0;
                if (dx) bytes = conv2d_workspace_cuda(c.cuda, g, ConvPass::Dgrad);
                if (dw) bytes = std::max(bytes, conv2d_workspace_cuda(c.cuda, g, ConvPass::Wgrad));
                Scratch ws(sa);
                void* wsp = ws.get<char>((int64_t)bytes);
                if (dx) conv2d_dgrad_cuda(c.cuda, g, dx + n0 * in_img, tmp, w.t.ptr<T>(), wsp, bytes, dx_fresh);
                if (dw || db) conv2d_wgrad_cuda(c.cuda, g, dw, db, tmp, xp + n0 * in_img, wsp, bytes);
            }
        } else {
            // conv2d's backward (its image groups and their fixed summation order) with each image's gradient
            // transposed back into the slot's buffer first.
            using A = acc_t<T>;
            Scratch ws(c.work);
            const int Gb = grad_groups(N);
            T* tmp = ws.get<T>(out_img * grad_slots(Gb));
            float* scr = ws.get<float>(nscr * grad_slots(Gb));
            A* wk = ws.get<A>(nwk * grad_slots(Gb));
            // oneDNN f32: the weight gradient in blocked group partials, as conv2d's.
            const bool blocked =
                std::is_same_v<T, float> && dw && conv_dnnl_on() && !conv_gemm_wgrad(1, 1, 1, 0, (int64_t)H * W);
            const int64_t nwb = blocked ? (int64_t)conv2d_dnnl_wgrad_floats(C, H, W, K, 1, 1, 1, 0) : 0;
            float* pwb = ws.get<float>(nwb * Gb);
            const float* wre = prepared_weights(ws, dx != nullptr, true, false, kNoAct, w.t.ptr<T>(), C, H, W, K, 1, 1,
                                                1, 0);  // dgrad's, once for all the images
            par_weight_grads<T>(ws, blocked ? nullptr : dw, db, (int64_t)K * C, K, Gb,
                                [&](int64_t gi, int64_t slot, A* gw, A* gb) {
                A* ws1 = wk ? wk + slot * nwk : nullptr;
                const int n0 = (int)(N * gi / Gb), n1 = (int)(N * (gi + 1) / Gb);
                if (dx_fresh) std::memset(dx + n0 * in_img, 0, (n1 - n0) * in_img * sizeof(T));
                for (int n = n0; n < n1; ++n) {
                    T* t = tmp + slot * out_img;
                    transpose12_forward_cpu<T>(t, dy + n * out_img, na, P, no);  // (na, P, no) → (na, no, P)
                    if constexpr (std::is_same_v<T, float>)
                        if (blocked) {
                            conv2d_backward_run<T>(dx ? dx + n * in_img : nullptr, nullptr, gb, t, nullptr,
                                                   w.t.ptr<T>(), ws1, 1, C, H, W, K, 1, 1, 1, 0, wre);
                            conv2d_dnnl_wgrad_blocked(pwb + gi * nwb, n > n0, t, xp + n * in_img, ws1, 1, C, H, W, K,
                                                      1, 1, 1, 0);
                            continue;
                        }
                    if constexpr (std::is_same_v<T, f16>)
                        conv2d_backward_f16_cpu(dx ? dx + n * in_img : nullptr, gw, gb, t, xp + n * in_img,
                                                w.t.ptr<T>(), ws1, scr + slot * nscr, 1, C, H, W, K, 1, 1, 1, 0);
                    else
                        conv2d_backward_run<T>(dx ? dx + n * in_img : nullptr, gw, gb, t, xp + n * in_img,
                                               w.t.ptr<T>(), ws1, 1, C, H, W, K, 1, 1, 1, 0, wre);
                }
            });
            if constexpr (std::is_same_v<T, float>)
                if (blocked)
                    wgrad_blocked_finish(dw, pwb, Gb, C, H, W, K, 1, 1, 1, 0);
        }
    });
}

Var space_to_depth2(Ctx& c, const Var& x) {
    const char* op = "space_to_depth2";
    check_rank(op, "input", x.t, 4);
    check_ctx(op, c, x.t);
    const int N = x.t.dim(0), C = x.t.dim(1), H = x.t.dim(2), W = x.t.dim(3);
    Y5_CHECK(H % 2 == 0 && W % 2 == 0, "space_to_depth2 (Focus): input %s needs even height and width",
             x.t.str().c_str());
    Tensor out = c.act->tensor(Shape{N, 4 * C, H / 2, W / 2}, x.t.dtype);
    dispatch<kF16>(op, x.t, [&](auto d) {
        using T = typename decltype(d)::T;
        Y5_CPU_OR_CUDA(space_to_depth2_forward, out.ptr<T>(), x.t.ptr<T>(), N, C, H, W);
    });
    return finish<kF16>(c, op, out, {&x}, [&c, x, N, C, H, W](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        T* dx = grad_ptr<T>(c, x);
        const T* dy = c.tape->grad(y).template ptr<T>();
        Y5_CPU_OR_CUDA(space_to_depth2_backward, dx, dy, N, C, H, W);
    });
}

}  // namespace y5
