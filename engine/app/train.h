/*
 * Training with YOLOv5 v7.0's recipe (train.py): data and model set-up, hyp scaling, nominal batch 64 with
 * accumulation and weight-decay scaling, warmup, linear or one-cycle LR, nesterov SGD (or Adam, AdamW) in 3
 * groups, gradient clipping at 10, EMA, validation of the EMA model each epoch, fitness, early stopping, results.csv and
 * best/last checkpoints written atomically into runs/train/expN.
 */
#pragma once
#include <map>
#include <string>
#include <vector>

namespace y5 {

struct TrainOptions {
    std::string data, cfg, weights, hyp;  // hyp "": config/hyps/hyp.scratch-low.yaml (here, else y5's own copy)
    // weights: fine-tune from a YOLOv5 .pt or a y5 .safetensors (Model::transfer_weights); without cfg the model is
    // the file's yaml with the data's nc. freeze: train.py's --freeze, {N} layers 0 .. N−1, or the listed layers.
    std::vector<int> freeze = {0};
    int epochs = 100, batch_size = 16, imgsz = 640, workers = 8, patience = 100, save_period = -1;
    std::string device = "cpu", project = "runs/train", name = "exp";
    bool exist_ok = false, cos_lr = false, rect = false, noval = false, nosave = false, single_cls = false;
    bool noautoanchor = false;  // skip AutoAnchor (engine/app/autoanchor.h) before the first epoch
    std::string cache;  // "", "ram" (resized images in memory) or "disk" (YOLOv5's .npy beside each image)
    // train.py's --image-weights (class-weighted sampling each epoch from the last validation's per-class mAP) and
    // --quad (collate_fn4: batch/4 images of 2·imgsz, the loss ×4); engine/data/loader.h.
    bool image_weights = false, quad = false;
    // train.py's --multi-scale: each batch resized (bilinear) to a random size in [0.5, 1.5]·imgsz, stride-rounded;
    // the memory is planned for the largest; validation stays at imgsz.
    bool multi_scale = false;
    std::string resume;  // a last.safetensors to continue, or "latest" (the newest under runs/train); "" starts fresh
    double label_smoothing = 0.0;
    int seed = 0;
    // cuDNN convolutions (kernels/conv2d.h); the CPU ops are deterministic and use no cuDNN workspace.
    bool deterministic = true;  // as train.py's init_seeds(deterministic=True); false allows faster algorithms
    int workspace_mib = 256;    // the most workspace one convolution pass may use; sizes the work arena
    // Mixed precision (train.py's amp: autocast + GradScaler): 1 on, 0 off, −1 as YOLOv5 (on for CUDA devices,
    // off on the CPU, where it is allowed so that CI runs the f16 path).
    int amp = -1;
    // Recomputation (Ctx::recompute): BatchNorm + activation outputs are dropped after the forward and rebuilt in the
    // backward, less memory for a little time. 1 on, 0 off, −1: on for CUDA devices (the memory plan's default),
    // off on the CPU, where it cost 7 % of the step at 96 px, batch 16 and 4 % at 320/8 for memory a CPU has to spare.
    int recompute = -1;
    // The step's device work (forward, loss, backward) captured as a CUDA graph per batch shape and replayed
    // (TrainStep::cuda_graph). Off by default: no GPU has measured it yet. No effect on the CPU.
    bool cuda_graph = false;
    std::string optimizer = "SGD";  // train.py's --optimizer: SGD, Adam or AdamW (smart_optimizer's three groups)
    bool noplots = false;           // write no pictures (train/val batches, results.png)
    bool sync_bn = false;           // accepted; train.py converts to SyncBatchNorm only under DDP, so one device: no-op
    // One generation of --evolve (engine/app/evolve.h), as train.py's train() with evolve set: these values replace
    // the hyp yaml's; no opt.yaml, hyp.yaml, checkpoints or plots; results.csv is appended to.
    bool evolve = false;
    std::map<std::string, double> hyp_values;
};

// Applies --deterministic and --workspace to the cuDNN convolutions (no-op in a CPU-only build). Must run
// before any arena is sized: engine/app/memory.cpp reads conv_workspace_limit(). A negative size is an error.
void set_conv_options(bool deterministic, int workspace_mib);

// Runs the training; returns the run folder. Progress and results go to stdout. results (if given): the last
// validation's P, R, mAP50, mAP50-95 and val box/obj/cls loss (best.safetensors' when it is validated at the end).
// Resume reloads the run's options from the checkpoint, the live model, the EMA and its update count, the
// optimizer's state (SGD's momentum, or Adam's exp_avg, exp_avg_sq and step counts) and best fitness, and
// continues at the next epoch with the same data order (the loader's draws depend on the seed and epoch only).
// Y5_STOP_AFTER_EPOCH=N in the environment ends a run right after epoch N's checkpoints are written, as if it
// were killed there (for the resume test). Y5_LOSS_LOG=path appends
// one line per batch: epoch, batch, lbox, lobj, lcls (this batch's, not running means) and the 3 groups' lr.
std::string train(const TrainOptions& opt, std::vector<double>* results = nullptr);

}  // namespace y5
