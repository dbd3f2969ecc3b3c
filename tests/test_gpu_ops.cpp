/*
 * The CUDA kernels of activation, batchnorm2d, maxpool2d, upsample_nearest, concat, global_avgpool,
 * conv1d_channels, scale_channels, transpose12 and space_to_depth2 against their CPU references, both run
 * in f32 through ops.h and the tape: the output and, with a random upstream gradient, every input gradient.
 * Every gradient buffer starts with random values, so the tests also check that backward accumulates (+=).
 * Shapes: awkward ones (N = 1, C = 1, odd and non-multiple-of-32 sizes, pool windows larger than the
 * input) and yolov5n's at 640 for at least one layer per op, with N = 2.
 * NMS: nms_batch_cuda against nms_image per image, bit for bit and in the same order.
 * Tolerances: exact where the GPU does the same float operations in the same order as the CPU (copies, the
 * order-matched gathers of the max-pool and upsample backwards, single products); 1e-6 abs / 1e-5 rel for
 * element-wise math (the GPU fuses a·b + c into one FMA, the CPU SiLU uses its own exp); looser for
 * reductions, as each case says.
 */
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/batchnorm.h"
#include "kernels/detect.h"
#include "kernels/nms.h"
#include "kernels/pool.h"
#include "layers/yolo.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

namespace {

constexpr Tol kElem{1e-6, 1e-5};

// Tolerance for a float sum of `count` terms of magnitude about 1 against the CPU's: the CPU references of
// conv1d_channels' weight and scale_channels' scale gradients add in float one term after another (error
// up to about count·ε·|sum|, typically √count·ε), the GPU in a tree.
Tol sum_tol(int64_t count) { return Tol{1e-7 * (double)count + 1e-5, 1e-5}; }

// batchnorm2d with YOLOv5's eps and momentum on random x in [lo, hi), γ, β and running statistics, against the
// CPU: the output, dx (when x_grad), dγ, dβ, and the running statistics the call leaves.
void compare_bn(Shape s, double lo, double hi, bool x_grad, bool training, Act act, Rng& rng) {
    Gpu& g = gpu();
    g.reset();
    const int C = (int)s[1];
    const int64_t M = s[0] * s[2] * s[3];
    Tensor x = rand_tensor(g.host, s, DType::F32, rng, lo, hi);
    Tensor gamma = rand_tensor(g.host, {C}, DType::F32, rng, 0.5, 1.5), beta = rand_tensor(g.host, {C}, DType::F32, rng);
    Tensor rm = rand_tensor(g.host, {C}, DType::F32, rng, lo, hi), rv = rand_tensor(g.host, {C}, DType::F32, rng, 0.2, 1.2);
    Tensor cpu_rm = copy_of(g.host, rm), cpu_rv = copy_of(g.host, rv), gpu_rm = g.upload(rm), gpu_rv = g.upload(rv);
    DevOp op = [&](Ctx& c, const std::vector<Var>& v, bool on_gpu) {
        return batchnorm2d(c, v[0], v[1], v[2], on_gpu ? gpu_rm : cpu_rm, on_gpu ? gpu_rv : cpu_rv, training, 1e-3f, 0.03f,
                           act);
    };
    // Training: the output and dx carry the float statistics' error (about 1e-6 relative).
    const Tol elem = training ? Tol{2e-5, 2e-5} : Tol{1e-5, 1e-5};
    compare_op(std::string(training ? "training " : "eval ") + act_name(act) + (x_grad ? "" : ", no dx"), {x, gamma, beta},
               {x_grad, true, true}, op, rng, elem, {elem, bn_sum_tol(M), bn_sum_tol(M)});
    require_close(g.download(gpu_rm), cpu_rm, 1e-6, 1e-5, "running_mean");
    require_close(g.download(gpu_rv), cpu_rv, 1e-6, 1e-5, "running_var");
}

}  // namespace

TEST_CASE("activation and sigmoid CUDA kernels against the CPU reference", "[gpu][ops][activation]") {
    Gpu& g = gpu();
    Rng rng(201);
    const Act kinds[] = {{ActKind::Identity, 0.f}, {ActKind::SiLU, 0.f},      {ActKind::ReLU, 0.f},
                         {ActKind::ReLU6, 0.f},    {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f},
                         {ActKind::Sigmoid, 0.f}};
    // [−8, 8) covers every kink: ReLU's 0, ReLU6's 6, Hardswish's ±3.
    for (Shape s : {Shape{1}, Shape{2, 3, 5, 7}, Shape{1, 3, 33, 65}})
        for (Act a : kinds) {
            g.reset();
            Tensor x = rand_tensor(g.host, s, DType::F32, rng, -8, 8);
            compare_op1(act_name(a), x, [a](Ctx& c, const std::vector<Var>& v, bool) { return activation(c, v[0], a); },
                        rng, kElem, kElem);
        }
    // yolov5n's first Conv at 640 (SiLU after BN), and the sigmoid entry point.
    g.reset();
    Tensor x = rand_tensor(g.host, {2, 16, 320, 320}, DType::F32, rng, -8, 8);
    compare_op1("SiLU (2,16,320,320)", x,
                [](Ctx& c, const std::vector<Var>& v, bool) { return activation(c, v[0], Act{ActKind::SiLU, 0.f}); },
                rng, kElem, kElem);
    g.reset();
    x = rand_tensor(g.host, {2, 255, 20, 20}, DType::F32, rng, -8, 8);
    compare_op1("sigmoid (2,255,20,20)", x, [](Ctx& c, const std::vector<Var>& v, bool) { return sigmoid(c, v[0]); }, rng,
                kElem, kElem);
}

TEST_CASE("batchnorm2d CUDA kernels against the CPU reference", "[gpu][ops][batchnorm]") {
    Rng rng(202);
    struct Case {
        Shape s;
        double lo, hi;   // input range; an offset range checks that the variance does not cancel
        bool x_grad;     // false: the first layer's input, no dx
    };
    const Case cases[] = {
        {{1, 1, 1, 2}, -1, 1, true},        // the fewest values training mode accepts
        {{1, 3, 5, 7}, -1, 1, true},        {{2, 5, 9, 11}, -1, 1, false},   {{3, 1, 33, 31}, -1, 1, true},
        {{4, 8, 40, 40}, 5, 7, true},       // mean 6, std 0.58
        {{2, 16, 320, 320}, -1, 1, true},   // yolov5n's first Conv at 640
        {{2, 256, 20, 20}, -1, 1, true},    // yolov5n's deepest layers
    };
    // The fused activation: none (a plain BN), SiLU (every yolov5n Conv) and, on the small shapes, two others.
    const Act acts[] = {kNoAct, {ActKind::SiLU, 0.f}, {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f}};
    for (const Case& k : cases)
        for (bool training : {true, false})
            for (Act act : acts) {
                if (k.s.numel() > 100000 && act.kind != ActKind::SiLU && act.kind != ActKind::Identity) continue;
                compare_bn(k.s, k.lo, k.hi, k.x_grad, training, act, rng);
            }
}

TEST_CASE("batchnorm2d CUDA saved and running statistics at yolov5n's largest shape", "[gpu][ops][batchnorm]") {
    // The launcher directly, so the saved mean and 1/std can be compared: N·H·W = 64·320·320 values per
    // channel (yolov5n's first layer at batch 64), an awkward small shape, and an offset mean.
    Gpu& g = gpu();
    Rng rng(203);
    struct Case {
        int N, C, H, W;
        double lo, hi;
    };
    for (Case k : {Case{64, 16, 320, 320, -1, 1}, Case{1, 1, 1, 2, -1, 1}, Case{2, 3, 31, 33, 3, 5}}) {
        g.reset();
        const int HW = k.H * k.W;
        Tensor x = rand_tensor(g.host, {k.N, k.C, k.H, k.W}, DType::F32, rng, k.lo, k.hi);
        Tensor gamma = rand_tensor(g.host, {k.C}, DType::F32, rng), beta = rand_tensor(g.host, {k.C}, DType::F32, rng);
        Tensor rm = rand_tensor(g.host, {k.C}, DType::F32, rng), rv = rand_tensor(g.host, {k.C}, DType::F32, rng, 0.5, 1.5);
        Tensor dx = g.upload(x), dgamma = g.upload(gamma), dbeta = g.upload(beta), drm = g.upload(rm), drv = g.upload(rv);
        Tensor dout = g.act.tensor(x.shape), dmean = g.act.tensor({k.C}), dinvstd = g.act.tensor({k.C});
        float* scratch = static_cast<float*>(g.work.alloc(batchnorm_cuda_scratch(k.N, k.C, HW) * sizeof(float)));
        batchnorm_forward_train_cuda(dout.ptr<float>(), dmean.ptr<float>(), dinvstd.ptr<float>(), drm.ptr<float>(),
                                     drv.ptr<float>(), dx.ptr<float>(), dgamma.ptr<float>(), dbeta.ptr<float>(), k.N, k.C,
                                     HW, 1e-3f, 0.03f, kNoAct, scratch, g.cuda->stream);

        Tensor out = g.host.tensor(x.shape), mean = g.host.tensor({k.C}), invstd = g.host.tensor({k.C});
        batchnorm_forward_train_cpu(out.ptr<float>(), mean.ptr<float>(), invstd.ptr<float>(), rm.ptr<float>(),
                                    rv.ptr<float>(), x.ptr<float>(), gamma.ptr<float>(), beta.ptr<float>(), k.N, k.C, HW,
                                    1e-3f, 0.03f, kNoAct);
        INFO("x " << x.shape.str() << " in [" << k.lo << ", " << k.hi << ")");
        require_close(g.download(dmean), mean, 1e-6, 1e-5, "saved mean");
        require_close(g.download(dinvstd), invstd, 1e-6, 1e-5, "saved 1/std");
        require_close(g.download(drm), rm, 1e-6, 1e-5, "running_mean");
        require_close(g.download(drv), rv, 1e-6, 1e-5, "running_var");
        // The output goes into x's host buffer, which the CPU reference is done with: at 64·16·320·320 floats (400 MB)
        // the 1 GiB host arena holds x and out, not a third tensor.
        Tensor got(x.data, x.shape, DType::F32, Device::CPU);
        copy(g.ctx, got, dout);
        require_close(got, out, 2e-5, 2e-5, "output");
    }
}

TEST_CASE("maxpool2d CUDA kernels against the CPU reference", "[gpu][ops][pool]") {
    Gpu& g = gpu();
    Rng rng(204);
    struct Case {
        Shape s;
        int k, stride, pad;
        int values;  // 0: continuous; else values rounded to that many levels, so windows hold ties
        double lo, hi;
    };
    const Case cases[] = {
        {{1, 1, 1, 1}, 1, 1, 0, 0, -1, 1},
        {{1, 3, 2, 3}, 3, 1, 1, 0, -1, 1},         // the window is larger than the input
        {{1, 2, 1, 1}, 3, 1, 1, 0, -2, -1},        // negative values: the padding never wins
        {{1, 2, 3, 4}, 3, 1, 1, 0, -2, -1},
        {{2, 5, 7, 9}, 3, 2, 1, 0, -1, 1},
        {{1, 2, 5, 5}, 2, 2, 0, 0, -1, 1},
        {{2, 3, 11, 13}, 5, 1, 2, 3, -1, 1},       // ties: the gradient goes to the first maximum
        {{1, 3, 9, 7}, 3, 2, 1, 2, -1, 1},
        {{1, 4, 20, 20}, 9, 1, 4, 0, -1, 1},       // SPP's windows
        {{1, 4, 20, 20}, 13, 1, 6, 0, -1, 1},
        {{2, 128, 20, 20}, 5, 1, 2, 0, -1, 1},     // yolov5n's SPPF at 640
    };
    for (const Case& k : cases) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F32, rng, k.lo, k.hi);
        if (k.values)
            for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = std::round(x.ptr<float>()[i] * k.values) / k.values;
        const int kk = k.k, st = k.stride, pd = k.pad;
        // The gradients are exact: each input adds the same outputs' gradients in the CPU's order.
        compare_op1("k" + std::to_string(kk) + " s" + std::to_string(st) + " p" + std::to_string(pd), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return maxpool2d(c, v[0], kk, st, pd); }, rng,
                    kExact, kExact);
    }
}

TEST_CASE("sppf_pool CUDA kernels against the CPU reference", "[gpu][ops][pool][sppf]") {
    Gpu& g = gpu();
    Rng rng(211);
    struct Case {
        Shape s;
        int k, values;  // values: as in the maxpool2d test (0: continuous; else levels, so windows tie)
    };
    const Case cases[] = {
        {{1, 1, 1, 1}, 5, 0},   {{1, 2, 3, 2}, 5, 0},      // windows larger than the plane
        {{2, 3, 7, 9}, 3, 3},   {{1, 5, 11, 13}, 5, 2},    // ties
        {{3, 7, 20, 20}, 5, 0}, {{2, 128, 20, 20}, 5, 0},  // yolov5n's SPPF at 640 (cv1 output)
        {{1, 4, 40, 40}, 5, 4}, {{17, 128, 10, 10}, 5, 0}, // 2176 planes: more than the kernels' 2048 blocks
    };
    for (const Case& k : cases) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F32, rng);
        if (k.values)
            for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = std::round(x.ptr<float>()[i] * k.values) / k.values;
        const int kk = k.k;
        // Exact: both sides route and add the same gradients in the same order.
        compare_op1("sppf k" + std::to_string(kk), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return sppf_pool(c, v[0], kk); }, rng, kExact, kExact);
    }
}

TEST_CASE("upsample_nearest CUDA kernels against the CPU reference", "[gpu][ops][upsample]") {
    Gpu& g = gpu();
    Rng rng(205);
    struct Case {
        Shape s;
        int scale;
    };
    // yolov5n's two Upsamples at 640: (2,128,20,20) and (2,64,40,40).
    for (Case k : {Case{{1, 1, 1, 1}, 2}, Case{{2, 3, 5, 7}, 2}, Case{{1, 2, 3, 3}, 3}, Case{{1, 1, 4, 5}, 1},
                   Case{{2, 128, 20, 20}, 2}, Case{{2, 64, 40, 40}, 2}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F32, rng);
        const int s = k.scale;
        // Exact: each input adds its s×s block in the CPU's order.
        compare_op1("scale " + std::to_string(s), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return upsample_nearest(c, v[0], s); }, rng, kExact,
                    kExact);
    }
}

TEST_CASE("concat CUDA kernels against the CPU reference", "[gpu][ops][concat]") {
    Gpu& g = gpu();
    Rng rng(206);
    struct Case {
        std::vector<Shape> shapes;
        std::vector<bool> grads;
    };
    const Case cases[] = {
        {{{1, 1, 1, 1}, {1, 2, 1, 1}}, {true, true}},
        {{{2, 3, 5, 7}, {2, 1, 5, 7}, {2, 4, 5, 7}}, {true, false, true}},  // a constant in the middle
        {{{2, 64, 40, 40}, {2, 64, 40, 40}}, {true, true}},                  // yolov5n's head at 640
        {{{2, 64, 20, 20}, {2, 64, 20, 20}, {2, 64, 20, 20}, {2, 64, 20, 20}}, {true, true, true, true}},  // SPPF
    };
    for (const Case& k : cases) {
        g.reset();
        std::vector<Tensor> xs;
        for (const Shape& s : k.shapes) xs.push_back(rand_tensor(g.host, s, DType::F32, rng));
        compare_op(std::to_string(xs.size()) + " inputs", xs, k.grads,
                   [](Ctx& c, const std::vector<Var>& v, bool) { return concat(c, v); }, rng, kExact,
                   std::vector<Tol>(xs.size(), kExact));
    }
}

TEST_CASE("global_avgpool CUDA kernels against the CPU reference", "[gpu][ops][pool]") {
    Gpu& g = gpu();
    Rng rng(207);
    // ECA's squeeze in yolov5n-eca at 640: after the P3 C3 (2,64,80,80) and after SPPF (2,256,20,20).
    for (Shape s : {Shape{1, 1, 1, 1}, Shape{3, 2, 1, 1}, Shape{2, 3, 5, 7}, Shape{1, 5, 33, 31}, Shape{2, 64, 80, 80},
                    Shape{2, 256, 20, 20}, Shape{1, 2, 320, 320}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F32, rng);
        // Forward: a float tree against the CPU's double sum, of means about 1/√HW; backward: the same float
        // division and addition as the CPU.
        compare_op1("global_avgpool", x, [](Ctx& c, const std::vector<Var>& v, bool) { return global_avgpool(c, v[0]); },
                    rng, Tol{1e-6, 1e-5}, kExact);
    }
}

// block_reduce's stated order (kernels/cuda_utils.cuh) for a sum over a block of T threads (whole warps): thread
// t adds x[t], x[t + T], ... in turn; within each warp an xor butterfly (o = 16, 8, 4, 2, 1: lane l sets
// v = v + v of lane l ^ o); warp w's result is lane w's value in a second butterfly, lanes past the last warp
// holding 0; thread 0's value is the sum.
float block_sum_in_stated_order(const float* x, int n, int T) {
    auto butterfly = [](std::vector<float> v) {
        for (int o = 16; o > 0; o >>= 1) {
            std::vector<float> w(32);
            for (int l = 0; l < 32; ++l) w[l] = v[l] + v[l ^ o];
            v = w;
        }
        return v[0];
    };
    std::vector<float> part(32, 0.f);
    for (int w = 0; w < T / 32; ++w) {
        std::vector<float> v(32, 0.f);
        for (int l = 0; l < 32; ++l)
            for (int i = 32 * w + l; i < n; i += T) v[l] += x[i];
        part[w] = butterfly(v);
    }
    return butterfly(part);
}

TEST_CASE("block_reduce order: global_avgpool's forward is the stated block sum, bit for bit", "[gpu][ops][reduce]") {
    // global_avgpool_forward_cuda runs one block per plane: out[p] = block_sum(per-thread sums) / HW, with
    // kBlock = 256 threads, or whole warps covering the plane when it is smaller (plane_reduce_block). Values
    // of magnitudes 2^-12 .. 2^12 make a sum's bits depend on its order, so another order fails this test.
    Gpu& g = gpu();
    Rng rng(311);
    for (int HW : {4096, 1000, 80, 32, 7}) {
        g.reset();
        const int N = 2, C = 3, T = HW >= 256 ? 256 : (HW + 31) / 32 * 32;
        Tensor x = g.host.tensor({N, C, 1, HW}, DType::F32);
        float* xp = x.ptr<float>();
        for (int64_t i = 0; i < x.numel(); ++i)
            xp[i] = std::ldexp(rng.uniform(-1.f, 1.f), (int)std::floor(rng.uniform(-12.f, 12.f)));
        Tensor xd = g.upload(x), yd = g.act.tensor({N, C}, DType::F32);
        global_avgpool_forward_cuda(yd.ptr<float>(), xd.ptr<float>(), N, C, HW, g.cuda->stream);
        Tensor y = g.download(yd);
        int differs_from_sequential = 0;
        for (int p = 0; p < N * C; ++p) {
            const float* xs = xp + (int64_t)p * HW;
            const float want = block_sum_in_stated_order(xs, HW, T) / (float)HW;
            float seq = 0.f;
            for (int i = 0; i < HW; ++i) seq += xs[i];
            differs_from_sequential += seq / (float)HW != want;
            INFO("HW " << HW << " plane " << p);
            CHECK(std::memcmp(&y.ptr<float>()[p], &want, sizeof(float)) == 0);
        }
        if (HW >= 1000) CHECK(differs_from_sequential > 0);  // the data tells orders apart
    }
}

TEST_CASE("conv1d_channels CUDA kernels against the CPU reference", "[gpu][ops][eca]") {
    Gpu& g = gpu();
    Rng rng(208);
    struct Case {
        int N, C, k;
        std::vector<bool> grads;
    };
    // ECA's kernel sizes in yolov5n-eca: 3 for 64 channels, 5 for 256.
    for (const Case& c : {Case{1, 1, 1, {true, true}}, Case{1, 4, 5, {true, true}}, Case{2, 17, 3, {true, true}},
                          Case{2, 33, 3, {false, true}}, Case{3, 9, 7, {true, false}}, Case{2, 64, 3, {true, true}},
                          Case{8, 256, 5, {true, true}}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, {c.N, c.C}, DType::F32, rng), w = rand_tensor(g.host, {c.k}, DType::F32, rng);
        compare_op("k " + std::to_string(c.k), {x, w}, c.grads,
                   [](Ctx& ctx, const std::vector<Var>& v, bool) { return conv1d_channels(ctx, v[0], v[1]); }, rng, kElem,
                   {kElem, sum_tol((int64_t)c.N * c.C)});
    }
}

TEST_CASE("scale_channels CUDA kernels against the CPU reference", "[gpu][ops][eca]") {
    Gpu& g = gpu();
    Rng rng(209);
    struct Case {
        Shape s;
        std::vector<bool> grads;
    };
    for (const Case& k : {Case{{1, 1, 1, 1}, {true, true}}, Case{{2, 3, 5, 7}, {true, true}},
                          Case{{1, 5, 33, 31}, {false, true}}, Case{{2, 3, 6, 5}, {true, false}},
                          Case{{2, 64, 80, 80}, {true, true}}, Case{{2, 256, 20, 20}, {true, true}}}) {
        g.reset();
        const int64_t HW = k.s[2] * k.s[3];
        Tensor x = rand_tensor(g.host, k.s, DType::F32, rng), s = rand_tensor(g.host, {k.s[0], k.s[1]}, DType::F32, rng);
        // Forward is one product per element on both sides; ds sums HW products.
        compare_op("scale_channels", {x, s}, k.grads,
                   [](Ctx& c, const std::vector<Var>& v, bool) { return scale_channels(c, v[0], v[1]); }, rng, kExact,
                   {kElem, sum_tol(HW)});
    }
}

TEST_CASE("ECA chain on the GPU against the CPU reference", "[gpu][ops][eca]") {
    // scale_channels(x, σ(conv1d_channels(global_avgpool(x), w))): x feeds two ops, so its gradient adds two
    // paths. yolov5n-eca's P3 ECA at 640.
    Gpu& g = gpu();
    Rng rng(210);
    g.reset();
    Tensor x = rand_tensor(g.host, {2, 64, 80, 80}, DType::F32, rng), w = rand_tensor(g.host, {3}, DType::F32, rng);
    // dw sums 2·64·6400 products through the reductions of both sides; the rest is element-wise.
    compare_op("eca", {x, w}, {true, true},
               [](Ctx& c, const std::vector<Var>& v, bool) {
                   return scale_channels(c, v[0], sigmoid(c, conv1d_channels(c, global_avgpool(c, v[0]), v[1])));
               },
               rng, kElem, {Tol{1e-5, 1e-4}, Tol{1e-3, 1e-4}});
}

TEST_CASE("eca (fused) CUDA kernels against the CPU reference", "[gpu][ops][eca]") {
    // yolov5n-eca's ECAs at 640 (P3 C3 output, SPPF output), k 3 and 5, and awkward shapes (HW under a warp,
    // one channel, k larger than C).
    Gpu& g = gpu();
    Rng rng(213);
    struct Case {
        Shape s;
        int k;
    };
    for (Case k : {Case{{1, 1, 1, 1}, 3}, Case{{3, 2, 3, 5}, 5}, Case{{2, 7, 33, 31}, 3}, Case{{2, 64, 80, 80}, 3},
                   Case{{2, 256, 20, 20}, 5}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F32, rng), w = rand_tensor(g.host, {k.k}, DType::F32, rng);
        compare_op("eca fused " + k.s.str(), {x, w}, {true, true},
                   [](Ctx& c, const std::vector<Var>& v, bool) { return eca(c, v[0], v[1]); }, rng, kElem,
                   {Tol{1e-5, 1e-4}, Tol{1e-3, 1e-4}});
    }
}

TEST_CASE("transpose12 CUDA kernels against the CPU reference", "[gpu][ops][reshape]") {
    Gpu& g = gpu();
    Rng rng(211);
    // Detect at 640 with batch 2: (bs·na, no, ny·nx) for P3 with 80 classes, and P5 with one class.
    for (Shape s : {Shape{1, 1, 1}, Shape{3, 7, 45}, Shape{2, 33, 65}, Shape{1, 64, 32}, Shape{6, 85, 6400},
                    Shape{6, 6, 400}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F32, rng);
        const Shape out{s[0], s[2], s[1]};
        compare_op1("transpose12", x, [=](Ctx& c, const std::vector<Var>& v, bool) { return transpose12(c, v[0], out); },
                    rng, kExact, kExact);
    }
}

TEST_CASE("space_to_depth2 CUDA kernels against the CPU reference", "[gpu][ops][reshape]") {
    Gpu& g = gpu();
    Rng rng(212);
    // Focus (YOLOv5 ≤ v5.0 yamls) at 640 with batch 2.
    for (Shape s : {Shape{1, 1, 2, 2}, Shape{2, 3, 6, 10}, Shape{1, 5, 4, 14}, Shape{2, 3, 640, 640}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F32, rng);
        compare_op1("space_to_depth2", x, [](Ctx& c, const std::vector<Var>& v, bool) { return space_to_depth2(c, v[0]); },
                    rng, kExact, kExact);
    }
}

TEST_CASE("CUDA kernels over more than 65535 planes against the CPU reference", "[gpu][ops][grid]") {
    // Grid y and z stop at 65535 blocks: plane_grid (kernels/cuda_utils.cuh) and transpose_grid cap there and loop
    // over the rest. Every op whose launch takes such a grid gets P > 65535 planes (or images, batches, row tiles)
    // of 1–4 elements, so some blocks walk two planes and the grid-stride step (p += gridDim.y) decides results
    // there. Tolerances as in each op's own test. BatchNorm's channel grids and the per-plane reductions' grid cap
    // elsewhere: the next case.
    Gpu& g = gpu();
    Rng rng(220);
    g.reset();
    // BatchNorm: normalise and dx over N·C = 70002 planes of two values (plane_grid).
    for (bool training : {true, false})
        DYNAMIC_SECTION("batchnorm2d " << (training ? "training" : "eval")) {
            compare_bn(Shape{35001, 2, 1, 2}, -1, 1, true, training, Act{ActKind::SiLU, 0.f}, rng);
        }
    // Max-pool (k 3 over 1×3 planes: windows past the plane on both sides), upsample and global_avgpool's backward.
    SECTION("maxpool2d") {
        compare_op1("maxpool2d", rand_tensor(g.host, {2, 35001, 1, 3}, DType::F32, rng),
                    [](Ctx& c, const std::vector<Var>& v, bool) { return maxpool2d(c, v[0], 3, 1, 1); }, rng, kExact, kExact);
    }
    SECTION("upsample_nearest") {
        compare_op1("upsample_nearest", rand_tensor(g.host, {2, 35001, 1, 1}, DType::F32, rng),
                    [](Ctx& c, const std::vector<Var>& v, bool) { return upsample_nearest(c, v[0], 2); }, rng, kExact, kExact);
    }
    SECTION("global_avgpool") {
        compare_op1("global_avgpool", rand_tensor(g.host, {2, 35001, 1, 3}, DType::F32, rng),
                    [](Ctx& c, const std::vector<Var>& v, bool) { return global_avgpool(c, v[0]); }, rng, Tol{1e-6, 1e-5},
                    kExact);
    }
    SECTION("concat") {  // its grid's y walks the N = 70001 images
        std::vector<Tensor> xs = {rand_tensor(g.host, {70001, 1, 1, 1}, DType::F32, rng),
                                  rand_tensor(g.host, {70001, 2, 1, 1}, DType::F32, rng)};
        compare_op("concat", xs, {true, true}, [](Ctx& c, const std::vector<Var>& v, bool) { return concat(c, v); }, rng,
                   kExact, {kExact, kExact});
    }
    SECTION("scale_channels") {
        compare_op("scale_channels",
                   {rand_tensor(g.host, {2, 35001, 1, 3}, DType::F32, rng), rand_tensor(g.host, {2, 35001}, DType::F32, rng)},
                   {true, true}, [](Ctx& c, const std::vector<Var>& v, bool) { return scale_channels(c, v[0], v[1]); }, rng,
                   kExact, {kElem, sum_tol(3)});
    }
    SECTION("eca fused") {
        compare_op("eca fused",
                   {rand_tensor(g.host, {2, 35001, 1, 3}, DType::F32, rng), rand_tensor(g.host, {3}, DType::F32, rng)},
                   {true, true}, [](Ctx& c, const std::vector<Var>& v, bool) { return eca(c, v[0], v[1]); }, rng, kElem,
                   {Tol{1e-5, 1e-4}, Tol{1e-3, 1e-4}});
    }
    SECTION("space_to_depth2") {  // N·4C = 70008 output planes of one element
        compare_op1("space_to_depth2", rand_tensor(g.host, {2, 8751, 2, 2}, DType::F32, rng),
                    [](Ctx& c, const std::vector<Var>& v, bool) { return space_to_depth2(c, v[0]); }, rng, kExact, kExact);
    }
    // transpose12: 70001 batches (grid z), and 2.1M rows, 65625 row tiles (grid y), forward for (1, R, 1) and
    // backward, whose transpose is the other way round, for (1, 1, R).
    for (Shape s : {Shape{70001, 1, 2}, Shape{1, 2100000, 1}, Shape{1, 1, 2100000}})
        DYNAMIC_SECTION("transpose12 " << s.str()) {
            const Shape out{s[0], s[2], s[1]};
            compare_op1("transpose12", rand_tensor(g.host, s, DType::F32, rng),
                        [=](Ctx& c, const std::vector<Var>& v, bool) { return transpose12(c, v[0], out); }, rng, kExact,
                        kExact);
        }
}

TEST_CASE("CUDA kernels over more than 65535 channels and 524280 reduced planes against the CPU reference",
          "[gpu][ops][grid]" Y5_EMU_SLOW) {
    // The other capped grids: BatchNorm's slice and channel grids (y and x capped at 65535 channels) and the
    // per-plane reductions' plane_reduce_grid (65535·8 blocks). Their blocks shuffle (block_welford, block_sum),
    // which the emulated device runs about 0.3 µs per lane and shuffle: ~3 min for the BatchNorm cases, ~1 min
    // per reduction, so there they run only when asked for (tests/test_gpu.h).
    Gpu& g = gpu();
    Rng rng(221);
    g.reset();
    for (bool training : {true, false})  // C = 65537, two values each: the last two channels come from the loop
        DYNAMIC_SECTION("batchnorm2d " << (training ? "training" : "eval")) {
            compare_bn(Shape{1, 65537, 1, 2}, -1, 1, true, training, Act{ActKind::SiLU, 0.f}, rng);
        }
    SECTION("global_avgpool") {  // forward: one block per plane of 1×2, 524282 planes
        compare_op1("global_avgpool", rand_tensor(g.host, {2, 262141, 1, 2}, DType::F32, rng),
                    [](Ctx& c, const std::vector<Var>& v, bool) { return global_avgpool(c, v[0]); }, rng, Tol{1e-6, 1e-5},
                    kExact);
    }
    SECTION("scale_channels") {  // backward: one block per plane
        compare_op("scale_channels",
                   {rand_tensor(g.host, {2, 262141, 1, 2}, DType::F32, rng), rand_tensor(g.host, {2, 262141}, DType::F32, rng)},
                   {true, true}, [](Ctx& c, const std::vector<Var>& v, bool) { return scale_channels(c, v[0], v[1]); }, rng,
                   kExact, {kElem, sum_tol(2)});
    }
    SECTION("eca fused") {  // the pool's forward and the dz pass: one block per plane
        compare_op("eca fused",
                   {rand_tensor(g.host, {2, 262141, 1, 2}, DType::F32, rng), rand_tensor(g.host, {5}, DType::F32, rng)},
                   {true, true}, [](Ctx& c, const std::vector<Var>& v, bool) { return eca(c, v[0], v[1]); }, rng, kElem,
                   {Tol{1e-5, 1e-4}, Tol{1e-3, 1e-4}});
    }
}

TEST_CASE("CUDA ops take f32 only and say so", "[gpu][ops][errors]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(213);
    Tensor h = rand_tensor(g.host, {1, 2, 4, 4}, DType::F64, rng);
    Var x = Tape::constant(g.upload(h));
    CHECK_THROWS_WITH(activation(g.ctx, x, Act{}), Contains("activation: CUDA tensors must be f32") && Contains("f64"));
    CHECK_THROWS_WITH(maxpool2d(g.ctx, x, 3, 1, 1), Contains("maxpool2d: CUDA tensors must be f32"));
    CHECK_THROWS_WITH(global_avgpool(g.ctx, x), Contains("global_avgpool: CUDA tensors must be f32"));
    CHECK_THROWS_WITH(space_to_depth2(g.ctx, x), Contains("space_to_depth2: CUDA tensors must be f32"));
}
TEST_CASE("Detect decode CUDA kernel against the CPU reference", "[gpu][ops][detect]") {
    Gpu& g = gpu();
    Rng rng(214);
    struct Level {
        int ny, nx;
        float stride;
    };
    // yolov5n's three levels at 640 with nc 80 and batch 2, and an awkward small head (nc 1, odd grids).
    const std::vector<std::vector<Level>> heads = {{{80, 80, 8}, {40, 40, 16}, {20, 20, 32}}, {{5, 7, 8}, {3, 4, 16}, {1, 2, 32}}};
    const int nos[] = {85, 6};
    for (size_t h = 0; h < heads.size(); ++h) {
        g.reset();
        const int bs = 2, na = 3, no = nos[h];
        int64_t total = 0;
        for (const Level& l : heads[h]) total += (int64_t)na * l.ny * l.nx;
        Tensor want = g.host.tensor({bs, total, no}), got = g.act.tensor({bs, total, no});
        Tensor anc = rand_tensor(g.host, {(int64_t)heads[h].size(), na, 2}, DType::F32, rng, 0.5, 6.0);
        Tensor danc = g.upload(anc);
        int64_t offset = 0;
        for (size_t i = 0; i < heads[h].size(); ++i) {
            const Level& l = heads[h][i];
            Tensor m = rand_tensor(g.host, {bs, na, l.ny, l.nx, no}, DType::F32, rng, -6, 6);
            Tensor dm = g.upload(m);
            detect_decode_cpu<float>(want.ptr<float>(), m.ptr<float>(), anc.ptr<float>() + 2 * na * i, l.stride, bs, na,
                                     l.ny, l.nx, no, total, offset);
            detect_decode_cuda(got.ptr<float>(), dm.ptr<float>(), danc.ptr<float>() + 2 * na * i, l.stride, bs, na, l.ny,
                               l.nx, no, total, offset, g.cuda->stream);
            offset += (int64_t)na * l.ny * l.nx;
        }
        // The same float operations in the same order, except that the GPU may fuse p·2 + (g − 0.5) into an FMA
        // and its expf differs from the CPU's by an ulp or two: 1e-6 relative of coordinates up to 640.
        require_close(g.download(got), want, 1e-4, 1e-5, "detect decode");
    }
}

// Decoded predictions (bs, N, 5 + nc) built to stress NMS: boxes in clusters (overlaps), objectness and class
// probabilities on a 1/16 grid (many equal scores, equal best classes), some rows exact copies of the one
// before (equal scores and IoU 1), a share `pass` of rows over obj 0.001 and the rest under it; image 1
// has no candidates at all when bs > 1.
static std::vector<float> nms_predictions(Rng& rng, int bs, int N, int nc, float pass) {
    const int no = nc + 5;
    std::vector<float> p((size_t)bs * N * no);
    for (int b = 0; b < bs; ++b) {
        float cx[16], cy[16];
        for (int k = 0; k < 16; ++k) cx[k] = rng.uniform(40, 600), cy[k] = rng.uniform(40, 600);
        for (int i = 0; i < N; ++i) {
            float* r = &p[((size_t)b * N + i) * no];
            if (i > 0 && rng.uniform() < 0.05f) {
                std::memcpy(r, r - no, no * sizeof(float));
                continue;
            }
            const int k = (int)rng.randint(16);
            r[0] = cx[k] + rng.uniform(-12, 12), r[1] = cy[k] + rng.uniform(-12, 12);
            r[2] = rng.uniform(8, 120), r[3] = rng.uniform(8, 120);
            const bool on = b != 1 && rng.uniform() < pass;
            r[4] = on ? (1 + (float)rng.randint(16)) / 16 : rng.uniform(0, 0.0009f);
            for (int c = 0; c < nc; ++c) r[5 + c] = (float)rng.randint(17) / 16;
        }
    }
    return p;
}

TEST_CASE("NMS on the GPU equals nms_image bit for bit", "[gpu][ops][nms]") {
    Gpu& g = gpu();
    Rng rng(515);
    struct Case {
        const char* name;
        int bs, N, nc;
        float pass;
        NmsParams p;
    };
    auto params = [](float conf, float iou, bool multi, bool agnostic, int max_det, std::vector<int> classes, int max_nms) {
        NmsParams p;
        p.conf_thres = conf, p.iou_thres = iou, p.multi_label = multi, p.agnostic = agnostic, p.max_det = max_det;
        p.classes = std::move(classes), p.max_nms = max_nms;
        return p;
    };
    const std::vector<Case> cases = {
        // val.py's settings; more candidates than max_det and max_nms.
        {"val: multi-label, conf 0.001", 4, 3000, 80, 0.3f, params(0.001f, 0.6f, true, false, 300, {}, 30000)},
        {"multi-label, max_nms 500", 3, 2000, 80, 0.5f, params(0.001f, 0.6f, true, false, 300, {}, 500)},
        {"multi-label agnostic (single_cls)", 3, 2000, 5, 0.3f, params(0.001f, 0.6f, true, true, 100, {}, 30000)},
        // detect.py's settings, with and without a classes filter and agnostic.
        {"best class", 4, 3000, 80, 0.3f, params(0.25f, 0.45f, false, false, 1000, {}, 30000)},
        {"best class, classes 0 2 5", 3, 3000, 8, 0.5f, params(0.25f, 0.45f, false, false, 1000, {0, 2, 5, 99}, 30000)},
        {"best class agnostic, max_det 20", 3, 3000, 3, 0.5f, params(0.25f, 0.45f, false, true, 20, {}, 30000)},
        {"multi-label, classes 1 3", 2, 1000, 4, 0.5f, params(0.1f, 0.5f, true, false, 50, {1, 3}, 30000)},
        {"one class (multi-label ignored)", 2, 1000, 1, 0.5f, params(0.1f, 0.5f, true, false, 300, {}, 30000)},
        // yolov5's full 640 output, 10 images: N·nc candidate slots per image, so the sort runs in two groups.
        {"640, bs 10, multi-label (two sort groups)", 10, 25200, 80, 0.02f, params(0.001f, 0.6f, true, false, 300, {}, 30000)},
    };
    for (const Case& k : cases) {
        INFO(k.name);
        g.reset();
        const int no = k.nc + 5;
        const std::vector<float> h = nms_predictions(rng, k.bs, k.N, k.nc, k.pass);
        float* d = static_cast<float*>(g.act.alloc(h.size() * sizeof(float)));
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
        // The default scratch (groups of images as 256 MiB of candidates allow) and the least (an image per group).
        for (size_t budget : {kNmsCandidateBudget, (size_t)0}) {
            INFO("scratch for a candidate budget of " << budget << " bytes");
            const size_t mark = g.work.mark(), bytes = nms_cuda_scratch_bytes(k.bs, k.N, no, k.p, budget);
            void* scratch = g.work.alloc(bytes);
            const std::vector<std::vector<Detection>> got = nms_batch_cuda(d, k.bs, k.N, no, k.p, scratch, bytes, g.cuda->stream);
            g.work.reset(mark);
            REQUIRE((int)got.size() == k.bs);
            size_t total = 0;
            for (int b = 0; b < k.bs; ++b) {
                const std::vector<Detection> want = nms_image(h.data() + (size_t)b * k.N * no, k.N, no, k.p);
                INFO("image " << b);
                REQUIRE(got[b].size() == want.size());
                for (size_t i = 0; i < want.size(); ++i) {
                    INFO("detection " << i);
                    REQUIRE(std::memcmp(got[b][i].data(), want[i].data(), sizeof(Detection)) == 0);
                }
                total += want.size();
            }
            CHECK(total > 0);
            if (k.bs > 1) CHECK(got[1].empty());
        }
    }
}
#endif
