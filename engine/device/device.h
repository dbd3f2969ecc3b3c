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
void device_memset_zero(void* p, size_t bytes, CudaContext* ctx);    // async on ctx's stream
void device_synchronize(CudaContext* ctx);

}  // namespace y5
