/*
 * The CUDA runtime behind engine/device/device.h: device discovery, the context (stream, cuBLAS, cuDNN),
 * raw allocations for the arenas, and copies. Built only with Y5_CUDA.
 */
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/device/device.h"
#include "kernels/cuda.h"

namespace y5 {

bool cuda_available(std::string* why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        return false;
    }
    if (n == 0) {
        if (why) *why = "no CUDA device present";
        return false;
    }
    return true;
}

CudaContext* cuda_context_create(int device) {
    std::string why;
    Y5_CHECK(cuda_available(&why), "no usable CUDA device: %s", why.c_str());
    auto* ctx = new CudaContext;
    ctx->device = device;
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&ctx->cublas));
    CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
    // cuBLAS's workspace given once (32 MiB, NVIDIA's recommendation for Hopper), so its GEMMs never allocate
    // their own during a step.
    CUDA_CHECK(cudaMalloc(&ctx->cublas_workspace, kCublasWorkspace));
    CUBLAS_CHECK(cublasSetWorkspace(ctx->cublas, ctx->cublas_workspace, kCublasWorkspace));
    CUDNN_CHECK(cudnnCreate(&ctx->cudnn));
    CUDNN_CHECK(cudnnSetStream(ctx->cudnn, ctx->stream));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking));
    for (CudaContext::StageSlot& s : ctx->stage) CUDA_CHECK(cudaEventCreateWithFlags(&s.left, cudaEventDisableTiming));
    return ctx;
}

// Teardown runs in destructors, also while an exception unwinds the stack (after a kernel fault the runtime
// returns that sticky error from every call): throwing there would std::terminate and lose the first error's
// message, so failures here are only reported.
static void teardown_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) std::fprintf(stderr, "y5: %s during CUDA teardown: %s\n", what, cudaGetErrorString(e));
}

void cuda_context_destroy(CudaContext* ctx) {
    if (!ctx) return;
    teardown_check(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize");
    cudnnDestroy(ctx->cudnn);
    cublasDestroy(ctx->cublas);
    if (ctx->cublas_workspace) teardown_check(cudaFree(ctx->cublas_workspace), "cudaFree (cuBLAS workspace)");
    teardown_check(cudaStreamSynchronize(ctx->copy_stream), "cudaStreamSynchronize (copy stream)");
    for (CudaContext::StageSlot& s : ctx->stage) {
        if (s.host) teardown_check(cudaFreeHost(s.host), "cudaFreeHost (staging)");
        teardown_check(cudaEventDestroy(s.left), "cudaEventDestroy");
    }
    teardown_check(cudaStreamDestroy(ctx->copy_stream), "cudaStreamDestroy (copy stream)");
    teardown_check(cudaStreamDestroy(ctx->stream), "cudaStreamDestroy");
    delete ctx;
}

void* host_alloc_pinned(size_t bytes) {
    static const bool usable = cuda_available();
    if (!usable) return nullptr;
    void* p = nullptr;
    if (cudaMallocHost(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    return p;
}

void host_free_pinned(void* p) {
    if (p) teardown_check(cudaFreeHost(p), "cudaFreeHost");  // from destructors (the loader's batches)
}

// A null context means the legacy default stream (set-up code that runs before any context exists).
static cudaStream_t stream_of(CudaContext* ctx) { return ctx ? ctx->stream : cudaStream_t(0); }
cudaStream_t cuda_stream(CudaContext* ctx) { return stream_of(ctx); }

void* device_alloc(size_t bytes, const char* what) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        Y5_FAIL("out of GPU memory allocating %.1f MiB for '%s' (%.1f of %.1f MiB free): lower --batch-size or --imgsz",
                bytes / 1048576.0, what, free_b / 1048576.0, total_b / 1048576.0);
    }
    CUDA_CHECK(e);
    return p;
}

void device_free(void* p) { teardown_check(cudaFree(p), "cudaFree"); }  // from ~Arena: must not throw

void copy_host_to_device(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(ctx)));
    CUDA_CHECK(cudaStreamSynchronize(stream_of(ctx)));
}

void copy_device_to_host(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(ctx)));
    CUDA_CHECK(cudaStreamSynchronize(stream_of(ctx)));
}

void copy_device_to_device(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(ctx)));
}

void device_memset(void* p, int byte, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, stream_of(ctx)));
}

void device_synchronize(CudaContext* ctx) { CUDA_CHECK(cudaStreamSynchronize(stream_of(ctx))); }

struct DeviceEvent {
    cudaEvent_t e = nullptr;
    bool recorded = false;
};

DeviceEvent* event_create() {
    auto* d = new DeviceEvent;
    CUDA_CHECK(cudaEventCreateWithFlags(&d->e, cudaEventDisableTiming));
    return d;
}

void event_destroy(DeviceEvent* d) {
    if (!d) return;
    teardown_check(cudaEventDestroy(d->e), "cudaEventDestroy");  // from destructors
    delete d;
}

void event_record(DeviceEvent* d, CudaContext* ctx, bool copy_stream) {
    CUDA_CHECK(cudaEventRecord(d->e, copy_stream ? ctx->copy_stream : ctx->stream));
    d->recorded = true;
}

void event_wait(DeviceEvent* d) {
    if (d && d->recorded) CUDA_CHECK(cudaEventSynchronize(d->e));
}

void stream_wait(CudaContext* ctx, DeviceEvent* d, bool copy_stream) {
    if (d->recorded) CUDA_CHECK(cudaStreamWaitEvent(copy_stream ? ctx->copy_stream : ctx->stream, d->e, 0));
}

void copy_host_to_device_staged(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    if (bytes == 0) return;
    CudaContext::StageSlot& s = ctx->stage[ctx->stage_next];
    ctx->stage_next = (ctx->stage_next + 1) % CudaContext::kStageSlots;
    CUDA_CHECK(cudaEventSynchronize(s.left));  // the copy that last read this slot (passes at once if none)
    if (s.cap < bytes) {
        if (s.host) CUDA_CHECK(cudaFreeHost(s.host));
        s.cap = std::max(bytes, (size_t)1 << 20);
        CUDA_CHECK(cudaMallocHost(&s.host, s.cap));
    }
    std::memcpy(s.host, src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, ctx->stream));
    CUDA_CHECK(cudaEventRecord(s.left, ctx->stream));
}

struct DeviceGraph {
    cudaGraphExec_t exec = nullptr;
};

void capture_begin(CudaContext* ctx) {
    CUDA_CHECK(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal));
}

DeviceGraph* capture_end(CudaContext* ctx) {
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(ctx->stream, &g));
    auto* d = new DeviceGraph;
    const cudaError_t e = cudaGraphInstantiate(&d->exec, g, 0);
    teardown_check(cudaGraphDestroy(g), "cudaGraphDestroy");
    if (e != cudaSuccess) delete d;
    CUDA_CHECK(e);
    return d;
}

void capture_abandon(CudaContext* ctx) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(ctx->stream, &st) != cudaSuccess || st == cudaStreamCaptureStatusNone) return;
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(ctx->stream, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    cudaGetLastError();  // the capture's own error is what the caller reports
}

void graph_launch(DeviceGraph* g, CudaContext* ctx) { CUDA_CHECK(cudaGraphLaunch(g->exec, ctx->stream)); }

void graph_destroy(DeviceGraph* g) {
    if (!g) return;
    teardown_check(cudaGraphExecDestroy(g->exec), "cudaGraphExecDestroy");  // from destructors
    delete g;
}

void copy_host_to_device_async(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->copy_stream));
}

void copy_device_to_host_async(void* dst, const void* src, size_t bytes, CudaContext* ctx) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
}

}  // namespace y5

namespace y5 {

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

bool device_memory_info(size_t* free_bytes, size_t* total_bytes) {
    *free_bytes = *total_bytes = 0;
    if (!cuda_available()) return false;
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return true;
}

}  // namespace y5
