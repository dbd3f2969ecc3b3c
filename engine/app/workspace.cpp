/*
 * measure_step_memory: one image's training step on throw-away arenas, to read their peaks (engine/app/workspace.h).
 */
#include "engine/app/workspace.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "engine/device/device.h"
#include "engine/app/val.h"
#include "layers/model.h"

#if Y5_CUDA
#include "kernels/conv2d.h"
#include "layers/yolo.h"
#endif

namespace y5 {

void measure_step_memory(Model& m, int h, int w, const LossHyp& hyp, size_t* act, size_t* work, size_t* grads) {
    const Device dev = m.params.device();
    CudaContext* cuda = m.params.cuda();
    // CPU: reserved address space, of which only the touched pages become memory. CUDA: real allocations,
    // so a share of what is free: act + grads + work = 2.5·big, half of it, leaving the rest to cuDNN's
    // and the runtime's own allocations (a third each, as before, took 83% of the free memory at once).
    size_t big = (size_t)3 << 30, free_b = 0, total_b = 0;
    if (dev == Device::CUDA && device_memory_info(&free_b, &total_b)) big = std::min(big, free_b / 5);
    const size_t work_b = big / 2;
    // The training forward below updates the BN running statistics: keep a host copy of the values and put
    // it back afterwards, so measuring leaves the model as it was (YOLOv5 starts from the initialised stats).
    Ctx hc;
    hc.cuda = cuda;
    const Tensor values = m.params.values_flat();
    std::vector<char> saved(values.bytes());
    const Tensor saved_t(saved.data(), values.shape, values.dtype, Device::CPU);
    copy(hc, saved_t, values);
    Workspace ws;
    ws.make(dev, cuda, big, work_b, big);
#if Y5_CUDA
    // cuDNN's workspace goes to an arena of its own, so the work peak is only the scratch that grows with the
    // batch: counted in it, a one-image algorithm's workspace was multiplied by the batch (4.8 GB for y5val's
    // batch of 32 at 64 px on the emulated device). Whatever algorithm the heuristics pick must fit its arena.
    std::unique_ptr<Arena> conv_ws;
    if (dev == Device::CUDA) {
        conv_ws = std::make_unique<Arena>("cuDNN workspace", dev, conv_workspace_limit() + Arena::kAlign);
        ws.ctx.conv_work = conv_ws.get();
    }
#endif
    // The image goes through batch_images as a training batch does: on the GPU its uint8 upload is scratch
    // in the work arena, which the peak must include.
    Batch b;
    b.n = 1, b.h = h, b.w = w;
    b.images.assign((size_t)3 * h * w, 128);
    Tensor x = batch_images(ws.ctx, b);
    std::vector<float> row = {0, 0, 0.5f, 0.5f, 0.2f, 0.2f};
    Tensor t(row.data(), Shape{1, 6}, DType::F32, Device::CPU);
    Model::Output o = m.forward(ws.ctx, Tape::constant(x), true);
    std::vector<float> anchors_host;
    YoloLoss L = yolo_loss(ws.ctx, o.maps, t, m.loss_anchors(&anchors_host), hyp);
    ws.tape->backward(L.total);
    if (cuda) device_synchronize(cuda);
    *act = ws.act->peak(), *work = ws.work->peak(), *grads = ws.grads->peak();
    m.params.zero_grad(cuda);
    copy(hc, values, saved_t);
    if (cuda) device_synchronize(cuda);
}

size_t work_bytes_for_batch(const Model& m, size_t work1, int batch) {
    const size_t b = (size_t)std::max(batch, 1), margin = (size_t)16 << 20;
    if (m.params.device() == Device::CUDA) {
#if Y5_CUDA
        // cuDNN: at most the limit, whatever the batch. The other ops' scratch (the uint8 batch upload, max-pool
        // argmaxes, BN partial sums, the loss's target lists and objectness targets) grows at most linearly.
        return std::max(conv_workspace_limit(), b * work1) + margin;
#endif
    }
    // CPU conv2d: G = min(batch, threads) im2col buffers, each at most work1 (the largest, at one image, G = 1),
    // and in the backward G − 1 partial weight and bias gradients of the layer.
    const size_t G = std::min(b, (size_t)std::max(cpu_op_threads(), 1));
    size_t partial = 0;
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        if (p.kind == ParamKind::Weight && p.shape.ndim == 4)
            partial = std::max(partial, (size_t)(p.shape.numel() + p.shape[0]) * dtype_size(m.params.dtype()));
    }
    return G * work1 + (G - 1) * partial + margin;
}

}  // namespace y5
