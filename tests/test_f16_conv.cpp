/*
 * conv2d and conv2d_parts in f16 on the CPU against the same ops in f32 on the same inputs (made f16 first, so
 * the f32 run sees exactly the f16 values): the output and every gradient, at awkward shapes and yolov5n-like
 * layers. The f16 references convert each image to float, run the f32 passes in the f32 path's order (the same
 * per-image GEMMs, the same groups of images for the weight gradients) and round each element once, so from
 * zeroed gradients every f16 element is the f32 element rounded to nearest: |f16 − f32| ≤ 2^−11·|f32| (half an
 * ulp of a normal f16) + 2^−25 (half the smallest subnormal). The accumulation case (gradients pre-filled) adds
 * the pre-filled value after the sum instead of before it, a float-order difference on top.
 */
#include <cmath>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/conv2d.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

namespace {

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

// One rounding to f16: half an ulp relative, half the smallest subnormal absolute.
const double kHalfUlp = std::ldexp(1.0, -11), kHalfSub = std::ldexp(1.0, -25);

// The inputs of one case, all f16 values; g0 the gradients' starting values (null: zero, as the tape allocates).
struct Inputs {
    Tensor x, w, b, dy, gx0, gw0, gb0;
};

Inputs make_inputs(Arena& a, const Geo& g, Rng& rng) {
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    const double ws = 1.0 / std::sqrt((double)g.C * g.R * g.S);  // outputs O(1)
    Inputs in;
    in.x = rand_tensor(a, {g.N, g.C, g.H, g.W}, DType::F16, rng);
    in.w = rand_tensor(a, {g.K, g.C, g.R, g.S}, DType::F16, rng, -ws, ws);
    in.b = rand_tensor(a, {g.K}, DType::F16, rng);
    in.dy = rand_tensor(a, {g.N, g.K, Ho, Wo}, DType::F16, rng);
    in.gx0 = rand_tensor(a, in.x.shape, DType::F16, rng);
    in.gw0 = rand_tensor(a, in.w.shape, DType::F16, rng);
    in.gb0 = rand_tensor(a, in.b.shape, DType::F16, rng);
    return in;
}

struct Result {
    Tensor y, dx, dw, db;
};

// conv2d forward and backward in dtype dt; gradients start at zero or (prefill) at the inputs' g0.
Result run_conv(TestCtx& T, DType dt, const Geo& g, const Inputs& in, bool prefill) {
    auto as = [&](const Tensor& t) { return as_dtype(T.data, t, dt); };
    auto var = [&](const Tensor& v, const Tensor& g0) { return prefill ? T.tape.param(as(v), as(g0)) : T.tape.leaf(as(v)); };
    Var xv = var(in.x, in.gx0), wv = var(in.w, in.gw0), bv = var(in.b, in.gb0);
    Var y = conv2d(T.ctx, xv, wv, g.bias ? &bv : nullptr, g.stride, g.pad);
    REQUIRE(y.t.dtype == dt);
    Tensor dy = as(in.dy);
    T.tape.backward(y, &dy);
    Result r{copy_of(T.data, y.t), copy_of(T.data, T.tape.grad(xv)), copy_of(T.data, T.tape.grad(wv)),
             copy_of(T.data, T.tape.grad(bv))};
    T.tape.clear();
    return r;
}

void compare(const Geo& g, Rng& rng, bool prefill) {
    TestCtx T;
    INFO(geo_str(g));
    const Inputs in = make_inputs(T.data, g, rng);
    const Result h = run_conv(T, DType::F16, g, in, prefill), f = run_conv(T, DType::F32, g, in, prefill);
    const char* names[4] = {"output", "dx", "dw", "db"};
    const Tensor* hs[4] = {&h.y, &h.dx, &h.dw, &h.db};
    const Tensor* fs[4] = {&f.y, &f.dx, &f.dw, &f.db};
    for (int i = 0; i < 4; ++i) {
        REQUIRE(hs[i]->dtype == DType::F16);
        // prefill: the f32 run adds the starting value first and the f16 run last, a float-order difference of
        // a few 2^−24 of the partial sums' magnitude (≤ max|f32|); 2^−20·max bounds it with room.
        const double atol = kHalfSub + (prefill ? std::ldexp(1.0, -20) * std::max(1.0, max_abs(*fs[i])) : 0.0);
        require_close(*hs[i], *fs[i], atol, kHalfUlp, names[i]);
    }
    if (!g.bias) REQUIRE(max_abs(h.db) == (prefill ? max_abs(in.gb0) : 0.0));  // untouched without a bias
}

}  // namespace

TEST_CASE("conv2d in f16 is the f32 conv2d rounded once (forward, dx, dw, db)", "[f16][conv]") {
    Rng rng(301);
    const std::vector<Geo> geos = {
        {1, 3, 7, 7, 5, 3, 3, 1, 1, true},      // N = 1, odd size, bias
        {1, 1, 1, 1, 1, 1, 1, 1, 0, true},      // a single element
        {1, 3, 6, 6, 8, 6, 6, 2, 2, false},     // 6×6 s2 p2 on a 6×6 image
        {2, 4, 13, 11, 6, 6, 6, 2, 2, true},    // 6×6 s2 p2 on odd sizes
        {3, 7, 5, 9, 9, 1, 1, 1, 0, true},      // 1×1 (the pointwise path), odd channels
        {2, 5, 9, 15, 6, 3, 3, 2, 1, false},    // 3×3 stride 2 on odd input
        {2, 5, 9, 9, 4, 1, 1, 2, 0, true},      // 1×1 stride 2
        {11, 3, 5, 5, 4, 3, 3, 1, 1, true},     // more images than weight-gradient groups (8)
        {2, 32, 40, 40, 64, 3, 3, 1, 1, false}, // yolov5n-like: a Bottleneck's 3×3 (P4 width at 320)
        {2, 64, 20, 20, 255, 1, 1, 1, 0, true}, // yolov5n-like: Detect's 1×1 with bias
        {2, 3, 64, 64, 16, 6, 6, 2, 2, false},  // yolov5n-like: the stem's 6×6 s2 p2
    };
    for (const Geo& g : geos) DYNAMIC_SECTION(geo_str(g)) { compare(g, rng, false); }
}

TEST_CASE("conv2d in f16 accumulates into pre-filled gradients with one rounding", "[f16][conv]") {
    Rng rng(302);
    for (const Geo& g : {Geo{2, 4, 13, 11, 6, 6, 6, 2, 2, true}, Geo{3, 7, 5, 9, 9, 1, 1, 1, 0, true},
                         Geo{11, 16, 10, 9, 8, 3, 3, 2, 1, false}})
        DYNAMIC_SECTION(geo_str(g)) { compare(g, rng, true); }
}

TEST_CASE("conv2d in f16 rejects mixed dtypes", "[f16][conv]") {
    TestCtx T;
    Rng rng(303);
    Tensor x = rand_tensor(T.data, {1, 2, 4, 4}, DType::F16, rng), w16 = rand_tensor(T.data, {3, 2, 1, 1}, DType::F16, rng);
    Tensor w32 = as_dtype(T.data, w16, DType::F32), b32 = rand_tensor(T.data, {3}, DType::F32, rng);
    Var b = Tape::constant(b32);
    REQUIRE_THROWS_WITH(conv2d(T.ctx, Tape::constant(x), Tape::constant(w32), nullptr, 1, 0),
                        Catch::Matchers::Contains("different dtypes"));
    REQUIRE_THROWS_WITH(conv2d(T.ctx, Tape::constant(x), Tape::constant(w16), &b, 1, 0),
                        Catch::Matchers::Contains("different dtypes"));
    REQUIRE_THROWS_WITH(conv2d_parts(T.ctx, {Tape::constant(x), Tape::constant(x)},
                                     Tape::constant(rand_tensor(T.data, {3, 4, 1, 1}, DType::F32, rng)), nullptr),
                        Catch::Matchers::Contains("different dtypes"));
}

// conv2d_parts: the parts' f16 values and their f32 copies; gradients from zero, so again the f32 result rounded
// once (the same per-image GEMMs per part, the same groups of images).
TEST_CASE("conv2d_parts in f16 is the f32 conv2d_parts rounded once", "[f16][conv][parts]") {
    Rng rng(304);
    struct Case {
        std::vector<int> Cs;
        int N, K, H, W;
        bool bias;
    };
    const std::vector<Case> cases = {
        {{1, 2}, 1, 1, 1, 1, false}, {{3, 5, 2}, 3, 7, 5, 9, true}, {{4, 4, 4, 4}, 11, 5, 3, 7, true},
        {{32, 32}, 2, 64, 20, 20, false},  // yolov5n-like: a C3's cv3 over its two halves
        {{64, 64}, 2, 32, 20, 20, false},  // the head's C3 cv1 after a Concat
    };
    for (const Case& k : cases) {
        TestCtx T;
        int C = 0;
        for (int ci : k.Cs) C += ci;
        INFO("parts of " << C << " channels, N " << k.N << ", K " << k.K << ", " << k.H << "x" << k.W);
        const double ws = 1.0 / std::sqrt((double)C);
        std::vector<Tensor> xs;
        for (int ci : k.Cs) xs.push_back(rand_tensor(T.data, {k.N, ci, k.H, k.W}, DType::F16, rng));
        Tensor w = rand_tensor(T.data, {k.K, C, 1, 1}, DType::F16, rng, -ws, ws), b = rand_tensor(T.data, {k.K}, DType::F16, rng);
        Tensor dy = rand_tensor(T.data, {k.N, k.K, k.H, k.W}, DType::F16, rng);
        auto run = [&](DType dt) {
            auto as = [&](const Tensor& t) { return as_dtype(T.data, t, dt); };
            std::vector<Var> xv;
            for (const Tensor& x : xs) xv.push_back(T.tape.leaf(as(x)));
            Var wv = T.tape.leaf(as(w)), bv = T.tape.leaf(as(b));
            Var y = conv2d_parts(T.ctx, xv, wv, k.bias ? &bv : nullptr);
            REQUIRE(y.t.dtype == dt);
            Tensor dyd = as(dy);
            T.tape.backward(y, &dyd);
            std::vector<Tensor> r = {copy_of(T.data, y.t), copy_of(T.data, T.tape.grad(wv)),
                                     copy_of(T.data, T.tape.grad(bv))};
            for (const Var& v : xv) r.push_back(copy_of(T.data, T.tape.grad(v)));
            T.tape.clear();
            return r;
        };
        const std::vector<Tensor> h = run(DType::F16), f = run(DType::F32);
        for (size_t i = 0; i < h.size(); ++i) {
            REQUIRE(h[i].dtype == DType::F16);
            require_close(h[i], f[i], kHalfSub, kHalfUlp, i == 0 ? "output" : "gradient " + std::to_string(i));
        }
        if (!k.bias) REQUIRE(max_abs(h[2]) == 0.0);
    }
}
