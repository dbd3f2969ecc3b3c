/*
 * y5detect: detection on images, folders, globs and videos, as YOLOv5's detect.py.
 *   y5detect --source ../shared/data/images/bus.jpg --weights best.safetensors (or yolov5n.pt) [--imgsz 640]
 *            [--conf-thres 0.25] [--iou-thres 0.45] [--max-det 1000] [--classes 0 2] [--agnostic-nms]
 *            [--save-txt] [--save-conf] [--nosave] [--project runs/detect] [--name exp] [--exist-ok]
 * Each image is letterboxed to the smallest stride-32 rectangle (auto=True), detections are scaled back to
 * the original pixels and rounded; annotated images or videos go to runs/detect/expN, YOLO txt labels
 * (class x y w h [conf], normalised) to runs/detect/expN/labels with --save-txt.
 */
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <glob.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>

#include "engine/app/main.h"
#include "engine/data/augment.h"
#include "kernels/check.h"
#include "engine/device/device.h"
#include "engine/app/plots.h"
#include "engine/app/memory.h"
#include "kernels/nms.h"
#include "layers/model.h"

#if Y5_CUDA
#include "kernels/cuda.h"
#include "layers/yolo.h"
#endif

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

static bool has_ext(const std::string& p, std::initializer_list<const char*> exts) {
    std::string e = fs::path(p).extension().string();
    for (char& ch : e) ch = (char)std::tolower((unsigned char)ch);
    for (const char* x : exts)
        if (e == x) return true;
    return false;
}
static bool is_image(const std::string& p) {
    return has_ext(p, {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".pfm", ".dng", ".mpo"});
}
static bool is_video(const std::string& p) {
    return has_ext(p, {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif", ".ts", ".webm", ".asf"});
}

// Files of a source: one file, a folder's images and videos (sorted), or a glob pattern.
static std::vector<std::string> sources(const std::string& s) {
    std::vector<std::string> f;
    if (s.find_first_of("*?[") != std::string::npos) {
        glob_t g;
        if (glob(s.c_str(), 0, nullptr, &g) == 0)
            for (size_t i = 0; i < g.gl_pathc; ++i) f.push_back(g.gl_pathv[i]);
        globfree(&g);
    } else if (fs::is_directory(s)) {
        for (const auto& e : fs::directory_iterator(s))
            if (e.is_regular_file()) f.push_back(e.path().string());
    } else {
        Y5_CHECK(fs::exists(s), "--source %s does not exist", s.c_str());
        f.push_back(s);
    }
    std::vector<std::string> out;
    for (const std::string& x : f)
        if (is_image(x) || is_video(x)) out.push_back(x);
    std::sort(out.begin(), out.end());
    Y5_CHECK(!out.empty(), "--source %s: no images or videos found", s.c_str());
    return out;
}

struct Detector {
    y5::Model& model;
    y5::Device dev;
    y5::Workspace ws;  // the memory plan's arenas (engine/app/memory.h)
    y5::Ctx& c = ws.ctx;
    y5::Arena host;  // the letterboxed image as floats, before its upload
    y5::NmsParams nms;
    int imgsz;
    double t_pre = 0, t_inf = 0, t_nms = 0;
    int frames = 0, last_h = 0, last_w = 0;

    // Images letterboxed to at most side × side, on the arenas of plan.
    Detector(y5::Model& m, int size, int side, const y5::StepMemory& plan, bool half)
        : model(m), dev(m.params.device()), host("host input", y5::Device::CPU, (size_t)3 * side * side * sizeof(float) + (1 << 20)),
          imgsz(size) {
        ws.make(dev, m.params.cuda(), plan);
        ws.tape->set_recording(false);
        ws.act->set_tracking(true);  // the forward keeps only live tensors (Model::forward's liveness)
        ws.ctx.autocast = half;
    }

    // Detections in im0's pixels: x1 y1 x2 y2 (rounded), conf, class.
    std::vector<y5::Detection> run(const cv::Mat& im0) {
        const auto t0 = Clock::now();
        y5::LetterboxInfo lb;
        const int stride = (int)model.detect->stride.back();
        cv::Mat im = y5::letterbox(im0, imgsz, imgsz, &lb, /*autopad=*/true, false, true, stride);
        ws.act->reset();
        host.reset();
        y5::Tensor xh = host.tensor(y5::Shape{1, 3, im.rows, im.cols});
        float* p = xh.ptr<float>();
        for (int y = 0; y < im.rows; ++y)
            for (int xx = 0; xx < im.cols; ++xx)
                for (int ch = 0; ch < 3; ++ch)
                    p[((size_t)(2 - ch) * im.rows + y) * im.cols + xx] = im.at<cv::Vec3b>(y, xx)[ch] / 255.0f;
        y5::Tensor x = xh;
        if (dev == y5::Device::CUDA) {
            x = ws.act->tensor(xh.shape);
            y5::copy(c, x, xh);
        }
        const auto t1 = Clock::now();
        y5::Model::Output out = model.forward(c, y5::Tape::constant(x), false);
        const float* dec = out.decoded.ptr<float>();  // (1, N, no)
        const int N = (int)out.decoded.dim(1), no = (int)out.decoded.dim(2);
        if (dev == y5::Device::CUDA) y5::device_synchronize(c.cuda);  // inference time includes the forward's kernels
        const auto t2 = Clock::now();
        std::vector<y5::Detection> det;
        if (dev == y5::Device::CUDA) {
#if Y5_CUDA
            // NMS on the device (scratch from the work arena, which the plan sized for it), only the detections
            // downloaded.
            const size_t mark = ws.work->mark(), bytes = y5::nms_cuda_scratch_bytes(1, N, no, nms);
            void* scratch = ws.work->alloc(bytes);
            det = y5::nms_batch_cuda(dec, 1, N, no, nms, scratch, bytes, c.cuda->stream)[0];
            ws.work->reset(mark);
#endif
        } else {
            det = y5::nms_image(dec, N, no, nms);
        }
        // scale_boxes without ratio_pad: gain and padding recomputed from the two shapes, then clipped, rounded
        const double gain = std::min((double)im.rows / im0.rows, (double)im.cols / im0.cols);
        const double padw = (im.cols - im0.cols * gain) / 2, padh = (im.rows - im0.rows * gain) / 2;
        for (y5::Detection& d : det) {
            for (int k = 0; k < 4; ++k) {
                double v = (d[k] - (k % 2 ? padh : padw)) / gain;
                v = std::clamp(v, 0.0, (double)(k % 2 ? im0.rows : im0.cols));
                d[k] = (float)std::nearbyint(v);
            }
        }
        const auto t3 = Clock::now();
        t_pre += std::chrono::duration<double, std::milli>(t1 - t0).count();
        t_inf += std::chrono::duration<double, std::milli>(t2 - t1).count();
        t_nms += std::chrono::duration<double, std::milli>(t3 - t2).count();
        ++frames;
        last_h = im.rows, last_w = im.cols;
        return det;
    }
};

static void annotate(cv::Mat& im, const std::vector<y5::Detection>& det, const std::vector<std::string>& names) {
    const int lw = std::max((int)std::lround((im.rows + im.cols) / 2.0 * 0.003), 2);
    for (const y5::Detection& d : det) {
        const int cls = (int)d[5];
        const cv::Scalar col = y5::class_colour(cls);
        const cv::Point p1((int)d[0], (int)d[1]), p2((int)d[2], (int)d[3]);
        cv::rectangle(im, p1, p2, col, lw, cv::LINE_AA);
        char label[128];
        snprintf(label, sizeof label, "%s %.2f", cls < (int)names.size() ? names[cls].c_str() : std::to_string(cls).c_str(), d[4]);
        const double fs = lw / 3.0;
        const int tf = std::max(lw - 1, 1);
        int base = 0;
        const cv::Size ts = cv::getTextSize(label, cv::FONT_HERSHEY_SIMPLEX, fs, tf, &base);
        const bool outside = p1.y - ts.height >= 3;
        const cv::Point q(p1.x + ts.width, outside ? p1.y - ts.height - 3 : p1.y + ts.height + 3);
        cv::rectangle(im, p1, q, col, cv::FILLED, cv::LINE_AA);
        cv::putText(im, label, cv::Point(p1.x, outside ? p1.y - 2 : p1.y + ts.height + 2), cv::FONT_HERSHEY_SIMPLEX, fs,
                    cv::Scalar(255, 255, 255), tf, cv::LINE_AA);
    }
}

static std::string summary_of(const std::vector<y5::Detection>& det, const std::vector<std::string>& names) {
    std::map<int, int> n;
    for (const auto& d : det) n[(int)d[5]]++;
    std::string s;
    for (const auto& kv : n)
        s += std::to_string(kv.second) + " " + (kv.first < (int)names.size() ? names[kv.first] : std::to_string(kv.first)) +
             (kv.second > 1 ? "s" : "") + ", ";
    return s.empty() ? "(no detections), " : s;
}

static void write_txt(const std::string& path, const std::vector<y5::Detection>& det, int w, int h, bool conf) {
    std::ofstream f(path, std::ios::app);
    for (auto it = det.rbegin(); it != det.rend(); ++it) {  // detect.py writes reversed(det): lowest confidence first
        const y5::Detection& d = *it;
        char line[160];
        snprintf(line, sizeof line, "%d %g %g %g %g", (int)d[5], (d[0] + d[2]) / 2 / w, (d[1] + d[3]) / 2 / h, (d[2] - d[0]) / w,
                 (d[3] - d[1]) / h);
        f << line;
        if (conf) f << " " << d[4];
        f << "\n";
    }
}

int main(int argc, char** argv) {
    CLI::App app{"y5detect: YOLOv5 detection on images, folders, globs and videos"};
    std::string source, weights, project = "runs/detect", name = "exp", device = "cpu";
    int imgsz = 640, max_det = 1000;
    float conf = 0.25f, iou = 0.45f;
    std::vector<int> classes;
    bool agnostic = false, save_txt = false, save_conf = false, nosave = false, exist_ok = false, half = false;
    app.add_option("--source", source, "image, folder, glob or video")->required();
    app.add_option("--weights", weights, "weights: y5train's .safetensors or a YOLOv5 .pt (yolov5n.pt, best.pt)")->required()->check(CLI::ExistingFile);
    app.add_option("--imgsz,--img-size,--img", imgsz, "inference size (pixels)")->capture_default_str();
    app.add_option("--conf-thres", conf, "confidence threshold")->capture_default_str();
    app.add_option("--iou-thres", iou, "NMS IoU threshold")->capture_default_str();
    app.add_option("--max-det", max_det, "maximum detections per image")->capture_default_str();
    app.add_option("--classes", classes, "filter by class: --classes 0, or --classes 0 2 3");
    app.add_flag("--agnostic-nms", agnostic, "class-agnostic NMS");
    app.add_flag("--save-txt", save_txt, "save results to labels/*.txt");
    app.add_flag("--save-conf", save_conf, "save confidences in --save-txt labels");
    app.add_flag("--nosave", nosave, "do not save images/videos");
    app.add_option("--project", project, "save results to project/name")->capture_default_str();
    app.add_option("--name", name, "save results to project/name")->capture_default_str();
    app.add_flag("--exist-ok", exist_ok, "existing project/name ok, do not increment");
    app.add_option("--device", device, "cpu, or a CUDA device index such as 0")->capture_default_str();
    app.add_flag("--half", half, "FP16 half-precision inference (f16 activations, as y5train --amp; also on the CPU)");
    if (const int rc = y5::parse_flags(app, argc, argv, "y5detect"); rc >= 0) return rc;
    try {
        Y5_CHECK(conf >= 0 && conf <= 1, "--conf-thres %g: valid values are between 0.0 and 1.0", conf);
        Y5_CHECK(iou >= 0 && iou <= 1, "--iou-thres %g: valid values are between 0.0 and 1.0", iou);
        Y5_CHECK(max_det >= 0, "--max-det %d: must be 0 or more", max_det);
        imgsz = y5::check_img_size(imgsz, 32, 0);
        const int dev_index = y5::parse_device(device);
        y5::CudaContext* cuda = dev_index >= 0 ? y5::cuda_context_create(dev_index) : nullptr;
        auto model = y5::Model::from_weights(weights, cuda);
        y5::NmsParams nms;
        nms.conf_thres = conf, nms.iou_thres = iou, nms.max_det = max_det, nms.classes = classes, nms.agnostic = agnostic;
        // The memory plan for one image letterboxed to at most imgsz rounded up to the stride, with the GPU NMS's
        // scratch, measured on the fused model that runs.
        model->fuse();  // as detect.py's DetectMultiBackend(fuse=True): Conv+BN folded
        model->inference_maps = false;  // no loss here: the decoded predictions alone
        const int stride = (int)model->detect->stride.back(), side = (imgsz + stride - 1) / stride * stride;
        const y5::StepMemory plan = y5::plan_inference(*model, y5::measure_eval_image(*model, side, side, y5::LossHyp{}, half, false),
                                                       1, y5::nms_scratch_bytes(*model, side, 1, nms));
        y5::check_fits(model->params.device(), {plan}, "--imgsz " + std::to_string(imgsz), "--imgsz");
        std::vector<std::string> names = model->class_names;  // the weights file's; else the class indices
        if (names.empty())
            for (int i = 0; i < model->nc; ++i) names.push_back(std::to_string(i));
        std::string dir = project + "/" + name;
        if (!exist_ok && fs::exists(dir))
            for (int n = 2;; ++n)
                if (!fs::exists(project + "/" + name + std::to_string(n))) {
                    dir = project + "/" + name + std::to_string(n);
                    break;
                }
        fs::create_directories(save_txt ? dir + "/labels" : dir);
        Detector det(*model, imgsz, side, plan, half);
        det.nms = nms;
        const std::vector<std::string> files = sources(source);
        int k = 0;
        for (const std::string& file : files) {
            ++k;
            const std::string stem = fs::path(file).stem().string();
            if (is_image(file)) {
                cv::Mat im0;
                try {
                    im0 = cv::imread(file, cv::IMREAD_COLOR);
                } catch (const cv::Exception&) {  // past OpenCV's pixel limit (CV_IO_MAX_IMAGE_PIXELS): skipped as unreadable
                }
                if (im0.empty()) {
                    std::printf("WARNING: %s: cannot read the image, skipped\n", file.c_str());
                    continue;
                }
                const double t = det.t_pre + det.t_inf + det.t_nms;
                std::vector<y5::Detection> d = det.run(im0);
                std::printf("image %d/%zu %s: %dx%d %s%.1fms\n", k, files.size(), file.c_str(), det.last_h, det.last_w,
                            summary_of(d, names).c_str(), det.t_pre + det.t_inf + det.t_nms - t);
                if (save_txt) write_txt(dir + "/labels/" + stem + ".txt", d, im0.cols, im0.rows, save_conf);
                if (!nosave) {
                    annotate(im0, d, names);
                    const std::string out = dir + "/" + fs::path(file).filename().string();
                    Y5_CHECK(cv::imwrite(out, im0), "%s: cannot write", out.c_str());
                }
            } else {
                cv::VideoCapture cap(file);
                Y5_CHECK(cap.isOpened(), "%s: cannot open the video", file.c_str());
                const int nframes = (int)cap.get(cv::CAP_PROP_FRAME_COUNT);
                const double fps = cap.get(cv::CAP_PROP_FPS) > 0 ? cap.get(cv::CAP_PROP_FPS) : 30;
                cv::VideoWriter writer;
                cv::Mat frame;
                for (int fno = 1; cap.read(frame); ++fno) {
                    const double t = det.t_pre + det.t_inf + det.t_nms;
                    std::vector<y5::Detection> d = det.run(frame);
                    std::printf("video %d/%zu (%d/%d) %s: %dx%d %s%.1fms\n", k, files.size(), fno, nframes, file.c_str(),
                                det.last_h, det.last_w, summary_of(d, names).c_str(), det.t_pre + det.t_inf + det.t_nms - t);
                    if (save_txt) write_txt(dir + "/labels/" + stem + "_" + std::to_string(fno) + ".txt", d, frame.cols, frame.rows, save_conf);
                    if (!nosave) {
                        if (!writer.isOpened())
                            writer.open(dir + "/" + stem + ".mp4", cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps, frame.size());
                        annotate(frame, d, names);
                        writer.write(frame);
                    }
                }
            }
        }
        const int n = std::max(det.frames, 1);
        // detect.py names (1, 3, *imgsz): --imgsz made a multiple of the stride, not the last letterboxed shape.
        std::printf("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape (1, 3, %d, %d)\n",
                    det.t_pre / n, det.t_inf / n, det.t_nms / n, side, side);
        if (!nosave || save_txt) std::printf("Results saved to %s\n", dir.c_str());
        return 0;
    } catch (...) {
        return y5::error_exit("y5detect");
    }
}
