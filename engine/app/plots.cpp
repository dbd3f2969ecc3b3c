#include "engine/app/plots.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <fstream>
#include <sstream>

#include "kernels/check.h"

namespace y5 {

// YOLOv5's Colors palette (hex), BGR here.
cv::Scalar class_colour(int c) {
    static const char* hex[] = {"FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17",
                                "3DDB86", "1A9334", "00D4BB", "2C99A8", "00C2FF", "344593", "6473FF",
                                "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7"};
    const char* h = hex[c % 20];
    auto v = [&](int i) { return (int)std::stoul(std::string(h + i, 2), nullptr, 16); };
    return cv::Scalar(v(4), v(2), v(0));
}

static void plot_boxes(const Batch& b, const std::vector<std::array<float, 7>>& rows, const std::vector<std::string>& names,
                       const std::string& path, bool show_conf) {
    const int n = std::min(b.n, 16);
    Y5_CHECK(n > 0, "plot_batch: empty batch");
    const int ns = (int)std::ceil(std::sqrt((double)n));
    const double scale = std::min(1.0, 1920.0 / (ns * std::max(b.h, b.w)));
    const int th = (int)(b.h * scale), tw = (int)(b.w * scale);
    cv::Mat canvas(ns * th, ns * tw, CV_8UC3, cv::Scalar(255, 255, 255));
    for (int i = 0; i < n; ++i) {
        cv::Mat img(b.h, b.w, CV_8UC3);
        const uint8_t* src = b.images.data() + (size_t)i * 3 * b.h * b.w;
        for (int y = 0; y < b.h; ++y)
            for (int x = 0; x < b.w; ++x)
                for (int c = 0; c < 3; ++c) img.at<cv::Vec3b>(y, x)[2 - c] = src[((size_t)c * b.h + y) * b.w + x];
        cv::Mat tile;
        cv::resize(img, tile, cv::Size(tw, th));
        const int ox = (i % ns) * tw, oy = (i / ns) * th;
        tile.copyTo(canvas(cv::Rect(ox, oy, tw, th)));
        cv::rectangle(canvas, cv::Rect(ox, oy, tw, th), cv::Scalar(255, 255, 255), 2);
        for (const auto& row : rows) {
            const float* r = row.data();
            if ((int)r[0] != i) continue;
            const int cls = (int)r[1];
            const cv::Scalar col = class_colour(cls);
            const cv::Point p1(ox + (int)((r[2] - r[4] / 2) * tw), oy + (int)((r[3] - r[5] / 2) * th));
            const cv::Point p2(ox + (int)((r[2] + r[4] / 2) * tw), oy + (int)((r[3] + r[5] / 2) * th));
            cv::rectangle(canvas, p1, p2, col, 2);
            std::string label = cls < (int)names.size() ? names[cls] : std::to_string(cls);
            if (show_conf) {
                char c[16];
                snprintf(c, sizeof c, " %.1f", r[6]);
                label += c;
            }
            int base = 0;
            const cv::Size ts = cv::getTextSize(label, cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &base);
            cv::rectangle(canvas, cv::Point(p1.x, p1.y - ts.height - 4), cv::Point(p1.x + ts.width + 2, p1.y), col, cv::FILLED);
            cv::putText(canvas, label, cv::Point(p1.x + 1, p1.y - 3), cv::FONT_HERSHEY_SIMPLEX, 0.4, cv::Scalar(255, 255, 255), 1,
                        cv::LINE_AA);
        }
    }
    Y5_CHECK(cv::imwrite(path, canvas), "%s: cannot write image", path.c_str());
}

void plot_batch(const Batch& b, const std::vector<std::string>& names, const std::string& path) {
    std::vector<std::array<float, 7>> rows;
    for (int64_t t = 0; t < b.num_targets(); ++t) {
        const float* r = &b.targets[6 * t];
        rows.push_back({r[0], r[1], r[2], r[3], r[4], r[5], 1.0f});
    }
    plot_boxes(b, rows, names, path, false);
}

void plot_predictions(const Batch& b, const std::vector<std::array<float, 7>>& pred, const std::vector<std::string>& names,
                      const std::string& path) {
    plot_boxes(b, pred, names, path, true);
}

void plot_results(const std::string& csv, const std::string& path) {
    std::ifstream in(csv);
    Y5_CHECK(in, "%s: cannot read", csv.c_str());
    std::string line;
    std::getline(in, line);
    std::vector<std::string> head;
    {
        std::stringstream ss(line);
        std::string h;
        while (std::getline(ss, h, ',')) head.push_back(h.substr(h.find_first_not_of(' ')));
    }
    std::vector<std::vector<double>> cols(head.size());
    while (std::getline(in, line)) {
        std::stringstream ss(line);
        std::string v;
        for (size_t k = 0; k < head.size() && std::getline(ss, v, ','); ++k) cols[k].push_back(std::stod(v));
    }
    // Panels in YOLOv5's order: columns 1,2,3,4,5 on the top row, 8,9,10,6,7 below.
    const int order[10] = {1, 2, 3, 4, 5, 8, 9, 10, 6, 7};
    const int pw = 300, ph = 240, m = 30;
    cv::Mat img(2 * ph, 5 * pw, CV_8UC3, cv::Scalar(255, 255, 255));
    for (int k = 0; k < 10; ++k) {
        const int c = order[k];
        if (c >= (int)cols.size() || cols[c].empty()) continue;
        const std::vector<double>& y = cols[c];
        const int ox = (k % 5) * pw, oy = (k / 5) * ph;
        double lo = *std::min_element(y.begin(), y.end()), hi = *std::max_element(y.begin(), y.end());
        if (hi - lo < 1e-12) hi = lo + 1;
        cv::rectangle(img, cv::Rect(ox + m, oy + m, pw - 2 * m, ph - 2 * m), cv::Scalar(200, 200, 200), 1);
        auto pt = [&](size_t i) {
            const double fx = y.size() > 1 ? (double)i / (y.size() - 1) : 0.5;
            return cv::Point(ox + m + (int)(fx * (pw - 2 * m)), oy + ph - m - (int)((y[i] - lo) / (hi - lo) * (ph - 2 * m)));
        };
        for (size_t i = 0; i + 1 < y.size(); ++i) cv::line(img, pt(i), pt(i + 1), cv::Scalar(180, 119, 31), 2, cv::LINE_AA);
        for (size_t i = 0; i < y.size(); ++i) cv::circle(img, pt(i), 2, cv::Scalar(180, 119, 31), cv::FILLED, cv::LINE_AA);
        cv::putText(img, head[c], cv::Point(ox + m, oy + m - 8), cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
        char t[32];
        snprintf(t, sizeof t, "%.4g", hi);
        cv::putText(img, t, cv::Point(ox + m + 2, oy + m + 12), cv::FONT_HERSHEY_SIMPLEX, 0.35, cv::Scalar(90, 90, 90), 1, cv::LINE_AA);
        snprintf(t, sizeof t, "%.4g", lo);
        cv::putText(img, t, cv::Point(ox + m + 2, oy + ph - m - 4), cv::FONT_HERSHEY_SIMPLEX, 0.35, cv::Scalar(90, 90, 90), 1, cv::LINE_AA);
    }
    Y5_CHECK(cv::imwrite(path, img), "%s: cannot write image", path.c_str());
}

}  // namespace y5
