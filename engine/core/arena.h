/*
 * Arena: a bump allocator over one block allocated once (host memory, or device memory through
 * engine/device/device.h). Tensors are views into it and never free; reset() rewinds to a mark, so the
 * training step reuses the same bytes every iteration and never calls malloc/cudaMalloc.
 * Every allocation is aligned (default 256 B, cuDNN/cuBLAS friendly); overflowing is a y5::Error that
 * names the arena and the sizes, so "batch too large" reads as such.
 */
#pragma once
#include <cstddef>
#include <string>

#include "engine/core/tensor.h"

namespace y5 {

class Arena {
public:
    static constexpr size_t kAlign = 256;

    Arena(std::string name, Device device, size_t capacity_bytes);
    ~Arena();
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;

    void* alloc(size_t bytes, size_t align = kAlign);
    Tensor tensor(Shape shape, DType dtype = DType::F32);

    size_t mark() const { return used_; }
    void reset(size_t mark = 0);

    const std::string& name() const { return name_; }
    Device device() const { return device_; }
    size_t used() const { return used_; }
    size_t capacity() const { return capacity_; }
    size_t peak() const { return peak_; }
    char* base() const { return base_; }

private:
    std::string name_;
    Device device_;
    char* base_ = nullptr;
    size_t capacity_ = 0, used_ = 0, peak_ = 0;
};

}  // namespace y5
