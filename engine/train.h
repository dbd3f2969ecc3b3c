/*
 * Training with YOLOv5 v7.0's recipe (train.py): data and model set-up, hyp scaling, nominal batch 64 with
 * accumulation and weight-decay scaling, warmup, linear or one-cycle LR, nesterov SGD in 3 groups, gradient
 * clipping at 10, EMA, validation of the EMA model each epoch, fitness, early stopping, results.csv and
 * best/last checkpoints written atomically into runs/train/expN.
 */
#pragma once
#include <string>

namespace y5 {

struct TrainOptions {
    std::string data, cfg, weights, hyp = "config/hyps/hyp.scratch-low.yaml";
    int epochs = 100, batch_size = 16, imgsz = 640, workers = 8, patience = 100, save_period = -1;
    std::string device = "cpu", project = "runs/train", name = "exp";
    bool exist_ok = false, cos_lr = false, rect = false, noval = false, nosave = false, single_cls = false;
    std::string cache;  // "" or "ram"
    double label_smoothing = 0.0;
    int seed = 0;
};

// Runs the training; returns the run folder. Progress and results go to stdout.
std::string train(const TrainOptions& opt);

}  // namespace y5
