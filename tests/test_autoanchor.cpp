/*
 * AutoAnchor (engine/app/autoanchor.h) against YOLOv5's own utils/autoanchor.py (tests/fixtures/autoanchor.safetensors,
 * tools/golden/make_autoanchor_fixtures.py): two stand-in datasets, `fit` (BPR 0.989 with yolov5n's anchors: no
 * k-means) and `tiny` (BPR 0.844: k-means and the genetic search, whose anchors replace the model's).
 *   - the label wh with YOLOv5's drawn scales, bpr and aat, the fitness of YOLOv5's evolved anchors: equal
 *   - y5's evolved anchors: as fit as YOLOv5's (over 7 seeds each side), and better recall than the originals
 *   - check_anchors on a model: unchanged on `fit`, raised BPR on `tiny`, grid units in stride order, f16 values,
 *     deterministic in the seed, kept by a weights file
 */
#include <cstring>

#include "engine/app/autoanchor.h"
#include "engine/core/safetensors.h"
#include "kernels/common.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;

static const SafeTensorsFile& fx() {
    static SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/autoanchor.safetensors");
    return f;
}

// The fixture's dataset D ("fit" or "tiny") as y5's scan would give it: image sizes and normalised labels.
static Dataset fixture_dataset(const std::string& D) {
    const std::vector<double> shapes = fx().read_f64(D + ".shapes"), counts = fx().read_f64(D + ".counts");
    const std::vector<float> labels = fx().read_f32(D + ".labels");
    Dataset d;
    size_t at = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        ImageRecord r;
        r.width = (int)shapes[2 * i], r.height = (int)shapes[2 * i + 1];
        for (int j = 0; j < (int)counts[i]; ++j, at += 5)
            r.labels.push_back({labels[at], labels[at + 1], labels[at + 2], labels[at + 3], labels[at + 4]});
        d.records.push_back(r);
    }
    REQUIRE(at == labels.size());
    return d;
}

static std::unique_ptr<Model> yolov5n() {
    auto m = std::make_unique<Model>(std::string(Y5_SOURCE_DIR) + "/config/models/yolov5n.yaml");
    m->allocate(Device::CPU);
    Rng rng(0);
    m->init_weights(rng);
    return m;
}

// The model's anchors (nl·na, 2) in pixels (grid units × stride).
static std::vector<float> anchors_px(const Model& m) {
    const Tensor& a = m.params[m.detect->anchors].value;
    std::vector<float> k(a.ptr<float>(), a.ptr<float>() + a.numel());
    for (int l = 0; l < m.detect->nl; ++l)
        for (int j = 0; j < 2 * m.detect->na; ++j) k[l * 2 * m.detect->na + j] *= m.detect->stride[l];
    return k;
}

static std::vector<float> anchors_grid(const Model& m) {
    const Tensor& a = m.params[m.detect->anchors].value;
    return std::vector<float>(a.ptr<float>(), a.ptr<float>() + a.numel());
}

TEST_CASE("AutoAnchor's wh, BPR and anchors/target equal YOLOv5's check_anchors", "[autoanchor]") {
    const std::vector<float> k0 = anchors_px(*yolov5n());  // P3 10,13 16,30 33,23 ... P5 373,326
    REQUIRE(k0.size() == 18);
    CHECK(k0[0] == 10.0f);
    CHECK(k0[17] == 326.0f);
    for (const std::string D : {"fit", "tiny"}) {
        INFO(D);
        const Dataset d = fixture_dataset(D);
        const std::vector<float> want = fx().read_f32(D + ".wh");
        const std::vector<float> wh = label_wh(d, 640, fx().read_f64(D + ".scale"));
        REQUIRE(wh.size() == want.size());
        double worst = 0;
        for (size_t i = 0; i < wh.size(); ++i) worst = std::max(worst, std::fabs((double)wh[i] - want[i]) / want[i]);
        CHECK(worst <= 1.2e-7);  // f64 products rounded to f32, as YOLOv5: at most one rounding apart
        const AnchorFit f = anchor_fit(want, k0, 4.0);
        CHECK(f.bpr == Approx(fx().read_f32(D + ".bpr")[0]).epsilon(1e-6));
        CHECK(f.aat == Approx(fx().read_f32(D + ".aat")[0]).epsilon(1e-6));
    }
    // The evolved anchors' BPR as check_anchors measured it, and their fitness as kmean_anchors' anchor_fitness.
    const std::vector<float> kk = fx().read_f32("tiny.kmean_k");
    CHECK(anchor_fit(fx().read_f32("tiny.wh"), kk, 4.0).bpr == Approx(fx().read_f32("tiny.new_bpr")[0]).epsilon(1e-6));
    CHECK(anchor_fitness(fx().read_f32("tiny.kmean_wh"), kk, 4.0) ==
          Approx(fx().read_f32("tiny.kmean_fitness")[0]).epsilon(1e-6));
}

TEST_CASE("kmean_anchors evolves anchors as fit as YOLOv5's", "[autoanchor]") {
    const Dataset d = fixture_dataset("tiny");
    const std::vector<float> wh = fx().read_f32("tiny.wh"), kwh = fx().read_f32("tiny.kmean_wh");
    const double bpr0 = fx().read_f32("tiny.bpr")[0];
    // YOLOv5's final fitness over 7 seeds: 6 within 0.0008 of each other, one stuck at 0.807 (a local optimum of
    // its genetic search). y5 runs 7 seeds of its own; its worst and its median may be below YOLOv5's by at most
    // 0.002, about twice the spread of YOLOv5's converged runs, far less than one anchor misplaced costs.
    std::vector<float> theirs = fx().read_f32("tiny.seed_fitness");
    theirs.push_back(fx().read_f32("tiny.kmean_fitness")[0]);
    std::vector<double> ours;
    for (uint64_t seed = 1; seed <= 7; ++seed) {
        Rng rng(seed, 0xA0000000ull);
        const std::vector<float> k = kmean_anchors(d, 9, 640, 4.0, 1000, rng, nullptr);
        REQUIRE(k.size() == 18);
        for (int a = 1; a < 9; ++a) CHECK(k[2 * a] * k[2 * a + 1] >= k[2 * a - 2] * k[2 * a - 1]);  // sorted by area
        ours.push_back(anchor_fitness(kwh, k, 4.0));
        CHECK(anchor_fit(wh, k, 4.0).bpr > bpr0);
    }
    std::sort(theirs.begin(), theirs.end());
    std::sort(ours.begin(), ours.end());
    INFO("y5 fitness " << ours[0] << " .. " << ours[3] << " (median) .. " << ours[6] << "; YOLOv5 " << theirs[0]
         << " .. " << theirs[3] << " .. " << theirs[6]);
    CHECK(ours[0] >= theirs[0] - 0.002);
    CHECK(ours[3] >= theirs[3] - 0.002);
}

TEST_CASE("check_anchors keeps well-fitting anchors and replaces poor ones", "[autoanchor]") {
    SECTION("fit: BPR > 0.98, anchors unchanged, as YOLOv5 left them") {
        auto m = yolov5n();
        const std::vector<float> before = anchors_grid(*m);
        CHECK_FALSE(check_anchors(fixture_dataset("fit"), *m, 4.0, 640, 0, nullptr));
        CHECK(anchors_grid(*m) == before);
        CHECK(anchors_grid(*m) == fx().read_f32("fit.anchors_after"));
    }
    SECTION("tiny objects: BPR < 0.98 is raised past 0.98") {
        const Dataset d = fixture_dataset("tiny");
        auto m = yolov5n();
        const std::vector<float> wh = label_wh(d, 640);
        const double bpr0 = anchor_fit(wh, anchors_px(*m), 4.0).bpr;
        REQUIRE(bpr0 < 0.98);
        CHECK(check_anchors(d, *m, 4.0, 640, 0, nullptr));
        const std::vector<float> k = anchors_px(*m), g = anchors_grid(*m);
        const double bpr1 = anchor_fit(wh, k, 4.0).bpr;
        INFO("BPR " << bpr0 << " -> " << bpr1);
        CHECK(bpr1 > bpr0);
        CHECK(bpr1 > 0.98);
        for (float v : g) CHECK(v == f16_to_f32(f32_to_f16(v)));  // train.py's model.half().float()
        auto area = [&](int l) { return k[6 * l] * k[6 * l + 1] + k[6 * l + 2] * k[6 * l + 3] + k[6 * l + 4] * k[6 * l + 5]; };
        CHECK(area(0) < area(1));  // small anchors on the stride-8 level (check_anchor_order)
        CHECK(area(1) < area(2));
    }
}

TEST_CASE("check_anchors is deterministic in the seed and its anchors survive a weights file", "[autoanchor]") {
    const Dataset d = fixture_dataset("tiny");
    auto a = yolov5n(), b = yolov5n(), c = yolov5n();
    REQUIRE(check_anchors(d, *a, 4.0, 640, 3, nullptr));
    REQUIRE(check_anchors(d, *b, 4.0, 640, 3, nullptr));
    REQUIRE(check_anchors(d, *c, 4.0, 640, 4, nullptr));
    CHECK(anchors_grid(*a) == anchors_grid(*b));
    CHECK(anchors_grid(*a) != anchors_grid(*c));  // the seed is used: another one evolves other anchors

    // y5val and y5detect build their model from the weights file: the anchors come from it, not from the yaml.
    const std::string path = "/tmp/y5_test_autoanchor.safetensors";
    std::map<std::string, std::string> meta;
    a->add_metadata(meta);
    a->save_weights(path, meta);
    auto r = Model::from_weights(path);
    CHECK(anchors_grid(*r) == anchors_grid(*a));
    CHECK(anchors_grid(*r) != anchors_grid(*yolov5n()));
    std::remove(path.c_str());
}
