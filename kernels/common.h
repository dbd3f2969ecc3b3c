/*
 * Shared by the CPU references and the CUDA kernels: Y5_HD marks per-element math that both sides call
 * (one definition of SiLU, of the BN normalise step, ...), so CI tests that math on the CPU even though
 * no GPU runs there. Overloads pick the float or double library function explicitly, because an
 * unqualified exp(float) can silently promote to double on the host.
 */
#pragma once
#include <cmath>
#include <cstdint>

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

template <class T> Y5_HD T y5_min(T a, T b) { return a < b ? a : b; }
template <class T> Y5_HD T y5_max(T a, T b) { return a > b ? a : b; }

// Numerically safe logistic: never evaluates exp of a large positive number.
template <class T> Y5_HD T sigmoid(T x) {
    if (x >= T(0)) return T(1) / (T(1) + y5_exp(-x));
    T e = y5_exp(x);
    return e / (T(1) + e);
}

}  // namespace y5
