// What a YOLOv5 user sees: the data yaml's relative `path:` (YOLOv5's reading first, then the yaml's folder), the
// hyperparameters line train.py prints first, and val.py's rule for per-class rows.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include "engine/app/config.h"
#include "engine/app/hyp.h"
#include "engine/app/val.h"
#include "engine/data/dataset.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace y5;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

static void touch_dirs(const fs::path& root) {
    fs::create_directories(root / "images/train");
    fs::create_directories(root / "images/val");
}

// Runs f with the working directory at dir, restoring it after (also on a throw).
template <class F>
static void in_dir(const fs::path& dir, F f) {
    struct Back {
        fs::path p;
        ~Back() { fs::current_path(p); }
    } back{fs::current_path()};
    fs::current_path(dir);
    f();
}

TEST_CASE("data yaml: a relative path is read from the working directory first, then from the yaml's folder", "[habits]") {
    const fs::path dir = fs::temp_directory_path() / "y5_test_habits_path";
    fs::remove_all(dir);
    const fs::path yaml_dir = dir / "cfg", cwd_a = dir / "run_a", cwd_b = dir / "run_b";
    fs::create_directories(yaml_dir), fs::create_directories(cwd_a), fs::create_directories(cwd_b);
    const std::string yaml = (yaml_dir / "d.yaml").string();
    std::ofstream(yaml) << "path: ds\ntrain: images/train\nval: images/val\nnames: [a, b]\n";
    touch_dirs(yaml_dir / "ds");  // beside the yaml: y5's reading
    touch_dirs(cwd_b / "ds");     // under run_b only: YOLOv5's reading (its ROOT / path) from run_b

    in_dir(cwd_a, [&] {  // not under the working directory: the yaml's folder, and the note says so
        const DataConfig c = load_data_yaml(yaml);
        CHECK(c.root == fs::weakly_canonical(yaml_dir / "ds").string());
        CHECK(c.splits.at("train")[0] == (fs::path(c.root) / "images/train").string());
        CHECK_THAT(c.root_note, Contains("relative to the yaml's folder"));
        CHECK_THAT(c.root_note, Contains(c.root));
    });
    in_dir(cwd_b, [&] {  // there as well as beside the yaml: YOLOv5's reading wins
        const DataConfig c = load_data_yaml(yaml);
        CHECK(c.root == fs::weakly_canonical(cwd_b / "ds").string());
        CHECK(c.splits.at("val")[0] == (fs::path(c.root) / "images/val").string());
        CHECK_THAT(c.root_note, Contains("relative to the working directory (as YOLOv5 reads it)"));
    });
    // A folder that exists under the working directory without the sources is not taken.
    fs::remove_all(cwd_b / "ds/images/val");
    in_dir(cwd_b, [&] {
        const DataConfig c = load_data_yaml(yaml);
        CHECK(c.root == fs::weakly_canonical(yaml_dir / "ds").string());
        CHECK_THAT(c.root_note, Contains("yaml's folder"));
    });
    // An absolute path and no path at all need no choice: no note.
    std::ofstream(yaml) << "path: " << (cwd_b / "ds").string() << "\ntrain: images/train\nval: images/train\nnames: [a]\n";
    CHECK(load_data_yaml(yaml).root_note.empty());
    std::ofstream(yaml) << "train: ds/images/train\nval: ds/images/val\nnames: [a]\n";
    const DataConfig none = load_data_yaml(yaml);
    CHECK(none.root_note.empty());
    CHECK(none.root == fs::weakly_canonical(yaml_dir).string());
    fs::remove_all(dir);
}

TEST_CASE("hyperparameters line as train.py prints it", "[habits]") {
    // Python: 'hyperparameters: ' + ', '.join(f'{k}={v}' for k, v in yaml.safe_load(f).items()) on YOLOv5's file.
    const std::string path = std::string(Y5_SOURCE_DIR) + "/config/hyps/hyp.scratch-low.yaml";
    const std::string want =
        "hyperparameters: lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0, "
        "warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.2, "
        "anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, "
        "shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0, copy_paste=0.0";
    const Hyp h = load_hyp(path);
    CHECK(hyp_line(path, h, false) == want);
    CHECK(hyp_line(path, h, true) == "\033[34m\033[1mhyperparameters: \033[0m" + want.substr(17));
    // The yaml's order, an integer literal kept ("3", Python's int), 1e-05 as Python's repr.
    const std::string tmp = (fs::temp_directory_path() / "y5_test_habits_hyp.yaml").string();
    std::string text;
    for (const auto& [k, v] : h.v)
        if (k != "warmup_epochs" && k != "hsv_h") text += k + ": " + py_float(v) + "\n";
    text = "hsv_h: 0.00001\nwarmup_epochs: 3\n" + text;
    std::ofstream(tmp) << text;
    const std::string got = hyp_line(tmp, load_hyp(tmp), false);
    CHECK_THAT(got, StartsWith("hyperparameters: hsv_h=1e-05, warmup_epochs=3, anchor_t=4.0, box=0.05,"));
    fs::remove(tmp);
}

TEST_CASE("val.py's per-class rows: --verbose, or nc < 50 outside training, never for one class", "[habits]") {
    CHECK(val_per_class_rows(false, 3, false));    // y5val on a small dataset
    CHECK(!val_per_class_rows(false, 80, false));  // coco128 without --verbose: only 'all'
    CHECK(val_per_class_rows(true, 80, false));    // --verbose
    CHECK(!val_per_class_rows(false, 3, true));    // each epoch of training
    CHECK(val_per_class_rows(true, 3, true));      // train.py's final validation (verbose=True)
    CHECK(!val_per_class_rows(true, 1, false));    // one class (or --single-cls): 'all' says it
    ValResult r;
    r.images = 4, r.instances = 5;
    r.per_class.classes = {0, 2};
    r.per_class.p = {0.5, 0.25}, r.per_class.r = {1, 0.5};
    r.per_class.ap = {{}, {}};
    r.per_class.ap[0].fill(0.5), r.per_class.ap[1].fill(0.25);
    r.class_instances = {3, 0, 2};
    const std::vector<std::string> names = {"person", "bicycle", "car"};
    const std::string with = val_table(r, names, true), without = val_table(r, names, false);
    CHECK_THAT(with, Contains("                   car          4          2       0.25        0.5       0.25       0.25\n"));
    CHECK_THAT(with, Contains("person"));
    CHECK(std::count(with.begin(), with.end(), '\n') == 4);
    CHECK(std::count(without.begin(), without.end(), '\n') == 2);
    CHECK(without.find("person") == std::string::npos);
}
