/*
 * The built-in synthetic detection dataset: filled circles, rectangles and triangles (3 classes) of random
 * colours and sizes on textured backgrounds, written in YOLO format with its data.yaml:
 *   DIR/images/{train,val}/NNNNN.jpg, DIR/labels/{train,val}/NNNNN.txt, DIR/data.yaml (path: .)
 * Deterministic for a seed. For the README's demo and for tests that need no download.
 */
#pragma once
#include <cstdint>
#include <string>

namespace y5 {

struct SyntheticSpec {
    int train_images = 64, val_images = 16;
    int min_side = 160, max_side = 320;  // image sides drawn in this range
    int max_objects = 4;
    uint64_t seed = 0;
};

// Writes the dataset under dir (created if needed) and returns the path of its data.yaml.
std::string make_synthetic_dataset(const std::string& dir, const SyntheticSpec& spec = {});

}  // namespace y5
