/*
 * Mixed precision's storage type on the CPU: the f16 ↔ f32 conversions of kernels/common.h against an
 * independent model of IEEE binary16 (every f16 value, every rounding boundary), the software conversions
 * against F16C where the build has it, and the cast op with its gradient.
 */
#include <cmath>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/elementwise.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

// The value of binary16 bits h from the definition: (−1)^s · 2^(e−15) · (1 + m/1024), or 2^−14 · m/1024 for e = 0.
static double f16_value(uint16_t h) {
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    const double v = e == 31 ? (m ? NAN : INFINITY) : e ? std::ldexp(1024 + m, e - 25) : std::ldexp(m, -24);
    return s ? -v : v;
}

TEST_CASE("f16 to f32 is exact for every f16 value", "[f16]") {
    for (uint32_t h = 0; h < 65536; ++h) {
        const double want = f16_value((uint16_t)h);
        const float got = f32_from_bits(f16_to_f32_bits_sw((uint16_t)h)), got_hw = f16_to_f32(f16{(uint16_t)h});
        if (std::isnan(want)) {
            REQUIRE(std::isnan(got));
            REQUIRE(std::isnan(got_hw));
            continue;
        }
        INFO("bits " << h);
        REQUIRE((double)got == want);
        REQUIRE(std::signbit(got) == std::signbit(want));
        REQUIRE(f32_bits(got_hw) == f32_bits(got));
    }
}

TEST_CASE("f32 to f16 rounds to nearest even at every boundary", "[f16]") {
    // For each pair of neighbouring finite non-negative f16 values a < b: just below the midpoint rounds to a, just
    // above to b, the midpoint itself (exact in f32) to the one with an even mantissa.
    std::vector<uint16_t> hs;
    for (uint16_t h = 0; h < 0x7c00; ++h) hs.push_back(h);
    for (size_t i = 0; i + 1 < hs.size(); ++i) {
        const uint16_t a = hs[i], b = hs[i + 1];
        const float mid = (float)((f16_value(a) + f16_value(b)) / 2);
        REQUIRE((double)mid == (f16_value(a) + f16_value(b)) / 2);
        const float below = std::nextafter(mid, 0.f), above = std::nextafter(mid, INFINITY);
        INFO("between bits " << a << " and " << b);
        for (float sign : {1.f, -1.f}) {
            const uint16_t sbit = sign < 0 ? 0x8000 : 0;
            REQUIRE(f32_to_f16_bits_sw(f32_bits(sign * below)) == (a | sbit));
            REQUIRE(f32_to_f16_bits_sw(f32_bits(sign * above)) == (b | sbit));
            REQUIRE(f32_to_f16_bits_sw(f32_bits(sign * mid)) == ((a & 1 ? b : a) | sbit));
            REQUIRE(f32_to_f16_bits_sw(f32_bits(sign * f32_from_bits(f16_to_f32_bits_sw(a)))) == (a | sbit));
        }
    }
    // Past the largest finite value 65504 (odd mantissa): below 65520 rounds to it, 65520 and up to inf.
    REQUIRE(f32_to_f16_bits_sw(f32_bits(65519.99f)) == 0x7bff);
    REQUIRE(f32_to_f16_bits_sw(f32_bits(65520.f)) == 0x7c00);
    REQUIRE(f32_to_f16_bits_sw(f32_bits(1e30f)) == 0x7c00);
    REQUIRE(f32_to_f16_bits_sw(f32_bits(-INFINITY)) == 0xfc00);
    REQUIRE((f32_to_f16_bits_sw(f32_bits(NAN)) & 0x7fff) > 0x7c00);
    REQUIRE(f32_to_f16_bits_sw(f32_bits(1e-10f)) == 0);  // under half the smallest subnormal 2^−24
    REQUIRE(f32_to_f16_bits_sw(f32_bits(-1e-10f)) == 0x8000);
}

TEST_CASE("the software conversions give F16C's bits", "[f16]") {
#if defined(__F16C__)
    // Every 61st f32 bit pattern (70 million values: every exponent, both signs, NaNs and infinities).
    for (uint64_t u = 0; u < (1ull << 32); u += 61) {
        const float f = f32_from_bits((uint32_t)u);
        const uint16_t hw = (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT), sw = f32_to_f16_bits_sw((uint32_t)u);
        if (std::isnan(f)) REQUIRE(((hw & 0x7fff) > 0x7c00) == ((sw & 0x7fff) > 0x7c00));
        else if (hw != sw) FAIL("f32 bits " << u << ": F16C " << hw << ", software " << sw);
    }
#else
    WARN("this build does not target F16C: the software conversions are the only ones, checked above");
#endif
}

TEST_CASE("cast rounds to f16, back to f32 exactly, and its gradient converts back", "[f16][ops]") {
    TestCtx tc;
    Rng rng(11);
    Tensor x = rand_tensor(tc.data, Shape{3, 5, 7}, DType::F32, rng, -70000.0, 70000.0);
    x.ptr<float>()[0] = 1e-9f;  // rounds to 0
    x.ptr<float>()[1] = 3e-6f;  // subnormal f16
    Var xv = tc.tape.leaf(x);
    Var h = cast(tc.ctx, xv, DType::F16);
    REQUIRE(h.t.dtype == DType::F16);
    for (int64_t i = 0; i < x.numel(); ++i) {
        const float v = x.ptr<float>()[i];
        REQUIRE(h.t.ptr<f16>()[i].bits == f32_to_f16_bits_sw(f32_bits(v)));
    }
    Var back = cast(tc.ctx, h, DType::F32);
    for (int64_t i = 0; i < x.numel(); ++i)
        REQUIRE(f32_bits(back.t.ptr<float>()[i]) == f16_to_f32_bits_sw(h.t.ptr<f16>()[i].bits));
    REQUIRE(cast(tc.ctx, back, DType::F32).id == back.id);  // same dtype: the Var itself

    // d back / d x through both casts: the seed rounded to f16 (the f16 node's gradient), then widened.
    Tensor seed = rand_tensor(tc.data, x.shape, DType::F32, rng, -3.0, 3.0);
    tc.tape.backward(back, &seed);
    Tensor gx = tc.tape.grad(xv);
    for (int64_t i = 0; i < x.numel(); ++i)
        REQUIRE(gx.ptr<float>()[i] == f16_to_f32(f32_to_f16(seed.ptr<float>()[i])));
}

TEST_CASE("the f16 elementwise references compute in float and round once", "[f16][ops]") {
    TestCtx tc;
    Rng rng(12);
    const int64_t n = 1000;
    Tensor a = rand_tensor(tc.data, Shape{n}, DType::F16, rng, -100.0, 100.0);
    Tensor b = rand_tensor(tc.data, Shape{n}, DType::F16, rng, -100.0, 100.0);
    Var s = add(tc.ctx, Tape::constant(a), Tape::constant(b));
    Tensor y = copy_of(tc.data, b);
    axpy(tc.ctx, y, -0.37, a);
    Tensor f = tc.data.tensor(Shape{n}, DType::F16);
    fill(tc.ctx, f, 0.1);
    for (int64_t i = 0; i < n; ++i) {
        const float av = f16_to_f32(a.ptr<f16>()[i]), bv = f16_to_f32(b.ptr<f16>()[i]);
        REQUIRE(s.t.ptr<f16>()[i].bits == f32_to_f16(av + bv).bits);
        REQUIRE(y.ptr<f16>()[i].bits == f32_to_f16(-0.37f * av + bv).bits);
        REQUIRE(f.ptr<f16>()[i].bits == 0x2e66);  // 0.1 → 0.0999755859375
    }
    // An op without f16 code (plain dispatch) says so; dispatch<kF16> runs it.
    REQUIRE_THROWS_WITH(dispatch("probe", a, [](auto) {}),
                        Catch::Matchers::Contains("probe: dtype f16 is not supported by this op"));
    bool ran_f16 = false;
    dispatch<kF16>("probe", a, [&](auto d) { ran_f16 = std::is_same_v<typename decltype(d)::T, f16>; });
    REQUIRE(ran_f16);
}
