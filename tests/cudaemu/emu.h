/*
 * cudaemu's internal interface, for the library stand-ins (cudnn.cpp, cublas.cpp, cub) that sit on the
 * emulated runtime: argument checks against the allocation table, stream-ordered host work, faults.
 */
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace cudaemu {

// Reports a fault: one line "cudaemu: <message>" on stderr, and `code` becomes the sticky error that every
// later runtime call returns (as after a kernel fault on a GPU). Returns `code`.
cudaError_t fault(cudaError_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// True when [p, p + bytes) lies inside one live device allocation (bytes 0: p inside or one past the end).
// Otherwise a fault naming `what`, the caller's site and the nearest allocation, and false.
bool check_device_range(const void* p, size_t bytes, const char* what, const char* file = "?", int line = 0);

// What a piece of queued work touches, for the cross-stream race check.
struct Range {
    const void* p;
    size_t bytes;
    bool write;
};

// Queues `fn` on stream s (0: the legacy stream) in CUDA's stream order; it runs when the host synchronises
// with it (cudaStreamSynchronize, a blocking copy, ...), like a kernel. `what` names it in faults.
void enqueue(cudaStream_t s, std::string what, std::function<void()> fn, std::vector<Range> ranges,
             const char* file = "?", int line = 0);

// Emulation settings, from the environment at first use: CUDAEMU_ORDER = forward | reverse | random[:seed]
// (the order threads and blocks are run in), CUDAEMU_MEMORY_MB (the device's size, default 16384),
// CUDAEMU_VERBOSE=1 (a line per launch and per host wait).
enum class Order { Forward, Reverse, Random };
Order order();
const char* order_name();

// Statistics for the self-tests and the summary line: launches and emulated threads so far, and the calls that
// made the host wait for the device, and the CUDA graphs launched (stream and event synchronisation with work still queued before them, device
// synchronisation, blocking copies and memsets, cudaFree, cudaFreeHost, cudaStreamDestroy; CUDAEMU_VERBOSE names
// each): y5's training step counts them (tests/test_gpu_model.cpp).
struct Stats {
    uint64_t launches, threads, host_waits, graph_launches;
};
// True while a stream capture is active (cudaStreamBeginCapture .. cudaStreamEndCapture).
bool capturing();
Stats stats();

// Frees everything, forgets the sticky error, and rereads the settings (tests of faults run in a child process
// instead; this is for a test that sets CUDAEMU_* itself).
void reset_for_tests();

}  // namespace cudaemu
