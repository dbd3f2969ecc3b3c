/*
 * cudaemu's cuDNN stand-in (include/cudnn.h): handles, descriptors, algorithm queries and the three
 * convolution passes, for kernels/conv2d.cu on the emulated device.
 *   - Handles and descriptors are heap objects that are never freed (a destroyed one is only marked), so a
 *     destroyed, unknown or never-set one is reported as CUDNN_STATUS_BAD_PARAM instead of read after free.
 *   - The algorithm queries return a fixed candidate list per pass, in cuDNN's order (fastest first): real
 *     algorithm numbers with workspace sizes of cuDNN's orders of magnitude (none, index tables, one im2col
 *     matrix, FFT buffers far over any limit on large inputs), deterministic and non-deterministic ones, the
 *     math types, and entries that fail. A workspace depends on the algorithm and the convolution
 *     descriptor's math type, as in cuDNN, so the caller must set the math type before asking. Find* orders
 *     by a modelled time and marks candidates whose workspace is over the free device memory as failed.
 *   - A pass checks its arguments as cuDNN does (shapes against each other, the algorithm, the workspace
 *     size against what the algorithm needs) and every pointer's extent against the allocation table, then
 *     queues the work on the handle's stream. When it runs it fills the workspace with 0xFF (callers that
 *     share a workspace across streams see it) and computes with y5's CPU convolution (kernels/conv2d.h)
 *     into a temporary: out = alpha·result + beta·out, out not read when beta is 0.
 *   - Data types: f32 (FLOAT data, FLOAT compute: FLOAT_CONFIG) and f16 (HALF data, FLOAT compute:
 *     PSEUDO_HALF_CONFIG, what PyTorch runs under autocast). x, w and y must share the data type
 *     (CUDNN_STATUS_BAD_PARAM otherwise); HALF compute (TRUE_HALF_CONFIG) and FLOAT data with HALF compute are
 *     CUDNN_STATUS_NOT_SUPPORTED, like every other type. HALF operands are converted to float, the f32
 *     convolution runs, and out = f16(alpha·result + beta·out) is rounded once; pointer extents and workspaces
 *     count 2-byte elements. Every math type (tensor-op math included) is reported and runs for HALF.
 *   - Layouts: NCHW or NHWC (CUDNN_TENSOR_NHWC: a tensor (N,C,H,W) held as (N,H,W,C), a filter (K,C,R,S) held as
 *     (K,R,S,C); dimensions are given in NCHW order either way, as in cuDNN), per descriptor. An NHWC operand is
 *     transposed to NCHW when the work runs, the same CPU convolution computes, and an NHWC output is transposed
 *     back before out = alpha·result + beta·out, so each output element gets the same float value in either
 *     layout. Pointer extents are checked as for NCHW (the element counts do not depend on the layout).
 * Every failure prints one line "cudaemu: <call> at <file>:<line>: <reason> (<status>)"; cuDNN itself only
 * returns the status. A pointer outside the allocation table is a fault of cudaemu::check_device_range
 * (sticky, as on a GPU) and the call returns CUDNN_STATUS_EXECUTION_FAILED.
 */
#include <cudnn.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "kernels/conv2d.h"

// The objects behind cuDNN's opaque pointers. Only NCHW or NHWC f32 or f16 descriptors are ever set, so the
// dimensions (in NCHW order), the layout and the data type are all a tensor or filter holds; a convolution holds one
// pad and one stride (y5's convolutions are square) and its compute type.
struct cudnnContext {
    bool live = true;
    cudaStream_t stream = 0;
};
struct cudnnTensorStruct {
    bool live = true, set = false;
    int n = 0, c = 0, h = 0, w = 0;
    bool nhwc = false;  // held as (n,h,w,c)
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
};
struct cudnnFilterStruct {
    bool live = true, set = false;
    int k = 0, c = 0, h = 0, w = 0;
    bool nhwc = false;  // held as (k,h,w,c)
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
};
struct cudnnConvolutionStruct {
    bool live = true, set = false;
    int pad = 0, stride = 0;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

std::mutex g_mu;  // guards the registries and every object's fields

// Every object this library created, by address; destroyed ones stay, marked dead.
template <class T> struct Registry {
    std::unordered_map<const T*, std::unique_ptr<T>> all;
    T* create() {
        auto o = std::make_unique<T>();
        T* p = o.get();
        all.emplace(p, std::move(o));
        return p;
    }
    T* find(const T* p) const {
        auto it = all.find(p);
        return it == all.end() ? nullptr : it->second.get();
    }
};
// Never destroyed: calls may come from static destructors after this file's statics are gone.
Registry<cudnnContext>& handles() { static auto* r = new Registry<cudnnContext>; return *r; }
Registry<cudnnTensorStruct>& tensors() { static auto* r = new Registry<cudnnTensorStruct>; return *r; }
Registry<cudnnFilterStruct>& filters() { static auto* r = new Registry<cudnnFilterStruct>; return *r; }
Registry<cudnnConvolutionStruct>& convs() { static auto* r = new Registry<cudnnConvolutionStruct>; return *r; }

// The public function being served and its caller's site, for the failure line.
struct Call {
    const char* fn;
    const char* file;
    int line;
};

cudnnStatus_t fail(const Call& c, cudnnStatus_t s, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
cudnnStatus_t fail(const Call& c, cudnnStatus_t s, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cudaemu: %s at %s:%d: %s (%s)\n", c.fn, c.file, c.line, msg, cudnnGetErrorString(s));
    return s;
}

// The live object behind p, or a failure naming what is wrong with it.
template <class T>
cudnnStatus_t lookup(const Call& c, Registry<T>& reg, const T* p, const char* name, bool need_set, T** out) {
    if (!p) return fail(c, CUDNN_STATUS_BAD_PARAM, "%s is null", name);
    T* o = reg.find(p);
    if (!o) return fail(c, CUDNN_STATUS_BAD_PARAM, "%s (%p) was not created by this library", name, (const void*)p);
    if (!o->live) return fail(c, CUDNN_STATUS_BAD_PARAM, "%s (%p) was destroyed", name, (const void*)p);
    if constexpr (!std::is_same<T, cudnnContext>::value)
        if (need_set && !o->set) return fail(c, CUDNN_STATUS_BAD_PARAM, "%s (%p) was never set", name, (const void*)p);
    *out = o;
    return CUDNN_STATUS_SUCCESS;
}

#define CUDNN_TRY(expr)                                     \
    do {                                                    \
        cudnnStatus_t s_ = (expr);                          \
        if (s_ != CUDNN_STATUS_SUCCESS) return s_;          \
    } while (0)

// cudnnCreate* and cudnnDestroy*: a new object in its registry; a destroyed one stays there, marked.
template <class T> cudnnStatus_t create_in(const Call& c, Registry<T>& reg, T** out) {
    if (!out) return fail(c, CUDNN_STATUS_BAD_PARAM, "the output pointer is null");
    std::lock_guard<std::mutex> lk(g_mu);
    *out = reg.create();
    return CUDNN_STATUS_SUCCESS;
}
template <class T> cudnnStatus_t destroy_in(const Call& c, Registry<T>& reg, const T* p, const char* name) {
    std::lock_guard<std::mutex> lk(g_mu);
    T* o = nullptr;
    CUDNN_TRY(lookup(c, reg, p, name, false, &o));
    o->live = false;
    return CUDNN_STATUS_SUCCESS;
}

bool valid_format(cudnnTensorFormat_t f) { return f >= CUDNN_TENSOR_NCHW && f <= CUDNN_TENSOR_NCHW_VECT_C; }
bool valid_type(cudnnDataType_t t) { return t >= CUDNN_DATA_FLOAT && t <= CUDNN_DATA_FAST_FLOAT_FOR_FP8; }

// Shared by the tensor and filter setters: cuDNN's checks, then the stand-in's NCHW/NHWC f32/f16 limit.
cudnnStatus_t check_4d(const Call& c, cudnnTensorFormat_t format, cudnnDataType_t type, int a, int b, int h, int w) {
    if (!valid_format(format))
        return fail(c, CUDNN_STATUS_BAD_PARAM, "format %d is not a cudnnTensorFormat_t", (int)format);
    if (!valid_type(type)) return fail(c, CUDNN_STATUS_BAD_PARAM, "data type %d is not a cudnnDataType_t", (int)type);
    if (a <= 0 || b <= 0 || h <= 0 || w <= 0)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "dimensions (%d,%d,%d,%d) are not all positive", a, b, h, w);
    if ((int64_t)a * b * h * w > INT32_MAX)
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED, "(%d,%d,%d,%d) is over 2^31 elements", a, b, h, w);
    if ((format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC) ||
        (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_HALF))
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED,
                    "format %d, data type %d: the stand-in has NCHW and NHWC, f32 and f16 only", (int)format, (int)type);
    return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------- problems

// One convolution as the descriptors describe it: input (N,C,H,W), filter (K,C,R,S), output (N,K,Ho,Wo),
// the convolution descriptor's math type (it selects the kernel variant, hence the workspace), the data
// type (half: f16 data, float compute) and each operand's layout (NHWC: channels last).
struct Problem {
    int N, C, H, W, K, R, S, stride, pad, Ho, Wo;
    cudnnMathType_t math;
    bool half;
    bool x_nhwc, w_nhwc, y_nhwc;
    size_t esize() const { return half ? 2 : 4; }
};

// The problem of x, w and conv (output dimensions computed, as cudnnGetConvolution2dForwardOutputDim does).
cudnnStatus_t problem_of(const Call& c, cudnnTensorDescriptor_t xd, cudnnFilterDescriptor_t wd,
                         cudnnConvolutionDescriptor_t cd, const char* xname, Problem* p) {
    cudnnTensorStruct* x = nullptr;
    cudnnFilterStruct* w = nullptr;
    cudnnConvolutionStruct* conv = nullptr;
    CUDNN_TRY(lookup(c, tensors(), xd, xname, true, &x));
    CUDNN_TRY(lookup(c, filters(), wd, "the filter descriptor", true, &w));
    CUDNN_TRY(lookup(c, convs(), cd, "the convolution descriptor", true, &conv));
    if (x->type != w->type)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "%s has data type %d, the filter %d", xname, (int)x->type, (int)w->type);
    if (x->c != w->c)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "%s has %d channels, the filter (%d,%d,%d,%d) %d (groups 1)", xname,
                    x->c, w->k, w->c, w->h, w->w, w->c);
    if (x->h + 2 * conv->pad < w->h || x->w + 2 * conv->pad < w->w)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "filter %dx%d is larger than the padded input %dx%d", w->h, w->w,
                    x->h + 2 * conv->pad, x->w + 2 * conv->pad);
    *p = Problem{x->n, x->c, x->h, x->w, w->k, w->h, w->w, conv->stride, conv->pad,
                 (x->h + 2 * conv->pad - w->h) / conv->stride + 1, (x->w + 2 * conv->pad - w->w) / conv->stride + 1,
                 conv->math, x->type == CUDNN_DATA_HALF, x->nhwc, w->nhwc, false};
    return CUDNN_STATUS_SUCCESS;
}

// problem_of, with the output descriptor checked against the computed output and the handle checked.
cudnnStatus_t resolve(const Call& c, cudnnHandle_t h, cudnnTensorDescriptor_t xd, const char* xname,
                      cudnnFilterDescriptor_t wd, cudnnConvolutionDescriptor_t cd, cudnnTensorDescriptor_t yd,
                      const char* yname, Problem* p, cudaStream_t* stream = nullptr) {
    cudnnContext* ctx = nullptr;
    cudnnTensorStruct* y = nullptr;
    CUDNN_TRY(lookup(c, handles(), h, "the handle", false, &ctx));
    CUDNN_TRY(problem_of(c, xd, wd, cd, xname, p));
    CUDNN_TRY(lookup(c, tensors(), yd, yname, true, &y));
    cudnnConvolutionStruct* conv = convs().find(cd);  // found live and set by problem_of
    if (conv->compute != CUDNN_DATA_FLOAT)  // TRUE_HALF_CONFIG, or FLOAT data with HALF compute (no configuration)
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED,
                    "compute type %d with %s data: the stand-in computes in float only (FLOAT_CONFIG, "
                    "PSEUDO_HALF_CONFIG)",
                    (int)conv->compute, p->half ? "HALF" : "FLOAT");
    if (y->n != p->N || y->c != p->K || y->h != p->Ho || y->w != p->Wo)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "%s is (%d,%d,%d,%d), the convolution's output (%d,%d,%d,%d)", yname,
                    y->n, y->c, y->h, y->w, p->N, p->K, p->Ho, p->Wo);
    if ((y->type == CUDNN_DATA_HALF) != p->half)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "%s has data type %d, %s %d", yname, (int)y->type, xname,
                    p->half ? (int)CUDNN_DATA_HALF : (int)CUDNN_DATA_FLOAT);
    p->y_nhwc = y->nhwc;
    if (stream) *stream = ctx->stream;
    return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------- algorithms

enum Pass { kFwd = 0, kBwdData = 1, kBwdFilter = 2 };

// What an algorithm number is in each pass (the numbering differs), for its support, workspace and speed.
enum Kind { kImplicit, kPrecomp, kGemm, kFft, kFftTiling, kWinograd, kNonfused, kAlgo0, kAlgo1, kAlgo3, kNever };
const Kind kFwdKinds[] = {kImplicit, kPrecomp, kGemm, kNever /* direct */, kFft, kFftTiling, kWinograd, kNonfused};
const Kind kBwdDataKinds[] = {kAlgo0, kAlgo1, kFft, kFftTiling, kWinograd, kNonfused};
const Kind kBwdFilterKinds[] = {kAlgo0, kAlgo1, kFft, kAlgo3, kNever /* winograd */, kNonfused, kFftTiling};
const int kAlgoCount[3] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};

Kind kind_of(Pass pass, int algo) {
    return pass == kFwd ? kFwdKinds[algo] : pass == kBwdData ? kBwdDataKinds[algo] : kBwdFilterKinds[algo];
}

bool supported(Kind k, const Problem& p) {
    const bool s1 = p.stride == 1;
    switch (k) {
        case kNever: return false;
        case kFft: return s1 && p.H + 2 * p.pad <= 256 && p.W + 2 * p.pad <= 256;
        case kFftTiling: return s1 && p.R <= 32 && p.S <= 32;
        case kWinograd: return s1 && p.R == 3 && p.S == 3;
        case kNonfused: return s1 && p.R == p.S && (p.R == 3 || p.R == 5);
        default: return true;
    }
}

bool tensor_op(cudnnMathType_t m) { return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION; }

uint64_t pow2_ceil(uint64_t v) {
    uint64_t r = 1;
    while (r < v) r <<= 1;
    return r;
}

// Workspace bytes of a supported algorithm under a math type, rounded up to 256.
size_t workspace(Kind k, cudnnMathType_t math, const Problem& p) {
    const uint64_t crs = (uint64_t)p.C * p.R * p.S, NC = (uint64_t)p.N * p.C, NK = (uint64_t)p.N * p.K;
    const uint64_t KC = (uint64_t)p.K * p.C;
    const uint64_t col = p.esize() * crs * p.Ho * p.Wo;  // one image's im2col matrix, in the data type
    uint64_t b = 0;
    switch (k) {
        case kPrecomp: b = tensor_op(math) ? col : 8 * crs; break;  // converted copy, or the offset tables
        case kGemm: b = col; break;
        case kAlgo1: b = tensor_op(math) ? col : 0; break;
        case kAlgo3: b = 4 * (uint64_t)p.K * crs * (uint64_t)std::min(p.N, 4); break;  // partial filter sums
        case kFft: {  // complex spectra of inputs, outputs and filters at the padded size
            const uint64_t hp = pow2_ceil(p.H + 2 * p.pad), wp = pow2_ceil(p.W + 2 * p.pad);
            b = 8 * (NC + NK + KC) * hp * (wp / 2 + 1);
            break;
        }
        case kFftTiling: {  // the same over 32×32 tiles
            const uint64_t tiles = (uint64_t)((p.Ho + 32 - p.R) / (33 - p.R)) * ((p.Wo + 32 - p.S) / (33 - p.S));
            b = 8 * ((NC + NK) * tiles + KC) * 32 * 17;
            break;
        }
        case kNonfused: {  // transformed (4+R−1)² tiles of inputs, outputs and filters, f32
            const uint64_t t = (uint64_t)(p.R + 3) * (p.S + 3);
            b = 4 * t * ((NC + NK) * (uint64_t)((p.Ho + 3) / 4) * ((p.Wo + 3) / 4) + KC);
            break;
        }
        default: b = 0;
    }
    return (size_t)((b + 255) / 256 * 256);
}

// A modelled time in ms (for Find*): the multiply-adds at 10 TFLOP/s times the algorithm's factor, halved
// with tensor ops, plus a launch cost. Only its order matters.
float model_ms(Kind k, cudnnMathType_t math, const Problem& p) {
    static const double factor[] = {1.0, 0.8, 0.9, 0.7, 0.6, 0.5, 0.45, 0.9, 1.0, 0.85, 1.0};
    const double flops = 2.0 * p.N * p.K * (double)p.C * p.R * p.S * p.Ho * p.Wo;
    return (float)(flops * factor[k] * (tensor_op(math) ? 0.5 : 1.0) / 1e10 + 0.005);
}

// The candidate lists, in the order the heuristics return them. Each has entries excluded by y5's rules
// (non-deterministic, TENSOR_OP_MATH_ALLOW_CONVERSION, tensor ops without TF32) ahead of usable ones, and one
// that always fails (`runs` false; for the direct and the filter Winograd algorithms cuDNN has no kernel).
struct Candidate {
    int algo;
    cudnnMathType_t math;
    cudnnDeterminism_t det;
    bool runs;
};
const Candidate kFwdList[] = {
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, CUDNN_DETERMINISTIC,
     true},
    {CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
};
const Candidate kBwdDataList[] = {
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_DEFAULT_MATH, CUDNN_NON_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, false},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_FMA_MATH, CUDNN_NON_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
};
const Candidate kBwdFilterList[] = {
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_DEFAULT_MATH, CUDNN_NON_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, CUDNN_DEFAULT_MATH, CUDNN_NON_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_TENSOR_OP_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_FMA_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, CUDNN_DEFAULT_MATH, CUDNN_DETERMINISTIC, true},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_FMA_MATH, CUDNN_NON_DETERMINISTIC, true},
};

struct List {
    const Candidate* c;
    int n;
};
List list_of(Pass pass) {
    if (pass == kFwd) return {kFwdList, (int)(sizeof kFwdList / sizeof kFwdList[0])};
    if (pass == kBwdData) return {kBwdDataList, (int)(sizeof kBwdDataList / sizeof kBwdDataList[0])};
    return {kBwdFilterList, (int)(sizeof kBwdFilterList / sizeof kBwdFilterList[0])};
}

cudnnStatus_t max_count(const Call& c, cudnnHandle_t h, Pass pass, int* count) {
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnContext* ctx = nullptr;
    CUDNN_TRY(lookup(c, handles(), h, "the handle", false, &ctx));
    if (!count) return fail(c, CUDNN_STATUS_BAD_PARAM, "count is null");
    *count = list_of(pass).n;
    return CUDNN_STATUS_SUCCESS;
}

// The candidates for p (heuristics: the list's order, time −1; timed: sorted by modelled time, those whose
// workspace is over the free device memory failed, failures last), the first `requested` of them to out.
template <class Perf, class Algo>
cudnnStatus_t fill(const Call& c, Pass pass, const Problem& p, bool timed, int requested, int* returned, Perf* out) {
    if (requested <= 0) return fail(c, CUDNN_STATUS_BAD_PARAM, "requestedAlgoCount %d", requested);
    if (!returned || !out) return fail(c, CUDNN_STATUS_BAD_PARAM, "returnedAlgoCount or perfResults is null");
    // cuDNN's Find* runs and times every algorithm, which a stream capture (a CUDA graph) cannot hold.
    if (timed && cudaemu::capturing())
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED, "called while a stream capture is active (cache the algorithm first)");
    size_t free_b = SIZE_MAX, total_b = 0;
    if (timed && cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
        return fail(c, CUDNN_STATUS_EXECUTION_FAILED_CUDART, "cudaMemGetInfo failed (an earlier fault?)");
    const List l = list_of(pass);
    std::vector<Perf> v;
    for (int i = 0; i < l.n; ++i) {
        const Candidate& k = l.c[i];
        const Kind kind = kind_of(pass, k.algo);
        Perf r{};
        r.algo = (Algo)k.algo;
        r.determinism = k.det;
        r.mathType = k.math;
        r.status = k.runs && supported(kind, p) ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED;
        r.memory = r.status == CUDNN_STATUS_SUCCESS ? workspace(kind, k.math, p) : 0;
        if (timed && r.status == CUDNN_STATUS_SUCCESS && r.memory > free_b)
            r.status = CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
        r.time = timed && r.status == CUDNN_STATUS_SUCCESS ? model_ms(kind, k.math, p) : -1.0f;
        v.push_back(r);
    }
    if (timed)
        std::stable_sort(v.begin(), v.end(), [](const Perf& a, const Perf& b) {
            const bool fa = a.status != CUDNN_STATUS_SUCCESS, fb = b.status != CUDNN_STATUS_SUCCESS;
            return fa != fb ? fb : (!fa && a.time < b.time);
        });
    *returned = std::min(requested, (int)v.size());
    std::copy(v.begin(), v.begin() + *returned, out);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t workspace_size(const Call& c, Pass pass, const Problem& p, int algo, size_t* bytes) {
    if (!bytes) return fail(c, CUDNN_STATUS_BAD_PARAM, "sizeInBytes is null");
    if (algo < 0 || algo >= kAlgoCount[pass])
        return fail(c, CUDNN_STATUS_BAD_PARAM, "algorithm %d is out of range", algo);
    const Kind kind = kind_of(pass, algo);
    if (!supported(kind, p))
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED, "algorithm %d does not run %dx%d stride %d on %dx%d", algo, p.R, p.S,
                    p.stride, p.H, p.W);
    *bytes = workspace(kind, p.math, p);
    return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------- passes

// A pass's operands: two inputs and the output, named as cuDNN names them, with their dimensions in NCHW order
// (a, b, h, w), their layout and element count.
struct Operand {
    const char* name;
    const void* p;
    int a, b, h, w;
    bool nhwc;
    int64_t elems() const { return (int64_t)a * b * h * w; }
};
Operand x_operand(const Problem& p, const char* name, const void* q) { return {name, q, p.N, p.C, p.H, p.W, p.x_nhwc}; }
Operand w_operand(const Problem& p, const char* name, const void* q) { return {name, q, p.K, p.C, p.R, p.S, p.w_nhwc}; }
Operand y_operand(const Problem& p, const char* name, const void* q) {
    return {name, q, p.N, p.K, p.Ho, p.Wo, p.y_nhwc};
}

// (A,B,H,W) held as (A,H,W,B) → held as (A,B,H,W), and back.
void nhwc_to_nchw(float* dst, const float* src, int A, int B, int H, int W) {
    const int64_t HW = (int64_t)H * W;
    for (int64_t a = 0; a < A; ++a)
        for (int64_t q = 0; q < HW; ++q)
            for (int64_t c = 0; c < B; ++c) dst[(a * B + c) * HW + q] = src[(a * HW + q) * B + c];
}
void nchw_to_nhwc(float* dst, const float* src, int A, int B, int H, int W) {
    const int64_t HW = (int64_t)H * W;
    for (int64_t a = 0; a < A; ++a)
        for (int64_t q = 0; q < HW; ++q)
            for (int64_t c = 0; c < B; ++c) dst[(a * HW + q) * B + c] = src[(a * B + c) * HW + q];
}

bool overlap(const void* a, size_t na, const void* b, size_t nb) {
    const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
    return na && nb && pa < pb + nb && pb < pa + na;
}

// The checks and the queued work shared by the three passes.
cudnnStatus_t run_pass(const Call& c, Pass pass, const Problem& p, cudaStream_t stream, int algo, const void* alpha,
                       const void* beta, Operand in0, Operand in1, Operand out, void* ws, size_t ws_bytes) {
    if (!alpha || !beta) return fail(c, CUDNN_STATUS_BAD_PARAM, "alpha or beta is null");
    if (algo < 0 || algo >= kAlgoCount[pass])
        return fail(c, CUDNN_STATUS_BAD_PARAM, "algorithm %d is out of range", algo);
    const Kind kind = kind_of(pass, algo);
    if (!supported(kind, p))
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED, "algorithm %d does not run %dx%d stride %d on %dx%d", algo, p.R, p.S,
                    p.stride, p.H, p.W);
    const size_t need = workspace(kind, p.math, p);
    if (ws_bytes < need)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "workspace of %zu bytes, algorithm %d (math type %d) needs %zu",
                    ws_bytes, algo, (int)p.math, need);
    for (const Operand* o : {&in0, &in1, &out})
        if (!o->p) return fail(c, CUDNN_STATUS_BAD_PARAM, "%s is null", o->name);

    // Every extent against the allocation table (a fault line each), then aliasing between them.
    const size_t es = p.esize();
    bool ok = true;
    for (const Operand* o : {&in0, &in1, &out}) {
        char what[96];
        snprintf(what, sizeof what, "%s: %s (%lld %s)", c.fn, o->name, (long long)o->elems(),
                 p.half ? "halves" : "floats");
        ok = cudaemu::check_device_range(o->p, (size_t)o->elems() * es, what, c.file, c.line) && ok;
    }
    if (ws_bytes > 0) {
        char what[96];
        snprintf(what, sizeof what, "%s: workspace (%zu bytes)", c.fn, ws_bytes);
        ok = cudaemu::check_device_range(ws, ws_bytes, what, c.file, c.line) && ok;
    }
    if (!ok) return CUDNN_STATUS_EXECUTION_FAILED;  // as the kernel's fault would be
    const size_t out_bytes = (size_t)out.elems() * es;
    for (const Operand* o : {&in0, &in1}) {
        if (overlap(out.p, out_bytes, o->p, (size_t)o->elems() * es))
            return fail(c, CUDNN_STATUS_BAD_PARAM, "%s overlaps %s (no in-place convolution)", out.name, o->name);
        if (overlap(ws, ws_bytes, o->p, (size_t)o->elems() * es))
            return fail(c, CUDNN_STATUS_BAD_PARAM, "the workspace overlaps %s", o->name);
    }
    if (overlap(ws, ws_bytes, out.p, out_bytes))
        return fail(c, CUDNN_STATUS_BAD_PARAM, "the workspace overlaps %s", out.name);

    // alpha and beta are float for FLOAT_CONFIG and PSEUDO_HALF_CONFIG alike.
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    void* outp = const_cast<void*>(out.p);
    std::vector<cudaemu::Range> ranges = {{in0.p, (size_t)in0.elems() * es, false},
                                          {in1.p, (size_t)in1.elems() * es, false},
                                          {out.p, out_bytes, true}};
    if (ws_bytes > 0) ranges.push_back({ws, ws_bytes, true});
    cudaemu::enqueue(
        stream, c.fn,
        [pass, p, a, b, in0, in1, out, outp, ws, ws_bytes, n_out = out.elems()]() {
            if (ws_bytes > 0) std::memset(ws, 0xFF, ws_bytes);
            // Each input as float NCHW (read now, when the work runs): f16 converted, NHWC transposed, both into tmp;
            // an f32 NCHW one in place.
            std::vector<float> c0, c1;
            auto as_nchw = [&](const Operand& o, std::vector<float>& tmp) -> const float* {
                const int64_t n = o.elems();
                if (!p.half && !o.nhwc) return static_cast<const float*>(o.p);
                std::vector<float> f;
                const float* src = static_cast<const float*>(o.p);
                if (p.half) {
                    f.resize((size_t)n);
                    for (int64_t i = 0; i < n; ++i) f[(size_t)i] = y5::f16_to_f32(static_cast<const y5::f16*>(o.p)[i]);
                    src = f.data();
                }
                if (!o.nhwc) {
                    tmp.swap(f);
                    return tmp.data();
                }
                tmp.resize((size_t)n);
                nhwc_to_nchw(tmp.data(), src, o.a, o.b, o.h, o.w);
                return tmp.data();
            };
            const float* x0 = as_nchw(in0, c0);
            const float* x1 = as_nchw(in1, c1);
            // y5's CPU passes: fprop overwrites its output, the backward ones accumulate (into zeros here).
            std::vector<float> r((size_t)n_out, 0.0f);
            std::vector<float> col((size_t)std::max<int64_t>(
                y5::conv2d_col_elems(p.C, p.R, p.S, p.Ho, p.Wo, p.stride, p.pad), 1));
            if (pass == kFwd)  // x0 = x, x1 = w
                y5::conv2d_fprop_cpu(r.data(), x0, x1, (const float*)nullptr, col.data(), p.N, p.C, p.H, p.W, p.K,
                                     p.R, p.S, p.stride, p.pad);
            else if (pass == kBwdData)  // x0 = dy, x1 = w; the input is unread without dweight (r stands in)
                y5::conv2d_backward_cpu(r.data(), (float*)nullptr, (float*)nullptr, x0, r.data(), x1, col.data(), p.N,
                                        p.C, p.H, p.W, p.K, p.R, p.S, p.stride, p.pad);
            else  // x0 = dy, x1 = x; the weight is unread without dinp (r stands in)
                y5::conv2d_backward_cpu((float*)nullptr, r.data(), (float*)nullptr, x0, x1, r.data(), col.data(), p.N,
                                        p.C, p.H, p.W, p.K, p.R, p.S, p.stride, p.pad);
            if (out.nhwc) {  // the result in the output's layout
                std::vector<float> t((size_t)n_out);
                nchw_to_nhwc(t.data(), r.data(), out.a, out.b, out.h, out.w);
                r.swap(t);
            }
            if (p.half) {  // out = f16(alpha·r + beta·out), one rounding
                y5::f16* y = static_cast<y5::f16*>(outp);
                if (b == 0.0f)
                    for (int64_t i = 0; i < n_out; ++i) y[i] = y5::f32_to_f16(a * r[i]);
                else
                    for (int64_t i = 0; i < n_out; ++i) y[i] = y5::f32_to_f16(a * r[i] + b * y5::f16_to_f32(y[i]));
                return;
            }
            float* y = static_cast<float*>(outp);
            if (b == 0.0f)
                for (int64_t i = 0; i < n_out; ++i) y[i] = a * r[i];
            else
                for (int64_t i = 0; i < n_out; ++i) y[i] = a * r[i] + b * y[i];
        },
        std::move(ranges), c.file, c.line);
    return CUDNN_STATUS_SUCCESS;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------- library

size_t cudnnGetVersion() { return CUDNN_VERSION; }

const char* cudnnGetErrorString(cudnnStatus_t s) {
    switch (s) {
#define CUDAEMU_NAME(x) \
    case x: return #x;
        CUDAEMU_NAME(CUDNN_STATUS_SUCCESS)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_INITIALIZED)
        CUDAEMU_NAME(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
        CUDAEMU_NAME(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
        CUDAEMU_NAME(CUDNN_STATUS_DEPRECATED)
        CUDAEMU_NAME(CUDNN_STATUS_LICENSE_ERROR)
        CUDAEMU_NAME(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
        CUDAEMU_NAME(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM)
        CUDAEMU_NAME(CUDNN_STATUS_INVALID_VALUE)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
        CUDAEMU_NAME(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
        CUDAEMU_NAME(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
        CUDAEMU_NAME(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
        CUDAEMU_NAME(CUDNN_STATUS_EXECUTION_FAILED)
        CUDAEMU_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
        CUDAEMU_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
        CUDAEMU_NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
        CUDAEMU_NAME(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef CUDAEMU_NAME
    }
    return "CUDNN_UNKNOWN_STATUS_FOUND";
}

cudnnStatus_t cudnnCreate(cudnnHandle_t* handle, const char* file, int line) {
    return create_in(Call{"cudnnCreate", file, line}, handles(), handle);
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle, const char* file, int line) {
    return destroy_in(Call{"cudnnDestroy", file, line}, handles(), handle, "the handle");
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream, const char* file, int line) {
    const Call c{"cudnnSetStream", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnContext* h = nullptr;
    CUDNN_TRY(lookup(c, handles(), handle, "the handle", false, &h));
    h->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------- descriptors

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* desc, const char* file, int line) {
    return create_in(Call{"cudnnCreateTensorDescriptor", file, line}, tensors(), desc);
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t desc, const char* file, int line) {
    return destroy_in(Call{"cudnnDestroyTensorDescriptor", file, line}, tensors(), desc, "the tensor descriptor");
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t desc, cudnnTensorFormat_t format,
                                         cudnnDataType_t dataType, int n, int c_, int h, int w, const char* file,
                                         int line) {
    const Call c{"cudnnSetTensor4dDescriptor", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnTensorStruct* t = nullptr;
    CUDNN_TRY(lookup(c, tensors(), desc, "the tensor descriptor", false, &t));
    CUDNN_TRY(check_4d(c, format, dataType, n, c_, h, w));
    t->n = n, t->c = c_, t->h = h, t->w = w;
    t->nhwc = format == CUDNN_TENSOR_NHWC;
    t->type = dataType;
    t->set = true;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* desc, const char* file, int line) {
    return create_in(Call{"cudnnCreateFilterDescriptor", file, line}, filters(), desc);
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t desc, const char* file, int line) {
    return destroy_in(Call{"cudnnDestroyFilterDescriptor", file, line}, filters(), desc, "the filter descriptor");
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t desc, cudnnDataType_t dataType,
                                         cudnnTensorFormat_t format, int k, int c_, int h, int w, const char* file,
                                         int line) {
    const Call c{"cudnnSetFilter4dDescriptor", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnFilterStruct* f = nullptr;
    CUDNN_TRY(lookup(c, filters(), desc, "the filter descriptor", false, &f));
    CUDNN_TRY(check_4d(c, format, dataType, k, c_, h, w));
    f->k = k, f->c = c_, f->h = h, f->w = w;
    f->nhwc = format == CUDNN_TENSOR_NHWC;
    f->type = dataType;
    f->set = true;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* desc, const char* file, int line) {
    return create_in(Call{"cudnnCreateConvolutionDescriptor", file, line}, convs(), desc);
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t desc, const char* file, int line) {
    return destroy_in(Call{"cudnnDestroyConvolutionDescriptor", file, line}, convs(), desc, "the convolution descriptor");
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t desc, int pad_h, int pad_w, int u, int v,
                                              int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType, const char* file, int line) {
    const Call c{"cudnnSetConvolution2dDescriptor", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnConvolutionStruct* d = nullptr;
    CUDNN_TRY(lookup(c, convs(), desc, "the convolution descriptor", false, &d));
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "pad %dx%d, stride %dx%d, dilation %dx%d", pad_h, pad_w, u, v,
                    dilation_h, dilation_w);
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "mode %d is not a cudnnConvolutionMode_t", (int)mode);
    if (!valid_type(computeType))
        return fail(c, CUDNN_STATUS_BAD_PARAM, "compute type %d is not a cudnnDataType_t", (int)computeType);
    // HALF compute is a valid setting (TRUE_HALF_CONFIG); the passes reject it, as cuDNN rejects a configuration
    // it has no kernel for, when the data type is known.
    if (dilation_h != 1 || dilation_w != 1 || mode != CUDNN_CROSS_CORRELATION ||
        (computeType != CUDNN_DATA_FLOAT && computeType != CUDNN_DATA_HALF) || pad_h != pad_w || u != v)
        return fail(c, CUDNN_STATUS_NOT_SUPPORTED,
                    "pad %dx%d, stride %dx%d, dilation %dx%d, mode %d, compute type %d: the stand-in has square pad "
                    "and stride, dilation 1, cross-correlation, f32 or f16 compute only",
                    pad_h, pad_w, u, v, dilation_h, dilation_w, (int)mode, (int)computeType);
    d->pad = pad_h;
    d->stride = u;
    d->compute = computeType;
    d->set = true;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t desc, cudnnMathType_t mathType,
                                          const char* file, int line) {
    const Call c{"cudnnSetConvolutionMathType", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    cudnnConvolutionStruct* d = nullptr;
    CUDNN_TRY(lookup(c, convs(), desc, "the convolution descriptor", false, &d));
    if (mathType < CUDNN_DEFAULT_MATH || mathType > CUDNN_FMA_MATH)
        return fail(c, CUDNN_STATUS_BAD_PARAM, "math type %d is not a cudnnMathType_t", (int)mathType);
    d->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                    const cudnnTensorDescriptor_t inputTensorDesc,
                                                    const cudnnFilterDescriptor_t filterDesc, int* n, int* c_, int* h,
                                                    int* w, const char* file, int line) {
    const Call c{"cudnnGetConvolution2dForwardOutputDim", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    if (!n || !c_ || !h || !w) return fail(c, CUDNN_STATUS_BAD_PARAM, "an output pointer is null");
    Problem p{};
    CUDNN_TRY(problem_of(c, inputTensorDesc, filterDesc, convDesc, "the input descriptor", &p));
    *n = p.N, *c_ = p.K, *h = p.Ho, *w = p.Wo;
    return CUDNN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------------- algorithms

cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t handle, int* count, const char* file,
                                                          int line) {
    return max_count({"cudnnGetConvolutionForwardAlgorithmMaxCount", file, line}, handle, kFwd, count);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t handle, int* count, const char* file,
                                                               int line) {
    return max_count({"cudnnGetConvolutionBackwardDataAlgorithmMaxCount", file, line}, handle, kBwdData, count);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t handle, int* count, const char* file,
                                                                 int line) {
    return max_count({"cudnnGetConvolutionBackwardFilterAlgorithmMaxCount", file, line}, handle, kBwdFilter, count);
}

// The forward queries: x, w → y.
static cudnnStatus_t fwd_query(const Call& c, bool timed, cudnnHandle_t handle, cudnnTensorDescriptor_t xDesc,
                               cudnnFilterDescriptor_t wDesc, cudnnConvolutionDescriptor_t convDesc,
                               cudnnTensorDescriptor_t yDesc, int requested, int* returned,
                               cudnnConvolutionFwdAlgoPerf_t* perf) {
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", wDesc, convDesc, yDesc, "yDesc", &p));
    return fill<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(c, kFwd, p, timed, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                     const cudnnFilterDescriptor_t wDesc,
                                                     const cudnnConvolutionDescriptor_t convDesc,
                                                     const cudnnTensorDescriptor_t yDesc, const int requestedAlgoCount,
                                                     int* returnedAlgoCount,
                                                     cudnnConvolutionFwdAlgoPerf_t* perfResults, const char* file,
                                                     int line) {
    return fwd_query({"cudnnGetConvolutionForwardAlgorithm_v7", file, line}, false, handle, xDesc, wDesc, convDesc,
                     yDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                   const cudnnFilterDescriptor_t wDesc,
                                                   const cudnnConvolutionDescriptor_t convDesc,
                                                   const cudnnTensorDescriptor_t yDesc, const int requestedAlgoCount,
                                                   int* returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t* perfResults,
                                                   const char* file, int line) {
    return fwd_query({"cudnnFindConvolutionForwardAlgorithm", file, line}, true, handle, xDesc, wDesc, convDesc, yDesc,
                     requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                      const cudnnFilterDescriptor_t wDesc,
                                                      const cudnnConvolutionDescriptor_t convDesc,
                                                      const cudnnTensorDescriptor_t yDesc,
                                                      cudnnConvolutionFwdAlgo_t algo, size_t* sizeInBytes,
                                                      const char* file, int line) {
    const Call c{"cudnnGetConvolutionForwardWorkspaceSize", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", wDesc, convDesc, yDesc, "yDesc", &p));
    return workspace_size(c, kFwd, p, (int)algo, sizeInBytes);
}

// The backward-data queries: w, dy → dx (dx has the input's shape, dy the output's).
static cudnnStatus_t bwd_data_query(const Call& c, bool timed, cudnnHandle_t handle, cudnnFilterDescriptor_t wDesc,
                                    cudnnTensorDescriptor_t dyDesc, cudnnConvolutionDescriptor_t convDesc,
                                    cudnnTensorDescriptor_t dxDesc, int requested, int* returned,
                                    cudnnConvolutionBwdDataAlgoPerf_t* perf) {
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, dxDesc, "dxDesc", wDesc, convDesc, dyDesc, "dyDesc", &p));
    return fill<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(c, kBwdData, p, timed, requested,
                                                                                  returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                          const cudnnTensorDescriptor_t dyDesc,
                                                          const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnTensorDescriptor_t dxDesc,
                                                          const int requestedAlgoCount, int* returnedAlgoCount,
                                                          cudnnConvolutionBwdDataAlgoPerf_t* perfResults,
                                                          const char* file, int line) {
    return bwd_data_query({"cudnnGetConvolutionBackwardDataAlgorithm_v7", file, line}, false, handle, wDesc, dyDesc,
                          convDesc, dxDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                        const cudnnTensorDescriptor_t dyDesc,
                                                        const cudnnConvolutionDescriptor_t convDesc,
                                                        const cudnnTensorDescriptor_t dxDesc,
                                                        const int requestedAlgoCount, int* returnedAlgoCount,
                                                        cudnnConvolutionBwdDataAlgoPerf_t* perfResults,
                                                        const char* file, int line) {
    return bwd_data_query({"cudnnFindConvolutionBackwardDataAlgorithm", file, line}, true, handle, wDesc, dyDesc,
                          convDesc, dxDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                           const cudnnTensorDescriptor_t dyDesc,
                                                           const cudnnConvolutionDescriptor_t convDesc,
                                                           const cudnnTensorDescriptor_t dxDesc,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t* sizeInBytes,
                                                           const char* file, int line) {
    const Call c{"cudnnGetConvolutionBackwardDataWorkspaceSize", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, dxDesc, "dxDesc", wDesc, convDesc, dyDesc, "dyDesc", &p));
    return workspace_size(c, kBwdData, p, (int)algo, sizeInBytes);
}

// The backward-filter queries: x, dy → dw.
static cudnnStatus_t bwd_filter_query(const Call& c, bool timed, cudnnHandle_t handle, cudnnTensorDescriptor_t xDesc,
                                      cudnnTensorDescriptor_t dyDesc, cudnnConvolutionDescriptor_t convDesc,
                                      cudnnFilterDescriptor_t dwDesc, int requested, int* returned,
                                      cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", dwDesc, convDesc, dyDesc, "dyDesc", &p));
    return fill<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(c, kBwdFilter, p, timed,
                                                                                      requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                            const cudnnTensorDescriptor_t dyDesc,
                                                            const cudnnConvolutionDescriptor_t convDesc,
                                                            const cudnnFilterDescriptor_t dwDesc,
                                                            const int requestedAlgoCount, int* returnedAlgoCount,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t* perfResults,
                                                            const char* file, int line) {
    return bwd_filter_query({"cudnnGetConvolutionBackwardFilterAlgorithm_v7", file, line}, false, handle, xDesc, dyDesc,
                            convDesc, dwDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                          const cudnnTensorDescriptor_t dyDesc,
                                                          const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnFilterDescriptor_t dwDesc,
                                                          const int requestedAlgoCount, int* returnedAlgoCount,
                                                          cudnnConvolutionBwdFilterAlgoPerf_t* perfResults,
                                                          const char* file, int line) {
    return bwd_filter_query({"cudnnFindConvolutionBackwardFilterAlgorithm", file, line}, true, handle, xDesc, dyDesc,
                            convDesc, dwDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                             const cudnnTensorDescriptor_t dyDesc,
                                                             const cudnnConvolutionDescriptor_t convDesc,
                                                             const cudnnFilterDescriptor_t dwDesc,
                                                             cudnnConvolutionBwdFilterAlgo_t algo, size_t* sizeInBytes,
                                                             const char* file, int line) {
    const Call c{"cudnnGetConvolutionBackwardFilterWorkspaceSize", file, line};
    std::lock_guard<std::mutex> lk(g_mu);
    Problem p{};
    CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", dwDesc, convDesc, dyDesc, "dyDesc", &p));
    return workspace_size(c, kBwdFilter, p, (int)algo, sizeInBytes);
}

// ---------------------------------------------------------------------------------------------------- convolutions
// Each resolves its problem under the lock (descriptors are read at the call, as cuDNN reads them), then
// checks and queues outside it.

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void* alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void* x, const cudnnFilterDescriptor_t wDesc, const void* w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void* workSpace, size_t workSpaceSizeInBytes, const void* beta,
                                      const cudnnTensorDescriptor_t yDesc, void* y, const char* file, int line) {
    const Call c{"cudnnConvolutionForward", file, line};
    Problem p{};
    cudaStream_t stream = 0;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", wDesc, convDesc, yDesc, "yDesc", &p, &stream));
    }
    return run_pass(c, kFwd, p, stream, (int)algo, alpha, beta, x_operand(p, "x", x), w_operand(p, "w", w),
                    y_operand(p, "y", y), workSpace, workSpaceSizeInBytes);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void* alpha, const cudnnFilterDescriptor_t wDesc,
                                           const void* w, const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void* workSpace,
                                           size_t workSpaceSizeInBytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxDesc, void* dx, const char* file, int line) {
    const Call c{"cudnnConvolutionBackwardData", file, line};
    Problem p{};
    cudaStream_t stream = 0;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        CUDNN_TRY(resolve(c, handle, dxDesc, "dxDesc", wDesc, convDesc, dyDesc, "dyDesc", &p, &stream));
    }
    return run_pass(c, kBwdData, p, stream, (int)algo, alpha, beta, y_operand(p, "dy", dy), w_operand(p, "w", w),
                    x_operand(p, "dx", dx), workSpace, workSpaceSizeInBytes);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void* alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void* x,
                                             const cudnnTensorDescriptor_t dyDesc, const void* dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void* workSpace,
                                             size_t workSpaceSizeInBytes, const void* beta,
                                             const cudnnFilterDescriptor_t dwDesc, void* dw, const char* file,
                                             int line) {
    const Call c{"cudnnConvolutionBackwardFilter", file, line};
    Problem p{};
    cudaStream_t stream = 0;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        CUDNN_TRY(resolve(c, handle, xDesc, "xDesc", dwDesc, convDesc, dyDesc, "dyDesc", &p, &stream));
    }
    return run_pass(c, kBwdFilter, p, stream, (int)algo, alpha, beta, y_operand(p, "dy", dy), x_operand(p, "x", x),
                    w_operand(p, "dw", dw), workSpace, workSpaceSizeInBytes);
}
