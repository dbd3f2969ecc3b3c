/*
 * The training step (engine/app/step.h).
 */
#include "engine/app/step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/check.h"
#include "kernels/image.h"
#if Y5_CUDA
#include "kernels/cuda.h"
#endif

namespace y5 {

// --multi-scale: x (n, 3, h, w) resized bilinearly (F.interpolate, align_corners=False) into y (n, 3, oh, ow).
static void resize_images(Ctx& c, Tensor y, const Tensor& x) {
    const int h = (int)x.shape[2], w = (int)x.shape[3], oh = (int)y.shape[2], ow = (int)y.shape[3];
    if (y.device == Device::CUDA) {
#if Y5_CUDA
        images_resize_bilinear_cuda(y.ptr<float>(), x.ptr<float>(), x.shape[0] * 3, h, w, oh, ow, c.cuda->stream);
#else
        Y5_FAIL("resize_images: CUDA tensor in a build without CUDA");
#endif
    } else {
        images_resize_bilinear_cpu(y.ptr<float>(), x.ptr<float>(), x.shape[0] * 3, h, w, oh, ow);
    }
}

TrainStep::TrainStep(Model& model, Model& ema, const LossHyp& hyp) : model(model), ema(ema), hyp(hyp) {
    anchors_ = model.loss_anchors(&anchors_host_);
}

// No waits here (a destructor may run while a CUDA error unwinds): cudaFree and cudaFreeHost wait for the device.
TrainStep::~TrainStep() {
    for (Graphed& g : graphs_) graph_free(g);
    if (upload_) device_free(upload_);
    if (amp_dev_) device_free(amp_dev_);
    for (Queued& q : q_) host_free_pinned(q.pinned);
    for (DeviceEvent* e : {uploaded_, converted_, q_[0].done, q_[1].done}) event_destroy(e);
}

void TrainStep::reserve_upload(Ctx& c, size_t bytes) {
    if (!c.cuda || bytes <= upload_cap_) return;
    if (!uploaded_) uploaded_ = event_create(), converted_ = event_create();
    if (upload_) device_free(upload_);  // cudaFree waits for the device: no copy or conversion still uses it
    upload_ = nullptr, upload_cap_ = 0;  // device_alloc may throw: no dangling buffer
    upload_ = device_alloc(bytes, "training batch upload");
    upload_cap_ = bytes;
}

// Pipelined: b's uint8 images to the upload buffer on the copy stream, after the previous batch's last read of it
// (converted_, recorded by run() after train_input's copy) and beside whatever the compute stream still runs, then
// converted into x (n, 3, h, w) f32 on the compute stream.
Tensor TrainStep::upload_images(Ctx& c, const Batch& b) {
    Tensor x = c.act->tensor(Shape{b.n, 3, b.h, b.w});
    const size_t n = (size_t)x.numel();
    Y5_CHECK(b.images.size() == n, "upload_images: %zu bytes for a (%d, 3, %d, %d) batch", b.images.size(), b.n, b.h, b.w);
    reserve_upload(c, n);
#if Y5_CUDA
    stream_wait(c.cuda, converted_, true);
    copy_host_to_device_async(upload_, b.images.data(), n, c.cuda);
    event_record(uploaded_, c.cuda, true);
    stream_wait(c.cuda, uploaded_);
    images_u8_to_f32_cuda(x.ptr<float>(), static_cast<const uint8_t*>(upload_), (int64_t)n, c.cuda->stream);
#endif
    return x;
}

LossItems TrainStep::forward_backward(Ctx& c, const Var& input, const Tensor& t, bool piped, bool amp_dev,
                                      const Tensor* seed, const std::function<void()>& mark, bool* finite,
                                      std::vector<int>* ny, std::vector<int>* nx) {
    std::function<void(size_t)> layer_done;
    if (mark) layer_done = [&](size_t) { mark(); };
    Model::Output out = model.forward(c, input, true, nullptr, layer_done);
    if (ny)
        for (const Var& m : out.maps) ny->push_back(m.t.dim(2)), nx->push_back(m.t.dim(3));
    YoloLoss L = yolo_loss(c, out.maps, t, anchors_, hyp);
    *finite = piped || std::isfinite(L.items.total);  // pipelined: known at collect()
    if (!*finite) return L.items;
    if (mark) mark();
    if (seed) {
        c.tape->backward(L.total, seed);
    } else if (amp_dev) {  // the seed scale · loss_gain, made on the device (after amp_dev_'s AmpState)
        Tensor s(reinterpret_cast<char*>(amp_dev_) + sizeof(AmpState), L.total.t.shape, DType::F32, Device::CUDA);
#if Y5_CUDA
        amp_seed_cuda(s.ptr<float>(), amp_dev_, loss_gain, c.cuda->stream);
#endif
        c.tape->backward(L.total, &s);
    } else {
        c.tape->backward(L.total, nullptr, (amp ? scaler.loss_scale() : 1.0) * loss_gain);
    }
    if (mark) mark();
    return L.items;
}

TrainStep::Graphed& TrainStep::graph_for(const Ctx& c, const Batch& b, const Var& input) {
    const int rh = (int)input.t.shape[2], rw = (int)input.t.shape[3];
    const Arena* grads = c.tape->arena();
    const void* arenas[4] = {c.act->base(), c.work->base(), c.conv_work ? c.conv_work->base() : nullptr,
                             grads ? grads->base() : nullptr};
    ++graph_uses_;
    for (Graphed& g : graphs_)
        if (g.n == b.n && g.h == b.h && g.w == b.w && g.rh == rh && g.rw == rw && g.amp == amp &&
            g.recompute == recompute && g.input == input.t.data &&
            std::equal(arenas, arenas + 4, g.arenas)) {
            g.used = graph_uses_;
            return g;
        }
    if ((int)graphs_.size() == kMaxGraphs) {  // the least recently used shape goes
        auto old = std::min_element(graphs_.begin(), graphs_.end(),
                                    [](const Graphed& x, const Graphed& y) { return x.used < y.used; });
        graph_free(*old);
        graphs_.erase(old);
    }
    Graphed g;
    g.n = b.n, g.h = b.h, g.w = b.w, g.rh = rh, g.rw = rw, g.amp = amp, g.recompute = recompute;
    g.input = input.t.data;
    std::copy(arenas, arenas + 4, g.arenas);
    g.used = graph_uses_;
    graphs_.push_back(g);
    return graphs_.back();
}

// cudaFree waits for the device: no queued replay still uses the buffer or the graph.
void TrainStep::graph_free(Graphed& g) {
    if (g.dev) device_free(g.dev);
    graph_destroy(g.graph);
    g.dev = nullptr, g.graph = nullptr, g.seed = nullptr;
}

// A step of a shape seen before (cuda_graph): the target lists packed and uploaded into G's buffer (capturing again
// when they outgrow it), the seed uploaded, and G's graph launched, captured first when there is none.
LossItems TrainStep::graph_step(Ctx& c, Graphed& G, const Batch& b, const Var& input, const Tensor& t, bool amp_dev,
                                double* items_pinned) {
    const int na = (int)anchors_.dim(1), nl = (int)G.ny.size();
    const LossPacked P =
        pack_loss_targets(t.ptr<float>(), (int)t.dim(0), anchors_host_.data(), na, b.n, model.nc, G.ny, G.nx, hyp);
    const bool capture = !G.graph || !loss_fits(P, G.loss.layout);
    if (capture) {  // room for twice the batch's lists (at least 64), never less than before
        int cap_t[kLossMaxLevels], cap_g[kLossMaxLevels];
        auto grow = [](int n, int had) {
            int cap = std::max(64, had);
            while (cap < 2 * n) cap *= 2;
            return cap;
        };
        for (int i = 0; i < nl; ++i) {
            cap_t[i] = grow(P.n[i], G.graph ? G.loss.layout.cap_t[i] : 0);
            cap_g[i] = grow(P.groups[i], G.graph ? G.loss.layout.cap_g[i] : 0);
        }
        graph_free(G);
        G.loss.layout = loss_layout(nl, cap_t, cap_g);
        const size_t items_at = (G.loss.layout.bytes + 15) / 16 * 16;
        const size_t seed_at = items_at + kLossItemsDoubles * sizeof(double);
        G.dev = device_alloc(seed_at + 16, "CUDA graph's loss targets");
        G.loss.targets = static_cast<const char*>(G.dev);
        G.loss.items = reinterpret_cast<double*>(static_cast<char*>(G.dev) + items_at);
        G.seed = reinterpret_cast<float*>(static_cast<char*>(G.dev) + seed_at);
    }
    const std::vector<char> buf = loss_buffer(P, G.loss.layout);
    copy_host_to_device_staged(G.dev, buf.data(), buf.size(), c.cuda);
    if (!amp_dev) {  // Tape::seed's value, rounded to the root's f32
        const float sd = (float)((amp ? scaler.loss_scale() : 1.0) * loss_gain);
        copy_host_to_device_staged(G.seed, &sd, sizeof sd, c.cuda);
    }
    if (capture) {
        const Tensor seed(G.seed, Shape{1}, DType::F32, Device::CUDA);
        capture_begin(c.cuda);
        c.loss_fixed = &G.loss;
        try {
            bool finite = true;
            forward_backward(c, input, t, true, amp_dev, amp_dev ? nullptr : &seed, {}, &finite, nullptr, nullptr);
            c.loss_fixed = nullptr;
            G.graph = capture_end(c.cuda);
        } catch (...) {
            c.loss_fixed = nullptr;
            capture_abandon(c.cuda);
            throw;
        }
        ++graph_captures;
    } else {
        ++graph_replays;
    }
    graph_launch(G.graph, c.cuda);
    copy_device_to_host_async(items_pinned, G.loss.items, (size_t)(4 + 3 * nl) * sizeof(double), c.cuda);
    return loss_items_counts(P, b.n, na, G.ny, G.nx);  // the sums arrive with collect()
}

StepResult TrainStep::run(Ctx& c, const Batch& b, int64_t ni, int accumulate, const SgdGroup groups[3],
                          const std::function<void()>& mark) {
    const bool piped = pipelined && c.cuda && model.params.device() == Device::CUDA;
    if (queued_ == 2 && !q_[head_].piped) head_ = (head_ + 1) % 2, --queued_;  // whole already: needs no collect()
    Y5_CHECK(queued_ < 2, "TrainStep::run: two pipelined steps not collected yet");
    auto stamp = [&] {
        if (mark) mark();
    };
    // Mixed precision with SGD keeps the scaler on the device as well (Adam's step count stays on the host, so its
    // unscale waits for the inf/NaN flag).
    const bool amp_dev = piped && amp && optimizer.kind == OptimizerKind::SGD;
    if (amp_dev && !amp_dev_) amp_dev_ = static_cast<AmpState*>(device_alloc(sizeof(AmpState) + 16, "loss scaler"));
    if (amp_dev && queued_ == 0) {  // nothing in flight: the host's scaler is current (set, loaded, or collected)
        const AmpState h{scaler.loss_scale(), scaler.growth_tracker(), 0, 0};
        copy_host_to_device_staged(amp_dev_, &h, sizeof h, c.cuda);
    }
    Queued& q = q_[(head_ + queued_) % 2];
    q.r = StepResult{};
    q.piped = piped, q.amp_dev = amp_dev;
    StepResult& r = q.r;
    if (piped && !q.pinned) {
        q.pinned = static_cast<double*>(host_alloc_pinned(kPinnedDoubles * sizeof(double)));
        Y5_CHECK(q.pinned, "TrainStep: no page-locked host memory for the pipelined step");
        q.done = event_create();
    }
    double* items_pinned = piped ? q.pinned : nullptr;
    c.tape->clear();
    c.act->reset();
    c.autocast = amp;
    c.recompute = recompute;
    c.loss_items_pinned = items_pinned;
    const Tensor x = piped ? upload_images(c, b) : batch_images(c, b), t = batch_targets(b);
    Var input;
    if (resize_h > 0 && (resize_h != b.h || resize_w != b.w)) {
        // The batch resized into a new activation tensor; x stays in the arena until the step's reset (the memory
        // plan counts it), so under recomputation the resized copy is rebuilt from it (Tape::rebuildable).
        const Tensor y = c.act->tensor(Shape{x.shape[0], 3, resize_h, resize_w});
        resize_images(c, y, x);
        input = c.recompute ? c.tape->rebuildable(y, [&c, x](Tensor dst) { resize_images(c, dst, x); })
                            : Tape::constant(y);
    } else {
        input = train_input(c, b, x, piped ? upload_ : nullptr);
    }
    if (piped) event_record(converted_, c.cuda);  // the upload buffer's last reader is queued: the next batch may come
    stamp();
    bool finite = true;
    if (piped && cuda_graph) {
        Graphed& G = graph_for(c, b, input);
        if (G.ny.empty()) {  // the shape's first step runs as it is, finding the maps' grids and cuDNN's algorithms
            r.items = forward_backward(c, input, t, piped, amp_dev, nullptr, mark, &finite, &G.ny, &G.nx);
        } else {
            r.items = graph_step(c, G, b, input, t, amp_dev, items_pinned);
            stamp(), stamp();  // where the loss and the backward would have stamped
        }
    } else {
        r.items = forward_backward(c, input, t, piped, amp_dev, nullptr, mark, &finite, nullptr, nullptr);
    }
    c.loss_items_pinned = nullptr;
    ++queued_;
    r.finite = finite;
    if (!r.finite) return r;
    if (ni - last_opt_step >= accumulate) {
        r.stepped = true;
        if (amp_dev) scaler.unscale_on_device(model.params, amp_dev_);
        else r.skipped = amp && scaler.unscale(model.params);
        r.grad_norm = clip_grad_norm(model.params, 10.0, items_pinned ? items_pinned + kLossItemsDoubles : nullptr);
        stamp();
        if (amp_dev) {  // SGD changes nothing when found_inf is set; the scaler's new state comes back with the items
            sgd_step(model.params, groups, &amp_dev_->found_inf);
            scaler.update_on_device(amp_dev_, c.cuda);
            copy_device_to_host_async(items_pinned + kLossItemsDoubles + 1, amp_dev_, sizeof(AmpState), c.cuda);
        } else {
            if (!r.skipped) optimizer.step(model.params, groups);
            if (amp) scaler.update(r.skipped);
        }
        model.params.zero_grad(c.cuda);
        stamp();
        ema_update(ema.params, model.params, ema_decay(++updates));
        stamp();
        last_opt_step = ni;
    }
    if (piped) {
        event_record(q.done, c.cuda);
        event_wait(uploaded_);  // b's images have left: the loader may refill b
    }
    return r;
}

StepResult TrainStep::collect() {
    Y5_CHECK(queued_ > 0, "TrainStep::collect: no step queued");
    Queued& q = q_[head_];
    head_ = (head_ + 1) % 2, --queued_;
    if (q.piped) {
        event_wait(q.done);
        loss_items_arrived(q.r.items, q.pinned);
        q.r.finite = std::isfinite(q.r.items.total);
        if (q.r.stepped) q.r.grad_norm = q.pinned[kLossItemsDoubles];
        if (q.r.stepped && q.amp_dev) {  // the device scaler's state after this step: the host's copy follows it
            AmpState h;
            std::memcpy(&h, q.pinned + kLossItemsDoubles + 1, sizeof h);
            q.r.skipped = h.found_inf != 0;
            scaler.set_state(h.scale, h.tracker);
        }
    }
    return q.r;
}

}  // namespace y5
