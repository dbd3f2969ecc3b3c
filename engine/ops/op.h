/*
 * How an op is defined (engine/ops/ops.cpp, and ops above the engine such as the YOLO loss in layers/yolo.cpp).
 * One function per op, read top to bottom:
 *
 *   Var my_op(Ctx& c, const Var& x, int k) {
 *       const char* op = "my_op";
 *       check_rank(op, "input", x.t, 4);                      // argument checks, naming the op and the shapes
 *       check_ctx(op, c, x.t);
 *       const int N = x.t.dim(0), C = x.t.dim(1);
 *       Tensor out = c.act->tensor(Shape{N, C}, x.t.dtype);    // the shape rule
 *       dispatch(op, x.t, [&](auto d) {                        // forward
 *           using T = typename decltype(d)::T;
 *           Y5_CPU_OR_CUDA(my_op_forward, out.ptr<T>(), x.t.ptr<T>(), N, C, k);  // my_op_forward_cuda / _cpu<T>
 *       });
 *       return finish(c, op, out, {&x}, [&c, x, N, C, k](auto d, const Var& y) {   // backward, by value
 *           using T = typename decltype(d)::T;
 *           if constexpr (d.cuda) my_op_backward_cuda(grad_ptr<T>(c, x), c.tape->grad(y).template ptr<T>(), ...);
 *           else my_op_backward_cpu<T>(grad_ptr<T>(c, x), c.tape->grad(y).template ptr<T>(), ...);
 *       });
 *   }
 *
 * Where the two sides differ (the CPU splits work over threads with par(), CUDA takes scratch), the lambda says
 * `if constexpr (d.cuda) ... else ...` itself.
 * dispatch() is the one place that maps (device, dtype) to code; finish() the one place that makes the output
 * Var and records the backward. Only the branch for the device an op runs on is instantiated, so the CUDA
 * launchers (declared in the kernels/ headers, defined in their .cu files) need not exist in a build without
 * CUDA, and no op definition has an #if. Ops with more structure (conv2d's cuDNN workspace, batchnorm's train
 * and eval, the YOLO loss's host targets) keep it inside their own two branches.
 * Adding an op: kernels/<op>.h (CPU reference, launcher declarations) and kernels/<op>.cu (listed in
 * CMakeLists.txt's Y5_CU_KERNELS), its declaration in ops.h and definition in ops.cpp, a test (CPU: gradient
 * check; GPU: against the CPU reference) and a bench case.
 */
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <vector>

#include "engine/core/threadpool.h"
#include "engine/device/device.h"
#include "engine/ops/ops.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// Checks

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

// ----------------------------------------------------------------------------------------------------
// Dispatch

#if Y5_CUDA
constexpr bool kCudaBuild = true;
#else
constexpr bool kCudaBuild = false;
#endif

// What dispatch passes an op's code: the element type T and whether it runs on CUDA (`if constexpr (d.cuda)`).
template <class Elem, bool Cuda> struct On {
    using T = Elem;
    static constexpr bool cuda = Cuda;
};

// dispatch<kF16>: the op has f16 code (mixed precision's activations); plain dispatch rejects f16 tensors.
constexpr bool kF16 = true;

// Runs f(On<T, cuda>{}) for t's device and dtype: CPU f32 → float, CPU f64 → double (gradient checks), CUDA
// f32 → float on the CUDA launchers, and with WithF16 f16 → y5::f16 on either device (the CPU references and the
// CUDA launchers have f16 versions that load and store f16 and compute in float). Any other combination is an
// error naming the op and the tensor.
template <bool WithF16 = false, class F> void dispatch(const char* op, const Tensor& t, F&& f) {
    if (t.device == Device::CPU) {
        switch (t.dtype) {
            case DType::F32: return f(On<float, false>{});
            case DType::F64: return f(On<double, false>{});
            case DType::F16:
                if constexpr (WithF16) return f(On<f16, false>{});
                [[fallthrough]];
            default: Y5_FAIL("%s: dtype %s is not supported by this op: %s", op, dtype_name(t.dtype), t.str().c_str());
        }
    }
    if constexpr (kCudaBuild) {  // discarded without CUDA: f's CUDA branch is then never instantiated
        switch (t.dtype) {
            case DType::F32: return f(On<float, true>{});
            case DType::F16:
                if constexpr (WithF16) return f(On<f16, true>{});
                [[fallthrough]];
            default: Y5_FAIL("%s: CUDA tensors must be f32%s, got %s", op, WithF16 ? " or f16" : "", t.str().c_str());
        }
    } else {
        Y5_FAIL("%s: CUDA tensor %s in a build without CUDA", op, t.str().c_str());
    }
}

inline cudaStream_t stream(Ctx& c) { return cuda_stream(c.cuda); }

// The usual op code, where the CPU reference and the CUDA launcher take the same arguments: name_cuda(args...,
// stream(c)) on CUDA, name_cpu<T>(args...) on the CPU. Written inside dispatch's or finish's lambda, where d, T
// and c (the op's Ctx) are in scope.
#define Y5_CPU_OR_CUDA(name, ...)                                 \
    do {                                                          \
        if constexpr (d.cuda) name##_cuda(__VA_ARGS__, stream(c)); \
        else name##_cpu<T>(__VA_ARGS__);                          \
    } while (0)

// ----------------------------------------------------------------------------------------------------
// Output and backward

inline bool any_grad(std::initializer_list<const Var*> vs) {
    for (const Var* v : vs)
        if (v && v->requires_grad()) return true;
    return false;
}
inline bool any_grad(const std::vector<Var>& vs) {
    for (const Var& v : vs)
        if (v.requires_grad()) return true;
    return false;
}

// The op's output as a Var. It is a tape node when the tape records and `grad` (some input needs a gradient);
// then bwd(d, y) is recorded as its backward: it runs during Tape::backward, only when y received a gradient,
// dispatched on y's device and dtype like the forward. bwd captures by value: it outlives the op's call.
// finish<kF16> for an op whose backward has f16 code.
template <bool WithF16 = false, class B> Var finish(Ctx& c, const char* op, Tensor out, bool grad, B bwd) {
    Var y = c.tape->output(out, grad);
    if (y.requires_grad())
        c.tape->record([&c, op, y, bwd] {
            if (c.tape->has_grad(y)) dispatch<WithF16>(op, y.t, [&](auto d) { bwd(d, y); });
        });
    return y;
}
template <bool WithF16 = false, class B>
Var finish(Ctx& c, const char* op, Tensor out, std::initializer_list<const Var*> inputs, B bwd) {
    return finish<WithF16>(c, op, out, any_grad(inputs), std::move(bwd));
}

template <class T> T* grad_ptr(Ctx& c, const Var& v) {
    return v.requires_grad() ? c.tape->grad(v).template ptr<T>() : nullptr;
}
// grad_ptr through Tape::grad_lazy: where *fresh, the gradient is not zeroed: its first producer writes it (CUDA: beta
// 0) or zeroes its parts before adding to them (the CPU's pieces, each while its part is in cache).
template <class T> T* grad_ptr_lazy(Ctx& c, const Var& v, bool* fresh) {
    *fresh = false;
    return v.requires_grad() ? c.tape->grad_lazy(v, fresh).template ptr<T>() : nullptr;
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


// The CPU convolutions' weight gradients are summed over groups of whole images, each group into its own partial,
// the partials then added in group order: grad_groups(N) = min(N, 8) groups whatever the number of threads, so a
// seeded run gives the same bits with any Y5_THREADS. The threads share the groups: grad_slots(G) =
// min(G, cpu_op_threads()) of them run at once, each with its own scratch (an im2col buffer).
constexpr int kGradGroups = 8;
inline int grad_groups(int N) { return N < kGradGroups ? (N > 1 ? N : 1) : kGradGroups; }
inline int grad_slots(int G) { return G < cpu_op_threads() ? G : cpu_op_threads(); }
// oneDNN f32 on small maps: one image's weight gradient per call is mostly the call's fixed cost (its diff-weights
// written and summed per image; at 6x6 and 3x3 two to four times the arithmetic), so the images go m to a call, m
// enough for kWgradPixels output pixels while the m images' inputs and output gradients stay within
// kWgradGroupFloats: wgrad_groups(N, ...) groups of consecutive images (at most grad_groups(N); fewer only where
// m > 1). They depend on the batch and the layer's geometry alone, as grad_groups.
constexpr int64_t kWgradPixels = 256, kWgradGroupFloats = (int64_t)1 << 18;
// A channel count as oneDNN's blocked layouts pad it (blocks of 16, the AVX-512 block; 8-blocks pad less).
inline int64_t dnnl_padded_channels(int64_t c) { return (c + 15) / 16 * 16; }
inline int wgrad_groups(int N, int64_t in_img, int64_t out_img, int64_t pixels) {
    int64_t m = (kWgradPixels + pixels - 1) / pixels;
    m = m < kWgradGroupFloats / (in_img + out_img) ? m : kWgradGroupFloats / (in_img + out_img);
    if (m <= 1) return grad_groups(N);
    const int G = (int)((N + m - 1) / m);
    return G < grad_groups(N) ? G : grad_groups(N);
}

}  // namespace y5
