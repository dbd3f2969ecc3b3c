#include "engine/autograd/tape.h"

#include <cstring>
#include <unordered_map>
#include <vector>

#include "engine/core/threadpool.h"
#include "engine/device/device.h"

namespace y5 {

// A null context would put device work on the legacy default stream, which the context's non-blocking stream
// does not wait for: a race with the kernels, so a CUDA gradient needs the tape's context.
static void check_cuda(const Tensor& t, CudaContext* cuda) {
    Y5_CHECK(t.device == Device::CPU || cuda, "tape: CUDA gradient %s but the tape was made without a CUDA context",
             t.str().c_str());
}

const char kGradLabel[] = "activation gradients";

// A gradient block from the arena, labelled as one; not zeroed (poisoned when asked).
Tensor Tape::new_grad(const Tensor& like) {
    const char* was = arena_->label();
    arena_->set_label(kGradLabel);
    Tensor g = arena_->tensor(like.shape, like.dtype);
    arena_->set_label(was);
    if (poison_) {
        check_cuda(g, cuda_);
        if (g.device == Device::CPU) std::memset(g.data, 0xFF, g.bytes());
        else device_memset(g.data, 0xFF, g.bytes(), cuda_);
    }
    return g;
}

void Tape::zero(Tensor t) {
    check_cuda(t, cuda_);
    zeroed_ += t.bytes();
    if (t.device == Device::CPU) par_zero(t.data, (int64_t)t.bytes());  // serial, ~2 % of a 2-thread step's samples
    else device_memset(t.data, 0, t.bytes(), cuda_);
}

Var Tape::param(Tensor value, Tensor grad) {
    if (!recording_) return Var{value, -1};
    Y5_CHECK(same_layout(value, grad), "parameter %s and its gradient %s differ in layout", value.str().c_str(),
             grad.str().c_str());
    Node n;
    n.value = value, n.grad = grad, n.grad_ready = true;
    nodes_.push_back(n);
    return Var{value, (int)nodes_.size() - 1};
}

Var Tape::leaf(Tensor value) {
    Node n;
    n.value = value;
    nodes_.push_back(n);
    return Var{value, (int)nodes_.size() - 1};
}

Var Tape::output(Tensor value, std::initializer_list<const Var*> inputs) {
    bool any = false;
    for (const Var* v : inputs) any = any || (v && v->requires_grad());
    return output(value, any);
}

Var Tape::output(Tensor value, bool any_input_requires_grad) {
    if (!recording_ || !any_input_requires_grad) return Var{value, -1};
    Var v = leaf(value);
    pending_ = v.id;
    return v;
}

void Tape::record(std::function<void()> backward_fn) {
    Y5_CHECK(recording_, "internal: an op recorded a backward closure while the tape is not recording");
    closures_.push_back(std::move(backward_fn));
    output_of_.push_back(pending_);
    pending_ = -1;
}

Tensor Tape::grad(const Var& v) {
    bool fresh;
    Tensor g = grad_node(v, &fresh);
    if (fresh) zero(g);
    return g;
}

Tensor Tape::grad_lazy(const Var& v, bool* fresh) {
    Tensor g = grad_node(v, fresh);
    if (*fresh) written_ += g.bytes();
    return g;
}

Tensor Tape::grad_node(const Var& v, bool* fresh) {
    Y5_CHECK(v.id >= 0 && v.id < (int)nodes_.size(), "gradient requested for a value that is not on the tape");
    Node& n = nodes_[v.id];
    Y5_CHECK(!n.released, "the gradient of intermediate value %s was released when its op's backward ran",
             n.value.str().c_str());
    *fresh = !n.grad_ready;
    if (*fresh) {
        n.grad = new_grad(n.value);
        n.grad_ready = true;
    }
    return n.grad;
}

Tensor Tape::grad_from(const Var& x, const Var& y) {
    Y5_CHECK(x.id >= 0 && y.id >= 0 && x.id < (int)nodes_.size() && y.id < (int)nodes_.size(),
             "grad_from: a value that is not on the tape");
    Node &nx = nodes_[x.id], &ny = nodes_[y.id];
    Y5_CHECK(!nx.grad_ready && !nx.released, "grad_from: %s already has a gradient", nx.value.str().c_str());
    if (ny.grad_ready && same_layout(nx.value, ny.grad) && arena_->tracking() && arena_->owns(ny.grad.data)) {
        nx.grad = ny.grad;
        ny.grad = Tensor();
        ny.grad_ready = false;
        ny.released = true;
    } else {
        nx.grad = new_grad(nx.value);
    }
    nx.grad_ready = true;
    written_ += nx.grad.bytes();
    return nx.grad;
}

Tensor Tape::grad_over_value(const Var& v) {
    Y5_CHECK(v.id >= 0 && v.id < (int)nodes_.size(), "grad_over_value: a value that is not on the tape");
    Node& n = nodes_[v.id];
    Y5_CHECK(!n.grad_ready && !n.released, "grad_over_value: %s already has a gradient", n.value.str().c_str());
    const int64_t off = (size_t)v.id < block_.size() ? block_[v.id] : -1;
    if (va_ == arena_ && off >= 0 && users_[(size_t)off] == 1 && n.value.data == va_->base() + off) {
        users_.erase((size_t)off);  // the block is the gradient's now, released with it after v's op's backward
        block_[v.id] = -1;
        n.grad = n.value;
    } else {
        n.grad = new_grad(n.value);
    }
    n.grad_ready = true;
    written_ += n.grad.bytes();
    return n.grad;
}

Tape::Node& Tape::node_of(const Var& v, const char* what) {
    Y5_CHECK(v.id >= 0 ? v.id < (int)nodes_.size() : v.id <= -2 && -2 - v.id < (int)consts_.size(),
             "%s: a value that is not on the tape", what);
    return v.id >= 0 ? nodes_[v.id] : consts_[-2 - v.id];
}

Var Tape::rebuildable(Tensor value, std::function<void(Tensor)> fn) {
    if (!recording_) return Var{value, -1};
    Node n;
    n.value = value;
    n.recompute = std::move(fn);
    consts_.push_back(n);
    return Var{value, -1 - (int)consts_.size()};
}

void Tape::set_recompute(const Var& v, std::function<void(Tensor)> fn) {
    Y5_CHECK(v.id >= 0 && v.id < (int)nodes_.size(), "set_recompute: a value that is not on the tape");
    nodes_[v.id].recompute = std::move(fn);
}

void Tape::drop(const Var& v, Arena* values, bool dead) {
    Node& n = node_of(v, "drop");
    if (n.values) return;
    Y5_CHECK(dead || n.recompute, "drop: %s has no recompute function", n.value.str().c_str());
    values->release(n.value.data);
    n.values = values;
    dropped_to_ = values;
}

Tensor Tape::value(const Var& v) {
    if (v.id == -1) return v.t;
    Node& n = node_of(v, "value");
    if (!n.values) return v.t;
    if (!n.rebuilt.defined()) {
        Y5_CHECK(n.recompute, "internal: %s was dropped as dead but a backward reads it", n.value.str().c_str());
        n.rebuilt = n.values->tensor(n.value.shape, n.value.dtype);
        n.recompute(n.rebuilt);
    }
    return n.rebuilt;
}

// The closures in reverse; after each, its output's gradient (and a value it rebuilt) goes back to its arena
// (reused on the GPU in stream order, so a later kernel never overwrites memory an earlier one still reads).
void Tape::run_backward() {
    // Values freed as their ops' backwards run (after drop()): per block of the arena, the nodes whose values lie
    // in it (not dropped ones: their memory went back already). Leaves and nodes without a closure keep theirs.
    va_ = dropped_to_ && dropped_to_->tracking() ? dropped_to_ : nullptr;
    users_.clear();
    block_.assign(nodes_.size(), -1);
    if (va_)
        for (size_t id = 0; id < nodes_.size(); ++id)
            if (const Arena::Block* b = nodes_[id].values ? nullptr : va_->block_of(nodes_[id].value.data)) {
                block_[id] = (int64_t)b->off;
                users_[b->off]++;
            }
    for (size_t i = closures_.size(); i-- > 0;) {
        closures_[i]();
        const int id = output_of_[i];
        if (id >= 0 && nodes_[id].rebuilt.defined()) {  // every reader of a rebuilt value has run
            nodes_[id].values->release(nodes_[id].rebuilt.data);
            nodes_[id].rebuilt = Tensor();
        }
        if (id >= 0) release_value(id);
        if (id < 0 || !nodes_[id].grad_ready) continue;
        Node& n = nodes_[id];
        if (arena_->tracking()) arena_->release(n.grad.data);
        n.grad = Tensor();
        n.grad_ready = false;
        n.released = true;
    }
    va_ = nullptr;
    block_.clear();
    users_.clear();
}

void Tape::release_value(int id) {
    if (!va_ || block_[id] < 0) return;
    if (--users_[(size_t)block_[id]] == 0) va_->release(va_->base() + block_[id]);
    block_[id] = -1;
}

void Tape::value_read(const Var& v) {
    if (v.id >= 0 && (size_t)v.id < block_.size()) release_value(v.id);
}

void Tape::backward(const Var& root, const Tensor* s, double scale) {
    seed(root, s, scale);
    run_backward();
}

void Tape::backward(const std::vector<Var>& roots, const std::vector<Tensor>& seeds) {
    Y5_CHECK(roots.size() == seeds.size(), "backward: %zu roots but %zu seeds", roots.size(), seeds.size());
    for (size_t i = 0; i < roots.size(); ++i) seed(roots[i], &seeds[i]);
    run_backward();
}

void Tape::seed(const Var& root, const Tensor* seed, double scale) {
    Y5_CHECK(root.requires_grad(), "backward: the root does not depend on anything that requires a gradient");
    bool fresh;  // written whole below
    Tensor g = grad_lazy(root, &fresh);
    check_cuda(g, cuda_);
    if (seed) {
        Y5_CHECK(seed->numel() == g.numel() && seed->dtype == g.dtype && seed->device == g.device,
                 "backward: seed %s does not match root %s", seed->str().c_str(), g.str().c_str());
        if (g.device == Device::CPU) std::memcpy(g.data, seed->data, g.bytes());
        else copy_device_to_device(g.data, seed->data, g.bytes(), cuda_);
    } else {
        Y5_CHECK(g.numel() == 1, "backward: root %s is not a scalar; pass a seed gradient", g.str().c_str());
        const double d = scale;
        const float f = (float)scale;
        const f16 h = f32_to_f16(f);
        const void* v = g.dtype == DType::F64 ? (const void*)&d : g.dtype == DType::F32 ? (const void*)&f : &h;
        if (g.device == Device::CPU) std::memcpy(g.data, v, g.bytes());
        else copy_host_to_device_staged(g.data, v, g.bytes(), cuda_);  // no host wait
    }
}

void Tape::clear() {
    nodes_.clear();
    consts_.clear();
    closures_.clear();
    output_of_.clear();
    pending_ = -1;
    dropped_to_ = nullptr;
    arena_->reset();
}

}  // namespace y5
