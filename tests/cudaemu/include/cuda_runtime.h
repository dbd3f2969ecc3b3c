/*
 * cudaemu: the CUDA runtime subset y5 uses, executed on the CPU (a test tool; see tests/cudaemu/README.md).
 * Included instead of the toolkit's <cuda_runtime.h> in the -DY5_CUDA_EMU=ON build. Host API: devices,
 * memory (device, pinned, copies, memsets), streams and events with CUDA's ordering (work is queued and
 * runs at synchronising calls), errors (sticky after a fault). Device side: the built-in variables,
 * __syncthreads, __syncwarp and the *_sync warp intrinsics as real rendezvous of fibers, atomics, vector
 * types and the math y5's kernels call. Kernel launches and __shared__ declarations reach this header
 * rewritten by tests/cudaemu/rewrite.cpp (`k<<<g, b, smem, s>>>(args)` → cudaemu::launch(...)).
 * Every host call takes the caller's file and line as defaulted arguments, so a fault names the call site.
 */
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define CUDAEMU 1
#define CUDART_VERSION 12000
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// __shared__ is left undefined on purpose: rewrite.cpp turns every declaration into a per-block buffer, so a
// declaration that escaped the rewrite fails to compile instead of becoming one variable for all blocks.

#define CUDAEMU_SITE const char *cudaemu_file = __builtin_FILE(), int cudaemu_line = __builtin_LINE()

// ---------------------------------------------------------------------------------------------------- types
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct CUgraph_st* cudaGraph_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorAssert = 710,
    cudaErrorIllegalInstruction = 715,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

#define cudaStreamDefault 0x00u
#define cudaStreamNonBlocking 0x01u
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaEventDefault 0x00u
#define cudaEventBlockingSync 0x01u
#define cudaEventDisableTiming 0x02u
#define cudaHostAllocDefault 0x00u

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define CUDAEMU_VEC(T, N2, N3, N4)                                                                            \
    struct alignas(2 * sizeof(T)) N2 { T x, y; };                                                           \
    struct N3 { T x, y, z; };                                                                                \
    struct alignas(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)) N4 { T x, y, z, w; };                          \
    inline N2 make_##N2(T x, T y) { return N2{x, y}; }                                                       \
    inline N3 make_##N3(T x, T y, T z) { return N3{x, y, z}; }                                              \
    inline N4 make_##N4(T x, T y, T z, T w) { return N4{x, y, z, w}; }
CUDAEMU_VEC(float, float2, float3, float4)
CUDAEMU_VEC(double, double2, double3, double4)
CUDAEMU_VEC(int, int2, int3, int4)
CUDAEMU_VEC(unsigned int, uint2, uint3_, uint4)
CUDAEMU_VEC(unsigned char, uchar2, uchar3, uchar4)
CUDAEMU_VEC(long long, longlong2, longlong3, longlong4)
#undef CUDAEMU_VEC
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    size_t memPitch;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    size_t totalConstMem;
    int major;
    int minor;
    int multiProcessorCount;
    int l2CacheSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerBlockOptin;
    int memoryBusWidth;
    int clockRate;
    int memoryClockRate;
};

// ---------------------------------------------------------------------------------------------------- host API
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceSynchronize(CUDAEMU_SITE);
cudaError_t cudaDeviceReset();
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);

cudaError_t cudaMalloc(void** p, size_t bytes, CUDAEMU_SITE);
template <class T> cudaError_t cudaMalloc(T** p, size_t bytes, CUDAEMU_SITE) {
    return cudaMalloc(reinterpret_cast<void**>(p), bytes, cudaemu_file, cudaemu_line);
}
cudaError_t cudaFree(void* p, CUDAEMU_SITE);
cudaError_t cudaMallocHost(void** p, size_t bytes, CUDAEMU_SITE);
template <class T> cudaError_t cudaMallocHost(T** p, size_t bytes, CUDAEMU_SITE) {
    return cudaMallocHost(reinterpret_cast<void**>(p), bytes, cudaemu_file, cudaemu_line);
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned flags, CUDAEMU_SITE);
cudaError_t cudaFreeHost(void* p, CUDAEMU_SITE);

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, CUDAEMU_SITE);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = 0,
                            CUDAEMU_SITE);
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind kind, CUDAEMU_SITE);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s = 0, CUDAEMU_SITE);
cudaError_t cudaMemset(void* p, int value, size_t bytes, CUDAEMU_SITE);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = 0, CUDAEMU_SITE);

cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s, CUDAEMU_SITE);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e, CUDAEMU_SITE);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// Stream capture and CUDA graphs: the work queued on a capturing stream is recorded, not run; a launched graph
// queues the recorded work again (kernel arguments as they were at capture, memory read when it runs).
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode, CUDAEMU_SITE);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

// ---------------------------------------------------------------------------------------------------- device side
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace cudaemu {

// The warp intrinsics' common path: the calling lane arrives with its mask and value, waits for every lane the
// mask names, and gets back its result (raw bits; at most 8 bytes).
enum class WarpKind : int { Sync, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All };
uint64_t warp_op(WarpKind kind, unsigned mask, uint64_t bits, int arg, int width, const char* name, const char* file,
                 int line);
void syncthreads(const char* file, int line);
void* static_shared(const void* key, size_t bytes);
void* dynamic_shared();

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp intrinsics move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// A static __shared__ declaration, rewritten: one buffer per block and declaration, poisoned like device memory.
struct SharedKey {};
template <class T> inline T& shared_static(const SharedKey* key) {
    return *static_cast<T*>(static_shared(key, sizeof(T)));
}
template <class T> inline T* shared_dynamic() { return static_cast<T*>(dynamic_shared()); }

}  // namespace cudaemu

inline void __syncthreads(CUDAEMU_SITE) { cudaemu::syncthreads(cudaemu_file, cudaemu_line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDAEMU_SITE) {
    cudaemu::warp_op(cudaemu::WarpKind::Sync, mask, 0, 0, 32, "__syncwarp", cudaemu_file, cudaemu_line);
}
#define CUDAEMU_SHFL(NAME, KIND)                                                                                  \
    template <class T> inline T NAME(unsigned mask, T v, int arg, int width = 32, CUDAEMU_SITE) {                 \
        return cudaemu::from_bits<T>(                                                                             \
            cudaemu::warp_op(KIND, mask, cudaemu::to_bits(v), arg, width, #NAME, cudaemu_file, cudaemu_line));    \
    }
CUDAEMU_SHFL(__shfl_sync, cudaemu::WarpKind::ShflIdx)
CUDAEMU_SHFL(__shfl_up_sync, cudaemu::WarpKind::ShflUp)
CUDAEMU_SHFL(__shfl_down_sync, cudaemu::WarpKind::ShflDown)
CUDAEMU_SHFL(__shfl_xor_sync, cudaemu::WarpKind::ShflXor)
#undef CUDAEMU_SHFL
inline unsigned __ballot_sync(unsigned mask, int pred, CUDAEMU_SITE) {
    return (unsigned)cudaemu::warp_op(cudaemu::WarpKind::Ballot, mask, pred != 0, 0, 32, "__ballot_sync", cudaemu_file,
                                      cudaemu_line);
}
inline int __any_sync(unsigned mask, int pred, CUDAEMU_SITE) {
    return (int)cudaemu::warp_op(cudaemu::WarpKind::Any, mask, pred != 0, 0, 32, "__any_sync", cudaemu_file,
                                 cudaemu_line);
}
inline int __all_sync(unsigned mask, int pred, CUDAEMU_SITE) {
    return (int)cudaemu::warp_op(cudaemu::WarpKind::All, mask, pred != 0, 0, 32, "__all_sync", cudaemu_file,
                                 cudaemu_line);
}
inline unsigned __activemask() { return 0xffffffffu; }

// Atomics: real atomic read-modify-writes (blocks may run on several OS threads).
template <class T> using cudaemu_same_t = typename std::enable_if<true, T>::type;  // not deduced: atomicAdd(u, 1)
template <class T> inline T cudaemu_atomic_update(T* p, T (*f)(T, T), T v) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4- or 8-byte words");
    using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    U* w = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(w, __ATOMIC_RELAXED);
    for (;;) {
        T o;
        std::memcpy(&o, &old, sizeof(T));
        T n = f(o, v);
        U nb;
        std::memcpy(&nb, &n, sizeof(T));
        if (__atomic_compare_exchange_n(w, &old, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return o;
    }
}
#define CUDAEMU_ATOMIC(NAME, EXPR)                                                                                   \
    template <class T> inline T NAME(T* p, cudaemu_same_t<T> v) {                                                 \
        return cudaemu_atomic_update<T>(p, [](T a, T b) -> T { return EXPR; }, v);                                 \
    }
CUDAEMU_ATOMIC(atomicAdd, a + b)
CUDAEMU_ATOMIC(atomicSub, a - b)
CUDAEMU_ATOMIC(atomicExch, ((void)a, b))
CUDAEMU_ATOMIC(atomicMin, b < a ? b : a)
CUDAEMU_ATOMIC(atomicMax, b > a ? b : a)
CUDAEMU_ATOMIC(atomicAnd, a & b)
CUDAEMU_ATOMIC(atomicOr, a | b)
CUDAEMU_ATOMIC(atomicXor, a ^ b)
#undef CUDAEMU_ATOMIC
template <class T> inline T atomicCAS(T* p, cudaemu_same_t<T> compare, cudaemu_same_t<T> v) {
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// Device math the kernels call, with the host's floating point (no FMA contraction, host libm).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline unsigned __float_as_uint(float x) { return cudaemu::from_bits<unsigned>(cudaemu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return cudaemu::from_bits<float>(cudaemu::to_bits(x)); }
inline int __float_as_int(float x) { return cudaemu::from_bits<int>(cudaemu::to_bits(x)); }
inline float __int_as_float(int x) { return cudaemu::from_bits<float>(cudaemu::to_bits(x)); }
inline long long __double_as_longlong(double x) { return cudaemu::from_bits<long long>(cudaemu::to_bits(x)); }
inline double __longlong_as_double(long long x) { return cudaemu::from_bits<double>(cudaemu::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T> inline T __ldg(const T* p) { return *p; }

// ---------------------------------------------------------------------------------------------------- launches
namespace cudaemu {

// Where a launch was written, and its configuration (what `<<<...>>>` held).
struct Site {
    const char* kernel;
    const char* file;
    int line;
};
struct Config {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    Config(dim3 g, dim3 b, size_t sm = 0, cudaStream_t s = 0) : grid(g), block(b), smem(sm), stream(s) {}
};
// A kernel argument that is a pointer: checked at launch to point into device memory (or null), and used
// to order work across streams (a pointer to non-const may be written).
struct PtrArg {
    const void* p;
    bool writable;
    int index;
};
void launch_erased(const Site& site, const Config& cfg, std::function<void()> body, std::vector<PtrArg> ptrs);

template <class A> inline void collect_ptr(std::vector<PtrArg>& v, int i, const A& a) {
    if constexpr (std::is_pointer<A>::value)
        v.push_back(PtrArg{static_cast<const void*>(a), !std::is_const<std::remove_pointer_t<A>>::value, i});
}

// k<<<cfg>>>(args...): the arguments are converted to the kernel's parameter types and copied at launch, as
// CUDA does; every thread of every block then runs k on its own copy.
template <class... P, class... A> inline void launch(const Site& site, const Config& cfg, void (*k)(P...), A&&... a) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<P>...> args(static_cast<std::decay_t<P>>(std::forward<A>(a))...);
    std::vector<PtrArg> ptrs;
    int i = 0;
    std::apply([&](const auto&... x) { (collect_ptr(ptrs, i++, x), ...); }, args);
    launch_erased(site, cfg, [k, args]() mutable {
        auto copy = args;
        std::apply(k, copy);
    }, std::move(ptrs));
}

}  // namespace cudaemu
