/*
 * cudaemu's cuBLAS stand-in: the part of cuBLAS's v2 API that y5 calls (engine/device/cuda.cu, kernels/conv2d.cu),
 * with cuBLAS's own enum values. Implemented in tests/cudaemu/cublas.cpp on top of the emulated runtime:
 * arguments are checked as cuBLAS checks them, every batch's matrices against the allocation table, and the
 * products run with OpenBLAS, queued on the handle's stream. Pointer mode host only; the math mode is
 * recorded, results are plain f32 (f16 operands of cublasGemmStridedBatchedEx converted to float, f16 outputs
 * rounded once).
 * Calls that can fail take the caller's file and line as defaulted arguments (as in cuda_runtime.h).
 */
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

typedef struct cublasContext* cublasHandle_t;

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};

enum cublasOperation_t {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2,
    CUBLAS_OP_HERMITAN = 2,
    CUBLAS_OP_CONJG = 3,
};

// The low bits are a mode, CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION a flag that may be or-ed in.
enum cublasMath_t {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16,
};

// library_types.h's data types (the real header comes with cuBLAS), cuBLAS's compute types and GEMM algorithms.
enum cudaDataType_t {
    CUDA_R_16F = 2,
    CUDA_C_16F = 6,
    CUDA_R_16BF = 14,
    CUDA_C_16BF = 15,
    CUDA_R_32F = 0,
    CUDA_C_32F = 4,
    CUDA_R_64F = 1,
    CUDA_C_64F = 5,
    CUDA_R_8I = 3,
    CUDA_C_8I = 7,
    CUDA_R_8U = 8,
    CUDA_C_8U = 9,
    CUDA_R_32I = 10,
    CUDA_C_32I = 11,
};
typedef enum cudaDataType_t cudaDataType;

enum cublasComputeType_t {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_64F_PEDANTIC = 71,
    CUBLAS_COMPUTE_32I = 72,
    CUBLAS_COMPUTE_32I_PEDANTIC = 73,
};

enum cublasGemmAlgo_t {
    CUBLAS_GEMM_DEFAULT = -1,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
};

cublasStatus_t cublasCreate(cublasHandle_t* handle, CUDAEMU_SITE);
cublasStatus_t cublasDestroy(cublasHandle_t handle, CUDAEMU_SITE);
// As in cuBLAS, setting the stream also drops a workspace given with cublasSetWorkspace.
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream, CUDAEMU_SITE);
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t workspaceSizeInBytes, CUDAEMU_SITE);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode, CUDAEMU_SITE);
const char* cublasGetStatusName(cublasStatus_t status);  // "CUBLAS_STATUS_INVALID_VALUE", ...

// Column-major, per batch i: C_i (m,n) = alpha·op(A_i)·op(B_i) + beta·C_i with A_i = A + i·strideA (op(A) is
// (m,k)), likewise B_i (op(B) (k,n)) and C_i; alpha and beta read from host memory at the call.
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long int strideA, const float* B, int ldb, long long int strideB,
                                         const float* beta, float* C, int ldc, long long int strideC, int batchCount,
                                         CUDAEMU_SITE);
// The same with typed operands: A and B of Atype = Btype, C of Ctype, computed as computeType says; alpha and beta
// of the compute type's scale type (float for CUBLAS_COMPUTE_32F*). The stand-in runs CUBLAS_COMPUTE_32F (and its
// _PEDANTIC) with A, B, C all CUDA_R_32F, or A and B CUDA_R_16F with C CUDA_R_16F or CUDA_R_32F, algorithm
// CUBLAS_GEMM_DEFAULT or CUBLAS_GEMM_DEFAULT_TENSOR_OP; any other combination is CUBLAS_STATUS_NOT_SUPPORTED.
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo, CUDAEMU_SITE);
