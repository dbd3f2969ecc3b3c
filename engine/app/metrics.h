/*
 * Detection metrics exactly as YOLOv5 v7.0 computes them (val.py process_batch, utils/metrics.py).
 *   box_iou            xyxy IoU with eps 1e-7 in float32
 *   match_predictions  the TP matrix (n, 10) at IoU 0.50:0.05:0.95: same-class pairs with IoU ≥ t, best IoU
 *                      per detection, then per label the lowest detection index (YOLOv5's order)
 *   ap_per_class       per class present in the labels: 101-point interpolated AP by the trapezoid rule for
 *                      each threshold; P, R and F1 at the maximum of the smoothed mean F1
 *   ConfusionMatrix    (nc+1)², conf 0.25, IoU 0.45, background last; YOLOv5's rules, quirks included
 *   fitness            0.1·mAP50 + 0.9·mAP50-95
 * Sorts that YOLOv5 leaves to an unstable numpy/torch sort use a stable one here: the results differ from
 * YOLOv5 only when detections tie exactly in confidence (or IoU), where YOLOv5's own order is unspecified.
 */
#pragma once
#include <array>
#include <vector>

#include "kernels/nms.h"

namespace y5 {

struct Label {
    int cls;
    float x1, y1, x2, y2;
};

float box_iou(const float* a, const float* b);  // xyxy, eps 1e-7, float32 as torch computes it

constexpr int kIouThresholds = 10;
float iou_threshold(int i);  // torch.linspace(0.5, 0.95, 10)[i] in float32

// correct[d][t]: detection d (in NMS order) is a true positive at threshold t.
std::vector<std::array<bool, kIouThresholds>> match_predictions(const std::vector<Detection>& det,
                                                               const std::vector<Label>& labels);

struct ApResult {
    std::vector<int> classes;                              // classes present in the labels, ascending
    std::vector<double> tp, fp, p, r, f1;                  // per class, at the best mean-F1 confidence
    std::vector<std::array<double, kIouThresholds>> ap;    // per class, per threshold
    double mp = 0, mr = 0, map50 = 0, map = 0;             // means over classes
    // Curves for the figures (YOLOv5's plot=True), over px = linspace(0, 1, 1000): per class P, R and F1 against
    // the confidence px, and the precision at recall px (IoU 0.5; empty for a class without predictions).
    std::vector<double> px;
    std::vector<std::vector<double>> p_curve, r_curve, f1_curve, pr_curve;
};

// tp (n, 10), conf, pred_cls for every detection of the run; target_cls for every label.
ApResult ap_per_class(const std::vector<std::array<bool, kIouThresholds>>& tp, const std::vector<double>& conf,
                      const std::vector<int>& pred_cls, const std::vector<int>& target_cls);

// utils/metrics.py smooth(y, f): a box filter of odd length round(n·f·2)/2·2 + 1 with edge padding.
std::vector<double> box_smooth(const std::vector<double>& y, double f);

// scipy.ndimage.gaussian_filter1d(y, sigma, mode='reflect', truncate=4.0): plot_results' smoothed line.
std::vector<double> gaussian_filter1d(const std::vector<double>& y, double sigma);

// compute_ap: the 101-point interpolated area under the precision envelope.
double compute_ap(const std::vector<double>& recall, const std::vector<double>& precision);

class ConfusionMatrix {
public:
    explicit ConfusionMatrix(int nc, float conf = 0.25f, float iou_thres = 0.45f);
    // det: one image's NMS output (or none, when the image had no predictions); labels of that image.
    void process_batch(const std::vector<Detection>* det, const std::vector<Label>& labels);
    double at(int row, int col) const { return m_[(size_t)row * (nc_ + 1) + col]; }
    int nc() const { return nc_; }

private:
    int nc_;
    float conf_, iou_;
    std::vector<double> m_;  // rows: predicted class (nc = background), columns: true class
};

inline double fitness(double p, double r, double map50, double map) { return 0.0 * p + 0.0 * r + 0.1 * map50 + 0.9 * map; }

}  // namespace y5
