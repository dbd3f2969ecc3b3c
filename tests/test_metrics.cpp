/*
 * NMS and detection metrics: hand-checked cases, and parity with YOLOv5's non_max_suppression,
 * process_batch, ap_per_class, ConfusionMatrix and fitness (tests/fixtures/{nms,metrics}.safetensors).
 */
#include "engine/metrics.h"
#include "engine/safetensors.h"
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
