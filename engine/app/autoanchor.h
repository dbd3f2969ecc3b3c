/*
 * AutoAnchor, as YOLOv5 v7.0's utils/autoanchor.py (check_anchors, kmean_anchors, check_anchor_order), run by
 * y5train before the first epoch unless --noautoanchor (not on --resume: the checkpoint holds the anchors).
 *   wh: the training labels' widths and heights (n, 2) in pixels at imgsz, each image scaled by imgsz/max(w, h)
 *   metric of anchors k (na, 2) px: r = wh/k, x = min(r, 1/r) over w and h (n, na), best = max over anchors (n,)
 *     aat = mean count of x > 1/thr per label (anchors above threshold), bpr = mean(best > 1/thr)
 *   check_anchors: bpr on wh × U(0.9, 1.1) per image; if bpr ≤ 0.98, kmean_anchors and, when their bpr is
 *     higher, the evolved anchors replace the Detect `anchors` buffer (grid units: pixels / stride, in stride
 *     order, rounded to f16 as train.py's model.half().float())
 *   kmean_anchors: k-means on the whitened wh (labels with a side ≥ 2 px), then 1000 generations of a genetic
 *     search (mutation prob 0.9, sigma 0.1) maximising fitness = mean(best · (best > 1/thr)); sorted by area.
 * Random numbers come from y5's Rng (seeded by --seed), not NumPy's: y5 and YOLOv5 draw different scales and
 * mutations, so their anchors agree in fitness, not digit for digit (tests/test_autoanchor.cpp).
 */
#pragma once
#include <cstdint>
#include <cstdio>
#include <vector>

#include "engine/core/rng.h"
#include "engine/data/dataset.h"

namespace y5 {

class Model;

// Label wh (n, 2) in pixels at imgsz, images in order: normalised w, h · imgsz·(W, H)/max(W, H) · scale[i]
// (scale empty: 1), in f64 and then rounded to f32 as YOLOv5 builds it.
std::vector<float> label_wh(const Dataset& d, int imgsz, const std::vector<double>& scale = {});

struct AnchorFit {
    double bpr = 0, aat = 0;  // best possible recall, anchors above threshold per label
};
// wh (n, 2), anchors (na, 2), both pixels.
AnchorFit anchor_fit(const std::vector<float>& wh, const std::vector<float>& anchors, double thr);
// kmean_anchors' anchor_fitness: mean(best · (best > 1/thr)).
double anchor_fitness(const std::vector<float>& wh, const std::vector<float>& anchors, double thr);

// Evolved anchors (n, 2) in pixels, sorted by area; progress lines go to log (nullptr: silent).
std::vector<float> kmean_anchors(const Dataset& d, int n, int imgsz, double thr, int gen, Rng& rng,
                                 FILE* log = stdout);

// YOLOv5's check_anchors on model's Detect layer; returns whether its anchors were replaced. Deterministic in seed.
bool check_anchors(const Dataset& d, Model& model, double thr, int imgsz, uint64_t seed, FILE* log = stdout);

}  // namespace y5
