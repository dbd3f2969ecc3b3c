/*
 * The CPU ops' fast paths against the plain references they replace: SPPF's separable stride-1 pooling
 * (maxpool_s1_argmax_plane) picks, for every output, the element maxpool_argmax picks (the row-major first maximum
 * of the k×k window, NaN first), on planes full of ties, ±0 and NaNs, at sizes smaller and larger than the kernel.
 */
#include <cmath>
#include <vector>

#include "kernels/pool.h"
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
