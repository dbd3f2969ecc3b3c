/*
 * What an op's definition uses (engine/ops/ops.cpp, and ops defined above the engine such as the YOLO loss in
 * layers/yolo.cpp): argument checks that name the op and the shapes, the device and dtype dispatch, gradient
 * pointers, per-call scratch from the work arena, and the CPU thread pool.
 */
#pragma once
#include <cstdint>
#include <functional>

#include "engine/ops/ops.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// Checks and dispatch

inline void check_rank(const char* op, const char* what, const Tensor& t, int rank) {
    Y5_CHECK(t.data != nullptr, "%s: %s is an undefined tensor", op, what);
    Y5_CHECK(t.ndim() == rank, "%s: %s must have rank %d, got %s", op, what, rank, t.str().c_str());
}

inline void check_same(const char* op, const Tensor& a, const Tensor& b) {
    Y5_CHECK(a.device == b.device, "%s: tensors on different devices: %s and %s", op, a.str().c_str(), b.str().c_str());
    Y5_CHECK(a.dtype == b.dtype, "%s: tensors of different dtypes: %s and %s", op, a.str().c_str(), b.str().c_str());
}

inline void check_ctx(const char* op, Ctx& c, const Tensor& t) {
    Y5_CHECK(c.act && c.tape, "%s: context has no activation arena or tape", op);
    Y5_CHECK(c.act->device() == t.device, "%s: input %s but the activation arena is on %s", op, t.str().c_str(),
             device_name(c.act->device()));
    Y5_CHECK(t.device == Device::CPU || c.cuda, "%s: CUDA input %s but the context has no CUDA context", op,
             t.str().c_str());
}

#if !Y5_CUDA
constexpr const char* kNoCudaBuild = "CUDA tensor in a build without CUDA";
#endif

// True when t is a CUDA tensor: the op then runs its CUDA launchers, which take f32 only. Another dtype, or
// a CUDA tensor in a build without CUDA, is an error naming the op.
inline bool on_cuda(const char* op, const Tensor& t) {
    if (t.device != Device::CUDA) return false;
#if !Y5_CUDA
    Y5_FAIL("%s: %s", op, kNoCudaBuild);
#endif
    Y5_CHECK(t.dtype == DType::F32, "%s: CUDA tensors must be f32, got %s", op, t.str().c_str());
    return true;
}

// Calls f(T{}) with T = float or double according to t's dtype.
template <class F> void with_dtype(const char* op, const Tensor& t, F&& f) {
    if (t.dtype == DType::F32) f(float(0));
    else if (t.dtype == DType::F64) f(double(0));
    else Y5_FAIL("%s: dtype %s is not supported by this op", op, dtype_name(t.dtype));
}

template <class T> T* grad_ptr(Ctx& c, const Var& v) {
    return v.requires_grad() ? c.tape->grad(v).template ptr<T>() : nullptr;
}

// Scratch from the workspace arena for the duration of one call.
struct Scratch {
    Arena* a;
    size_t mark;
    explicit Scratch(Arena* arena) : a(arena), mark(arena ? arena->mark() : 0) {}
    ~Scratch() {
        if (a) a->reset(mark);
    }
    template <class T> T* get(int64_t n) {
        if (n == 0) return nullptr;
        Y5_CHECK(a, "op needs a workspace arena (Ctx::work) for %lld elements", (long long)n);
        return static_cast<T*>(a->alloc(n * sizeof(T)));
    }
};

// fn(begin, end) over disjoint chunks of [0, n) on the CPU threads (cpu_op_threads()); chunks of at least
// min_chunk.
void par(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);
constexpr int64_t kElemChunk = 1 << 15;  // elementwise work below this stays on one thread

}  // namespace y5
