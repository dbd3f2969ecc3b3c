/*
 * Seeded random numbers with reproducible, independent streams: PCG32 (O'Neill 2014, XSH-RR 64/32).
 * Rng(seed, stream) is fully determined by its two arguments, on every platform and standard library
 * (std:: distributions are not), so "the same seed gives the same run" holds across machines.
 * Give each consumer its own stream (weights init, augmentation worker i, dropout, ...) instead of
 * sharing one generator, so that the order in which threads draw never changes the numbers.
 */
#pragma once
#include <cmath>
#include <cstdint>

namespace y5 {

class Rng {
public:
    explicit Rng(uint64_t seed = 0, uint64_t stream = 0) {
        inc_ = (stream << 1u) | 1u;
        state_ = 0;
        next_u32();
        state_ += seed;
        next_u32();
    }

    uint32_t next_u32() {
        uint64_t old = state_;
        state_ = old * 6364136223846793005ULL + inc_;
        uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
        uint32_t rot = (uint32_t)(old >> 59u);
        return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
    }
    // [0, 1) with 24 (float) or 53 (double) random bits.
    float uniform() { return (next_u32() >> 8) * (1.0f / 16777216.0f); }
    double uniform_double() {
        uint64_t hi = next_u32() >> 5, lo = next_u32() >> 6;
        return (hi * 67108864.0 + lo) * (1.0 / 9007199254740992.0);
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
    double uniform_double(double lo, double hi) { return lo + (hi - lo) * uniform_double(); }
    // Uniform integer in [0, n), unbiased (Lemire's rejection on the low bits).
    uint32_t randint(uint32_t n) {
        uint32_t threshold = (0u - n) % n;
        for (;;) {
            uint32_t r = next_u32();
            if (r >= threshold) return r % n;
        }
    }
    // Standard normal by Box–Muller (uses two uniforms per call; simple and reproducible).
    double normal() {
        double u1 = uniform_double(), u2 = uniform_double();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }

private:
    uint64_t state_ = 0, inc_ = 1;
};

}  // namespace y5
