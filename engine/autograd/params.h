/*
 * ParamStore: every parameter and buffer of a model, by its PyTorch state_dict name, in three
 * contiguous blocks that share one layout:
 *   values    [ trainable tensors ... | buffers (BN running stats) ... ]
 *   grads     [ trainable tensors ... ]          same offsets as values
 *   momentum  [ trainable tensors ... ]          same offsets as values (SGD state)
 * so zeroing all gradients is one memset, and SGD or EMA over all weights is one call / one kernel
 * over a flat range. Register every tensor with add(), then allocate() once.
 * Kinds follow YOLOv5's optimizer groups (smart_optimizer): Bias (group 0, no decay), Weight (group 1,
 * decay), NormWeight (BN weight, group 2, no decay), Buffer (no gradient; EMA still averages it).
 * The trainable prefix is ordered by group, so each optimizer group is one contiguous range.
 */
#pragma once
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "engine/core/arena.h"

namespace y5 {

struct CudaContext;

enum class ParamKind : uint8_t { Bias, Weight, NormWeight, Buffer };

struct Param {
    std::string name;  // state_dict key, e.g. "model.2.cv1.bn.running_var"
    Shape shape;
    ParamKind kind;
    int64_t offset = 0;  // elements from the start of each block
    Tensor value, grad;  // grad undefined for buffers
    // train.py's --freeze (requires_grad False): the optimizer steps skip it (no decay, no momentum, value kept)
    // and its gradient, still computed, is zeroed before the gradient norm (torch: grad None, not in the norm).
    bool frozen = false;
    bool trainable() const { return kind != ParamKind::Buffer; }
};

class ParamStore {
public:
    static constexpr int64_t kAlignElems = 16;  // 64 B between tensors: vector loads never straddle two

    int add(const std::string& name, Shape shape, ParamKind kind);  // returns the index; names are unique
    void allocate(Device device, DType dtype = DType::F32, CudaContext* cuda = nullptr);  // zero-filled

    Param& operator[](int i) { return params_[i]; }
    const Param& operator[](int i) const { return params_[i]; }
    const Param* find(const std::string& name) const;
    int size() const { return (int)params_.size(); }
    bool allocated() const { return values_ != nullptr; }

    // Flat views: values (trainable + buffers), and the trainable prefix of values/grads/momentum.
    Tensor values_flat() const;
    Tensor trainable_flat() const;
    Tensor grads_flat() const;
    Tensor momentum_flat() const;
    Tensor momentum(int i) const;  // the momentum buffer of trainable parameter i
    int64_t trainable_elems() const { return trainable_elems_; }
    // Elements [begin, end) of optimizer group g (0 biases, 1 decayed weights, 2 norm weights) in the blocks.
    std::pair<int64_t, int64_t> group_range(int g) const { return {group_begin_[g], group_begin_[g + 1]}; }
    // The parts of group g the optimizer updates: runs of elements of parameters that are not frozen (the group's
    // whole range, one run, when none is).
    std::vector<std::pair<int64_t, int64_t>> update_ranges(int g) const;
    // Zeroes the gradients of frozen parameters (on cuda's stream; nullptr: the context given to allocate()).
    void zero_frozen_grads(CudaContext* cuda = nullptr);
    int64_t count(bool trainable_only) const;  // parameters as PyTorch counts them (no padding)

    void zero_grad(CudaContext* cuda = nullptr);  // on cuda's stream; nullptr: the context given to allocate()

    // Each Conv followed by a BatchNorm, as ConvBN registers it: the indices of the conv weight and the BN's
    // weight, bias, running mean and running variance (what Model::fuse folds).
    struct ConvBnIndices {
        int w, g, b, rm, rv;
    };
    std::vector<ConvBnIndices> conv_bns;

    // Inference folds (Model::fuse): for parameter i, a Conv's weight, the pair that replaces that Conv and its
    // BatchNorm in an eval forward: weight (K,C,R,S) with the BN scale folded in, and bias (K). The tensors
    // live in the model's own store; `folds` is empty when the model is not fused.
    struct Fold {
        Tensor w, b;
    };
    std::vector<Fold> folds;
    const Fold* fold(int i) const { return i >= 0 && i < (int)folds.size() && folds[i].w.data ? &folds[i] : nullptr; }

    Device device() const { return device_; }
    DType dtype() const { return dtype_; }
    // The context given to allocate(): the CUDA optimizer kernels (engine/autograd/optim.cpp) run on its stream.
    CudaContext* cuda() const { return cuda_; }
    // CUDA stores only: kDeviceScratchBytes of device memory for the optimizer's reductions (clip_grad_norm).
    static constexpr size_t kDeviceScratchBytes = 16 << 10;
    void* device_scratch() const { return scratch_ ? scratch_->base() : nullptr; }

private:
    std::vector<Param> params_;
    int64_t trainable_elems_ = 0, total_elems_ = 0;
    int64_t group_begin_[4] = {0, 0, 0, 0};
    Device device_ = Device::CPU;
    DType dtype_ = DType::F32;
    CudaContext* cuda_ = nullptr;
    std::unique_ptr<Arena> values_, grads_, momentum_, scratch_;
};

}  // namespace y5
