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
 * (The host side, build_targets and the loss over whole maps, is layers/yolo.h; this file holds what its CPU
 * reference and the CUDA kernels share.)
 * The gradient of total with respect to every map is computed alongside: CIoU's α is a constant (no_grad
 * in YOLOv5), min/max split a tie's gradient in half and clamp(0) passes it at 0, as PyTorch does.
 * The math is templated on T so the gradient check runs in double. Maps are stored as S (f32, f64, or
 * mixed precision's f16) and read as T = acc_t<S> (float for f16): an f16 map's loss is the f32 loss of its
 * values widened to float. A gradient element is summed in T and stored once (loss_grad_put): either written
 * (d total / d map, the f32 path's saved dmap) or accumulated into an existing gradient with the upstream
 * gradient g, grad = st(g·d + ld(grad)) (the f16 path, whose backward recomputes the loss instead of saving
 * an f32 dmap: one rounding per element, as axpy of the f32 path's dmap would round it).
 *
 * CUDA (kernels/loss.cu, f32 or f16 maps): build_targets stays on the host (it depends only on the targets,
 * anchors and grid sizes); pack_level_targets groups each level's list by cell, the groups are uploaded in one copy,
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

// Stores gradient element d (d total / d map, summed in T = acc_t<S>) at `at`: with accumulate, grad += g·d
// (axpy_op's g·d + y) rounded once; otherwise g·d (g = 1: the forward's dmap; the backward's, written over the map).
template <class S> Y5_HD void loss_grad_put(S* at, acc_t<S> d, bool accumulate, acc_t<S> g) {
    *at = accumulate ? st<S>(g * d + ld(*at)) : st<S>(g * d);
}

// Written (not accumulated) gradients may lie over the maps themselves (the backward's, Tape::grad_over_value):
// every element is then written after the last read of its value. Per cell: the matched cells' box and class
// channels after the target pass has read them, the other cells' (and a one-class model's class channel) zeroed,
// the objectness channel by the objectness pass that reads it.
template <class S> Y5_HD void loss_zero_unmatched(S* dcell, int no, bool matched) {
    if (matched) {
        if (no == 6) dcell[5] = st<S>(acc_t<S>(0));  // one class: its channel has no loss term
        return;
    }
    for (int q = 0; q < no; ++q)
        if (q != 4) dcell[q] = st<S>(acc_t<S>(0));
}

// ----------------------------------------------------------------------------------------------------
// CUDA path (f32 or f16 maps; kernels/loss.cu)

// One build_targets entry as the kernels read it.
struct LossTargetPacked {
    int b, a, gj, gi, cls;
    float tbox[4], anch[2];
};

constexpr int kLossMaxLevels = 5;  // YOLOv5's balance table has 3 or 5 entries

// Level i's objectness weight among nl levels (ComputeLoss's balance: [4, 1, 0.4], or five entries for P3-P7).
Y5_HD double loss_balance(int nl, int i) {
    const double b3[3] = {4.0, 1.0, 0.4}, b5[5] = {4.0, 1.0, 0.25, 0.06, 0.02};
    return nl == 3 ? b3[i] : b5[i];
}

// Blocks of the dense objectness kernel for a level of `cells` cells: fixed by the size alone, so the
// partial sums (one per block) and their reduction are deterministic.
inline int loss_obj_blocks(int64_t cells) {
    const int64_t b = CEIL_DIV(cells, (int64_t)256);
    return (int)(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

// One level's device pointers, maps stored as S (float or f16). targets/group_start: pack_level_targets'
// output, uploaded, and counts its (entries, groups). groups here is the launch's extent: the count itself, or
// a captured step's capacity (at least the count; the kernels read the count). Scratch (device, contents
// irrelevant on entry): tobj (bs·na·ny·nx), group_box and group_cls (groups), obj_partial (loss_obj_blocks(cells)).
template <class S> struct LossLevelCudaT {
    const S* map = nullptr;  // (bs, na, ny, nx, no)
    S* dmap = nullptr;       // same shape (may be map itself when written); d total / d map; null: no gradient
    int ny = 0, nx = 0;
    int groups = 0;
    const int* counts = nullptr;
    const LossTargetPacked* targets = nullptr;
    const int* group_start = nullptr;
    float* tobj = nullptr;
    double* group_box = nullptr;
    double* group_cls = nullptr;
    double* obj_partial = nullptr;
};
using LossLevelCuda = LossLevelCudaT<float>;

// Where the CUDA loss's per-batch input lies in one device buffer, for per-level capacities of entries (cap_t)
// and groups (cap_g), each at least the batch's count: the counts (entries, groups) of every level as int pairs,
// then per level the packed entries (cap_t) and the group starts (cap_g + 1 ints), each part 16-byte aligned.
struct LossLayout {
    int nl = 0;
    int cap_t[kLossMaxLevels] = {}, cap_g[kLossMaxLevels] = {};
    size_t counts = 0, t[kLossMaxLevels] = {}, s[kLossMaxLevels] = {}, bytes = 0;
};
inline LossLayout loss_layout(int nl, const int* cap_t, const int* cap_g) {
    LossLayout L;
    L.nl = nl;
    auto put = [&L](size_t bytes) {
        const size_t o = (L.bytes + 15) / 16 * 16;
        L.bytes = o + bytes;
        return o;
    };
    L.counts = put(2 * sizeof(int) * (size_t)nl);
    for (int i = 0; i < nl; ++i) {
        L.cap_t[i] = cap_t[i], L.cap_g[i] = cap_g[i];
        L.t[i] = put(sizeof(LossTargetPacked) * (size_t)cap_t[i]);
        L.s[i] = put(sizeof(int) * (size_t)(cap_g[i] + 1));
    }
    return L;
}

// A captured training step's loss (engine/app/step.h, --cuda-graph; Ctx::loss_fixed): the caller uploads the
// batch's packed targets into `targets` (laid out by `layout`) before the step's graph runs, so yolo_loss uploads
// nothing and its kernels' extents follow the capacities; the forward's items go to `items` (device,
// 4 + 3·kLossMaxLevels doubles) and are not copied back.
struct LossFixed {
    LossLayout layout;
    const char* targets = nullptr;
    double* items = nullptr;
};

// Enqueues the loss on `stream`: items_out (device, 4 + 3·nl doubles) receives lbox, lobj, lcls, total as
// yolo_loss_cpu's LossItems, then per level its sums Σ(1 − CIoU), Σ class BCE, Σ objectness BCE; total_out (device, 1 float) the total. gscale null: each level's dmap (if any) is
// overwritten with d total / d map; gscale a device scalar g (the loss's upstream gradient): g·d total / d map
// is added into dmap with one rounding per element (loss_grad_put), or with accumulate false written, dmap then
// possibly the map itself (the backward over the maps' memory).
void yolo_loss_cuda(const LossLevelCudaT<float>* levels, int nl, int bs, int na, int no, const LossHyp& h,
                    double* items_out, float* total_out, const float* gscale, cudaStream_t stream,
                    bool accumulate = true);
void yolo_loss_cuda(const LossLevelCudaT<f16>* levels, int nl, int bs, int na, int no, const LossHyp& h,
                    double* items_out, float* total_out, const float* gscale, cudaStream_t stream,
                    bool accumulate = true);
// grad += (*g)·dmap over n elements, g a device scalar (the upstream gradient of the loss): the backward
// of yolo_loss without reading g on the host. fresh: grad = (*g)·dmap, grad unread (its first producer).
void yolo_loss_backward_cuda(float* grad, const float* g, const float* dmap, int64_t n, bool fresh,
                             cudaStream_t stream);

}  // namespace y5
