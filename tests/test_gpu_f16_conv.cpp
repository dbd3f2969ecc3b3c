/*
 * conv2d (cuDNN, PSEUDO_HALF_CONFIG) and conv2d_parts (cublasGemmStridedBatchedEx) in f16 on the GPU against the
 * CPU f16 reference, through ops.h and the tape: the output and, with a random f16 upstream gradient, dx, dw and
 * db. Every gradient buffer starts with random f16 values, so accumulation (one rounding of old + new) is checked.
 * Both sides compute in float and round each element once, so they differ only where the float sums run in a
 * different order: per element, |gpu − cpu| ≤ δ + 2^−10·|cpu| (δ the float-order difference before rounding, then
 * each side rounded by at most half an f16 ulp). On a GPU δ ≤ 2^−10 of the tensor's largest magnitude: cuDNN's and
 * cuBLAS's tensor-core kernels sum in their own orders and may hold partial sums at f16 precision (first measured on an
 * H200, 2026-12-04: up to 1.6e-4 of the largest magnitude where 1e-4, the f32 tests' bound, had been assumed).
 * On the emulated device the stand-ins run the CPU reference's float sums for the output and dx (both per image,
 * the same GEMMs; the bias enters as beta·out, the pre-filled gradient as beta·dx), so those are bit-identical;
 * dw and db sum over images in another order (all images in one pass, or the bias kernel's block reduction,
 * against the CPU's groups of images), δ ≤ 2^−20 of the largest magnitude there.
 */
#include <cstring>
#include <vector>

#include "kernels/conv2d.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

TestCtx& fresh_cpu() {  // the shared CPU context (tests/test_gpu.h), emptied for the next case
    TestCtx& t = cpu();
    t.tape.clear();
    t.act.reset();
    t.work.reset();
    t.data.reset();
    return t;
}

// TF32 off for the f32 settings around these cases (f16 ignores it), deterministic algorithms.
struct ConvSettings {
    bool det = conv_deterministic(), tf32 = conv_allow_tf32();
    ConvSettings() {
        conv_set_allow_tf32(false);
        conv_set_deterministic(true);
    }
    ~ConvSettings() {
        conv_set_deterministic(det);
        conv_set_allow_tf32(tf32);
    }
};

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

// `same_math`: the emulated stand-in computes exactly the CPU reference's float values (bits must match there).
void require_f16_close(const Tensor& got, const Tensor& want, bool same_math, const std::string& what) {
    REQUIRE(got.dtype == DType::F16);
    REQUIRE(want.dtype == DType::F16);
#if Y5_CUDA_EMU
    if (same_math) {
        REQUIRE(got.bytes() == want.bytes());
        for (int64_t i = 0; i < got.numel(); ++i)
            if (got.ptr<f16>()[i].bits != want.ptr<f16>()[i].bits)
                FAIL(what << ": element " << i << " of " << got.numel() << ": got " << at(got, i) << ", want "
                          << at(want, i) << " (bit-identical expected)");
        return;
    }
    const double delta = std::ldexp(1.0, -20);
#else
    (void)same_math;
    const double delta = std::ldexp(1.0, -10);
#endif
    require_close(got, want, delta * std::max(1.0, max_abs(want)), std::ldexp(1.0, -10), what);
}

struct Result {
    Tensor y, dx, dw, db;
};

Result run_conv(Ctx& c, Tape& tape, bool on_gpu, const Geo& g, const std::vector<Tensor>& in, Arena& host) {
    Gpu* G = on_gpu ? &gpu() : nullptr;
    auto put = [&](const Tensor& t) { return on_gpu ? G->upload(t) : copy_of(host, t); };
    auto get = [&](const Tensor& t) { return on_gpu ? G->download(t) : copy_of(host, t); };
    // in: x, w, b, dy, gx0, gw0, gb0
    Var xv = tape.param(put(in[0]), put(in[4])), wv = tape.param(put(in[1]), put(in[5])),
        bv = tape.param(put(in[2]), put(in[6]));
    Var y = conv2d(c, xv, wv, g.bias ? &bv : nullptr, g.stride, g.pad);
    REQUIRE(y.t.dtype == DType::F16);
    Tensor dyd = put(in[3]);
    tape.backward(y, &dyd);
    return Result{get(y.t), get(tape.grad(xv)), get(tape.grad(wv)), get(tape.grad(bv))};
}

void compare_case(const Geo& g, Rng& rng) {
    Gpu& G = gpu();
    G.reset();
    TestCtx& T = fresh_cpu();
    INFO(geo_str(g));
    const double wscale = 1.0 / std::sqrt((double)g.C * g.R * g.S);
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    Tensor x = rand_tensor(T.data, {g.N, g.C, g.H, g.W}, DType::F16, rng);
    Tensor w = rand_tensor(T.data, {g.K, g.C, g.R, g.S}, DType::F16, rng, -wscale, wscale);
    Tensor b = rand_tensor(T.data, {g.K}, DType::F16, rng);
    Tensor dy = rand_tensor(T.data, {g.N, g.K, Ho, Wo}, DType::F16, rng);
    const std::vector<Tensor> in = {x, w, b, dy, rand_tensor(T.data, x.shape, DType::F16, rng),
                                    rand_tensor(T.data, w.shape, DType::F16, rng),
                                    rand_tensor(T.data, b.shape, DType::F16, rng)};
    const Result want = run_conv(T.ctx, T.tape, false, g, in, T.data);
    const Result got = run_conv(G.ctx, G.tape, true, g, in, T.data);
    require_f16_close(got.y, want.y, true, "output");
    require_f16_close(got.dx, want.dx, true, "dx (accumulated)");
    require_f16_close(got.dw, want.dw, false, "dw (accumulated)");
    require_f16_close(got.db, want.db, false, "db (accumulated)");
    if (!g.bias) require_close(got.db, in[6], 0, 0, "db untouched without bias");
    T.tape.clear();
    G.reset();
}

}  // namespace

TEST_CASE("conv2d in f16 on the GPU equals the CPU f16 reference", "[gpu][conv][f16]") {
    ConvSettings s;
    Rng rng(401);
    const std::vector<Geo> geos = {
        {1, 3, 7, 7, 5, 3, 3, 1, 1, true},       // N = 1, odd size, bias
        {1, 1, 1, 1, 1, 1, 1, 1, 0, true},       // a single element
        {1, 3, 6, 6, 8, 6, 6, 2, 2, false},      // 6×6 s2 p2 on a 6×6 image
        {2, 4, 13, 11, 6, 6, 6, 2, 2, true},     // 6×6 s2 p2 on odd sizes
        {3, 7, 5, 9, 9, 1, 1, 1, 0, true},       // 1×1, odd channels
        {2, 5, 9, 15, 6, 3, 3, 2, 1, true},      // stride 2 on odd input
        {11, 3, 5, 5, 4, 3, 3, 1, 1, true},      // more images than the CPU's weight-gradient groups
        {2, 32, 40, 40, 64, 3, 3, 1, 1, false},  // yolov5n-like 3×3
        {2, 64, 20, 20, 255, 1, 1, 1, 0, true},  // yolov5n-like Detect 1×1 with bias
        {2, 3, 64, 64, 16, 6, 6, 2, 2, false},   // yolov5n-like stem
    };
    for (const Geo& g : geos) DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng); }
}

TEST_CASE("conv2d f16 and f32 of one geometry have their own cached plans", "[gpu][conv][f16]") {
    ConvSettings s;
    Gpu& G = gpu();
    G.reset();
    Rng rng(402);
    const Geo g{2, 4, 9, 9, 6, 3, 3, 1, 1, false};
    // f32, then f16, then f32 again on the same geometry: each runs with its own descriptors (a shared plan would
    // hand cuDNN FLOAT descriptors for f16 data, or the reverse, and fail or compute garbage).
    for (DType dt : {DType::F32, DType::F16, DType::F32}) {
        Tensor x = rand_tensor(G.host, {g.N, g.C, g.H, g.W}, dt, rng), w = rand_tensor(G.host, {g.K, g.C, 3, 3}, dt, rng);
        Var y = conv2d(G.ctx, Tape::constant(G.upload(x)), Tape::constant(G.upload(w)), nullptr, 1, 1);
        TestCtx& T = fresh_cpu();
        Var want = conv2d(T.ctx, Tape::constant(x), Tape::constant(w), nullptr, 1, 1);
        if (dt == DType::F16) require_f16_close(G.download(y.t), want.t, true, "f16 output");
        else require_close(G.download(y.t), want.t, 1e-4, 1e-4, "f32 output");
    }
    const Conv2dGeom g32{2, 4, 9, 9, 6, 3, 3, 1, 1}, g16{2, 4, 9, 9, 6, 3, 3, 1, 1, true};
    REQUIRE(!g32.f16);
    REQUIRE_THROWS_WITH(conv2d_fprop_cuda(G.cuda, g32, (f16*)nullptr, nullptr, nullptr, nullptr, nullptr, 0),
                        Catch::Matchers::Contains("f16 pointers for a geometry of"));
    REQUIRE_THROWS_WITH(conv2d_fprop_cuda(G.cuda, g16, (float*)nullptr, nullptr, nullptr, nullptr, nullptr, 0),
                        Catch::Matchers::Contains("f32 pointers for a geometry of"));
    G.reset();
}

// conv2d_parts in f16 (cuBLAS GemmEx, float accumulation) against the CPU f16 reference, gradients pre-filled.
// The output (parts summed in a float buffer, rounded once with the bias) and dx (f16 C, beta = 1) are the CPU's
// float values on the emulated device; dw (per-image float partials added in image order) and db are not. Again with
// the work arena filled but for one image's float sums, so the forward runs an image at a time (Ctx::staged).
TEST_CASE("conv2d_parts in f16 on the GPU equals the CPU f16 reference", "[gpu][conv][parts][f16]") {
    ConvSettings settings;
    Gpu& G = gpu();
    Rng rng(431);
    struct Case {
        std::vector<int> Cs;
        int N, K, H, W;
        bool bias;
    };
    const std::vector<Case> cases = {
        {{1, 2}, 1, 1, 1, 1, false}, {{3, 5, 2}, 3, 7, 5, 9, true}, {{4, 4, 4, 4}, 11, 5, 3, 7, true},
        {{32, 32}, 2, 64, 20, 20, false}, {{64, 64}, 2, 32, 20, 20, true},
    };
    for (const Case& k : cases) {
        G.reset();
        TestCtx& T = fresh_cpu();
        int C = 0;
        for (int ci : k.Cs) C += ci;
        INFO("parts of " << C << " channels, N " << k.N << ", K " << k.K << ", " << k.H << "x" << k.W);
        const double ws = 1.0 / std::sqrt((double)C);
        std::vector<Tensor> xs, gx0;
        for (int ci : k.Cs) {
            xs.push_back(rand_tensor(T.data, {k.N, ci, k.H, k.W}, DType::F16, rng));
            gx0.push_back(rand_tensor(T.data, {k.N, ci, k.H, k.W}, DType::F16, rng));
        }
        Tensor w = rand_tensor(T.data, {k.K, C, 1, 1}, DType::F16, rng, -ws, ws), b = rand_tensor(T.data, {k.K}, DType::F16, rng);
        Tensor gw0 = rand_tensor(T.data, w.shape, DType::F16, rng), gb0 = rand_tensor(T.data, b.shape, DType::F16, rng);
        Tensor dy = rand_tensor(T.data, {k.N, k.K, k.H, k.W}, DType::F16, rng);
        auto run = [&](bool on_gpu, bool one_image = false) {
            Ctx& c = on_gpu ? G.ctx : T.ctx;
            Tape& tape = on_gpu ? G.tape : T.tape;
            auto put = [&](const Tensor& t) { return on_gpu ? G.upload(t) : copy_of(T.data, t); };
            auto get = [&](const Tensor& t) { return on_gpu ? G.download(t) : copy_of(T.data, t); };
            std::vector<Var> xv;
            for (size_t i = 0; i < xs.size(); ++i) xv.push_back(tape.param(put(xs[i]), put(gx0[i])));
            Var wv = tape.param(put(w), put(gw0)), bv = tape.param(put(b), put(gb0));
            const size_t mark = G.work.mark(), room = (size_t)k.K * k.H * k.W * sizeof(float) + 3 * Arena::kAlign;
            if (one_image) G.work.alloc(G.work.capacity() - G.work.used() - room);
            Var y = conv2d_parts(c, xv, wv, k.bias ? &bv : nullptr);
            if (one_image) G.work.reset(mark);
            Tensor dyd = put(dy);
            tape.backward(y, &dyd);
            std::vector<Tensor> r = {get(y.t), get(tape.grad(wv)), get(tape.grad(bv))};
            for (const Var& v : xv) r.push_back(get(tape.grad(v)));
            tape.clear();
            return r;
        };
        const std::vector<Tensor> want = run(false);
        for (bool one_image : {false, true}) {
            INFO((one_image ? "an image at a time" : "all images at once"));
            const std::vector<Tensor> got = run(true, one_image);
            for (size_t i = 0; i < got.size(); ++i)
                require_f16_close(got[i], want[i], i == 0 || i >= 3,
                                  i == 0 ? "output" : i == 1 ? "dw" : i == 2 ? "db" : "dx " + std::to_string(i - 3));
            if (!k.bias) require_close(got[2], gb0, 0, 0, "db untouched without bias");
        }
    }
}
#endif
