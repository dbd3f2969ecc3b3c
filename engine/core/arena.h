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
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace y5 {

// Where an arena's blocks go, apart from any memory (offsets only): a bump pointer, or in tracking mode first fit
// over the released holes. Arena places its allocations with it, and the memory plan replays a measured sequence of
// allocations at another batch size with it (replay_peak).
class Placement {
public:
    static constexpr size_t kAlign = 256;
    static constexpr size_t kNoRoom = SIZE_MAX;
    struct Block {
        size_t off, bytes;
        const char* label = nullptr;  // Arena::set_label's at allocation
        int64_t event = -1;           // the allocation's index in a trace being recorded (Arena::set_trace)
    };
    explicit Placement(size_t capacity) : capacity_(capacity) {}
    // The offset of `bytes` (tracking: rounded up to whole kAlign, at least one), or kNoRoom past the capacity.
    size_t alloc(size_t bytes, size_t align, const char* label = nullptr, int64_t event = -1);
    void release(size_t off);  // the tracked block holding offset `off` (checked by the caller: block_at)
    const Block* block_at(size_t off) const;
    void reset(size_t mark);
    void set_tracking(bool on) { tracking_ = on; }
    void set_snapshots(bool on) { snapshots_ = on; }

    bool tracking() const { return tracking_; }
    size_t used() const { return used_; }
    size_t peak() const { return peak_; }
    size_t capacity() const { return capacity_; }
    const std::vector<Block>& blocks() const { return blocks_; }
    const std::vector<Block>& peak_blocks() const { return peak_blocks_; }

private:
    size_t capacity_, used_ = 0, peak_ = 0;
    bool tracking_ = false, snapshots_ = false;
    std::vector<Block> blocks_, free_;  // both sorted by offset; free_ holds only holes below used_
    std::vector<Block> peak_blocks_;
};

class Arena {
public:
    static constexpr size_t kAlign = Placement::kAlign;

    Arena(std::string name, Device device, size_t capacity_bytes);
    ~Arena();
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;

    void* alloc(size_t bytes, size_t align = kAlign);
    Tensor tensor(Shape shape, DType dtype = DType::F32);

    size_t mark() const { return place_.used(); }
    void reset(size_t mark = 0);

    using Block = Placement::Block;
    void set_tracking(bool on);  // from an empty arena; off keeps the blocks' space until the next reset
    bool tracking() const { return place_.tracking(); }
    // A tracked block back to the arena, by any address inside it (a view's data); untracked memory is an error.
    void release(const void* p);
    bool owns(const void* p) const;  // p inside a tracked block
    const Block* block_of(const void* p) const;  // the tracked block p lies in, or null
    const std::vector<Block>& blocks() const { return place_.blocks(); }  // tracked and not released, in address order
    // Tests (CPU): released blocks are filled with 0xFF bytes (NaN in f16, f32 and f64), so a read of released
    // memory shows in the results.
    void set_poison(bool on) { poison_ = on; }
    // Measuring (bench_step --plan): tracked blocks carry the label current at their allocation (a string that
    // outlives them: Model::forward's row names), and with snapshots on, the blocks live when the peak was reached
    // are kept (peak_blocks()).
    void set_label(const char* label) { label_ = label; }
    const char* label() const { return label_; }
    void set_peak_snapshots(bool on) { place_.set_snapshots(on); }
    const std::vector<Block>& peak_blocks() const { return place_.peak_blocks(); }
    // Recording (the memory plan), from an empty arena: its tracking mode, then every allocation (the bytes asked
    // for), release, reset and tracking switch is appended to *trace until set_trace(nullptr), for replay_peak.
    struct Event {
        enum Kind : uint8_t { Alloc, Release, Reset, Tracking } kind;
        size_t bytes = 0;    // Alloc: asked for; Reset: the mark; Tracking: on or off
        size_t align = 0;    // Alloc
        int64_t block = -1;  // Release: the index of the block's Alloc
        const char* label = nullptr;  // Alloc: set_label's
    };
    void set_trace(std::vector<Event>* trace);

    const std::string& name() const { return name_; }
    Device device() const { return device_; }
    size_t used() const { return place_.used(); }
    size_t capacity() const { return capacity_; }
    size_t peak() const { return place_.peak(); }
    char* base() const { return base_; }

private:
    std::string name_;
    Device device_;
    char* base_ = nullptr;
    size_t capacity_ = 0;
    Placement place_{0};
    bool poison_ = false;
    const char* label_ = nullptr;
    std::vector<Event>* trace_ = nullptr;
};

// The peak an arena would reach running the allocations of trace `a`, recorded at na images, at n ≥ na instead:
// each allocation's bytes extrapolated along the line through its sizes in `a` and in `b` (the same step recorded
// at nb > na images; a batch's tensors are affine in its images), placed as Arena places them (first fit: a larger
// batch may fragment differently, and the replay sees it). False, with nothing known, when the traces differ in
// anything but their sizes, or a size shrinks or does not fall on the line at whole bytes.
// at_peak, if given, receives the blocks live at the peak (with their labels: Event::label).
bool replay_peak(const std::vector<Arena::Event>& a, int na, const std::vector<Arena::Event>& b, int nb, int n,
                 size_t* peak, std::vector<Placement::Block>* at_peak = nullptr);

}  // namespace y5
