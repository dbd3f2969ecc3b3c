/*
 * Activations with PyTorch semantics (values and the subgradient chosen at kinks):
 *   SiLU x·σ(x) | ReLU max(x,0) | ReLU6 min(max(x,0),6) | LeakyReLU(α) | Hardswish x·relu6(x+3)/6
 *   Identity | Sigmoid σ(x)
 * act_forward / act_grad are the per-element math (Y5_HD, shared with CUDA); the CPU references below
 * and the CUDA kernels (kernels/activation.cu) loop over a flat buffer: out (n), inp (n), f32 or f16 (mixed
 * precision: f16 storage, float math, one rounding per output). Backward accumulates: dinp += dout · f'(inp).
 * parse_act reads the activation as YOLOv5's model yaml spells it ("nn.SiLU()", "nn.LeakyReLU(0.1)", ...),
 * so a yaml written for YOLOv5 selects the same activation in y5.
 */
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/common.h"

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

enum class ActKind : uint8_t { Identity, SiLU, ReLU, ReLU6, LeakyReLU, Hardswish, Sigmoid };

struct Act {
    ActKind kind = ActKind::SiLU;
    float alpha = 0.01f;  // LeakyReLU negative slope (PyTorch default 0.01)
};
constexpr Act kNoAct{ActKind::Identity, 0.f};

template <class T> Y5_HD T act_forward(Act a, T x) {
    switch (a.kind) {
        case ActKind::SiLU: return x * sigmoid(x);
        case ActKind::ReLU: return x > T(0) ? x : T(0);
        case ActKind::ReLU6: return y5_min(y5_max(x, T(0)), T(6));
        case ActKind::LeakyReLU: return x > T(0) ? x : T(a.alpha) * x;
        case ActKind::Hardswish: return x * y5_min(y5_max(x + T(3), T(0)), T(6)) / T(6);
        case ActKind::Sigmoid: return sigmoid(x);
        default: return x;
    }
}

// d act / d x at x, with PyTorch's choice at the kinks (ReLU: 0 at 0; ReLU6: 0 at 0 and 6;
// Hardswish: x/3 + 0.5 on [-3, 3]).
template <class T> Y5_HD T act_grad(Act a, T x) {
    switch (a.kind) {
        case ActKind::SiLU: {
            T s = sigmoid(x);
            return s * (T(1) + x * (T(1) - s));
        }
        case ActKind::ReLU: return x > T(0) ? T(1) : T(0);
        case ActKind::ReLU6: return (x > T(0) && x < T(6)) ? T(1) : T(0);
        case ActKind::LeakyReLU: return x > T(0) ? T(1) : T(a.alpha);
        case ActKind::Hardswish: return x < T(-3) ? T(0) : (x <= T(3) ? x / T(3) + T(0.5) : T(1));
        case ActKind::Sigmoid: {
            T s = sigmoid(x);
            return s * (T(1) - s);
        }
        default: return T(1);
    }
}

// ----------------------------------------------------------------------------------------------------
// CPU reference

// e^x for float in a form GCC vectorises (no libm call), used by the CPU SiLU, YOLOv5's activation and a
// quarter of the CPU training step when it called expf per element. Cephes' expf: x = n·ln2 + r with
// |r| ≤ ln2/2 (ln2 split in two constants), e^r by a degree-7 polynomial, 2^n put in the exponent bits.
// Relative error ≤ 2e-7 (tested against std::exp); x is clamped to [−87.3, 88.37], where n = round(x/ln2) keeps 2^n
// finite and normal. Every multiply-add is one y5_madd: the loop is bound by the latency of its dependent chain
// (the polynomial), which the FMAs shorten: BatchNorm + SiLU over values in cache 1.3 → 0.8 ns each on an AVX2
// core (bench/RESULTS.md).
// Y5_HD: the decode's σ (kernels/detect.h) computes it on both sides, for the same bits.
Y5_HD float exp_cpu_vec(float x) {
    x = x < -87.3f ? -87.3f : x;  // so that 2^n stays a normal float
    x = x > 88.37f ? 88.37f : x;
    const float fn = y5_floor(y5_madd(x, 1.44269504088896341f, 0.5f));
    const float r = y5_madd(fn, 2.12194440e-4f, y5_madd(fn, -0.693359375f, x));
    float p = 1.9875691500e-4f;
    p = y5_madd(p, r, 1.3981999507e-3f);
    p = y5_madd(p, r, 8.3334519073e-3f);
    p = y5_madd(p, r, 4.1665795894e-2f);
    p = y5_madd(p, r, 1.6666665459e-1f);
    p = y5_madd(p, r, 5.0000001201e-1f);
    p = y5_madd(p * r, r, r + 1.0f);
    const int32_t bits = ((int32_t)fn + 127) << 23;
#ifdef __CUDA_ARCH__
    const float scale = __int_as_float(bits);
#else
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
#endif
    return p * scale;
}

// The float SiLU and its derivative on exp_cpu_vec, the forms every CPU SiLU loop uses (so fused loops elsewhere
// give the same bits): x·σ(x) = x / (1 + e^−x), σ(x)·(1 + x·(1 − σ(x))).
inline float silu_cpu_vec(float x) { return x / (1.0f + exp_cpu_vec(-x)); }
inline float silu_grad_cpu_vec(float x) {
    const float s = 1.0f / (1.0f + exp_cpu_vec(-x));
    return s * y5_madd(x, 1.0f - s, 1.0f);
}

// f16 storage: chunks of kActChunk values are widened to float, run through the float code (its vectorised SiLU
// included) and rounded once per output, so an f16 result is the f32 op's result on the same values, rounded.
constexpr int kActChunk = 256;

template <class T> void act_forward_cpu(T* out, const T* inp, int64_t n, Act a) {
    if constexpr (std::is_same_v<T, f16>) {
        float x[kActChunk];
        for (int64_t i0 = 0; i0 < n; i0 += kActChunk) {
            const int m = (int)(n - i0 < kActChunk ? n - i0 : kActChunk);
            for (int i = 0; i < m; ++i) x[i] = ld(inp[i0 + i]);
            act_forward_cpu<float>(x, x, m, a);
            for (int i = 0; i < m; ++i) out[i0 + i] = st<f16>(x[i]);
        }
    } else {
        if constexpr (std::is_same_v<T, float>)
            if (a.kind == ActKind::SiLU) {  // x·σ(x) = x / (1 + e^−x)
                for (int64_t i = 0; i < n; ++i) out[i] = silu_cpu_vec(inp[i]);
                return;
            }
        for (int64_t i = 0; i < n; ++i) out[i] = act_forward(a, inp[i]);
    }
}

// g = f'(inp) over n values, T the compute type (float or double; the fused BatchNorm+activation backward
// recomputes it from the normalised value).
template <class T> void act_grad_cpu(T* g, const T* inp, int64_t n, Act a) {
    if constexpr (std::is_same_v<T, float>)
        if (a.kind == ActKind::SiLU) {
            for (int64_t i = 0; i < n; ++i) g[i] = silu_grad_cpu_vec(inp[i]);
            return;
        }
    for (int64_t i = 0; i < n; ++i) g[i] = act_grad(a, inp[i]);
}

// dinp += dout·f'(inp); f16: in float per chunk, dinp rounded once.
template <class T> void act_backward_cpu(T* dinp, const T* dout, const T* inp, int64_t n, Act a) {
    if constexpr (std::is_same_v<T, f16>) {
        float g[kActChunk];
        for (int64_t i0 = 0; i0 < n; i0 += kActChunk) {
            const int m = (int)(n - i0 < kActChunk ? n - i0 : kActChunk);
            for (int i = 0; i < m; ++i) g[i] = ld(inp[i0 + i]);
            act_grad_cpu<float>(g, g, m, a);
            for (int i = 0; i < m; ++i) dinp[i0 + i] = st<f16>(ld(dinp[i0 + i]) + ld(dout[i0 + i]) * g[i]);
        }
    } else {
        if constexpr (std::is_same_v<T, float>)
            if (a.kind == ActKind::SiLU) {
                for (int64_t i = 0; i < n; ++i) dinp[i] += dout[i] * silu_grad_cpu_vec(inp[i]);
                return;
            }
        for (int64_t i = 0; i < n; ++i) dinp[i] += dout[i] * act_grad(a, inp[i]);
    }
}

// ----------------------------------------------------------------------------------------------------
// CUDA launchers (kernels/activation.cu, f32 or f16, same arguments plus the stream); built only with Y5_CUDA.

void act_forward_cuda(float* out, const float* inp, int64_t n, Act a, cudaStream_t stream);
void act_backward_cuda(float* dinp, const float* dout, const float* inp, int64_t n, Act a, cudaStream_t stream);
void act_forward_cuda(f16* out, const f16* inp, int64_t n, Act a, cudaStream_t stream);
void act_backward_cuda(f16* dinp, const f16* dout, const f16* inp, int64_t n, Act a, cudaStream_t stream);

// ----------------------------------------------------------------------------------------------------
// Names

inline std::string act_name(Act a) {
    switch (a.kind) {
        case ActKind::Identity: return "nn.Identity()";
        case ActKind::SiLU: return "nn.SiLU()";
        case ActKind::ReLU: return "nn.ReLU()";
        case ActKind::ReLU6: return "nn.ReLU6()";
        case ActKind::LeakyReLU: {
            char s[48];
            snprintf(s, sizeof s, "nn.LeakyReLU(%g)", a.alpha);
            return s;
        }
        case ActKind::Hardswish: return "nn.Hardswish()";
        case ActKind::Sigmoid: return "nn.Sigmoid()";
    }
    return "?";
}

// "nn.SiLU()", "SiLU", "nn.LeakyReLU(0.1)", ... Anything else is an error listing what is accepted.
inline Act parse_act(const std::string& spec) {
    std::string s = spec;
    if (s.rfind("nn.", 0) == 0) s = s.substr(3);
    std::string name = s.substr(0, s.find('('));
    std::string arg;
    size_t lp = s.find('(');
    if (lp != std::string::npos) {
        size_t rp = s.rfind(')');
        Y5_CHECK(rp != std::string::npos && rp > lp, "activation '%s': unbalanced parentheses", spec.c_str());
        arg = s.substr(lp + 1, rp - lp - 1);
    }
    Act a;
    if (name == "SiLU") a.kind = ActKind::SiLU;
    else if (name == "ReLU") a.kind = ActKind::ReLU;
    else if (name == "ReLU6") a.kind = ActKind::ReLU6;
    else if (name == "Hardswish") a.kind = ActKind::Hardswish;
    else if (name == "Identity") a.kind = ActKind::Identity;
    else if (name == "Sigmoid") a.kind = ActKind::Sigmoid;
    else if (name == "LeakyReLU") {
        a.kind = ActKind::LeakyReLU;
        if (!arg.empty()) {
            char* end = nullptr;
            a.alpha = std::strtof(arg.c_str(), &end);
            Y5_CHECK(end && *end == '\0', "activation '%s': negative slope '%s' is not a number", spec.c_str(),
                     arg.c_str());
        }
        return a;
    } else
        Y5_FAIL("unknown activation '%s' (known: nn.SiLU(), nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), "
                "nn.Hardswish(), nn.Identity(), nn.Sigmoid())", spec.c_str());
    Y5_CHECK(arg.empty(), "activation '%s' takes no argument", spec.c_str());
    return a;
}

}  // namespace y5
