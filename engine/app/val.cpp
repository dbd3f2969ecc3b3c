#include "engine/app/val.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "kernels/check.h"
#include "engine/device/device.h"
#include "engine/app/memory.h"
#include "engine/app/plots.h"
#include "engine/ops/op.h"
#include "kernels/image.h"

#if Y5_CUDA
#include "kernels/cuda.h"
#endif

namespace y5 {

Tensor batch_images(Ctx& c, const Batch& b, int first, int count) {
    if (count < 0) count = b.n - first;
    Y5_CHECK(first >= 0 && first + count <= b.n, "batch_images: images %d..%d of a batch of %d", first,
             first + count - 1, b.n);
    Tensor x = c.act->tensor(Shape{count, 3, b.h, b.w});
    Y5_CHECK((int64_t)b.images.size() == (int64_t)b.n * 3 * b.h * b.w, "batch_images: %zu bytes for a (%d, 3, %d, %d) "
             "batch", b.images.size(), b.n, b.h, b.w);
    const int64_t n = x.numel();
    const uint8_t* src = b.images.data() + (size_t)first * 3 * b.h * b.w;
    if (x.device == Device::CUDA) {
#if Y5_CUDA
        // The uint8 batch goes up as is (a quarter of the float bytes; from pinned memory) into the work
        // arena and is converted there; the arena space is reused by later work on the same stream.
        Y5_CHECK(c.work && c.work->device() == Device::CUDA && c.cuda, "batch_images: CUDA needs a device work arena");
        const size_t mark = c.work->mark();
        uint8_t* dev = static_cast<uint8_t*>(c.work->alloc(std::max<int64_t>(n, 1)));
        copy_host_to_device(dev, src, (size_t)n, c.cuda);
        images_u8_to_f32_cuda(x.ptr<float>(), dev, n, c.cuda->stream);
        c.work->reset(mark);
        return x;
#else
        Y5_FAIL("batch_images: CUDA tensor in a build without CUDA");
#endif
    }
    images_u8_to_f32_cpu(x.ptr<float>(), src, n);
    return x;
}

Var train_input(Ctx& c, const Batch& b, const Tensor& x, const void* device_src) {
    if (!c.recompute || !c.tape->recording()) return Tape::constant(x);
    const int64_t n = x.numel();
    Y5_CHECK((int64_t)b.images.size() == n && x.dtype == DType::F32, "train_input: %s from %zu pixels",
             x.str().c_str(), b.images.size());
    uint8_t* keep = static_cast<uint8_t*>(c.act->alloc(std::max<int64_t>(n, 1)));
    if (x.device == Device::CUDA) {
#if Y5_CUDA
        if (device_src) copy_device_to_device(keep, device_src, (size_t)n, c.cuda);
        else copy_host_to_device(keep, b.images.data(), (size_t)n, c.cuda);
        return c.tape->rebuildable(
            x, [&c, keep, n](Tensor dst) { images_u8_to_f32_cuda(dst.ptr<float>(), keep, n, c.cuda->stream); });
#else
        Y5_FAIL("train_input: CUDA tensor in a build without CUDA");
#endif
    }
    std::memcpy(keep, b.images.data(), (size_t)n);
    return c.tape->rebuildable(x, [keep, n](Tensor dst) { images_u8_to_f32_cpu(dst.ptr<float>(), keep, n); });
}

Tensor batch_targets(const Batch& b) {
    return Tensor(const_cast<float*>(b.targets.data()), Shape{b.num_targets(), 6}, DType::F32, Device::CPU);
}

// scale_boxes: from the letterboxed batch image back to the original, then clip_boxes.
static void to_original(float* xyxy, const std::array<double, 6>& s) {
    const double gain = s[2], padw = s[4], padh = s[5], h0 = s[0], w0 = s[1];
    xyxy[0] = (float)std::clamp((xyxy[0] - padw) / gain, 0.0, w0);
    xyxy[2] = (float)std::clamp((xyxy[2] - padw) / gain, 0.0, w0);
    xyxy[1] = (float)std::clamp((xyxy[1] - padh) / gain, 0.0, h0);
    xyxy[3] = (float)std::clamp((xyxy[3] - padh) / gain, 0.0, h0);
}

// val.py's NMS settings.
static NmsParams val_nms_params(const ValOptions& o) {
    NmsParams np;
    np.conf_thres = o.conf_thres, np.iou_thres = o.iou_thres, np.multi_label = true, np.agnostic = o.single_cls;
    np.max_det = o.max_det;
    return np;
}

ValFold::ValFold(Model& model, bool autocast)
    : m(model), on(!model.fused() && !autocast && model.blocks_when_fused()) {
    if (on) m.fuse();
}

ValFold::~ValFold() {
    if (on) m.unfuse();
}

size_t val_nms_scratch_bytes(const Model& m, int side, int batch, const ValOptions& o) {
    return nms_scratch_bytes(m, side, batch, val_nms_params(o));
}

ValResult validate(Model& m, DataLoader& loader, Ctx& c, const LossHyp& hyp, const ValOptions& o, ConfusionMatrix* cm,
                   Batch* batch) {
    ValResult R;
    // val.py with plots=True draws the confusion matrix even when the caller keeps none.
    ConfusionMatrix own_cm(o.single_cls ? 1 : m.nc);
    if (!cm && !o.plot_dir.empty()) cm = &own_cm;
    std::vector<std::array<bool, kIouThresholds>> tp;
    std::vector<double> conf;
    std::vector<int> pcls, tcls;
    const NmsParams np = val_nms_params(o);
    std::vector<float> anchors_host;
    const Tensor anchors = m.loss_anchors(&anchors_host);
    NoGrad ng(*c.tape);
    // The forward keeps only the tensors later rows read (Model::forward's liveness), on the arena as it finds it
    // (y5train's training arena, idle meanwhile), rewound when validation ends.
    c.act->reset();
    struct Untrack {
        Arena* a;
        bool was;
        ~Untrack() { a->reset(), a->set_tracking(was); }
    } untrack{c.act, c.act->tracking()};
    c.act->set_tracking(true);
    loader.start_epoch(0);
    Batch own;
    Batch& b = batch ? *batch : own;  // the caller's, kept across calls: its (pinned) memory allocated once
    int batches = 0;
    std::vector<std::vector<Detection>> dets;
    // On a terminal, a progress line (batches, rate, ETA) that the table replaces when validation ends.
    const bool tty = isatty(fileno(stdout));
    const int nb = loader.num_batches();
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<LossItems> parts;
    std::vector<float> chunk_targets;
    while (loader.next(b)) {
        // The batch in chunks of at most `step` images: forward, loss and NMS per chunk; detections for all.
        const int step = o.chunk > 0 ? std::min(o.chunk, b.n) : b.n;
        dets.assign(b.n, {});
        parts.clear();
        for (int i0 = 0; i0 < b.n; i0 += step) {
            const int k = std::min(step, b.n - i0);
            c.act->reset();
            Tensor x = batch_images(c, b, i0, k), t = batch_targets(b);
            if (k < b.n) {  // the chunk's targets, their image index relative to it
                chunk_targets.clear();
                for (int64_t j = 0; j < b.num_targets(); ++j) {
                    const float* r = &b.targets[6 * j];
                    if ((int)r[0] < i0 || (int)r[0] >= i0 + k) continue;
                    chunk_targets.insert(chunk_targets.end(), r, r + 6);
                    chunk_targets[chunk_targets.size() - 6] = r[0] - (float)i0;
                }
                t = Tensor(chunk_targets.data(), Shape{(int64_t)chunk_targets.size() / 6, 6}, DType::F32, Device::CPU);
            }
            Model::Output out = m.forward(c, Tape::constant(x), false);
            parts.push_back(yolo_loss(c, out.maps, t, anchors, hyp).items);
            const int64_t N = out.decoded.dim(1), no = out.decoded.dim(2);
            const float* dec = out.decoded.ptr<float>();  // (k, N, no)
            if (out.decoded.device == Device::CUDA) {
#if Y5_CUDA
                // On the device, with scratch from the work arena (as much of what it has free as the NMS's largest
                // sort groups take; the plan holds at least its least): only the detections come to the host.
                const size_t mark = c.work->mark(), room = c.work->capacity() - c.work->used(),
                             bytes = std::min(nms_cuda_scratch_bytes(k, (int)N, (int)no, np),
                                              room > 2 * Arena::kAlign ? room - 2 * Arena::kAlign : 0);
                void* scratch = c.work->alloc(bytes);
                std::vector<std::vector<Detection>> d = nms_batch_cuda(dec, k, (int)N, (int)no, np, scratch, bytes,
                                                                       c.cuda->stream);
                c.work->reset(mark);
                for (int i = 0; i < k; ++i) dets[i0 + i] = std::move(d[i]);
#else
                Y5_FAIL("validate: CUDA tensor in a build without CUDA");
#endif
            } else {  // the images' NMS on the CPU threads (each writes its own entry)
                par(k, [&](int64_t a, int64_t e) {
                    for (int64_t i = a; i < e; ++i) dets[i0 + i] = nms_image(dec + i * N * no, (int)N, (int)no, np);
                });
            }
        }
        // One chunk: its items as they are (bit for bit the unchunked run's); several: from their level sums.
        const LossItems L = parts.size() == 1 ? parts[0] : combine_loss_items(parts, hyp, m.detect->no - 5);
        R.loss[0] += L.lbox, R.loss[1] += L.lobj, R.loss[2] += L.lcls;
        ++batches;
        const bool plot = !o.plot_dir.empty() && batches <= 3;
        std::vector<std::array<float, 7>> plotted;  // predictions over 0.25, normalised to the batch image
        for (int i = 0; i < b.n; ++i) {
            std::vector<Detection>& det = dets[i];
            if (plot)
                for (const Detection& d : det)
                    if (d[4] > 0.25f)
                        plotted.push_back({(float)i, d[5], (d[0] + d[2]) / 2 / b.w, (d[1] + d[3]) / 2 / b.h,
                                           (d[2] - d[0]) / b.w, (d[3] - d[1]) / b.h, d[4]});
            std::vector<Label> lab;
            for (int64_t k = 0; k < b.num_targets(); ++k) {
                const float* r = &b.targets[6 * k];
                if ((int)r[0] != i) continue;
                float box[4] = {(r[2] - r[4] / 2) * b.w, (r[3] - r[5] / 2) * b.h, (r[2] + r[4] / 2) * b.w, (r[3] + r[5] / 2) * b.h};
                to_original(box, b.shapes[i]);
                lab.push_back({(int)r[1], box[0], box[1], box[2], box[3]});
                tcls.push_back((int)r[1]);
            }
            R.images++;
            R.instances += (int64_t)lab.size();
            if (det.empty()) {
                if (!lab.empty() && cm) cm->process_batch(nullptr, lab);
                continue;
            }
            if (o.single_cls)
                for (Detection& d : det) d[5] = 0;
            for (Detection& d : det) to_original(d.data(), b.shapes[i]);
            std::vector<std::array<bool, kIouThresholds>> correct(det.size());
            for (auto& x : correct) x.fill(false);
            if (!lab.empty()) {
                correct = match_predictions(det, lab);
                if (cm) cm->process_batch(&det, lab);
            }
            for (size_t k = 0; k < det.size(); ++k) {
                tp.push_back(correct[k]);
                conf.push_back(det[k][4]);
                pcls.push_back((int)det[k][5]);
            }
        }
        if (tty) {
            const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("\r%22s %d/%d batches %.2fit/s ETA %.0fs", "validating", batches, nb, batches / el,
                        (nb - batches) * el / batches);
            std::fflush(stdout);
        }
        if (plot) {
            static const std::vector<std::string> none;
            const std::string base = o.plot_dir + "/val_batch" + std::to_string(batches - 1);
            plot_batch(b, o.names ? *o.names : none, base + "_labels.jpg");
            plot_predictions(b, plotted, o.names ? *o.names : none, base + "_pred.jpg");
        }
    }
    if (tty) std::printf("\r\033[K");
    for (double& l : R.loss) l /= std::max(batches, 1);
    bool any = false;
    for (const auto& r : tp) any = any || r[0];
    if (any) {
        R.per_class = ap_per_class(tp, conf, pcls, tcls);
        R.mp = R.per_class.mp, R.mr = R.per_class.mr, R.map50 = R.per_class.map50, R.map = R.per_class.map;
    }
    if (!o.plot_dir.empty()) {  // val.py's plots: the curves (only when ap_per_class ran) and the confusion matrix
        static const std::vector<std::string> none;
        if (any) plot_val_curves(R.per_class, o.names ? *o.names : none, o.plot_dir);
        plot_confusion_matrix(*cm, o.names ? *o.names : none, o.plot_dir);
    }
    int maxc = 0;
    for (int cl : tcls) maxc = std::max(maxc, cl + 1);
    R.class_instances.assign(maxc, 0);
    for (int cl : tcls) R.class_instances[cl]++;
    return R;
}

std::string val_table(const ValResult& r, const std::vector<std::string>& names, bool per_class) {
    std::string s;
    char line[256];
    snprintf(line, sizeof line, "%22s%11s%11s%11s%11s%11s%11s\n", "Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95");
    s += line;
    snprintf(line, sizeof line, "%22s%11d%11lld%11.3g%11.3g%11.3g%11.3g\n", "all", r.images, (long long)r.instances, r.mp,
             r.mr, r.map50, r.map);
    s += line;
    for (size_t i = 0; per_class && i < r.per_class.classes.size(); ++i) {
        const int c = r.per_class.classes[i];
        double ap = 0;
        for (int t = 0; t < kIouThresholds; ++t) ap += r.per_class.ap[i][t] / kIouThresholds;
        snprintf(line, sizeof line, "%22s%11d%11lld%11.3g%11.3g%11.3g%11.3g\n",
                 c < (int)names.size() ? names[c].c_str() : std::to_string(c).c_str(), r.images,
                 (long long)(c < (int)r.class_instances.size() ? r.class_instances[c] : 0), r.per_class.p[i], r.per_class.r[i],
                 r.per_class.ap[i][0], ap);
        s += line;
    }
    return s;
}

}  // namespace y5

