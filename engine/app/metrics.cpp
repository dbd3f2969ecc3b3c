/*
 * YOLOv5 v7.0 metrics; each function names the YOLOv5 code it reproduces. numpy's interp, trapz, linspace
 * and smooth-by-convolution are written out with numpy's own rules (index search, end values).
 */
#include "engine/app/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace y5 {

float box_iou(const float* a, const float* b) {
    const float iw = std::max(std::min(a[2], b[2]) - std::max(a[0], b[0]), 0.0f);
    const float ih = std::max(std::min(a[3], b[3]) - std::max(a[1], b[1]), 0.0f);
    const float inter = iw * ih;
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-7f);
}

float iou_threshold(int i) {
    // torch.linspace(0.5, 0.95, 10): start + i·step for the first half, end − (9 − i)·step for the second
    const float step = (0.95f - 0.5f) / 9.0f;
    return i < 5 ? 0.5f + step * (float)i : 0.95f - step * (float)(9 - i);
}

// val.py process_batch
std::vector<std::array<bool, kIouThresholds>> match_predictions(const std::vector<Detection>& det,
                                                               const std::vector<Label>& labels) {
    std::vector<std::array<bool, kIouThresholds>> correct(det.size());
    for (auto& c : correct) c.fill(false);
    struct Match {
        int label, det;
        float iou;
    };
    std::vector<float> iou(labels.size() * det.size());
    for (size_t l = 0; l < labels.size(); ++l) {
        const float lb[4] = {labels[l].x1, labels[l].y1, labels[l].x2, labels[l].y2};
        for (size_t d = 0; d < det.size(); ++d) iou[l * det.size() + d] = box_iou(lb, det[d].data());
    }
    for (int t = 0; t < kIouThresholds; ++t) {
        const float thr = iou_threshold(t);
        std::vector<Match> m;  // torch.where order: label-major, then detection
        for (size_t l = 0; l < labels.size(); ++l)
            for (size_t d = 0; d < det.size(); ++d)
                if (iou[l * det.size() + d] >= thr && (float)labels[l].cls == det[d][5])
                    m.push_back({(int)l, (int)d, iou[l * det.size() + d]});
        if (m.size() > 1) {
            // matches[matches[:, 2].argsort()[::-1]]: ascending by IoU, then reversed
            std::stable_sort(m.begin(), m.end(), [](const Match& a, const Match& b) { return a.iou < b.iou; });
            std::reverse(m.begin(), m.end());
            // np.unique(matches[:, 1], return_index=True): first occurrence per detection, by detection index
            std::map<int, Match> by_det;
            for (const Match& x : m) by_det.emplace(x.det, x);
            // then np.unique(matches[:, 0], ...) on that array: first occurrence per label = lowest detection index
            std::map<int, Match> by_label;
            for (const auto& kv : by_det) by_label.emplace(kv.second.label, kv.second);
            m.clear();
            for (const auto& kv : by_label) m.push_back(kv.second);
        }
        for (const Match& x : m) correct[x.det][t] = true;
    }
    return correct;
}

// np.interp(x, xp, fp, left, right) for increasing (possibly repeated) xp.
static double interp(double x, const std::vector<double>& xp, const std::vector<double>& fp, double left, double right) {
    const size_t n = xp.size();
    if (x < xp[0]) return left;
    if (x > xp[n - 1]) return right;
    const size_t j = (size_t)(std::upper_bound(xp.begin(), xp.end(), x) - xp.begin()) - 1;  // xp[j] <= x < xp[j+1]
    if (j == n - 1 || xp[j] == x) return fp[j];
    const double slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    double v = slope * (x - xp[j]) + fp[j];
    if (std::isnan(v)) {
        v = slope * (x - xp[j + 1]) + fp[j + 1];
        if (std::isnan(v) && fp[j] == fp[j + 1]) v = fp[j];
    }
    return v;
}

static std::vector<double> linspace(double a, double b, int n) {
    std::vector<double> v(n);
    const double step = (b - a) / (n - 1);
    for (int i = 0; i < n; ++i) v[i] = i * step + a;
    v[n - 1] = b;
    return v;
}

// utils/metrics.py compute_ap, method 'interp'; with py: np.interp(px, mrec, mpre) for the PR curve.
static double compute_ap(const std::vector<double>& recall, const std::vector<double>& precision, const std::vector<double>* px,
                         std::vector<double>* py) {
    std::vector<double> mrec = {0.0}, mpre = {1.0};
    mrec.insert(mrec.end(), recall.begin(), recall.end());
    mpre.insert(mpre.end(), precision.begin(), precision.end());
    mrec.push_back(1.0);
    mpre.push_back(0.0);
    for (size_t i = mpre.size() - 1; i-- > 0;) mpre[i] = std::max(mpre[i], mpre[i + 1]);  // precision envelope
    const std::vector<double> x = linspace(0, 1, 101);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = interp(x[i], mrec, mpre, mpre.front(), mpre.back());
    double ap = 0;
    for (size_t i = 0; i + 1 < x.size(); ++i) ap += (x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2.0;  // np.trapz
    if (px) {
        py->resize(px->size());
        for (size_t i = 0; i < px->size(); ++i) (*py)[i] = interp((*px)[i], mrec, mpre, mpre.front(), mpre.back());
    }
    return ap;
}

double compute_ap(const std::vector<double>& recall, const std::vector<double>& precision) {
    return compute_ap(recall, precision, nullptr, nullptr);
}

// utils/metrics.py smooth(y, f): box filter of odd length with edge padding.
std::vector<double> box_smooth(const std::vector<double>& y, double f) {
    const int nf = (int)std::nearbyint(y.size() * f * 2) / 2 + 1;
    std::vector<double> yp(nf / 2, y.front());
    yp.insert(yp.end(), y.begin(), y.end());
    yp.insert(yp.end(), nf / 2, y.back());
    std::vector<double> out(y.size());
    for (size_t k = 0; k < y.size(); ++k) {
        double s = 0;
        for (int m = 0; m < nf; ++m) s += yp[k + m] * (1.0 / nf);
        out[k] = s;
    }
    return out;
}

// utils/metrics.py ap_per_class (plot=False), then val.py's means
ApResult ap_per_class(const std::vector<std::array<bool, kIouThresholds>>& tp, const std::vector<double>& conf,
                      const std::vector<int>& pred_cls, const std::vector<int>& target_cls) {
    const double eps = 1e-16;
    std::vector<size_t> order(conf.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return -conf[a] < -conf[b]; });
    std::map<int, int> counts;
    for (int c : target_cls) counts[c]++;
    ApResult R;
    const int nc = (int)counts.size();
    if (nc == 0) return R;
    const std::vector<double> px = linspace(0, 1, 1000);
    std::vector<std::vector<double>> P(nc, std::vector<double>(1000, 0.0)), Rc(nc, std::vector<double>(1000, 0.0));
    R.ap.assign(nc, {});
    R.pr_curve.assign(nc, {});
    for (auto& a : R.ap) a.fill(0.0);
    int ci = 0;
    for (const auto& kv : counts) {
        const int c = kv.first, n_l = kv.second;
        R.classes.push_back(c);
        std::vector<size_t> idx;
        for (size_t k : order)
            if (pred_cls[k] == c) idx.push_back(k);
        if (!idx.empty() && n_l) {
            const size_t n = idx.size();
            std::vector<double> negconf(n);
            for (size_t k = 0; k < n; ++k) negconf[k] = -conf[idx[k]];
            std::vector<std::vector<double>> recall(kIouThresholds, std::vector<double>(n)),
                precision(kIouThresholds, std::vector<double>(n));
            for (int t = 0; t < kIouThresholds; ++t) {
                double tpc = 0, fpc = 0;
                for (size_t k = 0; k < n; ++k) {
                    tpc += tp[idx[k]][t] ? 1 : 0;
                    fpc += tp[idx[k]][t] ? 0 : 1;
                    recall[t][k] = tpc / (n_l + eps);
                    precision[t][k] = tpc / (tpc + fpc);
                }
            }
            for (int i = 0; i < 1000; ++i) {
                Rc[ci][i] = interp(-px[i], negconf, recall[0], 0.0, recall[0].back());
                P[ci][i] = interp(-px[i], negconf, precision[0], 1.0, precision[0].back());
            }
            for (int t = 0; t < kIouThresholds; ++t)
                R.ap[ci][t] = compute_ap(recall[t], precision[t], t == 0 ? &px : nullptr, &R.pr_curve[ci]);
        }
        ++ci;
    }
    std::vector<double> f1_mean(1000, 0.0);
    std::vector<std::vector<double>> F1(nc, std::vector<double>(1000));
    for (int c = 0; c < nc; ++c)
        for (int i = 0; i < 1000; ++i) {
            F1[c][i] = 2 * P[c][i] * Rc[c][i] / (P[c][i] + Rc[c][i] + eps);
            f1_mean[i] += F1[c][i];
        }
    for (double& v : f1_mean) v /= nc;
    R.px = px, R.p_curve = P, R.r_curve = Rc, R.f1_curve = F1;
    const std::vector<double> sm = box_smooth(f1_mean, 0.1);
    const int best = (int)(std::max_element(sm.begin(), sm.end()) - sm.begin());
    ci = 0;
    for (const auto& kv : counts) {
        const double p = P[ci][best], r = Rc[ci][best];
        const double tpv = std::nearbyint(r * kv.second);
        R.p.push_back(p);
        R.r.push_back(r);
        R.f1.push_back(F1[ci][best]);
        R.tp.push_back(tpv);
        R.fp.push_back(std::nearbyint(tpv / (p + eps) - tpv));
        ++ci;
    }
    for (int c = 0; c < nc; ++c) {
        R.mp += R.p[c] / nc;
        R.mr += R.r[c] / nc;
        R.map50 += R.ap[c][0] / nc;
        double m = 0;
        for (int t = 0; t < kIouThresholds; ++t) m += R.ap[c][t];
        R.map += m / kIouThresholds / nc;
    }
    return R;
}

// scipy.ndimage.gaussian_filter1d: weights exp(-x²/2σ²) normalised over |x| ≤ radius = int(4σ + 0.5), correlated
// with the input extended by 'reflect' (d c b a | a b c d | d c b a), repeated for inputs shorter than the radius.
std::vector<double> gaussian_filter1d(const std::vector<double>& y, double sigma) {
    const int n = (int)y.size(), radius = (int)(4.0 * sigma + 0.5);
    std::vector<double> w(2 * radius + 1);
    double sum = 0;
    for (int k = -radius; k <= radius; ++k) sum += w[k + radius] = std::exp(-0.5 / (sigma * sigma) * k * k);
    for (double& v : w) v /= sum;
    std::vector<double> out(n);
    for (int i = 0; i < n; ++i) {
        double s = 0;
        for (int k = -radius; k <= radius; ++k) {
            int j = ((i + k) % (2 * n) + 2 * n) % (2 * n);  // period 2n of the reflected extension
            if (j >= n) j = 2 * n - 1 - j;
            s += w[k + radius] * y[j];
        }
        out[i] = s;
    }
    return out;
}

// utils/metrics.py ConfusionMatrix
ConfusionMatrix::ConfusionMatrix(int nc, float conf, float iou_thres)
    : nc_(nc), conf_(conf), iou_(iou_thres), m_((size_t)(nc + 1) * (nc + 1), 0.0) {}

void ConfusionMatrix::process_batch(const std::vector<Detection>* det_in, const std::vector<Label>& labels) {
    auto cell = [&](int row, int col) -> double& { return m_[(size_t)row * (nc_ + 1) + col]; };
    if (!det_in) {  // no predictions for this image: every label is a missed object
        for (const Label& l : labels) cell(nc_, l.cls) += 1;
        return;
    }
    std::vector<Detection> det;
    for (const Detection& d : *det_in)
        if (d[4] > conf_) det.push_back(d);
    struct Match {
        int label, det;
        float iou;
    };
    std::vector<Match> m;
    for (size_t l = 0; l < labels.size(); ++l) {
        const float lb[4] = {labels[l].x1, labels[l].y1, labels[l].x2, labels[l].y2};
        for (size_t d = 0; d < det.size(); ++d) {
            const float iou = box_iou(lb, det[d].data());
            if (iou > iou_) m.push_back({(int)l, (int)d, iou});
        }
    }
    if (m.size() > 1) {
        auto by_iou_desc = [&] {
            std::stable_sort(m.begin(), m.end(), [](const Match& a, const Match& b) { return a.iou < b.iou; });
            std::reverse(m.begin(), m.end());
        };
        by_iou_desc();
        std::map<int, Match> by_det;
        for (const Match& x : m) by_det.emplace(x.det, x);
        m.clear();
        for (const auto& kv : by_det) m.push_back(kv.second);
        by_iou_desc();
        std::map<int, Match> by_label;
        for (const Match& x : m) by_label.emplace(x.label, x);
        m.clear();
        for (const auto& kv : by_label) m.push_back(kv.second);
    }
    const bool any = !m.empty();
    for (size_t l = 0; l < labels.size(); ++l) {
        int hits = 0, d = -1;
        for (const Match& x : m)
            if (x.label == (int)l) ++hits, d = x.det;
        if (any && hits == 1) cell((int)det[d][5], labels[l].cls) += 1;
        else cell(nc_, labels[l].cls) += 1;
    }
    if (any)  // YOLOv5 counts unmatched detections as background only when something matched
        for (size_t d = 0; d < det.size(); ++d) {
            bool matched = false;
            for (const Match& x : m) matched = matched || x.det == (int)d;
            if (!matched) cell((int)det[d][5], nc_) += 1;
        }
}

}  // namespace y5
