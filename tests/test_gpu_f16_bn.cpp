/*
 * Mixed precision's activation, sigmoid and batchnorm2d (fused activation) CUDA kernels in f16 against the CPU's
 * f16 references, through ops.h and the tape: the same f16 inputs (and f32 γ, β, running statistics), the same
 * random starting input gradients (so += is checked) and upstream gradient; the output, every input gradient and
 * the running statistics.
 * Tolerances: both sides compute in float and round each f16 output once, so they differ by what their float
 * results differ by (the f32 tests' tolerances in tests/test_gpu_ops.cpp: the GPU's expf and FMAs against the
 * CPU's vectorised exp, float Welford statistics against double ones) carried through that rounding: when the
 * float results straddle a rounding boundary, the f16 results are one f16 ulp apart, ≤ 2^−10 relative. So
 * rtol = 2^−10 + the f32 rtol (≤ 1e-3), and the f32 atol for results near zero. f32 outputs (dγ, dβ, running
 * statistics) keep the f32 tests' tolerances: their terms come from the same f16 values on both sides.
 */
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

// One f16 ulp (2^−10 relative) on top of the f32 tests' element-wise tolerance (1e-6 abs, 1e-5 rel).
constexpr Tol kAct16{1e-6, 1e-3};
// BatchNorm's f16 outputs: the f32 test's training tolerance (2e-5: the float statistics' error) plus one ulp.
constexpr Tol kBn16{2e-5, 1e-3};

void compare_bn16(Shape s, double lo, double hi, bool x_grad, bool training, Act act, Rng& rng) {
    Gpu& g = gpu();
    g.reset();
    const int C = (int)s[1];
    const int64_t M = s[0] * s[2] * s[3];
    Tensor x = rand_tensor(g.host, s, DType::F16, rng, lo, hi);
    Tensor gamma = rand_tensor(g.host, {C}, DType::F32, rng, 0.5, 1.5), beta = rand_tensor(g.host, {C}, DType::F32, rng);
    Tensor rm = rand_tensor(g.host, {C}, DType::F32, rng, lo, hi), rv = rand_tensor(g.host, {C}, DType::F32, rng, 0.2, 1.2);
    Tensor cpu_rm = copy_of(g.host, rm), cpu_rv = copy_of(g.host, rv), gpu_rm = g.upload(rm), gpu_rv = g.upload(rv);
    DevOp op = [&](Ctx& c, const std::vector<Var>& v, bool on_gpu) {
        return batchnorm2d(c, v[0], v[1], v[2], on_gpu ? gpu_rm : cpu_rm, on_gpu ? gpu_rv : cpu_rv, training, 1e-3f,
                           0.03f, act);
    };
    compare_op(std::string(training ? "training " : "eval ") + act_name(act) + " " + s.str() + (x_grad ? "" : ", no dx"),
              {x, gamma, beta}, {x_grad, true, true}, op, rng, kBn16, {kBn16, bn_sum_tol(M), bn_sum_tol(M)});
    require_close(g.download(gpu_rm), cpu_rm, 1e-6, 1e-5, "running_mean");
    require_close(g.download(gpu_rv), cpu_rv, 1e-6, 1e-5, "running_var");
}

}  // namespace

TEST_CASE("activation and sigmoid CUDA kernels in f16 against the CPU f16 reference", "[gpu][f16][ops][activation]") {
    Gpu& g = gpu();
    Rng rng(401);
    const Act kinds[] = {{ActKind::Identity, 0.f}, {ActKind::SiLU, 0.f},      {ActKind::ReLU, 0.f},
                         {ActKind::ReLU6, 0.f},    {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f},
                         {ActKind::Sigmoid, 0.f}};
    for (Shape s : {Shape{1}, Shape{2, 3, 5, 7}, Shape{1, 3, 33, 65}})
        for (Act a : kinds) {
            g.reset();
            Tensor x = rand_tensor(g.host, s, DType::F16, rng, -8, 8);
            compare_op(act_name(a) + " " + s.str(), {x}, {true},
                      [a](Ctx& c, const std::vector<Var>& v, bool) { return activation(c, v[0], a); }, rng, kAct16,
                      {kAct16});
        }
    // A yolov5n-sized SiLU (P2 at 640 after the first Conv, N = 2), and the sigmoid entry point on a Detect map.
    g.reset();
    Tensor x = rand_tensor(g.host, {2, 16, 160, 160}, DType::F16, rng, -8, 8);
    compare_op("SiLU (2,16,160,160)", {x}, {true},
              [](Ctx& c, const std::vector<Var>& v, bool) { return activation(c, v[0], Act{ActKind::SiLU, 0.f}); }, rng,
              kAct16, {kAct16});
    g.reset();
    x = rand_tensor(g.host, {2, 255, 20, 20}, DType::F16, rng, -8, 8);
    compare_op("sigmoid (2,255,20,20)", {x}, {true},
              [](Ctx& c, const std::vector<Var>& v, bool) { return sigmoid(c, v[0]); }, rng, kAct16, {kAct16});
}

TEST_CASE("batchnorm2d CUDA kernels in f16 (f32 parameters) against the CPU f16 reference",
          "[gpu][f16][ops][batchnorm]") {
    Rng rng(402);
    struct Case {
        Shape s;
        double lo, hi;
        bool x_grad;
    };
    const Case cases[] = {
        {{1, 1, 1, 2}, -1, 1, true},       {{1, 3, 5, 7}, -1, 1, true},   {{2, 5, 9, 11}, -1, 1, false},
        {{3, 1, 33, 31}, -1, 1, true},     {{4, 8, 40, 40}, 5, 7, true},  // offset mean 6, std 0.58
        {{2, 16, 160, 160}, -1, 1, true},  // a yolov5n layer (P2 at 640), N = 2
        {{2, 64, 20, 20}, -3, 3, true},
    };
    const Act acts[] = {kNoAct, {ActKind::SiLU, 0.f}, {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f}};
    for (const Case& k : cases)
        for (bool training : {true, false})
            for (Act act : acts) {
                if (k.s.numel() > 100000 && act.kind != ActKind::SiLU && act.kind != ActKind::Identity) continue;
                compare_bn16(k.s, k.lo, k.hi, k.x_grad, training, act, rng);
            }
}

#endif
