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

void* Arena::alloc(size_t bytes, size_t align) {
    Y5_CHECK(align && (align & (align - 1)) == 0, "arena '%s': alignment %zu is not a power of two", name_.c_str(), align);
    if (tracking_) {
        // Blocks are whole multiples of kAlign at kAlign offsets, so every hole is aligned for the default.
        bytes = std::max<size_t>((bytes + kAlign - 1) / kAlign * kAlign, kAlign);
        size_t start = 0;
        bool found = false;
        for (size_t i = 0; i < free_.size() && align <= kAlign; ++i)
            if (free_[i].bytes >= bytes) {
                start = free_[i].off;
                free_[i].off += bytes, free_[i].bytes -= bytes;
                if (!free_[i].bytes) free_.erase(free_.begin() + i);
                found = true;
                break;
            }
        if (!found) {
            start = (used_ + std::max(align, kAlign) - 1) & ~(std::max(align, kAlign) - 1);
            Y5_CHECK(start + bytes <= capacity_, "arena '%s' overflow: %zu bytes requested with %s of %s used",
                     name_.c_str(), bytes, mib(used_).c_str(), mib(capacity_).c_str());
            if (start > used_) free_.push_back(Block{used_, start - used_});  // the alignment gap, reusable
            used_ = start + bytes;
        }
        const Block b{start, bytes, label_};
        blocks_.insert(std::upper_bound(blocks_.begin(), blocks_.end(), b,
                                        [](const Block& x, const Block& y) { return x.off < y.off; }), b);
        if (used_ > peak_) {
            peak_ = used_;
            if (snapshots_) peak_blocks_ = blocks_;
        }
        return base_ + start;
    }
    size_t start = (used_ + align - 1) & ~(align - 1);
    Y5_CHECK(start + bytes <= capacity_, "arena '%s' overflow: %zu bytes requested with %s of %s used",
             name_.c_str(), bytes, mib(used_).c_str(), mib(capacity_).c_str());
    used_ = start + bytes;
    if (used_ > peak_) peak_ = used_;
    return base_ + start;
}

Tensor Arena::tensor(Shape shape, DType dtype) {
    return Tensor(alloc(shape.numel() * dtype_size(dtype)), shape, dtype, device_);
}

void Arena::reset(size_t mark) {
    Y5_CHECK(mark <= used_, "arena '%s': reset to %zu beyond the %zu bytes in use", name_.c_str(), mark, used_);
    used_ = mark;
    auto beyond = [mark](const Block& b) { return b.off + b.bytes > mark; };
    blocks_.erase(std::remove_if(blocks_.begin(), blocks_.end(), beyond), blocks_.end());
    free_.erase(std::remove_if(free_.begin(), free_.end(), beyond), free_.end());
}

void Arena::set_tracking(bool on) {
    Y5_CHECK(!on || used_ == 0, "arena '%s': tracking starts on an empty arena (%zu bytes in use)", name_.c_str(), used_);
    tracking_ = on;
}

const Arena::Block* Arena::block_of(const void* p) const {
    const char* q = static_cast<const char*>(p);
    if (!tracking_ || q < base_ || q >= base_ + capacity_) return nullptr;
    const size_t off = (size_t)(q - base_);
    auto it = std::upper_bound(blocks_.begin(), blocks_.end(), off, [](size_t o, const Block& b) { return o < b.off; });
    return it != blocks_.begin() && off < (it - 1)->off + (it - 1)->bytes ? &*(it - 1) : nullptr;
}

bool Arena::owns(const void* p) const { return block_of(p) != nullptr; }

void Arena::release(const void* p) {
    Y5_CHECK(owns(p), "arena '%s': release of %p, which is not a tracked block", name_.c_str(), p);
    const size_t off = (size_t)(static_cast<const char*>(p) - base_);
    auto it = std::upper_bound(blocks_.begin(), blocks_.end(), off, [](size_t o, const Block& b) { return o < b.off; });
    Block b = *(it - 1);
    blocks_.erase(it - 1);
    if (poison_ && device_ == Device::CPU) std::memset(base_ + b.off, 0xFF, b.bytes);
    // Into the holes in offset order, merged with a neighbour on either side; a hole that reaches the top lowers it.
    auto f = std::upper_bound(free_.begin(), free_.end(), b.off, [](size_t o, const Block& x) { return o < x.off; });
    if (f != free_.end() && b.off + b.bytes == f->off) b.bytes += f->bytes, f = free_.erase(f);
    if (f != free_.begin() && (f - 1)->off + (f - 1)->bytes == b.off) {
        b.off = (f - 1)->off, b.bytes += (f - 1)->bytes;
        f = free_.erase(f - 1);
    }
    if (b.off + b.bytes == used_) used_ = b.off;
    else free_.insert(f, b);
}

}  // namespace y5
