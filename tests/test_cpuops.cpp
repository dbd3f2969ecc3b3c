/*
 * The CPU ops' fast paths against the plain references they replace: SPPF's separable stride-1 pooling
 * (maxpool_s1_argmax_plane) picks, for every output, the element maxpool_argmax picks (the row-major first maximum
 * of the k×k window, NaN first), on planes full of ties, ±0 and NaNs, at sizes smaller and larger than the kernel;
 * upsample_nearest's row-wise CPU loops equal the per-element index formula, forward and backward, bit for bit.
 */
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/pool.h"
#include "kernels/upsample.h"
#include "tests/test_util.h"

using namespace y5;

template <class T> static void check_s1_argmax(T (*make)(float)) {
    Rng rng(41);
    for (int k : {1, 3, 5, 7})
        for (int H : {1, 2, 3, 6, 10})
            for (int W : {1, 2, 4, 5, 11})
                for (int trial = 0; trial < 4; ++trial) {
                    // values in {−1, −0.5, −0, 0, 0.5, 1} (ties everywhere, −0 against +0) and, in odd trials, NaNs
                    std::vector<T> plane(H * W);
                    for (T& v : plane) {
                        const int r = (int)(rng.uniform() * 7);
                        const float vals[7] = {-1.f, -0.5f, -0.f, 0.f, 0.5f, 1.f, NAN};
                        v = make(vals[trial % 2 ? r : r % 6]);
                    }
                    std::vector<int> arg(H * W), rowarg(H * W);
                    maxpool_s1_argmax_plane(arg.data(), rowarg.data(), plane.data(), H, W, k);
                    int bad = 0;
                    for (int h = 0; h < H; ++h)
                        for (int w = 0; w < W; ++w)
                            bad += arg[h * W + w] != maxpool_argmax(plane.data(), H, W, h, w, k, 1, k / 2);
                    INFO("k " << k << " H " << H << " W " << W << " trial " << trial);
                    CHECK(bad == 0);
                }
}

TEST_CASE("separable stride-1 max pooling picks maxpool_argmax's element (ties, signed zeros, NaN)",
          "[ops][maxpool][sppf][cpuops]") {
    SECTION("f32") { check_s1_argmax<float>([](float v) { return v; }); }
    SECTION("f64") { check_s1_argmax<double>([](float v) { return (double)v; }); }
    SECTION("f16") { check_s1_argmax<f16>([](float v) { return st<f16>(v); }); }
}

// The per-element definition: out (y, x) = inp (y/s, x/s); dinp (h, w) += dout's s×s block, a then b ascending.
template <class T> static void check_upsample(T (*make)(float)) {
    Rng rng(42);
    for (int s : {1, 2, 3})
        for (int H : {1, 3})
            for (int W : {1, 2, 5}) {
                const int N = 2, C = 3, Ho = H * s, Wo = W * s;
                std::vector<T> x(N * C * H * W), dy(N * C * Ho * Wo), y(dy.size()), dx(x.size()), dx_ref(x.size());
                // /3: full mantissas, so a different order of the block's adds rounds differently
                for (T& v : x) v = make(rng.uniform(-2.f, 2.f) / 3);
                for (T& v : dy) v = make(rng.uniform(-2.f, 2.f) / 3);
                for (size_t i = 0; i < dx.size(); ++i) dx[i] = dx_ref[i] = make(rng.uniform(-2.f, 2.f) / 3);
                upsample_nearest_forward_cpu(y.data(), x.data(), N, C, H, W, s);
                upsample_nearest_backward_cpu(dx.data(), dy.data(), N, C, H, W, s);
                int bad = 0;
                for (int nc = 0; nc < N * C; ++nc) {
                    for (int r = 0; r < Ho; ++r)
                        for (int q = 0; q < Wo; ++q) {
                            const T a = y[(nc * Ho + r) * Wo + q], b = x[(nc * H + r / s) * W + q / s];
                            bad += std::memcmp(&a, &b, sizeof(T)) != 0;
                        }
                    for (int h = 0; h < H; ++h)
                        for (int w = 0; w < W; ++w) {
                            T& d = dx_ref[(nc * H + h) * W + w];
                            acc_t<T> acc = ld(d);
                            for (int a = 0; a < s; ++a)
                                for (int b = 0; b < s; ++b) acc += ld(dy[(nc * Ho + h * s + a) * Wo + w * s + b]);
                            d = st<T>(acc);
                            bad += std::memcmp(&d, &dx[(nc * H + h) * W + w], sizeof(T)) != 0;
                        }
                }
                INFO("s " << s << " H " << H << " W " << W);
                CHECK(bad == 0);
            }
}

TEST_CASE("upsample_nearest's CPU loops equal the per-element definition bit for bit", "[ops][upsample][cpuops]") {
    SECTION("f32") { check_upsample<float>([](float v) { return v; }); }
    SECTION("f64") { check_upsample<double>([](float v) { return (double)v; }); }
    SECTION("f16") { check_upsample<f16>([](float v) { return st<f16>(v); }); }
}
