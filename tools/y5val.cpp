/*
 * y5val: YOLOv5 val.py's table (Class, Images, Instances, P, R, mAP50, mAP50-95) for a weights file and a
 * data.yaml, with val.py's defaults (conf 0.001, IoU 0.6, max_det 300, rect batches padded 0.5).
 *   y5val --data data.yaml --weights runs/train/exp/weights/best.safetensors [--imgsz 640] [--batch-size 32]
 *   y5val --data coco128.yaml --weights yolov5n.pt                   (a YOLOv5 checkpoint, read without Python)
 * Per-class rows as val.py prints them: with --verbose, or when the dataset has fewer than 50 classes (never for one).
 * As val.py (plots=True) it writes into --project/--name (runs/val/exp, exp2, ...): confusion_matrix.png, PR_curve.png,
 * F1_curve.png, P_curve.png, R_curve.png and val_batch{0,1,2}_{labels,pred}.jpg; --noplots (y5's) writes none.
 */
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "engine/app/config.h"
#include "engine/app/main.h"
#include "kernels/check.h"
#include "engine/data/dataset.h"
#include "engine/device/device.h"
#include "engine/app/hyp.h"
#include "engine/data/loader.h"
#include "engine/app/val.h"
#include "engine/app/memory.h"
#include "layers/model.h"

int main(int argc, char** argv) {
    CLI::App app{"y5val: mAP of a weights file (y5 .safetensors or YOLOv5 .pt) on a dataset (YOLOv5 val.py)"};
    std::string data, weights, task = "val", device = "cpu", project = "runs/val", name = "exp";
    int imgsz = 640, batch = 32, workers = 8, max_det = 300;
    float conf = 0.001f, iou = 0.6f;
    bool single_cls = false, verbose = false, half = false, exist_ok = false, noplots = false;
    app.add_option("--data", data, "dataset yaml")->required();
    app.add_option("--weights", weights, "weights: y5train's .safetensors or a YOLOv5 .pt (yolov5n.pt, best.pt)")->required()->check(CLI::ExistingFile);
    app.add_option("--imgsz,--img-size,--img", imgsz, "inference size (pixels)")->capture_default_str();
    app.add_option("--batch-size", batch, "batch size")->capture_default_str();
    app.add_option("--conf-thres", conf, "confidence threshold")->capture_default_str();
    app.add_option("--iou-thres", iou, "NMS IoU threshold")->capture_default_str();
    app.add_option("--max-det", max_det, "maximum detections per image")->capture_default_str();
    app.add_option("--task", task, "train, val or test split")->capture_default_str()->check(CLI::IsMember({"train", "val", "test"}));
    app.add_option("--device", device, "cpu, or a CUDA device index such as 0")->capture_default_str();
    app.add_option("--workers", workers, "data loader threads")->capture_default_str();
    app.add_flag("--single-cls", single_cls, "treat as single-class dataset");
    app.add_flag("--verbose", verbose, "report mAP by class (always when nc < 50)");
    app.add_flag("--half", half, "FP16 half-precision inference (f16 activations, as y5train --amp; also on the CPU)");
    app.add_option("--project", project, "save to project/name")->capture_default_str();
    app.add_option("--name", name, "save to project/name")->capture_default_str();
    app.add_flag("--exist-ok", exist_ok, "existing project/name ok, do not increment");
    app.add_flag("--noplots", noplots, "write no figures and no project/name folder");
    if (const int rc = y5::parse_flags(app, argc, argv, "y5val"); rc >= 0) return rc;
    try {
        Y5_CHECK(batch >= 1 && batch <= 65536, "--batch-size %d: must be from 1 to 65536", batch);
        Y5_CHECK(conf >= 0 && conf <= 1, "--conf-thres %g: valid values are between 0.0 and 1.0", conf);
        Y5_CHECK(iou >= 0 && iou <= 1, "--iou-thres %g: valid values are between 0.0 and 1.0", iou);
        Y5_CHECK(max_det >= 0, "--max-det %d: must be 0 or more", max_det);
        imgsz = y5::check_img_size(imgsz, 32, 0);
        workers = y5::cap_workers(workers, batch);
        const int dev_index = y5::parse_device(device);
        const y5::Device dev = dev_index >= 0 ? y5::Device::CUDA : y5::Device::CPU;
        y5::CudaContext* cuda = dev_index >= 0 ? y5::cuda_context_create(dev_index) : nullptr;
        y5::DataConfig cfg = y5::load_data_yaml(y5::resolve_config(data, "data", "--data"));
        if (!cfg.root_note.empty()) std::printf("%s\n", cfg.root_note.c_str());
        Y5_CHECK(cfg.splits.count(task), "%s has no '%s' split", data.c_str(), task.c_str());
        auto model = y5::Model::from_weights(weights, cuda);
        Y5_CHECK(single_cls || model->nc == cfg.nc, "%s has nc=%d but %s has %d classes", weights.c_str(), model->nc,
                 data.c_str(), cfg.nc);
        y5::Dataset ds = y5::scan_dataset(cfg.splits[task], workers);
        if (single_cls)
            for (auto& r : ds.records)
                for (auto& l : r.labels) l.cls = 0;
        y5::LoaderOptions o;
        o.img_size = imgsz, o.batch_size = batch, o.workers = std::max(1, workers), o.rect = true, o.pad = 0.5;
        y5::DataLoader loader(ds, o);
        y5::LossHyp lh;  // val.py's loss uses the model's hyp; the table does not depend on it
        // Arenas as y5train plans its validation's (engine/app/memory.h): rect batches with sides at most
        // imgsz + 32, with the GPU NMS's scratch; measured on the fused model that runs.
        y5::ValOptions vo;
        vo.conf_thres = conf, vo.iou_thres = iou, vo.max_det = max_det, vo.single_cls = single_cls;
        // The model's class names when its file has them, as val.py's model.names; else the data yaml's.
        const bool own = !single_cls && model->class_names.size() == (size_t)model->nc;
        const std::vector<std::string>& names = own ? model->class_names : cfg.names;
        std::string save_dir;  // val.py's increment_path(project / name)
        if (!noplots) {
            namespace fs = std::filesystem;
            save_dir = project + "/" + name;
            for (int n = 2; !exist_ok && fs::exists(save_dir); ++n) save_dir = project + "/" + name + std::to_string(n);
            fs::create_directories(save_dir);
            vo.plot_dir = save_dir, vo.names = &names;
        }
        model->fuse();  // as val.py's DetectMultiBackend(fuse=True)
        const y5::StepMemory plan = y5::plan_inference(*model, y5::measure_eval_image(*model, imgsz + 32, imgsz + 32, lh, half, true),
                                                       batch, y5::val_nms_scratch_bytes(*model, imgsz + 32, batch, vo));
        y5::check_fits(dev, {plan}, "batch " + std::to_string(batch) + " at --imgsz " + std::to_string(imgsz),
                       "--batch-size");
        y5::Workspace ws;
        ws.make(dev, cuda, plan);
        y5::Ctx& c = ws.ctx;
        c.autocast = half;
        const auto t0 = std::chrono::steady_clock::now();
        y5::ValResult r = y5::validate(*model, loader, c, lh, vo);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const int nc = single_cls ? 1 : cfg.nc;  // val.py: nc = 1 if single_cls else data['nc']
        std::printf("%s", y5::val_table(r, names,
                                        y5::val_per_class_rows(verbose, nc, false)).c_str());
        std::printf("Speed: %.1fms per image (load, inference, NMS, metrics) at batch %d, %s\n", 1000 * s / std::max(r.images, 1),
                    batch, model->name.c_str());
        if (!noplots) std::printf("Results saved to %s\n", save_dir.c_str());
        return 0;
    } catch (...) {
        return y5::error_exit("y5val");
    }
}
