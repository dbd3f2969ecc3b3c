/*
 * CUDA side of kernels/conv2d.h: every cuDNN call of y5 lives in this file. cuDNN's legacy (v7-style)
 * convolution API: cudnnConvolutionForward / BackwardData / BackwardFilter with algorithms from
 * cudnnGet*Algorithm_v7 (heuristics) or cudnnFind*Algorithm (timing), plus small kernels for the bias (added
 * in fprop; its gradient reduced in a fixed order), in f32 or f16 (float math, f16 storage, PyTorch's
 * PSEUDO_HALF_CONFIG), NCHW or NHWC (Conv2dGeom::nhwc), and the cuBLAS GEMMs of the 1×1 convolution over parts.
 * The legacy API is marked deprecated in
 * cuDNN 9 (warnings only with CUDNN_WARN_DEPRECATED) but fully present, and the same calls build with
 * cuDNN 8.9.
 * Tested against the CPU reference in tests/test_gpu_conv.cpp (f32) and tests/test_gpu_f16_conv.cpp (f16); NHWC
 * against NCHW in tests/test_gpu_conv_layout.cpp.
 */
#include <algorithm>
#include <array>
#include <climits>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/conv2d.h"
#include "kernels/cuda_utils.cuh"

namespace y5 {

namespace {

// ----------------------------------------------------------------------------------------------------
// Settings and the plan cache

struct Settings {
    size_t ws_limit = size_t(256) << 20;
    bool deterministic = true;
    bool allow_tf32 = true;
    bool benchmark = false;
};

std::mutex g_mu;  // guards g_settings and the cache
Settings g_settings;

struct PassChoice {
    bool chosen = false;
    int algo = 0;   // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    size_t ws = 0;  // workspace bytes (chunked: the most any part needs)
    int chunk = 0;  // > 0: no algorithm fits the limit at this batch; the pass runs over parts of `chunk` images
};

// Descriptors of one geometry (created once), a convolution descriptor per pass (each pass may settle on
// a different math type), and the algorithm chosen for each pass.
struct Plan {
    Conv2dGeom g{};
    int Ho = 0, Wo = 0;
    cudnnTensorDescriptor_t x = nullptr, y = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t conv[3] = {nullptr, nullptr, nullptr};
    PassChoice pass[3];

    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {  // no CUDNN_CHECK: a destructor must not throw; destroying a valid descriptor cannot fail
        for (auto& c : conv)
            if (c) cudnnDestroyConvolutionDescriptor(c);
        if (w) cudnnDestroyFilterDescriptor(w);
        if (y) cudnnDestroyTensorDescriptor(y);
        if (x) cudnnDestroyTensorDescriptor(x);
    }
};

// (device, N, C, H, W, K, R, S, stride, pad, f16, nhwc, deterministic, allow_tf32, benchmark, workspace limit)
using Key = std::array<int64_t, 16>;

// Lives as long as the program (never destroyed at exit, when cuDNN may already be unloaded);
// conv_clear_cache() frees the descriptors explicitly.
std::map<Key, std::unique_ptr<Plan>>& plans() {
    static auto* m = new std::map<Key, std::unique_ptr<Plan>>;
    return *m;
}

const char* pass_name(ConvPass p) { return p == ConvPass::Fprop ? "fprop" : p == ConvPass::Dgrad ? "dgrad" : "wgrad"; }

std::string geom_str(const Conv2dGeom& g) {
    char s[160];
    snprintf(s, sizeof s, "input (%d,%d,%d,%d), weight (%d,%d,%d,%d), stride %d, pad %d, %s, %s (N,C,H,W and K,C,R,S "
             "named in NCHW order)", g.N, g.C, g.H, g.W, g.K, g.C, g.R, g.S, g.stride, g.pad, g.f16 ? "f16" : "f32",
             g.nhwc ? "NHWC" : "NCHW");
    return s;
}

// f16: tensor-op math (tensor cores; PyTorch's setting for half). f32: TF32 only when allowed.
cudnnMathType_t base_math(const Settings& s, bool f16) {
    if (f16) return CUDNN_TENSOR_OP_MATH;
    return s.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

// A candidate's math type is allowed when it cannot use TF32 (or FP16 conversion) unless TF32 is allowed. For f16
// data every math type but ALLOW_CONVERSION (which has nothing to convert) keeps float accumulation; TF32 does
// not apply.
bool math_allowed(cudnnMathType_t m, const Settings& s, bool f16) {
    if (m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) return false;  // may down-convert f32 to f16
    if (f16) return true;
    if (!s.allow_tf32) return m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH;  // the descriptor stays FMA
    return true;
}

// The descriptor's math type for a chosen candidate: its own (as PyTorch sets it after choosing), except f32 with
// TF32 off, which stays CUDNN_FMA_MATH.
cudnnMathType_t chosen_math(cudnnMathType_t m, const Settings& s, bool f16) {
    return f16 || s.allow_tf32 ? m : CUDNN_FMA_MATH;
}

std::unique_ptr<Plan> make_plan(const Conv2dGeom& g, const Settings& s) {
    Y5_CHECK(g.N > 0 && g.C > 0 && g.H > 0 && g.W > 0 && g.K > 0 && g.R > 0 && g.S > 0 && g.stride > 0 && g.pad >= 0,
             "conv2d (cuDNN): bad geometry %s", geom_str(g).c_str());
    auto p = std::make_unique<Plan>();
    p->g = g;
    p->Ho = conv_out_size(g.H, g.R, g.stride, g.pad);
    p->Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    Y5_CHECK(p->Ho > 0 && p->Wo > 0, "conv2d (cuDNN): empty output for %s", geom_str(g).c_str());
    // cuDNN's 4-d descriptors index with 32-bit ints.
    const int64_t in_elems = (int64_t)g.N * g.C * g.H * g.W, out_elems = (int64_t)g.N * g.K * p->Ho * p->Wo;
    Y5_CHECK(in_elems <= INT_MAX && out_elems <= INT_MAX,
             "conv2d (cuDNN): tensors over 2^31 elements are not supported (%s); lower the batch size",
             geom_str(g).c_str());

    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
    const cudnnDataType_t dt = g.f16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
    // The dimensions are given in NCHW order whatever the format; the format says how memory holds them.
    const cudnnTensorFormat_t fmt = g.nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, fmt, dt, g.N, g.C, g.H, g.W));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, fmt, dt, g.N, g.K, p->Ho, p->Wo));
    // Filter (K, C, R, S) under CUDNN_TENSOR_NCHW (PyTorch's weight layout), (K, R, S, C) under CUDNN_TENSOR_NHWC.
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, dt, fmt, g.K, g.C, g.R, g.S));
    for (auto& c : p->conv) {
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
        // Cross-correlation (no kernel flip), as torch.nn.Conv2d; f32 accumulation (for f16 data too).
        CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, g.pad, g.pad, g.stride, g.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                    CUDNN_DATA_FLOAT));
        CUDNN_CHECK(cudnnSetConvolutionMathType(c, base_math(s, g.f16)));
    }
    int n = 0, k = 0, h = 0, w = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv[0], p->x, p->w, &n, &k, &h, &w));
    Y5_CHECK(n == g.N && k == g.K && h == p->Ho && w == p->Wo,
             "internal: cuDNN's output (%d,%d,%d,%d) differs from y5's (%d,%d,%d,%d) for %s", n, k, h, w, g.N, g.K, p->Ho,
             p->Wo, geom_str(g).c_str());
    return p;
}

// The first usable candidate in cuDNN's order. For each: its status, determinism and math type, then the
// workspace it needs with the descriptor set to its math type (authoritative, and a candidate the
// descriptor cannot run fails here and is skipped). When every usable candidate needs more than the workspace
// limit: the one that needs least (its ws over the limit: plan_locked() then splits the batch).
template <class Perf, class WsFn>
PassChoice choose(const std::vector<Perf>& perf, int count, cudnnConvolutionDescriptor_t conv, const Settings& s,
                  WsFn workspace_of, const Plan& p, ConvPass pass) {
    std::string seen;
    PassChoice least;
    cudnnMathType_t least_math = CUDNN_DEFAULT_MATH;
    for (int i = 0; i < count; ++i) {
        const Perf& c = perf[i];
        char line[128];
        snprintf(line, sizeof line, " [algo %d: status %d, %s, math %d", (int)c.algo, (int)c.status,
                 c.determinism == CUDNN_DETERMINISTIC ? "deterministic" : "non-deterministic", (int)c.mathType);
        seen += line;
        size_t ws = 0;
        const bool usable = c.status == CUDNN_STATUS_SUCCESS &&
                            (!s.deterministic || c.determinism == CUDNN_DETERMINISTIC) &&
                            math_allowed(c.mathType, s, p.g.f16);
        if (usable) CUDNN_CHECK(cudnnSetConvolutionMathType(conv, chosen_math(c.mathType, s, p.g.f16)));
        const bool sized = usable && workspace_of(c.algo, &ws) == CUDNN_STATUS_SUCCESS;
        if (sized) {
            snprintf(line, sizeof line, ", workspace %zu", ws);
            seen += line;
        }
        seen += "]";
        if (!sized) continue;
        if (ws <= s.ws_limit) {
            PassChoice r;
            r.chosen = true;
            r.algo = (int)c.algo;
            r.ws = ws;
            return r;
        }
        if (!least.chosen || ws < least.ws) {
            least.chosen = true;
            least.algo = (int)c.algo;
            least.ws = ws;
            least_math = chosen_math(c.mathType, s, p.g.f16);
        }
    }
    Y5_CHECK(least.chosen, "conv2d (cuDNN): no %s algorithm for %s%s; candidates:%s", pass_name(pass),
             geom_str(p.g).c_str(), s.deterministic ? " that is deterministic" : "", seen.c_str());
    Y5_CHECK(p.g.N > 1, "conv2d (cuDNN): every %s algorithm for %s%s needs more than the workspace limit of %zu bytes "
             "(the least %zu): raise --workspace; candidates:%s", pass_name(pass), geom_str(p.g).c_str(),
             s.deterministic ? " that is deterministic" : "", s.ws_limit, least.ws, seen.c_str());
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, least_math));
    return least;
}

PassChoice select_fprop(cudnnHandle_t h, Plan& p, const Settings& s) {
    int max_count = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(std::max(max_count, 1));
    int count = 0;
    cudnnConvolutionDescriptor_t conv = p.conv[0];
    if (s.benchmark)
        CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(h, p.x, p.w, conv, p.y, max_count, &count, perf.data()));
    else
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, p.x, p.w, conv, p.y, max_count, &count, perf.data()));
    return choose(perf, count, conv, s,
                  [&](cudnnConvolutionFwdAlgo_t a, size_t* ws) {
                      return cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, conv, p.y, a, ws);
                  },
                  p, ConvPass::Fprop);
}

PassChoice select_dgrad(cudnnHandle_t h, Plan& p, const Settings& s) {
    int max_count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(std::max(max_count, 1));
    int count = 0;
    cudnnConvolutionDescriptor_t conv = p.conv[1];
    // Backward data: w, dy → dx (dx described by the input descriptor).
    if (s.benchmark)
        CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(h, p.w, p.y, conv, p.x, max_count, &count, perf.data()));
    else
        CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p.w, p.y, conv, p.x, max_count, &count, perf.data()));
    return choose(perf, count, conv, s,
                  [&](cudnnConvolutionBwdDataAlgo_t a, size_t* ws) {
                      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w, p.y, conv, p.x, a, ws);
                  },
                  p, ConvPass::Dgrad);
}

PassChoice select_wgrad(cudnnHandle_t h, Plan& p, const Settings& s) {
    int max_count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(std::max(max_count, 1));
    int count = 0;
    cudnnConvolutionDescriptor_t conv = p.conv[2];
    // Backward filter: x, dy → dw.
    if (s.benchmark)
        CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(h, p.x, p.y, conv, p.w, max_count, &count, perf.data()));
    else
        CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p.x, p.y, conv, p.w, max_count, &count, perf.data()));
    return choose(perf, count, conv, s,
                  [&](cudnnConvolutionBwdFilterAlgo_t a, size_t* ws) {
                      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv, p.w, a, ws);
                  },
                  p, ConvPass::Wgrad);
}

// The plan for g under settings s with `pass` chosen; g_mu held. Where no algorithm fits the workspace limit at
// g's batch, the pass runs over parts of ceil(N/2) images (and the rest), each part planned the same way, so a
// convolution never needs more than the limit (the memory plan counts on it) unless one image's every algorithm
// does, which is an error (choose()). Seen on an H200: every deterministic dgrad of yolov5n's stride-2
// (N,16,320,320) layer needs about 10 MB per image, so batch 32 exceeded the default 256 MiB.
Plan& plan_locked(CudaContext* ctx, const Conv2dGeom& g, ConvPass pass, const Settings& s) {
    const Key key{ctx->device, g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, g.f16, g.nhwc, s.deterministic,
                  s.allow_tf32, s.benchmark, (int64_t)s.ws_limit};
    auto& m = plans();
    auto it = m.find(key);
    if (it == m.end()) it = m.emplace(key, make_plan(g, s)).first;
    Plan& p = *it->second;
    const int i = (int)pass;
    if (!p.pass[i].chosen) {
        PassChoice c = pass == ConvPass::Fprop ? select_fprop(ctx->cudnn, p, s)
                       : pass == ConvPass::Dgrad ? select_dgrad(ctx->cudnn, p, s)
                                                 : select_wgrad(ctx->cudnn, p, s);
        if (c.ws > s.ws_limit) {
            Conv2dGeom part = g;
            part.N = (g.N + 1) / 2;
            c.chunk = part.N;
            c.ws = plan_locked(ctx, part, pass, s).pass[i].ws;
            part.N = g.N - c.chunk;  // the rest: ceil(N/2) + floor(N/2)
            if (part.N > 0) c.ws = std::max(c.ws, plan_locked(ctx, part, pass, s).pass[i].ws);
        }
        p.pass[i] = c;
    }
    return p;
}

// The plan for g under the current settings with `pass` chosen. Plans are never freed while in use except
// by conv_clear_cache(), so the reference stays valid for the call.
Plan& plan_for(CudaContext* ctx, const Conv2dGeom& g, ConvPass pass) {
    Y5_CHECK(ctx && ctx->cudnn, "conv2d (cuDNN): no CUDA context");
    std::lock_guard<std::mutex> lk(g_mu);
    const Settings s = g_settings;
    return plan_locked(ctx, g, pass, s);
}

// A chunked pass: f(part, n0) for each part of `chunk` images (the last may be smaller), part being g for its
// images and n0 its first image (images are outermost in NCHW and NHWC alike, so a part's tensors start at n0's).
template <class F> void over_parts(const Conv2dGeom& g, int chunk, F f) {
    for (int n0 = 0; n0 < g.N; n0 += chunk) {
        Conv2dGeom part = g;
        part.N = std::min(chunk, g.N - n0);
        f(part, (int64_t)n0);
    }
}

void check_workspace(const Plan& p, ConvPass pass, void* ws, size_t bytes) {
    const size_t need = p.pass[(int)pass].ws;
    Y5_CHECK(bytes >= need && (need == 0 || ws != nullptr),
             "conv2d (cuDNN) %s: %zu workspace bytes given, %zu needed (ask conv2d_workspace_cuda first) for %s",
             pass_name(pass), bytes, need, geom_str(p.g).c_str());
}

// ----------------------------------------------------------------------------------------------------
// Bias kernels. Element i of an output of N·K·P elements is in channel (i / cstride) % K: cstride = P for NCHW
// (N,K,P), 1 for NHWC (N,P,K).

// out[i] += b[channel of i] over the N·K·P outputs (f32, after the convolution).
__global__ void bias_add_kernel(float* out, const float* b, int64_t total, int K, int64_t cstride) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        out[i] += b[(i / cstride) % K];
}

// out[i] = b[channel of i] (f16, before cuDNN adds the convolution in float with beta = 1: one rounding per output).
__global__ void bias_fill_kernel(f16* out, const f16* b, int64_t total, int K, int64_t cstride) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = b[(i / cstride) % K];
}

// out[n,k,p] = st(acc[n,k,p] + b[k]) (b may be null): the f16 parts' float sum rounded once.
__global__ void round_bias_kernel(f16* out, const float* acc, const f16* b, int64_t total, int K, int64_t P) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = st<f16>(b ? acc[i] + ld(b[(i / P) % K]) : acc[i]);
}

// db[k] += Σ_n Σ_p dy[n,k,p]: one block per channel (kBlock threads), each thread a fixed strided subset, then
// block_sum; the order depends only on the shape, so the result is deterministic. Summed in float, db[k] rounded
// once (f16). dy[n,k,p] is at n·K·P + k·cs + p·ps: NCHW cs = P, ps = 1; NHWC cs = 1, ps = K (the same terms in the
// same order, so both layouts give the same bits; NHWC's reads are strided, fine for a K-element result).
template <class T>
__global__ void bias_grad_kernel(T* db, const T* dy, int N, int K, int64_t P, int64_t cs, int64_t ps) {
    const int k = blockIdx.x;
    float acc = 0.0f;
    for (int n = 0; n < N; ++n) {
        const T* img = dy + (int64_t)n * K * P + k * cs;
        for (int64_t p = threadIdx.x; p < P; p += blockDim.x) acc += ld(img[p * ps]);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) db[k] = st<T>(ld(db[k]) + acc);
}

// dweight[k·C + c0 + c] += Σ_n partial[n, k, c] over (K, Ci), images added in order (deterministic); the partials
// are float, dweight rounded once (f16).
template <class T>
__global__ void sum_partials_kernel(T* dweight, const float* partial, int N, int K, int Ci, int C, int c0) {
    const int64_t kc = (int64_t)K * Ci;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < kc; i += (int64_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int n = 0; n < N; ++n) acc += partial[(int64_t)n * kc + i];
        const int k = (int)(i / Ci), c = (int)(i - (int64_t)k * Ci);
        T& d = dweight[(int64_t)k * C + c0 + c];
        d = st<T>(ld(d) + acc);
    }
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// Launchers

size_t conv2d_workspace_cuda(CudaContext* ctx, const Conv2dGeom& g, ConvPass pass) {
    return plan_for(ctx, g, pass).pass[(int)pass].ws;
}

// The passes for storage type T (float or f16), checked against g.f16.
template <class T> static void check_dtype(const Conv2dGeom& g) {
    Y5_CHECK(g.f16 == (std::is_same_v<T, f16>), "conv2d (cuDNN): %s pointers for a geometry of %s", g.f16 ? "f32" : "f16",
             geom_str(g).c_str());
}

template <class T>
static void fprop(CudaContext* ctx, const Conv2dGeom& g, T* out, const T* inp, const T* weight, const T* bias,
                  void* workspace, size_t workspace_bytes) {
    check_dtype<T>(g);
    Plan& p = plan_for(ctx, g, ConvPass::Fprop);
    check_workspace(p, ConvPass::Fprop, workspace, workspace_bytes);
    const int64_t P = (int64_t)p.Ho * p.Wo, total = (int64_t)g.N * g.K * P;
    if (const int c = p.pass[0].chunk) {
        over_parts(g, c, [&](const Conv2dGeom& part, int64_t n0) {
            fprop(ctx, part, out + n0 * g.K * P, inp + n0 * g.C * g.H * g.W, weight, bias, workspace, workspace_bytes);
        });
        return;
    }
    // f16 with bias: out = b first, then out = conv + 1·out in float inside cuDNN, rounded once. f32: the bias is
    // added after the convolution.
    constexpr bool half = std::is_same_v<T, f16>;
    if constexpr (half) {
        if (bias) {
            bias_fill_kernel<<<grid_1d(total), kBlock, 0, ctx->stream>>>(out, bias, total, g.K, g.nhwc ? 1 : P);
            Y5_LAUNCH_CHECK();
        }
    }
    const float one = 1.0f, zero = 0.0f;
    // y = 1·conv(x, w) + beta·y (alpha and beta are float for f32 and for PSEUDO_HALF_CONFIG)
    CUDNN_CHECK(cudnnConvolutionForward(ctx->cudnn, &one, p.x, inp, p.w, weight, p.conv[0],
                                        (cudnnConvolutionFwdAlgo_t)p.pass[0].algo, workspace, workspace_bytes,
                                        half && bias ? &one : &zero, p.y, out));
    if constexpr (!half) {
        if (bias) {
            bias_add_kernel<<<grid_1d(total), kBlock, 0, ctx->stream>>>(out, bias, total, g.K, g.nhwc ? 1 : P);
            Y5_LAUNCH_CHECK();
        }
    }
}

template <class T>
static void dgrad(CudaContext* ctx, const Conv2dGeom& g, T* dinp, const T* dout, const T* weight, void* workspace,
                  size_t workspace_bytes, bool fresh) {
    check_dtype<T>(g);
    Plan& p = plan_for(ctx, g, ConvPass::Dgrad);
    check_workspace(p, ConvPass::Dgrad, workspace, workspace_bytes);
    if (const int c = p.pass[1].chunk) {
        over_parts(g, c, [&](const Conv2dGeom& part, int64_t n0) {
            dgrad(ctx, part, dinp + n0 * g.C * g.H * g.W, dout + n0 * g.K * p.Ho * p.Wo, weight, workspace,
                  workspace_bytes, fresh);
        });
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    // dx = 1·dgrad(w, dy) + beta·dx: beta 0 writes a fresh gradient (cuDNN then does not read dx), beta 1 adds to one
    // that has other producers.
    CUDNN_CHECK(cudnnConvolutionBackwardData(ctx->cudnn, &one, p.w, weight, p.y, dout, p.conv[1],
                                             (cudnnConvolutionBwdDataAlgo_t)p.pass[1].algo, workspace, workspace_bytes,
                                             fresh ? &zero : &one, p.x, dinp));
}

template <class T>
static void wgrad(CudaContext* ctx, const Conv2dGeom& g, T* dweight, T* dbias, const T* dout, const T* inp,
                  void* workspace, size_t workspace_bytes) {
    check_dtype<T>(g);
    if (dweight) {
        Plan& p = plan_for(ctx, g, ConvPass::Wgrad);
        check_workspace(p, ConvPass::Wgrad, workspace, workspace_bytes);
        const float one = 1.0f;
        if (const int c = p.pass[2].chunk) {  // each part adds its images' sum to dw; the bias gradient below, once
            over_parts(g, c, [&](const Conv2dGeom& part, int64_t n0) {
                wgrad<T>(ctx, part, dweight, nullptr, dout + n0 * g.K * p.Ho * p.Wo, inp + n0 * g.C * g.H * g.W,
                         workspace, workspace_bytes);
            });
        } else {  // dw = 1·wgrad(x, dy) + 1·dw
            CUDNN_CHECK(cudnnConvolutionBackwardFilter(ctx->cudnn, &one, p.x, inp, p.y, dout, p.conv[2],
                                                       (cudnnConvolutionBwdFilterAlgo_t)p.pass[2].algo, workspace,
                                                       workspace_bytes, &one, p.w, dweight));
        }
    }
    if (dbias) {
        Y5_CHECK(ctx, "conv2d (cuDNN): no CUDA context");
        const int64_t P = (int64_t)conv_out_size(g.H, g.R, g.stride, g.pad) * conv_out_size(g.W, g.S, g.stride, g.pad);
        const int64_t cs = g.nhwc ? 1 : P, ps = g.nhwc ? g.K : 1;  // dout[n,k,p] at n·K·P + k·cs + p·ps
        bias_grad_kernel<T><<<g.K, kBlock, 0, ctx->stream>>>(dbias, dout, g.N, g.K, P, cs, ps);
        Y5_LAUNCH_CHECK();
    }
}

void conv2d_fprop_cuda(CudaContext* ctx, const Conv2dGeom& g, float* out, const float* inp, const float* weight,
                       const float* bias, void* workspace, size_t workspace_bytes) {
    fprop(ctx, g, out, inp, weight, bias, workspace, workspace_bytes);
}
void conv2d_fprop_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* out, const f16* inp, const f16* weight,
                       const f16* bias, void* workspace, size_t workspace_bytes) {
    fprop(ctx, g, out, inp, weight, bias, workspace, workspace_bytes);
}
void conv2d_dgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, float* dinp, const float* dout, const float* weight,
                       void* workspace, size_t workspace_bytes, bool fresh) {
    dgrad(ctx, g, dinp, dout, weight, workspace, workspace_bytes, fresh);
}
void conv2d_dgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* dinp, const f16* dout, const f16* weight,
                       void* workspace, size_t workspace_bytes, bool fresh) {
    dgrad(ctx, g, dinp, dout, weight, workspace, workspace_bytes, fresh);
}
void conv2d_wgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, float* dweight, float* dbias, const float* dout,
                       const float* inp, void* workspace, size_t workspace_bytes) {
    wgrad(ctx, g, dweight, dbias, dout, inp, workspace, workspace_bytes);
}
void conv2d_wgrad_cuda(CudaContext* ctx, const Conv2dGeom& g, f16* dweight, f16* dbias, const f16* dout,
                       const f16* inp, void* workspace, size_t workspace_bytes) {
    wgrad(ctx, g, dweight, dbias, dout, inp, workspace, workspace_bytes);
}

// ----------------------------------------------------------------------------------------------------
// 1×1 convolution over channel parts (cuBLAS). Row-major (K,P) = (K,Ci)·(Ci,P) is column-major
// (P,K) = (P,Ci)·(Ci,K), so each row-major product below is written as its column-major transpose.
// f32: cublasSgemmStridedBatched. f16: cublasGemmStridedBatchedEx, f16 A and B, C f16 or float, CUBLAS_COMPUTE_32F
// with float alpha/beta.

static void set_gemm_math(CudaContext* ctx, bool f16) {
    // f16: tensor cores, with every reduction (split-K) kept in float, so each output is rounded once.
    const cublasMath_t m = f16 ? (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
                           : conv_allow_tf32() ? CUBLAS_TF32_TENSOR_OP_MATH
                                               : CUBLAS_DEFAULT_MATH;
    CUBLAS_CHECK(cublasSetMathMode(ctx->cublas, m));
}

template <class T> constexpr cudaDataType_t cuda_type() { return std::is_same_v<T, f16> ? CUDA_R_16F : CUDA_R_32F; }

// Column-major strided-batched C = alpha·op(A)·op(B) + beta·C with A, B of type T and C of type TC (float or
// f16 for T = f16; float for T = float).
template <class T, class TC>
static void gemm_batched(CudaContext* ctx, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                         const T* A, int lda, long long sa, const T* B, int ldb, long long sb, float beta, TC* C,
                         int ldc, long long sc, int batch) {
    const float one = 1.0f;
    if constexpr (std::is_same_v<T, float>) {
        static_assert(std::is_same_v<TC, float>, "f32 GEMMs write f32");
        CUBLAS_CHECK(cublasSgemmStridedBatched(ctx->cublas, ta, tb, m, n, k, &one, A, lda, sa, B, ldb, sb, &beta, C,
                                               ldc, sc, batch));
    } else {
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx->cublas, ta, tb, m, n, k, &one, A, cuda_type<T>(), lda, sa, B,
                                                cuda_type<T>(), ldb, sb, &beta, C, cuda_type<TC>(), ldc, sc, batch,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

size_t conv1x1_parts_workspace_cuda(int N, int K, const int* Cs, int m) {
    int cmax = 0;
    for (int i = 0; i < m; ++i) cmax = std::max(cmax, Cs[i]);
    return (size_t)N * K * cmax * sizeof(float);
}

size_t conv1x1_parts_fprop_workspace_cuda(int N, int K, int P, bool f16) {
    return f16 ? (size_t)N * K * P * sizeof(float) : 0;
}

template <class T>
static void parts_fprop(CudaContext* ctx, T* out, const T* const* xs, const int* Cs, int m, const T* weight,
                        const T* bias, int N, int K, int P, void* workspace, size_t workspace_bytes) {
    int C = 0;
    for (int i = 0; i < m; ++i) C += Cs[i];
    constexpr bool half = std::is_same_v<T, f16>;
    set_gemm_math(ctx, half);
    // f32: straight into out. f16: the parts summed in a float buffer, then rounded once with the bias.
    using Acc = float;
    Acc* acc = nullptr;
    if constexpr (half) {
        const size_t need = conv1x1_parts_fprop_workspace_cuda(N, K, P, true);
        Y5_CHECK(workspace && workspace_bytes >= need, "conv1x1 parts (f16): %zu workspace bytes given, %zu needed",
                 workspace_bytes, need);
        acc = static_cast<Acc*>(workspace);
    } else {
        acc = out;
    }
    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++])  // per image n: y_n (+)= W_i·x_{i,n}
        gemm_batched(ctx, CUBLAS_OP_N, CUBLAS_OP_N, P, K, Cs[i], xs[i], P, (long long)Cs[i] * P, weight + c0, C, 0,
                     i ? 1.0f : 0.0f, acc, P, (long long)K * P, N);
    const int64_t total = (int64_t)N * K * P;
    if constexpr (half) {
        round_bias_kernel<<<grid_1d(total), kBlock, 0, ctx->stream>>>(out, acc, bias, total, K, P);
        Y5_LAUNCH_CHECK();
    } else if (bias) {
        bias_add_kernel<<<grid_1d(total), kBlock, 0, ctx->stream>>>(out, bias, total, K, P);
        Y5_LAUNCH_CHECK();
    }
}

template <class T>
static void parts_backward(CudaContext* ctx, T* const* dxs, const bool* dx_fresh, T* dweight, T* dbias, const T* dout,
                           const T* const* xs, const int* Cs, int m, const T* weight, int N, int K, int P,
                           void* workspace, size_t workspace_bytes) {
    int C = 0;
    for (int i = 0; i < m; ++i) C += Cs[i];
    set_gemm_math(ctx, std::is_same_v<T, f16>);
    if (dbias) {
        bias_grad_kernel<T><<<K, kBlock, 0, ctx->stream>>>(dbias, dout, N, K, P, P, 1);
        Y5_LAUNCH_CHECK();
    }
    if (dweight)
        Y5_CHECK(workspace && workspace_bytes >= conv1x1_parts_workspace_cuda(N, K, Cs, m),
                 "conv1x1 parts: %zu workspace bytes given, %zu needed", workspace_bytes,
                 conv1x1_parts_workspace_cuda(N, K, Cs, m));
    float* partial = static_cast<float*>(workspace);
    for (int i = 0, c0 = 0; i < m; c0 += Cs[i++]) {
        const int Ci = Cs[i];
        if (dweight) {  // partial_n (K,Ci) = dy_n (K,P)·x_{i,n}ᵀ in float, then dW_i += Σ_n partial_n
            gemm_batched(ctx, CUBLAS_OP_T, CUBLAS_OP_N, Ci, K, P, xs[i], P, (long long)Ci * P, dout, P,
                         (long long)K * P, 0.0f, partial, Ci, (long long)K * Ci, N);
            sum_partials_kernel<T><<<grid_1d((int64_t)K * Ci), kBlock, 0, ctx->stream>>>(dweight, partial, N, K, Ci,
                                                                                           C, c0);
            Y5_LAUNCH_CHECK();
        }
        if (dxs[i])  // dx_{i,n} (Ci,P) (+)= W_iᵀ (Ci,K)·dy_n (K,P): beta 0 writes (dx not read), beta 1 adds
            gemm_batched(ctx, CUBLAS_OP_N, CUBLAS_OP_T, P, Ci, K, dout, P, (long long)K * P, weight + c0, C, 0,
                         dx_fresh[i] ? 0.0f : 1.0f, dxs[i], P, (long long)Ci * P, N);
    }
}

void conv1x1_parts_fprop_cuda(CudaContext* ctx, float* out, const float* const* xs, const int* Cs, int m,
                              const float* weight, const float* bias, int N, int K, int P) {
    parts_fprop(ctx, out, xs, Cs, m, weight, bias, N, K, P, nullptr, 0);
}
void conv1x1_parts_fprop_cuda(CudaContext* ctx, f16* out, const f16* const* xs, const int* Cs, int m, const f16* weight,
                              const f16* bias, int N, int K, int P, void* workspace, size_t workspace_bytes) {
    parts_fprop(ctx, out, xs, Cs, m, weight, bias, N, K, P, workspace, workspace_bytes);
}
void conv1x1_parts_backward_cuda(CudaContext* ctx, float* const* dxs, const bool* dx_fresh, float* dweight,
                                 float* dbias, const float* dout, const float* const* xs, const int* Cs, int m,
                                 const float* weight, int N, int K, int P, void* workspace, size_t workspace_bytes) {
    parts_backward(ctx, dxs, dx_fresh, dweight, dbias, dout, xs, Cs, m, weight, N, K, P, workspace, workspace_bytes);
}
void conv1x1_parts_backward_cuda(CudaContext* ctx, f16* const* dxs, const bool* dx_fresh, f16* dweight, f16* dbias,
                                 const f16* dout, const f16* const* xs, const int* Cs, int m, const f16* weight, int N,
                                 int K, int P, void* workspace, size_t workspace_bytes) {
    parts_backward(ctx, dxs, dx_fresh, dweight, dbias, dout, xs, Cs, m, weight, N, K, P, workspace, workspace_bytes);
}

// ----------------------------------------------------------------------------------------------------
// Settings

void conv_set_workspace_limit(size_t bytes) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_settings.ws_limit = bytes;
}
void conv_set_deterministic(bool on) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_settings.deterministic = on;
}
void conv_set_allow_tf32(bool on) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_settings.allow_tf32 = on;
}
void conv_set_benchmark(bool on) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_settings.benchmark = on;
}
size_t conv_workspace_limit() {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_settings.ws_limit;
}
bool conv_deterministic() {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_settings.deterministic;
}
bool conv_allow_tf32() {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_settings.allow_tf32;
}
bool conv_benchmark() {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_settings.benchmark;
}

void conv_clear_cache() {
    std::lock_guard<std::mutex> lk(g_mu);
    plans().clear();
}

}  // namespace y5
