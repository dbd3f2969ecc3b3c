/*
 * YOLOv5 v7.0's optimisation recipe (train.py, utils/torch_utils.py), on a ParamStore:
 *   3 groups: 0 biases, 1 weights (decayed), 2 BatchNorm weights; nesterov SGD
 *   lf: linear (1 − x/epochs)(1 − lrf) + lrf, or --cos-lr ((1 − cos(xπ/epochs))/2)(lrf − 1) + 1; LambdaLR
 *     stepped after each epoch, so after warmup epoch e trains at lr0·lf(e − 1) (YOLOv5's off-by-one, kept),
 *     and the epoch in which warmup ends keeps the warmup end point lr0·lf(e)
 *   warmup for ni ≤ nw = max(round(warmup_epochs·nb), 100): accumulate = max(1, round(interp(ni, [0, nw],
 *     [1, nbs/bs]))), group lr interp from warmup_bias_lr (group 0) or 0 to initial_lr·lf(epoch), momentum
 *     interp from warmup_momentum to momentum
 *   step when ni − last_opt_step ≥ accumulate; clip_grad_norm(10) before it
 *   EMA: d = 0.9999·(1 − exp(−updates/2000)) over every floating state entry (BN buffers included)
 */
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/autograd/params.h"

namespace y5 {

struct SgdGroup {
    double lr = 0, momentum = 0, weight_decay = 0;
};

// These run where the store lives: the CPU references (f32 or f64), or for a CUDA store (f32) the kernels
// of kernels/sgd.cu on the stream of the context the store was allocated with (asynchronous, except that
// clip_grad_norm copies the norm back).
// One step over the three groups.
void sgd_step(ParamStore& ps, const SgdGroup groups[3]);
// torch.nn.utils.clip_grad_norm_: scales every gradient by min(1, max_norm / (‖g‖₂ + 1e-6)); returns ‖g‖₂.
double clip_grad_norm(ParamStore& ps, double max_norm);
double ema_decay(int64_t updates, double decay = 0.9999, double tau = 2000);
// ema ← d·ema + (1 − d)·model over all values (parameters and buffers); both stores share one layout.
void ema_update(ParamStore& ema, const ParamStore& model, double d);

inline double lf_linear(double epoch, int epochs, double lrf) { return (1 - epoch / epochs) * (1.0 - lrf) + lrf; }
inline double lf_cos(double epoch, int epochs, double lrf) {
    return ((1 - std::cos(epoch * M_PI / epochs)) / 2) * (lrf - 1) + 1;
}

// The per-iteration optimizer settings of train.py for iteration ni of epoch `epoch`.
struct ScheduleState {
    double lr[3], momentum[3];
    int accumulate;
};

class Schedule {
public:
    // nb batches per epoch, batch size bs, nominal batch nbs.
    Schedule(double lr0, double lrf, double momentum, double warmup_epochs, double warmup_momentum,
             double warmup_bias_lr, int epochs, int nb, int bs, bool cos_lr, int nbs = 64);
    double lf(int epoch) const { return cos_ ? lf_cos(epoch, epochs_, lrf_) : lf_linear(epoch, epochs_, lrf_); }
    int warmup_iters() const { return nw_; }
    int initial_accumulate() const { return acc0_; }
    // Settings for iteration ni (= i + nb·epoch) given the accumulate in force before it.
    ScheduleState at(int64_t ni, int epoch, int accumulate) const;

private:
    double lr0_, lrf_, momentum_, warmup_momentum_, warmup_bias_lr_;
    int epochs_, nb_, nw_, acc0_, bs_, nbs_;
    bool cos_;
};

}  // namespace y5
