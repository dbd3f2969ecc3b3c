#include "engine/core/arena.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "engine/device/device.h"

namespace y5 {

static std::string mib(size_t b) {
    char s[32];
    snprintf(s, sizeof s, "%.1f MiB", b / 1048576.0);
    return s;
}

Arena::Arena(std::string name, Device device, size_t capacity) : name_(std::move(name)), device_(device) {
    capacity_ = (capacity + kAlign - 1) / kAlign * kAlign;
    place_ = Placement(capacity_);
    if (capacity_ == 0) return;
    if (device_ == Device::CPU) {
        base_ = static_cast<char*>(std::aligned_alloc(kAlign, capacity_));
        Y5_CHECK(base_, "arena '%s': cannot allocate %s of host memory", name_.c_str(), mib(capacity_).c_str());
    } else {
        base_ = static_cast<char*>(device_alloc(capacity_, name_.c_str()));
    }
}

Arena::~Arena() {
    if (!base_) return;
    if (device_ == Device::CPU) std::free(base_);
    else device_free(base_);
}

// ----------------------------------------------------------------------------------------------------
// Placement

size_t Placement::alloc(size_t bytes, size_t align, const char* label, int64_t event) {
    if (!tracking_) {
        const size_t start = (used_ + align - 1) & ~(align - 1);
        if (start + bytes > capacity_) return kNoRoom;
        used_ = start + bytes;
        peak_ = std::max(peak_, used_);
        return start;
    }
    // Blocks are whole multiples of kAlign at kAlign offsets, so every hole is aligned for the default.
    bytes = std::max<size_t>((bytes + kAlign - 1) / kAlign * kAlign, kAlign);
    size_t start = kNoRoom;
    for (size_t i = 0; i < free_.size() && align <= kAlign; ++i)
        if (free_[i].bytes >= bytes) {
            start = free_[i].off;
            free_[i].off += bytes, free_[i].bytes -= bytes;
            if (!free_[i].bytes) free_.erase(free_.begin() + i);
            break;
        }
    if (start == kNoRoom) {
        const size_t a = std::max(align, kAlign);
        start = (used_ + a - 1) & ~(a - 1);
        if (start + bytes > capacity_) return kNoRoom;
        if (start > used_) free_.push_back(Block{used_, start - used_});  // the alignment gap, reusable
        used_ = start + bytes;
    }
    const Block b{start, bytes, label, event};
    blocks_.insert(std::upper_bound(blocks_.begin(), blocks_.end(), b,
                                    [](const Block& x, const Block& y) { return x.off < y.off; }), b);
    if (used_ > peak_) {
        peak_ = used_;
        if (snapshots_) peak_blocks_ = blocks_;
    }
    return start;
}

const Placement::Block* Placement::block_at(size_t off) const {
    if (!tracking_) return nullptr;
    auto it = std::upper_bound(blocks_.begin(), blocks_.end(), off, [](size_t o, const Block& b) { return o < b.off; });
    return it != blocks_.begin() && off < (it - 1)->off + (it - 1)->bytes ? &*(it - 1) : nullptr;
}

void Placement::release(size_t off) {
    auto it = std::upper_bound(blocks_.begin(), blocks_.end(), off, [](size_t o, const Block& b) { return o < b.off; });
    Block b = *(it - 1);
    blocks_.erase(it - 1);
    // Into the holes in offset order, merged with a neighbour on either side; a hole that reaches the top lowers it.
    auto f = std::upper_bound(free_.begin(), free_.end(), b.off, [](size_t o, const Block& x) { return o < x.off; });
    if (f != free_.end() && b.off + b.bytes == f->off) b.bytes += f->bytes, f = free_.erase(f);
    if (f != free_.begin() && (f - 1)->off + (f - 1)->bytes == b.off) {
        b.off = (f - 1)->off, b.bytes += (f - 1)->bytes;
        f = free_.erase(f - 1);
    }
    if (b.off + b.bytes == used_) used_ = b.off;
    else free_.insert(f, Block{b.off, b.bytes});
}

void Placement::reset(size_t mark) {
    used_ = mark;
    auto beyond = [mark](const Block& b) { return b.off + b.bytes > mark; };
    blocks_.erase(std::remove_if(blocks_.begin(), blocks_.end(), beyond), blocks_.end());
    free_.erase(std::remove_if(free_.begin(), free_.end(), beyond), free_.end());
}

// ----------------------------------------------------------------------------------------------------
// Arena

void* Arena::alloc(size_t bytes, size_t align) {
    Y5_CHECK(align && (align & (align - 1)) == 0, "arena '%s': alignment %zu is not a power of two", name_.c_str(), align);
    const int64_t event = trace_ ? (int64_t)trace_->size() : -1;
    const size_t start = place_.alloc(bytes, align, label_, event);
    Y5_CHECK(start != Placement::kNoRoom, "arena '%s' overflow: %zu bytes requested with %s of %s used",
             name_.c_str(), bytes, mib(place_.used()).c_str(), mib(capacity_).c_str());
    if (trace_) trace_->push_back(Event{Event::Alloc, bytes, align, -1, label_});
    return base_ + start;
}

Tensor Arena::tensor(Shape shape, DType dtype) {
    return Tensor(alloc(shape.numel() * dtype_size(dtype)), shape, dtype, device_);
}

void Arena::reset(size_t mark) {
    Y5_CHECK(mark <= place_.used(), "arena '%s': reset to %zu beyond the %zu bytes in use", name_.c_str(), mark,
             place_.used());
    place_.reset(mark);
    if (trace_) trace_->push_back(Event{Event::Reset, mark});
}

void Arena::set_tracking(bool on) {
    Y5_CHECK(!on || place_.used() == 0, "arena '%s': tracking starts on an empty arena (%zu bytes in use)",
             name_.c_str(), place_.used());
    place_.set_tracking(on);
    if (trace_) trace_->push_back(Event{Event::Tracking, on ? 1u : 0u});
}

void Arena::set_trace(std::vector<Event>* trace) {
    Y5_CHECK(!trace || place_.used() == 0, "arena '%s': a trace starts on an empty arena (%zu bytes in use)",
             name_.c_str(), place_.used());
    trace_ = trace;
    if (trace_) trace_->push_back(Event{Event::Tracking, place_.tracking() ? 1u : 0u});
}

const Arena::Block* Arena::block_of(const void* p) const {
    const char* q = static_cast<const char*>(p);
    if (!place_.tracking() || q < base_ || q >= base_ + capacity_) return nullptr;
    return place_.block_at((size_t)(q - base_));
}

bool Arena::owns(const void* p) const { return block_of(p) != nullptr; }

void Arena::release(const void* p) {
    const Block* b = block_of(p);
    Y5_CHECK(b, "arena '%s': release of %p, which is not a tracked block", name_.c_str(), p);
    if (poison_ && device_ == Device::CPU) std::memset(base_ + b->off, 0xFF, b->bytes);
    if (trace_) trace_->push_back(Event{Event::Release, 0, 0, b->event});
    place_.release(b->off);
}

// ----------------------------------------------------------------------------------------------------
// Replay

bool replay_peak(const std::vector<Arena::Event>& a, int na, const std::vector<Arena::Event>& b, int nb, int n,
                 size_t* peak, std::vector<Placement::Block>* at_peak) {
    using E = Arena::Event;
    if (a.size() != b.size() || nb <= na || n < na) return false;
    Placement p(Placement::kNoRoom - 1);
    p.set_snapshots(at_peak != nullptr);
    std::vector<size_t> off(a.size(), Placement::kNoRoom);  // per Alloc event: its offset in the replay
    for (size_t i = 0; i < a.size(); ++i) {
        const E &x = a[i], &y = b[i];
        if (x.kind != y.kind || x.align != y.align || x.block != y.block) return false;
        switch (x.kind) {
        case E::Alloc: {
            const size_t grow = (y.bytes - x.bytes) * (size_t)(n - na);
            if (y.bytes < x.bytes || grow % (size_t)(nb - na)) return false;
            off[i] = p.alloc(x.bytes + grow / (size_t)(nb - na), x.align, x.label);
            break;
        }
        case E::Release:
            if (x.block < 0 || (size_t)x.block >= i || off[x.block] == Placement::kNoRoom ||
                !p.block_at(off[x.block]))
                return false;
            p.release(off[x.block]);
            off[x.block] = Placement::kNoRoom;
            break;
        case E::Reset:
            if (x.bytes != 0 || y.bytes != 0) return false;  // a mark within the step has no size at n images
            p.reset(0);
            break;
        case E::Tracking:
            if (x.bytes != y.bytes || (x.bytes && p.used())) return false;
            p.set_tracking(x.bytes != 0);
            break;
        }
    }
    *peak = p.peak();
    if (at_peak) *at_peak = p.peak_blocks();
    return true;
}

}  // namespace y5
