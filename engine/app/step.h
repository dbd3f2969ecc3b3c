/*
 * One training step of YOLOv5 v7.0's train.py loop, the only one in y5: y5train's loop, bench_step and the GPU
 * model test all run it. For a loader batch: the images uploaded and scaled (batch_images), the model's training
 * forward, the loss, the tape's backward into the model's gradients (which accumulate over batches), and, when
 * the optimizer is due (ni − last_opt_step ≥ accumulate), clip_grad_norm(10), the optimizer (nesterov SGD,
 * or --optimizer's Adam/AdamW) over the three parameter groups, zero_grad and the EMA update with decay
 * ema_decay(updates).
 * Mixed precision (amp, train.py's autocast + GradScaler): the forward under Ctx::autocast, the backward seeded
 * with the loss scale, and at the optimizer step unscale (finding any inf/NaN), the clip, SGD unless a gradient
 * was inf/NaN, the scaler's update, zero_grad and the EMA update (also after a skipped step, as train.py).
 */
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/app/val.h"
#include "engine/autograd/optim.h"
#include "engine/data/loader.h"
#include "layers/model.h"
#include "layers/yolo.h"

namespace y5 {

struct StepResult {
    LossItems items;
    bool finite = true;    // false: the loss is NaN or infinite, and nothing after the loss ran
    bool stepped = false;  // the optimizer ran
    bool skipped = false;  // mixed precision: an inf/NaN gradient at the optimizer step; SGD skipped, scale halved
    double grad_norm = 0;  // the gradients' norm before clipping, when the optimizer ran
};

class TrainStep {
public:
    // model and ema live on one device; hyp is the loss's (train.py's scaled gains).
    TrainStep(Model& model, Model& ema, const LossHyp& hyp);

    // Batch b as iteration ni, on c's arenas (rewound first) and tape. groups: the three groups' lr, momentum and
    // weight decay for this iteration. mark, when set, is called after the upload, after each layer's forward,
    // and after the loss, the backward, the clip, SGD with zero_grad, and the EMA (bench_step's time stamps).
    StepResult run(Ctx& c, const Batch& b, int64_t ni, int accumulate, const SgdGroup groups[3],
                   const std::function<void()>& mark = {});

    Model& model;
    Model& ema;
    LossHyp hyp;
    int64_t last_opt_step = -1;  // the iteration of the last optimizer step; −1 before the first
    int64_t updates = 0;         // optimizer steps so far (the EMA's update count)
    bool amp = false;            // mixed precision; the scaler's state goes into checkpoints
    bool recompute = true;       // Ctx::recompute: BatchNorm + activation outputs rebuilt in the backward
    double loss_gain = 1;        // the backward's seed factor: 4 under --quad (train.py: loss *= 4.)
    int resize_h = 0, resize_w = 0;  // --multi-scale: the batch resized (bilinear) to this before the forward; 0: as is
    GradScaler scaler;
    Optimizer optimizer;  // SGD unless set (train.cpp's --optimizer); its state goes into checkpoints

private:
    std::vector<float> anchors_host_;
    Tensor anchors_;  // (nl, na, 2) in grid units, on the host
};

}  // namespace y5
