/*
 * CUDA side of kernels/loss.h: YOLOv5's ComputeLoss on f32 or f16 maps (read as float), forward and
 * d total / d maps, equal to yolo_loss_cpu<float> / <f16> up to float rounding (the sums run in double in
 * another order). Per level, on one stream:
 *   1. tobj = −1 (no target yet);
 *   2. loss_targets_kernel, one warp per matched cell (a group of pack_level_targets): for the cell's
 *      build_targets entries in list order, box decode + CIoU and its gradient into dmap[..0..3], class BCE
 *      and its gradient into dmap[..5..], tobj[cell] = clamp(CIoU of the last entry, 0). The warp owns its
 *      cell, so duplicates (several entries on one cell) add up in the CPU loop's order with no atomics,
 *      and the result does not change from run to run;
 *   3. loss_obj_kernel over all cells: objectness BCE against tobj (0 where still −1) and its gradient into
 *      dmap[..4], one double partial sum per block (the block count depends only on the level's size); a
 *      written (not accumulated) dmap's unmatched cells get zeros there (loss_zero_unmatched), so dmap may be
 *      the map itself: each element is written after the last read of its value;
 * then loss_reduce_kernel (one block) sums the per-cell and per-block terms (block_sum: a fixed order) and
 * forms the items exactly as yolo_loss_cpu does (in double).
 * Tested against yolo_loss_cpu in tests/test_gpu_loss.cpp.
 */
#include "kernels/cuda_utils.cuh"
#include "kernels/elementwise.h"
#include "kernels/loss.h"

namespace y5 {

// loss_targets_kernel: one warp per matched cell. loss_obj_kernel and loss_reduce_kernel use kBlock threads.
static constexpr int kWarpsPerBlock = 4;
static_assert(reduce_block_ok(kWarpsPerBlock * 32), "loss_targets_kernel: whole warps, at most 1024 threads");

// Σ x[0..n) in double over the block: per-thread strided sums, then block_sum.
__device__ static double block_sum_array(const double* x, int64_t n) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    return block_sum(s);
}

// ----------------------------------------------------------------------------------------------------
// Kernels

// Warp g handles group g: entries start[g] .. start[g + 1] − 1, all on one cell, in list order. S: the maps'
// storage (float or f16), read as float. gscale: null, or the upstream gradient (accumulated with, or written
// scaled). p and dp may be the same memory (no __restrict__ on them).
// counts: the level's (entries, groups), read here so that a captured launch (sized for a capacity) fits any
// batch; gbox and gcls are formed from them as yolo_loss_cpu forms them (double, then float).
template <class S>
__global__ static void loss_targets_kernel(const S* p, S* dp, const float* __restrict__ gscale, bool accumulate,
                                           float* __restrict__ tobj, const LossTargetPacked* __restrict__ tg,
                                           const int* __restrict__ start, const int* __restrict__ counts,
                                           double* __restrict__ group_box, double* __restrict__ group_cls, int na,
                                           int ny, int nx, int no, int bs, double box_gain, double cls_gain, float pw,
                                           float cp, float cn) {
    const int lane = threadIdx.x & 31;
    const int g = blockIdx.x * kWarpsPerBlock + (int)(threadIdx.x >> 5);
    if (g >= counts[1]) return;  // the same for the whole warp: the shuffles below see all 32 lanes
    const int n = counts[0];
    const float gbox = float(-box_gain * bs / n), gcls = float(cls_gain * bs / ((double)n * (no - 5)));
    const int k0 = start[g], k1 = start[g + 1];
    const int64_t c = loss_cell(tg[k0].b, tg[k0].a, tg[k0].gj, tg[k0].gi, na, ny, nx);
    const S* ps = p + c * no;
    const int nc = no - 5;
    const bool accum = gscale != nullptr && accumulate;
    const float gs = gscale ? gscale[0] : 1.f;
    const float raw[4] = {ld(ps[0]), ld(ps[1]), ld(ps[2]), ld(ps[3])};
    __syncwarp();  // every lane has read the box before lane 0 writes its gradient over it

    // Box: every lane computes the same values (a cell has one or a few entries); lane 0 writes them.
    float d[4] = {0.f, 0.f, 0.f, 0.f}, last = 0.f;
    double sbox = 0;
    for (int k = k0; k < k1; ++k) {
        const LossTargetPacked& t = tg[k];
        float s[4], pb[4], dpb[4] = {0.f, 0.f, 0.f, 0.f};
        loss_decode_box(raw, t.anch, s, pb);
        const float iou = ciou(pb, t.tbox, gbox, dp ? dpb : nullptr);
        sbox += 1.0 - (double)iou;
        last = loss_tobj(iou);  // the last entry in list order wins, as tobj[c] = ... in the CPU loop
        if (dp) {
            float draw[4];
            loss_decode_box_grad(s, t.anch, dpb, draw);
            for (int q = 0; q < 4; ++q) d[q] += draw[q];
        }
    }
    if (lane == 0) {
        tobj[c] = last;
        group_box[g] = sbox;
        if (dp)
            for (int q = 0; q < 4; ++q) loss_grad_put(dp + c * no + q, d[q], accum, gs);
    }

    // Classes: lanes split the nc channels; each adds its channel's terms over the entries in list order.
    double scls = 0;
    if (nc > 1) {
        for (int q = lane; q < nc; q += 32) {
            const float x = ld(ps[5 + q]);
            float dq = 0.f;
            for (int k = k0; k < k1; ++k) {
                const float tt = q == tg[k].cls ? cp : cn;
                scls += (double)bce_logits(x, tt, pw);
                if (dp) dq += gcls * bce_logits_grad(x, tt, pw);
            }
            if (dp) loss_grad_put(dp + c * no + 5 + q, dq, accum, gs);
        }
        scls = warp_sum(scls);
    }
    if (lane == 0) group_cls[g] = scls;
}

// Objectness over all cells; partial[blockIdx.x] = this block's Σ BCE.
template <class S>
__global__ static void loss_obj_kernel(const S* p, S* dp, const float* __restrict__ gscale, bool accumulate,
                                       const float* __restrict__ tobj, int64_t cells, int no, float gobj, float pw,
                                       double* __restrict__ partial) {
    const bool accum = gscale != nullptr && accumulate;
    const float gs = gscale ? gscale[0] : 1.f;
    double s = 0;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cells; c += (int64_t)gridDim.x * blockDim.x) {
        const float tc = tobj[c];
        const bool matched = !(tc < 0.f);
        const float x = ld(p[c * no + 4]), t = matched ? tc : 0.f;
        s += (double)bce_logits(x, t, pw);
        // Accumulating: the one rounded add per element. Written: the cell's other channels too, where no
        // target wrote them.
        if (dp) {
            loss_grad_put(dp + c * no + 4, gobj * bce_logits_grad(x, t, pw), accum, gs);
            if (!accum) loss_zero_unmatched(dp + c * no, no, matched);
        }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

struct LossReduceArgs {
    const double* obj[kLossMaxLevels];
    const double* box[kLossMaxLevels];
    const double* cls[kLossMaxLevels];
    const int* counts[kLossMaxLevels];  // (entries, groups) per level, on the device
    int obj_blocks[kLossMaxLevels];
    int64_t cells[kLossMaxLevels];
    double bal[kLossMaxLevels];
    int nl, nc, bs;
    double box_gain, obj_gain, cls_gain;
};

// One block: the level sums, then the items in yolo_loss_cpu's order of operations.
__global__ static void loss_reduce_kernel(LossReduceArgs a, double* __restrict__ items, float* __restrict__ total) {
    double lbox = 0, lobj = 0, lcls = 0;
    for (int i = 0; i < a.nl; ++i) {
        const int n = a.counts[i][0], groups = a.counts[i][1];
        const double sobj = block_sum_array(a.obj[i], a.obj_blocks[i]);
        const double sbox = block_sum_array(a.box[i], groups);
        const double scls = block_sum_array(a.cls[i], groups);
        if (threadIdx.x == 0) items[4 + 3 * i] = sbox, items[5 + 3 * i] = scls, items[6 + 3 * i] = sobj;
        if (n) {
            lbox += sbox / n;
            if (a.nc > 1) lcls += scls / ((double)n * a.nc);
        }
        lobj += sobj / (double)a.cells[i] * a.bal[i];
    }
    if (threadIdx.x == 0) {
        lbox *= a.box_gain;
        lobj *= a.obj_gain;
        lcls *= a.cls_gain;
        const double tot = (lbox + lobj + lcls) * a.bs;
        items[0] = lbox;
        items[1] = lobj;
        items[2] = lcls;
        items[3] = tot;
        total[0] = (float)tot;
    }
}

__global__ static void loss_backward_kernel(float* __restrict__ y, const float* __restrict__ g, const float* __restrict__ x,
                                            int64_t n, bool fresh) {
    const float a = g[0];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = axpy_op(a, x[i], fresh ? 0.0f : y[i]);
}

// ----------------------------------------------------------------------------------------------------
// Launchers

template <class S>
static void yolo_loss_cuda_t(const LossLevelCudaT<S>* levels, int nl, int bs, int na, int no, const LossHyp& h,
                             double* items_out, float* total_out, const float* gscale, cudaStream_t stream,
                             bool accumulate) {
    Y5_CHECK(nl >= 1 && nl <= kLossMaxLevels, "yolo_loss_cuda: %d levels (1 to %d supported)", nl, kLossMaxLevels);
    Y5_CHECK(no > 5, "yolo_loss_cuda: %d channels per anchor, need 5 + nc", no);
    const int nc = no - 5;
    const float cp = float(1.0 - 0.5 * h.label_smoothing), cn = float(0.5 * h.label_smoothing);
    const float cls_pw = float(h.cls_pw), obj_pw = float(h.obj_pw);
    LossReduceArgs ra{};
    ra.nl = nl, ra.nc = nc, ra.bs = bs;
    ra.box_gain = h.box, ra.obj_gain = h.obj, ra.cls_gain = h.cls;
    for (int i = 0; i < nl; ++i) {
        const LossLevelCudaT<S>& L = levels[i];
        const int64_t cells = (int64_t)bs * na * L.ny * L.nx;
        fill_cuda(L.tobj, -1.f, cells, stream);  // no target on the cell (yet)
        if (L.groups > 0) {
            loss_targets_kernel<S><<<CEIL_DIV(L.groups, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
                L.map, L.dmap, gscale, accumulate, L.tobj, L.targets, L.group_start, L.counts, L.group_box,
                L.group_cls, na, L.ny, L.nx, no, bs, h.box, h.cls, cls_pw, cp, cn);
            Y5_LAUNCH_CHECK();
        }
        const double bal = loss_balance(nl, i);
        const float gobj = float(h.obj * bal * bs / (double)cells);
        const int blocks = loss_obj_blocks(cells);
        loss_obj_kernel<S><<<blocks, kBlock, 0, stream>>>(L.map, L.dmap, gscale, accumulate, L.tobj, cells, no, gobj,
                                                          obj_pw, L.obj_partial);
        Y5_LAUNCH_CHECK();
        ra.obj[i] = L.obj_partial, ra.box[i] = L.group_box, ra.cls[i] = L.group_cls;
        ra.obj_blocks[i] = blocks, ra.counts[i] = L.counts;
        ra.cells[i] = cells, ra.bal[i] = bal;
    }
    loss_reduce_kernel<<<1, kBlock, 0, stream>>>(ra, items_out, total_out);
    Y5_LAUNCH_CHECK();
}

void yolo_loss_cuda(const LossLevelCudaT<float>* levels, int nl, int bs, int na, int no, const LossHyp& h,
                    double* items_out, float* total_out, const float* gscale, cudaStream_t stream, bool accumulate) {
    yolo_loss_cuda_t(levels, nl, bs, na, no, h, items_out, total_out, gscale, stream, accumulate);
}
void yolo_loss_cuda(const LossLevelCudaT<f16>* levels, int nl, int bs, int na, int no, const LossHyp& h,
                    double* items_out, float* total_out, const float* gscale, cudaStream_t stream, bool accumulate) {
    yolo_loss_cuda_t(levels, nl, bs, na, no, h, items_out, total_out, gscale, stream, accumulate);
}

void yolo_loss_backward_cuda(float* grad, const float* g, const float* dmap, int64_t n, bool fresh,
                             cudaStream_t stream) {
    if (n == 0) return;
    loss_backward_kernel<<<grid_1d(n), kBlock, 0, stream>>>(grad, g, dmap, n, fresh);
    Y5_LAUNCH_CHECK();
}

}  // namespace y5
