/*
 * The memory plan: the size of every arena a step uses, decided here for every program (y5train's training
 * and validation, y5val, y5detect, bench_step). One image's step is measured on the model's device
 * (measure_one_image: its training forward, loss and backward on throw-away arenas), then scaled to the batch:
 * training's activations and activation gradients exactly, by replaying the step's allocations at the batch's
 * sizes (measured at one and two images: replay_peak, engine/core/arena.h); inference's linearly, with 10 % + 64 MiB
 * of headroom; scratch per op, not per image (work_bytes_for_batch).
 * Activations and their gradients share one arena (as PyTorch's caching allocator pools them): the forward's values
 * peak at its end, before any gradient exists, and the gradients at the backward's end, after the values the
 * backward read were freed, so the one arena needs far less than two arenas sized for the two peaks. check_fits compares a plan with the memory there is before anything is allocated, and
 * Workspace allocates it: the activation, scratch and activation-gradient arenas and the tape over them.
 */
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops/ops.h"
#include "layers/yolo.h"

namespace y5 {

class Model;

// The allocations of a training step in the activation arena (values and gradients), recorded at one and at two
// images: plan_training replays them at the batch's sizes.
struct StepTraces {
    std::vector<Arena::Event> act[2];
};

// Bytes of the two arenas of a step: act, the activations and (training) their gradients; work, scratch. fixed: the
// part of act that does not grow with the batch (under autocast the f16 copies of the convolution weights, made
// once per forward). grads: of act, the activation gradients live at its peak (reporting). traces:
// measure_one_image's.
struct StepMemory {
    size_t act = 0, work = 0, fixed = 0, grads = 0;
    size_t upload = 0;  // a GPU training step's batch upload buffer (TrainStep::reserve_upload), not an arena
    // A measure's (GPU): one image's largest staging (Ctx::staged: Detect's maps before their transpose, the f16
    // concat parts' float sums), which the ops chunk over the images that fit beside cuDNN's workspace; a plan's
    // work holds it once, not per image.
    size_t staged = 0;
    std::shared_ptr<const StepTraces> traces;
    StepMemory(size_t act = 0, size_t work = 0, size_t fixed = 0, size_t grads = 0)
        : act(act), work(work), fixed(fixed), grads(grads) {}
    size_t total() const { return act + work + upload; }
};

// Peak bytes of one image's inference at h × w: the eval forward with the tape off on a tracking activation arena
// (Model::forward's liveness: only the tensors later rows read stay), Detect's decode and, with_loss, validation's
// loss on the maps. Any model state (fused or not, on its device); changes nothing.
StepMemory measure_eval_image(Model& m, int h, int w, const LossHyp& hyp, bool autocast, bool with_loss,
                              std::vector<std::pair<std::string, size_t>>* live_at_peak = nullptr);

// Peak bytes of one image's training step (forward, loss, backward) at h × w on the model's device (and its
// parameter store's CUDA context). On the GPU the scratch peak leaves out cuDNN's workspace and the ops' chunked
// staging (work_bytes_for_batch adds the limit and `staged` once). The input goes through train_input, as the
// training step's does. Leaves the model's gradients zeroed and its values (the BN running statistics the
// training forward updates) as they were. autocast: mixed precision's step (Ctx::autocast, f16 activations).
// recompute: Ctx::recompute's step (BatchNorm + activation outputs dropped after the forward, rebuilt in backward).
// live_at_peak, if given, receives the activation bytes live at the activation peak by what made them (the model's
// row, "input image", "loss", "backward (rebuilt)"), largest first: bench_step names them. The step runs a second
// time at two images for the traces (StepTraces).
StepMemory measure_one_image(Model& m, int h, int w, const LossHyp& hyp, bool autocast = false, bool recompute = true,
                             std::vector<std::pair<std::string, size_t>>* live_at_peak = nullptr);

// The scratch arena for `batch` images from one image's measure (its scratch peak one.work). Unlike activations,
// scratch does not scale simply with the batch: CPU conv2d takes one im2col buffer per thread (min(batch,
// cpu_op_threads()) of them) plus a weight-gradient partial per image group past the first (grad_groups,
// engine/ops/op.h; with oneDNN one per group, in its blocked layout); a cuDNN pass's workspace depends on the
// algorithm chosen for the batch's geometry but never exceeds conv_workspace_limit(), and the staging beside it is
// chunked to fit (one.staged). No op's scratch outlives the op, so the largest single op counts.
size_t work_bytes_for_batch(const Model& m, const StepMemory& one, int batch);

// Training batches of `batch` images from one image's measure at imgsz × imgsz (training batches are square): the
// peaks of its traces replayed at `batch` images, or (traces that differ in more than sizes) the one-image peaks
// scaled linearly with 10 % + 64 MiB of headroom.
StepMemory plan_training(const Model& m, const StepMemory& one, int batch);

// Evaluation forwards (validation with its loss, or detection) of `batch` images from one image's inference
// measure (measure_eval_image) at side × side, side the largest a batch may have; no gradients. nms_bytes: the GPU
// NMS's scratch (nms_scratch_bytes), taken from the work arena after the forward's scratch is free.
StepMemory plan_inference(const Model& m, const StepMemory& one, int batch, size_t nms_bytes);

// Arenas that serve two plans one after the other (y5train's training steps, then its validation on the same,
// idle, arenas): the larger of each.
StepMemory plan_shared(const StepMemory& a, const StepMemory& b);

// The least scratch bytes of the GPU NMS (kernels/nms.h) for `batch` images of at most side × side under p (one image
// per sort group; validation gives it whatever the work arena has free, so larger groups where there is room); 0 on
// the CPU.
size_t nms_scratch_bytes(const Model& m, int side, int batch, const NmsParams& p);

// y5train's arenas: training batches of `batch` at imgsz × imgsz and validation's rect batches of val_batch with
// sides at most imgsz + 32 (ceil(imgsz/32 + 0.5)·32) and its GPU NMS's scratch, one after the other on the same
// arenas (plan_shared). Validation runs its batches in chunks of images (ValOptions::chunk): *val_chunk receives
// the most images of a batch (at most val_batch, at least 1) whose evaluation fits in the training plan, so the
// arenas grow for validation only when one image does not fit. amp: mixed precision for both, as train.py
// validates with half=amp.
// train_side > 0: the training forward's largest side when it is not imgsz (--quad: 2·imgsz; --multi-scale: its
// largest size); resize_from > 0: the side of the loader's batch, kept in the activation arena while the step runs
// on its resized copy (--multi-scale). Validation stays at imgsz.
// The pipelined GPU step's upload buffer (engine/app/step.h) for the loader's uint8 batches of `batch` images at
// side × side; 0 on the CPU.
size_t upload_bytes(const Model& m, int batch, int side);

StepMemory plan_train_run(Model& m, int imgsz, int batch, int val_batch, const LossHyp& hyp, bool amp, bool single_cls,
                          bool recompute = true, int train_side = 0, int resize_from = 0, int* val_chunk = nullptr);

// Validation's plan on training arenas t (plan_train_run's second half): one image's eval measure `one` at side ×
// side scaled to the most images of a val_batch batch (at least 1) whose plan fits in t (or, where one image's plan
// is larger than t, in it and another 64 MiB); *chunk receives that count.
StepMemory plan_validation(const Model& m, const StepMemory& t, const StepMemory& one, int side, int val_batch,
                           bool single_cls, int* chunk);

// A y5::Error when the plans together need more than 90 % of the memory available on dev (the GPU's free memory,
// or MemAvailable on the CPU, where Linux would overcommit and kill the process on first touch); `what` names the
// request ("batch 64 at --imgsz 640") and `lower` the flags that reduce it. available ≥ 0 replaces the reading
// (bytes; a device budget to check a plan against, as the tests do for a 15 GB T4).
void check_fits(Device dev, const std::vector<StepMemory>& plans, const std::string& what, const char* lower,
                int64_t available = -1);
bool plan_fits(Device dev, const std::vector<StepMemory>& plans, int64_t available = -1);  // check_fits's test

// The arenas of one plan and the tape over them: the activation arena tracks (engine/core/arena.h), for the
// inference forward's liveness and training's recomputation, and holds the tape's gradients too.
struct Workspace {
    std::unique_ptr<Arena> act, work;
    std::unique_ptr<Tape> tape;
    Ctx ctx;
    void make(Device dev, CudaContext* cuda, const StepMemory& m) {
        act = std::make_unique<Arena>("activations and gradients", dev, m.act);
        work = std::make_unique<Arena>("workspace", dev, m.work);
        act->set_tracking(true);
        tape = std::make_unique<Tape>(act.get(), cuda);
        ctx.act = act.get(), ctx.work = work.get(), ctx.tape = tape.get(), ctx.cuda = cuda;
    }
    size_t peak() const { return act->peak() + work->peak(); }
};

}  // namespace y5
