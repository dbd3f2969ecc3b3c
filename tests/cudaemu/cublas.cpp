/*
 * cudaemu's cuBLAS stand-in (include/cublas_v2.h): handles, cublasSgemmStridedBatched and
 * cublasGemmStridedBatchedEx, for kernels/conv2d.cu's 1×1 convolutions over channel parts on the emulated device.
 *   - A handle records its stream (0: the legacy stream), its workspace and its math mode. Handles are never
 *     freed (a destroyed one is only marked), so a destroyed or unknown one is reported, as cuBLAS reports
 *     an uninitialised library, instead of read after free.
 *   - The GEMM checks its arguments as cuBLAS does (CUBLAS_STATUS_INVALID_VALUE for a negative size or a
 *     leading dimension under the rows of its matrix), then the footprint of every batch's A, B and C, and
 *     the handle's workspace, against the allocation table, and queues the products on the handle's stream:
 *     OpenBLAS cblas_sgemm, column-major, per batch. alpha and beta are read at the call (pointer mode
 *     host); with beta 0, C is not read (it may hold NaN poison). The math mode is recorded; results are
 *     plain f32 whatever it says.
 *   - cublasGemmStridedBatchedEx: the same checks with each operand's element size (2 bytes for CUDA_R_16F), for
 *     CUBLAS_COMPUTE_32F with f32 operands or f16 A and B and an f16 or f32 C (others: CUBLAS_STATUS_NOT_SUPPORTED).
 *     f16 A and B are converted to float; an f32 C is computed as by the Sgemm; an f16 C gets t = A·B in float,
 *     then C = f16(alpha·t + beta·C) with one rounding (cuBLAS's epilogue), C unread with beta 0.
 * Every failure prints one line "cudaemu: <call> at <file>:<line>: <reason> (<status>)". A pointer outside
 * the allocation table is a fault of cudaemu::check_device_range (sticky, as on a GPU) and the GEMM returns
 * CUBLAS_STATUS_EXECUTION_FAILED.
 */
#include <cublas_v2.h>
#include <cblas.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "kernels/common.h"

struct cublasContext {
    bool live = true;
    cudaStream_t stream = 0;
    void* workspace = nullptr;  // null: cuBLAS's own pool (nothing to check)
    size_t workspace_bytes = 0;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

std::mutex g_mu;  // guards the handle table and the handles' fields

// Every handle created, by address; never freed (calls may come from static destructors).
std::unordered_map<const cublasContext*, std::unique_ptr<cublasContext>>& handles() {
    static auto* m = new std::unordered_map<const cublasContext*, std::unique_ptr<cublasContext>>;
    return *m;
}

struct Call {
    const char* fn;
    const char* file;
    int line;
};


cublasStatus_t fail(const Call& c, cublasStatus_t s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
cublasStatus_t fail(const Call& c, cublasStatus_t s, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cudaemu: %s at %s:%d: %s (%s)\n", c.fn, c.file, c.line, msg, cublasGetStatusName(s));
    return s;
}

// The live handle behind h, or null after reporting what is wrong with it. Call with g_mu held.
cublasContext* live_handle(const Call& c, cublasHandle_t h) {
    if (!h) {
        fail(c, CUBLAS_STATUS_NOT_INITIALIZED, "the handle is null");
        return nullptr;
    }
    auto it = handles().find(h);
    if (it == handles().end()) {
        fail(c, CUBLAS_STATUS_NOT_INITIALIZED, "the handle %p was not created by cublasCreate", (void*)h);
        return nullptr;
    }
    if (!it->second->live) {
        fail(c, CUBLAS_STATUS_NOT_INITIALIZED, "the handle %p was destroyed", (void*)h);
        return nullptr;
    }
    return it->second.get();
}

// Bytes a column-major (rows, cols) matrix with leading dimension ld and elements of esize bytes spans: its last
// column ends (cols − 1)·ld + rows elements in.
size_t span_bytes(int rows, int cols, int ld, size_t esize) { return ((size_t)(cols - 1) * ld + rows) * esize; }

}  // namespace

const char* cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "unknown cuBLAS status";
}

cublasStatus_t cublasCreate(cublasHandle_t* handle, const char* file, int line) {
    const Call c{"cublasCreate", file, line};
    if (!handle) return fail(c, CUBLAS_STATUS_INVALID_VALUE, "handle is null");
    std::lock_guard<std::mutex> lk(g_mu);
    auto h = std::make_unique<cublasContext>();
    *handle = h.get();
    handles().emplace(h.get(), std::move(h));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle, const char* file, int line) {
    const Call c{"cublasDestroy", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cublasContext* h = live_handle(c, handle);
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->live = false;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream, const char* file, int line) {
    const Call c{"cublasSetStream", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cublasContext* h = live_handle(c, handle);
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = stream;
    h->workspace = nullptr;  // cuBLAS goes back to its own pool: a workspace must be set after the stream
    h->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t workspaceSizeInBytes,
                                  const char* file, int line) {
    const Call c{"cublasSetWorkspace", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cublasContext* h = live_handle(c, handle);
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (workspaceSizeInBytes > 0) {
        if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
            return fail(c, CUBLAS_STATUS_INVALID_VALUE, "workspace %p is not aligned to 256 bytes", workspace);
        if (!cudaemu::check_device_range(workspace, workspaceSizeInBytes, "cublasSetWorkspace: workspace", file, line))
            return CUBLAS_STATUS_INVALID_VALUE;
    }
    h->workspace = workspaceSizeInBytes > 0 ? workspace : nullptr;
    h->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode, const char* file, int line) {
    const Call c{"cublasSetMathMode", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cublasContext* h = live_handle(c, handle);
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base < CUBLAS_DEFAULT_MATH || base > CUBLAS_TF32_TENSOR_OP_MATH)
        return fail(c, CUBLAS_STATUS_INVALID_VALUE, "math mode %d is not a cublasMath_t", (int)mode);
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

namespace {

// The strided-batched GEMM behind both entry points. Operands are f32 or f16 (esize 4 or 2 bytes): f16 A and B are
// converted to float when the work runs, an f16 C gets the float result alpha·AB + beta·C rounded once.
enum class Ty { F32, F16 };
size_t esize(Ty t) { return t == Ty::F16 ? 2 : 4; }

// Column-major (rows, cols) with leading dimension ld as float: f32 in place, f16 converted into tmp.
const float* as_float(const void* p, Ty t, int rows, int cols, int ld, std::vector<float>& tmp) {
    if (t == Ty::F32) return static_cast<const float*>(p);
    const size_t n = (size_t)(cols - 1) * ld + rows;
    tmp.resize(n);
    const y5::f16* h = static_cast<const y5::f16*>(p);
    for (size_t i = 0; i < n; ++i) tmp[i] = y5::f16_to_f32(h[i]);
    return tmp.data();
}

cublasStatus_t gemm_strided(const Call& c, cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                            int m, int n, int k, const float* alpha, const void* A, Ty at, int lda, long long strideA,
                            const void* B, Ty bt, int ldb, long long strideB, const float* beta, void* C, Ty ct, int ldc,
                            long long strideC, int batchCount) {
    const char* file = c.file;
    const int line = c.line;
    cudaStream_t stream = 0;
    void* ws = nullptr;
    size_t ws_bytes = 0;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        cublasContext* h = live_handle(c, handle);
        if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
        stream = h->stream;
        ws = h->workspace;
        ws_bytes = h->workspace_bytes;
    }
    auto valid_op = [](cublasOperation_t t) { return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C; };
    if (!valid_op(transa) || !valid_op(transb))
        return fail(c, CUBLAS_STATUS_INVALID_VALUE, "transa %d, transb %d", (int)transa, (int)transb);
    if (m < 0 || n < 0 || k < 0 || batchCount < 0)
        return fail(c, CUBLAS_STATUS_INVALID_VALUE, "m %d, n %d, k %d, batchCount %d", m, n, k, batchCount);
    // Stored shapes: A (rows_a, cols_a) is op(A) (m,k) or its transpose, likewise B for op(B) (k,n); C (m,n).
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    const int rows_a = ta ? k : m, cols_a = ta ? m : k, rows_b = tb ? n : k, cols_b = tb ? k : n;
    if (lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m))
        return fail(c, CUBLAS_STATUS_INVALID_VALUE, "lda %d (rows %d), ldb %d (rows %d), ldc %d (rows %d)", lda, rows_a,
                    ldb, rows_b, ldc, m);
    if (!alpha || !beta) return fail(c, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is null");
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
    const float a = *alpha, b = *beta;
    const bool reads_ab = k > 0 && a != 0.0f;  // otherwise C = beta·C, as BLAS does
    if (!reads_ab && b == 1.0f) return CUBLAS_STATUS_SUCCESS;

    // Every batch's footprint (A and B only when read) in its element size, one fault line at most; the ranges for
    // the race check, once per distinct pointer (a stride of 0 reuses one matrix for every batch).
    const size_t bytes_a = reads_ab ? span_bytes(rows_a, cols_a, lda, esize(at)) : 0;
    const size_t bytes_b = reads_ab ? span_bytes(rows_b, cols_b, ldb, esize(bt)) : 0;
    const size_t bytes_c = span_bytes(m, n, ldc, esize(ct));
    std::vector<cudaemu::Range> ranges;
    for (int i = 0; i < batchCount; ++i) {
        struct {
            const char* name;
            const void* p;
            size_t bytes;
            long long stride;
            bool write;
        } ops[3] = {{"A", static_cast<const char*>(A) + (ptrdiff_t)i * strideA * (ptrdiff_t)esize(at), bytes_a, strideA,
                     false},
                    {"B", static_cast<const char*>(B) + (ptrdiff_t)i * strideB * (ptrdiff_t)esize(bt), bytes_b, strideB,
                     false},
                    {"C", static_cast<const char*>(C) + (ptrdiff_t)i * strideC * (ptrdiff_t)esize(ct), bytes_c, strideC,
                     true}};
        for (const auto& o : ops) {
            if (o.bytes == 0 || (i > 0 && o.stride == 0)) continue;
            char what[128];
            snprintf(what, sizeof what, "%s: %s of batch %d (%zu bytes)", c.fn, o.name, i, o.bytes);
            if (!cudaemu::check_device_range(o.p, o.bytes, what, file, line)) return CUBLAS_STATUS_EXECUTION_FAILED;
            ranges.push_back({o.p, o.bytes, o.write});
        }
    }
    if (ws_bytes > 0) {
        char what[128];
        snprintf(what, sizeof what, "%s: the workspace given to cublasSetWorkspace", c.fn);
        if (!cudaemu::check_device_range(ws, ws_bytes, what, file, line)) return CUBLAS_STATUS_EXECUTION_FAILED;
        ranges.push_back({ws, ws_bytes, true});
    }

    cudaemu::enqueue(
        stream, c.fn,
        [=]() {
            std::vector<float> ta_, tb_, tc_;
            for (int i = 0; i < batchCount; ++i) {
                const char* Ai = static_cast<const char*>(A) + (ptrdiff_t)i * strideA * (ptrdiff_t)esize(at);
                const char* Bi = static_cast<const char*>(B) + (ptrdiff_t)i * strideB * (ptrdiff_t)esize(bt);
                char* Cv = static_cast<char*>(C) + (ptrdiff_t)i * strideC * (ptrdiff_t)esize(ct);
                if (ct == Ty::F16) {  // t = A·B in float (not computed when unread), then C = st(a·t + b·C)
                    y5::f16* Ci = reinterpret_cast<y5::f16*>(Cv);
                    tc_.assign((size_t)m * n, 0.0f);
                    if (reads_ab)
                        cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
                                    k, 1.0f, as_float(Ai, at, rows_a, cols_a, lda, ta_), lda,
                                    as_float(Bi, bt, rows_b, cols_b, ldb, tb_), ldb, 0.0f, tc_.data(), m);
                    for (int j = 0; j < n; ++j)
                        for (int r = 0; r < m; ++r) {
                            y5::f16& o = Ci[(ptrdiff_t)j * ldc + r];
                            const float t = a * tc_[(size_t)j * m + r];
                            o = y5::f32_to_f16(b == 0.0f ? t : t + b * y5::f16_to_f32(o));
                        }
                    continue;
                }
                float* Ci = reinterpret_cast<float*>(Cv);
                if (b == 0.0f)  // C is write-only: clear it, so nothing (NaN poison) is read from it
                    for (int j = 0; j < n; ++j) std::memset(Ci + (ptrdiff_t)j * ldc, 0, (size_t)m * sizeof(float));
                if (!reads_ab) {
                    if (b != 0.0f)
                        for (int j = 0; j < n; ++j)
                            for (int r = 0; r < m; ++r) Ci[(ptrdiff_t)j * ldc + r] *= b;
                    continue;
                }
                cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, a,
                            as_float(Ai, at, rows_a, cols_a, lda, ta_), lda, as_float(Bi, bt, rows_b, cols_b, ldb, tb_),
                            ldb, b, Ci, ldc);
            }
        },
        std::move(ranges), file, line);
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long int strideA, const float* B, int ldb, long long int strideB,
                                         const float* beta, float* C, int ldc, long long int strideC, int batchCount,
                                         const char* file, int line) {
    return gemm_strided({"cublasSgemmStridedBatched", file, line}, handle, transa, transb, m, n, k, alpha, A, Ty::F32,
                        lda, strideA, B, Ty::F32, ldb, strideB, beta, C, Ty::F32, ldc, strideC, batchCount);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo, const char* file, int line) {
    const Call c{"cublasGemmStridedBatchedEx", file, line};
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (!live_handle(c, handle)) return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    // The combinations y5 uses, with float scale (CUBLAS_COMPUTE_32F): 32F·32F → 32F, 16F·16F → 16F or 32F.
    if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC)
        return fail(c, CUBLAS_STATUS_NOT_SUPPORTED, "compute type %d: the stand-in has CUBLAS_COMPUTE_32F only",
                    (int)computeType);
    const bool f32 = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F;
    const bool f16 = Atype == CUDA_R_16F && Btype == CUDA_R_16F && (Ctype == CUDA_R_16F || Ctype == CUDA_R_32F);
    if (!f32 && !f16)
        return fail(c, CUBLAS_STATUS_NOT_SUPPORTED, "Atype %d, Btype %d, Ctype %d with CUBLAS_COMPUTE_32F", (int)Atype,
                    (int)Btype, (int)Ctype);
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP)
        return fail(c, CUBLAS_STATUS_NOT_SUPPORTED, "algorithm %d: the stand-in runs the default one only", (int)algo);
    const Ty in = f16 ? Ty::F16 : Ty::F32, out = Ctype == CUDA_R_16F ? Ty::F16 : Ty::F32;
    return gemm_strided(c, handle, transa, transb, m, n, k, static_cast<const float*>(alpha), A, in, lda, strideA, B,
                        in, ldb, strideB, static_cast<const float*>(beta), C, out, ldc, strideC, batchCount);
}
