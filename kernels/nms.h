/*
 * YOLOv5 v7.0's non_max_suppression (utils/general.py), CPU reference, in float32 like YOLOv5.
 * pred: one image's decoded Detect output (N, 5+nc): x, y, w, h (pixels), objectness, class scores.
 * Per image: keep obj > conf_thres; class scores ×= obj; xywh → xyxy; one row per (box, class) with score >
 * conf_thres (multi_label, only when nc > 1) or the best class per box (score > conf_thres); class filter;
 * sort by score (descending, ties in index order), keep max_nms; offset boxes by class·7680 unless
 * agnostic; greedy NMS suppressing IoU > iou_thres (torchvision.ops.nms); keep max_det.
 * No wall-clock limit (Decisions 2). Output rows: x1, y1, x2, y2, score, class.
 */
#pragma once
#include <algorithm>
#include <array>
#include <numeric>
#include <vector>

namespace y5 {

struct NmsParams {
    float conf_thres = 0.25f, iou_thres = 0.45f;
    bool agnostic = false, multi_label = false;
    int max_det = 300;
    std::vector<int> classes;  // empty: all classes
    int max_nms = 30000;
};

using Detection = std::array<float, 6>;  // x1, y1, x2, y2, score, class

// IoU of two xyxy boxes as torchvision's nms kernel computes it (float, no eps).
inline float nms_iou(const float* a, const float* b) {
    const float area_a = (a[2] - a[0]) * (a[3] - a[1]), area_b = (b[2] - b[0]) * (b[3] - b[1]);
    const float w = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
    const float h = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
    const float inter = w * h;
    return inter / (area_a + area_b - inter);
}

inline std::vector<Detection> nms_image(const float* pred, int N, int no, const NmsParams& p) {
    const int nc = no - 5;
    const bool multi = p.multi_label && nc > 1;
    std::vector<Detection> x;
    std::vector<float> score(nc);
    for (int i = 0; i < N; ++i) {
        const float* r = pred + (int64_t)i * no;
        if (!(r[4] > p.conf_thres)) continue;
        for (int c = 0; c < nc; ++c) score[c] = r[5 + c] * r[4];
        const float x1 = r[0] - r[2] / 2, y1 = r[1] - r[3] / 2, x2 = r[0] + r[2] / 2, y2 = r[1] + r[3] / 2;
        if (multi) {
            for (int c = 0; c < nc; ++c)
                if (score[c] > p.conf_thres) x.push_back({x1, y1, x2, y2, score[c], (float)c});
        } else {
            int best = 0;
            for (int c = 1; c < nc; ++c)
                if (score[c] > score[best]) best = c;  // first maximum, as torch.max
            if (score[best] > p.conf_thres) x.push_back({x1, y1, x2, y2, score[best], (float)best});
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

    // Greedy suppression over class-offset boxes (all boxes in one pass, as torchvision's batched trick).
    const int n = (int)x.size();
    std::vector<std::array<float, 4>> boxes(n);
    for (int i = 0; i < n; ++i) {
        const float off = p.agnostic ? 0.0f : x[i][5] * 7680.0f;
        boxes[i] = {x[i][0] + off, x[i][1] + off, x[i][2] + off, x[i][3] + off};
    }
    std::vector<char> suppressed(n, 0);
    std::vector<Detection> out;
    for (int i = 0; i < n && (int)out.size() < p.max_det; ++i) {
        if (suppressed[i]) continue;
        out.push_back(x[i]);
        for (int j = i + 1; j < n; ++j)
            if (!suppressed[j] && nms_iou(boxes[i].data(), boxes[j].data()) > p.iou_thres) suppressed[j] = 1;
    }
    return out;
}

}  // namespace y5
