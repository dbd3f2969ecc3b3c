/*
 * Validation as YOLOv5's val.py runs it: eval-mode forward, the loss on the raw maps, NMS (conf 0.001,
 * IoU 0.6, multi-label, max_det 300), boxes and labels scaled back to the original images, the TP matrix,
 * ap_per_class (when any detection is a TP), and the confusion matrix fed only for images with labels.
 * The forward runs on the context's activation arena in tracking mode (only the tensors later rows read stay:
 * Model::forward's liveness), a batch in chunks of images if asked (ValOptions::chunk), so y5train validates on
 * its idle training arenas.
 * NMS runs where the decoded predictions are: on the GPU (nms_batch_cuda, scratch from the context's work
 * arena, only the detections downloaded) or on the host (nms_image).
 */
#pragma once
#include <string>
#include <vector>

#include "engine/data/loader.h"
#include "engine/app/metrics.h"
#include "layers/model.h"
#include "layers/yolo.h"

namespace y5 {

// Batch images (n, 3, h, w) uint8 → float32 /255 in the activation arena (on its device); with count ≥ 0 only
// images first .. first + count − 1.
Tensor batch_images(Ctx& c, const Batch& b, int first = 0, int count = -1);
// A training step's network input from x, b's images as f32 (batch_images, or the pipelined step's upload). Under
// recomputation (Ctx::recompute, the tape recording) b's uint8 pixels stay in the activation arena (a quarter of
// x's bytes) and x is a rebuildable constant (Tape::rebuildable): the model drops it after the rows that read it and
// the backward rebuilds it from the pixels with the same conversion, bit for bit, for the first convolution's
// weight gradient. device_src: the pixels already on x's device (the upload buffer), else b.images is copied.
Var train_input(Ctx& c, const Batch& b, const Tensor& x, const void* device_src = nullptr);
// Targets (nt, 6) (image, class, x, y, w, h): a host view of the batch's own array, valid while b is. They stay
// on the host on every device: the loss builds its target lists there (kernels/loss.h).
Tensor batch_targets(const Batch& b);

struct ValResult {
    double mp = 0, mr = 0, map50 = 0, map = 0;
    double loss[3] = {0, 0, 0};  // box, obj, cls: mean over batches
    int images = 0;
    int64_t instances = 0;
    ApResult per_class;
    std::vector<int64_t> class_instances;
    double fitness() const { return y5::fitness(mp, mr, map50, map); }
};

struct ValOptions {
    float conf_thres = 0.001f, iou_thres = 0.6f;
    int max_det = 300;
    bool single_cls = false;
    std::string plot_dir;                        // if set (val.py's plots): val_batch{0,1,2}_{labels,pred}.jpg,
                                                 // confusion_matrix.png and PR/F1/P/R_curve.png go there
    const std::vector<std::string>* names = nullptr;
    // Images per forward (0: the whole batch). A batch runs as chunks of this many images with the batch's shape
    // (eval-mode forwards are per image, the loss items are combined from the chunks' level sums), so the
    // results are the batch's while the arenas hold only a chunk: y5train validates batch 2·B on arenas planned
    // for its training (val_chunk, engine/app/memory.h).
    int chunk = 0;
};

// The least work-arena bytes validate()'s GPU NMS needs for a batch of `batch` images at most side × side pixels (0
// for a model on the CPU): size the work arena to at least this (it takes more of what is free, for larger groups).
size_t val_nms_scratch_bytes(const Model& m, int side, int batch, const ValOptions& o = {});

// train.py validates the EMA unfused. Without autocast, a model that would take the blocked oneDNN inference once
// folded (Model::blocks_when_fused: on the CPU in f32, every row with a blocked path) is folded (Model::fuse) for
// this object's lifetime, so that its validation takes it: the same model up to float rounding, faster (the demo's
// validation: 0.28 → 0.15 s an epoch with whole-batch forwards); any other stays unfused. For y5train's per-epoch
// validation and its memory plan.
struct ValFold {
    ValFold(Model& m, bool autocast);
    ~ValFold();
    ValFold(const ValFold&) = delete;
    ValFold& operator=(const ValFold&) = delete;
    Model& m;
    const bool on;
};

ValResult validate(Model& m, DataLoader& loader, Ctx& c, const LossHyp& hyp, const ValOptions& o = {},
                   ConfusionMatrix* cm = nullptr, Batch* batch = nullptr);

// val.py's table: Class, Images, Instances, P, R, mAP50, mAP50-95 for all and per class.
std::string val_table(const ValResult& r, const std::vector<std::string>& names, bool per_class = true);

}  // namespace y5
