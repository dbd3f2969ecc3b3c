/*
 * Tensor: a non-owning view of memory that an Arena (or the caller) owns.
 * Shape is any rank up to kMaxDims, row-major (NCHW for images, (bs,3,ny,nx,5+nc) for Detect maps).
 * dtype: f32 is the engine's type; f64 runs the CPU references for gradient checks; f16 (kernels/common.h) is
 * mixed precision's storage for activations and their gradients (the ops that accept it say so in ops.h).
 */
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/check.h"
#include "kernels/common.h"

namespace y5 {

enum class DType : uint8_t { F32, F64, F16 };
enum class Device : uint8_t { CPU, CUDA };

inline size_t dtype_size(DType t) { return t == DType::F64 ? 8 : t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F64 ? "f64" : t == DType::F32 ? "f32" : "f16"; }
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<f16>() { return DType::F16; }

constexpr int kMaxDims = 6;

struct Shape {
    int64_t d[kMaxDims] = {0};
    int ndim = 0;

    Shape() = default;
    Shape(std::initializer_list<int64_t> dims) {
        Y5_CHECK((int)dims.size() <= kMaxDims, "tensor rank %d exceeds the maximum %d", (int)dims.size(), kMaxDims);
        for (int64_t v : dims) {
            Y5_CHECK(v >= 0, "negative dimension %lld in shape", (long long)v);
            d[ndim++] = v;
        }
    }
    int64_t operator[](int i) const { return d[i < 0 ? i + ndim : i]; }
    int64_t& operator[](int i) { return d[i < 0 ? i + ndim : i]; }
    int64_t numel() const {
        int64_t n = 1;
        for (int i = 0; i < ndim; ++i) n *= d[i];
        return n;
    }
    bool operator==(const Shape& o) const {
        if (ndim != o.ndim) return false;
        for (int i = 0; i < ndim; ++i)
            if (d[i] != o.d[i]) return false;
        return true;
    }
    bool operator!=(const Shape& o) const { return !(*this == o); }
    std::string str() const {
        std::string s = "(";
        for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
        return s + ")";
    }
};

struct Tensor {
    void* data = nullptr;
    Shape shape;
    DType dtype = DType::F32;
    Device device = Device::CPU;

    Tensor() = default;
    Tensor(void* p, Shape s, DType t = DType::F32, Device dev = Device::CPU)
        : data(p), shape(s), dtype(t), device(dev) {}

    bool defined() const { return data != nullptr || shape.ndim > 0; }
    int ndim() const { return shape.ndim; }
    int64_t dim(int i) const { return shape[i]; }
    int64_t numel() const { return shape.numel(); }
    size_t bytes() const { return (size_t)numel() * dtype_size(dtype); }

    // Typed pointer; checks the dtype so a f64 test tensor is never read as f32.
    template <class T> T* ptr() const {
        Y5_CHECK(dtype == dtype_of<T>(), "tensor %s is %s, read as %s", shape.str().c_str(), dtype_name(dtype),
                 dtype_name(dtype_of<T>()));
        return static_cast<T*>(data);
    }
    // Same memory, new shape with the same element count.
    Tensor view(Shape s) const {
        Y5_CHECK(s.numel() == numel(), "cannot view %s as %s", shape.str().c_str(), s.str().c_str());
        return Tensor(data, s, dtype, device);
    }
    std::string str() const {
        return std::string(dtype_name(dtype)) + shape.str() + "@" + device_name(device);
    }
};

inline bool same_layout(const Tensor& a, const Tensor& b) {
    return a.shape == b.shape && a.dtype == b.dtype && a.device == b.device;
}

}  // namespace y5
