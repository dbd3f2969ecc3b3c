/*
 * cudaemu's own tests (Catch2): planted bugs that the emulated device must report, and the CUDA semantics it
 * must get right. The kernels and launchers are in planted.cu (rewritten like y5's .cu files); host-only API
 * checks are here. Every test starts with fresh(), which sets the emulator's environment (thread order,
 * memory size) and resets it, so tests are independent. Faults that end the process (a pinned buffer read too
 * early, AddressSanitizer) run in a forked child whose exit and stderr the parent checks; other faults are
 * checked in-process, with stderr captured to read their messages.
 * Built twice (selftest.cmake): plain, and with AddressSanitizer, which adds the out-of-bounds test.
 */
#include <cuda_runtime.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "emu.h"

using Catch::Matchers::Contains;

// ---------------------------------------------------------------------------------------------------- planted.cu
void launch_reduce(const float* in, float* out, int blocks, bool planted);
void launch_early_return(const float* in, float* out, int n);
void launch_ring_1024(int* out, int steps);
void launch_shuffles(const float* in, float* out, int width);
void launch_votes(const int* pred, unsigned* out, int threads);
void launch_syncwarp_rotate(float* out);
void launch_late_shuffle(int* out);
void launch_shfl_exited_lane(float* out);
void launch_warp_misuse(int* out, int which);
void launch_where_am_i(int* lin, int* tpack, int* bpack, dim3 grid, dim3 block);
void launch_count_threads(int* count, dim3 grid, dim3 block, size_t smem);
void launch_atomics(int* isum, float* fsum, int* olds, int blocks, int threads);
void launch_reverse_dynamic(const float* in, float* out, int blocks, int threads);
void launch_shared_declarators(float* out);
void launch_uninit_shared(float* out, int blocks);
void launch_uninit_dynamic_shared(float* out, int threads);
void launch_scale(const float* in, float* out, float k, int n);
void launch_scale(const int* in, int* out, int k, int n);
void launch_fill(int* out, int n, int value, cudaStream_t s);
void launch_twice(const int* in, int* out, int n, cudaStream_t s);
void planted_out_of_bounds_read();
int planted_pinned_read(bool synchronise);

// ---------------------------------------------------------------------------------------------------- helpers
namespace {

// Every test starts here: the thread order (CUDAEMU_ORDER), the device's size in MiB (CUDAEMU_MEMORY_MB, or
// the default), work deferred to synchronising calls (no CUDAEMU_SYNC); then a reset that rereads them.
void fresh(const char* order = "forward", const char* memory_mb = nullptr) {
    setenv("CUDAEMU_ORDER", order, 1);
    if (memory_mb) setenv("CUDAEMU_MEMORY_MB", memory_mb, 1);
    else unsetenv("CUDAEMU_MEMORY_MB");
    unsetenv("CUDAEMU_SYNC");
    unsetenv("CUDAEMU_VERBOSE");
    cudaemu::reset_for_tests();
}

// The line of planted.cu that carries the comment "mark:NAME" (exactly one must).
int planted_line(const std::string& name) {
    std::ifstream f(CUDAEMU_SOURCE_DIR "/planted.cu");
    REQUIRE(f);
    std::string text, tag = "mark:" + name;
    int line = 0, found = 0, count = 0;
    while (std::getline(f, text)) {
        ++line;
        const size_t at = text.find(tag);
        if (at != std::string::npos && (at + tag.size() == text.size() || text[at + tag.size()] == ' ')) {
            found = line;
            ++count;
        }
    }
    REQUIRE(count == 1);
    return found;
}

// Does `text` name file:line (the file's name possibly after a directory, the line not followed by a digit)?
bool names_line(const std::string& text, const std::string& file, int line) {
    const std::string want = file + ":" + std::to_string(line);
    for (size_t at = text.find(want); at != std::string::npos; at = text.find(want, at + 1)) {
        const size_t end = at + want.size();
        const bool file_starts = at == 0 || text[at - 1] == '/' || text[at - 1] == ' ' || text[at - 1] == '(';
        if (file_starts && (end == text.size() || !std::isdigit((unsigned char)text[end]))) return true;
    }
    return false;
}

// Captures what is written to stderr (the emulator's fault lines) while it lives.
class Stderr {
public:
    Stderr() {
        std::fflush(stderr);
        tmp_ = std::tmpfile();
        saved_ = dup(2);
        dup2(fileno(tmp_), 2);
    }
    ~Stderr() {
        std::fflush(stderr);
        dup2(saved_, 2);
        close(saved_);
        std::fclose(tmp_);
    }
    std::string text() const {
        std::fflush(stderr);
        std::string s;
        char b[4096];
        ssize_t n;
        for (off_t at = 0; (n = pread(fileno(tmp_), b, sizeof b, at)) > 0; at += n) s.append(b, (size_t)n);
        return s;
    }

private:
    FILE* tmp_;
    int saved_;
};

// Runs fn in a forked child (stderr to a pipe; exit 0 if fn returns) and returns its wait status and stderr.
struct Child {
    int status;
    std::string err;
};
Child in_child(const std::function<void()>& fn) {
    int fd[2];
    REQUIRE(pipe(fd) == 0);
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        close(fd[1]);
        fn();
        _exit(0);
    }
    close(fd[1]);
    Child c{0, ""};
    char b[4096];
    ssize_t n;
    while ((n = read(fd[0], b, sizeof b)) > 0) c.err.append(b, (size_t)n);
    close(fd[0]);
    REQUIRE(waitpid(pid, &c.status, 0) == pid);
    return c;
}

template <class T> T* device_alloc(size_t n) {
    T* p = nullptr;
    REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
    return p;
}
template <class T> std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
}
template <class T> T* to_device(const std::vector<T>& h) {
    T* d = device_alloc<T>(h.size());
    REQUIRE(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    return d;
}

uint32_t bits(float x) {
    uint32_t b;
    std::memcpy(&b, &x, 4);
    return b;
}

// The planted or the correct reduction of 4 blocks of small integers; the sums are exact in float.
std::vector<float> reduce(bool planted) {
    std::vector<float> in(4 * 256);
    for (size_t i = 0; i < in.size(); ++i) in[i] = (float)(i * 7 % 13);
    float* d_in = to_device(in);
    float* d_out = device_alloc<float>(4);
    launch_reduce(d_in, d_out, 4, planted);
    return to_host(d_out, 4);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------- planted bugs
TEST_CASE("planted: a missing __syncthreads in a reduction changes the result with the thread order") {
    std::vector<float> want(4, 0.0f);
    for (int i = 0; i < 4 * 256; ++i) want[i / 256] += (float)(i * 7 % 13);

    fresh("forward");
    REQUIRE(std::string(cudaemu::order_name()) == "forward");
    const std::vector<float> good_forward = reduce(false), bad_forward = reduce(true);
    fresh("reverse");
    REQUIRE(std::string(cudaemu::order_name()) == "reverse");
    const std::vector<float> good_reverse = reduce(false), bad_reverse = reduce(true);
    fresh("random:7");
    REQUIRE(std::string(cudaemu::order_name()) == "random");
    const std::vector<float> good_random = reduce(false), bad_random = reduce(true);

    CHECK(good_forward == want);
    CHECK(good_reverse == want);
    CHECK(good_random == want);
    CHECK(bad_forward != bad_reverse);  // the bug shows as a change of result with the order
    CHECK(bad_forward != want);
    CHECK(bad_random != want);
}

TEST_CASE("planted: __syncthreads after an early return is a barrier in divergent code") {
    const int line = planted_line("divergent-barrier"), launch = planted_line("early-return-launch");
    std::string order = GENERATE("forward", "reverse");
    fresh(order.c_str());
    std::vector<float> in(64, 1.0f);
    float* d_in = to_device(in);
    float* d_out = device_alloc<float>(64);
    Stderr err;
    launch_early_return(d_in, d_out, 40);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    const std::string msg = err.text();
    CHECK_THAT(msg, Contains("kernel planted_early_return (launched at "));
    CHECK(names_line(msg, "planted.cu", launch));
    CHECK(names_line(msg, "planted.cu", line));
    CHECK_THAT(msg, Contains("(a barrier in divergent code)"));
    if (order == "forward") {  // threads 0-39 wait at the barrier of block 0 when thread 40 exits
        CHECK_THAT(msg, Contains("block (0,0,0), thread (40,0,0): this thread exited while 40 threads of its block "
                                 "wait at __syncthreads"));
    } else {  // threads 63-40 of block 1 have exited when thread 39 reaches the barrier
        CHECK_THAT(msg, Contains("block (1,0,0), thread (39,0,0): __syncthreads at "));
        CHECK_THAT(msg, Contains("is reached after 24 threads of the block have exited"));
    }
}

TEST_CASE("planted: a shuffle whose mask names an exited lane") {
    const int line = planted_line("exited-lane");
    std::string order = GENERATE("forward", "reverse");
    fresh(order.c_str());
    float* d_out = device_alloc<float>(32);
    Stderr err;
    launch_shfl_exited_lane(d_out);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    const std::string msg = err.text();
    CHECK_THAT(msg, Contains("kernel planted_shfl_exited_lane"));
    CHECK(names_line(msg, "planted.cu", line));
    if (order == "forward") {  // lanes 0-15 wait in the shuffle when lane 16 exits
        CHECK_THAT(msg, Contains("thread (16,0,0): this thread exited while lane 0 waits for it in "
                                 "__shfl_sync(mask 0xffffffff)"));
    } else {  // lanes 31-16 have exited when lane 15 reaches the shuffle
        CHECK_THAT(msg, Contains("thread (15,0,0): __shfl_sync at "));
        CHECK_THAT(msg, Contains("the mask 0xffffffff names lane 16, which has exited"));
    }
}

TEST_CASE("planted: warp misuse: different intrinsics in one warp, a read outside the mask, a deadlock") {
    fresh();
    int* d_out = device_alloc<int>(32);
    Stderr err;
    SECTION("the half-warps in different intrinsics") {
        launch_warp_misuse(d_out, 0);
        CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
        CHECK_THAT(err.text(), Contains("lanes of one warp are in different warp intrinsics"));
        CHECK(names_line(err.text(), "planted.cu", planted_line("mixed-shfl")));
        CHECK(names_line(err.text(), "planted.cu", planted_line("mixed-ballot")));
    }
    SECTION("a half-warp shuffle reading the other half") {
        launch_warp_misuse(d_out, 1);
        CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
        CHECK_THAT(err.text(), Contains("lane 15 reads lane 16, which the mask 0x0000ffff does not name"));
        CHECK(names_line(err.text(), "planted.cu", planted_line("outside-mask")));
    }
    SECTION("__syncwarp against __syncthreads") {
        launch_warp_misuse(d_out, 2);
        CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
        CHECK_THAT(err.text(), Contains("deadlock: 16 threads wait at __syncthreads"));
        CHECK_THAT(err.text(), Contains("while 16 wait in __syncwarp"));
        CHECK(names_line(err.text(), "planted.cu", planted_line("deadlock-warp")));
        CHECK(names_line(err.text(), "planted.cu", planted_line("deadlock-barrier")));
    }
}

TEST_CASE("planted: invalid launch configurations fail at launch, in cudaGetLastError, not sticky") {
    fresh();
    const int line = planted_line("count-launch");
    int* count = device_alloc<int>(1);
    REQUIRE(cudaMemset(count, 0, sizeof(int)) == cudaSuccess);
    struct Bad {
        dim3 grid, block;
        size_t smem;
        const char* why;
    };
    const Bad bad[] = {
        {dim3(1), dim3(64, 32), 0, "more than 1024 threads in a block"},
        {dim3(1), dim3(2048), 0, "block dimensions over (1024, 1024, 64)"},
        {dim3(1), dim3(1, 1, 65), 0, "block dimensions over (1024, 1024, 64)"},
        {dim3(1, 65536), dim3(32), 0, "grid dimensions over (2^31-1, 65535, 65535)"},
        {dim3(0), dim3(32), 0, "a dimension is 0"},
        {dim3(1), dim3(32, 0), 0, "a dimension is 0"},
        {dim3(1), dim3(32), 48 * 1024 + 1, "dynamic shared memory over 48 KiB"},
    };
    for (const Bad& b : bad) {
        Stderr err;
        launch_count_threads(count, b.grid, b.block, b.smem);
        CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration);
        CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
        CHECK(cudaGetLastError() == cudaSuccess);  // read once, then cleared: not sticky
        CHECK_THAT(err.text(), Contains("invalid launch configuration for kernel count_threads at "));
        CHECK(names_line(err.text(), "planted.cu", line));
        CHECK_THAT(err.text(), Contains(b.why));
    }
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(to_host(count, 1)[0] == 0);  // none of them ran

    // The limits themselves are valid.
    launch_count_threads(count, dim3(1, 65535), dim3(1), 0);
    launch_count_threads(count, dim3(1), dim3(1024), 0);
    launch_count_threads(count, dim3(1), dim3(1, 1, 64), 0);
    launch_count_threads(count, dim3(1), dim3(32), 48 * 1024);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(to_host(count, 1)[0] == 65535 + 1024 + 64 + 32);
}

#if defined(__SANITIZE_ADDRESS__)
TEST_CASE("planted: an out-of-bounds read in a kernel is reported by AddressSanitizer", "[asan]") {
    fresh();
    const Child c = in_child(planted_out_of_bounds_read);
    CHECK(c.status != 0);  // ASan's exit code 1, or SIGABRT with ASAN_OPTIONS=abort_on_error=1
    CHECK_THAT(c.err, Contains("ERROR: AddressSanitizer: heap-buffer-overflow"));
    CHECK_THAT(c.err, Contains("READ of size 4"));
    CHECK_THAT(c.err, Contains("planted_read_past_end"));
    CHECK(names_line(c.err, "planted.cu", planted_line("off-by-one")));
}
#endif

TEST_CASE("planted: cudaMemcpy past the end of an allocation names the allocation") {
    fresh();
    void* d = nullptr;
    REQUIRE(cudaMalloc(&d, 100) == cudaSuccess);
    const int alloc_line = __LINE__ - 1;
    std::vector<char> h(200, 1);
    Stderr err;
    SECTION("into it") {
        CHECK(cudaMemcpy(d, h.data(), 120, cudaMemcpyHostToDevice) == cudaErrorIllegalAddress);
        const int copy_line = __LINE__ - 1;
        CHECK_THAT(err.text(), Contains("cudaMemcpy's destination at selftest.cpp:" + std::to_string(copy_line) +
                                        ": 120 bytes at "));
        CHECK_THAT(err.text(), Contains("run 20 bytes past the end of the allocation of 100 bytes made at selftest.cpp:" +
                                        std::to_string(alloc_line)));
    }
    SECTION("out of it, from an offset") {
        CHECK(cudaMemcpy(h.data(), (char*)d + 90, 11, cudaMemcpyDeviceToHost) == cudaErrorIllegalAddress);
        const int copy_line = __LINE__ - 1;
        CHECK_THAT(err.text(), Contains("cudaMemcpy's source at selftest.cpp:" + std::to_string(copy_line)));
        CHECK_THAT(err.text(), Contains("run 1 bytes past the end of the allocation of 100 bytes made at selftest.cpp:" +
                                        std::to_string(alloc_line)));
    }
    CHECK(h[0] == 1);  // nothing was copied
}

TEST_CASE("planted: a wrong copy direction is reported") {
    fresh();
    void *a = nullptr, *b = nullptr;
    REQUIRE(cudaMalloc(&a, 64) == cudaSuccess);
    REQUIRE(cudaMalloc(&b, 64) == cudaSuccess);
    std::vector<char> h(64), h2(64);
    Stderr err;
    SECTION("a device pointer as the host side") {
        CHECK(cudaMemcpy(a, b, 64, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
        const int line = __LINE__ - 1;
        CHECK_THAT(err.text(), Contains("cudaMemcpy at selftest.cpp:" + std::to_string(line) + ": the source "));
        CHECK_THAT(err.text(), Contains("is device memory, but the copy kind says host (wrong copy direction)"));
    }
    SECTION("a host pointer as the device side") {
        CHECK(cudaMemcpy(h.data(), h2.data(), 64, cudaMemcpyDeviceToHost) == cudaErrorIllegalAddress);
        const int line = __LINE__ - 1;
        CHECK_THAT(err.text(), Contains("cudaMemcpy's source at selftest.cpp:" + std::to_string(line)));
        CHECK_THAT(err.text(), Contains("is not device memory"));
    }
}

TEST_CASE("planted: a pinned buffer read before its stream is synchronised stops the process") {
    fresh();
    const Child c = in_child([] { planted_pinned_read(false); });
    CHECK((WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGABRT));
    CHECK_THAT(c.err, Contains("cudaemu: the host accessed pinned buffer"));
    CHECK_THAT(c.err, Contains("while an asynchronous copy into or out of it was still queued"));
    CHECK(names_line(c.err, "planted.cu", planted_line("pinned-alloc")));

    // Synchronised first, the same read is fine and sees the copied value.
    fresh();
    CHECK(planted_pinned_read(true) == 42);
    CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("planted: a legacy-stream cudaMemcpy races a kernel on a non-blocking stream") {
    fresh();
    const int n = 256, launch = planted_line("fill-launch");
    int* d = device_alloc<int>(n);
    REQUIRE(cudaMemset(d, 0, n * sizeof(int)) == cudaSuccess);
    cudaStream_t s;
    std::vector<int> h(n, -1);
    SECTION("the race") {
        REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
        launch_fill(d, n, 7, s);
        Stderr err;
        CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorIllegalState);
        const int line = __LINE__ - 1;
        CHECK_THAT(err.text(), Contains("race: cudaMemcpy of 1024 bytes (selftest.cpp:" + std::to_string(line) + ")"));
        CHECK_THAT(err.text(), Contains("which kernel fill (planted.cu:" + std::to_string(launch) +
                                        "), queued before it on another stream, writes"));
        CHECK(h[0] == -1);
    }
    // What orders the two streams, each of which makes the copy correct.
    SECTION("synchronising the stream first") {
        REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
        launch_fill(d, n, 7, s);
        REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
        CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(h == std::vector<int>(n, 7));
    }
    SECTION("an event the legacy stream waits for") {
        REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
        cudaEvent_t ev;
        REQUIRE(cudaEventCreate(&ev) == cudaSuccess);
        launch_fill(d, n, 7, s);
        REQUIRE(cudaEventRecord(ev, s) == cudaSuccess);
        REQUIRE(cudaStreamWaitEvent(0, ev) == cudaSuccess);
        CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(h == std::vector<int>(n, 7));
    }
    SECTION("a blocking stream, which the legacy stream waits for by itself") {
        REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
        launch_fill(d, n, 7, s);
        CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(h == std::vector<int>(n, 7));
    }
}

TEST_CASE("planted: uninitialised shared memory reads as the poison pattern") {
    std::string order = GENERATE("forward", "reverse");
    fresh(order.c_str());
    SECTION("static __shared__, per block") {
        float* d = device_alloc<float>(3 * 64);
        REQUIRE(cudaMemset(d, 0, 3 * 64 * sizeof(float)) == cudaSuccess);  // so the poison can only come from s
        launch_uninit_shared(d, 3);
        const std::vector<float> h = to_host(d, 3 * 64);
        for (int b = 0; b < 3; ++b)
            for (int t = 0; t < 64; ++t) {
                const float v = h[b * 64 + t];
                if (b == 0 || t < 32) CHECK(v == (float)t);
                else CHECK((std::isnan(v) && bits(v) == 0xFFFFFFFFu));
            }
    }
    SECTION("dynamic (extern __shared__)") {
        float* d = device_alloc<float>(64);
        REQUIRE(cudaMemset(d, 0, 64 * sizeof(float)) == cudaSuccess);
        launch_uninit_dynamic_shared(d, 64);
        for (float v : to_host(d, 64)) CHECK(bits(v) == 0xFFFFFFFFu);
    }
    SECTION("new device memory") {
        for (float v : to_host(device_alloc<float>(16), 16)) CHECK(bits(v) == 0xFFFFFFFFu);
    }
}

TEST_CASE("planted: a kernel argument pointing to pageable host memory") {
    fresh();
    std::vector<int> h(64);
    Stderr err;
    launch_fill(h.data(), 64, 1, 0);
    CHECK(cudaDeviceSynchronize() == cudaErrorIllegalAddress);
    CHECK_THAT(err.text(), Contains("cudaemu: kernel fill at "));
    CHECK(names_line(err.text(), "planted.cu", planted_line("fill-launch")));
    CHECK_THAT(err.text(), Contains(": argument 0 is "));
    CHECK_THAT(err.text(), Contains("which is neither device memory nor pinned host memory"));
    CHECK(h[0] == 0);
}

TEST_CASE("planted: cudaFree of an interior pointer") {
    fresh();
    void* d = nullptr;
    REQUIRE(cudaMalloc(&d, 1024) == cudaSuccess);
    const int alloc_line = __LINE__ - 1;
    Stderr err;
    CHECK(cudaFree((char*)d + 16) == cudaErrorInvalidDevicePointer);
    const int line = __LINE__ - 1;
    CHECK_THAT(err.text(), Contains("cudaFree at selftest.cpp:" + std::to_string(line) + ": "));
    CHECK_THAT(err.text(), Contains("is not the start of a device allocation (nearest: device allocation "));
    CHECK_THAT(err.text(), Contains("of 1024 bytes from selftest.cpp:" + std::to_string(alloc_line) +
                                    ", 16 bytes past its start)"));
}

TEST_CASE("faults: a kernel fault is sticky until reset_for_tests") {
    fresh();
    const int n = 64;
    float* in = to_device(std::vector<float>(n, 1.0f));
    float* out = device_alloc<float>(n);
    int* d = device_alloc<int>(n);
    REQUIRE(cudaMemset(d, 0, n * sizeof(int)) == cudaSuccess);
    {
        Stderr err;
        launch_early_return(in, out, 40);
        CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
        CHECK_THAT(err.text(), Contains("cudaemu: kernel planted_early_return"));
    }
    // Every later call returns the fault, and nothing runs.
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
    CHECK(cudaPeekAtLastError() == cudaErrorLaunchFailure);
    void* p = nullptr;
    CHECK(cudaMalloc(&p, 16) == cudaErrorLaunchFailure);
    std::vector<int> h(n, -1);
    CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure);
    CHECK(h[0] == -1);
    CHECK(cudaMemset(d, 1, n * sizeof(int)) == cudaErrorLaunchFailure);
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s) == cudaErrorLaunchFailure);
    launch_fill(d, n, 9, 0);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    CHECK(d[0] == 0);  // the emulated device shares the host's memory: the kernel did not run

    cudaemu::reset_for_tests();
    CHECK(cudaGetLastError() == cudaSuccess);
    int* e = device_alloc<int>(n);
    launch_fill(e, n, 9, 0);
    CHECK(to_host(e, n) == std::vector<int>(n, 9));
}

// ---------------------------------------------------------------------------------------------------- warps
TEST_CASE("warps: __shfl_sync, _up, _down, _xor at width 32 and 8") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    std::vector<float> in(32);
    for (int l = 0; l < 32; ++l) in[l] = 100.0f + l;
    float* d_in = to_device(in);
    float* d_out = device_alloc<float>(6 * 32);
    SECTION("width 32") {
        launch_shuffles(d_in, d_out, 32);
        const std::vector<float> out = to_host(d_out, 6 * 32);
        for (int l = 0; l < 32; ++l) {
            INFO("lane " << l);
            CHECK(out[0 * 32 + l] == in[3]);
            CHECK(out[1 * 32 + l] == in[11]);
            CHECK(out[2 * 32 + l] == in[l >= 2 ? l - 2 : l]);   // up 2: lanes 0, 1 keep their own
            CHECK(out[3 * 32 + l] == in[l < 29 ? l + 3 : l]);   // down 3: lanes 29-31 keep their own
            CHECK(out[4 * 32 + l] == in[l ^ 5]);
            CHECK(out[5 * 32 + l] == in[l ^ 8]);
        }
    }
    SECTION("width 8") {
        launch_shuffles(d_in, d_out, 8);
        const std::vector<float> out = to_host(d_out, 6 * 32);
        for (int l = 0; l < 32; ++l) {
            INFO("lane " << l);
            const int seg = l / 8 * 8, k = l % 8;
            CHECK(out[0 * 32 + l] == in[seg + 3]);
            CHECK(out[1 * 32 + l] == in[seg + 3]);             // 11 wraps to 3 within the segment
            CHECK(out[2 * 32 + l] == in[k >= 2 ? l - 2 : l]);
            CHECK(out[3 * 32 + l] == in[k < 5 ? l + 3 : l]);
            CHECK(out[4 * 32 + l] == in[l ^ 5]);               // 5 < 8: stays in the segment
            CHECK(out[5 * 32 + l] == in[l % 16 >= 8 ? l - 8 : l]);  // an earlier segment may be read, a later not
        }
    }
}

TEST_CASE("warps: __ballot_sync, __any_sync, __all_sync, partial masks, __syncwarp") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    // Warp 0: every third lane; warp 1: the upper half only; warp 2: all lanes.
    const int n = 96;
    std::vector<int> pred(n);
    for (int l = 0; l < 32; ++l) {
        pred[l] = l % 3 == 0;
        pred[32 + l] = l >= 16;
        pred[64 + l] = 1;
    }
    int* d_pred = to_device(pred);
    unsigned* d_out = device_alloc<unsigned>(7 * n);
    REQUIRE(cudaMemset(d_out, 0x5A, 7 * n * sizeof(unsigned)) == cudaSuccess);
    launch_votes(d_pred, d_out, n);
    const std::vector<unsigned> out = to_host(d_out, 7 * n);
    const unsigned ballot[3] = {0x49249249u, 0xffff0000u, 0xffffffffu}, any[3] = {1, 1, 1}, all[3] = {0, 0, 1};
    const unsigned half_ballot[3] = {0x9249u, 0u, 0xffffu}, half_any[3] = {1, 0, 1}, half_all[3] = {0, 0, 1};
    for (int t = 0; t < n; ++t) {
        INFO("thread " << t);
        const int w = t / 32, lane = t % 32;
        CHECK(out[0 * n + t] == ballot[w]);
        CHECK(out[1 * n + t] == any[w]);
        CHECK(out[2 * n + t] == all[w]);
        if (lane < 16) {
            CHECK(out[3 * n + t] == half_ballot[w]);
            CHECK(out[4 * n + t] == half_any[w]);
            CHECK(out[5 * n + t] == half_all[w]);
            CHECK(out[6 * n + t] == (unsigned)(lane < 15 ? lane + 1 : lane));  // width 16: lane 15 keeps its own
        } else {
            for (int k = 3; k < 7; ++k) CHECK(out[k * n + t] == 0x5A5A5A5Au);  // the upper half took no part
        }
    }

    float* d_rot = device_alloc<float>(32);
    launch_syncwarp_rotate(d_rot);
    const std::vector<float> rot = to_host(d_rot, 32);
    for (int l = 0; l < 32; ++l) CHECK(rot[l] == 2.0f * ((l + 1) % 32));
}

// ---------------------------------------------------------------------------------------------------- blocks and grids
TEST_CASE("indexing: every thread of a 2-D and a 3-D grid writes its linear index") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    struct Shape {
        dim3 grid, block;
    };
    const Shape shapes[] = {{dim3(5, 3), dim3(8, 4)}, {dim3(3, 2, 2), dim3(4, 3, 2)}};
    for (const Shape& sh : shapes) {
        const int total = (int)(sh.grid.x * sh.grid.y * sh.grid.z * sh.block.x * sh.block.y * sh.block.z);
        int *lin = device_alloc<int>(total), *tp = device_alloc<int>(total), *bp = device_alloc<int>(total);
        launch_where_am_i(lin, tp, bp, sh.grid, sh.block);
        const std::vector<int> l = to_host(lin, total), t = to_host(tp, total), b = to_host(bp, total);
        int g = 0;  // CUDA's order: blocks x fastest, then y, z; within a block the same
        for (unsigned bz = 0; bz < sh.grid.z; ++bz)
            for (unsigned by = 0; by < sh.grid.y; ++by)
                for (unsigned bx = 0; bx < sh.grid.x; ++bx)
                    for (unsigned tz = 0; tz < sh.block.z; ++tz)
                        for (unsigned ty = 0; ty < sh.block.y; ++ty)
                            for (unsigned tx = 0; tx < sh.block.x; ++tx, ++g) {
                                INFO("linear index " << g);
                                CHECK(l[g] == g);
                                CHECK(t[g] == (int)(tx | ty << 8 | tz << 16));
                                CHECK(b[g] == (int)(bx | by << 8 | bz << 16));
                            }
        CHECK(g == total);
    }
}

TEST_CASE("atomics: atomicAdd on int and float across blocks") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    const int blocks = 40, threads = 96, n = blocks * threads;
    int* isum = device_alloc<int>(1);
    float* fsum = device_alloc<float>(1);
    int* olds = device_alloc<int>(n);
    REQUIRE(cudaMemset(isum, 0, sizeof(int)) == cudaSuccess);
    REQUIRE(cudaMemset(fsum, 0, sizeof(float)) == cudaSuccess);
    launch_atomics(isum, fsum, olds, blocks, threads);
    CHECK(to_host(isum, 1)[0] == n);
    CHECK(to_host(fsum, 1)[0] == 0.25f * n);
    std::vector<int> o = to_host(olds, n), want(n);
    std::sort(o.begin(), o.end());
    std::iota(want.begin(), want.end(), 0);
    CHECK(o == want);  // each thread got a different old value
}

TEST_CASE("warps: threads that reach no sync point run before and after those that do") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    int* d = device_alloc<int>(64);
    launch_late_shuffle(d);  // two blocks writing the same values: the second block starts afresh
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    const std::vector<int> out = to_host(d, 64);
    for (int t = 0; t < 48; ++t) CHECK(out[t] == 3 * t);
    for (int t = 48; t < 64; ++t) CHECK(out[t] == 3 * (48 + (t - 48 + 1) % 16));
}

TEST_CASE("barriers: a block of 1024 threads with a barrier in a loop") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    int* d = device_alloc<int>(1024);
    launch_ring_1024(d, 10);
    const std::vector<int> out = to_host(d, 1024);
    for (int t = 0; t < 1024; ++t) CHECK(out[t] == ((t + 10) & 1023) + 10);
}

TEST_CASE("shared memory: dynamic (extern __shared__), and several declarators in one declaration") {
    fresh(GENERATE("forward", "reverse", "random:7"));
    SECTION("dynamic") {
        const int blocks = 3, threads = 128, n = blocks * threads;
        std::vector<float> in(n);
        for (int i = 0; i < n; ++i) in[i] = (float)i;
        float* d_in = to_device(in);
        float* d_out = device_alloc<float>(n);
        launch_reverse_dynamic(d_in, d_out, blocks, threads);
        const std::vector<float> out = to_host(d_out, n);
        for (int i = 0; i < n; ++i) CHECK(out[i] == in[i / threads * threads + threads - 1 - i % threads]);
    }
    SECTION("declarators") {
        float* d = device_alloc<float>(128);
        launch_shared_declarators(d);
        const std::vector<float> out = to_host(d, 128);
        for (int t = 0; t < 32; ++t) {
            CHECK(out[t] == (float)(31 - t));
            CHECK(out[32 + t] == 100.0f + t);
            CHECK(out[64 + t] == 7.0f);
            CHECK(out[96 + t] == (t < 4 ? 3.0f * t : -1.0f));
        }
    }
}

TEST_CASE("templates: a template kernel launched as k<float><<<...>>> and k<int><<<...>>>") {
    fresh();
    const int n = 100;
    std::vector<float> f(n);
    std::vector<int> i(n);
    for (int k = 0; k < n; ++k) f[k] = 0.5f * k, i[k] = k - 50;
    float* df = to_device(f);
    float* df_out = device_alloc<float>(n);
    int* di = to_device(i);
    int* di_out = device_alloc<int>(n);
    launch_scale(df, df_out, 3.0f, n);
    launch_scale(di, di_out, -2, n);
    const std::vector<float> fo = to_host(df_out, n);
    const std::vector<int> io = to_host(di_out, n);
    for (int k = 0; k < n; ++k) {
        CHECK(fo[k] == 1.5f * k);
        CHECK(io[k] == -2 * (k - 50));
    }
}

// ---------------------------------------------------------------------------------------------------- streams and copies
TEST_CASE("streams: work on a stream runs only when the host synchronises with it") {
    fresh();
    const int n = 256;
    int* d = device_alloc<int>(n);
    REQUIRE(cudaMemset(d, 0, n * sizeof(int)) == cudaSuccess);
    // The emulated device shares the host's memory, so the host can look at d without a copy.
    SECTION("non-blocking: the legacy stream does not wait for it; an event query does") {
        cudaStream_t s;
        cudaEvent_t ev;
        REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
        REQUIRE(cudaEventCreate(&ev) == cudaSuccess);
        launch_fill(d, n, 5, s);
        REQUIRE(cudaEventRecord(ev, s) == cudaSuccess);
        CHECK(d[0] == 0);
        CHECK(cudaStreamSynchronize(0) == cudaSuccess);
        CHECK(d[n - 1] == 0);
        CHECK(cudaEventQuery(ev) == cudaSuccess);
        CHECK(std::vector<int>(d, d + n) == std::vector<int>(n, 5));
    }
    SECTION("blocking: synchronising the legacy stream runs it") {
        cudaStream_t s;
        REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
        launch_fill(d, n, 5, s);
        CHECK(d[0] == 0);
        CHECK(cudaStreamSynchronize(0) == cudaSuccess);
        CHECK(std::vector<int>(d, d + n) == std::vector<int>(n, 5));
    }
}

TEST_CASE("streams: an event orders two non-blocking streams (cudaStreamWaitEvent)") {
    fresh();
    const int n = 256;
    int *a = device_alloc<int>(n), *b = device_alloc<int>(n), *c = device_alloc<int>(n);
    for (int* p : {a, b, c}) REQUIRE(cudaMemset(p, 0, n * sizeof(int)) == cudaSuccess);
    cudaStream_t s1, s2;
    cudaEvent_t ev;
    REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaEventCreate(&ev) == cudaSuccess);
    SECTION("with the event") {
        launch_fill(a, n, 3, s1);
        REQUIRE(cudaEventRecord(ev, s1) == cudaSuccess);
        launch_fill(c, n, 9, s1);  // after the event: s2 does not wait for it
        REQUIRE(cudaStreamWaitEvent(s2, ev) == cudaSuccess);
        launch_twice(a, b, n, s2);
        CHECK(cudaStreamSynchronize(s2) == cudaSuccess);
        CHECK(std::vector<int>(b, b + n) == std::vector<int>(n, 6));
        CHECK(c[0] == 0);
        CHECK(cudaStreamSynchronize(s1) == cudaSuccess);
        CHECK(c[0] == 9);
    }
    SECTION("without it, the race check fires") {
        launch_fill(a, n, 3, s1);
        launch_twice(a, b, n, s2);
        Stderr err;
        CHECK(cudaStreamSynchronize(s2) == cudaErrorIllegalState);
        CHECK_THAT(err.text(), Contains("race: kernel twice (planted.cu:" + std::to_string(planted_line("twice-launch")) +
                                        ")"));
        CHECK_THAT(err.text(), Contains("which kernel fill (planted.cu:" + std::to_string(planted_line("fill-launch")) +
                                        "), queued before it on another stream, writes"));
        CHECK(b[0] == 0);
    }
    SECTION("without it, running the earlier work first also finds the race") {
        launch_fill(a, n, 3, s1);
        launch_twice(a, b, n, s2);
        Stderr err;
        CHECK(cudaStreamSynchronize(s1) == cudaErrorIllegalState);
        CHECK_THAT(err.text(), Contains("race: kernel fill (planted.cu:" + std::to_string(planted_line("fill-launch")) +
                                        ")"));
        CHECK_THAT(err.text(), Contains("which kernel twice (planted.cu:" + std::to_string(planted_line("twice-launch")) +
                                        "), queued after it on another stream, reads"));
    }
}

TEST_CASE("graphs: captured work runs only when the graph is launched, again at each launch, reading memory then") {
    fresh();
    const int n = 256;
    int *a = device_alloc<int>(n), *b = device_alloc<int>(n);
    int* pinned = nullptr;
    REQUIRE(cudaMallocHost(&pinned, n * sizeof(int)) == cudaSuccess);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaMemset(a, 0, n * sizeof(int)) == cudaSuccess);
    REQUIRE(cudaMemset(b, 0, n * sizeof(int)) == cudaSuccess);
    std::fill(pinned, pinned + n, 4);
    cudaGraph_t g;
    cudaGraphExec_t e;
    cudaStreamCaptureStatus st;
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    REQUIRE(cudaStreamIsCapturing(s, &st) == cudaSuccess);
    CHECK(st == cudaStreamCaptureStatusActive);
    REQUIRE(cudaMemcpyAsync(a, pinned, n * sizeof(int), cudaMemcpyHostToDevice, s) == cudaSuccess);
    launch_twice(a, b, n, s);
    REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
    REQUIRE(cudaStreamIsCapturing(s, &st) == cudaSuccess);
    CHECK(st == cudaStreamCaptureStatusNone);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(b[0] == 0);  // recorded, not run
    REQUIRE(cudaGraphInstantiate(&e, g) == cudaSuccess);
    REQUIRE(cudaGraphDestroy(g) == cudaSuccess);
    REQUIRE(cudaGraphLaunch(e, s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(to_host(b, n) == std::vector<int>(n, 8));
    std::fill(pinned, pinned + n, 5);  // a copy node reads its source when it runs
    REQUIRE(cudaGraphLaunch(e, s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(to_host(b, n) == std::vector<int>(n, 10));
    CHECK(cudaemu::stats().graph_launches == 2);
    REQUIRE(cudaGraphExecDestroy(e) == cudaSuccess);
    REQUIRE(cudaFreeHost(pinned) == cudaSuccess);
}

TEST_CASE("graphs: a host wait, an allocation or a pageable copy inside a capture is a fault naming the call") {
    fresh();
    const int n = 64;
    int* a = device_alloc<int>(n);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    launch_fill(a, n, 1, s);
    Stderr err;
    std::vector<int> h(n);
    SECTION("a synchronous copy back") {
        CHECK(cudaMemcpy(h.data(), a, n * sizeof(int), cudaMemcpyDeviceToHost) == cudaErrorStreamCaptureUnsupported);
        CHECK_THAT(err.text(), Contains("cudaMemcpy at selftest.cpp:"));
        CHECK_THAT(err.text(), Contains("the host would wait for the device"));
    }
    SECTION("an asynchronous copy from pageable memory on the capturing stream") {
        CHECK(cudaMemcpyAsync(a, h.data(), n * sizeof(int), cudaMemcpyHostToDevice, s) ==
              cudaErrorStreamCaptureUnsupported);
        CHECK_THAT(err.text(), Contains("a copy from or to pageable host memory"));
    }
    SECTION("synchronising the capturing stream") {
        CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported);
        CHECK_THAT(err.text(), Contains("cudaStreamSynchronize"));
    }
    SECTION("cudaMalloc") {
        void* p = nullptr;
        CHECK(cudaMalloc(&p, 16) == cudaErrorStreamCaptureUnsupported);
        CHECK_THAT(err.text(), Contains("an allocation"));
    }
    SECTION("another thread's allocation is allowed in thread-local mode (y5's loader pins its batches)") {
        void* p = nullptr;
        cudaError_t e = cudaErrorUnknown;
        std::thread([&] { e = cudaMallocHost(&p, 64); }).join();
        CHECK(e == cudaSuccess);
        CHECK(err.text().empty());
        cudaGraph_t g;
        REQUIRE(cudaStreamEndCapture(s, &g) == cudaSuccess);
        REQUIRE(cudaGraphDestroy(g) == cudaSuccess);
        REQUIRE(cudaFreeHost(p) == cudaSuccess);
    }
    CHECK(a[0] == -1);  // the fill was recorded, never run: new memory's poison
}

TEST_CASE("copies: cudaMemcpyAsync from pageable memory is staged at the call") {
    fresh();
    const int n = 300;
    std::vector<int> h(n);
    std::iota(h.begin(), h.end(), 1);
    const std::vector<int> want = h;
    int* d = device_alloc<int>(n);
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaMemcpyAsync(d, h.data(), n * sizeof(int), cudaMemcpyHostToDevice, s) == cudaSuccess);
    std::fill(h.begin(), h.end(), -7);  // the caller may reuse its buffer at once
    CHECK(d[0] == -1);                  // queued: d still holds new memory's poison
    REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(to_host(d, n) == want);
}

TEST_CASE("copies: cudaMemcpy2D with pitches") {
    fresh();
    const int rows = 4, width = 6, spitch = 10, dpitch = 8, hpitch = 12;  // in floats
    std::vector<float> src(rows * spitch);
    for (int i = 0; i < rows * spitch; ++i) src[i] = (float)i;
    float* d = device_alloc<float>(rows * dpitch);
    REQUIRE(cudaMemcpy2D(d, dpitch * 4, src.data(), spitch * 4, width * 4, rows, cudaMemcpyHostToDevice) == cudaSuccess);
    const std::vector<float> dev = to_host(d, rows * dpitch);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < dpitch; ++c) {
            if (c < width) CHECK(dev[r * dpitch + c] == src[r * spitch + c]);
            else CHECK(bits(dev[r * dpitch + c]) == 0xFFFFFFFFu);  // the padding was not written
        }
    std::vector<float> back(rows * hpitch, -1.0f);
    REQUIRE(cudaMemcpy2D(back.data(), hpitch * 4, d, dpitch * 4, width * 4, rows, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < hpitch; ++c) CHECK(back[r * hpitch + c] == (c < width ? src[r * spitch + c] : -1.0f));
}

TEST_CASE("memory: cudaMemGetInfo and an out-of-memory cudaMalloc (CUDAEMU_MEMORY_MB)") {
    fresh("forward", "64");
    const size_t MiB = size_t(1) << 20;
    size_t free_b = 0, total_b = 0;
    REQUIRE(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess);
    CHECK(total_b == 64 * MiB);
    CHECK(free_b == 64 * MiB);
    void *a = nullptr, *b = (void*)&free_b;
    REQUIRE(cudaMalloc(&a, 40 * MiB) == cudaSuccess);
    REQUIRE(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess);
    CHECK(free_b == 24 * MiB);
    CHECK(cudaMalloc(&b, 24 * MiB + 1) == cudaErrorMemoryAllocation);
    CHECK(b == nullptr);
    CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
    CHECK(cudaGetLastError() == cudaSuccess);  // not sticky
    REQUIRE(cudaMalloc(&b, 24 * MiB) == cudaSuccess);  // exactly what is left
    REQUIRE(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess);
    CHECK(free_b == 0);
    REQUIRE(cudaFree(a) == cudaSuccess);
    REQUIRE(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess);
    CHECK(free_b == 40 * MiB);
}
