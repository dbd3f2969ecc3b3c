/*
 * CUDA-side helpers, included only by .cu files and CUDA-built code: the context struct and one error
 * macro per library, each naming the call, file, line and the library's own error string, and throwing
 * y5::Error (main prints it as one line). Y5_SYNC_DEBUG=1 in the environment makes Y5_LAUNCH_CHECK
 * synchronize after every launch, so an asynchronous fault surfaces at the kernel that caused it.
 */
#pragma once
#include <cublas_v2.h>
#include <cstdlib>
#include <string>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/check.h"

namespace y5 {

struct CudaContext {
    int device = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    cudnnHandle_t cudnn = nullptr;
    void* cublas_workspace = nullptr;  // kCublasWorkspace bytes, set on the handle
    cudaStream_t copy_stream = nullptr;  // uploads beside `stream` (the training batch's: engine/app/step.cpp)
    // copy_host_to_device_staged's page-locked ring: a slot is reused once the copy that last read it has left.
    // A pipelined training step stages three copies (the loss's targets twice, the tape's seed) and two steps may
    // be queued: eight slots are reused only after collect() has waited for their step.
    static constexpr int kStageSlots = 8;
    struct StageSlot {
        void* host = nullptr;
        size_t cap = 0;
        cudaEvent_t left = nullptr;
    };
    StageSlot stage[kStageSlots];
    int stage_next = 0;
};
constexpr size_t kCublasWorkspace = size_t(32) << 20;

// True when Y5_SYNC_DEBUG is set and not "0" (read once).
inline bool sync_debug() {
    static const bool on = [] {
        const char* v = std::getenv("Y5_SYNC_DEBUG");
        return v && *v && std::string(v) != "0";
    }();
    return on;
}

}  // namespace y5

#define CUDA_CHECK(call)                                                                          \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) Y5_FAIL("%s failed: %s (%s)", #call, cudaGetErrorString(e_), cudaGetErrorName(e_)); \
    } while (0)
#define CUBLAS_CHECK(call)                                                                        \
    do {                                                                                          \
        cublasStatus_t s_ = (call);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) Y5_FAIL("%s failed: %s", #call, cublasGetStatusName(s_)); \
    } while (0)
#define CUDNN_CHECK(call)                                                                         \
    do {                                                                                          \
        cudnnStatus_t s_ = (call);                                                                \
        if (s_ != CUDNN_STATUS_SUCCESS) Y5_FAIL("%s failed: %s", #call, cudnnGetErrorString(s_)); \
    } while (0)
// After every kernel launch: the launch error now, and the execution error too under Y5_SYNC_DEBUG.
#define Y5_LAUNCH_CHECK()                                                 \
    do {                                                                  \
        CUDA_CHECK(cudaGetLastError());                                   \
        if (::y5::sync_debug()) CUDA_CHECK(cudaDeviceSynchronize());      \
    } while (0)
