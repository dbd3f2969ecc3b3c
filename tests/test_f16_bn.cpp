/*
 * Mixed precision's activation, sigmoid and batchnorm2d (with its fused activation) on the CPU: the f16 op against
 * the f32 op on the same values. The inputs are made f16 first and their exact f32 copies fed to the f32 op; the
 * upstream gradient and the starting input gradients likewise, so both runs see the same numbers.
 * Both references widen f16 to float and then run the f32 code, so an f16 output (out, dx) is the f32 one rounded
 * once to nearest: |f16 − f32| ≤ 2^−11·|f32| for a normal result, ≤ 2^−25 (half the subnormal spacing 2^−24) for a
 * subnormal one. These are the tolerances below: a second rounding (say, of BatchNorm's z or dz to f16) or any
 * f16 arithmetic would break them. What stays in f32 (BatchNorm's statistics, running statistics, dgamma, dbeta)
 * is computed from the same values in the same order, so it must be equal bit for bit.
 */
#include <cmath>
#include <string>

#include "engine/ops/op.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

namespace {

// One rounding to f16 of a float result (see the header comment).
constexpr double kRound16Rel = 1.0 / 2048, kRound16Abs = 1.0 / (1 << 25);

const Act kAllActs[] = {{ActKind::Identity, 0.f}, {ActKind::SiLU, 0.f},      {ActKind::ReLU, 0.f},
                        {ActKind::ReLU6, 0.f},    {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f},
                        {ActKind::Sigmoid, 0.f}};

// A leaf for x whose gradient starts at `start` (accumulation) or untouched (nullptr: allocated zeroed on use).
Var leaf_with_grad(TestCtx& tc, const Tensor& x, const Tensor* start) {
    Var v = tc.tape.leaf(x);
    if (start) copy(tc.ctx, tc.tape.grad(v), *start);
    return v;
}

}  // namespace

TEST_CASE("activation and sigmoid in f16 are the f32 results rounded once, forward and backward",
          "[f16][ops][activation]") {
    TestCtx tc;
    Rng rng(301);
    // [−8, 8) covers every kink (ReLU's 0, ReLU6's 6, Hardswish's ±3) and SiLU's and Sigmoid's saturation. 2·8·45·47 =
    // 33840 values: more than kElemChunk, so par() splits it, and not a multiple of the 256-value f16 chunk.
    for (Shape s : {Shape{1}, Shape{3, 5, 7}, Shape{2, 8, 45, 47}})
        for (Act a : kAllActs) {
            tc.tape.clear();
            tc.act.reset();
            tc.data.reset();
            INFO(act_name(a) << " " << s.str());
            Tensor x16 = rand_tensor(tc.data, s, DType::F16, rng, -8, 8), x32 = as_dtype(tc.data, x16, DType::F32);
            Tensor g16 = rand_tensor(tc.data, s, DType::F16, rng), g32 = as_dtype(tc.data, g16, DType::F32);
            Tensor seed16 = rand_tensor(tc.data, s, DType::F16, rng), seed32 = as_dtype(tc.data, seed16, DType::F32);
            Var v16 = leaf_with_grad(tc, x16, &g16), v32 = leaf_with_grad(tc, x32, &g32);
            const bool sig = a.kind == ActKind::Sigmoid;  // through the sigmoid entry point
            Var y16 = sig ? sigmoid(tc.ctx, v16) : activation(tc.ctx, v16, a);
            Var y32 = sig ? sigmoid(tc.ctx, v32) : activation(tc.ctx, v32, a);
            REQUIRE(y16.t.dtype == DType::F16);
            require_close(y16.t, y32.t, kRound16Abs, kRound16Rel, "out");
            tc.tape.backward({y16, y32}, {seed16, seed32});
            REQUIRE(tc.tape.grad(v16).dtype == DType::F16);
            // dx = start + dy·f'(x) in float, then rounded once.
            require_close(tc.tape.grad(v16), tc.tape.grad(v32), kRound16Abs, kRound16Rel, "dx");
        }
}

namespace {

// batchnorm2d with YOLOv5's eps and momentum on f16 x against f32 x (the same values), both with f32 γ, β and
// running statistics (the same values): out, dx, dγ, dβ and the running statistics. accumulate: every input
// gradient starts at random values (+=); else x's gradient is fresh (the f32 reference then parks dz in it).
void compare_bn_f16_f32(Shape s, double lo, double hi, bool training, Act act, bool accumulate, Rng& rng) {
    TestCtx tc;
    const int C = (int)s[1];
    INFO((training ? "training " : "eval ") << act_name(act) << " " << s.str() << " x in [" << lo << ", " << hi
                                            << ")" << (accumulate ? ", accumulating" : ""));
    Tensor x16 = rand_tensor(tc.data, s, DType::F16, rng, lo, hi), x32 = as_dtype(tc.data, x16, DType::F32);
    Tensor gamma = rand_tensor(tc.data, {C}, DType::F32, rng, 0.5, 1.5), beta = rand_tensor(tc.data, {C}, DType::F32, rng);
    Tensor rm = rand_tensor(tc.data, {C}, DType::F32, rng, lo, hi), rv = rand_tensor(tc.data, {C}, DType::F32, rng, 0.2, 1.2);
    Tensor rm16 = copy_of(tc.data, rm), rv16 = copy_of(tc.data, rv), rm32 = copy_of(tc.data, rm), rv32 = copy_of(tc.data, rv);
    Tensor dx16 = rand_tensor(tc.data, s, DType::F16, rng), dx32 = as_dtype(tc.data, dx16, DType::F32);
    Tensor dg = rand_tensor(tc.data, {C}, DType::F32, rng), db = rand_tensor(tc.data, {C}, DType::F32, rng);
    Var x16v = leaf_with_grad(tc, x16, accumulate ? &dx16 : nullptr), x32v = leaf_with_grad(tc, x32, accumulate ? &dx32 : nullptr);
    Var g16v = leaf_with_grad(tc, copy_of(tc.data, gamma), accumulate ? &dg : nullptr);
    Var b16v = leaf_with_grad(tc, copy_of(tc.data, beta), accumulate ? &db : nullptr);
    Var g32v = leaf_with_grad(tc, copy_of(tc.data, gamma), accumulate ? &dg : nullptr);
    Var b32v = leaf_with_grad(tc, copy_of(tc.data, beta), accumulate ? &db : nullptr);

    Var y16 = batchnorm2d(tc.ctx, x16v, g16v, b16v, rm16, rv16, training, 1e-3f, 0.03f, act);
    Var y32 = batchnorm2d(tc.ctx, x32v, g32v, b32v, rm32, rv32, training, 1e-3f, 0.03f, act);
    REQUIRE(y16.t.dtype == DType::F16);
    // act(bn(x)) computed in float from the same statistics, rounded once.
    require_close(y16.t, y32.t, kRound16Abs, kRound16Rel, "out");
    // The statistics: double sums of the same values.
    require_close(rm16, rm32, 0, 0, "running_mean");
    require_close(rv16, rv32, 0, 0, "running_var");
    if (!training) {
        require_close(rm16, rm, 0, 0, "running_mean (eval leaves it)");
        require_close(rv16, rv, 0, 0, "running_var (eval leaves it)");
    }

    Tensor seed16 = rand_tensor(tc.data, s, DType::F16, rng), seed32 = as_dtype(tc.data, seed16, DType::F32);
    tc.tape.backward({y16, y32}, {seed16, seed32});
    REQUIRE(tc.tape.grad(x16v).dtype == DType::F16);
    REQUIRE(tc.tape.grad(g16v).dtype == DType::F32);
    // dx: float (start +) bn_*_dx(dz), rounded once.
    require_close(tc.tape.grad(x16v), tc.tape.grad(x32v), kRound16Abs, kRound16Rel, "dx");
    // dγ, dβ: the same float dz and x̂, summed in double in the same order.
    require_close(tc.tape.grad(g16v), tc.tape.grad(g32v), 0, 0, "dgamma");
    require_close(tc.tape.grad(b16v), tc.tape.grad(b32v), 0, 0, "dbeta");
}

}  // namespace

TEST_CASE("batchnorm2d in f16 with f32 parameters is the f32 op rounded once", "[f16][ops][batchnorm]") {
    Rng rng(302);
    struct Case {
        Shape s;
        double lo, hi;  // an offset range checks that the statistics do not cancel
    };
    const Case cases[] = {
        {{1, 1, 1, 2}, -1, 1},      // the fewest values training mode accepts
        {{2, 5, 9, 11}, -1, 1},     // HW = 99: one partial chunk of 256
        {{3, 4, 17, 31}, -1, 1},    // HW = 527: two full chunks and a partial one
        {{4, 8, 40, 40}, 5, 7},     // mean 6, std 0.58, f16 spacing 2^−8 there
        {{2, 16, 80, 80}, -3, 3},   // a yolov5n layer shape (P3 at 640)
    };
    const Act acts[] = {kNoAct, {ActKind::SiLU, 0.f}, {ActKind::LeakyReLU, 0.1f}, {ActKind::Hardswish, 0.f}};
    for (const Case& k : cases)
        for (bool training : {true, false})
            for (Act act : acts)
                for (bool accumulate : {false, true}) compare_bn_f16_f32(k.s, k.lo, k.hi, training, act, accumulate, rng);
}

TEST_CASE("batchnorm2d takes f16 x with f32 parameters, or one dtype throughout, and names the mismatch",
          "[f16][ops][batchnorm][errors]") {
    TestCtx tc;
    Rng rng(303);
    const Shape s{2, 3, 4, 4};
    Tensor x16 = rand_tensor(tc.data, s, DType::F16, rng), x32 = as_dtype(tc.data, x16, DType::F32);
    Tensor x64 = as_dtype(tc.data, x16, DType::F64);
    auto params = [&](DType t) {
        std::vector<Tensor> p;
        for (int i = 0; i < 4; ++i) p.push_back(rand_tensor(tc.data, {3}, t, rng, 0.5, 1.5));
        return p;
    };
    auto bn = [&](const Tensor& x, const std::vector<Tensor>& p) {
        return batchnorm2d(tc.ctx, Tape::constant(x), Tape::constant(p[0]), Tape::constant(p[1]), p[2], p[3], true,
                           1e-3f, 0.03f, kNoAct);
    };
    CHECK(bn(x16, params(DType::F32)).t.dtype == DType::F16);
    CHECK(bn(x32, params(DType::F32)).t.dtype == DType::F32);
    CHECK(bn(x64, params(DType::F64)).t.dtype == DType::F64);
    CHECK_THROWS_WITH(bn(x16, params(DType::F16)),
                      Contains("batchnorm2d: input") && Contains("needs f32 per-channel tensors") && Contains("f16"));
    CHECK_THROWS_WITH(bn(x32, params(DType::F64)), Contains("batchnorm2d: input") && Contains("needs f32"));
    CHECK_THROWS_WITH(bn(x64, params(DType::F32)), Contains("batchnorm2d: input") && Contains("needs f64"));
    std::vector<Tensor> mixed = params(DType::F32);
    mixed[3] = rand_tensor(tc.data, {3}, DType::F16, rng, 0.5, 1.5);  // running_var alone
    CHECK_THROWS_WITH(bn(x16, mixed), Contains("needs f32 per-channel tensors"));
}
