/*
 * YOLOv5 v7.0's ComputeLoss (utils/loss.py), CPU reference, forward and gradient.
 * maps: nl levels of raw Detect output (bs, na, ny, nx, no), no = 5 + nc.
 * targets: (nt, 6) rows (image, class, x, y, w, h), normalised to [0, 1].
 * anchors: (nl, na, 2) in grid units. Hyperparameters already scaled as train.py scales them.
 *   build_targets: each target × each anchor whose w/h ratio is within anchor_t, in its cell and up to two
 *     neighbour cells (offset 0.5, the `> 1` guards), indices clamped in place before tbox is formed.
 *   lbox = Σ_levels mean(1 − CIoU(pbox, tbox)); pxy = 2σ − 0.5, pwh = (2σ)²·anchor
 *   lobj = Σ_levels balance_i · mean BCE(p_obj, tobj), tobj = CIoU.detach().clamp(0) at matched cells
 *          (last write wins on duplicates), 0 elsewhere; balance = [4, 1, 0.4] (3 levels)
 *   lcls = Σ_levels mean BCE(p_cls, one-hot(cp, cn)) when nc > 1
 *   total = (box·lbox + obj·lobj + cls·lcls) · bs; items = (box·lbox, obj·lobj, cls·lcls)
 * The gradient of total with respect to every map is computed alongside: CIoU's α is a constant (no_grad
 * in YOLOv5), min/max split a tie's gradient in half and clamp(0) passes it at 0, as PyTorch does.
 * Templated on T so the gradient check runs in double.
 *
 * CUDA (kernels/loss.cu, f32): build_targets stays on the host (it depends only on the targets, anchors and
 * grid sizes); pack_level_targets groups each level's list by cell, the groups are uploaded in one copy,
 * and per level one warp per matched cell computes box, class and objectness-target terms for all of that
 * cell's entries in list order (so duplicates add their gradients and the last one sets tobj, exactly as
 * the loop below, without atomics), a dense kernel does the objectness BCE over all cells, and one block
 * reduces the fixed-size partial sums into the loss items (deterministic, double). All per-element math is
 * the Y5_HD functions below, shared with yolo_loss_cpu.
 */
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

struct LossHyp {
    double box = 0.05, obj = 1.0, cls = 0.5, anchor_t = 4.0, cls_pw = 1.0, obj_pw = 1.0, label_smoothing = 0.0;
};

// ----------------------------------------------------------------------------------------------------
// Per-element math (shared with CUDA)

// BCEWithLogits with pos_weight, PyTorch's formula: (1 − t)·x + (1 + (pw − 1)·t)·(log1p(e^−|x|) + max(−x, 0)).
template <class T> Y5_HD T bce_logits(T x, T t, T pw) {
    T lw = T(1) + (pw - T(1)) * t;
    T ax = x < T(0) ? -x : x;
    return (T(1) - t) * x + lw * (y5_log1p(y5_exp(-ax)) + (x < T(0) ? -x : T(0)));
}
// d/dx of the above: (1 − t) + lw·(σ(x) − 1).
template <class T> Y5_HD T bce_logits_grad(T x, T t, T pw) {
    T lw = T(1) + (pw - T(1)) * t;
    return (T(1) - t) + lw * (sigmoid(x) - T(1));
}

// d min(a, b)/d a and d max(a, b)/d a in PyTorch's convention: a tie splits the gradient in half.
template <class T> Y5_HD T dmin_a(T a, T b) { return a < b ? T(1) : (a == b ? T(0.5) : T(0)); }
template <class T> Y5_HD T dmax_a(T a, T b) { return a > b ? T(1) : (a == b ? T(0.5) : T(0)); }

// CIoU of box p against box t, both (x, y, w, h) (bbox_iou(xywh=True, CIoU=True), eps 1e-7). If dp is
// given, adds g · dCIoU/dp to it (α held constant). alpha_io, if given, receives α, or supplies it when
// alpha_fixed (finite-difference checks hold YOLOv5's no_grad values fixed).
template <class T>
Y5_HD T ciou(const T* p, const T* t, T g = T(0), T* dp = nullptr, T* alpha_io = nullptr, bool alpha_fixed = false) {
    const T eps = T(1e-7);
    const T x1 = p[0], y1 = p[1], w1 = p[2], h1 = p[3], x2 = t[0], y2 = t[1], w2 = t[2], h2 = t[3];
    const T b1x1 = x1 - w1 / T(2), b1x2 = x1 + w1 / T(2), b1y1 = y1 - h1 / T(2), b1y2 = y1 + h1 / T(2);
    const T b2x1 = x2 - w2 / T(2), b2x2 = x2 + w2 / T(2), b2y1 = y2 - h2 / T(2), b2y2 = y2 + h2 / T(2);
    const T ix = y5_min(b1x2, b2x2) - y5_max(b1x1, b2x1), iy = y5_min(b1y2, b2y2) - y5_max(b1y1, b2y1);
    const T cix = ix > T(0) ? ix : T(0), ciy = iy > T(0) ? iy : T(0);
    const T inter = cix * ciy;
    const T uni = w1 * h1 + w2 * h2 - inter + eps;
    const T iou = inter / uni;
    const T cw = y5_max(b1x2, b2x2) - y5_min(b1x1, b2x1), ch = y5_max(b1y2, b2y2) - y5_min(b1y1, b2y1);
    const T c2 = cw * cw + ch * ch + eps;
    const T sx = b2x1 + b2x2 - b1x1 - b1x2, sy = b2y1 + b2y2 - b1y1 - b1y2;
    const T rho2 = (sx * sx + sy * sy) / T(4);
    const T k = T(4) / T(M_PI * M_PI);
    const T da = y5_atan(w2 / h2) - y5_atan(w1 / h1);
    const T v = k * da * da;
    const T alpha = (alpha_io && alpha_fixed) ? *alpha_io : v / (v - iou + (T(1) + eps));
    if (alpha_io) *alpha_io = alpha;
    const T out = iou - (rho2 / c2 + v * alpha);
    if (dp) {
        const T g_iou = g, g_rho2 = -g / c2, g_c2 = g * rho2 / (c2 * c2), g_v = -g * alpha;
        T g_b1x1 = 0, g_b1x2 = 0, g_b1y1 = 0, g_b1y2 = 0, g_w1 = 0, g_h1 = 0;
        // v = k·(atan(w2/h2) − atan(w1/h1))²
        const T r = w1 * w1 + h1 * h1;
        g_w1 += g_v * k * T(2) * da * (-h1 / r);
        g_h1 += g_v * k * T(2) * da * (w1 / r);
        // c2 = cw² + ch²
        const T g_cw = g_c2 * T(2) * cw, g_ch = g_c2 * T(2) * ch;
        g_b1x2 += g_cw * dmax_a(b1x2, b2x2);
        g_b1x1 -= g_cw * dmin_a(b1x1, b2x1);
        g_b1y2 += g_ch * dmax_a(b1y2, b2y2);
        g_b1y1 -= g_ch * dmin_a(b1y1, b2y1);
        // rho2 = (sx² + sy²)/4
        const T g_sx = g_rho2 * sx / T(2), g_sy = g_rho2 * sy / T(2);
        g_b1x1 -= g_sx;
        g_b1x2 -= g_sx;
        g_b1y1 -= g_sy;
        g_b1y2 -= g_sy;
        // iou = inter / union, union = w1·h1 + w2·h2 − inter + eps
        const T g_union = -g_iou * inter / (uni * uni);
        const T g_inter = g_iou / uni - g_union;
        g_w1 += g_union * h1;
        g_h1 += g_union * w1;
        // inter = clamp(ix, 0)·clamp(iy, 0); clamp passes the gradient where ix >= 0
        const T g_ix = ix >= T(0) ? g_inter * ciy : T(0), g_iy = iy >= T(0) ? g_inter * cix : T(0);
        g_b1x2 += g_ix * dmin_a(b1x2, b2x2);
        g_b1x1 -= g_ix * dmax_a(b1x1, b2x1);
        g_b1y2 += g_iy * dmin_a(b1y2, b2y2);
        g_b1y1 -= g_iy * dmax_a(b1y1, b2y1);
        // b1 = (x ∓ w/2, y ∓ h/2)
        dp[0] += g_b1x1 + g_b1x2;
        dp[1] += g_b1y1 + g_b1y2;
        dp[2] += g_w1 + (g_b1x2 - g_b1x1) / T(2);
        dp[3] += g_h1 + (g_b1y2 - g_b1y1) / T(2);
    }
    return out;
}

// Offset of cell (b, a, gj, gi) in a level's (bs, na, ny, nx) grid, in cells (× no for the map). int64:
// cells·no is 104M at (64, 3, 80, 80, 85) and passes 2^31 with larger batches or images.
Y5_HD int64_t loss_cell(int b, int a, int gj, int gi, int na, int ny, int nx) {
    return (((int64_t)b * na + a) * ny + gj) * nx + gi;
}

// Box decode of a cell's raw (x, y, w, h) logits: s = σ(raw), pb = (2σ − 0.5, 2σ − 0.5, (2σ)²·anchor).
template <class T> Y5_HD void loss_decode_box(const T* raw, const T* anch, T* s, T* pb) {
    for (int q = 0; q < 4; ++q) s[q] = sigmoid(raw[q]);
    pb[0] = s[0] * T(2) - T(0.5);
    pb[1] = s[1] * T(2) - T(0.5);
    pb[2] = (s[2] * T(2)) * (s[2] * T(2)) * anch[0];
    pb[3] = (s[3] * T(2)) * (s[3] * T(2)) * anch[1];
}
// Its chain rule: draw = d/d raw given dpb = d/d pb (s from loss_decode_box).
template <class T> Y5_HD void loss_decode_box_grad(const T* s, const T* anch, const T* dpb, T* draw) {
    draw[0] = dpb[0] * T(2) * s[0] * (T(1) - s[0]);
    draw[1] = dpb[1] * T(2) * s[1] * (T(1) - s[1]);
    draw[2] = dpb[2] * T(8) * s[2] * s[2] * (T(1) - s[2]) * anch[0];
    draw[3] = dpb[3] * T(8) * s[3] * s[3] * (T(1) - s[3]) * anch[1];
}
// Objectness target of a matched cell: CIoU.detach().clamp(0).
template <class T> Y5_HD T loss_tobj(T iou) { return iou > T(0) ? iou : T(0); }

// ----------------------------------------------------------------------------------------------------
// build_targets (host)

template <class T> struct LevelTargets {
    std::vector<int> b, a, gj, gi, cls;
    std::vector<T> tbox;  // (n, 4): x, y offsets within the cell, w, h in grid units
    std::vector<T> anch;  // (n, 2) matched anchor, grid units
    int size() const { return (int)b.size(); }
};

// targets (nt, 6); anchors (na, 2) of this level; grid ny × nx.
template <class T>
LevelTargets<T> build_targets_level(const T* targets, int nt, const T* anchors, int na, int ny, int nx, double anchor_t) {
    LevelTargets<T> out;
    struct Kept {
        int a;
        T img, cls, gx, gy, gw, gh;
    };
    std::vector<Kept> kept;  // anchor-major, then target order: YOLOv5's t[j]
    for (int a = 0; a < na; ++a)
        for (int t = 0; t < nt; ++t) {
            const T* r = targets + 6 * t;
            T gw = r[4] * T(nx), gh = r[5] * T(ny);
            T rw = gw / anchors[2 * a], rh = gh / anchors[2 * a + 1];
            T m = y5_max(y5_max(rw, T(1) / rw), y5_max(rh, T(1) / rh));
            if (m < T(anchor_t)) kept.push_back({a, r[0], r[1], r[2] * T(nx), r[3] * T(ny), gw, gh});
        }
    // Offsets (0,0), (0.5,0), (0,0.5), (−0.5,0), (0,−0.5): the centre cell, then left, up, right, down
    // neighbours when the centre lies in that half of its cell and not in the border cell.
    const T g = T(0.5), offx[5] = {0, g, 0, -g, 0}, offy[5] = {0, 0, g, 0, -g};
    for (int o = 0; o < 5; ++o)
        for (const Kept& k : kept) {
            const T gxi = T(nx) - k.gx, gyi = T(ny) - k.gy;
            bool use = true;
            if (o == 1) use = std::fmod(k.gx, T(1)) < g && k.gx > T(1);
            if (o == 2) use = std::fmod(k.gy, T(1)) < g && k.gy > T(1);
            if (o == 3) use = std::fmod(gxi, T(1)) < g && gxi > T(1);
            if (o == 4) use = std::fmod(gyi, T(1)) < g && gyi > T(1);
            if (!use) continue;
            int gi = (int)(k.gx - offx[o]), gj = (int)(k.gy - offy[o]);  // .long() truncates
            gi = gi < 0 ? 0 : (gi > nx - 1 ? nx - 1 : gi);               // clamp_ in place: tbox sees it
            gj = gj < 0 ? 0 : (gj > ny - 1 ? ny - 1 : gj);
            out.b.push_back((int)k.img);
            out.a.push_back(k.a);
            out.gj.push_back(gj);
            out.gi.push_back(gi);
            out.cls.push_back((int)k.cls);
            out.tbox.insert(out.tbox.end(), {k.gx - T(gi), k.gy - T(gj), k.gw, k.gh});
            out.anch.insert(out.anch.end(), {anchors[2 * k.a], anchors[2 * k.a + 1]});
        }
    return out;
}

// ----------------------------------------------------------------------------------------------------
// Loss and gradient (host)

struct LossItems {
    double lbox = 0, lobj = 0, lcls = 0, total = 0;
};

// The values YOLOv5 computes under no_grad / detach (CIoU's α, the objectness targets), per level. A
// finite-difference check records them at the base point and replays them, so it differentiates the
// same function that autograd does.
template <class T> struct LossDetached {
    bool replay = false;
    std::vector<std::vector<T>> alpha, tobj;
};

// maps[i] (bs, na, ny[i], nx[i], no); dmaps[i] (same shapes) receive d total / d map (overwritten) unless null.
template <class T>
LossItems yolo_loss_cpu(const std::vector<const T*>& maps, const std::vector<T*>& dmaps, const std::vector<int>& ny,
                        const std::vector<int>& nx, int bs, int na, int no, const T* targets, int nt, const T* anchors,
                        const LossHyp& h, LossDetached<T>* detached = nullptr) {
    const int nl = (int)maps.size(), nc = no - 5;
    const double balance3[3] = {4.0, 1.0, 0.4}, balance5[5] = {4.0, 1.0, 0.25, 0.06, 0.02};
    const T cp = T(1.0 - 0.5 * h.label_smoothing), cn = T(0.5 * h.label_smoothing);
    LossItems L;
    if (detached && !detached->replay) {
        detached->alpha.assign(nl, {});
        detached->tobj.assign(nl, {});
    }
    std::vector<LevelTargets<T>> lt;
    for (int i = 0; i < nl; ++i) lt.push_back(build_targets_level(targets, nt, anchors + 2 * na * i, na, ny[i], nx[i], h.anchor_t));
    for (int i = 0; i < nl; ++i) {
        const T* p = maps[i];
        T* dp = dmaps.empty() ? nullptr : dmaps[i];
        const int64_t cells = (int64_t)bs * na * ny[i] * nx[i];
        if (dp)
            for (int64_t j = 0; j < cells * no; ++j) dp[j] = T(0);
        std::vector<T> tobj(cells, T(0));
        const LevelTargets<T>& t = lt[i];
        const int n = t.size();
        const bool replay = detached && detached->replay;
        if (detached && !replay) detached->alpha[i].assign(n, T(0));
        if (n) {
            double sbox = 0, scls = 0;
            const T gbox = T(-h.box * bs / n);              // d total / d CIoU_k
            const T gcls = T(h.cls * bs / ((double)n * nc));  // d total / d (mean BCE element)
            for (int k = 0; k < n; ++k) {
                const int64_t c = loss_cell(t.b[k], t.a[k], t.gj[k], t.gi[k], na, ny[i], nx[i]);
                const T* ps = p + c * no;
                T s[4], pb[4];
                loss_decode_box(ps, &t.anch[2 * k], s, pb);
                T dpb[4] = {0, 0, 0, 0};
                const T iou = ciou(pb, &t.tbox[4 * k], gbox, dp ? dpb : nullptr,
                                   detached ? &detached->alpha[i][k] : nullptr, replay);
                sbox += 1.0 - (double)iou;
                tobj[c] = loss_tobj(iou);
                if (dp) {
                    T draw[4];
                    loss_decode_box_grad(s, &t.anch[2 * k], dpb, draw);
                    T* d = dp + c * no;
                    for (int q = 0; q < 4; ++q) d[q] += draw[q];
                }
                if (nc > 1)
                    for (int q = 0; q < nc; ++q) {
                        const T tt = q == t.cls[k] ? cp : cn;
                        scls += (double)bce_logits(ps[5 + q], tt, T(h.cls_pw));
                        if (dp) dp[c * no + 5 + q] += gcls * bce_logits_grad(ps[5 + q], tt, T(h.cls_pw));
                    }
            }
            L.lbox += sbox / n;
            if (nc > 1) L.lcls += scls / ((double)n * nc);
        }
        if (detached) {
            if (replay) tobj = detached->tobj[i];
            else detached->tobj[i] = tobj;
        }
        const double bal = nl == 3 ? balance3[i] : balance5[i];
        const T gobj = T(h.obj * bal * bs / (double)cells);
        double sobj = 0;
        for (int64_t c = 0; c < cells; ++c) {
            sobj += (double)bce_logits(p[c * no + 4], tobj[c], T(h.obj_pw));
            if (dp) dp[c * no + 4] += gobj * bce_logits_grad(p[c * no + 4], tobj[c], T(h.obj_pw));
        }
        L.lobj += sobj / (double)cells * bal;
    }
    L.lbox *= h.box;
    L.lobj *= h.obj;
    L.lcls *= h.cls;
    L.total = (L.lbox + L.lobj + L.lcls) * bs;
    return L;
}

// ----------------------------------------------------------------------------------------------------
// CUDA path (f32; kernels/loss.cu)

// One build_targets entry as the kernels read it.
struct LossTargetPacked {
    int b, a, gj, gi, cls;
    float tbox[4], anch[2];
};

// Orders a level's entries by cell, keeping list order within a cell, into out, and writes the group
// starts: entries starts[g] .. starts[g + 1] − 1 are those of the g-th distinct cell (starts has
// groups + 1 elements). A group's last entry is the last in list order, the one whose CIoU sets tobj.
inline void pack_level_targets(const LevelTargets<float>& lt, int na, int ny, int nx, std::vector<LossTargetPacked>& out,
                               std::vector<int>& starts) {
    const int n = lt.size();
    std::vector<std::pair<int64_t, int>> key(n);  // (cell, list index): unique, so the order is total
    for (int k = 0; k < n; ++k) key[k] = {loss_cell(lt.b[k], lt.a[k], lt.gj[k], lt.gi[k], na, ny, nx), k};
    std::sort(key.begin(), key.end());
    out.resize(n);
    starts.clear();
    for (int j = 0; j < n; ++j) {
        const int k = key[j].second;
        if (j == 0 || key[j].first != key[j - 1].first) starts.push_back(j);
        out[j] = LossTargetPacked{lt.b[k], lt.a[k], lt.gj[k], lt.gi[k], lt.cls[k],
                                  {lt.tbox[4 * k], lt.tbox[4 * k + 1], lt.tbox[4 * k + 2], lt.tbox[4 * k + 3]},
                                  {lt.anch[2 * k], lt.anch[2 * k + 1]}};
    }
    starts.push_back(n);
}

constexpr int kLossMaxLevels = 5;  // YOLOv5's balance table has 3 or 5 entries

// Blocks of the dense objectness kernel for a level of `cells` cells: fixed by the size alone, so the
// partial sums (one per block) and their reduction are deterministic.
inline int loss_obj_blocks(int64_t cells) {
    const int64_t b = CEIL_DIV(cells, (int64_t)256);
    return (int)(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

// One level's device pointers. targets/group_start: pack_level_targets' output, uploaded. Scratch (device,
// contents irrelevant on entry): tobj (bs·na·ny·nx), group_box and group_cls (groups), obj_partial
// (loss_obj_blocks(cells)).
struct LossLevelCuda {
    const float* map = nullptr;  // (bs, na, ny, nx, no)
    float* dmap = nullptr;       // same shape; d total / d map, overwritten; null: no gradient
    int ny = 0, nx = 0;
    int n = 0, groups = 0;
    const LossTargetPacked* targets = nullptr;
    const int* group_start = nullptr;
    float* tobj = nullptr;
    double* group_box = nullptr;
    double* group_cls = nullptr;
    double* obj_partial = nullptr;
};

// Enqueues the loss on `stream`: items_out (device, 4 doubles) receives lbox, lobj, lcls, total as
// yolo_loss_cpu's LossItems; total_out (device, 1 float) the total.
void yolo_loss_cuda(const LossLevelCuda* levels, int nl, int bs, int na, int no, const LossHyp& h, double* items_out,
                    float* total_out, cudaStream_t stream);
// grad += (*g)·dmap over n elements, g a device scalar (the upstream gradient of the loss): the backward
// of yolo_loss without reading g on the host.
void yolo_loss_backward_cuda(float* grad, const float* g, const float* dmap, int64_t n, cudaStream_t stream);

}  // namespace y5
