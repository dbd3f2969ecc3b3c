/*
 * The YOLO head's host algorithms, beside the Detect module (layers/modules.h): YOLOv5 v7.0's build_targets
 * and ComputeLoss (utils/loss.py) as a CPU reference over whole maps, the grouping of the targets that the
 * CUDA loss kernels read, the loss as a differentiable op, and non_max_suppression for one image on the
 * host. The per-element math they share with the CUDA kernels is in kernels/loss.h and kernels/nms.h, whose
 * header comments give YOLOv5's formulas.
 */
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/ops/ops.h"
#include "kernels/loss.h"
#include "kernels/nms.h"

namespace y5 {

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
    // Per level, before the means and gains: Σ(1 − CIoU) and Σ class BCE over the matched targets (n of them),
    // Σ objectness BCE over the cells. Images split into parts give sums and counts that add up to the whole
    // batch's (combine_loss_items: validation's image chunks).
    int nl = 0, bs = 0;
    double sbox[kLossMaxLevels] = {}, scls[kLossMaxLevels] = {}, sobj[kLossMaxLevels] = {};
    int64_t n[kLossMaxLevels] = {}, cells[kLossMaxLevels] = {};
};

// The CUDA loss's device-computed items: lbox, lobj, lcls, total, then per level sbox, scls, sobj. With
// Ctx::loss_items_pinned set, yolo_loss leaves them on their way there and returns L with only its counts (nl, bs,
// n, cells); once they have arrived, loss_items_arrived(L, h) fills the rest.
constexpr int kLossItemsDoubles = 4 + 3 * kLossMaxLevels;
void loss_items_arrived(LossItems& L, const double* h);

// lbox, lobj, lcls and total from L's level sums and counts (L.nl, L.bs set): per level the means, in level order,
// then the gains, as ComputeLoss forms them. yolo_loss_cpu and combine_loss_items both end with it.
inline void form_loss_items(LossItems& L, const LossHyp& h, int nc) {
    L.lbox = L.lobj = L.lcls = 0;
    for (int i = 0; i < L.nl; ++i) {
        if (L.n[i]) {
            L.lbox += L.sbox[i] / (double)L.n[i];
            if (nc > 1) L.lcls += L.scls[i] / ((double)L.n[i] * nc);
        }
        if (L.cells[i]) L.lobj += L.sobj[i] / (double)L.cells[i] * loss_balance(L.nl, i);
    }
    L.lbox *= h.box;
    L.lobj *= h.obj;
    L.lcls *= h.cls;
    L.total = (L.lbox + L.lobj + L.lcls) * L.bs;
}

// The items of a batch from those of its parts (disjoint image sets, the same hyp and nc): the level sums
// added, then the means and gains as yolo_loss_cpu forms them; total for the parts' images together.
LossItems combine_loss_items(const std::vector<LossItems>& parts, const LossHyp& h, int nc);

// The values YOLOv5 computes under no_grad / detach (CIoU's α, the objectness targets), per level. A
// finite-difference check records them at the base point and replays them, so it differentiates the
// same function that autograd does.
template <class T> struct LossDetached {
    bool replay = false;
    std::vector<std::vector<T>> alpha, tobj;
};

// maps[i] (bs, na, ny[i], nx[i], no) stored as S (float, double or f16), read as T = acc_t<S>; targets and
// anchors T. dmaps[i] (same shapes; dmaps empty or dmaps[i] null: none) receive d total / d map, overwritten,
// or with gscale, *gscale · d total / d map added into them (the f16 backward), or with gscale and accumulate
// false written (the backward: dmaps[i] may then be maps[i] itself, loss_zero_unmatched). Each element's
// gradient is summed in T in list order and stored once (loss_grad_put).
template <class S>
LossItems yolo_loss_cpu(const std::vector<const S*>& maps, const std::vector<S*>& dmaps, const std::vector<int>& ny,
                        const std::vector<int>& nx, int bs, int na, int no, const acc_t<S>* targets, int nt,
                        const acc_t<S>* anchors, const LossHyp& h, LossDetached<acc_t<S>>* detached = nullptr,
                        const acc_t<S>* gscale = nullptr, bool accumulate = true) {
    using T = acc_t<S>;
    const int nl = (int)maps.size(), nc = no - 5;
    const bool accum = gscale != nullptr && accumulate;
    const T gs = gscale ? *gscale : T(1);
    const T cp = T(1.0 - 0.5 * h.label_smoothing), cn = T(0.5 * h.label_smoothing);
    LossItems L;
    L.nl = nl, L.bs = bs;
    if (detached && !detached->replay) {
        detached->alpha.assign(nl, {});
        detached->tobj.assign(nl, {});
    }
    std::vector<LevelTargets<T>> lt;
    for (int i = 0; i < nl; ++i) lt.push_back(build_targets_level(targets, nt, anchors + 2 * na * i, na, ny[i], nx[i], h.anchor_t));
    for (int i = 0; i < nl; ++i) {
        const S* p = maps[i];
        S* dp = dmaps.empty() ? nullptr : dmaps[i];
        const int64_t cells = (int64_t)bs * na * ny[i] * nx[i];
        std::vector<T> tobj(cells, T(0));
        // Box and class gradients of the matched cells, summed in T: (slots, no), a slot per distinct cell.
        std::vector<T> acc;
        std::vector<int64_t> slot_cell;
        std::unordered_map<int64_t, int> slot;
        const LevelTargets<T>& t = lt[i];
        const int n = t.size();
        const bool replay = detached && detached->replay;
        if (detached && !replay) detached->alpha[i].assign(n, T(0));
        if (n) {
            double sbox = 0, scls = 0;
            const T gbox = T(-h.box * bs / n);              // d total / d CIoU_k
            const T gcls = T(h.cls * bs / ((double)n * nc));  // d total / d (mean BCE element)
            const int ncl = nc > 1 ? nc : 0;
            // Each target's terms on the CPU threads (they read the map only): its cell, CIoU, box gradient, class
            // BCE values and gradients; then, in list order on this thread, the sums and the per-cell gradient sums,
            // in the order of operations of one pass over the targets (the same bits with any thread count).
            std::vector<int64_t> cell(n);
            std::vector<T> iou(n), draw(dp ? (size_t)n * 4 : 0), bce((size_t)n * ncl), gq(dp ? (size_t)n * ncl : 0);
            par(n, [&](int64_t k0, int64_t k1) {
                for (int64_t k = k0; k < k1; ++k) {
                    const int64_t c = loss_cell(t.b[k], t.a[k], t.gj[k], t.gi[k], na, ny[i], nx[i]);
                    const S* ps = p + c * no;
                    cell[k] = c;
                    const T raw[4] = {ld(ps[0]), ld(ps[1]), ld(ps[2]), ld(ps[3])};
                    T s[4], pb[4];
                    loss_decode_box(raw, &t.anch[2 * k], s, pb);
                    T dpb[4] = {0, 0, 0, 0};
                    iou[k] = ciou(pb, &t.tbox[4 * k], gbox, dp ? dpb : nullptr,
                                  detached ? &detached->alpha[i][k] : nullptr, replay);
                    if (dp) loss_decode_box_grad(s, &t.anch[2 * k], dpb, &draw[4 * k]);
                    for (int q = 0; q < ncl; ++q) {
                        const T tt = q == t.cls[k] ? cp : cn, x = ld(ps[5 + q]);
                        bce[k * ncl + q] = bce_logits(x, tt, T(h.cls_pw));
                        if (dp) gq[k * ncl + q] = gcls * bce_logits_grad(x, tt, T(h.cls_pw));
                    }
                }
            }, 16);
            for (int k = 0; k < n; ++k) {
                const int64_t c = cell[k];
                sbox += 1.0 - (double)iou[k];
                tobj[c] = loss_tobj(iou[k]);
                T* d = nullptr;
                if (dp) {
                    auto [it, fresh] = slot.emplace(c, (int)slot_cell.size());
                    if (fresh) {
                        slot_cell.push_back(c);
                        acc.resize(acc.size() + no, T(0));
                    }
                    d = &acc[(size_t)it->second * no];
                    for (int q = 0; q < 4; ++q) d[q] += draw[4 * k + q];
                }
                for (int q = 0; q < ncl; ++q) {
                    scls += (double)bce[k * ncl + q];
                    if (dp) d[5 + q] += gq[k * ncl + q];
                }
            }
            for (size_t j = 0; j < slot_cell.size(); ++j)
                for (int q = 0; q < no; ++q)
                    if (q != 4 && (q < 4 || nc > 1))
                        loss_grad_put(dp + slot_cell[j] * no + q, acc[j * no + q], accum, gs);
            L.sbox[i] = sbox, L.scls[i] = scls, L.n[i] = n;
        }
        if (dp && !accum) {  // after the target pass's reads; the objectness channels are the pass below's
            std::vector<char> matched(cells, 0);
            for (int64_t c : slot_cell) matched[c] = 1;
            par(cells, [&](int64_t c0, int64_t c1) {
                for (int64_t c = c0; c < c1; ++c) loss_zero_unmatched(dp + c * no, no, matched[c] != 0);
            }, 256);
        }
        if (detached) {
            if (replay) tobj = detached->tobj[i];
            else detached->tobj[i] = tobj;
        }
        const double bal = loss_balance(nl, i);
        const T gobj = T(h.obj * bal * bs / (double)cells);
        // The objectness BCE per cell on the threads (each cell's gradient read and written by its own chunk), summed
        // in cell order here.
        std::vector<T> bobj(cells);
        par(cells, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
                const T x = ld(p[c * no + 4]);
                bobj[c] = bce_logits(x, tobj[c], T(h.obj_pw));
                if (dp) loss_grad_put(dp + c * no + 4, gobj * bce_logits_grad(x, tobj[c], T(h.obj_pw)), accum, gs);
            }
        }, 1024);
        double sobj = 0;
        for (int64_t c = 0; c < cells; ++c) sobj += (double)bobj[c];
        L.sobj[i] = sobj, L.cells[i] = cells;
    }
    form_loss_items(L, h, nc);
    return L;
}

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

// The CUDA loss's per-batch input, made on the host: build_targets of every level (grid ny[i] × nx[i]) grouped by
// cell (pack_level_targets), with the counts. Checks every target's image (< bs) and class (< nc) first.
struct LossPacked {
    int nl = 0;
    std::vector<LossTargetPacked> t[kLossMaxLevels];
    std::vector<int> starts[kLossMaxLevels];
    int n[kLossMaxLevels] = {}, groups[kLossMaxLevels] = {};
};
LossPacked pack_loss_targets(const float* tp, int nt, const float* ap, int na, int bs, int nc, const std::vector<int>& ny,
                             const std::vector<int>& nx, const LossHyp& hyp);
// P laid out by L (its capacities at least P's counts: loss_fits) in a host buffer of L.bytes, unused room zeroed.
bool loss_fits(const LossPacked& P, const LossLayout& L);
std::vector<char> loss_buffer(const LossPacked& P, const LossLayout& L);
// The batch's LossItems before the sums arrive (loss_items_arrived): levels, batch, target counts and cells.
LossItems loss_items_counts(const LossPacked& P, int bs, int na, const std::vector<int>& ny, const std::vector<int>& nx);

// ----------------------------------------------------------------------------------------------------
// The loss op

// YOLOv5's ComputeLoss: maps (bs, na, ny, nx, 5+nc) per level, targets (nt, 6) (image, class, x, y, w, h)
// normalised, anchors (nl, na, 2) in grid units. total is a one-element tensor (loss × bs); items the
// three logged components after their gains.
// CPU maps: targets and anchors on the CPU too, same dtype (f32 for f16 maps). CUDA maps (f32 or f16):
// targets and anchors f32 on either device, the CPU preferred (build_targets runs on the host; device ones
// cost one small download each); the step then makes one upload of the target lists and one download of the
// items. [f16] f16 maps (mixed precision): total f32, the loss of the maps' values widened to float; the
// backward recomputes the loss and adds into the maps' f16 gradients (no f32 copy or saved gradient map).
struct YoloLoss {
    Var total;
    LossItems items;
};
YoloLoss yolo_loss(Ctx& c, const std::vector<Var>& maps, const Tensor& targets, const Tensor& anchors, const LossHyp& hyp);

// ----------------------------------------------------------------------------------------------------
// non_max_suppression for one image (the CPU reference of kernels/nms.cu's nms_batch_cuda)

inline std::vector<Detection> nms_image(const float* pred, int N, int no, const NmsParams& p) {
    const int nc = no - 5;
    const bool multi = p.multi_label && nc > 1;
    std::vector<Detection> x;
    for (int i = 0; i < N; ++i) {
        const float* r = pred + (int64_t)i * no;
        if (!(r[4] > p.conf_thres)) continue;
        float b[4];
        nms_xyxy(r, b);
        if (multi) {
            for (int c = 0; c < nc; ++c) {
                const float s = nms_score(r, c);
                if (s > p.conf_thres) x.push_back({b[0], b[1], b[2], b[3], s, (float)c});
            }
        } else {
            const int best = nms_best_class(r, nc);
            const float s = nms_score(r, best);
            if (s > p.conf_thres) x.push_back({b[0], b[1], b[2], b[3], s, (float)best});
        }
    }
    if (!p.classes.empty())
        x.erase(std::remove_if(x.begin(), x.end(),
                               [&](const Detection& d) {
                                   return std::find(p.classes.begin(), p.classes.end(), (int)d[5]) == p.classes.end();
                               }),
                x.end());
    std::stable_sort(x.begin(), x.end(), [](const Detection& a, const Detection& b) { return a[4] > b[4]; });
    if ((int)x.size() > p.max_nms) x.resize(p.max_nms);

    // Greedy suppression over class-offset boxes (all boxes in one pass, as torchvision's batched trick), the boxes
    // as columns so that a kept box's IoUs with all later boxes run as one vectorised loop (nms_iou's operations,
    // so its bits): at 96 px, where validation keeps up to max_det boxes of ~1700 per image, the pairwise IoUs were
    // the largest part of y5val's time.
    const int n = (int)x.size();
    std::vector<float> cols(5 * (size_t)n);
    float *x1 = cols.data(), *y1 = x1 + n, *x2 = y1 + n, *y2 = x2 + n, *area = y2 + n;
    for (int i = 0; i < n; ++i) {
        float b[4];
        nms_offset_box(x[i].data(), (int)x[i][5], p.agnostic, b);
        x1[i] = b[0], y1[i] = b[1], x2[i] = b[2], y2[i] = b[3], area[i] = nms_area(b[0], b[1], b[2], b[3]);
    }
    std::vector<int32_t> suppressed(n, 0);
    std::vector<Detection> out;
    const float thr = p.iou_thres;
    for (int i = 0; i < n && (int)out.size() < p.max_det; ++i) {
        if (suppressed[i]) continue;
        out.push_back(x[i]);
        const float ax1 = x1[i], ay1 = y1[i], ax2 = x2[i], ay2 = y2[i], aa = area[i];
        int32_t* sup = suppressed.data();
        for (int j = i + 1; j < n; ++j)
            sup[j] |= nms_iou_area(ax1, ay1, ax2, ay2, aa, x1[j], y1[j], x2[j], y2[j], area[j]) > thr;
    }
    return out;
}

}  // namespace y5
