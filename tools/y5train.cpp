/*
 * y5train: trains a YOLOv5 model on a YOLO-format dataset, with the flags of YOLOv5's train.py:
 *   y5train --data coco128.yaml --cfg yolov5n.yaml --weights '' --epochs 150 --batch-size 64 --img-size 640
 *           --hyp hyp.scratch-low.yaml
 * writes runs/train/expN/{opt.yaml, hyp.yaml, results.csv, weights/{last,best}.safetensors}.
 * --summary prints YOLOv5's model table for --cfg and exits. --evolve [N] runs train.py's hyperparameter evolution
 * (engine/app/evolve.h) into runs/evolve/expN; with --exist-ok (or train.py's --resume) it continues that folder's evolve.csv.
 */
#include <CLI/CLI.hpp>
#include <cstdio>

#include "engine/app/config.h"
#include "engine/app/evolve.h"
#include "engine/app/main.h"
#include "kernels/check.h"
#include "engine/app/train.h"
#include "layers/model.h"

int main(int argc, char** argv) {
    CLI::App app{"y5train: YOLOv5 training in C++/CUDA (flags follow YOLOv5's train.py)"};
    y5::TrainOptions o;
    bool summary = false;
    int nc = 0;
    app.add_option("--data", o.data, "dataset yaml (path, train, val, names)");
    app.add_option("--cfg", o.cfg, "model yaml, e.g. config/models/yolov5n.yaml");
    app.add_option("--weights", o.weights, "initial weights to fine-tune from: a YOLOv5 .pt or a y5 .safetensors "
                   "(tensors transferred by name and shape; without --cfg the model is the file's); '' trains from "
                   "scratch")->capture_default_str();
    app.add_option("--freeze", o.freeze, "freeze layers: N freezes 0 .. N-1 (backbone=10), several values the listed "
                   "layers (first3=0 1 2)")->expected(1, -1)->capture_default_str();
    app.add_option("--hyp", o.hyp, "hyperparameter yaml")->default_str("config/hyps/hyp.scratch-low.yaml");
    app.add_option("--epochs", o.epochs, "total training epochs")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--batch-size", o.batch_size, "images per batch")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--imgsz,--img-size", o.imgsz, "train and val image size (pixels)")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--device", o.device, "cpu, or a CUDA device index such as 0")->capture_default_str();
    app.add_option("--workers", o.workers, "data loader threads")->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--project", o.project, "save to project/name")->capture_default_str();
    app.add_option("--name", o.name, "save to project/name")->capture_default_str();
    app.add_flag("--exist-ok", o.exist_ok, "existing project/name ok, do not increment");
    app.add_flag("--cos-lr", o.cos_lr, "cosine (one-cycle) LR schedule instead of linear");
    app.add_option("--seed", o.seed, "global training seed")->capture_default_str();
    app.add_flag("--deterministic,!--no-deterministic", o.deterministic,
                 "cuDNN: deterministic convolution algorithms only; on by default, as train.py's "
                 "init_seeds(deterministic=True). --no-deterministic (or --deterministic=false) allows faster ones");
    app.add_option("--workspace", o.workspace_mib, "cuDNN: workspace cap per convolution pass, in MiB "
                   "(0: algorithms that need none where cuDNN has one; where none fits, the one that needs least)")->capture_default_str()
        ->check(CLI::Range(0, 1 << 20));
    bool amp_on = false, amp_off = false;
    CLI::Option* amp_opt = app.add_flag("--amp", amp_on, "mixed precision (f16 activations, loss scaling); the default "
                                        "on CUDA devices, allowed on the CPU");
    app.add_flag("--no-amp", amp_off, "train in f32 (the default on the CPU)")->excludes(amp_opt);
    bool rec_on = false, rec_off = false;
    CLI::Option* rec_opt = app.add_flag("--recompute", rec_on, "rebuild BatchNorm + activation outputs in the backward "
                                        "instead of keeping them (less memory, a little slower); the default on CUDA "
                                        "devices");
    app.add_flag("--no-recompute", rec_off, "keep them (the default on the CPU)")->excludes(rec_opt);
    app.add_option("--optimizer", o.optimizer, "optimizer, as train.py's smart_optimizer: SGD (nesterov), Adam "
                   "(betas (momentum, 0.999), decay added to the gradient) or AdamW (decoupled decay)")
        ->capture_default_str()->check(CLI::IsMember({"SGD", "Adam", "AdamW"}));
    app.add_flag("--sync-bn", o.sync_bn, "use SyncBatchNorm, only available in DDP mode: accepted, no effect (y5 "
                 "trains on one device, where train.py does not convert either)");
    int local_rank = -1;
    app.add_option("--local_rank", local_rank, "DDP process rank, as train.py: only -1 (one process; y5 trains on one "
                   "device)")->capture_default_str()->check(CLI::Range(-1, -1));
    std::string bucket;
    app.add_option("--bucket", bucket, "gsutil bucket train.py's --evolve syncs evolve.csv with: not supported (no "
                   "Google Cloud SDK in y5; copy evolve.csv into the run folder and continue with --exist-ok)")
        ->check([](const std::string& b) { return b.empty() ? std::string() : "gsutil buckets are not supported"; });
    app.add_flag("--noplots", o.noplots, "save no plot files (train_batch*.jpg, val_batch*.jpg, results.png)");
    app.add_option("--cache", o.cache, "cache images in 'ram' (resized) or 'disk' (YOLOv5's .npy beside each image)")
        ->expected(0, 1)->default_str("ram")->check(CLI::IsMember({"ram", "disk"}));
    app.add_flag("--image-weights", o.image_weights, "use weighted image selection for training (class weights from "
                 "the labels and the last validation's per-class mAP)");
    app.add_flag("--quad", o.quad, "quad dataloader (collate_fn4: batch/4 images of twice --imgsz, loss x4)");
    app.add_flag("--cuda-graph", o.cuda_graph, "CUDA: capture each batch shape's forward, loss and backward as a CUDA "
                 "graph and replay it (fewer launches; the same results); off by default until measured on a GPU");
    app.add_flag("--multi-scale", o.multi_scale, "vary img-size +/- 50% per batch (stride-rounded, bilinear resize); "
                 "memory is planned for the largest");
    app.add_flag("--rect", o.rect, "rectangular training (no mosaic)");
    app.add_flag("--noval", o.noval, "only validate the final epoch");
    app.add_flag("--noautoanchor", o.noautoanchor, "disable AutoAnchor (the anchor fit check and k-means/genetic "
                 "re-fit before training)");
    app.add_flag("--nosave", o.nosave, "only save the final checkpoint");
    app.add_option("--patience", o.patience, "epochs to wait for no improvement (early stopping)")->capture_default_str();
    app.add_option("--save-period", o.save_period, "save a checkpoint every N epochs (disabled if < 1)")->capture_default_str();
    app.add_flag("--single-cls", o.single_cls, "train multi-class data as single-class");
    app.add_option("--label-smoothing", o.label_smoothing, "label smoothing epsilon")->capture_default_str();
    app.add_option("--resume", o.resume, "resume from a last.safetensors (no value: the most recent run)")
        ->expected(0, 1)->default_str("latest");
    int evolve = 0;
    app.add_option("--evolve", evolve, "evolve hyperparameters for N generations (no value: 300) as train.py; into "
                   "runs/evolve/expN, continuing its evolve.csv with --exist-ok --name X")
        ->expected(0, 1)->default_str("300")->check(CLI::PositiveNumber);
    app.add_flag("--summary", summary, "print the model summary for --cfg and exit");
    app.add_option("--nc", nc, "number of classes for --summary (training takes it from --data)");
    if (const int rc = y5::parse_flags(app, argc, argv, "y5train"); rc >= 0) return rc;
    o.amp = amp_on ? 1 : amp_off ? 0 : -1;
    o.recompute = rec_on ? 1 : rec_off ? 0 : -1;
    if (evolve) o.exist_ok = o.exist_ok || !o.resume.empty(), o.resume.clear();  // train.py: --resume means exist_ok
    try {
        Y5_CHECK(o.batch_size <= 65536, "--batch-size %d: at most 65536", o.batch_size);
        for (int f : o.freeze) Y5_CHECK(f >= 0, "--freeze %d: layer indices are 0 or more", f);
        Y5_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing %g: must be in [0, 1)",
                 o.label_smoothing);
        o.imgsz = y5::check_img_size(o.imgsz, 32, 64);  // train.py: gs = max(stride, 32), floor gs * 2
        o.workers = y5::cap_workers(o.workers, o.batch_size);
        if (summary) {
            if (o.cfg.empty()) {
                std::fprintf(stderr, "y5train: error: --summary needs --cfg\n");
                return 2;
            }
            y5::Model model(y5::resolve_config(o.cfg, "models", "--cfg"), nc);
            std::fputs(model.summary(o.imgsz).c_str(), stdout);
            return 0;
        }
        if (o.resume.empty() && (o.data.empty() || (o.cfg.empty() && o.weights.empty()))) {
            std::fprintf(stderr, "y5train: error: --data and --cfg or --weights are required for training (or pass "
                         "--resume, --summary)\n");
            return 2;
        }
        if (evolve) y5::evolve(o, evolve);
        else y5::train(o);
        return 0;
    } catch (...) {
        return y5::error_exit("y5train");
    }
}
