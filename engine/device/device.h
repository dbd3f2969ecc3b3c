/*
 * The backend-neutral face of the CUDA runtime, so that C++ files compiled without nvcc (arena, tape,
 * ops, the tools) can ask for device memory and copies. engine/device/cuda.cu implements it when y5 is built
 * with CUDA; engine/device/cuda_none.cpp implements it otherwise (no device; every request is a clear error).
 */
#pragma once
#include <cstddef>
#include <string>

typedef struct CUstream_st* cudaStream_t;  // the CUDA runtime's own typedef, so no CUDA header is needed here

namespace y5 {

struct CudaContext;  // stream, cuBLAS and cuDNN handles: kernels/cuda.h

// The context's stream, which the ops pass to the CUDA launchers (null ctx: the default stream).
cudaStream_t cuda_stream(CudaContext* ctx);

// True when a CUDA device can be used. Any error from the runtime (no driver, "driver version is
// insufficient", no device) means false; *why then says what happened.
bool cuda_available(std::string* why = nullptr);

// --device as YOLOv5's scripts spell it: "cpu" → −1; "0", "cuda", "cuda:0", "1" → that CUDA device index,
// checked to exist. "" picks device 0 when a CUDA device is usable, else the CPU. Several devices ("0,1")
// or an unusable one is a y5::Error saying why.
int parse_device(const std::string& spec);

int cuda_device_count();  // 0 when no CUDA device is usable

// Free and total bytes of the current CUDA device; false (and zeros) where there is none.
bool device_memory_info(size_t* free_bytes, size_t* total_bytes);

// One context per process: selects the device, creates a stream and the cuBLAS/cuDNN handles on it.
CudaContext* cuda_context_create(int device);
void cuda_context_destroy(CudaContext* ctx);

// Page-locked host memory for fast, asynchronous uploads (the loader's batches). Returns nullptr when no
// CUDA device is usable, and the caller falls back to ordinary memory.
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* p);

void* device_alloc(size_t bytes, const char* what);  // cudaMalloc; out of memory is a y5::Error naming `what`
void device_free(void* p);
// A null ctx means the default stream. Ordered on ctx's stream (after the work already queued there) and synchronous: on return the bytes
// have arrived.
void copy_host_to_device(void* dst, const void* src, size_t bytes, CudaContext* ctx);
void copy_device_to_host(void* dst, const void* src, size_t bytes, CudaContext* ctx);
void copy_device_to_device(void* dst, const void* src, size_t bytes, CudaContext* ctx);  // async on ctx's stream
void device_memset(void* p, int byte, size_t bytes, CudaContext* ctx);  // each byte = `byte`, async on ctx's stream
void device_synchronize(CudaContext* ctx);

// ---- Work the host does not wait for (the training step: engine/app/step.h)
// An event marks the work queued on a stream so far; event_wait makes the host wait for it (at once if passed),
// stream_wait makes ctx's stream wait for it (the host goes on). Created once, recorded again and again.
struct DeviceEvent;
DeviceEvent* event_create();
void event_destroy(DeviceEvent* e);
void event_record(DeviceEvent* e, CudaContext* ctx, bool copy_stream = false);  // on ctx's stream or its copy stream
void event_wait(DeviceEvent* e);
void stream_wait(CudaContext* ctx, DeviceEvent* e, bool copy_stream = false);
// Host bytes (any memory, free to go on return) to the device in ctx's stream order, without a host wait: copied
// first into one of ctx's eight page-locked staging slots (a slot grows when a copy is larger; reusing one waits
// for the copy that last read it, eight copies ago). For small uploads: the loss's target lists, the tape's seed.
void copy_host_to_device_staged(void* dst, const void* src, size_t bytes, CudaContext* ctx);
// Page-locked host memory (host_alloc_pinned) → device on ctx's copy stream, or device → page-locked host on ctx's
// stream; no host wait: the bytes have arrived once an event recorded after it on that stream has passed.
void copy_host_to_device_async(void* dst, const void* src, size_t bytes, CudaContext* ctx);
void copy_device_to_host_async(void* dst, const void* src, size_t bytes, CudaContext* ctx);

// ---- CUDA graphs (the training step's --cuda-graph): what ctx's stream is given between capture_begin and
// capture_end is recorded, not run (nothing in between may make the host wait, allocate, or copy from pageable
// memory), into a graph that graph_launch queues on ctx's stream again and again, with the kernels' arguments as
// they were at the capture. capture_abandon ends a capture that failed part-way (no-op when none is active).
struct DeviceGraph;
void capture_begin(CudaContext* ctx);
DeviceGraph* capture_end(CudaContext* ctx);
void capture_abandon(CudaContext* ctx);
void graph_launch(DeviceGraph* g, CudaContext* ctx);
void graph_destroy(DeviceGraph* g);
}  // namespace y5
