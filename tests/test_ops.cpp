/*
 * CPU reference ops: hand-computed forward cases, then a finite-difference gradient check in double for
 * every op, through the ops layer and the tape, on awkward shapes (N = 1, C = 3, odd H and W) and on
 * shapes yolov5n really has at 640 (batch 1). Large shapes are probed at random elements.
 */
#include "kernels/batchnorm.h"
#include "kernels/conv2d.h"
#include "kernels/reshape.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

static Tensor f32_tensor(Arena& a, Shape s, std::initializer_list<float> v) {
    Tensor t = a.tensor(s, DType::F32);
    REQUIRE((int64_t)v.size() == t.numel());
    int i = 0;
    for (float x : v) t.ptr<float>()[i++] = x;
    return t;
}

static Tensor f64_tensor(Arena& a, Shape s, std::initializer_list<double> v) {
    Tensor t = a.tensor(s, DType::F64);
    REQUIRE((int64_t)v.size() == t.numel());
    int i = 0;
    for (double x : v) t.ptr<double>()[i++] = x;
    return t;
}

// ---------------------------------------------------------------------------------------------------
// Forward, by hand

TEST_CASE("conv2d 3x3 on a 4x4 integer input by hand", "[ops][conv2d]") {
    TestCtx tc;
    // x = 1..16 row-major; channel 0 sums the 3×3 window, channel 1 is a Sobel-x filter (each row grows by
    // 1 per column, so every window gives (1+2+1)·(left − right) = 4·(−2) = −8), plus bias 0.5 on channel 1.
    Tensor x = f32_tensor(tc.data, {1, 1, 4, 4}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
    Tensor w = f32_tensor(tc.data, {2, 1, 3, 3}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, -1, 2, 0, -2, 1, 0, -1});
    Tensor b = f32_tensor(tc.data, {2}, {0, 0.5f});
    Var bv = Tape::constant(b);
    Var y = conv2d(tc.ctx, Tape::constant(x), Tape::constant(w), &bv, 1, 0);
    REQUIRE(y.shape() == Shape({1, 2, 2, 2}));
    Tensor want = f32_tensor(tc.data, {1, 2, 2, 2}, {54, 63, 90, 99, -7.5f, -7.5f, -7.5f, -7.5f});
    require_close(y.t, want, 0, 0, "conv2d 3x3 valid");

    // Same input, window-sum kernel, stride 2, pad 1: windows centred on (0,0), (0,2), (2,0), (2,2).
    Var y2 = conv2d(tc.ctx, Tape::constant(x), Tape::constant(w.view({2, 1, 3, 3})), nullptr, 2, 1);
    REQUIRE(y2.shape() == Shape({1, 2, 2, 2}));
    // (0,0): 1+2+5+6 = 14; (0,2): 2+3+4+6+7+8 = 30; (2,0): 5+6+9+10+13+14 = 57; (2,2): 6+7+8+10+11+12+14+15+16 = 99
    for (int i = 0; i < 4; ++i) CHECK(y2.t.ptr<float>()[i] == (float[]){14, 30, 57, 99}[i]);
}

TEST_CASE("batchnorm2d training statistics and running update follow PyTorch", "[ops][batchnorm]") {
    TestCtx tc;
    // One channel, values 1,2,3,4: mean 2.5, biased var 1.25 (normalises), unbiased 5/3 (running_var).
    Tensor x = f64_tensor(tc.data, {1, 1, 2, 2}, {1, 2, 3, 4});
    Tensor g = f64_tensor(tc.data, {1}, {2.0}), be = f64_tensor(tc.data, {1}, {0.5});
    Tensor rm = f64_tensor(tc.data, {1}, {0.0}), rv = f64_tensor(tc.data, {1}, {1.0});
    const float eps = 1e-3f, mom = 0.1f;
    Var y = batchnorm2d(tc.ctx, Tape::constant(x), Tape::constant(g), Tape::constant(be), rm, rv, true, eps, mom);
    for (int i = 0; i < 4; ++i)
        CHECK(y.t.ptr<double>()[i] == Approx((i + 1 - 2.5) / std::sqrt(1.25 + (double)eps) * 2.0 + 0.5).epsilon(1e-12));
    CHECK(rm.ptr<double>()[0] == Approx(0.1 * 2.5).epsilon(1e-7));
    CHECK(rv.ptr<double>()[0] == Approx(0.9 * 1.0 + 0.1 * (5.0 / 3.0)).epsilon(1e-7));

    // A second call moves them again from where they are: new = 0.9·old + 0.1·batch.
    batchnorm2d(tc.ctx, Tape::constant(x), Tape::constant(g), Tape::constant(be), rm, rv, true, eps, mom);
    CHECK(rm.ptr<double>()[0] == Approx(0.9 * 0.25 + 0.25).epsilon(1e-7));

    // Eval mode uses the running statistics and leaves them alone.
    double m = rm.ptr<double>()[0], v = rv.ptr<double>()[0];
    Var e = batchnorm2d(tc.ctx, Tape::constant(x), Tape::constant(g), Tape::constant(be), rm, rv, false, eps, mom);
    CHECK(e.t.ptr<double>()[3] == Approx((4 - m) / std::sqrt(v + (double)eps) * 2.0 + 0.5).epsilon(1e-7));
    CHECK(rm.ptr<double>()[0] == m);
    CHECK(rv.ptr<double>()[0] == v);
}

TEST_CASE("batchnorm2d's one-pass statistics keep a channel whose mean dwarfs its spread", "[ops][batchnorm]") {
    // Σ(x − k) and Σ(x − k)² about one of the channel's values k (kernels/batchnorm.h): against a two-pass double
    // reference on the same floats, with k itself 8 standard deviations out, mean/std up to 1e7.
    Rng rng(5);
    for (double mu : {0.0, 1e3, 1e5})
        for (double sd : {1.0, 1e-2}) {
            const int N = 3, C = 2, HW = 777;
            std::vector<float> x((size_t)N * C * HW), y(x.size());
            for (float& v : x) v = (float)(mu + sd * rng.normal());
            x[0] = (float)(mu + 8 * sd);
            float g[2] = {1, 1}, b[2] = {0, 0}, rm[2] = {0, 0}, rv[2] = {1, 1}, sm[2], si[2];
            batchnorm_forward_train_cpu<float>(y.data(), sm, si, rm, rv, x.data(), g, b, N, C, HW, 0.f, 0.1f, kNoAct);
            for (int c = 0; c < C; ++c) {
                double s = 0, q = 0;
                for (int n = 0; n < N; ++n)
                    for (int i = 0; i < HW; ++i) s += x[((size_t)n * C + c) * HW + i];
                const double m = s / (N * HW);
                for (int n = 0; n < N; ++n)
                    for (int i = 0; i < HW; ++i) q += std::pow(x[((size_t)n * C + c) * HW + i] - m, 2);
                const double var = q / (N * HW);
                CAPTURE(mu, sd, c);
                CHECK(sm[c] == Approx(m).epsilon(1e-7).margin(1e-30));
                CHECK(si[c] == Approx(1 / std::sqrt(var)).epsilon(2e-7));
            }
        }
}

TEST_CASE("batchnorm2d's CPU kernels on small maps (rows gathered) match a direct double computation",
          "[ops][batchnorm]") {
    // kernels/batchnorm.h takes rows shorter than kBnGather kBnChunk / HW at a time, copied into one buffer: with N
    // images that is several groups and a partial one per channel. The f32 forward (SiLU), and the backward in place
    // (overwrite: dz parked in dinp) and accumulating, training and eval, against BatchNorm's formulas written out
    // here in double; every output written (NaN before the forward).
    Rng rng(77);
    const Act silu{ActKind::SiLU, 0.f};
    auto sig = [](double z) { return 1 / (1 + std::exp(-z)); };
    for (int HW : {1, 9, 36, 100, 127, 128, 200}) {
        const int N = 67, C = 3;
        const size_t n = (size_t)N * C * HW;
        auto at = [&](int i, int c, int k) { return ((size_t)i * C + c) * HW + k; };
        std::vector<float> x(n), dy(n), acc(n);
        for (float& v : x) v = (float)(0.5 + 1.5 * rng.normal());
        for (float& v : dy) v = (float)rng.normal();
        for (float& v : acc) v = (float)rng.normal();
        const float g[C] = {0.7f, 1.3f, 1.1f}, b[C] = {0.2f, -0.4f, 0.f}, eps = 1e-3f;
        float rm[C] = {}, rv[C] = {1, 1, 1}, sm[C], si[C];
        std::vector<float> y(n, NAN);
        batchnorm_forward_train_cpu<float>(y.data(), sm, si, rm, rv, x.data(), g, b, N, C, HW, eps, 0.03f, silu);
        CAPTURE(HW);
        for (bool training : {true, false})
            for (bool overwrite : {true, false}) {
                CAPTURE(training, overwrite);
                std::vector<float> dx = overwrite ? dy : acc;  // in place when overwriting: dinp is dout
                float dg[C] = {}, db[C] = {};
                const float* dout = overwrite ? dx.data() : dy.data();
                if (training)
                    batchnorm_backward_train_cpu<float>(dx.data(), dg, db, dout, x.data(), g, b, sm, si, N, C, HW, silu,
                                                        0, C, overwrite);
                else
                    batchnorm_backward_eval_cpu<float>(dx.data(), dg, db, dout, x.data(), g, b, rm, rv, N, C, HW, eps,
                                                       silu, 0, C, overwrite);
                int64_t bad = 0;
                for (int c = 0; c < C; ++c) {
                    double mean = 0, var = 0;
                    for (int i = 0; i < N; ++i)
                        for (int k = 0; k < HW; ++k) mean += x[at(i, c, k)];
                    mean /= (double)N * HW;
                    for (int i = 0; i < N; ++i)
                        for (int k = 0; k < HW; ++k) var += std::pow(x[at(i, c, k)] - mean, 2);
                    var /= (double)N * HW;
                    const double m = training ? mean : rm[c], is = 1 / std::sqrt((training ? var : rv[c]) + eps);
                    double sdz = 0, sdzx = 0;
                    for (int i = 0; i < N; ++i)
                        for (int k = 0; k < HW; ++k) {
                            const size_t e = at(i, c, k);
                            const double xh = (x[e] - m) * is, z = xh * g[c] + b[c], s = sig(z);
                            const double dz = dy[e] * s * (1 + z * (1 - s));
                            if (training) bad += !(std::fabs(y[e] - z * s) <= 1e-5 * (1 + std::fabs(z * s)));
                            sdz += dz, sdzx += dz * xh;
                        }
                    CHECK(db[c] == Approx(sdz).epsilon(1e-5).margin(1e-4));
                    CHECK(dg[c] == Approx(sdzx).epsilon(1e-5).margin(1e-4));
                    const double M = (double)N * HW;
                    for (int i = 0; i < N; ++i)
                        for (int k = 0; k < HW; ++k) {
                            const size_t e = at(i, c, k);
                            const double xh = (x[e] - m) * is, z = xh * g[c] + b[c], s = sig(z);
                            const double dz = dy[e] * s * (1 + z * (1 - s));
                            const double d = training ? g[c] * is * (dz - sdz / M - xh * sdzx / M) : dz * g[c] * is;
                            const double want = (overwrite ? 0.0 : acc[e]) + d;
                            bad += !(std::fabs(dx[e] - want) <= 2e-5 * (1 + std::fabs(want)));
                        }
                }
                INFO(bad << " of " << 2 * n << " values outside tolerance");
                REQUIRE(bad == 0);
            }
    }
}

TEST_CASE("activations match PyTorch values", "[ops][activation]") {
    auto f = [](const char* spec, double x) { return act_forward(parse_act(spec), x); };
    CHECK(f("nn.SiLU()", 1.0) == Approx(0.7310585786300049));
    CHECK(f("nn.SiLU()", -2.0) == Approx(-0.2384058440442351));
    CHECK(f("nn.ReLU()", -0.5) == 0.0);
    CHECK(f("nn.ReLU6()", 7.0) == 6.0);
    CHECK(f("nn.ReLU6()", 2.5) == 2.5);
    CHECK(f("nn.LeakyReLU(0.1)", -2.0) == Approx(-0.2));
    CHECK(f("nn.LeakyReLU()", -2.0) == Approx(-0.02));
    CHECK(f("nn.Hardswish()", 1.0) == Approx(4.0 / 6.0));
    CHECK(f("nn.Hardswish()", -4.0) == 0.0);
    CHECK(f("nn.Hardswish()", 4.0) == 4.0);
    CHECK(f("nn.Identity()", -3.25) == -3.25);
    CHECK(f("nn.Sigmoid()", 0.0) == 0.5);
    CHECK(sigmoid(-800.0) == 0.0);  // no overflow in exp
    CHECK(sigmoid(800.0f) == 1.0f);
    // PyTorch's choices at the kinks
    CHECK(act_grad(parse_act("nn.ReLU()"), 0.0) == 0.0);
    CHECK(act_grad(parse_act("nn.ReLU6()"), 6.0) == 0.0);
    CHECK(act_grad(parse_act("nn.Hardswish()"), 3.0) == Approx(1.5));
    CHECK(act_grad(parse_act("nn.Hardswish()"), -3.0) == Approx(-0.5));
}

TEST_CASE("the CPU SiLU fast path equals the reference math", "[ops][activation]") {
    double worst = 0;
    for (double xd = -95; xd <= 95; xd += 0.0137) {
        const float x = (float)xd;
        const double e = std::exp(std::min((double)88.37f, std::max((double)-87.3f, (double)x)));
        worst = std::max(worst, std::abs(exp_cpu_vec(x) - e) / e);
    }
    CHECK(worst < 3e-7);
    Rng rng(3);
    std::vector<float> x(1000), y(1000), dx(1000, 0.5f), dy(1000);
    for (size_t i = 0; i < x.size(); ++i) x[i] = (float)rng.uniform(-30.f, 30.f), dy[i] = (float)rng.uniform(-1.f, 1.f);
    x[0] = -100.f, x[1] = 100.f, x[2] = 0.f;
    const Act silu = parse_act("nn.SiLU()");
    act_forward_cpu(y.data(), x.data(), (int64_t)x.size(), silu);
    act_backward_cpu(dx.data(), dy.data(), x.data(), (int64_t)x.size(), silu);
    for (size_t i = 0; i < x.size(); ++i) {
        const double xd = x[i];
        CHECK(y[i] == Approx(act_forward(silu, xd)).epsilon(1e-6).margin(1e-30));
        CHECK(dx[i] == Approx(0.5 + dy[i] * act_grad(silu, xd)).epsilon(1e-6).margin(1e-6));
    }
}

TEST_CASE("im2col equals a direct gather at awkward geometries", "[ops][conv2d]") {
    struct G {
        int C, H, W, R, S, stride, pad;
    };
    const G cases[] = {{2, 5, 7, 3, 3, 1, 1}, {1, 9, 6, 6, 6, 2, 2}, {3, 4, 4, 5, 5, 1, 2}, {1, 7, 11, 3, 2, 3, 3},
                       {2, 3, 3, 1, 1, 2, 0}, {1, 2, 9, 1, 5, 1, 4}};
    Rng rng(5);
    for (const G& g : cases) {
        const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
        std::vector<float> img((size_t)g.C * g.H * g.W), col((size_t)g.C * g.R * g.S * Ho * Wo, -7.f);
        for (float& v : img) v = rng.uniform(-1.f, 1.f);
        im2col(col.data(), img.data(), g.C, g.H, g.W, g.R, g.S, g.stride, g.pad, Ho, Wo);
        int bad = 0;
        for (int c = 0; c < g.C; ++c)
            for (int r = 0; r < g.R; ++r)
                for (int s = 0; s < g.S; ++s)
                    for (int ho = 0; ho < Ho; ++ho)
                        for (int wo = 0; wo < Wo; ++wo) {
                            const int h = ho * g.stride - g.pad + r, w = wo * g.stride - g.pad + s;
                            const float want = h >= 0 && h < g.H && w >= 0 && w < g.W ? img[((size_t)c * g.H + h) * g.W + w] : 0.f;
                            bad += col[(((size_t)(c * g.R + r) * g.S + s) * Ho + ho) * Wo + wo] != want;
                        }
        CHECK(bad == 0);
    }
}

TEST_CASE("transpose12's column ranges equal a direct gather (the f32 8x8 blocks and their edges)", "[ops]") {
    struct G {
        int B, M, N, n0, n1;
    };
    // Multiples of 8 and not, whole and partial column ranges (Detect's (85, P) and (P, 85), a thread's share).
    const G cases[] = {{1, 8, 8, 0, 8}, {2, 85, 100, 0, 100}, {3, 100, 85, 0, 85}, {1, 17, 33, 5, 29}, {2, 7, 5, 0, 5},
                       {1, 24, 40, 8, 16}, {1, 85, 64, 13, 64}};
    Rng rng(6);
    for (const G& g : cases) {
        std::vector<float> in((size_t)g.B * g.M * g.N), out((size_t)g.B * g.N * g.M, -7.f);
        for (float& v : in) v = rng.uniform(-1.f, 1.f);
        transpose12_cols_cpu<float>(out.data(), in.data(), g.B, g.M, g.N, g.n0, g.n1);
        int bad = 0;
        for (int b = 0; b < g.B; ++b)
            for (int n = 0; n < g.N; ++n)
                for (int m = 0; m < g.M; ++m) {
                    const float want = n >= g.n0 && n < g.n1 ? in[((size_t)b * g.M + m) * g.N + n] : -7.f;
                    bad += out[((size_t)b * g.N + n) * g.M + m] != want;
                }
        CHECK(bad == 0);
    }
}

TEST_CASE("pooling and upsample and concat by hand", "[ops]") {
    TestCtx tc;
    Tensor x = f32_tensor(tc.data, {1, 1, 4, 4}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
    Var p = maxpool2d(tc.ctx, Tape::constant(x), 2, 2, 0);
    require_close(p.t, f32_tensor(tc.data, {1, 1, 2, 2}, {6, 8, 14, 16}), 0, 0, "maxpool 2/2/0");
    Var p5 = maxpool2d(tc.ctx, Tape::constant(x), 5, 1, 2);  // SPPF's pool: the padded 5×5 window max
    require_close(p5.t, f32_tensor(tc.data, {1, 1, 4, 4}, {11, 12, 12, 12, 15, 16, 16, 16, 15, 16, 16, 16, 15, 16, 16, 16}),
                  0, 0, "maxpool 5/1/2");

    Tensor s = f32_tensor(tc.data, {1, 1, 2, 2}, {1, 2, 3, 4});
    Var u = upsample_nearest(tc.ctx, Tape::constant(s), 2);
    require_close(u.t, f32_tensor(tc.data, {1, 1, 4, 4}, {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}), 0, 0,
                  "upsample x2");

    Tensor a = f32_tensor(tc.data, {2, 1, 1, 2}, {1, 2, 3, 4});
    Tensor b = f32_tensor(tc.data, {2, 2, 1, 2}, {5, 6, 7, 8, 9, 10, 11, 12});
    Var cat = concat(tc.ctx, {Tape::constant(a), Tape::constant(b)});
    require_close(cat.t, f32_tensor(tc.data, {2, 3, 1, 2}, {1, 2, 5, 6, 7, 8, 3, 4, 9, 10, 11, 12}), 0, 0, "concat");

    Var g = global_avgpool(tc.ctx, Tape::constant(x));
    REQUIRE(g.shape() == Shape({1, 1}));
    CHECK(g.t.ptr<float>()[0] == 8.5f);

    // Focus's slicing: channel blocks x[::2, ::2], x[1::2, ::2], x[::2, 1::2], x[1::2, 1::2]
    Var sd = space_to_depth2(tc.ctx, Tape::constant(x));
    require_close(sd.t, f32_tensor(tc.data, {1, 4, 2, 2}, {1, 3, 9, 11, 5, 7, 13, 15, 2, 4, 10, 12, 6, 8, 14, 16}), 0, 0,
                  "space_to_depth2");

    Tensor v = f32_tensor(tc.data, {1, 4}, {1, 2, 3, 4});
    Tensor k = f32_tensor(tc.data, {3}, {1, 10, 100});  // out[c] = in[c−1] + 10·in[c] + 100·in[c+1], zero padded
    Var e = conv1d_channels(tc.ctx, Tape::constant(v), Tape::constant(k));
    require_close(e.t, f32_tensor(tc.data, {1, 4}, {210, 321, 432, 43}), 0, 0, "conv1d across channels");
}

// ---------------------------------------------------------------------------------------------------
// Gradient checks in double

TEST_CASE("gradcheck catches a wrong backward", "[ops][gradcheck]") {
    // The checker itself must be able to fail: an op whose backward doubles the true gradient.
    TestCtx tc;
    Rng rng(1);
    Tensor x = rand_tensor(tc.data, {2, 3}, DType::F64, rng);
    OpFn wrong = [](Ctx& c, const std::vector<Var>& in) {
        Var y = activation(c, in[0], Act{ActKind::Identity, 0});
        if (y.requires_grad()) {
            Var x0 = in[0];
            c.tape->record([&c, x0, y] { axpy(c, c.tape->grad(x0), 1.0, c.tape->grad(y)); });
        }
        return y;
    };
    GradResult r = gradcheck_run(tc, {x}, wrong, rng);
    CHECK(r.bad == 6);
    CHECK(r.worst > 0.2);  // 0.25 at the largest element: |2g − g| / (2g + 2g)
}

struct ConvCase {
    int N, C, H, W, K, R, S, stride, pad;
    bool bias;
    int probes;
};

TEST_CASE("conv2d gradient for input and weight and bias", "[ops][conv2d][gradcheck]") {
    const ConvCase cases[] = {
        {1, 3, 7, 7, 5, 3, 3, 1, 1, false, 200},    // N = 1, C = 3, odd H/W
        {2, 4, 9, 6, 3, 3, 3, 2, 1, true, 200},     // stride 2 over an odd/even mix
        {2, 3, 11, 13, 4, 6, 6, 2, 2, true, 200},   // yolov5n layer 0 geometry: 6×6, stride 2, pad 2
        {2, 8, 5, 5, 6, 1, 1, 1, 0, true, 200},     // pointwise (no im2col path)
        {5, 3, 6, 5, 4, 3, 3, 1, 1, true, 200},     // 5 images: uneven split over the CPU threads
        {1, 5, 4, 7, 2, 1, 3, 1, 0, false, 200},    // non-square kernel
        {1, 16, 320, 320, 32, 3, 3, 2, 1, false, 12},  // yolov5n layer 1 at 640
    };
    for (const ConvCase& k : cases) {
        DYNAMIC_SECTION("conv " << k.N << "x" << k.C << "x" << k.H << "x" << k.W << " -> " << k.K << " k" << k.R << "x"
                                << k.S << " s" << k.stride << " p" << k.pad) {
            TestCtx tc;
            Rng rng(7);
            std::vector<Tensor> in = {rand_tensor(tc.data, {k.N, k.C, k.H, k.W}, DType::F64, rng),
                                      rand_tensor(tc.data, {k.K, k.C, k.R, k.S}, DType::F64, rng)};
            if (k.bias) in.push_back(rand_tensor(tc.data, {k.K}, DType::F64, rng));
            const ConvCase kk = k;
            GradCheck opt;
            opt.max_checks = k.probes;
            gradcheck(tc, in, [kk](Ctx& c, const std::vector<Var>& v) {
                return conv2d(c, v[0], v[1], kk.bias ? &v[2] : nullptr, kk.stride, kk.pad);
            }, rng, opt);
        }
    }
}

// conv2d_parts against conv2d of the built concat: values and every gradient (a part without one included),
// f64 to rounding and f32 to reassociation; gradients by finite differences.
TEST_CASE("conv2d_parts equals a 1x1 conv2d of the concat", "[ops][conv2d][parts]") {
    struct Case {
        std::vector<int> Cs;
        int N, K, H, W;
        bool bias, grad0;  // grad0: whether part 0 wants a gradient
    };
    const Case cases[] = {{{3, 5}, 2, 4, 3, 7, false, true},
                          {{1, 2, 3}, 3, 5, 4, 4, true, false},
                          {{16, 16}, 5, 32, 9, 11, false, true},   // a C3's cv3 (5 images: uneven thread groups)
                          {{64, 64}, 2, 64, 5, 5, true, true}};
    for (const Case& k : cases)
        for (DType dt : {DType::F64, DType::F32}) {
            DYNAMIC_SECTION(k.Cs.size() << " parts, K " << k.K << (k.bias ? ", bias " : " ") << dtype_name(dt)) {
                TestCtx tc;
                Rng rng(21);
                int C = 0;
                std::vector<Tensor> xs;
                for (int ci : k.Cs) {
                    xs.push_back(rand_tensor(tc.data, {k.N, ci, k.H, k.W}, dt, rng));
                    C += ci;
                }
                Tensor w = rand_tensor(tc.data, {k.K, C, 1, 1}, dt, rng), b = rand_tensor(tc.data, {k.K}, dt, rng);
                Tensor seed = rand_tensor(tc.data, {k.N, k.K, k.H, k.W}, dt, rng);
                auto run = [&](bool parts) {
                    std::vector<Var> xv;
                    for (size_t i = 0; i < xs.size(); ++i)
                        xv.push_back(i == 0 && !k.grad0 ? Tape::constant(xs[i]) : tc.tape.leaf(xs[i]));
                    Var wv = tc.tape.leaf(w), bv = tc.tape.leaf(b);
                    Var y = parts ? conv2d_parts(tc.ctx, xv, wv, k.bias ? &bv : nullptr)
                                  : conv2d(tc.ctx, concat(tc.ctx, xv), wv, k.bias ? &bv : nullptr, 1, 0);
                    tc.tape.backward(y, &seed);
                    std::vector<Tensor> r = {copy_of(tc.data, y.t), copy_of(tc.data, tc.tape.grad(wv))};
                    if (k.bias) r.push_back(copy_of(tc.data, tc.tape.grad(bv)));
                    for (const Var& v : xv)
                        if (v.requires_grad()) r.push_back(copy_of(tc.data, tc.tape.grad(v)));
                    tc.tape.clear();
                    return r;
                };
                const std::vector<Tensor> got = run(true), want = run(false);
                REQUIRE(got.size() == want.size());
                const double tol = dt == DType::F64 ? 1e-12 : 1e-5;
                for (size_t i = 0; i < got.size(); ++i) require_close(got[i], want[i], tol, tol, "tensor " + std::to_string(i));
            }
        }
    SECTION("gradient by finite differences") {
        TestCtx tc;
        Rng rng(22);
        gradcheck(tc,
                  {rand_tensor(tc.data, {2, 3, 4, 5}, DType::F64, rng), rand_tensor(tc.data, {2, 2, 4, 5}, DType::F64, rng),
                   rand_tensor(tc.data, {6, 5, 1, 1}, DType::F64, rng), rand_tensor(tc.data, {6}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return conv2d_parts(c, {v[0], v[1]}, v[2], &v[3]); }, rng);
    }
    SECTION("bad requests") {
        TestCtx tc;
        Rng rng(23);
        Var a = Tape::constant(rand_tensor(tc.data, {1, 2, 4, 4}, DType::F32, rng));
        Var b = Tape::constant(rand_tensor(tc.data, {1, 3, 4, 5}, DType::F32, rng));
        Var w = Tape::constant(rand_tensor(tc.data, {4, 5, 1, 1}, DType::F32, rng));
        Var w3 = Tape::constant(rand_tensor(tc.data, {4, 4, 3, 3}, DType::F32, rng));
        CHECK_THROWS_WITH(conv2d_parts(tc.ctx, {a, b}, w, nullptr), Catch::Contains("outside the channel dimension"));
        CHECK_THROWS_WITH(conv2d_parts(tc.ctx, {a, a}, w3, nullptr), Catch::Contains("(K, 4, 1, 1)"));
    }
}

TEST_CASE("eca (fused) equals the four ops it replaces, and its gradient", "[ops][eca]") {
    for (DType dt : {DType::F64, DType::F32})
        for (int k : {1, 3, 5}) {
            DYNAMIC_SECTION(dtype_name(dt) << " k " << k) {
                TestCtx tc;
                Rng rng(31);
                Tensor x = rand_tensor(tc.data, {3, 6, 5, 7}, dt, rng), w = rand_tensor(tc.data, {k}, dt, rng, -2, 2);
                Tensor seed = rand_tensor(tc.data, x.shape, dt, rng);
                auto run = [&](bool fused) {
                    Var xv = tc.tape.leaf(x), wv = tc.tape.leaf(w);
                    Var y = fused ? eca(tc.ctx, xv, wv)
                                  : scale_channels(tc.ctx, xv,
                                                   sigmoid(tc.ctx, conv1d_channels(tc.ctx, global_avgpool(tc.ctx, xv), wv)));
                    tc.tape.backward(y, &seed);
                    std::vector<Tensor> r = {copy_of(tc.data, y.t), copy_of(tc.data, tc.tape.grad(xv)),
                                             copy_of(tc.data, tc.tape.grad(wv))};
                    tc.tape.clear();
                    return r;
                };
                const std::vector<Tensor> f = run(true), u = run(false);
                const double tol = dt == DType::F64 ? 1e-12 : 1e-5;
                require_close(f[0], u[0], tol, tol, "output");
                require_close(f[1], u[1], tol, tol, "dx");
                require_close(f[2], u[2], tol, tol, "dw");
            }
        }
    SECTION("gradient by finite differences") {
        TestCtx tc;
        Rng rng(32);
        gradcheck(tc, {rand_tensor(tc.data, {2, 5, 3, 4}, DType::F64, rng), rand_tensor(tc.data, {3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return eca(c, v[0], v[1]); }, rng);
        GradCheck big;
        big.max_checks = 40;
        gradcheck(tc, {rand_tensor(tc.data, {1, 64, 80, 80}, DType::F64, rng), rand_tensor(tc.data, {3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return eca(c, v[0], v[1]); }, rng, big);  // yolov5n-eca P3 at 640
    }
}

TEST_CASE("batchnorm2d gradient in training and eval mode", "[ops][batchnorm][gradcheck]") {
    struct Case {
        int N, C, H, W, probes;
    };
    const Case cases[] = {{1, 3, 5, 7, 200}, {4, 2, 3, 3, 200}, {2, 5, 1, 1, 200}, {1, 16, 320, 320, 8}};
    for (const Case& k : cases)
        for (bool training : {true, false}) {
            DYNAMIC_SECTION("bn " << k.N << "x" << k.C << "x" << k.H << "x" << k.W << (training ? " train" : " eval")) {
                TestCtx tc;
                Rng rng(11);
                Tensor rm = rand_tensor(tc.data, {k.C}, DType::F64, rng, -0.1, 0.1);
                Tensor rv = rand_tensor(tc.data, {k.C}, DType::F64, rng, 0.5, 1.5);
                std::vector<Tensor> in = {rand_tensor(tc.data, {k.N, k.C, k.H, k.W}, DType::F64, rng, -2, 3),
                                          rand_tensor(tc.data, {k.C}, DType::F64, rng, 0.5, 1.5),
                                          rand_tensor(tc.data, {k.C}, DType::F64, rng)};
                GradCheck opt;
                opt.max_checks = k.probes;
                gradcheck(tc, in, [&](Ctx& c, const std::vector<Var>& v) {
                    return batchnorm2d(c, v[0], v[1], v[2], rm, rv, training, 1e-3f, 0.03f);
                }, rng, opt);
            }
        }
}

// The fused op (batchnorm2d with an activation) against the two ops it replaces, and its gradient by finite
// differences. Inputs stay 1e-3 away from the kinks after normalisation is not controllable, so the kinked
// activations are checked against the unfused pair only (same subgradient choice).
TEST_CASE("batchnorm2d with a fused activation equals BN then the activation", "[ops][batchnorm][activation]") {
    const char* specs[] = {"nn.SiLU()", "nn.ReLU()", "nn.ReLU6()", "nn.LeakyReLU(0.1)", "nn.Hardswish()", "nn.Sigmoid()"};
    for (const char* spec : specs)
        for (bool training : {true, false})
            for (DType dt : {DType::F64, DType::F32}) {
                DYNAMIC_SECTION(spec << (training ? " train " : " eval ") << dtype_name(dt)) {
                    TestCtx tc;
                    Rng rng(12);
                    const Act a = parse_act(spec);
                    const int N = 3, C = 4, H = 9, W = 31;  // rows of 279 > kBnChunk: the backward's chunking
                    Tensor x = rand_tensor(tc.data, {N, C, H, W}, dt, rng, -2, 3);
                    Tensor g = rand_tensor(tc.data, {C}, dt, rng, 0.5, 4), b = rand_tensor(tc.data, {C}, dt, rng, -3, 3);
                    Tensor seed = rand_tensor(tc.data, x.shape, dt, rng);
                    Tensor rm1 = rand_tensor(tc.data, {C}, dt, rng, -0.1, 0.1), rv1 = rand_tensor(tc.data, {C}, dt, rng, 0.5, 1.5);
                    Tensor rm2 = copy_of(tc.data, rm1), rv2 = copy_of(tc.data, rv1);
                    // y + x as well (the add's backward runs first, so BN adds to a gradient already holding one
                    // contribution), or y alone (BN's backward meets a zeroed gradient).
                    const bool reuse_x = std::string(spec) == "nn.SiLU()" || std::string(spec) == "nn.ReLU()";
                    auto run = [&](bool fused, Tensor rm, Tensor rv) {
                        Var xv = tc.tape.leaf(x), gv = tc.tape.leaf(g), bv = tc.tape.leaf(b);
                        Var y = fused ? batchnorm2d(tc.ctx, xv, gv, bv, rm, rv, training, 1e-3f, 0.03f, a)
                                      : activation(tc.ctx, batchnorm2d(tc.ctx, xv, gv, bv, rm, rv, training, 1e-3f, 0.03f), a);
                        if (reuse_x) y = add(tc.ctx, y, xv);
                        tc.tape.backward(y, &seed);
                        std::vector<Tensor> r;
                        for (Tensor t : {y.t, tc.tape.grad(xv), tc.tape.grad(gv), tc.tape.grad(bv)})
                            r.push_back(copy_of(tc.data, t));
                        tc.tape.clear();
                        return r;
                    };
                    const std::vector<Tensor> f = run(true, rm1, rv1), u = run(false, rm2, rv2);
                    const double tol = dt == DType::F64 ? 1e-12 : 2e-5;
                    const char* what[] = {"output", "dx", "dgamma", "dbeta"};
                    for (int i = 0; i < 4; ++i) require_close(f[i], u[i], tol, tol, what[i]);
                    require_close(rm1, rm2, 0, 0, "running_mean");
                    require_close(rv1, rv2, 0, 0, "running_var");
                }
            }
}

TEST_CASE("batchnorm2d with a fused SiLU: gradient", "[ops][batchnorm][gradcheck]") {
    for (bool training : {true, false}) {
        DYNAMIC_SECTION((training ? "train" : "eval")) {
            TestCtx tc;
            Rng rng(13);
            Tensor rm = rand_tensor(tc.data, {3}, DType::F64, rng, -0.1, 0.1);
            Tensor rv = rand_tensor(tc.data, {3}, DType::F64, rng, 0.5, 1.5);
            std::vector<Tensor> in = {rand_tensor(tc.data, {2, 3, 5, 60}, DType::F64, rng, -2, 3),
                                      rand_tensor(tc.data, {3}, DType::F64, rng, 0.5, 3),
                                      rand_tensor(tc.data, {3}, DType::F64, rng, -2, 2)};
            GradCheck opt;
            opt.max_checks = 200;
            gradcheck(tc, in, [&](Ctx& c, const std::vector<Var>& v) {
                return batchnorm2d(c, v[0], v[1], v[2], rm, rv, training, 1e-3f, 0.03f, Act{ActKind::SiLU, 0.f});
            }, rng, opt);
        }
    }
}

TEST_CASE("activation gradients away from the kinks", "[ops][activation][gradcheck]") {
    const char* specs[] = {"nn.SiLU()",      "nn.ReLU()",      "nn.ReLU6()", "nn.LeakyReLU(0.1)",
                           "nn.Hardswish()", "nn.Identity()",  "nn.Sigmoid()"};
    for (const char* spec : specs) {
        DYNAMIC_SECTION(spec) {
            TestCtx tc;
            Rng rng(3);
            Act a = parse_act(spec);
            // Values in [−8, 8] cover every branch (ReLU6 saturation, Hardswish's three pieces); keep 1e-3
            // away from the kinks at −3, 0, 3, 6, where the derivative jumps.
            Tensor x = rand_tensor(tc.data, {1, 3, 7, 5}, DType::F64, rng, -8, 8);
            for (int64_t i = 0; i < x.numel(); ++i)
                for (double kink : {-3.0, 0.0, 3.0, 6.0})
                    if (std::fabs(x.ptr<double>()[i] - kink) < 1e-3) x.ptr<double>()[i] = kink + 0.25;
            gradcheck(tc, {x}, [a](Ctx& c, const std::vector<Var>& v) { return activation(c, v[0], a); }, rng);
        }
    }
    SECTION("yolov5n layer 0 output at 640, SiLU") {
        TestCtx tc;
        Rng rng(4);
        Tensor x = rand_tensor(tc.data, {1, 16, 320, 320}, DType::F64, rng, -4, 4);
        GradCheck opt;
        opt.max_checks = 40;
        gradcheck(tc, {x}, [](Ctx& c, const std::vector<Var>& v) { return activation(c, v[0], Act{}); }, rng, opt);
    }
    SECTION("sigmoid op") {
        TestCtx tc;
        Rng rng(5);
        Tensor x = rand_tensor(tc.data, {2, 3, 4}, DType::F64, rng, -6, 6);
        gradcheck(tc, {x}, [](Ctx& c, const std::vector<Var>& v) { return sigmoid(c, v[0]); }, rng);
    }
}

TEST_CASE("maxpool2d gradient", "[ops][maxpool][gradcheck]") {
    struct Case {
        int N, C, H, W, k, s, p, probes;
    };
    const Case cases[] = {{1, 3, 7, 9, 3, 2, 1, 200}, {2, 2, 6, 6, 2, 2, 0, 200}, {1, 3, 5, 5, 5, 1, 2, 200},
                          {1, 128, 20, 20, 5, 1, 2, 200}};  // the last: SPPF at 640
    for (const Case& k : cases) {
        DYNAMIC_SECTION("maxpool " << k.N << "x" << k.C << "x" << k.H << "x" << k.W << " k" << k.k << " s" << k.s
                                   << " p" << k.p) {
            TestCtx tc;
            Rng rng(9);
            Tensor x = distinct_tensor(tc.data, {k.N, k.C, k.H, k.W}, rng, 1e-4);  // no near-ties within h
            GradCheck opt;
            opt.max_checks = k.probes;
            const Case kk = k;
            gradcheck(tc, {x}, [kk](Ctx& c, const std::vector<Var>& v) { return maxpool2d(c, v[0], kk.k, kk.s, kk.p); },
                      rng, opt);
        }
    }
}

TEST_CASE("sppf_pool equals SPPF's three pools and concat, values and gradients bit for bit", "[ops][maxpool][sppf]") {
    for (DType dt : {DType::F32, DType::F64})
        for (int levels : {0, 2}) {  // 2: values in {-1, -0.5, 0, 0.5, 1}, so windows hold ties
            DYNAMIC_SECTION(dtype_name(dt) << (levels ? " ties" : " continuous")) {
                TestCtx tc;
                Rng rng(14);
                Tensor x = rand_tensor(tc.data, {3, 5, 9, 11}, dt, rng);
                if (levels)
                    for (int64_t i = 0; i < x.numel(); ++i) {
                        const double v = std::round(at(x, i) * levels) / levels;
                        if (dt == DType::F64) x.ptr<double>()[i] = v;
                        else x.ptr<float>()[i] = (float)v;
                    }
                Tensor seed = rand_tensor(tc.data, {3, 20, 9, 11}, dt, rng);
                auto run = [&](bool fused) {
                    Var xv = tc.tape.leaf(x);
                    Var y;
                    if (fused) y = sppf_pool(tc.ctx, xv, 5);
                    else {
                        Var y1 = maxpool2d(tc.ctx, xv, 5, 1, 2), y2 = maxpool2d(tc.ctx, y1, 5, 1, 2);
                        y = concat(tc.ctx, {xv, y1, y2, maxpool2d(tc.ctx, y2, 5, 1, 2)});
                    }
                    tc.tape.backward(y, &seed);
                    std::vector<Tensor> r = {copy_of(tc.data, y.t), copy_of(tc.data, tc.tape.grad(xv))};
                    tc.tape.clear();
                    return r;
                };
                const std::vector<Tensor> f = run(true), u = run(false);
                require_close(f[0], u[0], 0, 0, "output");
                require_close(f[1], u[1], 0, 0, "dx");
            }
        }
    SECTION("gradient by finite differences, and an even kernel is refused") {
        TestCtx tc;
        Rng rng(15);
        gradcheck(tc, {distinct_tensor(tc.data, {2, 3, 6, 7}, rng, 1e-3)},
                  [](Ctx& c, const std::vector<Var>& v) { return sppf_pool(c, v[0], 3); }, rng);
        Tensor x = rand_tensor(tc.data, {1, 1, 4, 4}, DType::F32, rng);
        CHECK_THROWS_WITH(sppf_pool(tc.ctx, Tape::constant(x), 4), Catch::Contains("odd kernel"));
    }
}

// Detect's head in one op: the same bits as conv2d then the (N·na, no, H·W) → (N, na, H, W, no) transpose, values and
// every gradient, in f32, f64 and f16 (per image the same passes in the same order); its gradient by finite
// differences.
TEST_CASE("conv1x1_maps equals conv2d then transpose12, values and gradients bit for bit", "[ops][conv2d][maps]") {
    const int na = 3, no = 7;
    for (DType dt : {DType::F32, DType::F64, DType::F16})
        for (int N : {1, 5, 11}) {  // 11 images: more than the 8 weight-gradient groups, uneven over the threads
            DYNAMIC_SECTION(dtype_name(dt) << " N=" << N) {
                TestCtx tc;
                Rng rng(31);
                const int C = 6, H = 5, W = 9;
                Tensor x = rand_tensor(tc.data, {N, C, H, W}, dt, rng), w = rand_tensor(tc.data, {na * no, C, 1, 1}, dt, rng),
                       b = rand_tensor(tc.data, {na * no}, dt, rng), seed = rand_tensor(tc.data, {N, na, H, W, no}, dt, rng);
                auto run = [&](bool fused) {
                    Var xv = tc.tape.leaf(x), wv = tc.tape.leaf(w), bv = tc.tape.leaf(b);
                    Var y;
                    if (fused) y = conv1x1_maps(tc.ctx, xv, wv, &bv, na);
                    else {
                        Var z = conv2d(tc.ctx, xv, wv, &bv, 1, 0);
                        y = transpose12(tc.ctx, Var{z.t.view({N * na, no, H * W}), z.id}, Shape{N, na, H, W, no});
                    }
                    tc.tape.backward(y, &seed);
                    std::vector<Tensor> r = {copy_of(tc.data, y.t), copy_of(tc.data, tc.tape.grad(xv)),
                                             copy_of(tc.data, tc.tape.grad(wv)), copy_of(tc.data, tc.tape.grad(bv))};
                    tc.tape.clear();
                    return r;
                };
                const std::vector<Tensor> f = run(true), u = run(false);
                REQUIRE(f[0].shape == Shape{N, na, H, W, no});
                require_close(f[0], u[0], 0, 0, "output");
                require_close(f[1], u[1], 0, 0, "dx");
                require_close(f[2], u[2], 0, 0, "dw");
                require_close(f[3], u[3], 0, 0, "db");
            }
        }
    SECTION("gradient by finite differences, and a bad weight is refused") {
        TestCtx tc;
        Rng rng(32);
        gradcheck(tc, {rand_tensor(tc.data, {2, 4, 3, 5}, DType::F64, rng), rand_tensor(tc.data, {na * no, 4, 1, 1}, DType::F64, rng),
                       rand_tensor(tc.data, {na * no}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return conv1x1_maps(c, v[0], v[1], &v[2], na); }, rng);
        Tensor x = rand_tensor(tc.data, {1, 4, 3, 3}, DType::F32, rng), w = rand_tensor(tc.data, {20, 4, 1, 1}, DType::F32, rng);
        CHECK_THROWS_WITH(conv1x1_maps(tc.ctx, Tape::constant(x), Tape::constant(w), nullptr, 3), Catch::Contains("anchors"));
    }
}

TEST_CASE("maxpool2d sends a tie's gradient to the first maximum as PyTorch does", "[ops][maxpool]") {
    TestCtx tc;
    Tensor x = f64_tensor(tc.data, {1, 1, 2, 2}, {3, 3, 1, 3});
    Var xv = tc.tape.leaf(x);
    Var y = maxpool2d(tc.ctx, xv, 2, 2, 0);
    tc.tape.backward(y);
    Tensor g = tc.tape.grad(xv);
    CHECK(g.ptr<double>()[0] == 1.0);
    CHECK(g.ptr<double>()[1] == 0.0);
    CHECK(g.ptr<double>()[3] == 0.0);
}

TEST_CASE("upsample and concat and add and pooling and ECA gradients", "[ops][gradcheck]") {
    TestCtx tc;
    Rng rng(13);
    GradCheck big;
    big.max_checks = 60;

    SECTION("upsample_nearest") {
        gradcheck(tc, {rand_tensor(tc.data, {1, 3, 5, 7}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return upsample_nearest(c, v[0], 2); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {2, 2, 3, 3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return upsample_nearest(c, v[0], 3); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 128, 20, 20}, DType::F64, rng)},  // yolov5n layer 11 at 640
                  [](Ctx& c, const std::vector<Var>& v) { return upsample_nearest(c, v[0], 2); }, rng, big);
    }
    SECTION("concat") {
        gradcheck(tc,
                  {rand_tensor(tc.data, {2, 1, 3, 5}, DType::F64, rng), rand_tensor(tc.data, {2, 3, 3, 5}, DType::F64, rng),
                   rand_tensor(tc.data, {2, 2, 3, 5}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return concat(c, v); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 128, 40, 40}, DType::F64, rng),  // yolov5n layer 12 at 640
                       rand_tensor(tc.data, {1, 128, 40, 40}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return concat(c, v); }, rng, big);
    }
    SECTION("add") {
        gradcheck(tc, {rand_tensor(tc.data, {1, 3, 5, 7}, DType::F64, rng), rand_tensor(tc.data, {1, 3, 5, 7}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return add(c, v[0], v[1]); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 16, 160, 160}, DType::F64, rng),  // a Bottleneck in layer 2 at 640
                       rand_tensor(tc.data, {1, 16, 160, 160}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return add(c, v[0], v[1]); }, rng, big);
    }
    SECTION("global_avgpool") {
        gradcheck(tc, {rand_tensor(tc.data, {2, 3, 5, 7}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return global_avgpool(c, v[0]); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 64, 80, 80}, DType::F64, rng)},  // ECA after layer 4 at 640
                  [](Ctx& c, const std::vector<Var>& v) { return global_avgpool(c, v[0]); }, rng, big);
    }
    SECTION("conv1d_channels") {
        for (int k : {1, 3, 5})
            gradcheck(tc, {rand_tensor(tc.data, {2, 7}, DType::F64, rng), rand_tensor(tc.data, {k}, DType::F64, rng)},
                      [](Ctx& c, const std::vector<Var>& v) { return conv1d_channels(c, v[0], v[1]); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 256}, DType::F64, rng), rand_tensor(tc.data, {3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return conv1d_channels(c, v[0], v[1]); }, rng);
    }
    SECTION("scale_channels") {
        gradcheck(tc, {rand_tensor(tc.data, {2, 3, 5, 7}, DType::F64, rng), rand_tensor(tc.data, {2, 3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return scale_channels(c, v[0], v[1]); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {1, 64, 80, 80}, DType::F64, rng), rand_tensor(tc.data, {1, 64}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return scale_channels(c, v[0], v[1]); }, rng, big);
    }
    SECTION("transpose12 (Detect's reshape) and space_to_depth2 (Focus)") {
        gradcheck(tc, {rand_tensor(tc.data, {6, 7, 5}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return transpose12(c, v[0], Shape{2, 3, 5, 7}); }, rng);
        gradcheck(tc, {rand_tensor(tc.data, {3, 85, 1600}, DType::F64, rng)},  // yolov5n P4 head at 640
                  [](Ctx& c, const std::vector<Var>& v) { return transpose12(c, v[0], Shape{1, 3, 40, 40, 85}); }, rng, big);
        gradcheck(tc, {rand_tensor(tc.data, {2, 3, 6, 4}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) { return space_to_depth2(c, v[0]); }, rng);
    }
    SECTION("ECA composed: x feeds both the pool and the scale (fan-out through the tape)") {
        gradcheck(tc, {rand_tensor(tc.data, {2, 6, 5, 3}, DType::F64, rng), rand_tensor(tc.data, {3}, DType::F64, rng)},
                  [](Ctx& c, const std::vector<Var>& v) {
                      Var s = sigmoid(c, conv1d_channels(c, global_avgpool(c, v[0]), v[1]));
                      return scale_channels(c, v[0], s);
                  }, rng);
    }
    SECTION("Conv block composed: conv → BN (training) → SiLU, and a residual add") {
        gradcheck(tc,
                  {rand_tensor(tc.data, {2, 4, 6, 5}, DType::F64, rng), rand_tensor(tc.data, {4, 4, 3, 3}, DType::F64, rng),
                   rand_tensor(tc.data, {4}, DType::F64, rng, 0.5, 1.5), rand_tensor(tc.data, {4}, DType::F64, rng)},
                  [&](Ctx& c, const std::vector<Var>& v) {
                      Tensor rm = c.act->tensor({4}, DType::F64), rv = c.act->tensor({4}, DType::F64);
                      fill(c, rm, 0.0);
                      fill(c, rv, 1.0);
                      Var h = activation(c, batchnorm2d(c, conv2d(c, v[0], v[1], nullptr, 1, 1), v[2], v[3], rm, rv, true,
                                                        1e-3f, 0.03f),
                                         Act{});
                      return add(c, h, v[0]);
                  }, rng, GradCheck{200, 1e-6, 1e-5});
    }
}

// ---------------------------------------------------------------------------------------------------
// f32 path agrees with f64 (the dispatch runs the same template)

TEST_CASE("f32 and f64 references agree", "[ops]") {
    TestCtx tc;
    Rng rng(21);
    Tensor x64 = rand_tensor(tc.data, {2, 3, 9, 8}, DType::F64, rng);
    Tensor w64 = rand_tensor(tc.data, {4, 3, 3, 3}, DType::F64, rng);
    Tensor x32 = tc.data.tensor(x64.shape, DType::F32), w32 = tc.data.tensor(w64.shape, DType::F32);
    for (int64_t i = 0; i < x64.numel(); ++i) x32.ptr<float>()[i] = (float)x64.ptr<double>()[i];
    for (int64_t i = 0; i < w64.numel(); ++i) w32.ptr<float>()[i] = (float)w64.ptr<double>()[i];
    for (int64_t i = 0; i < x64.numel(); ++i) x64.ptr<double>()[i] = x32.ptr<float>()[i];
    for (int64_t i = 0; i < w64.numel(); ++i) w64.ptr<double>()[i] = w32.ptr<float>()[i];
    Var y64 = activation(tc.ctx, conv2d(tc.ctx, Tape::constant(x64), Tape::constant(w64), nullptr, 2, 1), Act{});
    Var y32 = activation(tc.ctx, conv2d(tc.ctx, Tape::constant(x32), Tape::constant(w32), nullptr, 2, 1), Act{});
    require_close(y32.t, y64.t, 1e-6, 1e-5, "conv+SiLU f32 vs f64");
}
