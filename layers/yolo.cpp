/*
 * The YOLO loss op, defined like the engine's ops (engine/ops/op.h: dispatch, finish): argument checks,
 * build_targets and the loss on the host for CPU maps (yolo_loss_cpu), or the targets grouped on the host and
 * the loss kernels of kernels/loss.cu for CUDA maps. f32/f64 maps: the forward saves d total / d maps and the
 * backward scales them by the upstream gradient. f16 maps (mixed precision): the loss is computed in float from
 * the f16 values and nothing is saved; the backward runs the loss again and adds g · d total / d map into the
 * maps' f16 gradients, one rounding per element.
 */
#include "layers/yolo.h"

#include <cstring>
#include <memory>
#include <type_traits>

#include "engine/device/device.h"
#include "engine/ops/op.h"

namespace y5 {

// Image and class of every target row in range, checked on the host before any kernel indexes by them.
template <class T> static void check_loss_targets(const T* tp, int nt, int bs, int nc) {
    for (int k = 0; k < nt; ++k) {
        const T* r = tp + 6 * k;
        Y5_CHECK(r[0] >= 0 && r[0] < bs && r[1] >= 0 && r[1] < nc,
                 "yolo_loss: target %d has image %g (batch %d) or class %g (nc %d) out of range", k, (double)r[0], bs,
                 (double)r[1], nc);
    }
}

LossPacked pack_loss_targets(const float* tp, int nt, const float* ap, int na, int bs, int nc, const std::vector<int>& ny,
                             const std::vector<int>& nx, const LossHyp& hyp) {
    const int nl = (int)ny.size();
    Y5_CHECK(nl >= 1 && nl <= kLossMaxLevels, "yolo_loss: %d levels; the CUDA loss supports 1 to %d", nl, kLossMaxLevels);
    check_loss_targets(tp, nt, bs, nc);
    LossPacked P;
    P.nl = nl;
    for (int i = 0; i < nl; ++i) {
        LevelTargets<float> lt = build_targets_level<float>(tp, nt, ap + 2 * na * i, na, ny[i], nx[i], hyp.anchor_t);
        pack_level_targets(lt, na, ny[i], nx[i], P.t[i], P.starts[i]);
        P.n[i] = lt.size();
        P.groups[i] = (int)P.starts[i].size() - 1;
    }
    return P;
}

bool loss_fits(const LossPacked& P, const LossLayout& L) {
    if (P.nl != L.nl) return false;
    for (int i = 0; i < P.nl; ++i)
        if (P.n[i] > L.cap_t[i] || P.groups[i] > L.cap_g[i]) return false;
    return true;
}

LossItems loss_items_counts(const LossPacked& P, int bs, int na, const std::vector<int>& ny, const std::vector<int>& nx) {
    LossItems L;
    L.nl = P.nl, L.bs = bs;
    for (int i = 0; i < P.nl; ++i) L.n[i] = P.n[i], L.cells[i] = (int64_t)bs * na * ny[i] * nx[i];
    return L;
}

std::vector<char> loss_buffer(const LossPacked& P, const LossLayout& L) {
    Y5_CHECK(loss_fits(P, L), "loss_buffer: the batch's target lists do not fit the layout's capacities");
    std::vector<char> buf(L.bytes, 0);
    int* counts = reinterpret_cast<int*>(buf.data() + L.counts);
    for (int i = 0; i < P.nl; ++i) {
        counts[2 * i] = P.n[i], counts[2 * i + 1] = P.groups[i];
        if (P.n[i]) std::memcpy(buf.data() + L.t[i], P.t[i].data(), P.t[i].size() * sizeof(LossTargetPacked));
        std::memcpy(buf.data() + L.s[i], P.starts[i].data(), P.starts[i].size() * sizeof(int));
    }
    return buf;
}

// The CUDA loss: the packed target lists (pack_loss_targets, uploaded with one copy into the workspace; or, in a
// captured step, Ctx::loss_fixed's, uploaded by the caller) and the kernels enqueued (kernels/loss.cu). S: the
// maps' storage (f32 or f16). dmaps (empty, or an undefined tensor for a level: no gradient) are device tensors of
// S, overwritten with d total / d map, or with gscale (a device scalar) accumulated with it; total a device f32
// scalar; tp and ap host f32. With want_items the four items are downloaded with one copy (else they are 0; in a
// captured step they stay in loss_fixed->items). A template, so that a build without CUDA, which never calls it,
// needs no launcher.
template <class S>
static LossItems yolo_loss_cuda_path(Ctx& c, const std::vector<Var>& maps, const std::vector<Tensor>& dmaps,
                                     float* total, const float* gscale, bool want_items, const float* tp, int nt,
                                     const float* ap, const LossHyp& hyp, const std::vector<int>& ny,
                                     const std::vector<int>& nx, int bs, int na, int no, bool accumulate = true) {
    const int nl = (int)maps.size();
    Y5_CHECK(c.work && c.work->device() == Device::CUDA, "yolo_loss: CUDA maps need a device workspace arena (Ctx::work)");
    Scratch s(c.work);
    const LossFixed* fx = c.loss_fixed;
    LossLayout lay;
    LossPacked P;  // a captured step's stay empty: its caller packed and uploaded them
    const char* dbuf = nullptr;
    if (fx) {
        Y5_CHECK(fx->layout.nl == nl, "yolo_loss: the captured step's targets have %d levels, the maps %d", fx->layout.nl, nl);
        lay = fx->layout, dbuf = fx->targets;
    } else {
        P = pack_loss_targets(tp, nt, ap, na, bs, no - 5, ny, nx, hyp);
        lay = loss_layout(nl, P.n, P.groups);
        const std::vector<char> buf = loss_buffer(P, lay);
        char* d = s.get<char>((int64_t)buf.size());
        copy_host_to_device_staged(d, buf.data(), buf.size(), c.cuda);  // buf may go when this returns
        dbuf = d;
    }
    LossLevelCudaT<S> lv[kLossMaxLevels];
    for (int i = 0; i < nl; ++i) {
        const int64_t cells = (int64_t)bs * na * ny[i] * nx[i];
        LossLevelCudaT<S>& L = lv[i];
        L.map = maps[i].t.ptr<S>();
        L.dmap = dmaps.empty() || !dmaps[i].data ? nullptr : dmaps[i].ptr<S>();
        L.ny = ny[i], L.nx = nx[i], L.groups = lay.cap_g[i];
        L.counts = reinterpret_cast<const int*>(dbuf + lay.counts) + 2 * i;
        L.targets = reinterpret_cast<const LossTargetPacked*>(dbuf + lay.t[i]);
        L.group_start = reinterpret_cast<const int*>(dbuf + lay.s[i]);
        L.tobj = s.get<float>(cells);
        L.group_box = s.get<double>(L.groups);
        L.group_cls = s.get<double>(L.groups);
        L.obj_partial = s.get<double>(loss_obj_blocks(cells));
    }
    double* items = fx && want_items ? fx->items : s.get<double>(kLossItemsDoubles);
    yolo_loss_cuda(lv, nl, bs, na, no, hyp, items, total, gscale, stream(c), accumulate);
    // A captured step's items stay in loss_fixed->items: its caller copies them once the graph has run.
    if (!want_items || fx) return LossItems{};  // the scratch is released; the queued kernels run before any later user
    LossItems L = loss_items_counts(P, bs, na, ny, nx);
    const size_t bytes = (size_t)(4 + 3 * nl) * sizeof(double);
    if (c.loss_items_pinned) {
        copy_device_to_host_async(c.loss_items_pinned, items, bytes, c.cuda);  // read by loss_items_arrived
    } else {
        double h[kLossItemsDoubles];
        copy_device_to_host(h, items, bytes, c.cuda);  // waits for the kernels
        loss_items_arrived(L, h);
    }
    return L;
}

// Host f32 copy of a CUDA or CPU tensor (targets, anchors).
static std::vector<float> host_f32(Ctx& c, const Tensor& t) {
    std::vector<float> h(t.numel());
    if (t.numel() == 0) return h;
    if (t.device == Device::CUDA) copy_device_to_host(h.data(), t.data, t.bytes(), c.cuda);
    else std::memcpy(h.data(), t.data, t.bytes());
    return h;
}

void loss_items_arrived(LossItems& L, const double* h) {
    L.lbox = h[0], L.lobj = h[1], L.lcls = h[2], L.total = h[3];
    for (int i = 0; i < L.nl; ++i) L.sbox[i] = h[4 + 3 * i], L.scls[i] = h[5 + 3 * i], L.sobj[i] = h[6 + 3 * i];
}

LossItems combine_loss_items(const std::vector<LossItems>& parts, const LossHyp& h, int nc) {
    LossItems L;
    if (parts.empty()) return L;
    L.nl = parts[0].nl;
    for (const LossItems& p : parts) {
        Y5_CHECK(p.nl == L.nl, "combine_loss_items: parts with %d and %d levels", L.nl, p.nl);
        for (int i = 0; i < L.nl; ++i) {
            L.sbox[i] += p.sbox[i], L.scls[i] += p.scls[i], L.sobj[i] += p.sobj[i];
            L.n[i] += p.n[i], L.cells[i] += p.cells[i];
        }
    }
    for (const LossItems& p : parts) L.bs += p.bs;
    form_loss_items(L, h, nc);
    return L;
}

YoloLoss yolo_loss(Ctx& c, const std::vector<Var>& maps, const Tensor& targets, const Tensor& anchors,
                   const LossHyp& hyp) {
    const char* op = "yolo_loss";
    Y5_CHECK(!maps.empty(), "yolo_loss: no maps");
    const int nl = (int)maps.size();
    const int bs = maps[0].t.dim(0), na = maps[0].t.dim(1), no = maps[0].t.dim(4);
    std::vector<int> ny, nx;
    for (const Var& m : maps) {
        check_rank(op, "map", m.t, 5);
        check_same(op, maps[0].t, m.t);
        Y5_CHECK(m.t.dim(0) == bs && m.t.dim(1) == na && m.t.dim(4) == no,
                 "yolo_loss: map %s does not match %s", m.t.str().c_str(), maps[0].t.str().c_str());
        ny.push_back(m.t.dim(2));
        nx.push_back(m.t.dim(3));
    }
    check_ctx(op, c, maps[0].t);
    Y5_CHECK(no > 5, "yolo_loss: maps have %d channels per anchor, need 5 + nc", no);
    Y5_CHECK(targets.ndim() == 2 && targets.dim(1) == 6, "yolo_loss: targets must be (nt, 6), got %s",
             targets.str().c_str());
    Y5_CHECK(anchors.ndim() == 3 && anchors.dim(0) == nl && anchors.dim(1) == na && anchors.dim(2) == 2,
             "yolo_loss: anchors %s do not match %d levels of %d anchors", anchors.str().c_str(), nl, na);
    const bool cuda = maps[0].t.device == Device::CUDA, half = maps[0].t.dtype == DType::F16;
    if (cuda || half) {
        Y5_CHECK((maps[0].t.dtype == DType::F32 || half) && targets.dtype == DType::F32 && anchors.dtype == DType::F32,
                 "yolo_loss: %s maps need f32 targets and anchors (and CUDA maps f32 or f16); got %s, %s, %s",
                 cuda ? "CUDA" : "f16", maps[0].t.str().c_str(), targets.str().c_str(), anchors.str().c_str());
        Y5_CHECK(cuda || (targets.device == Device::CPU && anchors.device == Device::CPU),
                 "yolo_loss: CPU maps need CPU targets and anchors; got %s, %s", targets.str().c_str(),
                 anchors.str().c_str());
    } else {
        check_same(op, maps[0].t, targets);
        check_same(op, maps[0].t, anchors);
    }
    const int nt = targets.dim(0);
    YoloLoss out;
    // f16 maps (mixed precision): the loss is f32, as the f32 loss of the maps widened to float.
    Tensor total = c.act->tensor(Shape{1}, half ? DType::F32 : maps[0].t.dtype);
    const bool grad = c.tape->recording() && any_grad(maps);
    // f32/f64: d total / d map per level, saved for the backward when a map wants a gradient. f16, and f32 under
    // recomputation (Ctx::recompute): nothing is saved; the backward runs the loss again and adds g · d total / d map
    // into the maps' gradients directly (the same bits as the saved map's axpy: one g·d + 0 per element).
    const bool replay = half || (grad && c.recompute && maps[0].t.dtype == DType::F32);
    std::vector<Tensor> dmaps;
    // Host f32 targets and anchors (CUDA maps, or a replaying backward), kept for the backward.
    auto th = std::make_shared<std::vector<float>>(), ah = std::make_shared<std::vector<float>>();
    if (cuda || replay) {
        *th = host_f32(c, targets);
        *ah = host_f32(c, anchors);
    }
    dispatch<kF16>(op, maps[0].t, [&](auto d) {
        using T = typename decltype(d)::T;
        using A = acc_t<T>;  // the loss's type: float for f16 maps
        if constexpr (d.cuda) {
            if (grad && !replay)
                for (const Var& m : maps) dmaps.push_back(c.act->tensor(m.t.shape, m.t.dtype));
            out.items = yolo_loss_cuda_path<T>(c, maps, dmaps, total.ptr<float>(), nullptr, true, th->data(), nt,
                                               ah->data(), hyp, ny, nx, bs, na, no);
        } else {
            const A* tp = half ? reinterpret_cast<const A*>(th->data()) : targets.ptr<A>();
            const A* ap = half ? reinterpret_cast<const A*>(ah->data()) : anchors.ptr<A>();
            check_loss_targets(tp, nt, bs, no - 5);  // the CUDA path's pack_loss_targets checks them
            std::vector<const T*> mp;
            std::vector<T*> dp;
            for (const Var& m : maps) {
                mp.push_back(m.t.ptr<T>());
                if (grad && !replay) {
                    dmaps.push_back(c.act->tensor(m.t.shape, m.t.dtype));
                    dp.push_back(dmaps.back().ptr<T>());
                }
            }
            out.items = yolo_loss_cpu<T>(mp, dp, ny, nx, bs, na, no, tp, nt, ap, hyp);
            total.ptr<A>()[0] = A(out.items.total);
        }
    });
    out.total = finish(c, op, total, grad, [&c, maps, dmaps, half, replay, th, ah, nt, hyp, ny, nx, bs, na,
                                            no](auto d, const Var& y) {
        using T = typename decltype(d)::T;  // total's: float (f32 or f16 maps) or double
        const T* g = c.tape->grad(y).template ptr<T>();
        if (replay) {
            if constexpr (std::is_same_v<T, float>) {
                // The maps' gradients (f16 or f32), undefined where a map wants none. Written over the maps
                // themselves (nothing after the loss reads their values), so the loss backward's peak holds no
                // gradient map beside the maps; added into them where an op recorded after the loss already
                // gave a map a gradient.
                bool accumulate = false;
                for (const Var& m : maps) accumulate = accumulate || c.tape->has_grad(m);
                std::vector<Tensor> grads;
                for (const Var& m : maps)
                    grads.push_back(!m.requires_grad() ? Tensor()
                                    : accumulate       ? c.tape->grad(m)
                                                       : c.tape->grad_over_value(m));
                auto run = [&](auto map_type) {  // S: the maps' storage type
                    using S = decltype(map_type);
                    if constexpr (d.cuda) {
                        // g stays on the device, the kernels read it (no round trip).
                        Scratch s(c.work);
                        yolo_loss_cuda_path<S>(c, maps, grads, s.get<float>(1), g, false, th->data(), nt, ah->data(),
                                               hyp, ny, nx, bs, na, no, accumulate);
                    } else {
                        std::vector<const S*> mp;
                        std::vector<S*> dp;
                        for (size_t i = 0; i < maps.size(); ++i) {
                            mp.push_back(maps[i].t.ptr<S>());
                            dp.push_back(grads[i].data ? grads[i].ptr<S>() : nullptr);
                        }
                        yolo_loss_cpu<S>(mp, dp, ny, nx, bs, na, no, th->data(), nt, ah->data(), hyp, nullptr, g,
                                         accumulate);
                    }
                };
                if (half) run(f16{});
                else run(float{});
            }
            for (const Var& m : maps) c.tape->value_read(m);  // maps without a gradient: their memory goes back now
            return;
        }
        for (size_t i = 0; i < maps.size(); ++i) {
            if (!maps[i].requires_grad()) continue;
            bool fresh;  // written, not added to (CPU: zeroed by the axpy's chunks)
            Tensor dm = c.tape->grad_lazy(maps[i], &fresh);
            // CUDA: g stays on the device, the kernel reads it (no round trip).
            if constexpr (d.cuda)
                yolo_loss_backward_cuda(dm.ptr<T>(), g, dmaps[i].ptr<T>(), dmaps[i].numel(), fresh, stream(c));
            else axpy(c, dm.view(dmaps[i].shape), (double)g[0], dmaps[i], fresh);
        }
        for (const Var& m : maps) c.tape->value_read(m);  // the saved dmaps, not the maps, were read
    });
    return out;
}

}  // namespace y5
