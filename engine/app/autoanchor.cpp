/*
 * AutoAnchor (YOLOv5 v7.0 utils/autoanchor.py), on the host: a few thousand labels × 9 anchors, 1000 times.
 * The metric runs in f32 as YOLOv5's torch code does (r = wh/k, 1/r in f32) and sums in f64.
 */
#include "engine/app/autoanchor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include <opencv2/core.hpp>

#include "engine/device/device.h"
#include "kernels/check.h"
#include "kernels/common.h"
#include "layers/model.h"

namespace y5 {

namespace {

constexpr uint64_t kAutoAnchorStream = 0xA0000000ull;  // y5's Rng stream for AutoAnchor (none else uses it)
constexpr const char* kPrefix = "AutoAnchor: ";

// x (na,) of one label: min over w, h of min(r, 1/r), r = wh/k in f32.
inline float ratio(float w, float h, const float* k) {
    const float rw = w / k[0], rh = h / k[1];
    return std::min(std::min(rw, 1.0f / rw), std::min(rh, 1.0f / rh));
}

// Anchors k (n, 2) sorted by area, small to large, as print_results sorts them.
void sort_by_area(std::vector<double>& k) {
    const size_t n = k.size() / 2;
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return k[2 * a] * k[2 * a + 1] < k[2 * b] * k[2 * b + 1]; });
    std::vector<double> s(k.size());
    for (size_t i = 0; i < n; ++i) s[2 * i] = k[2 * idx[i]], s[2 * i + 1] = k[2 * idx[i] + 1];
    k = s;
}

std::vector<float> to_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// kmean_anchors' print_results: recall and ratios on the unfiltered wh0, then the anchors rounded to pixels.
void print_results(FILE* log, const std::vector<float>& wh0, const std::vector<double>& k, double thr, int imgsz) {
    if (!log) return;
    const size_t n = k.size() / 2, m = wh0.size() / 2;
    const std::vector<float> kf = to_f32(k);
    const float t = (float)(1.0 / thr);
    double bpr = 0, above = 0, x_sum = 0, best_sum = 0, past_sum = 0;
    for (size_t i = 0; i < m; ++i) {
        float best = 0;
        for (size_t a = 0; a < n; ++a) {
            const float x = ratio(wh0[2 * i], wh0[2 * i + 1], &kf[2 * a]);
            best = std::max(best, x), x_sum += x;
            if (x > t) above += 1, past_sum += x;
        }
        best_sum += best, bpr += best > t;
    }
    std::fprintf(log, "%sthr=%.2f: %.4f best possible recall, %.2f anchors past thr\n", kPrefix, 1.0 / thr, bpr / m,
                 above / (double)(m * n) * n);
    std::string s;
    char b[48];
    for (size_t a = 0; a < n; ++a) {  // Python's round(): half to even, as nearbyint in the default rounding mode
        snprintf(b, sizeof b, "%s%.0f,%.0f", a ? ", " : "", std::nearbyint(k[2 * a]), std::nearbyint(k[2 * a + 1]));
        s += b;
    }
    std::fprintf(log, "%sn=%zu, img_size=%d, metric_all=%.3f/%.3f-mean/best, past_thr=%.3f-mean: %s\n", kPrefix, n, imgsz,
                 x_sum / (double)(m * n), best_sum / m, past_sum / above, s.c_str());
}

// check_anchor_order on pixel anchors (nl, na, 2): the levels' mean anchor area must grow with the stride,
// else the levels are reversed.
void check_anchor_order(std::vector<float>& a, int nl, int na, const std::vector<float>& stride, FILE* log) {
    auto mean_area = [&](int l) {
        float s = 0;
        for (int j = 0; j < na; ++j) s += a[(l * na + j) * 2] * a[(l * na + j) * 2 + 1];
        return s / na;
    };
    const float da = mean_area(nl - 1) - mean_area(0), ds = stride[nl - 1] - stride[0];
    if (da == 0 || (da > 0) == (ds > 0)) return;
    if (log) std::fprintf(log, "%sReversing anchor order\n", kPrefix);
    std::vector<float> f(a.size());
    for (int l = 0; l < nl; ++l) std::memcpy(&f[l * 2 * na], &a[(nl - 1 - l) * 2 * na], 2 * na * sizeof(float));
    a = f;
}

}  // namespace

std::vector<float> label_wh(const Dataset& d, int imgsz, const std::vector<double>& scale) {
    Y5_CHECK(scale.empty() || scale.size() == d.records.size(), "label_wh: %zu scales for %zu images", scale.size(),
             d.records.size());
    std::vector<float> wh;
    for (size_t i = 0; i < d.records.size(); ++i) {
        const ImageRecord& r = d.records[i];
        const double mx = std::max(r.width, r.height), sc = scale.empty() ? 1.0 : scale[i];
        const double sw = imgsz * (double)r.width / mx * sc, sh = imgsz * (double)r.height / mx * sc;
        for (const LabelRow& l : r.labels) wh.push_back((float)(l.w * sw)), wh.push_back((float)(l.h * sh));
    }
    return wh;
}

AnchorFit anchor_fit(const std::vector<float>& wh, const std::vector<float>& k, double thr) {
    const size_t m = wh.size() / 2, n = k.size() / 2;
    const float t = (float)(1.0 / thr);
    AnchorFit f;
    for (size_t i = 0; i < m; ++i) {
        float best = 0;
        for (size_t a = 0; a < n; ++a) {
            const float x = ratio(wh[2 * i], wh[2 * i + 1], &k[2 * a]);
            best = std::max(best, x), f.aat += x > t;
        }
        f.bpr += best > t;
    }
    if (m) f.bpr /= m, f.aat /= m;
    return f;
}

double anchor_fitness(const std::vector<float>& wh, const std::vector<float>& k, double thr) {
    const size_t m = wh.size() / 2, n = k.size() / 2;
    const float t = (float)(1.0 / thr);
    double s = 0;
    for (size_t i = 0; i < m; ++i) {
        float best = 0;
        for (size_t a = 0; a < n; ++a) best = std::max(best, ratio(wh[2 * i], wh[2 * i + 1], &k[2 * a]));
        if (best > t) s += best;
    }
    return m ? s / m : 0.0;
}

std::vector<float> kmean_anchors(const Dataset& d, int n, int imgsz, double thr, int gen, Rng& rng, FILE* log) {
    // wh0 (m, 2): every label, no scale augmentation; wh: those with a side ≥ 2 px (the k-means and fitness data).
    const std::vector<float> wh0 = label_wh(d, imgsz);
    const size_t m0 = wh0.size() / 2;
    size_t tiny = 0;
    std::vector<float> wh;
    for (size_t i = 0; i < m0; ++i) {
        tiny += wh0[2 * i] < 3.0f || wh0[2 * i + 1] < 3.0f;
        if (wh0[2 * i] >= 2.0f || wh0[2 * i + 1] >= 2.0f) wh.push_back(wh0[2 * i]), wh.push_back(wh0[2 * i + 1]);
    }
    const int m = (int)(wh.size() / 2);
    if (tiny && log)
        std::fprintf(log, "%sWARNING ⚠️ Extremely small objects found: %zu of %zu labels are <3 pixels in size\n",
                     kPrefix, tiny, m0);

    // k-means on wh / σ (population σ per side), with scipy's kmeans(iter=30) choices as YOLOv5 calls it: 30 runs,
    // each from n distinct random labels as centres, keeping the run with the lowest distortion, the mean
    // Euclidean distance to the nearest centre (not OpenCV's sum of squares, which spends the centres on the few
    // large boxes). Each run's Lloyd iterations are OpenCV's kmeans from those centres' labels; they differ from
    // scipy's in stopping when no centre moves more than 1e-5 (scipy: when the distortion changes by ≤ 1e-5) and
    // in refilling an emptied cluster with a far point (scipy drops it, then YOLOv5 falls back to random anchors).
    std::vector<double> k(2 * n);
    if (log) std::fprintf(log, "%sRunning kmeans for %d anchors on %d points...\n", kPrefix, n, m);
    if (n <= m) {
        double sigma[2];
        for (int c = 0; c < 2; ++c) {
            double mean = 0, var = 0;
            for (int i = 0; i < m; ++i) mean += wh[2 * i + c];
            mean /= m;
            for (int i = 0; i < m; ++i) var += (wh[2 * i + c] - mean) * (wh[2 * i + c] - mean);
            sigma[c] = var > 0 ? std::sqrt(var / m) : 1.0;  // a constant side is left unwhitened
        }
        cv::Mat pts(m, 2, CV_32F);
        for (int i = 0; i < m; ++i)
            for (int c = 0; c < 2; ++c) pts.at<float>(i, c) = (float)(wh[2 * i + c] / sigma[c]);
        // Index of the nearest of centres (n, 2) for point i, and its distance.
        auto nearest = [&](const cv::Mat& ctr, int i, double* dist) {
            int best = 0;
            double bd = 1e300;
            for (int a = 0; a < n; ++a) {
                const double dx = pts.at<float>(i, 0) - ctr.at<float>(a, 0), dy = pts.at<float>(i, 1) - ctr.at<float>(a, 1);
                if (dx * dx + dy * dy < bd) bd = dx * dx + dy * dy, best = a;
            }
            *dist = std::sqrt(bd);
            return best;
        };
        double best_distortion = 1e300;
        std::vector<int> order(m);
        for (int run = 0; run < 30; ++run) {
            std::iota(order.begin(), order.end(), 0);  // n distinct labels: a partial Fisher-Yates shuffle
            cv::Mat init(n, 2, CV_32F), labels(m, 1, CV_32S), centers;
            for (int a = 0; a < n; ++a) {
                std::swap(order[a], order[a + rng.randint((uint32_t)(m - a))]);
                pts.row(order[a]).copyTo(init.row(a));
            }
            double dist;
            for (int i = 0; i < m; ++i) labels.at<int>(i) = nearest(init, i, &dist);
            cv::kmeans(pts, n, labels, cv::TermCriteria(cv::TermCriteria::EPS + cv::TermCriteria::COUNT, 300, 1e-5), 1,
                       cv::KMEANS_USE_INITIAL_LABELS, centers);
            double distortion = 0;
            for (int i = 0; i < m; ++i) nearest(centers, i, &dist), distortion += dist;
            if (distortion / m < best_distortion) {
                best_distortion = distortion / m;
                for (int a = 0; a < n; ++a)
                    for (int c = 0; c < 2; ++c) k[2 * a + c] = centers.at<float>(a, c) * sigma[c];
            }
        }
    } else {  // fewer labels than anchors: random anchors, sorted values, as YOLOv5's fallback
        if (log) std::fprintf(log, "%sWARNING ⚠️ switching strategies from kmeans to random init\n", kPrefix);
        for (double& v : k) v = rng.uniform_double() * imgsz;
        std::sort(k.begin(), k.end());
    }
    sort_by_area(k);

    // Genetic refinement: each generation multiplies every anchor side by v = 1 + [u < 0.9]·r·N(0,1)·0.1,
    // clipped to [0.3, 3] (r ~ U(0,1) once per generation; redrawn while v is all ones), anchors clipped to ≥ 2 px,
    // and keeps the mutant when its fitness is higher.
    const double mp = 0.9, s = 0.1;
    double f = anchor_fitness(wh, to_f32(k), thr);
    std::vector<double> v(k.size()), kg(k.size());
    for (int g = 0; g < gen; ++g) {
        bool unchanged = true;
        while (unchanged) {
            const double r = rng.uniform_double();
            for (double& x : v) {
                const bool mutate = rng.uniform_double() < mp;
                x = std::clamp((mutate ? r * rng.normal() * s : 0.0) + 1.0, 0.3, 3.0);
                unchanged = unchanged && x == 1.0;
            }
        }
        for (size_t j = 0; j < k.size(); ++j) kg[j] = std::max(k[j] * v[j], 2.0);
        const double fg = anchor_fitness(wh, to_f32(kg), thr);
        if (fg > f) f = fg, k = kg;
    }
    if (log) std::fprintf(log, "%sEvolving anchors with Genetic Algorithm: fitness = %.4f: %d generations\n", kPrefix, f, gen);
    sort_by_area(k);
    print_results(log, wh0, k, thr, imgsz);
    return to_f32(k);
}

bool check_anchors(const Dataset& d, Model& model, double thr, int imgsz, uint64_t seed, FILE* log) {
    Detect& det = *model.detect;
    const int nl = det.nl, na = det.na;
    Rng rng(seed, kAutoAnchorStream);
    std::vector<double> scale(d.records.size());  // YOLOv5's scale augmentation, one U(0.9, 1.1) per image
    for (double& s : scale) s = rng.uniform_double(0.9, 1.1);
    const std::vector<float> wh = label_wh(d, imgsz, scale);
    if (wh.empty()) {
        if (log) std::fprintf(log, "\n%sno labels, anchors left as they are\n", kPrefix);
        return false;
    }

    // The model's anchors (nl, na, 2), grid units → pixels.
    Param& p = model.params[det.anchors];
    Y5_CHECK(p.value.dtype == DType::F32, "AutoAnchor: the anchors buffer is %s, expected f32", dtype_name(p.value.dtype));
    std::vector<float> keep;
    const Tensor host = model.loss_anchors(&keep);
    std::vector<float> anchors(host.ptr<float>(), host.ptr<float>() + host.numel());
    for (int l = 0; l < nl; ++l)
        for (int j = 0; j < 2 * na; ++j) anchors[l * 2 * na + j] *= det.stride[l];

    const AnchorFit fit = anchor_fit(wh, anchors, thr);
    if (log) std::fprintf(log, "\n%s%.2f anchors/target, %.3f Best Possible Recall (BPR). ", kPrefix, fit.aat, fit.bpr);
    if (fit.bpr > 0.98) {
        if (log) std::fprintf(log, "Current anchors are a good fit to dataset ✅\n");
        return false;
    }
    if (log) std::fprintf(log, "Anchors are a poor fit to dataset ⚠️, attempting to improve...\n");
    std::vector<float> k = kmean_anchors(d, nl * na, imgsz, thr, 1000, rng, log);
    const double new_bpr = anchor_fit(wh, k, thr).bpr;
    if (new_bpr <= fit.bpr) {
        if (log) std::fprintf(log, "%sDone ⚠️ (original anchors better than new anchors, proceeding with original anchors)\n", kPrefix);
        return false;
    }
    // Sorted by area, the first na go to the first level; check_anchor_order in pixels, then grid units, then f16
    // precision (train.py's model.half().float() after check_anchors).
    check_anchor_order(k, nl, na, det.stride, log);
    for (int l = 0; l < nl; ++l)
        for (int j = 0; j < 2 * na; ++j) k[l * 2 * na + j] = f16_to_f32(f32_to_f16(k[l * 2 * na + j] / det.stride[l]));
    if (p.value.device == Device::CPU)
        std::memcpy(p.value.data, k.data(), p.value.bytes());
    else
        copy_host_to_device(p.value.data, k.data(), p.value.bytes(), model.params.cuda());
    if (log) std::fprintf(log, "%sDone ✅ (optional: update model *.yaml to use these anchors in the future)\n", kPrefix);
    return true;
}

}  // namespace y5
