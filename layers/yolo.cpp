/*
 * The YOLO loss op, defined like the engine's ops (engine/ops/op.h: dispatch, finish): argument checks,
 * build_targets and the loss on the host for CPU maps (yolo_loss_cpu), or the targets grouped on the host and
 * the loss kernels of kernels/loss.cu for CUDA maps; its backward scales the saved gradient maps by the
 * upstream gradient.
 */
#include "layers/yolo.h"

#include <cstring>

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

// The CUDA loss: build_targets on the host (it needs only the targets, anchors and grid sizes), each
// level's list grouped by cell (pack_level_targets), all levels packed into one host buffer and uploaded
// with one copy into the workspace, the kernels enqueued (kernels/loss.cu), and the four items downloaded
// with one copy. dmaps (empty: no gradient) and total are device tensors of T (f32, the kernels'); tp and ap
// host f32. A template, so that a build without CUDA, which never calls it, needs no launcher.
template <class T>
static LossItems yolo_loss_cuda_path(Ctx& c, const std::vector<Var>& maps, const std::vector<Tensor>& dmaps,
                                     Tensor total, const float* tp, int nt, const float* ap, const LossHyp& hyp,
                                     const std::vector<int>& ny, const std::vector<int>& nx, int bs, int na, int no) {
    const int nl = (int)maps.size();
    Y5_CHECK(nl <= kLossMaxLevels, "yolo_loss: %d levels; the CUDA loss supports up to %d", nl, kLossMaxLevels);
    std::vector<char> buf;
    auto put = [&buf](const void* src, size_t bytes) {
        const size_t o = (buf.size() + 15) / 16 * 16;
        buf.resize(o + bytes);
        if (bytes) std::memcpy(buf.data() + o, src, bytes);
        return o;
    };
    std::vector<size_t> off_t(nl), off_s(nl);
    std::vector<int> n(nl), groups(nl);
    std::vector<LossTargetPacked> packed;
    std::vector<int> starts;
    for (int i = 0; i < nl; ++i) {
        LevelTargets<float> lt = build_targets_level<float>(tp, nt, ap + 2 * na * i, na, ny[i], nx[i], hyp.anchor_t);
        pack_level_targets(lt, na, ny[i], nx[i], packed, starts);
        n[i] = lt.size();
        groups[i] = (int)starts.size() - 1;
        off_t[i] = put(packed.data(), packed.size() * sizeof(LossTargetPacked));
        off_s[i] = put(starts.data(), starts.size() * sizeof(int));
    }
    Y5_CHECK(c.work && c.work->device() == Device::CUDA, "yolo_loss: CUDA maps need a device workspace arena (Ctx::work)");
    Scratch s(c.work);
    char* dbuf = s.get<char>((int64_t)buf.size());
    copy_host_to_device(dbuf, buf.data(), buf.size(), c.cuda);
    LossLevelCuda lv[kLossMaxLevels];
    for (int i = 0; i < nl; ++i) {
        const int64_t cells = (int64_t)bs * na * ny[i] * nx[i];
        LossLevelCuda& L = lv[i];
        L.map = maps[i].t.ptr<T>();
        L.dmap = dmaps.empty() ? nullptr : dmaps[i].ptr<T>();
        L.ny = ny[i], L.nx = nx[i], L.n = n[i], L.groups = groups[i];
        L.targets = reinterpret_cast<const LossTargetPacked*>(dbuf + off_t[i]);
        L.group_start = reinterpret_cast<const int*>(dbuf + off_s[i]);
        L.tobj = s.get<float>(cells);
        L.group_box = s.get<double>(groups[i]);
        L.group_cls = s.get<double>(groups[i]);
        L.obj_partial = s.get<double>(loss_obj_blocks(cells));
    }
    double* items = s.get<double>(4);
    yolo_loss_cuda(lv, nl, bs, na, no, hyp, items, total.ptr<T>(), stream(c));
    double h[4];
    copy_device_to_host(h, items, sizeof h, c.cuda);  // waits for the kernels, so the scratch may be released
    LossItems L;
    L.lbox = h[0], L.lobj = h[1], L.lcls = h[2], L.total = h[3];
    return L;
}

YoloLoss yolo_loss(Ctx& c, const std::vector<Var>& maps, const Tensor& targets, const Tensor& anchors,
                   const LossHyp& hyp) {
    const char* op = "yolo_loss";
    Y5_CHECK(!maps.empty(), "yolo_loss: no maps");
    if (maps[0].t.dtype == DType::F16) {  // mixed precision: the loss in f32 from the f16 maps (and f16 gradients back)
        std::vector<Var> m32;
        for (const Var& m : maps) m32.push_back(cast(c, m, DType::F32));
        return yolo_loss(c, m32, targets, anchors, hyp);
    }
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
    const bool cuda = maps[0].t.device == Device::CUDA;
    if (cuda) {
        Y5_CHECK(maps[0].t.dtype == DType::F32 && targets.dtype == DType::F32 && anchors.dtype == DType::F32,
                 "yolo_loss: CUDA maps need f32 maps, targets and anchors; got %s, %s, %s", maps[0].t.str().c_str(),
                 targets.str().c_str(), anchors.str().c_str());
    } else {
        check_same(op, maps[0].t, targets);
        check_same(op, maps[0].t, anchors);
    }
    const int nt = targets.dim(0);
    YoloLoss out;
    Tensor total = c.act->tensor(Shape{1}, maps[0].t.dtype);
    const bool grad = c.tape->recording() && any_grad(maps);
    std::vector<Tensor> dmaps;  // d total / d map per level, saved for the backward when a map wants a gradient
    dispatch(op, maps[0].t, [&](auto d) {
        using T = typename decltype(d)::T;
        if constexpr (d.cuda) {
            // Host copies of targets and anchors (already there when they are CPU tensors, the usual case).
            std::vector<float> th, ah;
            const float* tp = static_cast<const float*>(targets.data);
            const float* ap = static_cast<const float*>(anchors.data);
            if (targets.device == Device::CUDA && nt > 0) {
                th.resize(targets.numel());
                copy_device_to_host(th.data(), targets.data, targets.bytes(), c.cuda);
                tp = th.data();
            }
            if (anchors.device == Device::CUDA) {
                ah.resize(anchors.numel());
                copy_device_to_host(ah.data(), anchors.data, anchors.bytes(), c.cuda);
                ap = ah.data();
            }
            check_loss_targets(tp, nt, bs, no - 5);
            if (grad)
                for (const Var& m : maps) dmaps.push_back(c.act->tensor(m.t.shape, m.t.dtype));
            out.items = yolo_loss_cuda_path<T>(c, maps, dmaps, total, tp, nt, ap, hyp, ny, nx, bs, na, no);
        } else {
            const T* tp = targets.ptr<T>();
            check_loss_targets(tp, nt, bs, no - 5);
            std::vector<const T*> mp;
            std::vector<T*> dp;
            for (const Var& m : maps) {
                mp.push_back(m.t.ptr<T>());
                if (grad) {
                    dmaps.push_back(c.act->tensor(m.t.shape, m.t.dtype));
                    dp.push_back(dmaps.back().ptr<T>());
                }
            }
            out.items = yolo_loss_cpu<T>(mp, dp, ny, nx, bs, na, no, tp, nt, anchors.ptr<T>(), hyp);
            total.ptr<T>()[0] = T(out.items.total);
        }
    });
    out.total = finish(c, op, total, grad, [&c, maps, dmaps](auto d, const Var& y) {
        using T = typename decltype(d)::T;
        const T* g = c.tape->grad(y).template ptr<T>();
        for (size_t i = 0; i < maps.size(); ++i) {
            if (!maps[i].requires_grad()) continue;
            Tensor dm = c.tape->grad(maps[i]);
            // CUDA: g stays on the device, the kernel reads it (no round trip).
            if constexpr (d.cuda)
                yolo_loss_backward_cuda(dm.ptr<T>(), g, dmaps[i].ptr<T>(), dmaps[i].numel(), stream(c));
            else axpy(c, dm.view(dmaps[i].shape), (double)g[0], dmaps[i]);
        }
    });
    return out;
}

}  // namespace y5
