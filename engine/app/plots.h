/*
 * Pictures users would rather see than read, as YOLOv5 draws them:
 *   images (OpenCV): a batch mosaic with each image's boxes and class names (train_batch0.jpg, val_batch0_pred.jpg),
 *     utils/plots.py plot_images
 *   figures (PLplot, its memcairo device drawing into an image OpenCV writes): results.png (plot_results),
 *     labels.jpg and labels_correlogram.jpg (plot_labels), confusion_matrix.png (ConfusionMatrix.plot),
 *     PR_curve.png, F1_curve.png, P_curve.png, R_curve.png (plot_pr_curve, plot_mc_curve), at matplotlib's
 *     sizes (figsize × dpi) and with its default colours.
 */
#pragma once
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "engine/app/metrics.h"
#include "engine/data/loader.h"

namespace y5 {

// Writes up to 16 images of the batch in a grid (at most 1920 px wide), labels drawn in per-class colours.
// targets rows (image, class, x, y, w, h[, conf]) normalised; conf_cols = 7 draws the confidence too.
// YOLOv5's 20-colour palette (Colors), as BGR, by class.
cv::Scalar class_colour(int cls);

void plot_batch(const Batch& b, const std::vector<std::string>& names, const std::string& path);

}  // namespace y5

namespace y5 {

// results.png as YOLOv5's plot_results draws it (2400×1200): a 2×5 grid of the results.csv columns (train
// box/obj/cls loss, precision, recall, val box/obj/cls loss, mAP50, mAP50-95) against the epoch, each with
// markers and a gaussian_filter1d(sigma 3) smoothed dotted line, titled by the column.
void plot_results(const std::string& results_csv, const std::string& path);

// plot_labels: save_dir/labels.jpg (1600²: class histogram, the first 1000 boxes' sizes drawn centred, 2-D
// histograms of x/y and width/height) and save_dir/labels_correlogram.jpg (1600²: seaborn's corner pairplot of
// x, y, width, height: histograms on the diagonal, 2-D histograms below it). Labels are the dataset's.
void plot_labels(const Dataset& ds, const std::vector<std::string>& names, const std::string& save_dir);

// ConfusionMatrix.plot: save_dir/confusion_matrix.png (3000×2250), columns normalised, cells under 0.005
// blank, annotated when nc < 30, class names (and 'background') on the axes when there are nc of them (< 99).
void plot_confusion_matrix(const ConfusionMatrix& cm, const std::vector<std::string>& names, const std::string& save_dir);

// ap_per_class(plot=True): save_dir/PR_curve.png (each class's precision against recall at IoU 0.5 when fewer
// than 21 classes, their mean thick, mAP@0.5 in the legend) and F1_curve.png, P_curve.png, R_curve.png (against
// the confidence; the box-smoothed mean with its best value). All 2250×1500. names: all classes, by id.
void plot_val_curves(const ApResult& r, const std::vector<std::string>& names, const std::string& save_dir);

// A batch with predicted boxes (rows: image, class, x, y, w, h, conf, normalised) drawn with their
// confidence, as val_batchN_pred.jpg.
void plot_predictions(const Batch& b, const std::vector<std::array<float, 7>>& pred, const std::vector<std::string>& names,
                      const std::string& path);

}  // namespace y5
