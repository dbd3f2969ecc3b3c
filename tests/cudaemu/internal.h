/*
 * What runtime.cpp and exec.cpp share beyond emu.h: the settings, the launch path's access to the runtime's
 * lock and tables, and the statistics.
 */
#pragma once
#include <mutex>

#include "emu.h"

namespace cudaemu {

constexpr size_t kMaxSharedBytes = 48 * 1024;  // static + dynamic shared memory per block without opt-in

struct Settings {
    Order order = Order::Forward;
    uint64_t seed = 1;
    size_t memory = size_t(16384) << 20;  // a T4's 16 GB
    bool verbose = false;
    bool sync_every = false;  // CUDAEMU_SYNC=1: run each piece of work as soon as it is queued
};
Settings& settings();
Stats& stats_mut();
std::recursive_mutex& runtime_mutex();
bool sticky_error();
bool valid_stream(cudaStream_t s);
// A launch-time error (invalid configuration): printed, and the non-sticky last error, as CUDA reports it.
cudaError_t launch_error(cudaError_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
// 0: not emulator memory, 1: pinned host memory, 2: device memory (p inside an allocation or one past its end).
int pointer_space(const void* p);

}  // namespace cudaemu
