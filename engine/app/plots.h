/*
 * Pictures users would rather see than read, as YOLOv5 draws them (utils/plots.py plot_images):
 * a batch mosaic with each image's boxes and class names (train_batch0.jpg, val_batch0_pred.jpg).
 */
#pragma once
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "engine/data/loader.h"

namespace y5 {

// Writes up to 16 images of the batch in a grid (at most 1920 px wide), labels drawn in per-class colours.
// targets rows (image, class, x, y, w, h[, conf]) normalised; conf_cols = 7 draws the confidence too.
// YOLOv5's 20-colour palette (Colors), as BGR, by class.
cv::Scalar class_colour(int cls);

void plot_batch(const Batch& b, const std::vector<std::string>& names, const std::string& path);

}  // namespace y5

namespace y5 {

// results.png as YOLOv5's plot_results draws it: a 2×5 grid of the results.csv columns (train box/obj/cls
// loss, precision, recall, val box/obj/cls loss, mAP50, mAP50-95) against the epoch.
void plot_results(const std::string& results_csv, const std::string& path);

// A batch with predicted boxes (rows: image, class, x, y, w, h, conf, normalised) drawn with their
// confidence, as val_batchN_pred.jpg.
void plot_predictions(const Batch& b, const std::vector<std::array<float, 7>>& pred, const std::vector<std::string>& names,
                      const std::string& path);

}  // namespace y5
