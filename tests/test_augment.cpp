/*
 * Augmentation geometry against YOLOv5's own functions (tests/fixtures/augment.safetensors: letterbox,
 * load_image's resize, random_perspective given the same draws, augment_hsv given the same gains, rect
 * batch shapes, xyxy2xywhn), and the loader: mosaic boxes inside the canvas and on their pixels,
 * batches independent of the number of workers.
 */
#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/data/augment.h"
#include "engine/data/loader.h"
#include "engine/core/safetensors.h"
#include "engine/data/synthetic.h"
#include "tests/test_util.h"

using namespace y5;
namespace fs = std::filesystem;

static const SafeTensorsFile& fixture() {
    static SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/augment.safetensors");
    return f;
}

static cv::Mat image(const std::string& name) {
    const SafeTensorsFile& f = fixture();
    Shape s = f.shape(name);
    std::vector<float> v = f.read_f32(name);
    cv::Mat m((int)s[0], (int)s[1], CV_8UC3);
    for (size_t i = 0; i < v.size(); ++i) m.data[i] = (uint8_t)v[i];
    return m;
}

// Pixels may differ by OpenCV version and build (resize and warp kernels round differently). Resizes and
// LUTs: at most 1 level on ≤ 2% of values; warps (y5's Debian OpenCV 4.6 against the fixture's 5.0): a
// few levels on edge pixels, mean difference small.
static void require_same_image(const cv::Mat& got, const cv::Mat& want, const std::string& what, double max_diff = 1,
                               double max_fraction = 0.02, double max_mean = 0.05) {
    REQUIRE(got.rows == want.rows);
    REQUIRE(got.cols == want.cols);
    cv::Mat diff;
    cv::absdiff(got, want, diff);
    double maxv = 0;
    cv::minMaxLoc(diff.reshape(1), nullptr, &maxv);
    const double off = (double)cv::countNonZero(diff.reshape(1)) / (diff.total() * 3);
    const double mean = cv::mean(diff.reshape(1))[0];
    INFO(what << ": max pixel difference " << maxv << ", fraction differing " << off << ", mean " << mean);
    CHECK(maxv <= max_diff);
    CHECK(off <= max_fraction);
    CHECK(mean <= max_mean);
}

TEST_CASE("letterbox and load_image resize match YOLOv5", "[augment][parity]") {
    const SafeTensorsFile& f = fixture();
    const int n = std::stoi(f.metadata().at("letterbox_cases"));
    for (int k = 0; k < n; ++k) {
        const std::string c = "lb" + std::to_string(k) + ".";
        std::vector<double> p = f.read_f64(c + "params");
        LetterboxInfo info;
        cv::Mat out = letterbox(image(c + "img"), (int)p[0], (int)p[1], &info, p[2] != 0, p[3] != 0, p[4] != 0, (int)p[5], (int)p[6]);
        std::vector<double> ratio = f.read_f64(c + "ratio"), pad = f.read_f64(c + "pad");
        INFO(c << " " << f.metadata().at("lb" + std::to_string(k)));
        CHECK(info.ratio_w == Approx(ratio[0]).epsilon(1e-12));
        CHECK(info.ratio_h == Approx(ratio[1]).epsilon(1e-12));
        CHECK(info.pad_w == pad[0]);
        CHECK(info.pad_h == pad[1]);
        require_same_image(out, image(c + "out"), c);
    }
    const int m = std::stoi(f.metadata().at("load_cases"));
    for (int k = 0; k < m; ++k) {
        const std::string c = "li" + std::to_string(k) + ".";
        std::vector<double> p = f.read_f64(c + "params"), hw = f.read_f64(c + "hw");
        cv::Mat out = load_resize(image(c + "img"), (int)p[0], p[1] != 0);
        INFO(c << " " << f.metadata().at("li" + std::to_string(k)));
        CHECK(out.rows == (int)hw[0]);
        CHECK(out.cols == (int)hw[1]);
        require_same_image(out, image(c + "out"), c);
    }
}

TEST_CASE("random_perspective gives YOLOv5's matrix / boxes and pixels for the same draws", "[augment][parity]") {
    const SafeTensorsFile& f = fixture();
    const int n = std::stoi(f.metadata().at("perspective_cases"));
    for (int k = 0; k < n; ++k) {
        const std::string c = "rp" + std::to_string(k) + ".";
        INFO(c << " " << f.metadata().at("rp" + std::to_string(k)));
        std::vector<double> p = f.read_f64(c + "params"), t = f.read_f64(c + "targets");
        AugmentHyp h;
        h.degrees = (float)p[0], h.translate = (float)p[1], h.scale = (float)p[2], h.shear = (float)p[3];
        h.perspective = (float)p[4];
        std::vector<Box> boxes;
        for (size_t i = 0; i + 4 < t.size(); i += 5)
            boxes.push_back({(float)t[i], (float)t[i + 1], (float)t[i + 2], (float)t[i + 3], (float)t[i + 4]});
        Draws d(f.read_f64(c + "draws"));
        cv::Matx33d M;
        cv::Mat out = random_perspective(image(c + "img"), boxes, h, (int)p[5], (int)p[6], d, &M);
        CHECK(d.used() == f.read_f64(c + "draws").size());
        std::vector<double> Mw = f.read_f64(c + "M");
        for (int i = 0; i < 9; ++i) CHECK(M(i / 3, i % 3) == Approx(Mw[i]).epsilon(1e-12).margin(1e-12));
        std::vector<double> want = f.read_f64(c + "out_targets");
        REQUIRE(boxes.size() * 5 == want.size());
        for (size_t i = 0; i < boxes.size(); ++i) {
            CHECK(boxes[i].cls == (float)want[5 * i]);
            CHECK(boxes[i].x1 == Approx(want[5 * i + 1]).margin(1e-3));
            CHECK(boxes[i].y1 == Approx(want[5 * i + 2]).margin(1e-3));
            CHECK(boxes[i].x2 == Approx(want[5 * i + 3]).margin(1e-3));
            CHECK(boxes[i].y2 == Approx(want[5 * i + 4]).margin(1e-3));
        }
        require_same_image(out, image(c + "out"), c, 8, 0.15, 0.25);
    }
}

TEST_CASE("augment_hsv / rect batch shapes / xyxy2xywhn match YOLOv5", "[augment][parity]") {
    const SafeTensorsFile& f = fixture();
    const int n = std::stoi(f.metadata().at("hsv_cases"));
    for (int k = 0; k < n; ++k) {
        const std::string c = "hsv" + std::to_string(k) + ".";
        std::vector<double> g = f.read_f64(c + "gains"), r = f.read_f64(c + "r");
        cv::Mat im = image(c + "img");
        augment_hsv(im, (float)g[0], (float)g[1], (float)g[2], r.data());
        require_same_image(im, image(c + "out"), c);
    }
    std::vector<double> wh = f.read_f64("rect.wh"), p = f.read_f64("rect.params"), order = f.read_f64("rect.order"),
                        shapes = f.read_f64("rect.batch_shapes");
    std::vector<std::array<int, 2>> whv;
    for (size_t i = 0; i < wh.size(); i += 2) whv.push_back({(int)wh[i], (int)wh[i + 1]});
    std::vector<int> o;
    std::vector<std::array<int, 2>> s;
    rect_batches(whv, (int)p[0], (int)p[1], (int)p[2], p[3], &o, &s);
    for (size_t i = 0; i < o.size(); ++i) CHECK(o[i] == (int)order[i]);
    REQUIRE(s.size() * 2 == shapes.size());
    for (size_t i = 0; i < s.size(); ++i) {
        CHECK(s[i][0] == (int)shapes[2 * i]);
        CHECK(s[i][1] == (int)shapes[2 * i + 1]);
    }
    std::vector<double> xyxy = f.read_f64("conv.xyxy"), cp = f.read_f64("conv.params"), xywhn = f.read_f64("conv.xywhn");
    std::vector<Box> b;
    for (size_t i = 0; i < xyxy.size(); i += 4) b.push_back({0, (float)xyxy[i], (float)xyxy[i + 1], (float)xyxy[i + 2], (float)xyxy[i + 3]});
    auto out = to_xywhn(b, (int)cp[0], (int)cp[1], (float)cp[2]);
    for (size_t i = 0; i < out.size(); ++i)
        for (int j = 0; j < 4; ++j) CHECK(out[i][j + 1] == Approx(xywhn[4 * i + j]).margin(1e-6));
}

// A dataset whose objects are solid red rectangles exactly on their labels, on a flat grey background.
static std::string red_boxes_dataset() {
    const std::string dir = "/tmp/y5_test_redboxes";
    fs::remove_all(dir);
    fs::create_directories(dir + "/images");
    fs::create_directories(dir + "/labels");
    Rng rng(4);
    for (int i = 0; i < 6; ++i) {
        const int w = 200 + 40 * (i % 3), h = 160 + 30 * (i % 2);
        cv::Mat im(h, w, CV_8UC3, cv::Scalar(90, 90, 90));
        std::string labels;
        for (int k = 0; k < 3; ++k) {
            const int bw = 30 + (int)rng.randint(40), bh = 30 + (int)rng.randint(40);
            const int x = (int)rng.randint(w - bw), y = (int)rng.randint(h - bh);
            cv::rectangle(im, cv::Rect(x, y, bw, bh), cv::Scalar(0, 0, 255), cv::FILLED);
            char line[96];
            snprintf(line, sizeof line, "0 %f %f %f %f\n", (x + bw / 2.0) / w, (y + bh / 2.0) / h, (double)bw / w, (double)bh / h);
            labels += line;
        }
        cv::imwrite(dir + "/images/" + std::to_string(i) + ".png", im);  // PNG: exact colours
        std::ofstream(dir + "/labels/" + std::to_string(i) + ".txt") << labels;
    }
    return dir + "/images";
}

TEST_CASE("mosaic boxes stay inside the canvas and sit on their pixels", "[loader]") {
    Dataset d = scan_dataset({red_boxes_dataset()}, 1, false);
    LoaderOptions o;
    o.img_size = 320;
    o.batch_size = 3;
    o.augment = true;
    o.workers = 2;
    o.hyp.hsv_h = o.hyp.hsv_s = o.hyp.hsv_v = 0;  // keep colours exact
    o.hyp.scale = 0.3f;
    DataLoader loader(d, o);
    int boxes = 0;
    for (int epoch = 0; epoch < 4; ++epoch) {
        loader.start_epoch(epoch);
        Batch b;
        while (loader.next(b)) {
            REQUIRE(b.h == 320);
            REQUIRE(b.w == 320);
            for (int64_t t = 0; t < b.num_targets(); ++t) {
                const float* r = &b.targets[6 * t];
                const int img = (int)r[0];
                CHECK(r[2] - r[4] / 2 >= -1e-4f);
                CHECK(r[2] + r[4] / 2 <= 1 + 1e-4f);
                CHECK(r[3] - r[5] / 2 >= -1e-4f);
                CHECK(r[3] + r[5] / 2 <= 1 + 1e-4f);
                // The box centre is red (R channel first: the batch is RGB), and most of the box is red.
                const int cx = (int)(r[2] * 320), cy = (int)(r[3] * 320);
                const uint8_t* R = &b.images[((size_t)img * 3 + 0) * 320 * 320];
                const uint8_t* G = &b.images[((size_t)img * 3 + 1) * 320 * 320];
                CHECK(R[cy * 320 + cx] > 200);
                CHECK(G[cy * 320 + cx] < 60);
                ++boxes;
            }
        }
    }
    CHECK(boxes > 20);
}

TEST_CASE("the same seed gives the same batches with 1 or 3 workers", "[loader]") {
    const std::string dir = "/tmp/y5_test_loader_synth";
    fs::remove_all(dir);
    SyntheticSpec spec;
    spec.train_images = 10;
    spec.val_images = 3;
    make_synthetic_dataset(dir, spec);
    Dataset d = scan_dataset({dir + "/images/train"}, 1, false);
    auto run = [&](int workers, bool augment) {
        LoaderOptions o;
        o.img_size = 128;
        o.batch_size = 4;
        o.workers = workers;
        o.augment = augment;
        o.shuffle = augment;
        o.rect = !augment;
        o.pad = 0.5;
        o.seed = 7;
        DataLoader l(d, o);
        std::vector<Batch> all;
        for (int e = 0; e < 2; ++e) {
            l.start_epoch(e);
            Batch b;
            while (l.next(b)) all.push_back(b);
        }
        return all;
    };
    for (bool augment : {true, false}) {
        std::vector<Batch> a = run(1, augment), b = run(3, augment);
        REQUIRE(a.size() == 6);  // 10 images, batch 4: 3 batches × 2 epochs
        REQUIRE(a.size() == b.size());
        for (size_t i = 0; i < a.size(); ++i) {
            CHECK(a[i].images == b[i].images);
            CHECK(a[i].targets == b[i].targets);
            CHECK(a[i].indices == b[i].indices);
        }
        if (augment) CHECK(a[0].indices != a[3].indices);  // epochs shuffle differently
        else {
            CHECK(a[0].h % 32 == 0);  // rect: stride multiples
            CHECK(a[0].w % 32 == 0);
        }
    }
}
