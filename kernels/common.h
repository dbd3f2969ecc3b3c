/*
 * Shared by the CPU references and the CUDA kernels: Y5_HD marks per-element math that both sides call
 * (one definition of SiLU, of the BN normalise step, ...), so CI tests that math on the CPU even though
 * no GPU runs there. Overloads pick the float or double library function explicitly, because an
 * unqualified exp(float) can silently promote to double on the host.
 */
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__F16C__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define Y5_HD __host__ __device__ __forceinline__
#else
#define Y5_HD inline
#endif

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

namespace y5 {

Y5_HD float y5_exp(float x) { return expf(x); }
Y5_HD double y5_exp(double x) { return exp(x); }
Y5_HD float y5_log(float x) { return logf(x); }
Y5_HD double y5_log(double x) { return log(x); }
Y5_HD float y5_log1p(float x) { return log1pf(x); }
Y5_HD double y5_log1p(double x) { return log1p(x); }
Y5_HD float y5_sqrt(float x) { return sqrtf(x); }
Y5_HD double y5_sqrt(double x) { return sqrt(x); }
Y5_HD float y5_atan(float x) { return atanf(x); }
Y5_HD double y5_atan(double x) { return atan(x); }
Y5_HD float y5_floor(float x) { return floorf(x); }

// a·b + c rounded once where the hardware has a fused multiply-add (every GPU, x86-64-v3 and above, ARM64): the
// instruction itself, which GCC vectorises; a build for x86-64 without FMA (-DY5_CPU_ARCH=x86-64) rounds twice
// rather than call libm's fmaf per element, so its results differ from the others' in the last bits. (y5_fma,
// kernels/sgd.h, is the always-fused one that torch's optimizers need.)
#if defined(__CUDA_ARCH__) || defined(__FMA__) || !defined(__x86_64__)
Y5_HD float y5_madd(float a, float b, float c) { return fmaf(a, b, c); }
#else
Y5_HD float y5_madd(float a, float b, float c) { return a * b + c; }
#endif

template <class T> Y5_HD T y5_min(T a, T b) { return a < b ? a : b; }
template <class T> Y5_HD T y5_max(T a, T b) { return a > b ? a : b; }

// Numerically safe logistic: never evaluates exp of a large positive number. In float, past ±104 exp(−|x|)
// underflows to 0 (below −103.98), so the result is 0 or 1 exactly: returned without the exp, whose underflow
// path in glibc (errno) costs more than the exp itself, with the same bits.
template <class T> Y5_HD T sigmoid(T x) {
    if (sizeof(T) == 4 && (x > T(104) || x < T(-104))) return x > T(0) ? T(1) : T(0);
    if (x >= T(0)) return T(1) / (T(1) + y5_exp(-x));
    T e = y5_exp(x);
    return e / (T(1) + e);
}

// ----------------------------------------------------------------------------------------------------
// f16: IEEE binary16 storage for mixed precision. Arithmetic is never done in f16: kernels load with ld() (f16 →
// float), compute in acc_t<T> (float for f16, else T itself) and store with st<T>() (round to nearest even, as
// PyTorch's .half() and CUDA's __float2half_rn). On a GPU the conversions are the cvt instructions; on the host
// F16C's when the build targets it (x86-64-v3), else the integer code below, which gives the same bits.

struct f16 {
    uint16_t bits;
};

Y5_HD uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
Y5_HD float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Binary16 bits → binary32 bits (exact: every f16 is a float).
Y5_HD uint32_t f16_to_f32_bits_sw(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return sign | 0x7f800000u | (m << 13);  // inf, NaN (payload kept)
    if (e) return sign | ((e + 112u) << 23) | (m << 13);    // normal: rebias 15 → 127
    if (!m) return sign;                                     // ±0
    e = 113u;                                                // subnormal m·2^−24: normalise
    while (!(m & 0x400u)) m <<= 1, --e;
    return sign | (e << 23) | ((m & 0x3ffu) << 13);
}

// Binary32 bits → binary16 bits, rounding to nearest even; ≥ 65520 in magnitude → inf; NaN → quiet NaN.
Y5_HD uint16_t f32_to_f16_bits_sw(uint32_t x) {
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) {  // normal half (≥ 2^−14): rebias, round the 13 dropped bits (a carry may bump the exponent)
        const uint32_t v = ax - 0x38000000u;
        return (uint16_t)(sign | ((v + 0x0fffu + ((v >> 13) & 1u)) >> 13));
    }
    if (ax < 0x33000000u) return (uint16_t)sign;  // below 2^−25 (2^−25 itself ties to the even 0)
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;  // subnormal: q = m·2^(e−126) rounded
    const uint32_t shift = 126u - e, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    uint32_t q = m >> shift;
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return (uint16_t)(sign | q);
}

Y5_HD float f16_to_f32(f16 h) {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
#elif defined(__F16C__) && !defined(__CUDACC__)
    return _cvtsh_ss(h.bits);
#else
    return f32_from_bits(f16_to_f32_bits_sw(h.bits));
#endif
}
Y5_HD f16 f32_to_f16(float f) {
#if defined(__CUDA_ARCH__)
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
#elif defined(__F16C__) && !defined(__CUDACC__)
    return f16{(uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)};
#else
    return f16{f32_to_f16_bits_sw(f32_bits(f))};
#endif
}

// The type a kernel computes in for storage type T.
template <class T> struct acc_of { using type = T; };
template <> struct acc_of<f16> { using type = float; };
template <class T> using acc_t = typename acc_of<T>::type;

// Load as acc_t, store from it.
Y5_HD float ld(float v) { return v; }
Y5_HD double ld(double v) { return v; }
Y5_HD float ld(f16 v) { return f16_to_f32(v); }
template <class T> Y5_HD T st(acc_t<T> v) {
    if constexpr (std::is_same_v<T, f16>) return f32_to_f16(v);
    else return v;
}

}  // namespace y5
