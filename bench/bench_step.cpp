/*
 * The whole training step of yolov5n: images/s, peak memory, and where the time goes (each phase of the
 * step and each layer's forward).
 *   ./build/bench_step                        GPU 0: batch 16, 32 and 64 at 640 (a batch that does not fit
 *                                             in GPU memory is skipped, saying so)
 *   ./build/bench_step --device cpu           the CPU: batch 4 at 640, 3 timed steps
 *   ./build/bench_step --plan --imgsz 640 --batch-size 64 [--device cpu]
 *                                             the memory y5train's plan allocates for that configuration (one
 *                                             image's step measured, nothing trained), ending "total <bytes> bytes"
 *   options: --cfg --imgsz --batch 16 32 --warmup --steps --seconds --budget --no-layers
 *            --amp off|on|both (mixed precision as y5train --amp; default both on the GPU, off on the CPU)
 *            --recompute / --no-recompute (rebuild every BatchNorm + activation output in the backward, or keep
 *            it; as y5train, on by default on the GPU and off on the CPU, but on by default with --plan: the memory
 *            goals are the GPU's)
 *            --deterministic / --no-deterministic --workspace MiB (cuDNN, as y5train takes them)
 *            --cudnn-benchmark (cuDNN times the candidate algorithms instead of taking its heuristics' first)
 *            --no-pipeline (GPU: the host waits for each step; y5train queues a step while the previous one runs)
 *            --cuda-graph (GPU, pipelined: each step after the second replays a CUDA graph, as y5train --cuda-graph)
 * Without a usable GPU (and no --device cpu) it prints "no usable CUDA device: <why>" and exits 0.
 *
 * A step is y5train's own (TrainStep, engine/app/step.h): batch_images (the uint8 upload and /255),
 * Model::forward in training mode, yolo_loss, the tape's backward, clip_grad_norm(10), sgd_step over the three
 * groups, zero_grad and ema_update, on arenas from the same memory plan (engine/app/memory.h). Two differences: the optimizer steps after every batch (train.py
 * accumulates to a nominal batch of 64, so at batch 16 it steps every 4th: the optimizer rows below say
 * what that saves), and the data are synthetic (random pixels, 8 random boxes per image, drawn once), so
 * the data pipeline, bench_loader's subject, is not part of the figure.
 * Images/s: --steps steps after --warmup untimed ones (fewer if --seconds runs out), host clock, the device
 * idle at both ends. Memory: the peaks of the three step arenas, what they reserve, the parameter blocks
 * of the model and its EMA, and on the GPU the drop in cudaMemGetInfo's free bytes since before the models
 * existed (everything: arenas, parameters, cuDNN's and cuBLAS's own buffers), on the CPU the peak RSS. Under
 * each row, the first warmup step's gradient bytes: written by their first producers, and zeroed by the tape first.
 * Time per phase and per layer: a separate pass that runs Model::forward's loop one layer at a time with a
 * time stamp after each (CUDA events on the GPU, the host clock on the CPU), median of 3 passes.
 */
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "engine/device/device.h"
#include "engine/data/loader.h"
#include "engine/autograd/optim.h"
#include "engine/core/rng.h"
#include "engine/app/train.h"
#include "engine/app/val.h"
#include "engine/app/main.h"
#include "engine/app/memory.h"
#include "engine/app/step.h"
#include "engine/core/threadpool.h"
#include "layers/model.h"
#if Y5_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda.h"
#include "kernels/conv2d.h"
#include "layers/yolo.h"
#endif

using namespace y5;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// Peak resident memory of this process (VmHWM), bytes; 0 if unknown.
double peak_rss_bytes() {
    std::ifstream f("/proc/self/status");
    std::string key;
    while (f >> key) {
        if (key == "VmHWM:") {
            double kb = 0;
            f >> kb;
            return kb * 1024;
        }
        f.ignore(1 << 20, '\n');
    }
    return 0;
}

// Time stamps along a step: CUDA events on the context's stream (device time between them), or the host
// clock when there is no context (the CPU ops are synchronous).
class Marks {
public:
    explicit Marks(CudaContext* cuda) : cuda_(cuda) {}
    ~Marks() {
#if Y5_CUDA
        for (cudaEvent_t e : events_) cudaEventDestroy(e);
#endif
    }
    Marks(const Marks&) = delete;
    Marks& operator=(const Marks&) = delete;

    void clear() { n_ = 0, host_.clear(); }
    void mark() {
#if Y5_CUDA
        if (cuda_) {
            if (n_ == events_.size()) {
                cudaEvent_t e;
                CUDA_CHECK(cudaEventCreate(&e));
                events_.push_back(e);
            }
            CUDA_CHECK(cudaEventRecord(events_[n_++], cuda_->stream));
            return;
        }
#endif
        host_.push_back(Clock::now());
    }
    // Milliseconds between consecutive stamps (waits for the last one).
    std::vector<double> intervals_ms() const {
        std::vector<double> ms;
#if Y5_CUDA
        if (cuda_) {
            if (n_) CUDA_CHECK(cudaEventSynchronize(events_[n_ - 1]));
            for (size_t i = 1; i < n_; ++i) {
                float t = 0;
                CUDA_CHECK(cudaEventElapsedTime(&t, events_[i - 1], events_[i]));
                ms.push_back(t);
            }
            return ms;
        }
#endif
        for (size_t i = 1; i < host_.size(); ++i)
            ms.push_back(std::chrono::duration<double, std::milli>(host_[i] - host_[i - 1]).count());
        return ms;
    }

private:
    CudaContext* cuda_;
    size_t n_ = 0;
    std::vector<Clock::time_point> host_;
#if Y5_CUDA
    std::vector<cudaEvent_t> events_;
#endif
};

// What a training run keeps across steps.
struct Trainer {
    Model model, ema;
    CudaContext* cuda;
    LossHyp lh;
    SgdGroup groups[3];
    std::unique_ptr<TrainStep> step;  // engine/app/step.h: the step y5train runs
    int64_t ni = 0;                   // iterations so far: with accumulate 1 the optimizer steps after each

    Trainer(const std::string& cfg, Device dev, CudaContext* c, int imgsz) : model(cfg, 80), ema(cfg, 80), cuda(c) {
        model.allocate(dev, DType::F32, cuda);
        ema.allocate(dev, DType::F32, cuda);
        Rng init_rng(0, 1);
        model.init_weights(init_rng);
        Ctx dctx;
        dctx.cuda = cuda;
        copy(dctx, ema.params.values_flat(), model.params.values_flat());
        // hyp.scratch-low's gains as train.py scales them: for 3 levels and 80 classes only obj changes, by
        // (imgsz/640)².
        lh.obj *= (imgsz / 640.0) * (imgsz / 640.0);
        step = std::make_unique<TrainStep>(model, ema, lh);
        // Group 1 (weights) decays. The rates do not change the timing; small ones keep the random run finite.
        for (int j = 0; j < 3; ++j) groups[j] = {1e-3, 0.937, j == 1 ? 5e-4 : 0.0};
    }
    double param_bytes() const {
        double b = 0;
        for (const Model* m : {&model, &ema})
            b += (double)m->params.values_flat().bytes() + m->params.grads_flat().bytes() + m->params.momentum_flat().bytes();
        return b;
    }
};

// One training step, y5train's (engine/app/step.h), with the optimizer every batch. With marks: stamps after the
// upload, each layer, the loss, the backward, the clip, SGD + zero_grad, and the EMA (not pipelined). Pipelined
// (the GPU, as y5train, unless --no-pipeline): the previous step's result collected after this one is queued.
void collect_checked(Trainer& T) {
    const StepResult r = T.step->collect();
    Y5_CHECK(r.finite, "bench_step: the loss is %g", r.items.total);
}

void drain(Trainer& T) {
    while (T.step->in_flight()) collect_checked(T);
}

void train_step(Trainer& T, Workspace& w, const Batch& b, Marks* marks, bool pipelined) {
    if (marks) drain(T), marks->mark();
    std::function<void()> mark;
    if (marks) mark = [marks] { marks->mark(); };
    T.step->pipelined = pipelined && !marks;
    T.step->run(w.ctx, b, T.ni++, 1, T.groups, mark);
    while (T.step->in_flight() > (T.step->pipelined ? 1 : 0)) collect_checked(T);
}

// bs random images at imgsz² and 8 random boxes of the 80 classes per image.
Batch synthetic_batch(int bs, int imgsz, Rng& rng) {
    Batch b;
    b.n = bs, b.h = b.w = imgsz;
    b.images.resize((size_t)bs * 3 * imgsz * imgsz);
    for (uint8_t& v : b.images) v = (uint8_t)rng.randint(256);
    for (int i = 0; i < bs; ++i)
        for (int k = 0; k < 8; ++k)
            b.targets.insert(b.targets.end(), {float(i), float(rng.randint(80)), rng.uniform(0.1f, 0.9f),
                                               rng.uniform(0.1f, 0.9f), rng.uniform(0.02f, 0.4f), rng.uniform(0.02f, 0.4f)});
    return b;
}

std::string short_type(const std::string& t) { return t.substr(t.rfind('.') + 1); }

// The per-phase and per-layer table of one batch size: median over the passes of each interval.
void print_breakdown(const Trainer& T, int bs, bool amp, int imgsz, const std::vector<std::vector<double>>& passes,
                     bool gpu) {
    const size_t L = T.model.layers.size();
    std::vector<double> ms;
    for (size_t i = 0; i < passes[0].size(); ++i) {
        std::vector<double> v;
        for (const auto& p : passes) v.push_back(p[i]);
        ms.push_back(median(v));
    }
    double total = 0, fwd = 0;
    for (double v : ms) total += v;
    for (size_t i = 0; i < L; ++i) fwd += ms[1 + i];
    std::printf("\nwhere a step's time goes: batch %d at %d, %s, median of %zu instrumented steps (%s)\n", bs, imgsz,
                amp ? "AMP" : "f32", passes.size(), gpu ? "CUDA events" : "host clock");
    std::printf("%-36s %-22s %10s %7s\n", "phase / layer", "output", "ms", "%step");
    auto line = [&](const std::string& name, const std::string& shape, double v) {
        std::printf("%-36s %-22s %10.3f %6.1f%%\n", name.c_str(), shape.c_str(), v, 100 * v / total);
    };
    line("upload + u8->f32 (batch_images)", "", ms[0]);
    std::vector<Shape> out(L);
    const Shape img{bs, 3, imgsz, imgsz};
    for (size_t i = 0; i < L; ++i) {
        const Module& m = *T.model.layers[i];
        std::vector<Shape> in;
        for (int f : m.from) in.push_back(f < 0 ? img : out[f]);
        out[i] = m.out_shape(in);
        char name[64];
        snprintf(name, sizeof name, "  forward %2zu %s", i, short_type(m.type).c_str());
        line(name, &m == T.model.detect ? "3 maps" : out[i].str(), ms[1 + i]);
    }
    line("forward (all layers)", "", fwd);
    const char* rest[] = {"loss (yolo_loss)", "backward (tape)", "clip_grad_norm", "sgd_step + zero_grad", "ema_update"};
    for (size_t j = 0; j < 5 && 1 + L + j < ms.size(); ++j) line(rest[j], "", ms[1 + L + j]);
    line("step", "", total);
}

}  // namespace

// --plan: per category, the bytes y5train's memory plan (engine/app/memory.h) allocates for training batches of bs
// at imgsz and its validation (batches of 2·bs with sides up to imgsz + 32, with the GPU NMS's scratch, on the
// training arenas, in chunks of as many images as they hold: plan_validation), the parameter blocks of the model and its EMA (values, gradients, momentum), and the loader's
// pinned batches on the GPU; then the physical floor of each at the largest batch, and one line
// "total <bytes> bytes" (device memory: arenas and parameters) for the largest batch, after a line per smaller one.
// The floor: activations, every convolution's output once (what a backward needs with BN + activation recomputed);
// activation gradients, the largest set live at a row boundary of the backward (the row's output and input
// gradients and those of the skip connections that span it); parameters, one value, gradient and momentum per
// parameter and the EMA's value; validation nothing beyond the training arenas; scratch and pinned as planned.
void print_plan(const std::string& cfg, Device dev, CudaContext* cuda, int imgsz, const std::vector<int>& batches,
                bool amp, bool recompute) {
    Trainer T(cfg, dev, cuda, imgsz);
    const int val_side = imgsz + 32;
    std::vector<std::pair<std::string, size_t>> live;
    const StepMemory one = measure_one_image(T.model, imgsz, imgsz, T.lh, amp, recompute, &live);
    std::vector<std::pair<std::string, size_t>> vlive;
    StepMemory vone;
    {
        ValFold fold(T.model, amp);  // as y5train validates
        vone = measure_eval_image(T.model, val_side, val_side, T.lh, amp, true, &vlive);
    }
    std::printf("%s at %d on %s, %s, recompute %s: one image's training step %.1f MB activations and their gradients "
                "(%.1f MB of gradients at the peak), %.1f MB scratch; its validation forward (%d) %.1f MB\n",
                T.model.name.c_str(), imgsz, cuda ? "the GPU" : "the CPU", amp ? "AMP" : "f32", recompute ? "on" : "off",
                one.act / 1e6, one.grads / 1e6, one.work / 1e6, val_side, vone.act / 1e6);
    auto print_live = [](const char* what, size_t peak, const std::vector<std::pair<std::string, size_t>>& l) {
        std::printf("live at %s (%.1f MB):", what, peak / 1e6);
        size_t rest = 0;
        for (size_t k = 0; k < l.size(); ++k)
            if (k < 8) std::printf("%s %s %.1f MB", k ? "," : "", l[k].first.c_str(), l[k].second / 1e6);
            else rest += l[k].second;
        if (rest) std::printf(", the rest %.1f MB", rest / 1e6);
        std::printf("\n");
    };
    print_live("one image's training peak", one.act, live);
    print_live("one image's validation forward peak", vone.act, vlive);
    // Shapes per row at one image (the bench breakdown's dry run) for the floors.
    const Model& M = T.model;
    const size_t L = M.layers.size();
    std::vector<Shape> out(L);
    std::vector<int64_t> in_v(L, 0), last(L, -1);
    double conv_v = 0;
    for (size_t i = 0; i < L; ++i) {
        std::vector<Shape> in;
        for (int f : M.layers[i]->from) {
            in.push_back(f < 0 ? Shape{1, 3, imgsz, imgsz} : out[f]);
            if (f >= 0) in_v[i] += out[f].numel(), last[f] = std::max<int64_t>(last[f], (int64_t)i);
        }
        out[i] = M.layers[i]->out_shape(in);
        conv_v += (double)M.layers[i]->conv_values(in);
    }
    double grad_v = 0;  // the largest live set at a row of the backward, elements per image
    for (size_t i = 0; i < L; ++i) {
        double live = (double)(M.layers[i].get() == M.detect ? 0 : out[i].numel()) + in_v[i];
        for (size_t j = 0; j < i; ++j) {
            bool input = false;
            for (int f : M.layers[i]->from) input = input || f == (int)j;
            if (!input && last[j] > (int64_t)i) live += (double)out[j].numel();
        }
        grad_v = std::max(grad_v, live);
    }
    const double esize = amp ? 2 : 4, params = T.param_bytes();
    const double params_floor = 4.0 * 4 * (double)T.model.params.count(false);
    // The loader's uint8 batches are pinned on the GPU only: its ring (2 per worker, y5train's 8 workers) and the
    // batch being trained; host memory, not in the total.
    const size_t pinned1 = cuda ? (size_t)3 * imgsz * imgsz : 0;
    const int loader_slots = 2 * 8 + 1;
    std::printf("%-40s", "category");
    for (int bs : batches) std::printf(" %11s%-3d", "batch ", bs);
    std::printf(" %14s\n", "floor (largest)");
    std::vector<StepMemory> tp, vp, sp, vall;
    std::vector<int> chunk(batches.size());
    for (size_t k = 0; k < batches.size(); ++k) {
        const int bs = batches[k];
        tp.push_back(plan_training(T.model, one, bs));
        tp.back().upload = upload_bytes(T.model, bs, imgsz);
        vp.push_back(plan_validation(T.model, tp.back(), vone, val_side, 2 * bs, false, &chunk[k]));
        vall.push_back(plan_inference(T.model, vone, 2 * bs, val_nms_scratch_bytes(T.model, val_side, 2 * bs)));
        sp.push_back(plan_shared(tp.back(), vp.back()));
    }
    const double bmax = batches.back();
    auto row = [&](const char* name, const std::function<double(size_t)>& bytes, double floor) {
        std::printf("%-40s", name);
        for (size_t k = 0; k < batches.size(); ++k) std::printf(" %12.3fGB", bytes(k) / 1e9);
        if (floor >= 0) std::printf(" %12.3fGB\n", floor / 1e9);
        else std::printf(" %14s\n", "-");
    };
    // One arena: its floor is the larger of the two moments' (the forward's end, every convolution output and no
    // gradient yet; the backward's widest row, its gradients and at least its input's value).
    row("activations and their gradients", [&](size_t k) { return (double)tp[k].act; },
        std::max(conv_v, grad_v) * esize * bmax);
    row("  of which gradients at the peak", [&](size_t k) { return (double)tp[k].grads; }, -1);
    row("workspace (scratch)", [&](size_t k) { return (double)tp[k].work; }, -1);
    if (cuda) row("batch upload (pipelined step)", [&](size_t k) { return (double)tp[k].upload; }, -1);
    row("validation (beyond the training arenas)", [&](size_t k) { return (double)(sp[k].total() - tp[k].total()); }, 0);
    row("  its batch 2x in one forward", [&](size_t k) { return (double)vall[k].total(); }, -1);
    std::printf("%-40s", "  images per validation forward");
    for (size_t k = 0; k < batches.size(); ++k) std::printf(" %14d", chunk[k]);
    std::printf("\n");
    row("parameters + optimizer (model, EMA)", [&](size_t) { return params; }, params_floor);
    const double floor_total = std::max(conv_v, grad_v) * esize * bmax + params_floor + (double)tp.back().work;
    row("total (device memory)", [&](size_t k) { return (double)sp[k].total() + params; }, floor_total);
    row("pinned host (loader ring, 8 workers)", [&](size_t k) { return (double)pinned1 * batches[k] * loader_slots; }, -1);
    for (size_t k = 0; k + 1 < batches.size(); ++k)
        std::printf("batch %d: total %zu bytes\n", batches[k], sp[k].total() + (size_t)params);
    std::printf("total %zu bytes\n", sp.back().total() + (size_t)params);
}

int main(int argc, char** argv) {
    CLI::App app{"bench_step: yolov5n training step images/s, memory, and time per phase and layer"};
    std::string device = "0", cfg = std::string(Y5_CONFIG_DIR) + "/models/yolov5n.yaml";
    int imgsz = 640, warmup = -1, steps = -1;
    bool no_pipeline = false, cuda_graph = false;
    std::vector<int> batches;
    double seconds = -1, budget = 40;
    bool no_layers = false, deterministic = true, plan = false, rec_on = false, rec_off = false, cudnn_benchmark = false;
    int workspace_mib = 256;
    std::string amp_mode;
    app.add_option("--amp", amp_mode, "mixed precision: off, on, or both (f32 then AMP; the default on the GPU; the "
                   "CPU's is off)")->check(CLI::IsMember({"off", "on", "both"}));
    app.add_option("--device", device, "CUDA device index, or cpu")->capture_default_str();
    CLI::Option* rec_opt = app.add_flag("--recompute", rec_on, "BatchNorm + activation outputs rebuilt in the "
                                        "backward (y5train's default on the GPU; --plan's default)");
    app.add_flag("--no-recompute", rec_off, "kept (y5train's default on the CPU)")->excludes(rec_opt);
    app.add_option("--cfg", cfg, "model yaml")->capture_default_str();
    app.add_option("--imgsz", imgsz)->capture_default_str();
    app.add_option("--batch,--batch-size", batches, "batch sizes (default: 16 32 64 on the GPU, 4 on the CPU)");
    app.add_flag("--plan", plan, "print the memory y5train's plan allocates for --imgsz and each batch (one image's "
                 "step measured, nothing trained) and exit");
    app.add_option("--warmup", warmup, "untimed steps first (default: 3 GPU, 2 CPU)");
    app.add_flag("--no-pipeline", no_pipeline, "GPU: wait for each step before queuing the next (y5train pipelines: "
                 "its result is collected one step later)");
    app.add_flag("--cuda-graph", cuda_graph, "GPU, pipelined: the steps' forward, loss and backward captured as a CUDA "
                 "graph and replayed (y5train --cuda-graph); the per-layer pass runs without it");
    app.add_option("--steps", steps, "timed steps (default: 20 GPU, 3 CPU)");
    app.add_option("--seconds", seconds, "stop timing a batch size after this long (default: 8 GPU, 600 CPU)");
    app.add_option("--budget", budget, "GPU: skip the remaining batch sizes after this many seconds")->capture_default_str();
    app.add_flag("--no-layers", no_layers, "skip the per-phase and per-layer pass");
    app.add_flag("--deterministic,!--no-deterministic", deterministic,
                 "cuDNN: deterministic convolution algorithms only; on by default (y5train's default), --no-deterministic allows faster ones");
    app.add_option("--workspace", workspace_mib, "cuDNN: workspace cap per convolution pass, in MiB")
        ->capture_default_str()->check(CLI::Range(0, 1 << 20));
    app.add_flag("--cudnn-benchmark", cudnn_benchmark, "cuDNN: time the candidate algorithms (cudnnFind) instead of "
                 "taking its heuristics' order (y5train's and YOLOv5's default)");
    CLI11_PARSE(app, argc, argv);
    const bool pipeline = !no_pipeline;
    const Clock::time_point t_start = Clock::now();
    try {
        const bool cpu = device == "cpu";
        std::string why;
        if (!cpu && !cuda_available(&why)) {
            std::printf("bench_step: no usable CUDA device: %s (--device cpu measures the CPU)\n", why.c_str());
            return 0;
        }
        const int idx = parse_device(device);
        const Device dev = idx >= 0 ? Device::CUDA : Device::CPU;
        set_conv_options(deterministic, workspace_mib);  // before the memory plan measures
#if Y5_CUDA
        conv_set_benchmark(cudnn_benchmark);
#endif
        if (batches.empty()) batches = cpu ? std::vector<int>{4} : std::vector<int>{16, 32, 64};
        if (warmup < 0) warmup = cpu ? 2 : 3;
        if (steps < 0) steps = cpu ? 3 : 20;
        if (seconds < 0) seconds = cpu ? 600 : 8;
        if (amp_mode.empty()) amp_mode = cpu ? "off" : "both";
        const bool recompute = rec_on || (!rec_off && (plan || !cpu));
        std::vector<bool> amps;
        if (amp_mode != "on") amps.push_back(false);
        if (amp_mode != "off") amps.push_back(true);
        CudaContext* cuda = dev == Device::CUDA ? cuda_context_create(idx) : nullptr;
        struct Release {
            CudaContext* c;
            ~Release() { cuda_context_destroy(c); }
        } release{cuda};
        size_t free0 = 0, total = 0;
        if (cuda) device_memory_info(&free0, &total);
        if (plan) {
            for (bool amp : amps) print_plan(cfg, dev, cuda, imgsz, batches, amp, recompute);
            return 0;
        }

        Trainer T(cfg, dev, cuda, imgsz);
        std::vector<StepMemory> ones;
        for (bool amp : amps) ones.push_back(measure_one_image(T.model, imgsz, imgsz, T.lh, amp, recompute));
        const double gflops = T.model.gflops(imgsz);  // forward, per image
        std::printf("%s, %lld parameters, %.1f GFLOPs forward per image at %d\n", T.model.name.c_str(),
                    (long long)T.model.num_parameters(), gflops, imgsz);
        for (size_t a = 0; a < amps.size(); ++a)
            std::printf("one image's step, %s: %.0f MB activations and their gradients, %.0f MB scratch\n",
                        amps[a] ? "AMP" : "f32", ones[a].act / 1e6, ones[a].work / 1e6);
#if Y5_CUDA
        if (cuda) {
            cudaDeviceProp prop{};
            CUDA_CHECK(cudaGetDeviceProperties(&prop, idx));
            std::printf("device: %s, %.1f GiB; cuDNN convolutions: TF32 %s, deterministic %s, workspace cap %zu MiB, "
                        "algorithms by %s\n", prop.name, total / 1073741824.0, conv_allow_tf32() ? "on" : "off",
                        conv_deterministic() ? "on" : "off", conv_workspace_limit() >> 20,
                        conv_benchmark() ? "timing (cudnnFind)" : "heuristics");
        }
#endif
        if (!cuda) std::printf("device: CPU, %d threads\n", cpu_op_threads());  // Y5_THREADS, else one per core
        std::printf("step = upload, forward, loss, backward, clip, SGD, EMA (optimizer every batch); synthetic data\n\n");
        std::printf("%6s %6s %6s %10s %10s %13s %12s %12s %10s %14s\n", "batch", "prec", "steps", "ms/step", "images/s",
                    "TFLOP/s(3xF)", "arenas peak", "reserved", "params", cuda ? "GPU mem used" : "peak RSS");

        Rng rng(1, 3);
        std::vector<std::vector<double>> layer_passes;
        int layer_batch = 0;
        bool layer_amp = false;
        for (size_t run = 0; run < batches.size() * amps.size(); ++run) {  // each batch size in f32, then AMP
            const int bs = batches[run / amps.size()];
            const bool amp = amps[run % amps.size()];
            const StepMemory& one = ones[run % amps.size()];
            size_t written = 0, zeroed = 0;  // bytes of activation gradients in the first step
            T.step->amp = amp;
            T.step->recompute = recompute;
            T.step->cuda_graph = cuda_graph;
            if (cuda && seconds_since(t_start) > budget) {
                std::printf("%6d %6s skipped: %.0f s spent, past --budget %.0f\n", bs, amp ? "amp" : "f32",
                            seconds_since(t_start), budget);
                continue;
            }
            // The arenas as y5train plans them (engine/app/memory.h), checked against what is free before allocating.
            const StepMemory plan = plan_training(T.model, one, bs);
            try {
                check_fits(dev, {plan}, "batch " + std::to_string(bs), "the batch");
            } catch (const Error& e) {
                std::printf("%6d %6s skipped: %s\n", bs, amp ? "amp" : "f32", e.what());
                continue;
            }
            Workspace w;
            try {
                w.make(dev, cuda, plan);
            } catch (const Error& e) {
                std::printf("%6d %6s skipped: %s\n", bs, amp ? "amp" : "f32", e.what());
                continue;
            }
            const Batch b = synthetic_batch(bs, imgsz, rng);
            // The first step's activation gradients (an eager step: a CUDA graph is captured on the second).
            const size_t written0 = w.tape->written_bytes(), zeroed0 = w.tape->zeroed_bytes();
            for (int i = 0; i < warmup; ++i) {
                train_step(T, w, b, nullptr, pipeline);
                if (i == 0) written = w.tape->written_bytes() - written0, zeroed = w.tape->zeroed_bytes() - zeroed0;
            }
            drain(T);
            if (cuda) device_synchronize(cuda);
            const Clock::time_point t0 = Clock::now();
            int done = 0;
            while (done < steps && (done < 1 || seconds_since(t0) < seconds)) {
                train_step(T, w, b, nullptr, pipeline);
                ++done;
                if (cuda && done % 4 == 0) device_synchronize(cuda);  // so --seconds sees device time
            }
            drain(T);
            if (cuda) device_synchronize(cuda);
            const double s = seconds_since(t0), ips = bs * done / s;
            size_t free_now = 0;
            if (cuda) device_memory_info(&free_now, &total);
            const double used = cuda ? (double)free0 - (double)free_now : peak_rss_bytes();
            const double reserved = (double)w.act->capacity() + w.work->capacity();
            std::printf("%6d %6s %6d %10.1f %10.1f %13.2f %10.2fGB %10.2fGB %8.0fMB %12.2fGB\n", bs, amp ? "amp" : "f32",
                        done, 1000 * s / done, ips,
                        3 * gflops * ips / 1000, w.peak() / 1e9, reserved / 1e9, T.param_bytes() / 1e6, used / 1e9);
            if (warmup > 0)
                std::printf("       a step's gradients: %.3f GB written by their first producers, "
                            "%.4f GB zeroed first\n", written / 1e9, zeroed / 1e9);
            if (cuda_graph)
                std::printf("       CUDA graphs so far: %d captured, %d replayed\n", T.step->graph_captures,
                            T.step->graph_replays);
            std::fflush(stdout);
            if (!no_layers && layer_passes.empty()) {
                Marks marks(cuda);
                for (int p = 0; p < 3; ++p) {
                    marks.clear();
                    train_step(T, w, b, &marks, false);
                    layer_passes.push_back(marks.intervals_ms());
                }
                layer_batch = bs, layer_amp = amp;
            }
        }
        if (!layer_passes.empty()) print_breakdown(T, layer_batch, layer_amp, imgsz, layer_passes, cuda != nullptr);
        return 0;
    } catch (...) {
        return error_exit("bench_step");
    }
}
