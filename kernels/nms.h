/*
 * YOLOv5 v7.0's non_max_suppression (utils/general.py), CPU reference, in float32 like YOLOv5.
 * pred: one image's decoded Detect output (N, 5+nc): x, y, w, h (pixels), objectness, class scores.
 * Per image: keep obj > conf_thres; class scores ×= obj; xywh → xyxy; one row per (box, class) with score >
 * conf_thres (multi_label, only when nc > 1) or the best class per box (score > conf_thres); class filter;
 * sort by score (descending, ties in index order), keep max_nms; offset boxes by class·7680 unless
 * agnostic; greedy NMS suppressing IoU > iou_thres (torchvision.ops.nms); keep max_det.
 * No wall-clock limit (YOLOv5 stops after 0.5 + 0.05·bs seconds; y5 does not, so the detections never
 * depend on the machine's speed). Output rows: x1, y1, x2, y2, score, class.
 * The per-row math (nms_xyxy, nms_score, nms_best_class, nms_offset_box, nms_iou) is Y5_HD: the CUDA path
 * in kernels/nms.cu (nms_batch_cuda, all images of a batch at once) calls the same definitions, and gives
 * the same detections bit for bit, in the same order.
 */
#pragma once
#include <algorithm>
#include <array>
#include <numeric>
#include <cstddef>
#include <vector>

#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

struct NmsParams {
    float conf_thres = 0.25f, iou_thres = 0.45f;
    bool agnostic = false, multi_label = false;
    int max_det = 300;
    std::vector<int> classes;  // empty: all classes
    int max_nms = 30000;
};

using Detection = std::array<float, 6>;  // x1, y1, x2, y2, score, class

// Float arithmetic rounded once per operation on both sides: on the device the _rn intrinsics keep nvcc
// from fusing a·b + c into one FMA (which rounds once instead of twice), so the GPU's IoUs and scores equal
// the CPU's bit for bit and the thresholds cut in the same places.
Y5_HD float nms_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
Y5_HD float nms_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
Y5_HD float nms_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
Y5_HD float nms_div(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
// std::min / std::max's exact rules (the first argument on ties and NaN), usable on the device.
Y5_HD float nms_min(float a, float b) { return b < a ? b : a; }
Y5_HD float nms_max(float a, float b) { return a < b ? b : a; }

// One prediction row r (5+nc): its box as x1, y1, x2, y2.
Y5_HD void nms_xyxy(const float* r, float* b) {
    const float hw = nms_div(r[2], 2.0f), hh = nms_div(r[3], 2.0f);
    b[0] = nms_sub(r[0], hw), b[1] = nms_sub(r[1], hh), b[2] = nms_add(r[0], hw), b[3] = nms_add(r[1], hh);
}

// Class c's score of row r: class probability × objectness.
Y5_HD float nms_score(const float* r, int c) { return nms_mul(r[5 + c], r[4]); }

// Row r's best class over nc: the first maximum of the scores, as torch.max.
Y5_HD int nms_best_class(const float* r, int nc) {
    int best = 0;
    float sb = nms_score(r, 0);
    for (int c = 1; c < nc; ++c) {
        const float s = nms_score(r, c);
        if (s > sb) best = c, sb = s;
    }
    return best;
}

// The box NMS compares: offset by class·7680 so that boxes of different classes never overlap, unless agnostic.
Y5_HD void nms_offset_box(const float* xyxy, int cls, bool agnostic, float* out) {
    const float off = agnostic ? 0.0f : nms_mul((float)cls, 7680.0f);
    for (int k = 0; k < 4; ++k) out[k] = nms_add(xyxy[k], off);
}

// An xyxy box's area as nms_iou takes it.
Y5_HD float nms_area(float x1, float y1, float x2, float y2) { return nms_mul(nms_sub(x2, x1), nms_sub(y2, y1)); }
// IoU of boxes a and b given as coordinates and areas (nms_area): torchvision's nms kernel's float arithmetic, no
// eps. Scalar arguments, so that the CPU's loop over many b runs vectorised.
Y5_HD float nms_iou_area(float ax1, float ay1, float ax2, float ay2, float area_a, float bx1, float by1, float bx2,
                         float by2, float area_b) {
    const float w = nms_max(0.0f, nms_sub(nms_min(ax2, bx2), nms_max(ax1, bx1)));
    const float h = nms_max(0.0f, nms_sub(nms_min(ay2, by2), nms_max(ay1, by1)));
    const float inter = nms_mul(w, h);
    return nms_div(inter, nms_sub(nms_add(area_a, area_b), inter));
}
// IoU of two xyxy boxes.
Y5_HD float nms_iou(const float* a, const float* b) {
    return nms_iou_area(a[0], a[1], a[2], a[3], nms_area(a[0], a[1], a[2], a[3]), b[0], b[1], b[2], b[3],
                        nms_area(b[0], b[1], b[2], b[3]));
}

// ----------------------------------------------------------------------------------------------------
// CUDA path (kernels/nms.cu; CUDA builds only)

// Device scratch bytes nms_batch_cuda needs for bs images of (N, no) predictions under p. Host arithmetic
// only, and never smaller for a larger N, so a caller may size for its largest input shape. Candidates
// (16 bytes each: a 64-bit sort key and its double buffer) are sorted for a group of images at a time, as
// many as fit in `budget` bytes (at least one image: up to N·nc candidates in multi-label mode, N otherwise);
// the suppression mask takes m·⌈m/64⌉·8 bytes with m = min(max_nms, candidates per image), 113 MB at
// max_nms 30000. budget 0: the least scratch, one image per group.
constexpr size_t kNmsCandidateBudget = size_t(256) << 20;
size_t nms_cuda_scratch_bytes(int bs, int N, int no, const NmsParams& p, size_t budget = kNmsCandidateBudget);

// nms_image for every image of dec (bs, N, no) on the device, enqueued on `stream`: equal results (bitwise,
// same order). Only the detections and their counts come back to the host. scratch: device memory of at
// least nms_cuda_scratch_bytes(bs, N, no, p, 0) bytes; the groups are as large as scratch_bytes allows (the
// largest budget of 256 MiB, 128 MiB, ... whose layout fits). Synchronizes the stream (once per group of images).
std::vector<std::vector<Detection>> nms_batch_cuda(const float* dec, int bs, int N, int no, const NmsParams& p,
                                                   void* scratch, size_t scratch_bytes, cudaStream_t stream);

}  // namespace y5
