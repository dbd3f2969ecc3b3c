/*
 * The training step (engine/app/step.h).
 */
#include "engine/app/step.h"

#include <cmath>

namespace y5 {

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
    stamp();
    std::function<void(size_t)> layer_done;
    if (mark) layer_done = [&](size_t) { mark(); };
    Model::Output out = model.forward(c, Tape::constant(x), true, nullptr, layer_done);
    YoloLoss L = yolo_loss(c, out.maps, t, anchors_, hyp);
    r.items = L.items;
    r.finite = std::isfinite(L.items.total);
    if (!r.finite) return r;
    stamp();
    c.tape->backward(L.total, nullptr, amp ? scaler.loss_scale() : 1.0);
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
