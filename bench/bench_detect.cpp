/*
 * CPU detection at 640, batch 1: y5's fused forward (what y5detect runs, decode included, no NMS) against the
 * runtimes users deploy YOLOv5 with, on the same model: OpenCV DNN on the ONNX file y5export writes (its
 * default CPU backend). ONNX Runtime is bench/peer_onnxruntime.py (PyPI, outside CI), which prints the same rows.
 *   ./build/bench_detect [--weights ../shared/weights/yolov5n.pt] [--imgsz 640] [--warmup 2] [--runs 10]
 *                        [--threads 1 2]   (default: 1 and all cores) [--y5-only] [--plain]
 * --plain: y5's plain NCHW path (y5's own SiLU, reorders around each oneDNN call) instead of the blocked layout.
 * Each thread count runs in a child process of its own (y5's CPU pool is sized once per process, from
 * Y5_THREADS): OpenCV gets cv::setNumThreads(n). Every run is one random image (uniform 0..1, not zeros);
 * ms per image is the median of --runs timed runs after --warmup untimed ones, host clock. The first run also
 * checks that both give the same predictions (|a − b| ≤ 1e-4 + 1e-4·|b|, tests/test_export.cpp's bound).
 */
#include <CLI/CLI.hpp>
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine/app/export.h"
#include "engine/app/main.h"
#include "engine/autograd/tape.h"
#include "engine/core/rng.h"
#include "kernels/conv2d_dnnl.h"
#include "layers/model.h"

namespace fs = std::filesystem;

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

template <class F> static double time_ms(int warmup, int runs, F&& f) {
    std::vector<double> t;
    for (int i = 0; i < warmup + runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (i >= warmup) t.push_back(ms);
    }
    return median(t);
}

// Two variants in turn, run by run (a, b, a, b, ...), so that both see the same minutes of a shared machine:
// their medians.
template <class F> static std::pair<double, double> time_ab(int warmup, int runs, F&& f) {
    std::vector<double> t[2];
    for (int i = 0; i < warmup + runs; ++i)
        for (int v = 0; v < 2; ++v) {
            const auto t0 = std::chrono::steady_clock::now();
            f(v);
            const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            if (i >= warmup) t[v].push_back(ms);
        }
    return {median(t[0]), median(t[1])};
}

// One thread count, in this process: prints a row per runtime.
static void bench(const std::string& weights, int imgsz, int warmup, int runs, int threads, bool y5_only, bool plain,
                  bool ab) {
    setenv("Y5_THREADS", std::to_string(threads).c_str(), 1);  // read once, by the first CPU op
    cv::setNumThreads(threads);
    auto model = y5::Model::from_weights(weights);
    model->fuse();
    model->blocked_inference = !plain;
    model->inference_maps = false;  // as y5detect
    const std::string onnx = (fs::temp_directory_path() / ("bench_detect_" + std::to_string(::getpid()) + ".onnx")).string();
    y5::OnnxOptions o;
    o.height = o.width = imgsz;
    y5::export_onnx(*model, onnx, o);
    cv::dnn::Net net = cv::dnn::readNetFromONNX(onnx);
    fs::remove(onnx);
    net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);

    y5::Arena act("bench activations", y5::Device::CPU, size_t(1) << 30), work("bench workspace", y5::Device::CPU, size_t(1) << 30);
    y5::Arena grads("bench gradients", y5::Device::CPU, 1 << 20), data("bench data", y5::Device::CPU, size_t(1) << 26);
    y5::Tape tape(&grads);
    y5::Ctx c;
    c.act = &act, c.work = &work, c.tape = &tape;
    y5::NoGrad ng(tape);
    y5::Tensor x = data.tensor(y5::Shape{1, 3, imgsz, imgsz});
    y5::Rng rng(1);
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = (float)rng.uniform_double(0, 1);
    const int sz[4] = {1, 3, imgsz, imgsz};
    const cv::Mat blob(4, sz, CV_32F, x.data);

    std::vector<float> mine;
    act.set_tracking(true);  // y5detect's liveness: only tensors later rows read are kept
    auto run_y5 = [&] {
        act.reset();
        y5::Model::Output out = model->forward(c, y5::Tape::constant(x), false);
        if (mine.empty()) mine.assign(out.decoded.ptr<float>(), out.decoded.ptr<float>() + out.decoded.numel());
    };
    cv::Mat theirs;
    auto run_cv = [&] {
        net.setInput(blob, "images");
        cv::Mat out = net.forward("output0");
        if (theirs.empty()) theirs = out.clone();
    };
    const char* y5_row = plain ? "y5 (fused, plain NCHW path)" : "y5 (fused forward + decode)";
    if (ab) {  // as is, against the stem through oneDNN and Detect's maps written (y5 before both)
        const auto [t_a, t_b] = time_ab(warmup, runs, [&](int v) {
            y5::dnnl_stem_set(v == 0);
            model->inference_maps = v == 1;
            run_y5();
        });
        y5::dnnl_stem_set(true);
        model->inference_maps = false;
        std::printf("%-34s %8d %12.1f\n", y5_row, threads, t_a);
        std::printf("%-34s %8d %12.1f\n", "y5, stem on oneDNN, maps written", threads, t_b);
        std::fflush(stdout);
        return;
    }
    const double t_y5 = time_ms(warmup, runs, run_y5);
    if (model->blocked_bytes())
        std::printf("  y5's blocked layout: %.1f MB of arenas and reordered weights (%d thread%s)\n",
                    model->blocked_bytes() / 1e6, threads, threads > 1 ? "s" : "");
    if (y5_only) {
        std::printf("%-34s %8d %12.1f\n", y5_row, threads, t_y5);
        std::fflush(stdout);
        return;
    }
    const double t_cv = time_ms(warmup, runs, run_cv);
    int64_t bad = 0;
    for (size_t i = 0; i < mine.size(); ++i)
        bad += std::fabs(theirs.ptr<float>()[i] - mine[i]) > 1e-4 + 1e-4 * std::fabs(mine[i]);
    Y5_CHECK((size_t)theirs.total() == mine.size() && bad == 0, "bench_detect: OpenCV's output differs from y5's in %lld "
             "of %zu values", (long long)bad, mine.size());
    std::printf("%-34s %8d %12.1f\n", y5_row, threads, t_y5);
    std::printf("%-34s %8d %12.1f\n", ("OpenCV DNN " + std::string(CV_VERSION) + " (ONNX)").c_str(), threads, t_cv);
    std::fflush(stdout);
}

int main(int argc, char** argv) {
    CLI::App app{"bench_detect: CPU detection ms/image, y5 against OpenCV DNN on the exported ONNX"};
    std::string weights = std::string(Y5_SOURCE_DIR) + "/../shared/weights/yolov5n.pt";
    int imgsz = 640, warmup = 2, runs = 10;
    std::vector<int> threads;
    app.add_option("--weights", weights, "y5 .safetensors or YOLOv5 .pt")->capture_default_str()->check(CLI::ExistingFile);
    app.add_option("--imgsz", imgsz, "image size (square)")->capture_default_str();
    app.add_option("--warmup", warmup, "untimed runs")->capture_default_str();
    app.add_option("--runs", runs, "timed runs (the median is printed)")->capture_default_str();
    app.add_option("--threads", threads, "thread counts (default: 1 and all cores)");
    bool y5_only = false;
    app.add_flag("--y5-only", y5_only, "time y5 alone (profiling): no OpenCV run, no comparison");
    bool plain = false;
    app.add_flag("--plain", plain, "y5's plain NCHW path (no blocked layout between the layers), for comparison");
    bool ab = false;
    app.add_flag("--ab", ab, "y5 alone, as is against its stem convolution through oneDNN and Detect's maps written, "
                             "run by run in turn");
    CLI11_PARSE(app, argc, argv);
    const int all = (int)std::max(1u, std::thread::hardware_concurrency());
    if (threads.empty()) threads = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
    std::printf("bench_detect: %s at %d, batch 1, median of %d runs after %d warmup\n", weights.c_str(), imgsz, runs, warmup);
    std::printf("%-34s %8s %12s\n", "runtime", "threads", "ms/image");
    std::fflush(stdout);
    int rc = 0;
    for (int n : threads) {  // a child per thread count: y5's pool is sized once per process
        const pid_t pid = fork();
        if (pid == 0) {
            try {
                bench(weights, imgsz, warmup, runs, n, y5_only, plain, ab);
                std::_Exit(0);
            } catch (...) {
                std::_Exit(y5::error_exit("bench_detect"));
            }
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
    }
    return rc;
}
