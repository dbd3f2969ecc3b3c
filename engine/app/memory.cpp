/*
 * The memory plan (engine/app/memory.h): the one-image measuring pass, the scaling to a batch, and the check
 * against the memory there is.
 */
#include "engine/app/memory.h"

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "engine/data/loader.h"
#include "engine/device/device.h"
#include "engine/ops/op.h"
#include "engine/app/val.h"
#include "layers/model.h"

#if Y5_CUDA
#include "kernels/conv2d.h"
#endif

namespace y5 {

// The bytes of the peak's live blocks by label, largest first.
static void live_by_label(const Arena& a, std::vector<std::pair<std::string, size_t>>* out) {
    if (!out) return;
    std::map<std::string, size_t> by;
    if (getenv("Y5_DBG_PEAK"))
        for (const Arena::Block& blk : a.peak_blocks()) fprintf(stderr, "  %10zu %9zu %s\n", blk.off, blk.bytes, blk.label ? blk.label : "other");
    for (const Arena::Block& blk : a.peak_blocks()) by[blk.label ? blk.label : "other"] += blk.bytes;
    out->assign(by.begin(), by.end());
    std::sort(out->begin(), out->end(), [](const auto& x, const auto& y) { return x.second > y.second; });
}

// The f16 copies of the convolution weights an autocast forward makes (modules.cpp amp()), one block each.
static size_t weight_copy_bytes(const Model& m, bool autocast) {
    size_t b = 0;
    for (int i = 0; autocast && i < m.params.size(); ++i)
        if (m.params[i].kind == ParamKind::Weight && m.params[i].shape.ndim == 4)
            b += ((size_t)m.params[i].shape.numel() * 2 + Arena::kAlign - 1) / Arena::kAlign * Arena::kAlign;
    return b;
}

// The throw-away arenas a measure runs on, on the model's device. CPU: reserved address space, of which only the
// touched pages become memory. CUDA: real allocations, so a share of what is free: act + work + the staging room
// below = 1.75·big (and cuDNN's limit), about a third of it, leaving the rest to cuDNN's and the runtime's own
// allocations (a third each, as before, took 83% of the free memory at once). cuDNN's workspace goes to an arena of
// its own, so the work peak is only the scratch that grows with the batch: counted in it, a one-image algorithm's
// workspace was multiplied by the batch (4.8 GB for y5val's batch of 32 at 64 px on the emulated device). Whatever
// algorithm the heuristics pick must fit it. The ops' chunked staging goes to Ctx::conv_work as well, with room for
// more than one image's (a quarter of the activation arena), and records one image's (Ctx::staged:
// StepMemory::staged).
struct MeasureSpace {
    Workspace ws;
    std::unique_ptr<Arena> conv_ws;
    size_t staged = 0;
    explicit MeasureSpace(const Model& m) {
        const Device dev = m.params.device();
        size_t big = (size_t)3 << 30, free_b = 0, total_b = 0;
        if (dev == Device::CUDA && device_memory_info(&free_b, &total_b)) big = std::min(big, free_b / 5);
        ws.make(dev, m.params.cuda(), StepMemory{big, big / 2});
#if Y5_CUDA
        if (dev == Device::CUDA) {
            conv_ws = std::make_unique<Arena>("cuDNN workspace and staging", dev, conv_workspace_limit() + big / 4);
            ws.ctx.conv_work = conv_ws.get();
            ws.ctx.staged = &staged;
        }
#endif
    }
};

// One training step of n images (measure_one_image), its allocations recorded into traces[n − 1] if given.
static StepMemory measure_step(Model& m, int n, int h, int w, const LossHyp& hyp, bool autocast, bool recompute,
                               std::vector<std::pair<std::string, size_t>>* live_at_peak, StepTraces* traces) {
    CudaContext* cuda = m.params.cuda();
    // The training forward below updates the BN running statistics: keep a host copy of the values and put
    // it back afterwards, so measuring leaves the model as it was (YOLOv5 starts from the initialised stats).
    Ctx hc;
    hc.cuda = cuda;
    const Tensor values = m.params.values_flat();
    std::vector<char> saved(values.bytes());
    const Tensor saved_t(saved.data(), values.shape, values.dtype, Device::CPU);
    copy(hc, saved_t, values);
    MeasureSpace space(m);
    Workspace& ws = space.ws;
    ws.ctx.autocast = autocast;
    ws.ctx.recompute = recompute;
    if (traces) ws.act->set_trace(&traces->act[n - 1]);
    // The images go through batch_images as a training batch does: on the GPU their uint8 upload is scratch
    // in the work arena, which the peak must include. One target per image.
    Batch b;
    b.n = n, b.h = h, b.w = w;
    b.images.assign((size_t)n * 3 * h * w, 128);
    ws.act->set_peak_snapshots(true);
    ws.act->set_label("input image");
    Tensor x = batch_images(ws.ctx, b);
    std::vector<float> rows;
    for (int i = 0; i < n; ++i) rows.insert(rows.end(), {(float)i, 0, 0.5f, 0.5f, 0.2f, 0.2f});
    Tensor t(rows.data(), Shape{n, 6}, DType::F32, Device::CPU);
    Model::Output o = m.forward(ws.ctx, train_input(ws.ctx, b, x), true);
    std::vector<float> anchors_host;
    ws.act->set_label("loss");
    YoloLoss L = yolo_loss(ws.ctx, o.maps, t, m.loss_anchors(&anchors_host), hyp);
    ws.act->set_label("backward (rebuilt)");
    ws.tape->backward(L.total);
    ws.act->set_label(nullptr);
    ws.act->set_trace(nullptr);
    live_by_label(*ws.act, live_at_peak);
    if (cuda) device_synchronize(cuda);
    size_t grads = 0;
    for (const Arena::Block& blk : ws.act->peak_blocks()) grads += blk.label == kGradLabel ? blk.bytes : 0;
    StepMemory peak{ws.act->peak(), ws.work->peak(), std::min(ws.act->peak(), weight_copy_bytes(m, autocast)), grads};
    peak.staged = space.staged;
    m.params.zero_grad(cuda);
    copy(hc, values, saved_t);
    if (cuda) device_synchronize(cuda);
    return peak;
}

StepMemory measure_one_image(Model& m, int h, int w, const LossHyp& hyp, bool autocast, bool recompute,
                             std::vector<std::pair<std::string, size_t>>* live_at_peak) {
    auto traces = std::make_shared<StepTraces>();
    StepMemory one = measure_step(m, 1, h, w, hyp, autocast, recompute, live_at_peak, traces.get());
    measure_step(m, 2, h, w, hyp, autocast, recompute, nullptr, traces.get());
    one.traces = traces;
    return one;
}

StepMemory measure_eval_image(Model& m, int h, int w, const LossHyp& hyp, bool autocast, bool with_loss,
                              std::vector<std::pair<std::string, size_t>>* live_at_peak) {
    CudaContext* cuda = m.params.cuda();
    MeasureSpace space(m);
    Workspace& ws = space.ws;
    ws.ctx.autocast = autocast;
    NoGrad ng(*ws.tape);
    ws.act->set_peak_snapshots(live_at_peak != nullptr);
    ws.act->set_label("input image");
    Batch b;
    b.n = 1, b.h = h, b.w = w;
    b.images.assign((size_t)3 * h * w, 128);
    Tensor x = batch_images(ws.ctx, b);
    Model::Output o = m.forward(ws.ctx, Tape::constant(x), false);
    ws.act->set_label("loss");
    if (with_loss) {
        std::vector<float> row = {0, 0, 0.5f, 0.5f, 0.2f, 0.2f}, anchors_host;
        Tensor t(row.data(), Shape{1, 6}, DType::F32, Device::CPU);
        yolo_loss(ws.ctx, o.maps, t, m.loss_anchors(&anchors_host), hyp);
    }
    if (cuda) device_synchronize(cuda);
    ws.act->set_label(nullptr);
    live_by_label(*ws.act, live_at_peak);
    // Nothing fixed: without a tape each f16 weight copy goes as soon as its convolution has run, so the copies are
    // not part of the peak that grows with the batch (counted as fixed, they made the plan of 128 images at 640 with
    // AMP 0.1 GB short of the real forward on an H200).
    StepMemory peak{ws.act->peak(), ws.work->peak(), 0};
    peak.staged = space.staged;
    return peak;
}

size_t upload_bytes(const Model& m, int batch, int side) {
    return m.params.device() == Device::CUDA ? (size_t)std::max(batch, 1) * 3 * side * side : 0;
}

StepMemory plan_shared(const StepMemory& a, const StepMemory& b) {
    StepMemory s{std::max(a.act, b.act), std::max(a.work, b.work), std::max(a.fixed, b.fixed), a.act >= b.act ? a.grads : b.grads};
    s.upload = a.upload + b.upload;
    return s;
}

size_t work_bytes_for_batch(const Model& m, const StepMemory& one, int batch) {
    const size_t b = (size_t)std::max(batch, 1), margin = (size_t)16 << 20, work1 = one.work;
    if (m.params.device() == Device::CUDA) {
#if Y5_CUDA
        // cuDNN: at most the limit, whatever the batch, with one image's staging beside it (Ctx::staged: the ops
        // chunk the batch to fit). The other ops' scratch (the uint8 batch upload, max-pool argmaxes, BN partial
        // sums, the loss's target lists and objectness targets) grows at most linearly.
        return std::max(conv_workspace_limit() + one.staged, b * work1) + margin;
#endif
    }
    // CPU conv2d: G = min(batch, threads) im2col buffers, each at most work1 (the largest, at one image, G = 1),
    // and in the backward grad_groups(batch) − 1 partial weight and bias gradients of the layer (engine/ops/op.h);
    // with oneDNN (f32) every group's weight gradient in oneDNN's blocked layout, both channel counts padded to at
    // most a multiple of 16 (kernels/conv2d_dnnl.h), and each buffer up to kWgradGroupFloats larger for the
    // weight gradients of several images per call (wgrad_groups).
    const size_t G = std::min(b, (size_t)std::max(cpu_op_threads(), 1)), groups = (size_t)grad_groups((int)b);
    const bool dnnl = conv_dnnl_on() && m.params.dtype() == DType::F32;
    size_t partial = 0;
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        if (p.kind != ParamKind::Weight || p.shape.ndim != 4) continue;
        const int64_t K = p.shape[0];
        const int64_t nw = dnnl ? dnnl_padded_channels(K) * dnnl_padded_channels(p.shape[1]) * p.shape[2] * p.shape[3]
                                : p.shape.numel();
        partial = std::max(partial, (size_t)(nw + K) * dtype_size(m.params.dtype()));
    }
    return G * (work1 + (dnnl ? (size_t)kWgradGroupFloats * sizeof(float) : 0)) + (dnnl ? groups : groups - 1) * partial +
           margin;
}

// Activations and their gradients grow linearly with the batch (but for `fixed` bytes); 10 % and 64 MiB of headroom.
static const size_t kHeadroom = (size_t)64 << 20;
static size_t scale_linear(size_t one, int batch, size_t fixed = 0) {
    return (one - fixed) * (size_t)batch * 11 / 10 + fixed + kHeadroom;
}

StepMemory plan_training(const Model& m, const StepMemory& one, int batch) {
    const StepTraces* t = one.traces.get();
    size_t act = 0;
    std::vector<Arena::Block> at_peak;
    if (t && replay_peak(t->act[0], 1, t->act[1], 2, std::max(batch, 1), &act, &at_peak)) {
        size_t grads = 0;
        for (const Arena::Block& blk : at_peak) grads += blk.label == kGradLabel ? blk.bytes : 0;
        return {act, work_bytes_for_batch(m, one, batch), one.fixed, grads};
    }
    return {scale_linear(one.act, batch, one.fixed), work_bytes_for_batch(m, one, batch), one.fixed,
            scale_linear(one.grads, batch)};
}

size_t nms_scratch_bytes(const Model& m, int side, int batch, const NmsParams& p) {
    if (m.params.device() != Device::CUDA) return 0;
#if Y5_CUDA
    // Rows of the decoded output at side × side (the scratch never shrinks with more rows: kernels/nms.h).
    int64_t N = 0;
    for (float s : m.detect->stride) {
        const int64_t g = CEIL_DIV((int64_t)side, (int64_t)s);
        N += (int64_t)m.detect->na * g * g;
    }
    return nms_cuda_scratch_bytes(batch, (int)N, m.detect->no, p, 0);
#else
    (void)side, (void)batch, (void)p;
    return 0;
#endif
}

StepMemory plan_inference(const Model& m, const StepMemory& one, int batch, size_t nms_bytes) {
    // The NMS's scratch is taken after the forward's is released: the larger of the two counts.
    const size_t work = std::max(work_bytes_for_batch(m, one, batch), nms_bytes + ((size_t)16 << 20));
    return {scale_linear(one.act, batch, one.fixed), work, one.fixed};
}

StepMemory plan_train_run(Model& m, int imgsz, int batch, int val_batch, const LossHyp& hyp, bool amp, bool single_cls,
                          bool recompute, int train_side, int resize_from, int* val_chunk) {
    const int val_side = imgsz + 32, side = train_side > 0 ? train_side : imgsz;
    StepMemory t = plan_training(m, measure_one_image(m, side, side, hyp, amp, recompute), batch);
    t.act += (size_t)batch * 3 * resize_from * resize_from * sizeof(float);  // the f32 batch before its resize
    t.upload = upload_bytes(m, batch, resize_from > 0 ? resize_from : side);
    StepMemory one;
    {
        ValFold fold(m, amp);  // as y5train validates
        one = measure_eval_image(m, val_side, val_side, hyp, amp, true);
    }
    return plan_shared(t, plan_validation(m, t, one, val_side, val_batch, single_cls, val_chunk));
}

StepMemory plan_validation(const Model& m, const StepMemory& t, const StepMemory& one, int side, int val_batch,
                           bool single_cls, int* chunk) {
    ValOptions vo;
    vo.single_cls = single_cls;
    auto eval = [&](int k) { return plan_inference(m, one, k, val_nms_scratch_bytes(m, side, k, vo)); };
    // The activations decide: the scratch (an im2col buffer per thread on the CPU, the uint8 upload and the NMS's
    // on the GPU) is the smaller arena, and grows if validation's needs more.
    // Where one image's forward needs more than training (tiny images, whose plan is mostly the fixed headroom), the
    // arena may grow by another headroom's worth of images rather than validate one image per forward.
    const size_t room = std::max(t.act, eval(1).act + kHeadroom);
    int k = std::max(val_batch, 1);
    while (k > 1 && eval(k).act > room) --k;
    if (chunk) *chunk = k;
    return eval(k);
}

static int64_t available_bytes(Device dev, int64_t available) {
    size_t free_b = 0, total_b = 0;
    return available >= 0 ? available
           : dev == Device::CUDA ? (device_memory_info(&free_b, &total_b) ? (int64_t)free_b : 0)
                                 : mem_available_bytes();
}

static size_t plans_total(const std::vector<StepMemory>& plans) {
    size_t need = 0;
    for (const StepMemory& p : plans) need += p.total();
    return need;
}

bool plan_fits(Device dev, const std::vector<StepMemory>& plans, int64_t available) {
    const int64_t avail = available_bytes(dev, available);
    return avail <= 0 || (double)plans_total(plans) < 0.9 * (double)avail;
}

void check_fits(Device dev, const std::vector<StepMemory>& plans, const std::string& what, const char* lower,
                int64_t available) {
    const int64_t avail = available_bytes(dev, available);
    Y5_CHECK(plan_fits(dev, plans, avail),
             "%s needs %.1f GB of %s memory for activations, gradients and scratch but %.1f GB are available: lower %s",
             what.c_str(), plans_total(plans) / 1e9, dev == Device::CUDA ? "GPU" : "CPU", avail / 1e9, lower);
}

}  // namespace y5
