#include "engine/data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "kernels/check.h"
#include "engine/core/rng.h"

namespace fs = std::filesystem;

namespace y5 {

static const char* kClassNames[] = {"circle", "rectangle", "triangle"};

// A smooth random texture: coarse noise upsampled, plus a gradient and fine grain.
static cv::Mat texture(Rng& rng, int w, int h) {
    cv::Mat coarse(6, 6, CV_8UC3);
    for (int i = 0; i < coarse.rows * coarse.cols * 3; ++i) coarse.data[i] = (uint8_t)(40 + rng.randint(176));
    cv::Mat img;
    cv::resize(coarse, img, cv::Size(w, h), 0, 0, cv::INTER_CUBIC);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            cv::Vec3b& p = img.at<cv::Vec3b>(y, x);
            for (int c = 0; c < 3; ++c) p[c] = cv::saturate_cast<uint8_t>(p[c] + (int)rng.randint(25) - 12);
        }
    return img;
}

static void write_image(const std::string& dir, const std::string& stem, Rng& rng, const SyntheticSpec& s) {
    const int w = s.min_side + (int)rng.randint(s.max_side - s.min_side + 1);
    const int h = s.min_side + (int)rng.randint(s.max_side - s.min_side + 1);
    cv::Mat img = texture(rng, w, h);
    const int n = 1 + (int)rng.randint(s.max_objects);
    std::string labels;
    for (int k = 0; k < n; ++k) {
        const int cls = (int)rng.randint(3);
        const int side = std::min(w, h);
        const int bw = (int)(side * rng.uniform(0.15f, 0.45f)), bh = cls == 0 ? bw : (int)(side * rng.uniform(0.15f, 0.45f));
        const int x0 = (int)rng.randint(w - bw), y0 = (int)rng.randint(h - bh);
        // A colour that stands out from the background under the shape (some channel differs by > 90), so
        // every labelled object is visible: a demo should not ask the model to find the invisible.
        const cv::Scalar under = cv::mean(img(cv::Rect(x0, y0, std::max(bw, 1), std::max(bh, 1))));
        cv::Scalar colour;
        for (int tries = 0; tries < 32; ++tries) {
            colour = cv::Scalar(rng.randint(256), rng.randint(256), rng.randint(256));
            double d = 0;
            for (int c = 0; c < 3; ++c) d = std::max(d, std::abs(colour[c] - under[c]));
            if (d > 90) break;
        }
        if (cls == 0) {
            cv::circle(img, cv::Point(x0 + bw / 2, y0 + bw / 2), bw / 2, colour, cv::FILLED, cv::LINE_AA);
        } else if (cls == 1) {
            cv::rectangle(img, cv::Rect(x0, y0, bw, bh), colour, cv::FILLED);
        } else {
            std::vector<cv::Point> tri = {{x0 + bw / 2, y0}, {x0, y0 + bh - 1}, {x0 + bw - 1, y0 + bh - 1}};
            cv::fillConvexPoly(img, tri, colour, cv::LINE_AA);
        }
        char line[128];
        snprintf(line, sizeof line, "%d %.6f %.6f %.6f %.6f\n", cls, (x0 + bw / 2.0) / w, (y0 + bh / 2.0) / h,
                 (double)bw / w, (double)bh / h);
        labels += line;
    }
    const std::string im = dir + "/images/" + stem + ".jpg", lb = dir + "/labels/" + stem + ".txt";
    Y5_CHECK(cv::imwrite(im, img, {cv::IMWRITE_JPEG_QUALITY, 95}), "%s: cannot write image", im.c_str());
    std::ofstream(lb) << labels;
}

std::string make_synthetic_dataset(const std::string& dir, const SyntheticSpec& spec) {
    Y5_CHECK(spec.min_side >= 32 && spec.max_side >= spec.min_side, "synthetic dataset: bad image sides %d..%d",
             spec.min_side, spec.max_side);
    for (const char* split : {"train", "val"}) {
        std::error_code ec;
        for (const char* kind : {"images", "labels"}) {
            fs::create_directories(dir + "/" + kind + "/" + split, ec);
            Y5_CHECK(!ec, "%s: cannot create folder: %s", dir.c_str(), ec.message().c_str());
        }
        const int n = std::string(split) == "train" ? spec.train_images : spec.val_images;
        Rng rng(spec.seed, std::string(split) == "train" ? 1 : 2);
        for (int i = 0; i < n; ++i) {
            char stem[32];
            snprintf(stem, sizeof stem, "%05d", i);
            write_image(dir, std::string(split) + "/" + stem, rng, spec);
        }
    }
    const std::string yaml = dir + "/data.yaml";
    std::ofstream y(yaml);
    y << "# y5 built-in synthetic dataset: shapes on textured backgrounds (y5data --synthetic)\n"
      << "path: .\ntrain: images/train\nval: images/val\nnames:\n";
    for (int c = 0; c < 3; ++c) y << "  " << c << ": " << kClassNames[c] << "\n";
    Y5_CHECK((bool)y, "%s: cannot write", yaml.c_str());
    return yaml;
}

}  // namespace y5
