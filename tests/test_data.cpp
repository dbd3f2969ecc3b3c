/*
 * Datasets: data.yaml rules, the coco128 scan YOLOv5 reports, the synthetic dataset, the label cache, and a
 * corpus of bad inputs with the message or warning each one gets.
 */
#include <zip.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "kernels/check.h"
#include "engine/data/dataset.h"
#include "engine/data/synthetic.h"
#include "engine/app/val.h"
#include "kernels/image.h"
#include "tests/test_util.h"

using namespace y5;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

static const std::string kShared = std::string(Y5_SOURCE_DIR) + "/../shared";

static std::string fresh_dir(const std::string& name) {
    std::string d = "/tmp/y5_test_" + name;
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

static void write(const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << text;
}

TEST_CASE("coco128 scans as YOLOv5 reports it", "[data]") {
    const std::string yaml = kShared + "/data/coco128/coco128.yaml";
    if (!fs::exists(yaml)) {
        WARN("../shared/data/coco128 is absent (a user's clone): skipping the coco128 scan");
        return;
    }
    DataConfig cfg = load_data_yaml(yaml);
    CHECK(cfg.nc == 80);
    CHECK(cfg.names[0] == "person");
    CHECK(cfg.names[79] == "toothbrush");
    Dataset d = scan_dataset(cfg.splits.at("train"), 0, /*use_cache=*/false);  // never write into ../shared
    CHECK(d.stats.images == 128);
    CHECK(d.stats.backgrounds == 2);
    CHECK(d.stats.corrupt == 0);
    CHECK(d.stats.instances == 929);
    CHECK(check_classes(d, 80).empty());
    CHECK(class_counts(d, 80)[0] == 254);
    CHECK(d.records[0].image.find("000000000009.jpg") != std::string::npos);
    CHECK(d.records[0].width == 640);
    CHECK(d.records[0].height == 480);
}

TEST_CASE("synthetic dataset round trip and the label cache", "[data]") {
    const std::string dir = fresh_dir("synth");
    SyntheticSpec spec;
    spec.train_images = 12;
    spec.val_images = 4;
    const std::string yaml = make_synthetic_dataset(dir, spec);
    DataConfig cfg = load_data_yaml(yaml);
    CHECK(cfg.nc == 3);
    CHECK(cfg.names[2] == "triangle");
    Dataset d = scan_dataset(cfg.splits.at("train"));
    CHECK(d.stats.images == 12);
    CHECK(d.stats.corrupt == 0);
    CHECK_FALSE(d.stats.from_cache);
    CHECK(d.stats.instances >= 12);
    CHECK(check_classes(d, 3).empty());
    CHECK(fs::exists(d.cache_path));
    Dataset again = scan_dataset(cfg.splits.at("train"));
    CHECK(again.stats.from_cache);
    CHECK(again.records.size() == d.records.size());
    CHECK(again.records[3].labels.size() == d.records[3].labels.size());
    CHECK(again.records[3].labels[0].x == d.records[3].labels[0].x);
    // Changing a label file changes the hash: the scan runs again and sees the change.
    write(d.records[0].label, "1 0.5 0.5 0.2 0.2\n");
    Dataset third = scan_dataset(cfg.splits.at("train"));
    CHECK_FALSE(third.stats.from_cache);
    REQUIRE(third.records[0].labels.size() == 1);
    CHECK(third.records[0].labels[0].cls == 1.0f);
    // Same seed, same dataset.
    const std::string dir2 = fresh_dir("synth2");
    make_synthetic_dataset(dir2, spec);
    std::ifstream a(dir + "/labels/val/00002.txt"), b(dir2 + "/labels/val/00002.txt");
    std::string la((std::istreambuf_iterator<char>(a)), {}), lb((std::istreambuf_iterator<char>(b)), {});
    CHECK(la == lb);
}

TEST_CASE("bad images and labels are skipped with a warning naming the file and line", "[data][errors]") {
    const std::string dir = fresh_dir("bad");
    const std::string good = dir + "/good.jpg";
    make_synthetic_dataset(dir + "/src", SyntheticSpec{2, 1, 64, 64, 1, 3});
    fs::copy_file(dir + "/src/images/train/00000.jpg", good);
    std::ifstream in(good, std::ios::binary);
    std::string jpeg((std::istreambuf_iterator<char>(in)), {});
    const std::string img = dir + "/images/", lab = dir + "/labels/";
    auto add = [&](const std::string& stem, const std::string& image_bytes, const std::string* label) {
        write(img + stem + ".jpg", image_bytes);
        if (label) write(lab + stem + ".txt", *label);
    };
    const std::string ok_label = "0 0.5 0.5 0.2 0.2\n";
    const std::string l4 = "0 0.5 0.5 0.2\n", l6 = "0 0.5 0.5 0.2 0.2 0.1\n", neg = "0 -0.5 0.5 0.2 0.2\n",
                      big = "0 0.5 1.5 0.2 0.2\n", nan = "0 0.5 nan 0.2 0.2\n", word = "0 0.5 abc 0.2 0.2\n",
                      dup = "0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.1 0.1\n0 0.5 0.5 0.2 0.2\n",
                      poly = "2 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n", cls = "0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n";
    add("a_ok", jpeg, &ok_label);
    add("b_truncated", jpeg.substr(0, jpeg.size() / 2), &ok_label);
    add("c_empty", "", &ok_label);
    add("d_text", "this is not an image\n", &ok_label);
    add("e_cols4", jpeg, &l4);
    add("f_cols6", jpeg, &l6);
    add("g_negative", jpeg, &neg);
    add("h_over1", jpeg, &big);
    add("i_nan", jpeg, &nan);
    add("j_word", jpeg, &word);
    add("k_dup", jpeg, &dup);
    add("l_poly", jpeg, &poly);
    add("m_class", jpeg, &cls);
    add("n_background", jpeg, nullptr);
    Dataset d = scan_dataset({img}, 1, false);
    const ScanStats& s = d.stats;
    CHECK(s.images == 5);  // a_ok, k_dup, l_poly, m_class, n_background
    CHECK(s.backgrounds == 1);
    CHECK(s.corrupt == 9);
    CHECK(s.duplicates_removed == 1);
    CHECK(s.warnings.size() == 10);
    auto warned = [&](const std::string& what) {
        for (const std::string& w : s.warnings)
            if (w.find(what) != std::string::npos) return true;
        return false;
    };
    CHECK(warned("b_truncated.jpg: ignoring corrupt image/label: truncated JPEG"));
    CHECK(warned("c_empty.jpg: ignoring corrupt image/label: empty file"));
    CHECK(warned("d_text.jpg: ignoring corrupt image/label: cannot decode"));
    CHECK(warned("labels/e_cols4.txt:1: labels require 5 columns, 4 columns detected"));
    CHECK(warned("labels/f_cols6.txt:1: labels require 5 columns, 6 columns detected"));
    CHECK(warned("labels/g_negative.txt:1: negative label value -0.5"));
    CHECK(warned("labels/h_over1.txt:1: non-normalized or out of bounds coordinate 1.5"));
    CHECK(warned("labels/i_nan.txt:1: non-finite label value nan"));
    CHECK(warned("labels/j_word.txt:1: 'abc' is not a number"));
    CHECK(warned("k_dup.jpg: 1 duplicate labels removed"));
    // The polygon becomes its box; the duplicate-free rows are YOLOv5's np.unique order (sorted).
    for (const ImageRecord& r : d.records) {
        if (r.image.find("l_poly") != std::string::npos) {
            REQUIRE(r.labels.size() == 1);
            CHECK(r.labels[0].x == Approx(0.2f));
            CHECK(r.labels[0].h == Approx(0.3f));
        }
        if (r.image.find("k_dup") != std::string::npos) {
            REQUIRE(r.labels.size() == 2);
            CHECK(r.labels[0].cls == 0.0f);
        }
    }
    // A class id ≥ nc is reported with its label file and line (line 3: the blank line counts).
    std::vector<std::string> bad = check_classes(d, 3);
    REQUIRE(bad.size() == 1);
    CHECK_THAT(bad[0], Contains("labels/m_class.txt:3: class 7 exceeds nc=3"));
}

// tests/fixtures/jpeg_eoi.txt (tools/golden/make_jpeg_eoi_fixtures.py): COCO128 JPEGs with their last bytes cut
// (and some with FFD9 + garbage appended), and whether YOLOv5's verify_image_label kept (restored) or skipped each.
TEST_CASE("JPEGs not ending with FFD9 are restored or skipped as YOLOv5's verify_image_label does", "[data][errors]") {
    const std::string src = kShared + "/data/coco128/images/train2017/";
    if (!fs::exists(src)) {
        WARN("../shared/data/coco128 is absent (a user's clone): skipping the JPEG end-marker cases");
        return;
    }
    std::ifstream fx(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/jpeg_eoi.txt");
    REQUIRE(fx);
    const std::string dir = fresh_dir("jpeg_eoi");
    std::map<std::string, bool> want;  // file name → kept by YOLOv5
    std::string name;
    int cut = 0, pad = 0, kept = 0, n_kept = 0;
    while (fx >> name >> cut >> pad >> kept) {
        std::ifstream in(src + name, std::ios::binary);
        std::string b((std::istreambuf_iterator<char>(in)), {});
        REQUIRE(b.size() > (size_t)cut);
        b.resize(b.size() - (size_t)cut);
        if (pad) b += "\xff\xd9xxxxx";
        const std::string stem = fs::path(name).stem().string() + "_c" + std::to_string(cut) + "_p" + std::to_string(pad);
        write(dir + "/images/" + stem + ".jpg", b);
        want[stem + ".jpg"] = kept;
        n_kept += kept;
    }
    REQUIRE(want.size() == 200);
    REQUIRE(n_kept > 20);  // both outcomes are exercised
    REQUIRE(n_kept < 180);
    Dataset d = scan_dataset({dir + "/images"}, 1, false);
    std::set<std::string> found;
    for (const ImageRecord& r : d.records) found.insert(fs::path(r.image).filename().string());
    auto warned = [&](const std::string& file, const std::string& what) {
        for (const std::string& w : d.stats.warnings)
            if (w.find("/" + file + ": " + what) != std::string::npos) return true;
        return false;
    };
    for (const auto& [file, keep] : want) {
        INFO(file << (keep ? " is kept by YOLOv5" : " is skipped by YOLOv5"));
        CHECK(found.count(file) == (size_t)keep);
        CHECK(warned(file, keep ? "corrupt JPEG restored and saved" : "ignoring corrupt image/label: truncated JPEG"));
        if (!keep) continue;
        std::ifstream in(dir + "/images/" + file, std::ios::binary);
        const std::string b((std::istreambuf_iterator<char>(in)), {});
        REQUIRE(b.size() > 4);
        CHECK(b.compare(b.size() - 2, 2, "\xff\xd9") == 0);  // rewritten whole
        const size_t sof = b.find("\xff\xc0");                  // baseline SOF0: 3 components, each sampled 1×1 (4:4:4)
        REQUIRE(sof != std::string::npos);
        CHECK(b[sof + 9] == 3);
        for (int i = 0; i < 3; ++i) CHECK((unsigned char)b[sof + 11 + 3 * i] == 0x11);
    }
    CHECK(d.stats.corrupt == (int)want.size() - n_kept);
    CHECK_FALSE(fs::exists(dir + "/images/" + want.begin()->first + ".y5tmp"));
}

TEST_CASE("bad data yaml and missing paths get one clear error", "[data][errors]") {
    const std::string dir = fresh_dir("yaml");
    auto yaml = [&](const std::string& name, const std::string& text) {
        write(dir + "/" + name, text);
        return dir + "/" + name;
    };
    CHECK_THROWS_WITH(load_data_yaml(yaml("nonames.yaml", "train: images\nval: images\nnc: 2\n")),
                      Contains("nonames.yaml: data.yaml 'names:' field missing"));
    CHECK_THROWS_WITH(load_data_yaml(yaml("nc.yaml", "train: images\nval: images\nnc: 3\nnames: [a, b]\n")),
                      Contains("nc.yaml: nc is 3 but names lists 2 classes"));
    CHECK_THROWS_WITH(load_data_yaml(yaml("keys.yaml", "train: a\nval: a\nnames:\n  0: x\n  2: y\n")),
                      Contains("names has no entry for class 1"));
    CHECK_THROWS_WITH(load_data_yaml(yaml("broken.yaml", "train: [a\nval: b\n")), Contains("broken.yaml: line"));
    CHECK_THROWS_WITH(load_data_yaml(dir + "/absent.yaml"), Contains("absent.yaml: data yaml does not exist"));
    DataConfig c = load_data_yaml(yaml("ok.yaml", "path: sub\ntrain: images/train\nval: [images/a, /abs/b]\nnames: {0: p, 1: q}\n"));
    CHECK(c.root == dir + "/sub");
    CHECK(c.splits.at("train")[0] == dir + "/sub/images/train");
    CHECK(c.splits.at("val")[1] == "/abs/b");
    CHECK(c.names[1] == "q");
    CHECK_THROWS_WITH(scan_dataset(c.splits.at("train")), Contains("sub/images/train does not exist"));
    // A dataset with no labels folder at all: every image is a background.
    make_synthetic_dataset(dir + "/nolabels", SyntheticSpec{3, 1, 64, 64, 1, 5});
    fs::remove_all(dir + "/nolabels/labels");
    Dataset d = scan_dataset({dir + "/nolabels/images/train"}, 1, false);
    CHECK(d.stats.images == 3);
    CHECK(d.stats.backgrounds == 3);
    CHECK(d.stats.instances == 0);
    CHECK(label_path_for("/d/images/x/images/a.b.jpg") == "/d/images/x/labels/a.b.txt");
}

TEST_CASE("batch images: uint8 to float / 255, layout kept (the CPU reference of kernels/image.h)", "[data][image]") {
    // Every byte value: the float YOLOv5 gets from imgs.float() / 255 (one correctly rounded f32 division).
    for (int v = 0; v < 256; ++v) {
        const float want = (float)v / 255.0f;
        REQUIRE(u8_to_unit((uint8_t)v) == want);
        REQUIRE(std::fabs((double)want - v / 255.0) <= std::ldexp(1.0, -25));  // half an f32 ulp below 1: rounded
    }
    CHECK(u8_to_unit(0) == 0.0f);
    CHECK(u8_to_unit(255) == 1.0f);

    // batch_images keeps the loader's (n, 3, h, w) CHW RGB order and converts through the reference.
    Batch b;
    b.n = 2, b.h = 5, b.w = 7;
    b.images.resize((size_t)b.n * 3 * b.h * b.w);
    for (size_t i = 0; i < b.images.size(); ++i) b.images[i] = (uint8_t)(i * 37 + 11);
    Arena host("batch", Device::CPU, 1 << 20);
    Ctx c;
    c.act = &host;
    Tensor x = batch_images(c, b);
    REQUIRE(x.shape == Shape({2, 3, 5, 7}));
    REQUIRE(x.dtype == DType::F32);
    for (size_t i = 0; i < b.images.size(); ++i) REQUIRE(x.ptr<float>()[i] == (float)b.images[i] / 255.0f);
    std::vector<float> ref(b.images.size());
    images_u8_to_f32_cpu(ref.data(), b.images.data(), (int64_t)ref.size());
    CHECK(std::memcmp(ref.data(), x.data, x.bytes()) == 0);

    b.images.pop_back();  // a batch whose bytes do not match its shape is an error, not a silent overread
    CHECK_THROWS_WITH(batch_images(c, b), Contains("batch_images"));
}

// Batches allocate page-locked memory once per run: the loader keeps its ring of batches across epochs and the
// consumer keeps its Batch (as y5train does), so once every buffer exists nothing more is allocated (before, each
// epoch made its ring anew: 3 requests per epoch here); with pinned off (y5train
// on the CPU) nothing asks for page-locked memory at all. (In a CPU-only build the request falls back to malloc;
// the count is of requests.)
TEST_CASE("the loader's batch memory is allocated in the first epoch only, and pinned only when asked", "[data][pinned]") {
    const std::string dir = fresh_dir("synth_pinned");
    SyntheticSpec spec;
    spec.train_images = 12;
    spec.val_images = 4;
    DataConfig cfg = load_data_yaml(make_synthetic_dataset(dir, spec));
    Dataset d = scan_dataset(cfg.splits.at("train"));
    for (bool pinned : {true, false}) {
        LoaderOptions o;
        o.img_size = 64, o.batch_size = 4, o.workers = 2, o.augment = true, o.shuffle = true, o.pinned = pinned;
        DataLoader loader(d, o);
        Batch b;
        std::vector<int64_t> after;  // requests after each epoch
        const int64_t before = pinned_allocations();
        for (int e = 0; e < 3; ++e) {
            loader.start_epoch(e);
            int n = 0;
            while (loader.next(b)) ++n;
            CHECK(n == 3);
            after.push_back(pinned_allocations() - before);
        }
        INFO((pinned ? "pinned" : "not pinned") << ": requests after each epoch " << after[0] << ", " << after[1] << ", "
                                                << after[2]);
        // The ring's 4 slots and the consumer's batch trade buffers (next() swaps): the one the consumer brought
        // empty is filled in the second epoch (measured: 3, 4, 4 requests); from then on nothing is allocated.
        if (pinned) CHECK(after[0] > 0);
        else CHECK(after[0] == 0);
        CHECK(after[1] <= 4 + 1);
        CHECK(after[2] == after[1]);
    }
}

// A data yaml's download: as check_dataset runs it when its sources are missing: the .zip fetched (a file:// URL
// through libcurl, as an https one would be), unzipped into the datasets folder (path's parent) and removed; the
// dataset then scans. A zip with an entry that climbs out of the folder, a missing URL and a download script are
// one-line errors, and nothing is left behind.
TEST_CASE("a data yaml's download: fetches and unzips a missing dataset", "[data][download]") {
    const std::string dir = fresh_dir("download");
    std::vector<fs::path> imgs;
    for (const auto& e : fs::directory_iterator(kShared + "/data/coco128/images/train2017")) imgs.push_back(e.path());
    std::sort(imgs.begin(), imgs.end());
    auto make_zip = [&](const std::string& zpath, const std::vector<std::pair<std::string, std::string>>& files) {
        int err = 0;
        zip_t* z = zip_open(zpath.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
        REQUIRE(z);
        std::vector<std::string> keep;
        keep.reserve(files.size());
        for (const auto& [name, src] : files) {
            std::ifstream f(src, std::ios::binary);
            keep.emplace_back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
            zip_source_t* s = zip_source_buffer(z, keep.back().data(), keep.back().size(), 0);
            REQUIRE(zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE) >= 0);
        }
        REQUIRE(zip_close(z) == 0);
    };
    std::vector<std::pair<std::string, std::string>> files;
    for (int i = 0; i < 4; ++i) {
        files.push_back({"tiny/images/train/" + imgs[i].filename().string(), imgs[i].string()});
        const fs::path lab = fs::path(kShared + "/data/coco128/labels/train2017") / (imgs[i].stem().string() + ".txt");
        if (fs::exists(lab)) files.push_back({"tiny/labels/train/" + lab.filename().string(), lab.string()});
    }
    make_zip(dir + "/tiny.zip", files);
    auto yaml = [&](const std::string& name, const std::string& download) {
        const std::string p = dir + "/" + name + ".yaml";
        write(p, "path: " + dir + "/datasets/tiny\ntrain: images/train\nval: images/train\nnames: [" +
                     std::string("a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, x, y, z, ") +
                     "aa, ab, ac, ad, ae, af, ag, ah, ai, aj, ak, al, am, an, ao, ap, aq, ar, as, at, au, av, aw, ax, "
                     "ay, az, ba, bb, bc, bd, be, bf, bg, bh, bi, bj, bk, bl, bm, bn, bo, bp, bq, br, bs, bt, bu, bv, "
                     "bw, bx, by, bz, ca, cb]\ndownload: " + download + "\n");
        return p;
    };
    const DataConfig cfg = load_data_yaml(yaml("tiny", "file://" + dir + "/tiny.zip"));
    CHECK(fs::is_directory(dir + "/datasets/tiny/images/train"));
    CHECK(!fs::exists(dir + "/datasets/tiny.zip"));  // removed once unzipped
    CHECK(cfg.root == fs::weakly_canonical(dir + "/datasets/tiny").string());
    Dataset d = scan_dataset(cfg.splits.at("train"));
    CHECK(d.records.size() == 4);
    // Present now: a second load does not download again (the zip is gone, so it would fail).
    fs::remove(dir + "/tiny.zip");
    CHECK_NOTHROW(load_data_yaml(yaml("tiny", "file://" + dir + "/tiny.zip")));

    fs::remove_all(dir + "/datasets");
    CHECK_THROWS_WITH(load_data_yaml(yaml("gone", "file://" + dir + "/nope.zip")),
                      Catch::Contains("download of file://" + dir + "/nope.zip failed"));
    CHECK(!fs::exists(dir + "/datasets/nope.zip"));
    CHECK(!fs::exists(dir + "/datasets/nope.zip.part"));
    CHECK_THROWS_WITH(load_data_yaml(yaml("script", "bash data/scripts/get_coco.sh")),
                      Catch::Contains("y5 runs no download scripts"));
    make_zip(dir + "/evil.zip", {{"tiny/images/train/a.jpg", imgs[0].string()}, {"../../escaped.txt", imgs[0].string()}});
    CHECK_THROWS_WITH(load_data_yaml(yaml("evil", "file://" + dir + "/evil.zip")),
                      Catch::Contains("entry '../../escaped.txt' would be written outside"));
    CHECK(!fs::exists(dir + "/escaped.txt"));
    CHECK(!fs::exists(dir + "/datasets/tiny/images/train/a.jpg"));  // nothing written before the names were checked
    CHECK(!fs::exists(dir + "/datasets/evil.zip"));
}
