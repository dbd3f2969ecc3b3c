/*
 * y5train's --image-weights, --quad, --cache disk and the hyp `anchors:` key against YOLOv5 v7.0's rules
 * (tests/fixtures/trainflags.safetensors, tools/golden/make_trainflags_fixtures.py: labels_to_class_weights,
 * labels_to_image_weights, collate_fn4, F.interpolate bilinear and np.save, run by YOLOv5's own code).
 */
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <opencv2/imgcodecs.hpp>
#include <tuple>
#include <unistd.h>

#include "engine/app/autoanchor.h"
#include "engine/core/safetensors.h"
#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "engine/data/synthetic.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;
namespace fs = std::filesystem;

static const SafeTensorsFile& fx() {
    static SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/trainflags.safetensors");
    return f;
}

// The fixture's label set: classes per image, boxes irrelevant to the weights.
static Dataset iw_dataset() {
    const std::vector<float> cls = fx().read_f32("iw.classes"), counts = fx().read_f32("iw.counts");
    Dataset d;
    size_t at = 0;
    for (float n : counts) {
        ImageRecord r;
        for (int j = 0; j < (int)n; ++j) r.labels.push_back({cls[at++], 0.5f, 0.5f, 0.1f, 0.1f});
        d.records.push_back(r);
    }
    REQUIRE(at == cls.size());
    return d;
}

TEST_CASE("y5train --image-weights: class and image weights equal YOLOv5's labels_to_*_weights", "[trainflags]") {
    const Dataset d = iw_dataset();
    const int nc = 4;
    std::vector<float> cw0 = labels_to_class_weights(d, nc);
    for (float& w : cw0) w *= (float)nc;  // train.py's model.class_weights
    const std::vector<float> want0 = fx().read_f32("iw.class_weights");
    for (int c = 0; c < nc; ++c) CHECK(cw0[c] == want0[c]);  // float32, bit for bit
    for (const char* name : {"zero", "maps"}) {
        INFO(name);
        const std::vector<double> maps = std::string(name) == "zero" ? std::vector<double>(nc, 0.0) : fx().read_f64("iw.maps");
        const std::vector<double> cw = epoch_class_weights(cw0, maps, nc), want_cw = fx().read_f64(std::string("iw.") + name + ".cw");
        for (int c = 0; c < nc; ++c) CHECK(std::abs(cw[c] - want_cw[c]) <= 1e-15 * std::abs(want_cw[c]));
        const std::vector<double> iw = labels_to_image_weights(d, nc, cw), want = fx().read_f64(std::string("iw.") + name + ".iw");
        REQUIRE(iw.size() == want.size());
        for (size_t i = 0; i < iw.size(); ++i) CHECK(std::abs(iw[i] - want[i]) <= 1e-14 * std::abs(want[i]));
    }
}

TEST_CASE("y5train --image-weights: random.choices' frequencies follow the weights (chi-square, seeded)", "[trainflags]") {
    const std::vector<double> w = fx().read_f64("iw.maps.iw");  // image 5 (a background) has weight 0
    double total = 0;
    for (double x : w) total += x;
    for (uint64_t seed : {0ull, 7ull}) {
        Rng rng(seed, 3);
        const int k = 200000;
        const std::vector<int> pick = weighted_choices(w, k, rng);
        std::vector<double> n(w.size(), 0);
        for (int p : pick) n[p]++;
        double chi2 = 0;
        for (size_t i = 0; i < w.size(); ++i) {
            if (w[i] == 0) {
                CHECK(n[i] == 0);
                continue;
            }
            const double e = k * w[i] / total;
            chi2 += (n[i] - e) * (n[i] - e) / e;
        }
        INFO("seed " << seed << " chi2 " << chi2);
        CHECK(chi2 < 22.5);  // 5 degrees of freedom: P(chi2 > 22.5) < 0.0005
    }
    // Concentrated weights: every draw is the one image with weight.
    Rng rng(1, 1);
    for (int p : weighted_choices({0, 0, 2.5, 0}, 1000, rng)) REQUIRE(p == 2);
    CHECK_THROWS_WITH(weighted_choices({0, 0}, 1, rng), Catch::Matchers::Contains("sum to 0"));
}

TEST_CASE("bilinear resize equals F.interpolate(align_corners=False)", "[trainflags]") {
    const std::vector<float> x = fx().read_f32("bilinear.x");
    const int h = 7, w = 12;
    for (auto [name, oh, ow] : {std::tuple<const char*, int, int>{"up2", 14, 24}, {"down", 4, 5}, {"up", 11, 17}}) {
        INFO(name);
        const std::vector<float> want = fx().read_f32(std::string("bilinear.") + name);
        REQUIRE((int)want.size() == 3 * oh * ow);
        std::vector<float> y(want.size());
        resize_bilinear(x.data(), 3, h, w, y.data(), oh, ow);
        double worst = 0;
        for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, (double)std::abs(y[i] - want[i]) / (1e-6 + 1e-6 * std::abs(want[i])));
        CHECK(worst <= 1.0);  // |y − torch| ≤ 1e-6 + 1e-6·|torch| (values 0..255)
    }
}

TEST_CASE("y5train --quad: collate_quad equals YOLOv5's collate_fn4", "[trainflags]") {
    Batch in;
    in.n = 8, in.h = 6, in.w = 10;
    const std::vector<float> ims = fx().read_f32("quad.images"), tg = fx().read_f32("quad.targets");
    in.images.assign(ims.begin(), ims.end());
    in.targets = tg;
    for (int i = 0; i < 8; ++i) in.indices.push_back(100 + i), in.shapes.push_back({6, 10, 1, 1, 0, 0});
    for (const char* name : {"up_tile", "tile_up"}) {
        INFO(name);
        const std::string p = std::string("quad.") + name;
        Batch out;
        collate_quad(in, out, fx().read_f64(p + ".choice"));
        REQUIRE(out.n == 2);
        REQUIRE(out.h == 12);
        REQUIRE(out.w == 20);
        const std::vector<float> want = fx().read_f32(p + ".images");
        REQUIRE(out.images.size() == want.size());
        int64_t bad = 0;
        for (size_t i = 0; i < want.size(); ++i) bad += out.images[i] != (uint8_t)want[i];
        CHECK(bad == 0);
        const std::vector<float> wt = fx().read_f32(p + ".targets");
        REQUIRE(out.targets.size() == wt.size());
        for (size_t i = 0; i < wt.size(); ++i) CHECK(out.targets[i] == wt[i]);
        CHECK(out.indices == std::vector<int>{100, 101});
    }
}

// A small synthetic dataset in a fresh temporary folder (removed by the caller).
static std::string temp_dataset(const char* tag, int images) {
    const std::string dir = (fs::temp_directory_path() / ("y5_trainflags_" + std::string(tag) + "_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir);
    SyntheticSpec spec;
    spec.train_images = images, spec.val_images = 2, spec.min_side = 64, spec.max_side = 96;
    make_synthetic_dataset(dir, spec);
    return dir;
}

TEST_CASE("y5train --quad: the loader gives batch/4 images of twice the size", "[trainflags]") {
    const std::string dir = temp_dataset("quad", 10);
    const Dataset d = scan_dataset({dir + "/images/train"}, 1, false);
    LoaderOptions o;
    o.img_size = 64, o.batch_size = 8, o.workers = 2, o.augment = true, o.shuffle = true, o.quad = true, o.pinned = false;
    DataLoader L(d, o);
    L.start_epoch(0);
    Batch b;
    REQUIRE(L.next(b));
    CHECK(b.n == 2);
    CHECK(b.h == 128);
    CHECK(b.w == 128);
    for (int64_t t = 0; t < b.num_targets(); ++t) CHECK((b.targets[t * 6] == 0 || b.targets[t * 6] == 1));
    REQUIRE(L.next(b));  // 2 images left: fewer than 4 collate to none, as collate_fn4's len // 4
    CHECK(b.n == 0);
    CHECK_FALSE(L.next(b));
    fs::remove_all(dir);
}

TEST_CASE("y5train --image-weights: the loader's epoch draws only images with weight", "[trainflags]") {
    const std::string dir = temp_dataset("iw", 8);
    const Dataset d = scan_dataset({dir + "/images/train"}, 1, false);
    LoaderOptions o;
    o.img_size = 64, o.batch_size = 4, o.workers = 2, o.augment = true, o.shuffle = true, o.pinned = false;
    DataLoader L(d, o);
    L.set_image_weights({0, 1, 0, 0, 0, 3, 0, 0});
    L.start_epoch(0);
    Batch b;
    std::vector<int> seen(8, 0);
    while (L.next(b))
        for (int r : b.indices) seen[r]++;
    CHECK(seen[1] + seen[5] == 8);
    CHECK(seen[5] > 0);
    fs::remove_all(dir);
}

TEST_CASE("y5train --cache disk: np.save's bytes, cv::imread's pixels, malformed files re-made, same batches", "[trainflags]") {
    // The writer's bytes are np.save's, and the reader reads them back.
    const std::vector<float> npy = fx().read_f32("npy.bytes"), px = fx().read_f32("npy.image");
    cv::Mat im(5, 7, CV_8UC3);
    for (size_t i = 0; i < px.size(); ++i) im.data[i] = (uint8_t)px[i];
    const std::string dir = temp_dataset("disk", 6);
    write_npy_u8(dir + "/a.npy", im);
    std::ifstream f(dir + "/a.npy", std::ios::binary);
    const std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    REQUIRE(got.size() == npy.size());
    for (size_t i = 0; i < npy.size(); ++i) REQUIRE((uint8_t)got[i] == (uint8_t)npy[i]);
    cv::Mat back;
    std::string why;
    REQUIRE(read_npy_u8(dir + "/a.npy", &back, &why));
    CHECK(cv::countNonZero(back.reshape(1) != im.reshape(1)) == 0);
    CHECK(npy_path_for("/d/images/x.jpg") == "/d/images/x.npy");
    CHECK(npy_path_for("/d/im.v2/x") == "/d/im.v2/x.npy");

    // Strict header checks.
    auto bad = [&](const std::string& bytes) {
        std::ofstream(dir + "/b.npy", std::ios::binary) << bytes;
        cv::Mat m;
        std::string w;
        return read_npy_u8(dir + "/b.npy", &m, &w) ? std::string() : w;
    };
    CHECK_THAT(bad(got.substr(0, got.size() - 1)), Catch::Matchers::Contains("file size"));
    std::string s = got;
    s.replace(s.find("|u1"), 3, "<f4");
    CHECK_THAT(bad(s), Catch::Matchers::Contains("dtype"));
    s = got;
    s.replace(s.find("False"), 5, "True ");
    CHECK_THAT(bad(s), Catch::Matchers::Contains("fortran_order"));
    s = got;
    s.replace(s.find("(5, 7, 3)"), 9, "(5, 21)  ");
    CHECK_THAT(bad(s), Catch::Matchers::Contains("shape"));
    CHECK_THAT(bad("hello"), Catch::Matchers::Contains("magic"));

    // The loader writes one .npy per image equal to cv::imread, re-makes a malformed one with a warning, and its
    // batches equal those of a loader that decodes the images.
    const Dataset d = scan_dataset({dir + "/images/train"}, 1, false);
    LoaderOptions o;
    o.img_size = 64, o.batch_size = 3, o.workers = 2, o.augment = true, o.shuffle = true, o.pinned = false, o.seed = 5;
    LoaderOptions od = o;
    od.cache_disk = true;
    { DataLoader first(d, od); CHECK_THAT(first.cache_message(), Catch::Matchers::Contains("Caching images (")); }
    for (const ImageRecord& r : d.records) {
        cv::Mat a;
        REQUIRE(read_npy_u8(npy_path_for(r.image), &a, &why));
        const cv::Mat want = cv::imread(r.image, cv::IMREAD_COLOR);
        REQUIRE(a.size() == want.size());
        CHECK(cv::countNonZero(a.reshape(1) != want.reshape(1)) == 0);
    }
    const std::string victim = npy_path_for(d.records[2].image);
    fs::resize_file(victim, fs::file_size(victim) - 7);
    DataLoader Ld(d, od), L(d, o);
    CHECK_THAT(Ld.cache_message(), Catch::Matchers::Contains("WARNING: " + victim));
    REQUIRE(read_npy_u8(victim, &back, &why));
    for (int epoch : {0, 1}) {
        Ld.start_epoch(epoch), L.start_epoch(epoch);
        Batch a, b;
        while (L.next(b)) {
            REQUIRE(Ld.next(a));
            CHECK(a.images == b.images);
            CHECK(a.targets == b.targets);
            CHECK(a.indices == b.indices);
        }
    }
    fs::remove_all(dir);
}

TEST_CASE("hyp anchors: N placeholder anchors per level, then AutoAnchor fits them", "[trainflags]") {
    const std::string path = std::string(Y5_SOURCE_DIR) + "/config/models/yolov5n.yaml";
    std::ifstream in(path);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (int na : {3, 2}) {
        INFO("anchors=" << na);
        Model m(path, Model::override_anchors(path, text, na), 3);
        REQUIRE(m.detect->nl == 3);
        REQUIRE(m.detect->na == na);
        for (int l = 0; l < 3; ++l)
            for (int j = 0; j < 2 * na; ++j) CHECK(m.detect->anchors_px[l * 2 * na + j] == (float)j);  // range(na*2)
        CHECK(m.num_parameters() > 0);
    }
    // AutoAnchor after the override: the placeholders fit nothing, so it evolves anchors and replaces them.
    const std::string dir = temp_dataset("anchors", 16);
    const Dataset d = scan_dataset({dir + "/images/train"}, 1, false);
    Model m(path, Model::override_anchors(path, text, 3), 3);
    m.allocate(Device::CPU);
    Rng rng(0);
    m.init_weights(rng);
    const Tensor& a = m.params[m.detect->anchors].value;
    const std::vector<float> before(a.ptr<float>(), a.ptr<float>() + a.numel());
    FILE* log = std::tmpfile();
    CHECK(check_anchors(d, m, 4.0, 96, 0, log));
    std::fclose(log);
    const std::vector<float> after(a.ptr<float>(), a.ptr<float>() + a.numel());
    CHECK(after != before);
    for (float v : after) CHECK((std::isfinite(v) && v > 0));
    fs::remove_all(dir);
}

TEST_CASE("y5train --multi-scale: sizes and shapes equal train.py's lines for every draw (imgsz 64, 320, 640)", "[trainflags]") {
    const int gs = 32;
    const std::vector<float> shapes = fx().read_f32("ms.shapes");
    for (int imgsz : {64, 320, 640}) {
        INFO("imgsz " << imgsz);
        const std::string p = "ms." + std::to_string(imgsz);
        const std::vector<float> sizes = fx().read_f32(p + ".sizes"), ns = fx().read_f32(p + ".ns");
        REQUIRE(multi_scale_span(imgsz, gs) == (int)sizes.size());
        int largest = 0;
        for (int k = 0; k < (int)sizes.size(); ++k) {
            const int sz = multi_scale_size(imgsz, gs, k);
            REQUIRE(sz == (int)sizes[k]);
            largest = std::max(largest, sz);
            for (int s = 0; s < 3; ++s) {
                int nh = 0, nw = 0;
                const bool resized = multi_scale_shape(sz, (int)shapes[2 * s], (int)shapes[2 * s + 1], gs, &nh, &nw);
                const size_t at = ((size_t)k * 3 + s) * 2;
                REQUIRE(resized == (ns[at] != 0));
                if (resized) {
                    REQUIRE(nh == (int)ns[at]);
                    REQUIRE(nw == (int)ns[at + 1]);
                }
            }
        }
        CHECK(multi_scale_max(imgsz, gs) == largest);  // what the memory plan is sized for
    }
    CHECK(multi_scale_max(640, 32) == 960);
    CHECK_THROWS(multi_scale_size(640, 32, multi_scale_span(640, 32)));
}
