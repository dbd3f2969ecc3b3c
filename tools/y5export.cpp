/*
 * y5export: YOLOv5 export.py for ONNX (and the weights as a y5 .safetensors), on the CPU, without Python.
 *   y5export --weights yolov5n.pt --include onnx [--imgsz 640] [--batch-size 1] [--dynamic] [--opset 12] [--half]
 *   y5export --weights best.safetensors --include safetensors --half
 * The ONNX file is the fused model's graph as export.py writes it (engine/app/export.h): input `images`
 * (N, 3, H, W), output `output0` (N, Σ na·ny·nx, 5+nc), metadata `stride` and `names`. Output files are the
 * weights path with its suffix replaced (yolov5n.pt → yolov5n.onnx, yolov5n.safetensors; with --half the weights
 * file is <stem>-fp16.safetensors). --half writes f16 weights, input and output; export.py allows it only on a
 * GPU, y5 writes the same file on the CPU (it computes nothing in f16 itself).
 */
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "engine/app/export.h"
#include "engine/app/main.h"
#include "kernels/check.h"
#include "layers/model.h"

namespace fs = std::filesystem;

static double mib(const std::string& path) { return (double)fs::file_size(path) / (1 << 20); }

int main(int argc, char** argv) {
    CLI::App app{"y5export: export a YOLOv5 model (y5 .safetensors or YOLOv5 .pt) to ONNX or y5 .safetensors"};
    std::string weights, device = "cpu";
    std::vector<std::string> include = {"onnx"};
    std::vector<int> imgsz = {640};
    int batch = 1, opset = 12;
    bool dynamic = false, half = false;
    app.add_option("--weights", weights, "weights: y5's .safetensors or a YOLOv5 .pt (yolov5n.pt, best.pt)")->required()->check(CLI::ExistingFile);
    app.add_option("--include", include, "formats: onnx, safetensors")->capture_default_str()->check(CLI::IsMember({"onnx", "safetensors"}));
    app.add_option("--imgsz,--img-size,--img", imgsz, "image (h, w), or one size for both")->capture_default_str()->expected(1, 2);
    app.add_option("--batch-size", batch, "batch size")->capture_default_str();
    app.add_option("--opset", opset, "ONNX: opset version (12 to 17)")->capture_default_str();
    app.add_flag("--dynamic", dynamic, "ONNX: dynamic axes (batch, height, width)");
    app.add_flag("--half", half, "FP16 half-precision export (ONNX weights and I/O; safetensors weights)");
    app.add_option("--device", device, "cpu (export runs on the CPU)")->capture_default_str();
    if (const int rc = y5::parse_flags(app, argc, argv, "y5export"); rc >= 0) return rc;
    try {
        const auto t0 = std::chrono::steady_clock::now();
        Y5_CHECK(device == "cpu", "--device %s: y5export runs on the CPU (the exported file is the same)", device.c_str());
        Y5_CHECK(batch >= 1, "--batch-size %d must be at least 1", batch);
        Y5_CHECK(opset >= 12 && opset <= 17, "--opset %d: y5 writes opsets 12 to 17", opset);
        auto model = y5::Model::from_weights(weights);
        model->fuse();  // as export.py: attempt_load(..., fuse=True)
        float smax = 0;
        for (float s : model->detect->stride) smax = std::max(smax, s);
        const int gs = std::max((int)smax, 32);
        int h = imgsz[0], w = imgsz.size() > 1 ? imgsz[1] : imgsz[0];
        for (int* v : {&h, &w}) {  // export.py's check_img_size: a multiple of the largest stride
            const int r = (*v + gs - 1) / gs * gs;
            if (r != *v) std::printf("WARNING ⚠️ --img-size %d must be multiple of max stride %d, updating to %d\n", *v, gs, r);
            *v = r;
        }
        int64_t rows = 0;
        for (float s : model->detect->stride) rows += (int64_t)model->detect->na * (h / (int)s) * (w / (int)s);
        std::printf("\ny5: starting from %s with output shape (%d, %lld, %d) (%.1f MB)\n", weights.c_str(), batch,
                    (long long)rows, model->detect->no, mib(weights));
        const fs::path stem = fs::path(weights).replace_extension("");
        std::vector<std::string> written;
        for (const std::string& fmt : include) {
            const auto t = std::chrono::steady_clock::now();
            std::string out, tag;
            if (fmt == "onnx") {
                tag = "ONNX";
                out = stem.string() + ".onnx";
                std::printf("\nONNX: starting export with onnx %s (libonnx), opset %d...\n", Y5_ONNX_VERSION, opset);
                y5::OnnxOptions o;
                o.height = h, o.width = w, o.batch = batch, o.dynamic = dynamic, o.half = half, o.opset = opset;
                y5::export_onnx(*model, out, o);
            } else {
                tag = "safetensors";
                out = stem.string() + (half ? "-fp16" : "") + ".safetensors";
                Y5_CHECK(!(fs::exists(out) && fs::equivalent(out, weights)),
                         "%s: exporting to safetensors would overwrite the input; pass --half or copy it first",
                         weights.c_str());
                std::printf("\nsafetensors: starting export (%s)...\n", half ? "f16" : "f32");
                y5::export_safetensors(*model, out, half);
            }
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
            std::printf("%s: export success ✅ %.1fs, saved as %s (%.1f MB)\n", tag.c_str(), dt, out.c_str(), mib(out));
            written.push_back(out);
        }
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("\nExport complete (%.1fs)\nResults saved to %s\n", dt,
                    fs::absolute(fs::path(weights)).parent_path().string().c_str());
        for (const std::string& f : written)
            if (f.size() > 5 && f.compare(f.size() - 5, 5, ".onnx") == 0)
                std::printf("OpenCV DNN:      cv::dnn::readNetFromONNX(\"%s\")\nVisualize:       https://netron.app\n",
                            f.c_str());
        return 0;
    } catch (...) {
        return y5::error_exit("y5export");
    }
}
