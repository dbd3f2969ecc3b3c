/*
 * libFuzzer harness: a YOLO label file (engine/data/dataset.h, verify_image_label's rules), read by
 * scan_dataset as training reads it, for one valid 16×16 image, then check_classes and class_counts as
 * y5data and y5train run them. The input is the label file's bytes.
 * Invariants after the scan: the image is either kept (its rows obey the rules: 5 finite values, class a
 * non-negative integer, coordinates in [0, 1]) or counted corrupt with a warning.
 *   tools/fuzz.sh labels           (corpus: fuzz/corpus/labels)
 */
#include <opencv2/imgcodecs.hpp>

#include <cmath>

#include "engine/data/dataset.h"
#include "fuzz/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string images = [] {
        const std::string root = y5_fuzz_dir() + "/labels_ds";
        std::filesystem::create_directories(root + "/images");
        std::filesystem::create_directories(root + "/labels");
        cv::imwrite(root + "/images/a.png", cv::Mat(16, 16, CV_8UC3, cv::Scalar(40, 90, 160)));
        return root + "/images";
    }();
    y5_fuzz_write(images + "/../labels/a.txt", data, size);
    y5::Dataset d;
    try {
        d = y5::scan_dataset({images}, 1, false);
    } catch (const std::exception&) {
        return 0;
    }
    y5_fuzz_require(d.stats.images + d.stats.corrupt == 1, "one image is either kept or corrupt");
    y5_fuzz_require(d.records.size() == (size_t)d.stats.images, "records match the image count");
    y5_fuzz_require(d.stats.corrupt == 0 || !d.stats.warnings.empty(), "a corrupt image has a warning");
    for (const y5::ImageRecord& r : d.records) {
        y5_fuzz_require(r.labels.size() == r.label_lines.size(), "a line per label row");
        for (const y5::LabelRow& l : r.labels) {
            y5_fuzz_require(std::isfinite(l.cls) && l.cls >= 0 && l.cls == std::floor(l.cls), "class id");
            for (float v : {l.x, l.y, l.w, l.h}) y5_fuzz_require(v >= 0 && v <= 1, "normalised coordinate");
        }
    }
    y5::check_classes(d, 80);
    y5::class_counts(d, 80);
    return 0;
}
