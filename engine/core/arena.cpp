#include "engine/core/arena.h"

#include <cstdlib>

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
}

}  // namespace y5
