/*
 * y5train: trains a YOLOv5 model on a YOLO-format dataset, with the flags of YOLOv5's train.py.
 * This build carries the model side: `y5train --cfg config/models/yolov5n.yaml --summary` builds the
 * model from its yaml and prints YOLOv5's model summary (layers, parameters, GFLOPs at --imgsz).
 * The training loop (data, loss, optimizer, checkpoints) lands with its own issue.
 */
#include <CLI/CLI.hpp>
#include <cstdio>

#include "layers/model.h"

int main(int argc, char** argv) {
    CLI::App app{"y5train: YOLOv5 training in C++/CUDA (flags follow YOLOv5's train.py)"};
    std::string cfg;
    int imgsz = 640, nc = 0;
    bool summary = false;
    app.add_option("--cfg", cfg, "model yaml, e.g. config/models/yolov5n.yaml")->required()->check(CLI::ExistingFile);
    app.add_option("--imgsz,--img-size", imgsz, "image size for the GFLOPs figure")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("--nc", nc, "number of classes (overrides the yaml's nc; normally it comes from --data)");
    app.add_flag("--summary", summary, "print the model summary and exit");
    CLI11_PARSE(app, argc, argv);
    try {
        y5::Model model(cfg, nc);
        if (summary) {
            std::fputs(model.summary(imgsz).c_str(), stdout);
            return 0;
        }
        std::fprintf(stderr, "y5train: error: this build can only print the model summary (--summary); training is not "
                             "available yet\n");
        return 2;
    } catch (const y5::Error& e) {
        std::fprintf(stderr, "y5train: error: %s\n", e.what());
        return 1;
    }
}
