/*
 * The figures (engine/app/plots.h): the smoothing they draw against scipy's gaussian_filter1d and YOLOv5's smooth
 * (tools/golden/make_plot_fixtures.py writes tests/fixtures/plots_smooth.txt); each figure file written at
 * matplotlib's size (figsize × dpi) and not blank; validate() writing val.py's figures only when asked.
 */
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "engine/app/metrics.h"
#include "engine/app/plots.h"
#include "engine/app/val.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace y5;
using y5test::TestCtx;

static std::vector<double> line_numbers(std::istream& in) {
    std::string line;
    std::getline(in, line);
    std::stringstream ss(line);
    std::vector<double> v;
    double x;
    while (ss >> x) v.push_back(x);
    return v;
}

TEST_CASE("gaussian_filter1d and smooth match scipy and YOLOv5", "[plots]") {
    std::ifstream in(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/plots_smooth.txt");
    REQUIRE(in);
    int cases = 0, gaussians = 0;
    while (true) {
        const std::vector<double> head = line_numbers(in);
        if (head.empty()) break;
        REQUIRE(head.size() == 3);
        const std::vector<double> y = line_numbers(in), want = line_numbers(in);
        REQUIRE(y.size() == (size_t)head[1]);
        REQUIRE(want.size() == y.size());
        const std::vector<double> got = head[0] == 0 ? gaussian_filter1d(y, head[2]) : box_smooth(y, head[2]);
        gaussians += head[0] == 0;
        REQUIRE(got.size() == want.size());
        INFO("case " << cases << " kind " << head[0] << " n " << y.size() << " param " << head[2]);
        double worst = 0;
        for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (1e-12 + std::abs(want[i])));
        CHECK(worst < 1e-12);
        // the filter smooths: for the longer inputs the output differs from the input
        if (y.size() > 3) CHECK(got != y);
        ++cases;
    }
    CHECK(cases == 10);
    CHECK(gaussians == 8);
}

// The image at path has the expected size and is a drawing, not an empty canvas: grey levels vary and a share of
// the pixels (neither almost none nor almost all) is not white.
static void check_figure(const std::string& path, int w, int h) {
    INFO(path);
    REQUIRE(fs::exists(path));
    const cv::Mat img = cv::imread(path);
    REQUIRE(!img.empty());
    CHECK(img.cols == w);
    CHECK(img.rows == h);
    cv::Mat grey;
    cv::cvtColor(img, grey, cv::COLOR_BGR2GRAY);
    cv::Scalar mean, sd;
    cv::meanStdDev(grey, mean, sd);
    CHECK(sd[0] > 10);
    const double inked = (double)cv::countNonZero(grey < 240) / grey.total();
    CHECK(inked > 0.005);
    CHECK(inked < 0.9);
}

static std::string fresh_dir(const std::string& name) {
    const std::string d = "/tmp/y5_test_plots_" + name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

TEST_CASE("each figure is written at matplotlib's size and is not blank", "[plots]") {
    std::mt19937 gen(7);
    std::uniform_real_distribution<double> u(0, 1);
    const std::string d = fresh_dir("figures");
    {  // results.csv with YOLOv5's columns, 12 falling/rising epochs
        std::ofstream csv(d + "/results.csv");
        csv << "               epoch,      train/box_loss,      train/obj_loss,      train/cls_loss,   metrics/precision,      "
               "metrics/recall,     metrics/mAP_0.5,metrics/mAP_0.5:0.95,        val/box_loss,        val/obj_loss,        "
               "val/cls_loss,               x/lr0,               x/lr1,               x/lr2\n";
        for (int e = 0; e < 12; ++e) {
            csv << e;
            for (int k = 1; k < 14; ++k) csv << ", " << (k >= 4 && k <= 7 ? 0.05 * e : 0.1 / (1 + e)) + 0.02 * u(gen);
            csv << "\n";
        }
    }
    plot_results(d + "/results.csv", d + "/results.png");
    check_figure(d + "/results.png", 2400, 1200);

    Dataset ds;  // 40 images with 3 classes of boxes
    for (int i = 0; i < 40; ++i) {
        ImageRecord r;
        for (int k = 0; k < 5; ++k)
            r.labels.push_back({(float)(k % 3), (float)u(gen), (float)u(gen), (float)(0.05 + 0.3 * u(gen)), (float)(0.05 + 0.3 * u(gen))});
        ds.records.push_back(r);
    }
    const std::vector<std::string> names = {"circle", "rectangle", "triangle"};
    plot_labels(ds, names, d);
    check_figure(d + "/labels.jpg", 1600, 1600);
    check_figure(d + "/labels_correlogram.jpg", 1600, 1600);

    // Confusion matrices: 3 named classes (annotated) and 80 unnamed ones (neither).
    for (int nc : {3, 80}) {
        ConfusionMatrix cm(nc);
        for (int i = 0; i < 200; ++i) {
            const int c = (int)(u(gen) * nc);
            const float x = (float)(100 * u(gen)), y = (float)(100 * u(gen));
            const std::vector<Label> lab = {{c, x, y, x + 20, y + 20}};
            const int pc = u(gen) < 0.7 ? c : (int)(u(gen) * nc);
            const std::vector<Detection> det = {{x + 1, y, x + 21, y + 20, 0.9f, (float)pc}};
            cm.process_batch(u(gen) < 0.9 ? &det : nullptr, lab);
        }
        const std::string dn = fresh_dir("cm" + std::to_string(nc));
        plot_confusion_matrix(cm, nc == 3 ? names : std::vector<std::string>{}, dn);
        check_figure(dn + "/confusion_matrix.png", 3000, 2250);
    }

    // PR/F1/P/R curves: 3 classes (each drawn and named, class 2 has no predictions) and 25 (grey, only the mean named).
    for (int nc : {3, 25}) {
        std::vector<std::array<bool, kIouThresholds>> tp;
        std::vector<double> conf;
        std::vector<int> pcls, tcls;
        for (int i = 0; i < 400; ++i) {
            const int c = nc == 3 ? (int)(u(gen) * 2) : (int)(u(gen) * nc);
            const double s = u(gen);
            std::array<bool, kIouThresholds> row;
            for (int t = 0; t < kIouThresholds; ++t) row[t] = u(gen) < s - 0.05 * t;  // confident ones are right more often
            tp.push_back(row), conf.push_back(s), pcls.push_back(c);
        }
        for (int i = 0; i < 300; ++i) tcls.push_back((int)(u(gen) * nc));
        const ApResult r = ap_per_class(tp, conf, pcls, tcls);
        REQUIRE(r.px.size() == 1000);
        REQUIRE((int)r.p_curve.size() == (int)r.classes.size());
        REQUIRE((int)r.pr_curve.size() == (int)r.classes.size());
        if (nc == 3) CHECK(r.pr_curve[2].empty());  // class 2: labels but no predictions, as YOLOv5 skips it
        if (nc == 3) CHECK(r.pr_curve[0].size() == 1000);
        std::vector<std::string> nn;
        for (int c = 0; c < nc; ++c) nn.push_back("class" + std::to_string(c));
        const std::string dn = fresh_dir("curves" + std::to_string(nc));
        plot_val_curves(r, nn, dn);
        for (const char* f : {"PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"}) check_figure(dn + "/" + f, 2250, 1500);
    }
}

// validate() as val.py with plots=True writes the confusion matrix, the curves and the val_batch mosaics into
// plot_dir; without a plot_dir (y5train's per-epoch runs, --noplots) it writes nothing.
TEST_CASE("validate writes val.py's figures only when asked", "[plots]") {
    const std::string shared = std::string(Y5_SOURCE_DIR) + "/../shared";
    const std::string data = fresh_dir("val_data");
    fs::create_directories(data + "/images");
    fs::create_directories(data + "/labels");
    std::vector<fs::path> imgs;
    for (const auto& e : fs::directory_iterator(shared + "/data/coco128/images/train2017")) imgs.push_back(e.path());
    std::sort(imgs.begin(), imgs.end());
    for (int i = 0; i < 6; ++i) {
        fs::copy_file(imgs[i], data + "/images/" + imgs[i].filename().string());
        const fs::path lab = fs::path(shared + "/data/coco128/labels/train2017") / (imgs[i].stem().string() + ".txt");
        if (fs::exists(lab)) fs::copy_file(lab, data + "/labels/" + lab.filename().string());
    }
    auto model = Model::from_weights(shared + "/weights/yolov5n.pt", nullptr);
    model->fuse();
    Dataset ds = scan_dataset({data + "/images"});
    LoaderOptions o;
    o.img_size = 256, o.batch_size = 3, o.workers = 1, o.rect = true, o.pad = 0.5;
    DataLoader loader(ds, o);
    const LossHyp lh;
    for (bool plots : {true, false}) {
        const std::string out = fresh_dir(plots ? "val_plots" : "val_noplots");
        TestCtx tc;
        ValOptions vo;
        if (plots) vo.plot_dir = out, vo.names = &model->class_names;
        const ValResult r = validate(*model, loader, tc.ctx, lh, vo);
        REQUIRE(r.images == 6);
        REQUIRE(r.map50 > 0);  // detections matched: ap_per_class ran, so the curves are drawn
        if (plots) {
            check_figure(out + "/confusion_matrix.png", 3000, 2250);
            for (const char* f : {"PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"}) check_figure(out + "/" + f, 2250, 1500);
            for (const char* f : {"val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg", "val_batch1_pred.jpg"})
                CHECK(fs::exists(out + "/" + f));
        } else {
            CHECK(fs::is_empty(out));
        }
    }
}
