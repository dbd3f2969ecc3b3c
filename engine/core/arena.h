/*
 * Arena: a bump allocator over one block allocated once (host memory, or device memory through
 * engine/device/device.h). Tensors are views into it and never free; reset() rewinds to a mark, so the
 * training step reuses the same bytes every iteration and never calls malloc/cudaMalloc.
 * Every allocation is aligned (default 256 B, cuDNN/cuBLAS friendly); overflowing is a y5::Error that
 * names the arena and the sizes, so "batch too large" reads as such.
 * Tracking (inference with the tape off: Model::forward's liveness): while on, every allocation is a block that
 * release() gives back; later allocations reuse released space (first fit, lowest address first, neighbours
 * coalesced) and releasing the topmost block lowers the top. The peak is then the most bytes live at once, not
 * the sum of every tensor the forward made. On the GPU a released block is reused in stream order, so a later
 * kernel never overwrites what an earlier one still reads. reset() forgets the blocks.
 */
#pragma once
#include <cstddef>
#include <string>
#include <vector>

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

    struct Block {
        size_t off, bytes;
        const char* label = nullptr;  // set_label's at allocation
    };
    void set_tracking(bool on);  // from an empty arena; off keeps the blocks' space until the next reset
    bool tracking() const { return tracking_; }
    // A tracked block back to the arena, by any address inside it (a view's data); untracked memory is an error.
    void release(const void* p);
    bool owns(const void* p) const;  // p inside a tracked block
    const Block* block_of(const void* p) const;  // the tracked block p lies in, or null
    const std::vector<Block>& blocks() const { return blocks_; }  // tracked and not released, in address order
    // Tests (CPU): released blocks are filled with 0xFF bytes (NaN in f16, f32 and f64), so a read of released
    // memory shows in the results.
    void set_poison(bool on) { poison_ = on; }
    // Measuring (bench_step --plan): tracked blocks carry the label current at their allocation (a string that
    // outlives them: Model::forward's row names), and with snapshots on, the blocks live when the peak was reached
    // are kept (peak_blocks()).
    void set_label(const char* label) { label_ = label; }
    void set_peak_snapshots(bool on) { snapshots_ = on; }
    const std::vector<Block>& peak_blocks() const { return peak_blocks_; }

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
    bool tracking_ = false, poison_ = false, snapshots_ = false;
    const char* label_ = nullptr;
    std::vector<Block> blocks_, free_;  // both sorted by offset; free_ holds only holes below used_
    std::vector<Block> peak_blocks_;
};

}  // namespace y5
