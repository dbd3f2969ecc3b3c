#include "engine/autograd/params.h"

#include <algorithm>
#include <cstring>

#include "engine/core/threadpool.h"
#include "engine/device/device.h"

namespace y5 {

static int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

int ParamStore::add(const std::string& name, Shape shape, ParamKind kind) {
    Y5_CHECK(!allocated(), "parameter '%s' registered after the parameter blocks were allocated", name.c_str());
    Y5_CHECK(find(name) == nullptr, "parameter '%s' registered twice", name.c_str());
    Param p;
    p.name = name;
    p.shape = shape;
    p.kind = kind;
    params_.push_back(p);
    return (int)params_.size() - 1;
}

const Param* ParamStore::find(const std::string& name) const {
    for (const Param& p : params_)
        if (p.name == name) return &p;
    return nullptr;
}

void ParamStore::allocate(Device device, DType dtype, CudaContext* cuda) {
    Y5_CHECK(!allocated(), "parameter blocks allocated twice");
    device_ = device;
    dtype_ = dtype;
    cuda_ = cuda;
    int64_t off = 0;
    const ParamKind order[4] = {ParamKind::Bias, ParamKind::Weight, ParamKind::NormWeight, ParamKind::Buffer};
    for (int g = 0; g < 4; ++g) {  // optimizer groups 0, 1, 2 (trainable), then buffers
        group_begin_[g] = off;
        for (Param& p : params_) {
            if (p.kind != order[g]) continue;
            p.offset = off;
            off = round_up(off + p.shape.numel(), kAlignElems);
        }
    }
    trainable_elems_ = group_begin_[3];
    total_elems_ = off;
    const size_t es = dtype_size(dtype);
    values_ = std::make_unique<Arena>("parameters", device, std::max<int64_t>(total_elems_, 1) * es);
    grads_ = std::make_unique<Arena>("gradients", device, std::max<int64_t>(trainable_elems_, 1) * es);
    momentum_ = std::make_unique<Arena>("momentum", device, std::max<int64_t>(trainable_elems_, 1) * es);
    for (Arena* a : {values_.get(), grads_.get(), momentum_.get()}) {
        a->alloc(a->capacity());  // the whole block; tensors are views at their offsets
        if (device == Device::CPU) std::memset(a->base(), 0, a->capacity());
        else device_memset(a->base(), 0, a->capacity(), cuda);
    }
    if (device == Device::CUDA) {
        scratch_ = std::make_unique<Arena>("optimizer scratch", device, kDeviceScratchBytes);
        device_synchronize(cuda);
    }
    for (Param& p : params_) {
        p.value = Tensor(values_->base() + p.offset * es, p.shape, dtype, device);
        if (p.trainable()) p.grad = Tensor(grads_->base() + p.offset * es, p.shape, dtype, device);
    }
}

Tensor ParamStore::values_flat() const { return Tensor(values_->base(), Shape{total_elems_}, dtype_, device_); }
Tensor ParamStore::trainable_flat() const { return Tensor(values_->base(), Shape{trainable_elems_}, dtype_, device_); }
Tensor ParamStore::grads_flat() const { return Tensor(grads_->base(), Shape{trainable_elems_}, dtype_, device_); }
Tensor ParamStore::momentum_flat() const { return Tensor(momentum_->base(), Shape{trainable_elems_}, dtype_, device_); }

Tensor ParamStore::momentum(int i) const {
    const Param& p = params_[i];
    Y5_CHECK(p.trainable(), "parameter '%s' is a buffer and has no momentum", p.name.c_str());
    return Tensor(momentum_->base() + p.offset * dtype_size(dtype_), p.shape, dtype_, device_);
}

std::vector<std::pair<int64_t, int64_t>> ParamStore::update_ranges(int g) const {
    std::vector<std::pair<int64_t, int64_t>> runs;
    int64_t begin = group_begin_[g];
    std::vector<const Param*> frozen;  // group g's frozen parameters by offset
    for (const Param& p : params_)
        if (p.frozen && p.trainable() && p.offset >= group_begin_[g] && p.offset < group_begin_[g + 1]) frozen.push_back(&p);
    std::sort(frozen.begin(), frozen.end(), [](const Param* a, const Param* b) { return a->offset < b->offset; });
    for (const Param* p : frozen) {
        if (p->offset > begin) runs.emplace_back(begin, p->offset);
        begin = std::min(round_up(p->offset + p->shape.numel(), kAlignElems), group_begin_[g + 1]);
    }
    if (begin < group_begin_[g + 1]) runs.emplace_back(begin, group_begin_[g + 1]);
    return runs;
}

void ParamStore::zero_frozen_grads(CudaContext* cuda) {
    if (!cuda) cuda = cuda_;
    for (const Param& p : params_) {
        if (!p.frozen || !p.trainable()) continue;
        if (device_ == Device::CPU) std::memset(p.grad.data, 0, p.grad.bytes());
        else device_memset(p.grad.data, 0, p.grad.bytes(), cuda);
    }
}

int64_t ParamStore::count(bool trainable_only) const {
    int64_t n = 0;
    for (const Param& p : params_)
        if (!trainable_only || p.trainable()) n += p.shape.numel();
    return n;
}

void ParamStore::zero_grad(CudaContext* cuda) {
    Y5_CHECK(allocated(), "zero_grad before the parameter blocks were allocated");
    // No context given: the store's own. The legacy default stream (a null context) is not ordered with the
    // context's non-blocking stream, so a memset there would race the backward kernels still queued on it.
    if (!cuda) cuda = cuda_;
    if (device_ == Device::CPU) par_zero(grads_->base(), trainable_elems_ * dtype_size(dtype_));
    else device_memset(grads_->base(), 0, trainable_elems_ * dtype_size(dtype_), cuda);
}

}  // namespace y5
