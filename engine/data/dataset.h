/*
 * YOLO-format datasets as YOLOv5 v7.0 reads them (utils/general.py check_dataset, utils/dataloaders.py).
 *   data.yaml: path (relative: to the working directory, as check_dataset reads it relative to YOLOv5's root,
 *     when the train and val sources are there, else to the yaml's folder; none: the yaml's folder), train/val/test as a folder, a list of folders, or a
 *     .txt list of image paths; names as a list or a {id: name} map; nc (optional, must equal len(names)).
 *   images → labels: the last /images/ becomes /labels/ and the extension .txt.
 *   folders are listed as YOLOv5's recursive glob of '*.*' lists them: dot names skipped, each real folder once.
 *   verify_image_label: the image must decode, be at least 10×10 and within PIL's decompression-bomb limit
 *     (read from the PNG/JPEG/BMP header first); a JPEG not ending with FFD9 is re-saved (quality 100, 4:4:4)
 *     and kept when every scanline decodes from its bytes as PIL decodes it (YOLOv5's "corrupt JPEG restored
 *     and saved"), else skipped as truncated. The label file is read
 *     as YOLOv5 reads it: UTF-8, Python's line breaks (\r, \r\n, \f, U+2028, ...) and whitespace, Python's
 *     float(); rows have 5 columns (more than 6: a polygon, converted to its box), values ≥ 0, coordinates ≤ 1;
 *     duplicate rows are removed (warning); a missing or empty label file means a background image, an
 *     unreadable one a corrupt image. An image that fails is skipped with a warning naming the file (and the
 *     label line).
 *   class ids ≥ nc are collected and reported by check_classes(), which callers run before training.
 * A label cache (<labels folder>.y5cache) keyed by a hash of the image and label paths and sizes makes a
 * rescan of an unchanged dataset read one file; its size, checksum and counts are checked before use, and a
 * damaged one is ignored with a warning, rescanned and rewritten.
 */
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace y5 {

struct DataConfig {
    std::string yaml_path, root;  // root: the resolved `path`
    std::string root_note;        // for a relative `path`: which reading was used (printed by the tools)
    std::map<std::string, std::vector<std::string>> splits;  // "train"/"val"/"test" → resolved sources
    std::vector<std::string> names;
    int nc = 0;
};

// Loads and validates a data.yaml; every problem is a y5::Error naming the file (and line).
DataConfig load_data_yaml(const std::string& path);

struct LabelRow {
    float cls, x, y, w, h;  // normalised xywh
};

struct ImageRecord {
    std::string image, label;   // paths
    int width = 0, height = 0;  // as decoded (EXIF orientation applied)
    std::vector<LabelRow> labels;
    std::vector<int> label_lines;  // 1-based line of each row in the label file (for messages)
};

struct ScanStats {
    int images = 0, backgrounds = 0, corrupt = 0, duplicates_removed = 0;
    int64_t instances = 0;
    bool from_cache = false;
    std::vector<std::string> warnings;  // one line each, naming the file
};

struct Dataset {
    std::vector<ImageRecord> records;  // valid images only, in YOLOv5's (sorted) order
    ScanStats stats;
    std::string cache_path;
};

// Image files of one split source list (folders searched recursively, .txt lists read), sorted.
std::vector<std::string> list_images(const std::vector<std::string>& sources);
std::string label_path_for(const std::string& image_path);

// Scans a split: verifies every image and label (in parallel with `threads`), using the cache when valid.
Dataset scan_dataset(const std::vector<std::string>& sources, int threads = 0, bool use_cache = true);

// Every label with class ≥ nc, as "label file:line: class K exceeds nc=N" (empty when all are in range).
std::vector<std::string> check_classes(const Dataset& d, int nc);

// Instances per class (size nc; classes ≥ nc are not counted).
std::vector<int64_t> class_counts(const Dataset& d, int nc);

// --image-weights, as YOLOv5's utils/general.py: labels_to_class_weights = 1/count per class (a class without labels
// counts 1), normalised to sum 1, as float32 (torch.from_numpy(...).float()); labels_to_image_weights = per image
// Σ_c class_weights[c] · (labels of class c in the image).
std::vector<float> labels_to_class_weights(const Dataset& d, int nc);
std::vector<double> labels_to_image_weights(const Dataset& d, int nc, const std::vector<double>& class_weights);
// train.py's per-epoch class weights: model.class_weights (= labels_to_class_weights · nc in float32) · (1 − maps)² / nc,
// maps being the last validation's per-class mAP50-95.
std::vector<double> epoch_class_weights(const std::vector<float>& class_weights, const std::vector<double>& maps, int nc);

}  // namespace y5
