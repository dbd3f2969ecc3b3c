/*
 * The training step (engine/app/step.h).
 */
#include "engine/app/step.h"

#include <cmath>

#include "kernels/check.h"
#include "kernels/image.h"
#if Y5_CUDA
#include "kernels/cuda.h"
#endif

namespace y5 {

// --multi-scale: x (n, 3, h, w) resized bilinearly (F.interpolate, align_corners=False) into a new activation
// tensor (n, 3, oh, ow); x stays in the arena until the step's reset (the memory plan counts it).
static Tensor resize_images(Ctx& c, const Tensor& x, int oh, int ow) {
    const int h = (int)x.shape[2], w = (int)x.shape[3];
    Tensor y = c.act->tensor(Shape{x.shape[0], 3, oh, ow});
    if (y.device == Device::CUDA) {
#if Y5_CUDA
        images_resize_bilinear_cuda(y.ptr<float>(), x.ptr<float>(), x.shape[0] * 3, h, w, oh, ow, c.cuda->stream);
#else
        Y5_FAIL("resize_images: CUDA tensor in a build without CUDA");
#endif
    } else {
        images_resize_bilinear_cpu(y.ptr<float>(), x.ptr<float>(), x.shape[0] * 3, h, w, oh, ow);
    }
    return y;
}

TrainStep::TrainStep(Model& model, Model& ema, const LossHyp& hyp) : model(model), ema(ema), hyp(hyp) {
    anchors_ = model.loss_anchors(&anchors_host_);
}

StepResult TrainStep::run(Ctx& c, const Batch& b, int64_t ni, int accumulate, const SgdGroup groups[3],
                          const std::function<void()>& mark) {
    auto stamp = [&] {
        if (mark) mark();
    };
    StepResult r;
    c.tape->clear();
    c.act->reset();
    c.autocast = amp;
    c.recompute = recompute;
    Tensor x = batch_images(c, b), t = batch_targets(b);
    if (resize_h > 0 && (resize_h != b.h || resize_w != b.w)) x = resize_images(c, x, resize_h, resize_w);
    stamp();
    std::function<void(size_t)> layer_done;
    if (mark) layer_done = [&](size_t) { mark(); };
    Model::Output out = model.forward(c, Tape::constant(x), true, nullptr, layer_done);
    YoloLoss L = yolo_loss(c, out.maps, t, anchors_, hyp);
    r.items = L.items;
    r.finite = std::isfinite(L.items.total);
    if (!r.finite) return r;
    stamp();
    c.tape->backward(L.total, nullptr, (amp ? scaler.loss_scale() : 1.0) * loss_gain);
    stamp();
    if (ni - last_opt_step < accumulate) return r;
    r.stepped = true;
    r.skipped = amp && scaler.unscale(model.params);
    r.grad_norm = clip_grad_norm(model.params, 10.0);
    stamp();
    if (!r.skipped) optimizer.step(model.params, groups);
    if (amp) scaler.update(r.skipped);
    model.params.zero_grad(c.cuda);
    stamp();
    ema_update(ema.params, model.params, ema_decay(++updates));
    stamp();
    last_opt_step = ni;
    return r;
}

}  // namespace y5
