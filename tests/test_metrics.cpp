/*
 * NMS and detection metrics: hand-checked cases, and parity with YOLOv5's non_max_suppression,
 * process_batch, ap_per_class, ConfusionMatrix and fitness (tests/fixtures/{nms,metrics}.safetensors).
 */
#include <algorithm>
#include <cmath>

#include "engine/app/metrics.h"
#include "engine/core/safetensors.h"
#include "layers/yolo.h"
#include "tests/test_util.h"

using namespace y5;

TEST_CASE("NMS by hand: suppression by class / agnostic / thresholds / max_det", "[nms]") {
    // Three boxes (x, y, w, h, obj, c0, c1): A and B overlap (IoU 0.6), C is apart.
    const float pred[3][7] = {{50, 50, 20, 20, 0.9f, 0.9f, 0.1f},
                              {54, 50, 20, 20, 0.8f, 0.1f, 0.9f},
                              {150, 150, 10, 10, 0.2f, 1.0f, 0.0f}};
    NmsParams p;  // conf 0.25, iou 0.45
    std::vector<Detection> d = nms_image(&pred[0][0], 3, 7, p);
    REQUIRE(d.size() == 2);  // C's score 0.2 is under conf_thres; A and B differ in class
    CHECK(d[0][4] == 0.9f * 0.9f);
    CHECK(d[0][0] == 40.0f);
    CHECK(d[0][3] == 60.0f);
    CHECK(d[1][5] == 1.0f);
    p.agnostic = true;
    CHECK(nms_image(&pred[0][0], 3, 7, p).size() == 1);
    p.agnostic = false;
    p.classes = {1};
    d = nms_image(&pred[0][0], 3, 7, p);
    REQUIRE(d.size() == 1);
    CHECK(d[0][5] == 1.0f);
    p.classes.clear();
    p.conf_thres = 0.001f;
    p.multi_label = true;  // every (box, class) above 0.001: A0 A1 B0 B1 C0
    d = nms_image(&pred[0][0], 3, 7, p);
    CHECK(d.size() == 3);  // A1 suppressed by B1 and B0 by A0 (IoU 0.6 > 0.45); C0 kept
    p.max_det = 2;
    CHECK(nms_image(&pred[0][0], 3, 7, p).size() == 2);
}

TEST_CASE("NMS's shared per-row helpers (Y5_HD, also the GPU's)", "[nms]") {
    const float r[8] = {100, 50, 21, 10, 0.5f, 0.25f, 0.75f, 0.75f};  // x y w h obj, three classes
    float b[4];
    nms_xyxy(r, b);
    CHECK((b[0] == 89.5f && b[1] == 45.0f && b[2] == 110.5f && b[3] == 55.0f));
    CHECK(nms_score(r, 0) == 0.125f);
    CHECK(nms_best_class(r, 3) == 1);  // classes 1 and 2 tie: the first maximum, as torch.max
    CHECK(nms_best_class(r, 1) == 0);
    float o[4];
    nms_offset_box(b, 2, false, o);
    CHECK((o[0] == 89.5f + 15360.0f && o[3] == 55.0f + 15360.0f));
    nms_offset_box(b, 2, true, o);
    CHECK((o[0] == b[0] && o[2] == b[2]));
    // IoU: identical boxes 1, disjoint 0, a 10×10 box against its half 0.5; symmetric.
    const float a1[4] = {0, 0, 10, 10}, a2[4] = {5, 0, 15, 10}, a3[4] = {20, 20, 30, 30};
    CHECK(nms_iou(a1, a1) == 1.0f);
    CHECK(nms_iou(a1, a3) == 0.0f);
    CHECK(nms_iou(a1, a2) == 50.0f / 150.0f);
    CHECK(nms_iou(a2, a1) == nms_iou(a1, a2));
    // nms_min / nms_max keep std::min / std::max's rules for NaN and signed zeros (the first argument on ties).
    const float nan = std::nanf("");
    CHECK(nms_max(0.0f, nan) == std::max(0.0f, nan));
    CHECK(std::isnan(nms_max(nan, 0.0f)) == std::isnan(std::max(nan, 0.0f)));
    CHECK(std::signbit(nms_max(0.0f, -0.0f)) == std::signbit(std::max(0.0f, -0.0f)));
    CHECK(std::signbit(nms_min(-0.0f, 0.0f)) == std::signbit(std::min(-0.0f, 0.0f)));
}

#if Y5_CUDA
TEST_CASE("GPU NMS scratch never shrinks with more rows (callers size for the largest shape)", "[nms]") {
    NmsParams val;  // val.py's: multi-label, max_det 300
    val.conf_thres = 0.001f, val.iou_thres = 0.6f, val.multi_label = true;
    NmsParams det;  // detect.py's: best class, max_det 1000
    det.max_det = 1000;
    for (const NmsParams& p : {val, det})
        for (int bs : {1, 2, 7, 32})
            for (size_t budget : {kNmsCandidateBudget, (size_t)0}) {
                size_t prev = 0;
                for (int N = 100; N <= 120000; N = N * 5 / 4) {
                    const size_t s = nms_cuda_scratch_bytes(bs, N, 85, p, budget);
                    INFO("bs " << bs << " N " << N << " multi " << p.multi_label << " budget " << budget);
                    CHECK(s >= prev);
                    CHECK(s <= nms_cuda_scratch_bytes(bs, N, 85, p, budget ? budget * 2 : kNmsCandidateBudget));
                    prev = s;
                }
            }
    // val at 640, batch 32: candidates sorted 7 images at a time (256 MiB) plus the 30000-box mask; at the least, one
    // image's 2 million candidates (32 MB) at a time and the mask (113 MB), whatever the batch.
    const size_t v = nms_cuda_scratch_bytes(32, 25200, 85, val);
    CHECK(v < (size_t)400 << 20);
    const size_t least = nms_cuda_scratch_bytes(32, 25200, 85, val, 0);
    CHECK(least < (size_t)160 << 20);
    CHECK(least > (size_t)128 << 20);
    CHECK(nms_cuda_scratch_bytes(128, 25200, 85, val, 0) < least + ((size_t)2 << 20));
    CHECK(nms_cuda_scratch_bytes(1, 25200, 85, det) < (size_t)100 << 20);
}
#endif

TEST_CASE("AP of a perfect detector is 0.995 (101-point trapezoid)", "[metrics]") {
    CHECK(compute_ap({1.0}, {1.0}) == Approx(0.995).epsilon(1e-12));
    // Two labels, detections: TP (0.9), FP (0.8), TP (0.7): recall .5 .5 1, precision 1 .5 .667
    CHECK(compute_ap({0.5, 0.5, 1.0}, {1.0, 0.5, 2.0 / 3}) > 0.8);
}

TEST_CASE("process_batch matches each label once / best IoU per detection", "[metrics]") {
    // One label; two detections of it: the first (higher confidence) gets the TP even with the lower IoU.
    std::vector<Label> labels = {{0, 0, 0, 10, 10}};
    std::vector<Detection> det = {{0, 0, 10, 9, 0.9f, 0}, {0, 0, 10, 10, 0.8f, 0}};
    auto c = match_predictions(det, labels);
    CHECK(c[0][0]);   // IoU 0.9 at 0.5: the lower detection index wins the label
    CHECK_FALSE(c[1][0]);
    CHECK_FALSE(c[0][9]);  // IoU 0.9 < 0.95
    CHECK(c[1][9]);        // IoU 1.0: at 0.95 only detection 1 qualifies
    det[1][5] = 1;         // wrong class never matches
    c = match_predictions(det, labels);
    CHECK_FALSE(c[1][0]);
}

TEST_CASE("NMS matches YOLOv5's non_max_suppression", "[nms][parity]") {
    SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/nms.safetensors");
    const int cases = std::stoi(f.metadata().at("cases"));
    REQUIRE(cases >= 10);
    for (int k = 0; k < cases; ++k) {
        const std::string c = "case" + std::to_string(k) + ".";
        INFO(f.metadata().at("case" + std::to_string(k)));
        Shape s = f.shape(c + "pred");
        std::vector<float> pred = f.read_f32(c + "pred");
        std::vector<double> p = f.read_f64(c + "params"), cls = f.read_f64(c + "classes");
        NmsParams np;
        np.conf_thres = (float)p[0], np.iou_thres = (float)p[1];
        np.agnostic = p[2] != 0, np.multi_label = p[3] != 0, np.max_det = (int)p[4];
        for (double x : cls) np.classes.push_back((int)x);
        for (int b = 0; b < s[0]; ++b) {
            std::vector<Detection> got = nms_image(pred.data() + (size_t)b * s[1] * s[2], (int)s[1], (int)s[2], np);
            std::vector<float> want = f.read_f32(c + "out" + std::to_string(b));
            INFO("image " << b);
            REQUIRE(got.size() * 6 == want.size());
            for (size_t i = 0; i < got.size(); ++i)
                for (int j = 0; j < 6; ++j) REQUIRE(got[i][j] == want[6 * i + j]);  // identical boxes, same order
        }
    }
}

// val.py's per-image loop over one fixture case: TP matrix, stats, the confusion matrix (fed only for images
// with labels, as val.py does), then ap_per_class when any detection is a TP.
TEST_CASE("metrics match YOLOv5's process_batch / ap_per_class / ConfusionMatrix / fitness", "[metrics][parity]") {
    SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/metrics.safetensors");
    const int cases = std::stoi(f.metadata().at("cases"));
    REQUIRE(cases >= 5);
    auto rows = [&](const std::string& name, int cols) {
        std::vector<double> v = f.read_f64(name);
        return std::make_pair(v, (int)(v.size() / cols));
    };
    for (int k = 0; k < cases; ++k) {
        const std::string c = "case" + std::to_string(k) + ".";
        INFO(f.metadata().at("case" + std::to_string(k)));
        const int nimg = (int)f.read_f64(c + "nimg")[0], nc = (int)f.read_f64(c + "nc")[0];
        ConfusionMatrix cm(nc);
        std::vector<std::array<bool, kIouThresholds>> tp;
        std::vector<double> conf;
        std::vector<int> pcls, tcls;
        for (int j = 0; j < nimg; ++j) {
            auto [dv, nd] = rows(c + "det" + std::to_string(j), 6);
            auto [lv, nl] = rows(c + "lab" + std::to_string(j), 5);
            std::vector<Detection> det(nd);
            for (int i = 0; i < nd; ++i)
                for (int q = 0; q < 6; ++q) det[i][q] = (float)dv[6 * i + q];
            std::vector<Label> lab(nl);
            for (int i = 0; i < nl; ++i)
                lab[i] = {(int)lv[5 * i], (float)lv[5 * i + 1], (float)lv[5 * i + 2], (float)lv[5 * i + 3], (float)lv[5 * i + 4]};
            for (const Label& l : lab) tcls.push_back(l.cls);
            if (nd == 0) {
                if (nl) cm.process_batch(nullptr, lab);
                continue;
            }
            std::vector<std::array<bool, kIouThresholds>> correct(nd);
            for (auto& x : correct) x.fill(false);
            if (nl) {
                correct = match_predictions(det, lab);
                cm.process_batch(&det, lab);
            }
            std::vector<double> want = f.read_f64(c + "correct" + std::to_string(j));
            for (int i = 0; i < nd; ++i)
                for (int t = 0; t < kIouThresholds; ++t) REQUIRE(correct[i][t] == (want[i * kIouThresholds + t] != 0));
            for (int i = 0; i < nd; ++i) {
                tp.push_back(correct[i]);
                conf.push_back(det[i][4]);
                pcls.push_back((int)det[i][5]);
            }
        }
        std::vector<double> cmw = f.read_f64(c + "confusion");
        for (int r = 0; r <= nc; ++r)
            for (int q = 0; q <= nc; ++q) CHECK(cm.at(r, q) == cmw[r * (nc + 1) + q]);
        ApResult R = ap_per_class(tp, conf, pcls, tcls);
        std::vector<double> apc = f.read_f64(c + "ap_class"), ap = f.read_f64(c + "ap"), P = f.read_f64(c + "p"),
                            Rr = f.read_f64(c + "r"), tpw = f.read_f64(c + "tp"), fpw = f.read_f64(c + "fp"),
                            sum = f.read_f64(c + "summary");
        REQUIRE(R.classes.size() == apc.size());
        for (size_t i = 0; i < apc.size(); ++i) {
            CHECK(R.classes[i] == (int)apc[i]);
            CHECK(R.p[i] == Approx(P[i]).margin(1e-6));
            CHECK(R.r[i] == Approx(Rr[i]).margin(1e-6));
            CHECK(R.tp[i] == tpw[i]);
            CHECK(R.fp[i] == fpw[i]);
            for (int t = 0; t < kIouThresholds; ++t) CHECK(R.ap[i][t] == Approx(ap[i * kIouThresholds + t]).margin(1e-6));
        }
        CHECK(R.mp == Approx(sum[0]).margin(1e-6));
        CHECK(R.mr == Approx(sum[1]).margin(1e-6));
        CHECK(R.map50 == Approx(sum[2]).margin(1e-6));
        CHECK(R.map == Approx(sum[3]).margin(1e-6));
        CHECK(fitness(R.mp, R.mr, R.map50, R.map) == Approx(f.read_f64(c + "fitness")[0]).margin(1e-6));
    }
}
