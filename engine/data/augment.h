/*
 * YOLOv5 v7.0's image geometry and augmentation (utils/augmentations.py, utils/dataloaders.py), on OpenCV
 * images (HWC, BGR, uint8) and boxes in pixels.
 *   load_resize      long side to img_size: INTER_LINEAR when augmenting or upscaling, else INTER_AREA;
 *                    new size ceil(w·r) × ceil(h·r), as YOLOv5 7.0's load_image
 *   letterbox        resize to fit, pad with 114 split as round(d ∓ 0.1); auto pads only to a stride multiple
 *   random_perspective  M = T·S·R·P·C from draws in YOLOv5's order, warpAffine/warpPerspective with border
 *                    114, boxes by their 4 corners, clipped, filtered by box_candidates
 *   augment_hsv      gains r = U(−1,1)·[h,s,v] + 1 applied through 256-entry LUTs in HSV
 *   mosaic           4 images around a random centre on a 2s canvas, then random_perspective to s
 *   resize_bilinear  torch's F.interpolate(mode='bilinear', align_corners=False) of planar float images
 *   multi_scale_*    train.py's --multi-scale size rule and the batch's new shape
 * The random draws come from an Rng; a "draws" hook records or replays them for parity tests.
 */
#pragma once
#include <array>
#include <functional>
#include <opencv2/core.hpp>
#include <vector>

#include "engine/core/rng.h"

namespace y5 {

struct Box {
    float cls, x1, y1, x2, y2;  // pixels
};

struct AugmentHyp {
    float hsv_h = 0.015f, hsv_s = 0.7f, hsv_v = 0.4f;
    float degrees = 0, translate = 0.1f, scale = 0.5f, shear = 0, perspective = 0;
    float flipud = 0, fliplr = 0.5f, mosaic = 1.0f, mixup = 0;
};

// Uniform draws for the augmentations: from an Rng, or replayed from a list (parity tests).
class Draws {
public:
    explicit Draws(Rng* rng) : rng_(rng) {}
    explicit Draws(std::vector<double> replay) : replay_(std::move(replay)) {}
    double uniform(double lo, double hi);  // random.uniform(lo, hi)
    double random() { return uniform(0, 1); }
    size_t used() const { return next_; }

private:
    Rng* rng_ = nullptr;
    std::vector<double> replay_;
    size_t next_ = 0;
};

cv::Mat load_resize(const cv::Mat& im, int img_size, bool augment);

// F.interpolate(x, size=(oh, ow) or scale_factor=oh/h, mode='bilinear', align_corners=False) of c planes (c, h, w)
// → (c, oh, ow), as PyTorch's CPU kernel (upsample_bilinear2d); kernels/image.h's CPU reference.
void resize_bilinear(const float* x, int c, int h, int w, float* y, int oh, int ow);

// train.py's --multi-scale, per batch: sz = random.randrange(int(imgsz·0.5), int(imgsz·1.5) + gs) // gs · gs. The
// draw is k in [0, multi_scale_span): sz = (int(imgsz·0.5) + k) // gs · gs. multi_scale_max: the largest sz.
int multi_scale_span(int imgsz, int gs);
int multi_scale_size(int imgsz, int gs, int k);
int multi_scale_max(int imgsz, int gs);
// The batch (h, w) resized for sz: sf = sz / max(h, w); when sf != 1 each side becomes ceil(side·sf/gs)·gs
// (returns false, no resize, when sf == 1).
bool multi_scale_shape(int sz, int h, int w, int gs, int* nh, int* nw);

struct LetterboxInfo {
    double ratio_w = 1, ratio_h = 1, pad_w = 0, pad_h = 0;  // (dw, dh) as YOLOv5 returns them: half the padding
};
cv::Mat letterbox(const cv::Mat& im, int new_h, int new_w, LetterboxInfo* info, bool autopad = false,
                  bool scale_fill = false, bool scaleup = true, int stride = 32, int color = 114);

// Returns the warped image; boxes are transformed, clipped and filtered in place. M (3×3) is written if given.
cv::Mat random_perspective(const cv::Mat& im, std::vector<Box>& boxes, const AugmentHyp& h, int border_h, int border_w,
                           Draws& d, cv::Matx33d* M = nullptr);
// box_candidates: w, h > 2 px, area ratio > area_thr (after / before·s²), aspect < 100.
bool box_candidate(const Box& before, const Box& after, double s, double area_thr = 0.1);

void augment_hsv(cv::Mat& im, float hgain, float sgain, float vgain, const double r_draw[3]);

// Pixel xyxy boxes → normalised (cls, x, y, w, h), clipped to [0, w − eps] × [0, h − eps] (xyxy2xywhn).
std::vector<std::array<float, 5>> to_xywhn(const std::vector<Box>& boxes, int w, int h, float eps = 1e-3f);

// Rect batches (LoadImagesAndLabels with rect=True): the aspect-ratio order of the images and each batch's
// (h, w) shape. wh: image (w, h).
void rect_batches(const std::vector<std::array<int, 2>>& wh, int img_size, int batch_size, int stride, double pad,
                  std::vector<int>* order, std::vector<std::array<int, 2>>* shapes);

}  // namespace y5
