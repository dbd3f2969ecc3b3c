/*
 * conv2d on the GPU (cuDNN, kernels/conv2d.cu) against the CPU reference (im2col + OpenBLAS), both through
 * ops.h's conv2d and the tape: the output and, with random upstream gradients, dx, dw and db. Every
 * gradient buffer starts with random values, so the test also checks that backward accumulates (+=).
 * Shapes: awkward ones (N = 1, odd sizes, 6×6 s2 p2, 1×1, non-square kernels, stride 2 on odd inputs) and
 * every distinct conv geometry of yolov5n at 640 (config/models/yolov5n.yaml), with N = 2.
 * TF32 is off (CUDNN_FMA_MATH) for the comparisons.
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

// The shared CPU context (tests/test_gpu.h), emptied for the next case.
TestCtx& fresh_cpu() {
    TestCtx& t = cpu();
    t.tape.clear();
    t.act.reset();
    t.work.reset();
    t.data.reset();
    return t;
}

// The conv settings of a case, restored when it ends (a failing REQUIRE throws through here).
struct ConvSettings {
    size_t ws = conv_workspace_limit();
    bool det = conv_deterministic(), tf32 = conv_allow_tf32(), bench = conv_benchmark();
    ConvSettings(bool allow_tf32, bool deterministic, bool benchmark) {
        conv_set_allow_tf32(allow_tf32);
        conv_set_deterministic(deterministic);
        conv_set_benchmark(benchmark);
    }
    ~ConvSettings() {
        conv_set_workspace_limit(ws);
        conv_set_deterministic(det);
        conv_set_allow_tf32(tf32);
        conv_set_benchmark(bench);
    }
};

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

// |gpu − cpu| ≤ atol·max(1, max|cpu|) + rtol·|cpu|. cuDNN and OpenBLAS sum in different orders (and cuDNN's
// algorithms differ among themselves: implicit GEMM, Winograd, FFT, split reductions); the rounding error of
// every element of one output is of the order of the partial sums of its reduction, i.e. of the output's
// magnitude, not of that element's own value (which can be near zero), hence atol relative to the largest
// value. Inputs are scaled so that outputs are O(1); wgrad and the bias gradient sum over N·Ho·Wo terms
// and reach O(100).
void require_close_scaled(const Tensor& got, const Tensor& want, double atol, double rtol, const std::string& what) {
    require_close(got, want, atol * std::max(1.0, max_abs(want)), rtol, what);
}

struct Result {
    Tensor y, dx, dw, db;  // host tensors
};

// conv2d forward and backward through the ops and the tape on `dev`, gradients pre-filled with g0.
Result run_conv(Ctx& c, Tape& tape, bool on_gpu, const Geo& g, const Tensor& x, const Tensor& w, const Tensor& b,
                const Tensor& dy, const Tensor& gx0, const Tensor& gw0, const Tensor& gb0, Arena& host) {
    Gpu* G = on_gpu ? &gpu() : nullptr;
    auto put = [&](const Tensor& t) { return on_gpu ? G->upload(t) : copy_of(host, t); };
    auto get = [&](const Tensor& t) { return on_gpu ? G->download(t) : copy_of(host, t); };
    Var xv = tape.param(put(x), put(gx0)), wv = tape.param(put(w), put(gw0)), bv = tape.param(put(b), put(gb0));
    Var y = conv2d(c, xv, wv, g.bias ? &bv : nullptr, g.stride, g.pad);
    Tensor dyd = put(dy);
    tape.backward(y, &dyd);
    Result r;
    r.y = get(y.t);
    r.dx = get(tape.grad(xv));
    r.dw = get(tape.grad(wv));
    r.db = get(tape.grad(bv));
    return r;
}

void compare_case(const Geo& g, Rng& rng, double atol = 1e-4, double rtol = 1e-4) {
    Gpu& G = gpu();
    G.reset();
    TestCtx& T = fresh_cpu();
    INFO(geo_str(g));
    const double wscale = 1.0 / std::sqrt((double)g.C * g.R * g.S);  // keeps the output O(1)
    Tensor x = rand_tensor(T.data, {g.N, g.C, g.H, g.W}, DType::F32, rng);
    Tensor w = rand_tensor(T.data, {g.K, g.C, g.R, g.S}, DType::F32, rng, -wscale, wscale);
    Tensor b = rand_tensor(T.data, {g.K}, DType::F32, rng);
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    Tensor dy = rand_tensor(T.data, {g.N, g.K, Ho, Wo}, DType::F32, rng);
    Tensor gx0 = rand_tensor(T.data, x.shape, DType::F32, rng), gw0 = rand_tensor(T.data, w.shape, DType::F32, rng),
           gb0 = rand_tensor(T.data, b.shape, DType::F32, rng);

    Result want = run_conv(T.ctx, T.tape, false, g, x, w, b, dy, gx0, gw0, gb0, T.data);
    Result got = run_conv(G.ctx, G.tape, true, g, x, w, b, dy, gx0, gw0, gb0, T.data);
    require_close_scaled(got.y, want.y, atol, rtol, "output");
    require_close_scaled(got.dx, want.dx, atol, rtol, "dx (accumulated)");
    require_close_scaled(got.dw, want.dw, atol, rtol, "dw (accumulated)");
    require_close_scaled(got.db, want.db, atol, rtol, g.bias ? "db (accumulated)" : "db (untouched)");
    if (!g.bias) require_close(got.db, gb0, 0, 0, "db untouched without bias");
    T.tape.clear();
    G.reset();
}

// Every distinct conv geometry of yolov5n (config/models/yolov5n.yaml: depth 0.33, width 0.25) at 640:
// Conv layers (k, s, p = k/2 unless given), C3's cv1/cv2/cv3 and its Bottlenecks' 1×1 and 3×3, SPPF's two
// 1×1s, and Detect's three 1×1s with bias (nc 80: 3·85 = 255 outputs).
std::vector<Geo> yolov5n_640(int N) {
    return {
        {N, 3, 640, 640, 16, 6, 6, 2, 2, false},     // 0 Conv 6×6 s2 p2 (P1/2)
        {N, 16, 320, 320, 32, 3, 3, 2, 1, false},    // 1 Conv s2 (P2/4)
        {N, 32, 160, 160, 16, 1, 1, 1, 0, false},    // 2 C3 cv1, cv2
        {N, 16, 160, 160, 16, 1, 1, 1, 0, false},    // 2 Bottleneck cv1
        {N, 16, 160, 160, 16, 3, 3, 1, 1, false},    // 2 Bottleneck cv2
        {N, 32, 160, 160, 32, 1, 1, 1, 0, false},    // 2 C3 cv3
        {N, 32, 160, 160, 64, 3, 3, 2, 1, false},    // 3 Conv s2 (P3/8)
        {N, 64, 80, 80, 32, 1, 1, 1, 0, false},      // 4 C3 cv1, cv2
        {N, 32, 80, 80, 32, 1, 1, 1, 0, false},      // 4, 17 Bottleneck cv1
        {N, 32, 80, 80, 32, 3, 3, 1, 1, false},      // 4, 17 Bottleneck cv2
        {N, 64, 80, 80, 64, 1, 1, 1, 0, false},      // 4, 17 C3 cv3
        {N, 64, 80, 80, 128, 3, 3, 2, 1, false},     // 5 Conv s2 (P4/16)
        {N, 128, 40, 40, 64, 1, 1, 1, 0, false},     // 6, 20 C3 cv1, cv2; 14 Conv 1×1
        {N, 64, 40, 40, 64, 1, 1, 1, 0, false},      // 6, 13, 20 Bottleneck cv1
        {N, 64, 40, 40, 64, 3, 3, 1, 1, false},      // 6, 13, 20 Bottleneck cv2
        {N, 128, 40, 40, 128, 1, 1, 1, 0, false},    // 6, 13, 20 C3 cv3
        {N, 128, 40, 40, 256, 3, 3, 2, 1, false},    // 7 Conv s2 (P5/32)
        {N, 256, 20, 20, 128, 1, 1, 1, 0, false},    // 8, 23 C3 cv1, cv2; 9 SPPF cv1; 10 Conv 1×1
        {N, 128, 20, 20, 128, 1, 1, 1, 0, false},    // 8, 23 Bottleneck cv1
        {N, 128, 20, 20, 128, 3, 3, 1, 1, false},    // 8, 23 Bottleneck cv2
        {N, 256, 20, 20, 256, 1, 1, 1, 0, false},    // 8, 23 C3 cv3
        {N, 512, 20, 20, 256, 1, 1, 1, 0, false},    // 9 SPPF cv2 (4·128 in)
        {N, 256, 40, 40, 64, 1, 1, 1, 0, false},     // 13 C3(256→128) cv1, cv2
        {N, 128, 80, 80, 32, 1, 1, 1, 0, false},     // 17 C3(128→64) cv1, cv2
        {N, 64, 80, 80, 64, 3, 3, 2, 1, false},      // 18 Conv s2
        {N, 128, 40, 40, 128, 3, 3, 2, 1, false},    // 21 Conv s2
        {N, 64, 80, 80, 255, 1, 1, 1, 0, true},      // 24 Detect P3
        {N, 128, 40, 40, 255, 1, 1, 1, 0, true},     // 24 Detect P4
        {N, 256, 20, 20, 255, 1, 1, 1, 0, true},     // 24 Detect P5
    };
}

}  // namespace

TEST_CASE("conv2d on the GPU equals the CPU reference at awkward shapes", "[gpu][conv]") {
    ConvSettings s(/*allow_tf32=*/false, /*deterministic=*/true, /*benchmark=*/false);
    Rng rng(201);
    const std::vector<Geo> geos = {
        {1, 3, 7, 7, 5, 3, 3, 1, 1, true},      // N = 1, odd size, bias
        {1, 1, 1, 1, 1, 1, 1, 1, 0, true},      // a single element
        {1, 3, 6, 6, 8, 6, 6, 2, 2, false},     // 6×6 s2 p2 on a 6×6 image
        {2, 4, 13, 11, 6, 6, 6, 2, 2, true},    // 6×6 s2 p2 on odd sizes
        {3, 7, 5, 9, 9, 1, 1, 1, 0, true},      // 1×1 (the pointwise CPU path), odd channels
        {2, 5, 9, 9, 4, 1, 1, 2, 0, false},     // 1×1 stride 2
        {2, 3, 9, 10, 4, 3, 5, 1, 1, true},     // non-square kernel 3×5
        {1, 2, 11, 8, 3, 5, 3, 2, 2, false},    // non-square kernel 5×3, stride 2
        {2, 5, 9, 15, 6, 3, 3, 2, 1, true},     // stride 2 on odd input
        {2, 3, 17, 17, 7, 3, 3, 2, 0, false},   // stride 2, no padding
        {1, 2, 3, 3, 3, 5, 5, 1, 2, true},      // kernel larger than the image (padding covers it)
        {2, 16, 33, 31, 24, 3, 3, 1, 1, true},  // more channels, odd sizes
    };
    for (const Geo& g : geos) DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng); }
}

TEST_CASE("conv2d on the GPU equals the CPU reference at every yolov5n geometry at 640", "[gpu][conv][yolov5n]") {
    ConvSettings s(false, true, false);
    Rng rng(202);
    for (const Geo& g : yolov5n_640(2)) DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng); }
}

TEST_CASE("conv2d on the GPU with benchmarked algorithms (cudnnFind) equals the CPU reference", "[gpu][conv]") {
    ConvSettings s(false, true, /*benchmark=*/true);
    Rng rng(203);
    for (const Geo& g : {Geo{2, 16, 33, 31, 24, 3, 3, 1, 1, true}, Geo{2, 32, 80, 80, 64, 3, 3, 2, 1, false}})
        DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng); }
}

TEST_CASE("conv2d on the GPU with non-deterministic algorithms allowed still equals the CPU reference", "[gpu][conv]") {
    ConvSettings s(false, /*deterministic=*/false, false);
    Rng rng(204);
    for (const Geo& g : {Geo{2, 16, 33, 31, 24, 3, 3, 1, 1, true}, Geo{2, 64, 40, 40, 64, 3, 3, 1, 1, false}})
        DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng); }
}

// With the workspace limit at what one image's passes need, a batch's passes stay within it (an algorithm that fits,
// or the batch in parts: kernels/conv2d.cu's plan_locked) and still equal the CPU. On an H200 the stride-2 layers'
// deterministic dgrads need about 10 MB per image at 640, so parts are what a real batch gets there.
TEST_CASE("conv2d on the GPU within a workspace limit one image fills", "[gpu][conv]") {
    ConvSettings s(false, true, false);  // restores the limit
    Gpu& G = gpu();
    Rng rng(206);
    for (const Geo& g : {Geo{7, 16, 64, 64, 32, 3, 3, 2, 1, true}, Geo{8, 32, 40, 40, 64, 3, 3, 2, 1, false}})
        DYNAMIC_SECTION(geo_str(g)) {
            const ConvPass passes[3] = {ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad};
            size_t one = 0;
            for (ConvPass p : passes)
                one = std::max(one, conv2d_workspace_cuda(G.cuda, Conv2dGeom{1, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad}, p));
            conv_set_workspace_limit(one);
            for (ConvPass p : passes)
                CHECK(conv2d_workspace_cuda(G.cuda, Conv2dGeom{g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad}, p) <= one);
            compare_case(g, rng);
        }
}

TEST_CASE("conv2d on the GPU with TF32 allowed is within TF32's precision", "[gpu][conv][tf32]") {
    // TF32 keeps 10 mantissa bits of each product's inputs: a relative error of about 5e-4 per term, so
    // 1e-2 (relative to the output's magnitude) bounds it with room; on GPUs before sm_80 this is f32.
    ConvSettings s(/*allow_tf32=*/true, true, false);
    Rng rng(205);
    for (const Geo& g : {Geo{2, 64, 40, 40, 64, 3, 3, 1, 1, true}, Geo{2, 128, 20, 20, 256, 1, 1, 1, 0, false}})
        DYNAMIC_SECTION(geo_str(g)) { compare_case(g, rng, 1e-2, 1e-2); }
}

TEST_CASE("conv2d backward on the GPU is bit-identical run to run in deterministic mode", "[gpu][conv][determinism]") {
    ConvSettings s(false, /*deterministic=*/true, false);
    Gpu& G = gpu();
    Rng rng(206);
    for (const Geo& g : {Geo{4, 32, 40, 40, 64, 3, 3, 1, 1, true}, Geo{8, 64, 20, 20, 64, 1, 1, 1, 0, true},
                         Geo{2, 3, 64, 64, 16, 6, 6, 2, 2, false}}) {
        DYNAMIC_SECTION(geo_str(g)) {
            G.reset();
            const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
            Tensor x = rand_tensor(G.host, {g.N, g.C, g.H, g.W}, DType::F32, rng);
            Tensor w = rand_tensor(G.host, {g.K, g.C, g.R, g.S}, DType::F32, rng);
            Tensor b = rand_tensor(G.host, {g.K}, DType::F32, rng);
            Tensor dy = rand_tensor(G.host, {g.N, g.K, Ho, Wo}, DType::F32, rng);
            Tensor zx = G.host.tensor(x.shape), zw = G.host.tensor(w.shape), zb = G.host.tensor(b.shape);
            std::memset(zx.data, 0, zx.bytes());
            std::memset(zw.data, 0, zw.bytes());
            std::memset(zb.data, 0, zb.bytes());
            Tensor out[2][3];
            for (int run = 0; run < 2; ++run) {
                G.tape.clear();
                Var xv = G.tape.param(G.upload(x), G.upload(zx)), wv = G.tape.param(G.upload(w), G.upload(zw)),
                    bv = G.tape.param(G.upload(b), G.upload(zb));
                Var y = conv2d(G.ctx, xv, wv, &bv, g.stride, g.pad);
                Tensor dyd = G.upload(dy);
                G.tape.backward(y, &dyd);
                out[run][0] = G.download(G.tape.grad(xv));
                out[run][1] = G.download(G.tape.grad(wv));
                out[run][2] = G.download(G.tape.grad(bv));
            }
            CHECK(std::memcmp(out[0][0].data, out[1][0].data, out[0][0].bytes()) == 0);  // dx
            CHECK(std::memcmp(out[0][1].data, out[1][1].data, out[0][1].bytes()) == 0);  // dw
            CHECK(std::memcmp(out[0][2].data, out[1][2].data, out[0][2].bytes()) == 0);  // db
            G.reset();
        }
    }
}

// conv2d_parts (cuBLAS) against the CPU reference at the geometries yolov5n reads unconcatenated at 640: every
// C3's cv3 (two halves) and the head's C3 cv1/cv2 after a Concat (upsampled or strided half + skip), batch 2,
// plus awkward ones; gradients pre-filled, so accumulation is checked too, but part 0's: a leaf, its gradient new
// on the tape and poisoned (Tape::set_poison), which its first producer writes (cuBLAS's beta 0) beside the parts
// it adds to. TF32 off: cuBLAS follows the conv setting.
TEST_CASE("conv2d_parts on the GPU equals the CPU reference", "[gpu][conv][parts]") {
    ConvSettings settings(false, true, false);
    Gpu& G = gpu();
    Rng rng(231);
    struct Case {
        std::vector<int> Cs;
        int N, K, H, W;
        bool bias;
    };
    const std::vector<Case> cases = {
        {{1, 2}, 1, 1, 1, 1, false},     {{3, 5, 2}, 3, 7, 5, 9, true},
        {{16, 16}, 2, 32, 160, 160, false}, {{32, 32}, 2, 64, 80, 80, false},  // C3 cv3, layers 2 and 4
        {{64, 64}, 2, 128, 40, 40, false},  {{128, 128}, 2, 256, 20, 20, false},
        {{128, 128}, 2, 64, 40, 40, false}, {{64, 64}, 2, 32, 80, 80, false},  // head C3 cv1/cv2 after a Concat
        {{64, 64}, 2, 64, 40, 40, false},   {{128, 128}, 2, 128, 20, 20, false},
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
            xs.push_back(rand_tensor(T.data, {k.N, ci, k.H, k.W}, DType::F32, rng));
            gx0.push_back(rand_tensor(T.data, {k.N, ci, k.H, k.W}, DType::F32, rng));
        }
        Tensor w = rand_tensor(T.data, {k.K, C, 1, 1}, DType::F32, rng, -ws, ws), b = rand_tensor(T.data, {k.K}, DType::F32, rng);
        Tensor gw0 = rand_tensor(T.data, w.shape, DType::F32, rng), gb0 = rand_tensor(T.data, b.shape, DType::F32, rng);
        Tensor dy = rand_tensor(T.data, {k.N, k.K, k.H, k.W}, DType::F32, rng);
        auto run = [&](bool on_gpu) {
            Ctx& c = on_gpu ? G.ctx : T.ctx;
            Tape& tape = on_gpu ? G.tape : T.tape;
            auto put = [&](const Tensor& t) { return on_gpu ? G.upload(t) : copy_of(T.data, t); };
            auto get = [&](const Tensor& t) { return on_gpu ? G.download(t) : copy_of(T.data, t); };
            std::vector<Var> xv;
            for (size_t i = 0; i < xs.size(); ++i)
                xv.push_back(i == 0 ? tape.leaf(put(xs[i])) : tape.param(put(xs[i]), put(gx0[i])));
            Var wv = tape.param(put(w), put(gw0)), bv = tape.param(put(b), put(gb0));
            Var y = conv2d_parts(c, xv, wv, k.bias ? &bv : nullptr);
            Tensor dyd = put(dy);
            tape.set_poison(true);
            tape.backward(y, &dyd);
            tape.set_poison(false);
            std::vector<Tensor> r = {get(y.t), get(tape.grad(wv)), get(tape.grad(bv))};
            for (const Var& v : xv) r.push_back(get(tape.grad(v)));
            tape.clear();
            return r;
        };
        const std::vector<Tensor> want = run(false), got = run(true);
        for (size_t i = 0; i < got.size(); ++i)
            require_close_scaled(got[i], want[i], 1e-4, 1e-4, i == 0 ? "output" : "gradient " + std::to_string(i));
        if (!k.bias) require_close(got[2], gb0, 0, 0, "db untouched without bias");
    }
}

TEST_CASE("conv2d CUDA: algorithms are cached per geometry and settings, and bad requests are errors",
          "[gpu][conv][errors]") {
    ConvSettings s(false, true, false);
    Gpu& G = gpu();
    G.reset();
    const Conv2dGeom g{2, 8, 12, 12, 16, 3, 3, 1, 1};
    const size_t a = conv2d_workspace_cuda(G.cuda, g, ConvPass::Fprop);
    CHECK(conv2d_workspace_cuda(G.cuda, g, ConvPass::Fprop) == a);  // cached
    CHECK(a <= conv_workspace_limit());
    for (ConvPass p : {ConvPass::Dgrad, ConvPass::Wgrad}) CHECK(conv2d_workspace_cuda(G.cuda, g, p) <= conv_workspace_limit());
    conv_clear_cache();
    CHECK(conv2d_workspace_cuda(G.cuda, g, ConvPass::Fprop) == a);  // chosen again, the same way

    // A workspace smaller than the algorithm needs is refused, not overrun.
    const size_t need = conv2d_workspace_cuda(G.cuda, g, ConvPass::Wgrad);
    if (need > 0) {
        Tensor x = G.act.tensor({2, 8, 12, 12}), dy = G.act.tensor({2, 16, 12, 12}), dw = G.act.tensor({16, 8, 3, 3});
        CHECK_THROWS_WITH(conv2d_wgrad_cuda(G.cuda, g, dw.ptr<float>(), nullptr, dy.ptr<float>(), x.ptr<float>(),
                                            nullptr, 0),
                          Catch::Matchers::Contains("workspace bytes given"));
    }
    // f64 tensors have no CUDA path.
    Var x = Tape::constant(G.act.tensor({1, 2, 5, 5}, DType::F64)), w = Tape::constant(G.act.tensor({3, 2, 3, 3}, DType::F64));
    CHECK_THROWS_WITH(conv2d(G.ctx, x, w, nullptr, 1, 1), Catch::Matchers::Contains("must be f32"));
    G.reset();
}
#endif

#if Y5_CUDA
// Detect's head op (conv1x1_maps: the conv's output only in the work arena, transposed into (N, na, H, W, no)) on the
// GPU against the CPU op, f32 and f16, with the whole batch in one chunk and with the work arena's free space cut to
// what 2 images need, so that several chunks run (the weight and bias gradients then add per chunk). Gradients
// pre-filled at random, or x a leaf: its gradient new and poisoned (Tape::set_poison), written by each chunk's dgrad.
// Tolerances as conv2d's (f32: 1e-4 of the largest magnitude; f16: the same δ and 2^−10 relative, and per extra
// chunk one more f16 rounding of the weight and bias gradients, 2^−11 of their largest magnitude each).
TEST_CASE("conv1x1_maps on the GPU equals the CPU op, in one chunk and in several", "[gpu][conv][maps]") {
    ConvSettings settings(false, true, false);
    Gpu& G = gpu();
    Rng rng(241);
    const int N = 5, C = 16, H = 9, W = 7, na = 3, no = 11, K = na * no;
    for (DType dt : {DType::F32, DType::F16})
        for (int mode = 0; mode < 3; ++mode) {
            const bool chunked = mode > 0, fresh = mode == 2;
            DYNAMIC_SECTION(dtype_name(dt) << (chunked ? ", in chunks" : ", one chunk") << (fresh ? ", dx new" : "")) {
                G.reset();
                TestCtx& T = fresh_cpu();
                const double ws = 1.0 / std::sqrt((double)C);
                std::vector<Tensor> in = {rand_tensor(T.data, {N, C, H, W}, dt, rng), rand_tensor(T.data, {K, C, 1, 1}, dt, rng, -ws, ws),
                                          rand_tensor(T.data, {K}, dt, rng)};
                std::vector<Tensor> g0;
                for (const Tensor& t : in) g0.push_back(rand_tensor(T.data, t.shape, dt, rng));
                Tensor dy = rand_tensor(T.data, {N, na, H, W, no}, dt, rng);
                auto run = [&](bool on_gpu) {
                    Ctx& c = on_gpu ? G.ctx : T.ctx;
                    Tape& tape = on_gpu ? G.tape : T.tape;
                    auto put = [&](const Tensor& t) { return on_gpu ? G.upload(t) : copy_of(T.data, t); };
                    auto get = [&](const Tensor& t) { return on_gpu ? G.download(t) : copy_of(T.data, t); };
                    std::vector<Var> v;
                    for (size_t i = 0; i < in.size(); ++i)
                        v.push_back(i == 0 && fresh ? tape.leaf(put(in[i])) : tape.param(put(in[i]), put(g0[i])));
                    Tensor dyd = put(dy);
                    size_t fill = 0;
                    if (on_gpu && chunked) {  // leave room for 2 images' staging and the cuDNN workspace of 2
                        size_t ws = 0;
                        for (ConvPass p : {ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad})
                            ws = std::max(ws, conv2d_workspace_cuda(G.cuda, Conv2dGeom{2, C, H, W, K, 1, 1, 1, 0,
                                                                                       dt == DType::F16}, p));
                        const size_t room = 2 * (size_t)K * H * W * dtype_size(dt) + ws + 8 * Arena::kAlign;
                        fill = G.work.capacity() - G.work.used() - room;
                        G.work.alloc(fill);
                    }
                    Var y = conv1x1_maps(c, v[0], v[1], &v[2], na);
                    tape.set_poison(true);
                    tape.backward(y, &dyd);
                    tape.set_poison(false);
                    std::vector<Tensor> r = {get(y.t), get(tape.grad(v[0])), get(tape.grad(v[1])), get(tape.grad(v[2]))};
                    tape.clear();
                    if (fill) G.work.reset();
                    return r;
                };
                const std::vector<Tensor> want = run(false), got = run(true);
                const char* names[4] = {"output", "dx", "dw", "db"};
                for (int i = 0; i < 4; ++i) {
                    INFO(names[i]);
                    REQUIRE(got[i].dtype == dt);
                    if (dt == DType::F32) require_close_scaled(got[i], want[i], 1e-4, 1e-4, names[i]);
                    else {
                        const double extra = (chunked && i >= 2) ? 3 * std::ldexp(1.0, -11) : 0;
                        require_close(got[i], want[i], (1e-4 + extra) * std::max(1.0, max_abs(want[i])),
                                      std::ldexp(1.0, -10), names[i]);
                    }
                }
            }
        }
}
#endif
