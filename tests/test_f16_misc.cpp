/*
 * Mixed precision on the CPU for maxpool2d, sppf_pool, upsample_nearest, concat, global_avgpool,
 * conv1d_channels, scale_channels, eca (fused), transpose12 and space_to_depth2: each op on f16 inputs against
 * the same op on their exact f32 copies, through ops.h and the tape: the output and every input gradient, with
 * random starting input gradients (so backward's += is checked) and a random upstream gradient (f16, and its
 * exact f32 copy for the f32 run).
 * Tolerance: none beyond one rounding. The f16 code loads the same values as the f32 code, does the same float
 * operations in the same order (the build has -ffp-contract=off, so no fused multiply-adds differ) and rounds
 * each stored value once, so every f16 result must be exactly f32_to_f16(f32 result): within half an f16 ulp
 * (2^-11 ≈ 4.9e-4 relative, 2^-25 absolute below 2^-14) of the f32 value, and a second rounding anywhere (an
 * f16 sum in the backward's scatters, d1/d2 of SPPF's cascade rounded, a weight gradient rounded per product)
 * shows as an element one ulp off. Where the result is f32 (fused ECA's weight gradient) it must equal the f32
 * run's bit for bit: its sums run in float over the same values either way.
 */
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/ops/op.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

namespace {

using Op = std::function<Var(Ctx&, const std::vector<Var>&)>;

struct Run {
    Tensor out;
    std::vector<Tensor> grads;  // undefined where the input takes no gradient
};

// op on `inputs` (leaves where wants[i], their gradients starting at start[i]), then backward from `seed`, made
// by make_seed(out) on the first run.
Run run_op(TestCtx& tc, const std::vector<Tensor>& inputs, const std::vector<bool>& wants,
           const std::vector<Tensor>& start, const Op& op, const std::function<Tensor(const Tensor&)>& make_seed) {
    tc.tape.clear();
    std::vector<Var> v;
    for (size_t i = 0; i < inputs.size(); ++i) {
        v.push_back(wants[i] ? tc.tape.leaf(inputs[i]) : Tape::constant(inputs[i]));
        if (wants[i]) copy(tc.ctx, tc.tape.grad(v[i]), start[i]);
    }
    Var y = op(tc.ctx, v);
    Run r{copy_of(tc.data, y.t), {}};
    Tensor seed = make_seed(y.t);
    tc.tape.backward(y, &seed);
    for (size_t i = 0; i < inputs.size(); ++i) r.grads.push_back(wants[i] ? copy_of(tc.data, tc.tape.grad(v[i])) : Tensor{});
    tc.tape.clear();
    return r;
}

// got (f16) is want (f32) rounded once, element for element; got f32 equals want bit for bit.
void require_rounded_once(const Tensor& got, const Tensor& want, const std::string& what) {
    REQUIRE(got.shape == want.shape);
    REQUIRE(want.dtype == DType::F32);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < got.numel(); ++i) {
        const float w = want.ptr<float>()[i];
        const bool ok = got.dtype == DType::F16 ? got.ptr<f16>()[i].bits == f32_to_f16(w).bits
                                                : f32_bits(got.ptr<float>()[i]) == f32_bits(w);
        if (!ok && bad++ == 0) first = i;
    }
    INFO(what << ": " << bad << " of " << got.numel() << " elements are not the f32 result rounded once"
              << (first >= 0 ? "; first at " + std::to_string(first) + ": got " + fmt(at(got, first)) + ", f32 " +
                                   fmt(at(want, first))
                             : std::string()));
    REQUIRE(bad == 0);
}

// inputs: the f16 run's tensors (f16, or f32 for a parameter that stays f32); the f32 run gets their f32 copies.
// out_dtype/grad dtypes are checked: the f16 run's output is f16, each gradient has its input's dtype.
void compare_f16_f32(TestCtx& tc, const std::string& what, const std::vector<Tensor>& inputs,
                     const std::vector<bool>& wants, const Op& op, Rng& rng) {
    INFO(what);
    std::vector<Tensor> inputs32, start16, start32;
    for (size_t i = 0; i < inputs.size(); ++i) {
        inputs32.push_back(as_dtype(tc.data, inputs[i], DType::F32));
        start16.push_back(rand_tensor(tc.data, inputs[i].shape, inputs[i].dtype, rng));
        start32.push_back(as_dtype(tc.data, start16.back(), DType::F32));
    }
    Tensor seed16;
    const Run h = run_op(tc, inputs, wants, start16, op, [&](const Tensor& y) {
        seed16 = rand_tensor(tc.data, y.shape, DType::F16, rng);
        return seed16;
    });
    const Run f = run_op(tc, inputs32, wants, start32, op, [&](const Tensor&) { return as_dtype(tc.data, seed16, DType::F32); });
    REQUIRE(h.out.dtype == DType::F16);
    require_rounded_once(h.out, f.out, what + " output");
    for (size_t i = 0; i < inputs.size(); ++i)
        if (wants[i]) {
            REQUIRE(h.grads[i].dtype == inputs[i].dtype);
            require_rounded_once(h.grads[i], f.grads[i], what + " d input " + std::to_string(i));
        }
}

// Values rounded to `levels` steps per unit (stored as f16), so pooling windows hold ties.
Tensor tied(Tensor x, int levels) {
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<f16>()[i] = f32_to_f16(std::round((float)at(x, i) * levels) / levels);
    return x;
}

}  // namespace

TEST_CASE("f16 maxpool2d is the f32 op rounded once", "[f16][pool][maxpool]") {
    TestCtx tc;
    Rng rng(401);
    struct Case {
        Shape s;
        int k, stride, pad, levels;
        double lo, hi;
    };
    const Case cases[] = {
        {{1, 1, 1, 1}, 1, 1, 0, 0, -1, 1},   {{1, 3, 2, 3}, 3, 1, 1, 0, -1, 1},   // the window is larger than the input
        {{1, 2, 3, 4}, 3, 1, 1, 0, -2, -1},  // negative values: the padding never wins
        {{2, 5, 7, 9}, 3, 2, 1, 0, -1, 1},   // overlapping windows: several routes per input
        {{1, 2, 5, 5}, 2, 2, 0, 0, -1, 1},   {{2, 3, 11, 13}, 5, 1, 2, 3, -1, 1},  // ties
        {{1, 4, 20, 20}, 13, 1, 6, 0, -1, 1},
    };
    for (const Case& k : cases) {
        Tensor x = rand_tensor(tc.data, k.s, DType::F16, rng, k.lo, k.hi);
        if (k.levels) x = tied(x, k.levels);
        const int kk = k.k, st = k.stride, pd = k.pad;
        compare_f16_f32(tc, "maxpool2d " + k.s.str() + " k" + std::to_string(kk) + " s" + std::to_string(st), {x},
                        {true}, [=](Ctx& c, const std::vector<Var>& v) { return maxpool2d(c, v[0], kk, st, pd); }, rng);
    }
}

TEST_CASE("f16 sppf_pool is the f32 op rounded once: the cascade's gradients stay float", "[f16][pool][sppf]") {
    TestCtx tc;
    Rng rng(402);
    struct Case {
        Shape s;
        int k, levels;
    };
    for (const Case& k : {Case{{1, 1, 1, 1}, 5, 0}, Case{{1, 2, 3, 2}, 5, 0}, Case{{2, 3, 7, 9}, 3, 3},
                          Case{{1, 5, 11, 13}, 5, 2}, Case{{3, 7, 20, 20}, 5, 0}}) {
        Tensor x = rand_tensor(tc.data, k.s, DType::F16, rng);
        if (k.levels) x = tied(x, k.levels);
        const int kk = k.k;
        compare_f16_f32(tc, "sppf " + k.s.str() + " k" + std::to_string(kk), {x}, {true},
                        [=](Ctx& c, const std::vector<Var>& v) { return sppf_pool(c, v[0], kk); }, rng);
    }
}

TEST_CASE("f16 upsample_nearest is the f32 op rounded once", "[f16][upsample]") {
    TestCtx tc;
    Rng rng(403);
    struct Case {
        Shape s;
        int scale;
    };
    for (Case k : {Case{{1, 1, 1, 1}, 2}, Case{{2, 3, 5, 7}, 2}, Case{{1, 2, 3, 3}, 3}, Case{{1, 1, 4, 5}, 1},
                   Case{{2, 8, 20, 20}, 2}}) {
        Tensor x = rand_tensor(tc.data, k.s, DType::F16, rng);
        const int s = k.scale;
        compare_f16_f32(tc, "upsample " + k.s.str() + " x" + std::to_string(s), {x}, {true},
                        [=](Ctx& c, const std::vector<Var>& v) { return upsample_nearest(c, v[0], s); }, rng);
    }
}

TEST_CASE("f16 concat is the f32 op rounded once", "[f16][concat]") {
    TestCtx tc;
    Rng rng(404);
    struct Case {
        std::vector<Shape> shapes;
        std::vector<bool> grads;
    };
    const Case cases[] = {
        {{{1, 1, 1, 1}, {1, 2, 1, 1}}, {true, true}},
        {{{2, 3, 5, 7}, {2, 1, 5, 7}, {2, 4, 5, 7}}, {true, false, true}},  // a constant in the middle
        {{{2, 16, 20, 20}, {2, 16, 20, 20}, {2, 16, 20, 20}, {2, 16, 20, 20}}, {true, true, true, true}},
    };
    for (const Case& k : cases) {
        std::vector<Tensor> xs;
        for (const Shape& s : k.shapes) xs.push_back(rand_tensor(tc.data, s, DType::F16, rng));
        compare_f16_f32(tc, std::to_string(xs.size()) + " inputs", xs, k.grads,
                        [](Ctx& c, const std::vector<Var>& v) { return concat(c, v); }, rng);
    }
}

TEST_CASE("f16 transpose12 and space_to_depth2 are the f32 ops rounded once", "[f16][reshape]") {
    TestCtx tc;
    Rng rng(405);
    for (Shape s : {Shape{1, 1, 1}, Shape{3, 7, 45}, Shape{2, 33, 65}, Shape{6, 85, 40}}) {
        Tensor x = rand_tensor(tc.data, s, DType::F16, rng);
        const Shape out{s[0], s[2], s[1]};
        compare_f16_f32(tc, "transpose12 " + s.str(), {x}, {true},
                        [=](Ctx& c, const std::vector<Var>& v) { return transpose12(c, v[0], out); }, rng);
    }
    for (Shape s : {Shape{1, 1, 2, 2}, Shape{2, 3, 6, 10}, Shape{1, 5, 4, 14}}) {
        Tensor x = rand_tensor(tc.data, s, DType::F16, rng);
        compare_f16_f32(tc, "space_to_depth2 " + s.str(), {x}, {true},
                        [](Ctx& c, const std::vector<Var>& v) { return space_to_depth2(c, v[0]); }, rng);
    }
}

TEST_CASE("f16 global_avgpool, conv1d_channels and scale_channels are the f32 ops rounded once",
          "[f16][pool][eca]") {
    TestCtx tc;
    Rng rng(406);
    for (Shape s : {Shape{1, 1, 1, 1}, Shape{3, 2, 1, 1}, Shape{2, 3, 5, 7}, Shape{1, 5, 33, 31}}) {
        Tensor x = rand_tensor(tc.data, s, DType::F16, rng);
        compare_f16_f32(tc, "global_avgpool " + s.str(), {x}, {true},
                        [](Ctx& c, const std::vector<Var>& v) { return global_avgpool(c, v[0]); }, rng);
    }
    struct C1 {
        int N, C, k;
        std::vector<bool> grads;
    };
    // The unfused f16 chain's conv1d takes an f16 weight (the model casts it, as autocast would).
    for (const C1& k : {C1{1, 1, 1, {true, true}}, C1{1, 4, 5, {true, true}}, C1{2, 17, 3, {true, true}},
                        C1{2, 33, 3, {false, true}}, C1{3, 9, 7, {true, false}}, C1{8, 256, 5, {true, true}}}) {
        Tensor x = rand_tensor(tc.data, {k.N, k.C}, DType::F16, rng), w = rand_tensor(tc.data, {k.k}, DType::F16, rng);
        compare_f16_f32(tc, "conv1d_channels N" + std::to_string(k.N) + " C" + std::to_string(k.C) + " k" +
                                std::to_string(k.k),
                        {x, w}, k.grads, [](Ctx& c, const std::vector<Var>& v) { return conv1d_channels(c, v[0], v[1]); },
                        rng);
    }
    struct S {
        Shape s;
        std::vector<bool> grads;
    };
    for (const S& k : {S{{1, 1, 1, 1}, {true, true}}, S{{2, 3, 5, 7}, {true, true}}, S{{1, 5, 33, 31}, {false, true}},
                       S{{2, 3, 6, 5}, {true, false}}}) {
        Tensor x = rand_tensor(tc.data, k.s, DType::F16, rng);
        Tensor s = rand_tensor(tc.data, {k.s[0], k.s[1]}, DType::F16, rng);
        compare_f16_f32(tc, "scale_channels " + k.s.str(), {x, s}, k.grads,
                        [](Ctx& c, const std::vector<Var>& v) { return scale_channels(c, v[0], v[1]); }, rng);
    }
}

TEST_CASE("f16 eca (fused): f16 x, out and dx are the f32 op's rounded once, w's gradient f32 and equal",
          "[f16][eca]") {
    TestCtx tc;
    Rng rng(407);
    struct Case {
        Shape s;
        int k;
    };
    // Awkward shapes (one plane element, one channel, k larger than C, HW over a warp and odd) and yolov5n-eca's
    // SPPF-output ECA at 320 with batch 2.
    for (Case k : {Case{{1, 1, 1, 1}, 3}, Case{{3, 2, 3, 5}, 5}, Case{{2, 7, 33, 31}, 3}, Case{{2, 256, 10, 10}, 5}}) {
        Tensor x = rand_tensor(tc.data, k.s, DType::F16, rng, -2, 2);
        Tensor w = rand_tensor(tc.data, {k.k}, DType::F32, rng, -2, 2);
        compare_f16_f32(tc, "eca " + k.s.str() + " k" + std::to_string(k.k), {x, w}, {true, true},
                        [](Ctx& c, const std::vector<Var>& v) { return eca(c, v[0], v[1]); }, rng);
    }
    // Only w in f32 goes with f16 x; the message names the dtype it needs.
    Tensor x = rand_tensor(tc.data, {1, 2, 3, 3}, DType::F16, rng), w16 = rand_tensor(tc.data, {3}, DType::F16, rng);
    CHECK_THROWS_WITH(eca(tc.ctx, Tape::constant(x), Tape::constant(w16)), Catch::Contains("must be f32"));
    Tensor x64 = rand_tensor(tc.data, {1, 2, 3, 3}, DType::F64, rng), w32 = rand_tensor(tc.data, {3}, DType::F32, rng);
    CHECK_THROWS_WITH(eca(tc.ctx, Tape::constant(x64), Tape::constant(w32)), Catch::Contains("must be f64"));
}
