/*
 * Mixed precision on the GPU for maxpool2d, sppf_pool, upsample_nearest, concat, global_avgpool,
 * conv1d_channels, scale_channels, eca (fused), transpose12 and space_to_depth2: the CUDA op on f16 tensors
 * against the CPU reference on the same f16 tensors, through ops.h and the tape: the output and every input
 * gradient, each gradient buffer starting random (backward's += is checked) and a random f16 upstream gradient.
 * Fused ECA takes an f32 weight and gives it an f32 gradient. Shapes: awkward ones and yolov5n's at 640 for
 * one layer per op, N = 2.
 * Tolerances, from how the two sides compute (both load f16, compute in float and round once per stored value):
 *   exact: copies, maxima, and the gathers that add the same float values in the CPU's order (max-pool, SPPF and
 *     upsample backwards, concat/transpose/space-to-depth's single add, the pool's backward division and add,
 *     scale_channels' single product);
 *   kUlp, one f16 ulp (2^-10 relative) over a float difference of about 1e-6: where a product feeds a sum (a GPU
 *     fuses them into FMAs) or the value comes from a float mean summed in another order (ECA's gate): two float
 *     values a few float ulps apart round to the same f16 value or to neighbours;
 *   sums of many products (weight gradients, scale_channels' ds, the means): the float order's error as in
 *     tests/test_gpu_ops.cpp (about 1e-7 per term), plus one f16 ulp when the result is f16.
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

const double kF16Ulp = std::ldexp(1.0, -10);  // one f16 ulp relative to the value (at most)
const Tol kUlp{1e-6, kF16Ulp};
// A float sum of `count` terms of magnitude about 1 in another order, then rounded to f16 (f16 true) or not.
Tol sum_tol(int64_t count, bool f16) { return Tol{1e-7 * (double)count + 1e-5, 1e-5 + (f16 ? kF16Ulp : 0.0)}; }


// Values rounded to `levels` steps per unit (stored as f16), so pooling windows hold ties.
Tensor tied(Tensor x, int levels) {
    for (int64_t i = 0; i < x.numel(); ++i) x.ptr<f16>()[i] = f32_to_f16(std::round((float)at(x, i) * levels) / levels);
    return x;
}

}  // namespace

TEST_CASE("f16 maxpool2d CUDA kernels against the CPU reference", "[gpu][f16][pool][maxpool]") {
    Gpu& g = gpu();
    Rng rng(501);
    struct Case {
        Shape s;
        int k, stride, pad, levels;
        double lo, hi;
    };
    const Case cases[] = {
        {{1, 1, 1, 1}, 1, 1, 0, 0, -1, 1},  {{1, 3, 2, 3}, 3, 1, 1, 0, -1, 1},   // the window is larger than the input
        {{1, 2, 3, 4}, 3, 1, 1, 0, -2, -1}, {{2, 5, 7, 9}, 3, 2, 1, 0, -1, 1},
        {{2, 3, 11, 13}, 5, 1, 2, 3, -1, 1},  // ties: the gradient goes to the first maximum
        {{1, 4, 20, 20}, 9, 1, 4, 0, -1, 1},  {{2, 128, 20, 20}, 5, 1, 2, 0, -1, 1},  // yolov5n's SPPF at 640
    };
    for (const Case& k : cases) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F16, rng, k.lo, k.hi);
        if (k.levels) x = tied(x, k.levels);
        const int kk = k.k, st = k.stride, pd = k.pad;
        compare_op1("maxpool2d " + k.s.str() + " k" + std::to_string(kk) + " s" + std::to_string(st), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return maxpool2d(c, v[0], kk, st, pd); }, rng, kExact,
                    kExact);
    }
}

TEST_CASE("f16 sppf_pool CUDA kernels against the CPU reference", "[gpu][f16][pool][sppf]") {
    Gpu& g = gpu();
    Rng rng(502);
    struct Case {
        Shape s;
        int k, levels;
    };
    for (const Case& k : {Case{{1, 1, 1, 1}, 5, 0}, Case{{1, 2, 3, 2}, 5, 0}, Case{{2, 3, 7, 9}, 3, 3},
                          Case{{1, 5, 11, 13}, 5, 2}, Case{{2, 128, 20, 20}, 5, 0},
                          Case{{17, 128, 10, 10}, 5, 0}}) {  // 2176 planes: more than the kernels' 2048 blocks
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F16, rng);
        if (k.levels) x = tied(x, k.levels);
        const int kk = k.k;
        compare_op1("sppf " + k.s.str() + " k" + std::to_string(kk), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return sppf_pool(c, v[0], kk); }, rng, kExact, kExact);
    }
}

TEST_CASE("f16 upsample_nearest CUDA kernels against the CPU reference", "[gpu][f16][upsample]") {
    Gpu& g = gpu();
    Rng rng(503);
    struct Case {
        Shape s;
        int scale;
    };
    for (Case k : {Case{{1, 1, 1, 1}, 2}, Case{{2, 3, 5, 7}, 2}, Case{{1, 2, 3, 3}, 3}, Case{{1, 1, 4, 5}, 1},
                   Case{{2, 64, 40, 40}, 2}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F16, rng);
        const int s = k.scale;
        compare_op1("upsample " + k.s.str() + " x" + std::to_string(s), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return upsample_nearest(c, v[0], s); }, rng, kExact,
                    kExact);
    }
}

TEST_CASE("f16 concat CUDA kernels against the CPU reference", "[gpu][f16][concat]") {
    Gpu& g = gpu();
    Rng rng(504);
    struct Case {
        std::vector<Shape> shapes;
        std::vector<bool> grads;
    };
    const Case cases[] = {
        {{{1, 1, 1, 1}, {1, 2, 1, 1}}, {true, true}},
        {{{2, 3, 5, 7}, {2, 1, 5, 7}, {2, 4, 5, 7}}, {true, false, true}},  // a constant in the middle
        {{{2, 64, 40, 40}, {2, 64, 40, 40}}, {true, true}},                  // yolov5n's head at 640
    };
    for (const Case& k : cases) {
        g.reset();
        std::vector<Tensor> xs;
        for (const Shape& s : k.shapes) xs.push_back(rand_tensor(g.host, s, DType::F16, rng));
        compare_op(std::to_string(xs.size()) + " inputs", xs, k.grads,
                   [](Ctx& c, const std::vector<Var>& v, bool) { return concat(c, v); }, rng, kExact,
                   std::vector<Tol>(xs.size(), kExact));
    }
}

TEST_CASE("f16 transpose12 and space_to_depth2 CUDA kernels against the CPU reference", "[gpu][f16][reshape]") {
    Gpu& g = gpu();
    Rng rng(505);
    for (Shape s : {Shape{1, 1, 1}, Shape{3, 7, 45}, Shape{2, 33, 65}, Shape{6, 85, 1600}}) {  // P4 Detect at 640
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F16, rng);
        const Shape out{s[0], s[2], s[1]};
        compare_op1("transpose12 " + s.str(), x,
                    [=](Ctx& c, const std::vector<Var>& v, bool) { return transpose12(c, v[0], out); }, rng, kExact, kExact);
    }
    for (Shape s : {Shape{1, 1, 2, 2}, Shape{2, 3, 6, 10}, Shape{1, 5, 4, 14}, Shape{2, 3, 320, 320}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F16, rng);
        compare_op1("space_to_depth2 " + s.str(), x,
                    [](Ctx& c, const std::vector<Var>& v, bool) { return space_to_depth2(c, v[0]); }, rng, kExact, kExact);
    }
}

TEST_CASE("f16 global_avgpool, conv1d_channels and scale_channels CUDA kernels against the CPU reference",
          "[gpu][f16][pool][eca]") {
    Gpu& g = gpu();
    Rng rng(506);
    for (Shape s : {Shape{1, 1, 1, 1}, Shape{3, 2, 1, 1}, Shape{2, 3, 5, 7}, Shape{1, 5, 33, 31}, Shape{2, 64, 80, 80}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, s, DType::F16, rng);
        // Forward: a float tree against the CPU's double sum, rounded to f16; backward: the same float math.
        compare_op1("global_avgpool " + s.str(), x,
                    [](Ctx& c, const std::vector<Var>& v, bool) { return global_avgpool(c, v[0]); }, rng, Tol{1e-6, kF16Ulp},
                    kExact);
    }
    struct C1 {
        int N, C, k;
        std::vector<bool> grads;
    };
    for (const C1& k : {C1{1, 1, 1, {true, true}}, C1{1, 4, 5, {true, true}}, C1{2, 17, 3, {true, true}},
                        C1{2, 33, 3, {false, true}}, C1{3, 9, 7, {true, false}}, C1{8, 256, 5, {true, true}}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, {k.N, k.C}, DType::F16, rng), w = rand_tensor(g.host, {k.k}, DType::F16, rng);
        compare_op("conv1d_channels N" + std::to_string(k.N) + " C" + std::to_string(k.C) + " k" + std::to_string(k.k),
                   {x, w}, k.grads, [](Ctx& c, const std::vector<Var>& v, bool) { return conv1d_channels(c, v[0], v[1]); },
                   rng, kUlp, {kUlp, sum_tol((int64_t)k.N * k.C, true)});
    }
    struct S {
        Shape s;
        std::vector<bool> grads;
    };
    for (const S& k : {S{{1, 1, 1, 1}, {true, true}}, S{{2, 3, 5, 7}, {true, true}}, S{{1, 5, 33, 31}, {false, true}},
                       S{{2, 3, 6, 5}, {true, false}}, S{{2, 256, 20, 20}, {true, true}}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F16, rng), s = rand_tensor(g.host, {k.s[0], k.s[1]}, DType::F16, rng);
        // Forward: one product per element on both sides; dx: a product and an add; ds: HW products.
        compare_op("scale_channels " + k.s.str(), {x, s}, k.grads,
                   [](Ctx& c, const std::vector<Var>& v, bool) { return scale_channels(c, v[0], v[1]); }, rng, kExact,
                   {kUlp, sum_tol(k.s[2] * k.s[3], true)});
    }
}

TEST_CASE("f16 eca (fused) CUDA kernels against the CPU reference", "[gpu][f16][eca]") {
    Gpu& g = gpu();
    Rng rng(507);
    struct Case {
        Shape s;
        int k;
    };
    // yolov5n-eca's ECAs at 640 (P3 C3 output, SPPF output), k 3 and 5, and awkward shapes.
    for (Case k : {Case{{1, 1, 1, 1}, 3}, Case{{3, 2, 3, 5}, 5}, Case{{2, 7, 33, 31}, 3}, Case{{2, 64, 80, 80}, 3},
                   Case{{2, 256, 20, 20}, 5}}) {
        g.reset();
        Tensor x = rand_tensor(g.host, k.s, DType::F16, rng), w = rand_tensor(g.host, {k.k}, DType::F32, rng);
        // out and dx: kUlp (the gate from a float mean in another order, products fused on a GPU; dx's dp/HW term
        // carries dz's reordered sum, well under 1e-5); dw (f32): N·C·HW products through both sides' reductions,
        // as the f32 test's bound.
        compare_op("eca " + k.s.str() + " k" + std::to_string(k.k), {x, w}, {true, true},
                   [](Ctx& c, const std::vector<Var>& v, bool) { return eca(c, v[0], v[1]); }, rng, kUlp,
                   {Tol{1e-5, kF16Ulp}, Tol{1e-3, 1e-4}});
    }
}
#endif
