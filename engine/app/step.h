/*
 * One training step of YOLOv5 v7.0's train.py loop, the only one in y5: y5train's loop, bench_step and the GPU
 * model test all run it. For a loader batch: the images uploaded and scaled (batch_images), the model's training
 * forward, the loss, the tape's backward into the model's gradients (which accumulate over batches), and, when
 * the optimizer is due (ni − last_opt_step ≥ accumulate), clip_grad_norm(10), the optimizer (nesterov SGD,
 * or --optimizer's Adam/AdamW) over the three parameter groups, zero_grad and the EMA update with decay
 * ema_decay(updates).
 * Mixed precision (amp, train.py's autocast + GradScaler): the forward under Ctx::autocast, the backward seeded
 * with the loss scale, and at the optimizer step unscale (finding any inf/NaN), the clip, SGD unless a gradient
 * was inf/NaN, the scaler's update, zero_grad and the EMA update (also after a skipped step, as train.py).
 * On a GPU y5train runs it pipelined (TrainStep::pipelined): the host queues a step while the previous one runs.
 */
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/app/val.h"
#include "engine/autograd/optim.h"
#include "engine/data/loader.h"
#include "engine/device/device.h"
#include "layers/model.h"
#include "layers/yolo.h"

namespace y5 {

struct StepResult {
    LossItems items;
    bool finite = true;    // false: the loss is NaN or infinite, and nothing after the loss ran
    bool stepped = false;  // the optimizer ran
    bool skipped = false;  // mixed precision: an inf/NaN gradient at the optimizer step; SGD skipped, scale halved
    double grad_norm = 0;  // the gradients' norm before clipping, when the optimizer ran
};

class TrainStep {
public:
    // model and ema live on one device; hyp is the loss's (train.py's scaled gains).
    TrainStep(Model& model, Model& ema, const LossHyp& hyp);
    ~TrainStep();
    TrainStep(const TrainStep&) = delete;
    TrainStep& operator=(const TrainStep&) = delete;

    // Batch b as iteration ni, on c's arenas (rewound first) and tape. groups: the three groups' lr, momentum and
    // weight decay for this iteration. mark, when set, is called after the upload, after each layer's forward,
    // and after the loss, the backward, the clip, SGD with zero_grad, and the EMA (bench_step's time stamps).
    // The step's result also waits for collect(); without `pipelined` the one returned here is already whole.
    StepResult run(Ctx& c, const Batch& b, int64_t ni, int accumulate, const SgdGroup groups[3],
                   const std::function<void()>& mark = {});
    // The oldest step run() queued and collect() has not returned yet, whole (with `pipelined`, after waiting for
    // the device to finish it). Two are kept: a third run() forgets the older of two steps that ran without
    // `pipelined` (run() returned them whole) and refuses two pipelined ones. in_flight(): how many are kept.
    StepResult collect();
    int in_flight() const { return queued_; }

    // Pipelined (CUDA; y5train sets it): run() queues the step and returns without waiting for the device, so the
    // next step's kernels queue behind it and the GPU never waits for the host. The batch's uint8 images go up on
    // the context's copy stream into a device buffer of their own (the previous step's kernels still running), the
    // loss items and the gradient norm come back into page-locked memory, and run()'s result holds only the counts
    // and `stepped`: the items, `finite`, the norm and `skipped` come with collect(). Mixed precision with SGD runs
    // the scaler on the device (its seed, unscale, inf/NaN flag that SGD obeys, and update; `scaler` follows the
    // device's state at each collect() and is uploaded when no step is in flight); with Adam the unscale still
    // waits for the flag. The host waits only there, and for the copy of b's images before run()
    // returns (b may then be refilled). A non-finite loss is found one step late, after its backward and optimizer
    // step ran (their parameters are not saved: y5train stops at collect()).
    bool pipelined = false;
    // With `pipelined` (--cuda-graph): the device work from the forward through the backward (the model, the loss,
    // the tape's closures) captured as a CUDA graph for each batch shape the second time it comes, and replayed
    // after that: the host then builds only the target lists (uploaded into the graph's own buffer, whose capacity
    // a larger batch of targets grows by capturing again) and the seed, and queues the conversion of the images,
    // the graph, and the optimizer (whose scalars change per iteration) as before. Up to kMaxGraphs shapes are
    // kept (--multi-scale: the least recently used goes). The same bits as without it.
    bool cuda_graph = false;
    static constexpr int kMaxGraphs = 4;
    int graph_captures = 0, graph_replays = 0;  // counts, for tests and bench_step
    // With `pipelined`: the upload buffer sized for batches of up to `bytes` images (b.images.size()) at once,
    // instead of growing at the first larger batch (device memory: the plan counts it, engine/app/memory.h).
    void reserve_upload(Ctx& c, size_t bytes);

    Model& model;
    Model& ema;
    LossHyp hyp;
    int64_t last_opt_step = -1;  // the iteration of the last optimizer step; −1 before the first
    int64_t updates = 0;         // optimizer steps so far (the EMA's update count)
    bool amp = false;            // mixed precision; the scaler's state goes into checkpoints
    bool recompute = true;       // Ctx::recompute: BatchNorm + activation outputs rebuilt in the backward
    double loss_gain = 1;        // the backward's seed factor: 4 under --quad (train.py: loss *= 4.)
    int resize_h = 0, resize_w = 0;  // --multi-scale: the batch resized (bilinear) to this before the forward; 0: as is
    GradScaler scaler;
    Optimizer optimizer;  // SGD unless set (train.cpp's --optimizer); its state goes into checkpoints

private:
    Tensor upload_images(Ctx& c, const Batch& b);
    // The forward from `input`, the loss and, unless it is known not to be finite, the backward into the model's
    // gradients. seed: the backward's seed on the device (a captured step's), else the device scaler's (amp_dev) or
    // scale · loss_gain from the host. *finite false: the loss is not finite and no backward ran. ny, nx: the maps'
    // grids.
    LossItems forward_backward(Ctx& c, const Var& input, const Tensor& t, bool piped, bool amp_dev, const Tensor* seed,
                               const std::function<void()>& mark, bool* finite, std::vector<int>* ny,
                               std::vector<int>* nx);

    // A batch shape's graph (cuda_graph): the key (the batch, its resize, the modes, where the network input and
    // the step's arenas lie),
    // the maps' grids from the step that first saw it, and the graph's device buffer: the loss's targets
    // (loss.layout), its items and the backward's seed.
    struct Graphed {
        int n = 0, h = 0, w = 0, rh = 0, rw = 0;
        bool amp = false, recompute = false;
        const void* input = nullptr;
        const void* arenas[4] = {};
        std::vector<int> ny, nx;
        DeviceGraph* graph = nullptr;
        LossFixed loss;
        void* dev = nullptr;
        float* seed = nullptr;
        int64_t used = 0;
    };
    std::vector<Graphed> graphs_;
    int64_t graph_uses_ = 0;
    Graphed& graph_for(const Ctx& c, const Batch& b, const Var& input);
    LossItems graph_step(Ctx& c, Graphed& G, const Batch& b, const Var& input, const Tensor& t, bool amp_dev,
                         double* items_pinned);
    void graph_free(Graphed& g);

    std::vector<float> anchors_host_;
    Tensor anchors_;  // (nl, na, 2) in grid units, on the host
    // Uncollected steps, oldest at head_. Pipelined: the loss items, the norm and the device scaler's state arrive
    // in `pinned` (page-locked; an allocation per slot, so the host reads one while a copy into the other is queued).
    struct Queued {
        StepResult r;
        bool piped = false, amp_dev = false;  // amp_dev: the scaler ran on the device (its state in `pinned` too)
        double* pinned = nullptr;             // kPinnedDoubles: the loss items, the norm, an AmpState
        DeviceEvent* done = nullptr;  // recorded after the step's last kernel
    };
    static constexpr int kPinnedDoubles = kLossItemsDoubles + 1 + (int)(sizeof(AmpState) / sizeof(double));
    Queued q_[2];
    int head_ = 0, queued_ = 0;
    AmpState* amp_dev_ = nullptr;  // pipelined mixed precision with SGD: the scaler's state, then the backward's seed
    // The upload buffer (device, upload_cap_ bytes); uploaded_ marks the copy stream's copy into it, converted_ the
    // compute stream's last read of it.
    void* upload_ = nullptr;
    size_t upload_cap_ = 0;
    DeviceEvent *uploaded_ = nullptr, *converted_ = nullptr;
};

}  // namespace y5
