/*
 * The GPU tests' shared fixture: one CUDA context, device arenas and a host arena for the whole run, and
 * upload/download helpers. Included by the tests/test_gpu*.cpp files of the y5_tests_gpu binary.
 */
#pragma once
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

}  // namespace y5test

// Tag for cases that take minutes on the emulated device (tests/cudaemu) and milliseconds on a GPU: hidden from the
// emulated runs in both orders and run there once by their tag (CTest gpu_emu_slow); always run on a GPU.
#if Y5_CUDA_EMU
#define Y5_EMU_SLOW "[.][emu-slow]"
#else
#define Y5_EMU_SLOW "[emu-slow]"
#endif
#endif
