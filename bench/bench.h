/*
 * What the bench_* programs share (CUDA builds only), after llm.c's dev/cuda:
 *   - gpu_or_skip: without a usable GPU a benchmark prints "no usable CUDA device: <why>" and exits 0,
 *     so CI and tools/gpu_check.sh stay green where skipping is right;
 *   - Bencher: the device's facts, an L2 flush (a memset of a buffer the size of the L2 cache before every
 *     timed repeat, so no repeat reads what the previous one left in the cache), the device-to-device copy
 *     bandwidth measured once (the yardstick for "% of copy"), and the median of many repeats timed with
 *     CUDA events (device time) or with the host clock (for ops that do host work too);
 *   - check_close: |gpu − cpu| ≤ atol + rtol·|cpu| over a buffer, printing the worst element.
 */
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cuda.h"
#include "engine/device/device.h"

namespace y5bench {

// True when a GPU is usable; otherwise prints why (the caller then exits 0).
inline bool gpu_or_skip(const char* prog) {
    std::string why;
    if (y5::cuda_available(&why)) return true;
    std::printf("%s: no usable CUDA device: %s\n", prog, why.c_str());
    return false;
}

inline double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

class Bencher {
public:
    cudaDeviceProp prop{};
    cudaStream_t stream;
    double copy_gbs = 0;  // device-to-device cudaMemcpyAsync, GB/s of bytes read + written

    explicit Bencher(y5::CudaContext* ctx) : stream(ctx->stream) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
        flush_bytes_ = (size_t)std::max(prop.l2CacheSize, 1 << 20);
        CUDA_CHECK(cudaMalloc(&flush_, flush_bytes_));
        CUDA_CHECK(cudaEventCreate(&t0_));
        CUDA_CHECK(cudaEventCreate(&t1_));
        copy_gbs = measure_copy_bandwidth();
    }
    ~Bencher() {
        cudaFree(flush_);
        cudaEventDestroy(t0_);
        cudaEventDestroy(t1_);
    }
    Bencher(const Bencher&) = delete;
    Bencher& operator=(const Bencher&) = delete;

    void flush_l2() { CUDA_CHECK(cudaMemsetAsync(flush_, 0, flush_bytes_, stream)); }
    void sync() { CUDA_CHECK(cudaStreamSynchronize(stream)); }

    // Median device time in ms of f() (which enqueues on `stream`) over `repeats`, after two untimed calls.
    template <class F> double time_ms(F&& f, int repeats) {
        f();
        f();
        std::vector<double> ms;
        for (int r = 0; r < repeats; ++r) {
            flush_l2();
            CUDA_CHECK(cudaEventRecord(t0_, stream));
            f();
            CUDA_CHECK(cudaEventRecord(t1_, stream));
            CUDA_CHECK(cudaEventSynchronize(t1_));
            float t = 0;
            CUDA_CHECK(cudaEventElapsedTime(&t, t0_, t1_));
            ms.push_back(t);
        }
        return median(ms);
    }

    // Median wall time in ms of f() until the stream is idle again: for ops whose host work counts (the
    // loss builds its targets on the host, the CPU baselines run there). One untimed call first.
    template <class F> double time_wall_ms(F&& f, int repeats) {
        f();
        sync();
        std::vector<double> ms;
        for (int r = 0; r < repeats; ++r) {
            flush_l2();
            sync();
            const auto t = std::chrono::steady_clock::now();
            f();
            sync();
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
        }
        return median(ms);
    }

private:
    void* flush_ = nullptr;
    size_t flush_bytes_ = 0;
    cudaEvent_t t0_, t1_;

    // 256 MiB copied device to device (far past any L2), median of 10; read + write bytes per second.
    double measure_copy_bandwidth() {
        const size_t bytes = (size_t)256 << 20;
        void *src = nullptr, *dst = nullptr;
        CUDA_CHECK(cudaMalloc(&src, bytes));
        CUDA_CHECK(cudaMalloc(&dst, bytes));
        CUDA_CHECK(cudaMemsetAsync(src, 1, bytes, stream));
        const double ms = time_ms([&] { CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream)); }, 10);
        CUDA_CHECK(cudaFree(src));
        CUDA_CHECK(cudaFree(dst));
        return 2.0 * bytes / (ms * 1e-3) / 1e9;
    }
};

// |got − want| ≤ atol + rtol·|want| for every element; prints the largest error and the worst element
// (the one furthest past its tolerance, or the largest error when all pass). Returns whether all pass.
inline bool check_close(const std::string& what, const float* got, const float* want, int64_t n, double atol, double rtol) {
    double max_err = 0, worst_excess = -INFINITY;
    int64_t worst = 0, bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double e = std::fabs((double)got[i] - (double)want[i]), tol = atol + rtol * std::fabs((double)want[i]);
        const bool fail = !(e <= tol);  // NaN fails
        bad += fail;
        max_err = std::max(max_err, std::isnan(e) ? INFINITY : e);
        const double excess = std::isnan(e) ? INFINITY : e - tol;
        if (excess > worst_excess) worst_excess = excess, worst = i;
    }
    std::printf("  %-4s %-52s max |gpu-cpu| %-10.3g (atol %.1e rtol %.1e)", bad ? "FAIL" : "ok", what.c_str(), max_err,
                atol, rtol);
    if (bad && n)
        std::printf(" %lld of %lld bad; worst [%lld] gpu %.9g cpu %.9g", (long long)bad, (long long)n, (long long)worst,
                    got[worst], want[worst]);
    std::printf("\n");
    return bad == 0;
}

inline bool check_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                        double atol, double rtol) {
    if (got.size() != want.size()) {
        std::printf("  FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), want.size());
        return false;
    }
    return check_close(what, got.data(), want.data(), (int64_t)got.size(), atol, rtol);
}

}  // namespace y5bench
