#include "engine/plots.h"

#include <algorithm>
#include <cmath>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/check.h"

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

void plot_batch(const Batch& b, const std::vector<std::string>& names, const std::string& path) {
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
        for (int64_t t = 0; t < b.num_targets(); ++t) {
            const float* r = &b.targets[6 * t];
            if ((int)r[0] != i) continue;
            const int cls = (int)r[1];
            const cv::Scalar col = class_colour(cls);
            const cv::Point p1(ox + (int)((r[2] - r[4] / 2) * tw), oy + (int)((r[3] - r[5] / 2) * th));
            const cv::Point p2(ox + (int)((r[2] + r[4] / 2) * tw), oy + (int)((r[3] + r[5] / 2) * th));
            cv::rectangle(canvas, p1, p2, col, 2);
            const std::string label = cls < (int)names.size() ? names[cls] : std::to_string(cls);
            int base = 0;
            const cv::Size ts = cv::getTextSize(label, cv::FONT_HERSHEY_SIMPLEX, 0.4, 1, &base);
            cv::rectangle(canvas, cv::Point(p1.x, p1.y - ts.height - 4), cv::Point(p1.x + ts.width + 2, p1.y), col, cv::FILLED);
            cv::putText(canvas, label, cv::Point(p1.x + 1, p1.y - 3), cv::FONT_HERSHEY_SIMPLEX, 0.4, cv::Scalar(255, 255, 255), 1,
                        cv::LINE_AA);
        }
    }
    Y5_CHECK(cv::imwrite(path, canvas), "%s: cannot write image", path.c_str());
}

}  // namespace y5
