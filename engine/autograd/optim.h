/*
 * YOLOv5 v7.0's optimisation recipe (train.py, utils/torch_utils.py), on a ParamStore:
 *   3 groups: 0 biases, 1 weights (decayed), 2 BatchNorm weights; nesterov SGD, or with --optimizer
 *     torch's Adam (decay as L2 on the gradient) / AdamW (decoupled decay), betas (momentum, 0.999), eps 1e-8
 *   lf: linear (1 − x/epochs)(1 − lrf) + lrf, or --cos-lr ((1 − cos(xπ/epochs))/2)(lrf − 1) + 1; LambdaLR
 *     stepped after each epoch, so after warmup epoch e trains at lr0·lf(e − 1) (YOLOv5's off-by-one, kept),
 *     and the epoch in which warmup ends keeps the warmup end point lr0·lf(e)
 *   warmup for ni ≤ nw = max(round(warmup_epochs·nb), 100): accumulate = max(1, round(interp(ni, [0, nw],
 *     [1, nbs/bs]))), group lr interp from warmup_bias_lr (group 0) or 0 to initial_lr·lf(epoch), momentum
 *     interp from warmup_momentum to momentum
 *   step when ni − last_opt_step ≥ accumulate; clip_grad_norm(10) before it
 *   EMA: d = 0.9999·(1 − exp(−updates/2000)) over every floating state entry (BN buffers included)
 *   GradScaler: torch.cuda.amp.GradScaler's loss scaling for AMP (not used by y5train yet)
 */
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/autograd/params.h"
#include "kernels/sgd.h"

namespace y5 {

struct SgdGroup {
    double lr = 0, momentum = 0, weight_decay = 0;
};

// These run where the store lives: the CPU references (f32 or f64), or for a CUDA store (f32) the kernels
// of kernels/sgd.cu on the stream of the context the store was allocated with (asynchronous, except that
// clip_grad_norm copies the norm back).
// One step over the three groups.
// skip_device (a CUDA store's: a device int32, e.g. AmpState::found_inf): the kernels change nothing when it is set.
void sgd_step(ParamStore& ps, const SgdGroup groups[3], const int32_t* skip_device = nullptr);
// torch.nn.utils.clip_grad_norm_: scales every gradient by min(1, max_norm / (‖g‖₂ + 1e-6)); returns ‖g‖₂.
// With norm_pinned (page-locked host memory) on a CUDA store the host does not wait: the norm arrives there in
// stream order and the return value is 0; on the CPU *norm_pinned is the norm at once.
double clip_grad_norm(ParamStore& ps, double max_norm, double* norm_pinned = nullptr);
// train.py's --optimizer, as smart_optimizer builds it.
enum class OptimizerKind : uint8_t { SGD, Adam, AdamW };
OptimizerKind parse_optimizer(const std::string& name);  // "SGD", "Adam" or "AdamW", as train.py spells them
const char* optimizer_name(OptimizerKind kind);

// The optimizer of a run: SGD (sgd_step, state in the store's momentum block) or Adam/AdamW, whose first moment
// exp_avg is the store's momentum block (SGD's buffer, unused by Adam) and whose second moment exp_avg_sq is a
// block of the same layout that allocate() makes on the store's device. Adam's β1 is hyp momentum, fixed: train.py's
// warmup sets x['momentum'] only in groups that have that key, and Adam's have betas instead, so step() ignores
// the groups' momentum. A default-constructed Optimizer is SGD and needs no allocate().
class Optimizer {
public:
    Optimizer() = default;
    Optimizer(OptimizerKind kind, double beta1);
    void allocate(const ParamStore& ps);  // Adam/AdamW: exp_avg_sq, zeroed (torch's state starts at zeros)
    // One step over the three groups (lr, weight decay, and for SGD momentum, per group); Adam counts it per group.
    void step(ParamStore& ps, const SgdGroup groups[3]);
    Tensor exp_avg_sq_flat() const;                     // Adam/AdamW: the trainable prefix's layout
    Tensor exp_avg_sq(const ParamStore& ps, int i) const;  // the block of trainable parameter i

    OptimizerKind kind = OptimizerKind::SGD;
    double beta1 = 0.937, beta2 = 0.999, eps = 1e-8;
    int64_t steps[3] = {0, 0, 0};  // Adam: torch's state['step'] of each group's tensors (bias correction)

private:
    std::unique_ptr<Arena> exp_avg_sq_;
    int64_t n_ = 0;  // elements of exp_avg_sq (the store's trainable prefix)
    DType dtype_ = DType::F32;
};

double ema_decay(int64_t updates, double decay = 0.9999, double tau = 2000);
// ema ← d·ema + (1 − d)·model over all values (parameters and buffers); both stores share one layout.
void ema_update(ParamStore& ema, const ParamStore& model, double d);

// torch.cuda.amp.GradScaler, the loss scaler of train.py's mixed precision (GradScaler(enabled=amp)), which
// y5train's --amp runs (engine/app/step.h). train.py per optimizer step, after
// scaler.scale(loss).backward() on every batch (the loss times loss_scale()):
//   found_inf = unscale(ps); clip_grad_norm(ps, 10); if (!found_inf) sgd_step(...); update(found_inf);
//   zero the gradients; ema_update (also after a skipped step)
// The state is torch's: the scale as an f32 and an int32 growth tracker (consecutive steps without inf/NaN).
class GradScaler {
public:
    static constexpr float kInitScale = 65536.f;  // 2^16
    static constexpr double kGrowthFactor = 2.0, kBackoffFactor = 0.5;
    static constexpr int kGrowthInterval = 2000;

    explicit GradScaler(float init_scale = kInitScale, double growth_factor = kGrowthFactor,
                        double backoff_factor = kBackoffFactor, int growth_interval = kGrowthInterval);
    float loss_scale() const { return scale_; }
    // torch's inv_scale: the f32 reciprocal computed in double (inf for a scale of 0 or below 2^-128).
    float inv_scale() const { return amp_inv_scale(scale_); }
    // scaler.unscale_: every trainable gradient g = g·inv_scale() (left as is when that is 1); returns whether any
    // gradient was inf or NaN before the multiply (train.py then skips the optimizer step). Runs where the store
    // lives; a CUDA store's flag comes back to the host (one synchronisation).
    bool unscale(ParamStore& ps) const;
    // scaler.update(): found_inf → scale·backoff, tracker 0; else the tracker counts the step and at growth_interval
    // the scale grows by growth_factor (kept when that would be inf), tracker 0. Products in double rounded to f32.
    void update(bool found_inf);
    // The same on the device, without a host wait (the pipelined step, engine/app/step.h): st (device memory)
    // holds the scale and tracker, set from this scaler and read back by its owner; unscale_on_device sets
    // st->found_inf, update_on_device applies update() to st with it.
    void unscale_on_device(ParamStore& ps, AmpState* st) const;
    void update_on_device(AmpState* st, CudaContext* cuda) const;
    // Checkpoint state: state_dict's "scale" and "_growth_tracker" (the factors and the interval are the
    // constructor's; train.py uses torch's defaults, the k constants).
    int32_t growth_tracker() const { return tracker_; }
    void set_state(float scale, int32_t growth_tracker) { scale_ = scale, tracker_ = growth_tracker; }

private:
    float scale_;
    int32_t tracker_ = 0;
    double growth_factor_, backoff_factor_;
    int growth_interval_;
};

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
