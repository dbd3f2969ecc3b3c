/*
 * The GPU tests' shared fixture: one CUDA context, device arenas and a host arena for the whole run,
 * upload/download helpers, the CPU references' context, and compare_op (an op on both devices, forward and
 * backward, in any dtype). Included by the tests/test_gpu*.cpp files of the y5_tests_gpu binary.
 */
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/device/device.h"
#include "engine/ops/ops.h"
#include "tests/test_util.h"

#if Y5_CUDA
#include "kernels/cuda.h"

namespace y5test {

using namespace y5;

struct Gpu {
    CudaContext* cuda = cuda_context_create(0);
    Arena act{"gpu activations", Device::CUDA, size_t(1) << 30};
    Arena work{"gpu workspace", Device::CUDA, size_t(512) << 20};
    Arena grads{"gpu gradients", Device::CUDA, size_t(1) << 30};
    Arena host{"host", Device::CPU, size_t(1) << 30};
    Tape tape{&grads, cuda};
    Ctx ctx;
    Gpu() {
        ctx.act = &act;
        ctx.work = &work;
        ctx.tape = &tape;
        ctx.cuda = cuda;
    }
    ~Gpu() { cuda_context_destroy(cuda); }
    void reset() {
        tape.clear();
        act.reset();
        work.reset();
        grads.reset();
        host.reset();
    }
    Tensor upload(const Tensor& h) {
        Tensor d = act.tensor(h.shape, h.dtype);
        copy(ctx, d, h);
        return d;
    }
    Tensor download(const Tensor& d) {
        Tensor h = host.tensor(d.shape, d.dtype);
        copy(ctx, h, d);
        return h;
    }
};

Gpu& gpu();  // created on first use (tests/test_gpu.cpp)
TestCtx& cpu();  // the CPU references' context, shared by the GPU tests (tests/test_gpu.cpp)

// |gpu − cpu| ≤ atol + rtol·|cpu|.
struct Tol {
    double atol, rtol;
};
constexpr Tol kExact{0, 0};
// BatchNorm's dgamma/dbeta: the CPU sums M terms in double, the GPU in float per block (then double across
// blocks), each from its own saved statistics (float Welford on the GPU, double on the CPU): about 1e-6
// of the sum's √M scale.
inline Tol bn_sum_tol(int64_t M) { return Tol{5e-6 * std::sqrt((double)M) + 1e-5, 1e-5}; }

// An op built from its inputs on either device; `gpu` picks the device's copies of any other tensors it takes
// (BatchNorm's running statistics).
using DevOp = std::function<Var(Ctx&, const std::vector<Var>&, bool gpu)>;

// Runs op on the CPU and on the GPU with the same host inputs (any dtypes: f32, or f16 with f32 parameters), the
// same random starting input gradients (each in its input's dtype) and the same random upstream gradient (in the
// output's dtype); requires both outputs and each gradient in the dtype the CPU gives, then compares the output
// (out_tol) and the gradient of every input with wants_grad (grad_tol[i]). Call gpu().reset() before making inputs.
void compare_op(const std::string& what, const std::vector<Tensor>& inputs, const std::vector<bool>& wants_grad,
                const DevOp& op, Rng& rng, Tol out_tol, const std::vector<Tol>& grad_tol);
// One input, with a gradient.
inline void compare_op1(const std::string& what, const Tensor& x, const DevOp& op, Rng& rng, Tol out_tol, Tol grad_tol) {
    compare_op(what, {x}, {true}, op, rng, out_tol, {grad_tol});
}

}  // namespace y5test

// Tag for cases that take minutes on the emulated device (tests/cudaemu) and milliseconds on a GPU: hidden from a
// plain run of the suite there and run by their tag, in both orders as the rest (CTest gpu_emu_slow_steps_* and
// gpu_emu_slow_rest_*); always run on a GPU.
#if Y5_CUDA_EMU
#define Y5_EMU_SLOW "[.][emu-slow]"
#else
#define Y5_EMU_SLOW "[emu-slow]"
#endif
#endif
