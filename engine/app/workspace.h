/*
 * The memory of one training step: the activation, scratch and activation-gradient arenas and the tape
 * over them (Workspace), sized from a measuring pass of one image (measure_step_memory). engine/app/train.cpp
 * sizes its arenas this way; bench/bench_step.cpp reuses both to run the same step outside the loop.
 */
#pragma once
#include <cstddef>
#include <memory>

#include "engine/ops/ops.h"
#include "layers/yolo.h"

namespace y5 {

class Model;

// Activations, scratch and gradients for one batch shape, sized by a measuring pass of one image.
struct Workspace {
    std::unique_ptr<Arena> act, work, grads;
    std::unique_ptr<Tape> tape;
    Ctx ctx;
    void make(Device dev, CudaContext* cuda, size_t act_b, size_t work_b, size_t grad_b) {
        act = std::make_unique<Arena>("activations", dev, act_b);
        work = std::make_unique<Arena>("workspace", dev, work_b);
        grads = std::make_unique<Arena>("activation gradients", dev, grad_b);
        tape = std::make_unique<Tape>(grads.get(), cuda);
        ctx.act = act.get(), ctx.work = work.get(), ctx.tape = tape.get(), ctx.cuda = cuda;
    }
    size_t peak() const { return act->peak() + work->peak() + grads->peak(); }
};

// Peak bytes of one image's training step (forward, loss, backward) at h × w on the model's device (and its
// parameter store's CUDA context): the activation, workspace and activation-gradient arenas. On the GPU the
// workspace peak leaves out cuDNN's workspace (work_bytes_for_batch adds its limit). Leaves the model's gradients zeroed and its values
// (the BN running statistics the training forward updates) as they were.
void measure_step_memory(Model& m, int h, int w, const LossHyp& hyp, size_t* act, size_t* work, size_t* grads);

// The workspace arena for a step on `batch` images (training, or the eval forward of validation) from the
// one-image measure's workspace peak work1. Unlike activations, scratch does not scale simply with the batch:
// CPU conv2d takes one im2col buffer per thread (min(batch, cpu_op_threads()) of them) plus a weight-gradient
// partial per extra thread; a cuDNN pass's workspace depends on the algorithm chosen for the batch's geometry
// but never exceeds conv_workspace_limit(). No op's scratch outlives the op, so the largest single op counts.
size_t work_bytes_for_batch(const Model& m, size_t work1, int batch);

}  // namespace y5
