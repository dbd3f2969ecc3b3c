#include "engine/data/augment.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <opencv2/imgproc.hpp>

#include "kernels/check.h"
#include "kernels/image.h"

namespace y5 {

double Draws::uniform(double lo, double hi) {
    if (rng_) return lo + (hi - lo) * rng_->uniform_double();
    Y5_CHECK(next_ < replay_.size(), "replayed draws exhausted after %zu values", replay_.size());
    return replay_[next_++];
}

static double py_round(double x) { return std::nearbyint(x); }  // Python's round: half to even

cv::Mat load_resize(const cv::Mat& im, int img_size, bool augment) {
    const int h0 = im.rows, w0 = im.cols;
    const double r = (double)img_size / std::max(h0, w0);
    if (r == 1) return im;
    cv::Mat out;
    cv::resize(im, out, cv::Size((int)std::ceil(w0 * r), (int)std::ceil(h0 * r)), 0, 0,
               (augment || r > 1) ? cv::INTER_LINEAR : cv::INTER_AREA);
    return out;
}

void resize_bilinear(const float* x, int c, int h, int w, float* y, int oh, int ow) {
    images_resize_bilinear_cpu(y, x, c, h, w, oh, ow);
}

int multi_scale_span(int imgsz, int gs) { return (int)(imgsz * 1.5) + gs - (int)(imgsz * 0.5); }

int multi_scale_size(int imgsz, int gs, int k) {
    Y5_CHECK(k >= 0 && k < multi_scale_span(imgsz, gs), "multi_scale_size: draw %d outside [0, %d)", k,
             multi_scale_span(imgsz, gs));
    return ((int)(imgsz * 0.5) + k) / gs * gs;
}

int multi_scale_max(int imgsz, int gs) { return multi_scale_size(imgsz, gs, multi_scale_span(imgsz, gs) - 1); }

bool multi_scale_shape(int sz, int h, int w, int gs, int* nh, int* nw) {
    const double sf = (double)sz / std::max(h, w);  // Python's true division, in double
    if (sf == 1) return false;
    *nh = (int)std::ceil(h * sf / gs) * gs;
    *nw = (int)std::ceil(w * sf / gs) * gs;
    return true;
}

cv::Mat letterbox(const cv::Mat& im, int new_h, int new_w, LetterboxInfo* info, bool autopad, bool scale_fill,
                  bool scaleup, int stride, int color) {
    const int h = im.rows, w = im.cols;
    double r = std::min((double)new_h / h, (double)new_w / w);
    if (!scaleup) r = std::min(r, 1.0);
    double ratio_w = r, ratio_h = r;
    int uw = (int)py_round(w * r), uh = (int)py_round(h * r);
    double dw = new_w - uw, dh = new_h - uh;
    if (autopad) {
        dw = std::fmod(dw, (double)stride);
        dh = std::fmod(dh, (double)stride);
    } else if (scale_fill) {
        dw = dh = 0;
        uw = new_w, uh = new_h;
        ratio_w = (double)new_w / w, ratio_h = (double)new_h / h;
    }
    dw /= 2, dh /= 2;
    cv::Mat out = im;
    if (w != uw || h != uh) cv::resize(im, out, cv::Size(uw, uh), 0, 0, cv::INTER_LINEAR);
    const int top = (int)py_round(dh - 0.1), bottom = (int)py_round(dh + 0.1);
    const int left = (int)py_round(dw - 0.1), right = (int)py_round(dw + 0.1);
    cv::Mat padded;
    cv::copyMakeBorder(out, padded, top, bottom, left, right, cv::BORDER_CONSTANT, cv::Scalar(color, color, color));
    if (info) *info = {ratio_w, ratio_h, dw, dh};
    return padded;
}

bool box_candidate(const Box& b1, const Box& b2, double s, double area_thr) {
    const double eps = 1e-16;
    const double w1 = (b1.x2 - b1.x1) * s, h1 = (b1.y2 - b1.y1) * s;
    const double w2 = b2.x2 - b2.x1, h2 = b2.y2 - b2.y1;
    const double ar = std::max(w2 / (h2 + eps), h2 / (w2 + eps));
    return w2 > 2 && h2 > 2 && w2 * h2 / (w1 * h1 + eps) > area_thr && ar < 100;
}

cv::Mat random_perspective(const cv::Mat& im, std::vector<Box>& boxes, const AugmentHyp& h, int border_h, int border_w,
                           Draws& d, cv::Matx33d* Mout) {
    const int height = im.rows + border_h * 2, width = im.cols + border_w * 2;
    cv::Matx33d C = cv::Matx33d::eye(), P = cv::Matx33d::eye(), R = cv::Matx33d::eye(), S = cv::Matx33d::eye(),
                T = cv::Matx33d::eye();
    C(0, 2) = -im.cols / 2.0;
    C(1, 2) = -im.rows / 2.0;
    P(2, 0) = d.uniform(-h.perspective, h.perspective);
    P(2, 1) = d.uniform(-h.perspective, h.perspective);
    const double a = d.uniform(-h.degrees, h.degrees), s = d.uniform(1 - h.scale, 1 + h.scale);
    const cv::Mat rot = cv::getRotationMatrix2D(cv::Point2f(0, 0), a, s);  // 2×3 double
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) R(i, j) = rot.at<double>(i, j);
    S(0, 1) = std::tan(d.uniform(-h.shear, h.shear) * M_PI / 180);
    S(1, 0) = std::tan(d.uniform(-h.shear, h.shear) * M_PI / 180);
    T(0, 2) = d.uniform(0.5 - h.translate, 0.5 + h.translate) * width;
    T(1, 2) = d.uniform(0.5 - h.translate, 0.5 + h.translate) * height;
    const cv::Matx33d M = T * S * R * P * C;
    if (Mout) *Mout = M;
    cv::Mat out = im;
    if (border_h != 0 || border_w != 0 || M != cv::Matx33d::eye()) {
        const cv::Scalar fill(114, 114, 114);
        if (h.perspective != 0)
            cv::warpPerspective(im, out, cv::Mat(M), cv::Size(width, height), cv::INTER_LINEAR, cv::BORDER_CONSTANT, fill);
        else
            cv::warpAffine(im, out, cv::Mat(M).rowRange(0, 2), cv::Size(width, height), cv::INTER_LINEAR,
                           cv::BORDER_CONSTANT, fill);
    }
    std::vector<Box> kept;
    for (const Box& b : boxes) {
        const double xs[4] = {b.x1, b.x2, b.x1, b.x2}, ys[4] = {b.y1, b.y2, b.y2, b.y1};  // x1y1, x2y2, x1y2, x2y1
        double x0 = 1e300, y0 = 1e300, x1 = -1e300, y1 = -1e300;
        for (int k = 0; k < 4; ++k) {
            double px = M(0, 0) * xs[k] + M(0, 1) * ys[k] + M(0, 2);
            double py = M(1, 0) * xs[k] + M(1, 1) * ys[k] + M(1, 2);
            if (h.perspective != 0) {
                const double pz = M(2, 0) * xs[k] + M(2, 1) * ys[k] + M(2, 2);
                px /= pz, py /= pz;
            }
            x0 = std::min(x0, px), x1 = std::max(x1, px), y0 = std::min(y0, py), y1 = std::max(y1, py);
        }
        Box n{b.cls, (float)std::clamp(x0, 0.0, (double)width), (float)std::clamp(y0, 0.0, (double)height),
              (float)std::clamp(x1, 0.0, (double)width), (float)std::clamp(y1, 0.0, (double)height)};
        if (box_candidate(b, n, s)) kept.push_back(n);
    }
    boxes = kept;
    return out;
}

void augment_hsv(cv::Mat& im, float hgain, float sgain, float vgain, const double r_draw[3]) {
    if (!(hgain || sgain || vgain)) return;
    const double r[3] = {r_draw[0] * hgain + 1, r_draw[1] * sgain + 1, r_draw[2] * vgain + 1};
    cv::Mat hsv;
    cv::cvtColor(im, hsv, cv::COLOR_BGR2HSV);
    cv::Mat lut(1, 256, CV_8UC3);
    for (int x = 0; x < 256; ++x) {
        cv::Vec3b& e = lut.at<cv::Vec3b>(0, x);
        e[0] = (uint8_t)(int)std::fmod(x * r[0], 180.0);            // (x·r0) % 180, then astype(uint8)
        e[1] = (uint8_t)(int)std::clamp(x * r[1], 0.0, 255.0);      // clip, then truncate
        e[2] = (uint8_t)(int)std::clamp(x * r[2], 0.0, 255.0);
    }
    cv::LUT(hsv, lut, hsv);
    cv::cvtColor(hsv, im, cv::COLOR_HSV2BGR);
}

std::vector<std::array<float, 5>> to_xywhn(const std::vector<Box>& boxes, int w, int h, float eps) {
    std::vector<std::array<float, 5>> out;
    for (const Box& b : boxes) {
        const double x1 = std::clamp((double)b.x1, 0.0, w - (double)eps), x2 = std::clamp((double)b.x2, 0.0, w - (double)eps);
        const double y1 = std::clamp((double)b.y1, 0.0, h - (double)eps), y2 = std::clamp((double)b.y2, 0.0, h - (double)eps);
        out.push_back({b.cls, (float)((x1 + x2) / 2 / w), (float)((y1 + y2) / 2 / h), (float)((x2 - x1) / w),
                       (float)((y2 - y1) / h)});
    }
    return out;
}

void rect_batches(const std::vector<std::array<int, 2>>& wh, int img_size, int batch_size, int stride, double pad,
                  std::vector<int>* order, std::vector<std::array<int, 2>>* shapes) {
    const int n = (int)wh.size(), nb = (n + batch_size - 1) / batch_size;
    std::vector<double> ar(n);
    for (int i = 0; i < n; ++i) ar[i] = (double)wh[i][1] / wh[i][0];  // h / w
    order->resize(n);
    std::iota(order->begin(), order->end(), 0);
    std::stable_sort(order->begin(), order->end(), [&](int a, int b) { return ar[a] < ar[b]; });
    shapes->assign(nb, {0, 0});
    for (int b = 0; b < nb; ++b) {
        double mini = 1e300, maxi = -1e300;
        for (int k = b * batch_size; k < std::min(n, (b + 1) * batch_size); ++k) {
            mini = std::min(mini, ar[(*order)[k]]);
            maxi = std::max(maxi, ar[(*order)[k]]);
        }
        double sh = 1, sw = 1;
        if (maxi < 1) sh = maxi;
        else if (mini > 1) sw = 1 / mini;
        (*shapes)[b] = {(int)std::ceil(sh * img_size / stride + pad) * stride,
                        (int)std::ceil(sw * img_size / stride + pad) * stride};
    }
}

}  // namespace y5
