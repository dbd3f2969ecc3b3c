/*
 * y5's hand-written CUDA kernels at yolov5n's training shapes (640, batch 16), in the manner of llm.c's
 * dev/cuda: random inputs, the CPU reference (kernels/<op>.h), the GPU result checked against it
 * (|gpu − cpu| ≤ atol + rtol·|cpu|, max error printed; any mismatch makes the exit status 1), then the
 * median time of --repeats runs with the L2 cache flushed before each, the effective bandwidth from the
 * bytes the op must move, that as a share of the device's measured device-to-device copy bandwidth, and
 * beside it the baseline the kernel replaces where there is one (cuDNN, cudaMemcpy2D, cuBLAS or the CPU
 * path), whose result is checked the same way.
 *   ./build/bench_kernels [--repeats 50] [--batch 16] [--op NAME[,NAME...]] [--imgsz 640]
 * --op (repeatable, or a comma list) runs only the named benchmarks, as llm.c's one-kernel dev/cuda programs
 * do; --help lists the names, an unknown one is an error (checked before looking for a GPU). Without --op every
 * benchmark runs except conv_layout (cuDNN NCHW vs NHWC, issue #14; --op conv_layout, its own gpu_check step),
 * which prints its own per-geometry table and adds its totals to the final one; --imgsz scales its geometries.
 * NMS (val.py's settings at 640) is timed against the download of the decoded tensor + the CPU reference.
 * Without a usable GPU it prints "no usable CUDA device: <why>" and exits 0.
 *
 * "Bytes the op must move" is napkin math, given per op below: the least traffic a fused implementation
 * needs (a BatchNorm in training mode must read its input twice, once for the statistics and once to
 * normalise, unless the input fits in L2), so "% of copy" says how far an op is from a perfect one, not
 * only how fast our own kernel sequence runs.
 * yolov5n at 640 (width 0.25): P1 16×320², P2 32×160², P3 64×80², P4 128×40², P5 256×20²; SPPF pools its
 * cv1 output, 128×20²; the head upsamples 128×20² and 64×40² and concatenates 128+128×40² and 64+64×80²;
 * every C3 concatenates its two halves (16+16×160² in layer 2); ECA (yolov5n-eca, k 3) follows the P3 C3
 * (64×80²) and SPPF (256×20²).
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cstdio>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "bench/bench.h"
#include "engine/app/main.h"
#include "engine/core/arena.h"
#include "engine/ops/ops.h"
#include "engine/autograd/optim.h"
#include "engine/core/rng.h"
#include "engine/app/memory.h"
#include "kernels/activation.h"
#include "kernels/batchnorm.h"
#include "kernels/concat.h"
#include "kernels/conv2d.h"
#include "kernels/eca.h"
#include "kernels/image.h"
#include "kernels/loss.h"
#include "kernels/nms.h"
#include "kernels/pool.h"
#include "kernels/sgd.h"
#include "kernels/upsample.h"
#include "layers/yolo.h"

using namespace y5;
using namespace y5bench;

namespace {

constexpr int64_t kYolov5nParams = 1872157;  // y5train --cfg config/models/yolov5n.yaml --summary
const Act kSiLU{ActKind::SiLU}, kSigmoid{ActKind::Sigmoid};
const float kOne = 1.f, kZero = 0.f;

// One line of the final table. bytes: what the op must move; pct: whether "% of copy" means anything
// (not for host-to-device uploads or ops dominated by host work).
struct Row {
    std::string op, shape;
    double ms = 0, bytes = 0;
    bool pct = true;
    std::string base;
    double base_ms = 0;
};

// State the cases share: the device, a device arena (reset between cases), the random stream, the
// table and whether every check passed.
struct Bench {
    CudaContext* ctx;
    Bencher& B;
    Arena& dev;
    int repeats;
    Rng rng{20240601, 7};
    bool ok = true;
    std::vector<Row> rows;

    Bench(CudaContext* c, Bencher& bencher, Arena& arena, int r) : ctx(c), B(bencher), dev(arena), repeats(r) {}
    float* dalloc(int64_t n) { return static_cast<float*>(dev.alloc((size_t)n * sizeof(float))); }
    float* upload(const std::vector<float>& h) {
        float* d = dalloc((int64_t)h.size());
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
        return d;
    }
    std::vector<float> download(const float* d, int64_t n) {
        B.sync();
        std::vector<float> h((size_t)n);
        CUDA_CHECK(cudaMemcpy(h.data(), d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
        return h;
    }
    std::vector<float> uniform(int64_t n, float lo, float hi) {
        std::vector<float> v((size_t)n);
        for (float& x : v) x = rng.uniform(lo, hi);
        return v;
    }
    void check(const std::string& what, const float* d, const std::vector<float>& want, double atol, double rtol) {
        ok = check_close(what, download(d, (int64_t)want.size()), want, atol, rtol) && ok;
    }
    // Runs a library baseline once. A library that refuses (a mode this device or version lacks) is
    // reported and its baseline left out, rather than failing the benchmark of our kernel.
    template <class F> bool baseline_runs(const char* name, F&& f) {
        try {
            f();
            B.sync();
            return true;
        } catch (const Error& e) {
            std::printf("  --   baseline %s unavailable: %s\n", name, e.what());
            return false;
        }
    }
};

std::string shape_str(std::initializer_list<int64_t> dims) {
    std::string s = "(";
    for (int64_t d : dims) s += (s.size() > 1 ? "," : "") + std::to_string(d);
    return s + ")";
}

// ---- cuDNN descriptors for the baselines (legacy API, f32 NCHW)

struct TensorDesc {
    cudnnTensorDescriptor_t d = nullptr;
    TensorDesc(int n, int c, int h, int w) {
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
        CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
    }
    ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};

// SiLU is cuDNN's swish with β = 1 (CUDNN_ACTIVATION_SWISH, cuDNN ≥ 8.0).
struct SwishDesc {
    cudnnActivationDescriptor_t d = nullptr;
    SwishDesc() {
        CUDNN_CHECK(cudnnCreateActivationDescriptor(&d));
        CUDNN_CHECK(cudnnSetActivationDescriptor(d, CUDNN_ACTIVATION_SWISH, CUDNN_NOT_PROPAGATE_NAN, 0.0));
        CUDNN_CHECK(cudnnSetActivationDescriptorSwishBeta(d, 1.0));
    }
    ~SwishDesc() { cudnnDestroyActivationDescriptor(d); }
};

struct MaxPoolDesc {
    cudnnPoolingDescriptor_t d = nullptr;
    MaxPoolDesc(int k, int stride, int pad) {
        CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d));
        CUDNN_CHECK(cudnnSetPooling2dDescriptor(d, CUDNN_POOLING_MAX, CUDNN_NOT_PROPAGATE_NAN, k, k, pad, pad, stride,
                                                stride));
    }
    ~MaxPoolDesc() { cudnnDestroyPoolingDescriptor(d); }
};

// The baseline channel concat: input (N,Ci,HW) into channels [c0, c0+Ci) of (N,Co,HW) as one 2-D copy
// (N rows of Ci·HW floats, destination pitch Co·HW floats).
void concat_memcpy2d(float* out, const float* inp, int N, int Ci, int HW, int Co, int c0, cudaStream_t s) {
    CUDA_CHECK(cudaMemcpy2DAsync(out + (int64_t)c0 * HW, (size_t)Co * HW * sizeof(float), inp,
                                 (size_t)Ci * HW * sizeof(float), (size_t)Ci * HW * sizeof(float), N,
                                 cudaMemcpyDeviceToDevice, s));
}

// ----------------------------------------------------------------------------------------------------
// Conv's BatchNorm (training) + SiLU, forward, checked against the unfused CPU pair (BN, then SiLU). Ours:
// batchnorm2d's statistics kernels, then one normalise+SiLU pass (2 reads + 1 write of n floats).
// Baseline: cudnnBatchNormalizationForwardTraining + cudnnActivationForward(swish), which also writes and
// rereads the BN output. Must move: read x twice (statistics, normalise), write y: 12n bytes.

void bn_silu_forward(Bench& b, int N, int C, int H, int W) {
    const int HW = H * W;
    const int64_t n = (int64_t)N * C * HW;
    const float eps = 1e-3f, momentum = 0.03f;  // YOLOv5's BatchNorm2d settings
    const std::string shape = shape_str({N, C, H, W});
    std::vector<float> x = b.uniform(n, -2.f, 3.f), gamma = b.uniform(C, 0.5f, 1.5f), beta = b.uniform(C, -0.5f, 0.5f);
    const std::vector<float> rm0(C, 0.f), rv0(C, 1.f);

    std::vector<float> tmp(n), y(n), mean(C), invstd(C), rm = rm0, rv = rv0;
    batchnorm_forward_train_cpu(tmp.data(), mean.data(), invstd.data(), rm.data(), rv.data(), x.data(), gamma.data(),
                                beta.data(), N, C, HW, eps, momentum, kNoAct);
    act_forward_cpu(y.data(), tmp.data(), n, kSiLU);

    cudaStream_t s = b.ctx->stream;
    float *dx = b.upload(x), *dg = b.upload(gamma), *db = b.upload(beta);
    float *drm = b.upload(rm0), *drv = b.upload(rv0), *dy = b.dalloc(n);
    float *dmean = b.dalloc(C), *dinv = b.dalloc(C), *scratch = b.dalloc(batchnorm_cuda_scratch(N, C, HW));
    auto ours = [&] {
        batchnorm_forward_train_cuda(dy, dmean, dinv, drm, drv, dx, dg, db, N, C, HW, eps, momentum, kSiLU, scratch, s);
    };
    float *cy = b.dalloc(n), *ctmp = b.dalloc(n), *crm = b.upload(rm0), *crv = b.upload(rv0);
    float *cmean = b.dalloc(C), *cinv = b.dalloc(C);
    TensorDesc xd(N, C, H, W), bnd(1, C, 1, 1);
    SwishDesc swish;
    auto cudnn = [&] {
        CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(b.ctx->cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, xd.d,
                                                           dx, xd.d, ctmp, bnd.d, dg, db, momentum, crm, crv, eps,
                                                           cmean, cinv));
        CUDNN_CHECK(cudnnActivationForward(b.ctx->cudnn, swish.d, &kOne, xd.d, ctmp, &kZero, xd.d, cy));
    };

    ours();
    b.check("bn+silu fwd " + shape + " out", dy, y, 1e-4, 1e-4);
    b.check("bn+silu fwd " + shape + " running_mean", drm, rm, 1e-6, 1e-5);
    b.check("bn+silu fwd " + shape + " running_var", drv, rv, 1e-6, 1e-5);
    b.check("bn+silu fwd " + shape + " save_invstd", dinv, invstd, 1e-6, 1e-5);
    const bool has_base = b.baseline_runs("cudnn BN + swish", cudnn);
    if (has_base) {
        b.check("  cudnn baseline: out", cy, y, 1e-4, 1e-4);
        b.check("  cudnn baseline: running_var", crv, rv, 1e-6, 1e-5);
    }
    const double ms = b.B.time_ms(ours, b.repeats), base = has_base ? b.B.time_ms(cudnn, b.repeats) : 0;
    b.rows.push_back({"bn+silu fwd (train, fused)", shape, ms, 12.0 * n, true, has_base ? "cudnn BN fwd + swish" : "", base});
}

// The same pair's backward, checked against the unfused CPU pair (SiLU backward into a zeroed buffer, then
// BatchNorm's; dx, dgamma, dbeta accumulate). Ours: BN's sums and dx kernels, each recomputing SiLU'(bn(x))
// from x, so no BN output or its gradient exists. Baseline: cudnnActivationBackward +
// cudnnBatchNormalizationBackward (β = 1: accumulating, as ours), which need the stored BN output.
// Both start from the CPU forward's values. Must move: read dout and x for the sums, then dout, x and dx
// and write dx: 24n bytes.

void bn_silu_backward(Bench& b, int N, int C, int H, int W) {
    const int HW = H * W;
    const int64_t n = (int64_t)N * C * HW, M = (int64_t)N * HW;
    const float eps = 1e-3f;
    const std::string shape = shape_str({N, C, H, W});
    std::vector<float> x = b.uniform(n, -2.f, 3.f), gamma = b.uniform(C, 0.5f, 1.5f), beta = b.uniform(C, -0.5f, 0.5f);
    std::vector<float> tmp(n), y(n), mean(C), invstd(C), rm(C, 0.f), rv(C, 1.f);
    batchnorm_forward_train_cpu(tmp.data(), mean.data(), invstd.data(), rm.data(), rv.data(), x.data(), gamma.data(),
                                beta.data(), N, C, HW, eps, 0.03f, kNoAct);
    act_forward_cpu(y.data(), tmp.data(), n, kSiLU);
    const std::vector<float> dout = b.uniform(n, -1.f, 1.f), dx0 = b.uniform(n, -1.f, 1.f), dg0 = b.uniform(C, -1.f, 1.f),
                             db0 = b.uniform(C, -1.f, 1.f);

    std::vector<float> dtmp(n, 0.f), dx = dx0, dgamma = dg0, dbeta = db0;
    act_backward_cpu(dtmp.data(), dout.data(), tmp.data(), n, kSiLU);
    batchnorm_backward_train_cpu(dx.data(), dgamma.data(), dbeta.data(), dtmp.data(), x.data(), gamma.data(),
                                 beta.data(), mean.data(), invstd.data(), N, C, HW, kNoAct);

    cudaStream_t s = b.ctx->stream;
    float *d_x = b.upload(x), *d_tmp = b.upload(tmp), *d_y = b.upload(y), *d_dout = b.upload(dout);
    float *d_gamma = b.upload(gamma), *d_beta = b.upload(beta), *d_mean = b.upload(mean), *d_inv = b.upload(invstd);
    float *d_dx = b.upload(dx0), *d_dg = b.upload(dg0), *d_db = b.upload(db0);
    float* scratch = b.dalloc(batchnorm_cuda_scratch(N, C, HW));
    auto ours = [&] {
        batchnorm_backward_train_cuda(d_dx, d_dg, d_db, d_dout, d_x, d_gamma, d_beta, d_mean, d_inv, N, C, HW, kSiLU,
                                      false, scratch, s);
    };
    float *c_dtmp = b.dalloc(n), *c_dx = b.upload(dx0), *c_dg = b.upload(dg0), *c_db = b.upload(db0);
    TensorDesc xd(N, C, H, W), bnd(1, C, 1, 1);
    SwishDesc swish;
    auto cudnn = [&] {
        CUDNN_CHECK(cudnnActivationBackward(b.ctx->cudnn, swish.d, &kOne, xd.d, d_y, xd.d, d_dout, xd.d, d_tmp, &kZero,
                                            xd.d, c_dtmp));
        CUDNN_CHECK(cudnnBatchNormalizationBackward(b.ctx->cudnn, CUDNN_BATCHNORM_SPATIAL, &kOne, &kOne, &kOne, &kOne,
                                                    xd.d, d_x, xd.d, c_dtmp, xd.d, c_dx, bnd.d, d_gamma, c_dg, c_db, eps,
                                                    d_mean, d_inv));
    };

    ours();
    // dgamma, dbeta: sums of M terms, in float per block on the GPU, in double on the CPU (tests/test_gpu_ops.cpp).
    const double sum_atol = 1e-5 * std::sqrt((double)M) + 1e-5;
    b.check("bn+silu bwd " + shape + " dx", d_dx, dx, 1e-4, 1e-4);
    b.check("bn+silu bwd " + shape + " dgamma", d_dg, dgamma, sum_atol, 1e-4);
    b.check("bn+silu bwd " + shape + " dbeta", d_db, dbeta, sum_atol, 1e-4);
    const bool has_base = b.baseline_runs("cudnn swish + BN backward", cudnn);
    if (has_base) {
        b.check("  cudnn baseline: dx", c_dx, dx, 1e-4, 1e-4);
        b.check("  cudnn baseline: dgamma", c_dg, dgamma, sum_atol, 1e-4);
    }
    const double ms = b.B.time_ms(ours, b.repeats), base = has_base ? b.B.time_ms(cudnn, b.repeats) : 0;
    b.rows.push_back({"bn+silu bwd (train, fused)", shape, ms, 24.0 * n, true, has_base ? "cudnn swish bwd + BN bwd" : "", base});
}

// ----------------------------------------------------------------------------------------------------
// SPPF's pooling: y1 = pool(x), y2 = pool(y1), y3 = pool(y2) (k 5, stride 1, pad 2), out = cat(x, y1, y2, y3),
// as layers/modules.cpp's SPPF. Ours: sppf_pool's one kernel (a block per plane runs the three pools and writes
// the four channel slices). Baseline: three cudnnPoolingForward + four cudaMemcpy2DAsync. Must move: read x,
// write out (4n): 20n bytes.

void sppf_pools(Bench& b, int N, int C, int H, int W) {
    const int HW = H * W, k = 5, pad = 2;
    const int64_t n = (int64_t)N * C * HW;
    const std::string shape = shape_str({N, C, H, W});
    const std::vector<float> x = b.uniform(n, -1.f, 1.f);
    std::vector<float> p1(n), p2(n), p3(n), out(4 * n);
    maxpool2d_forward_cpu(p1.data(), x.data(), N, C, H, W, k, 1, pad);
    maxpool2d_forward_cpu(p2.data(), p1.data(), N, C, H, W, k, 1, pad);
    maxpool2d_forward_cpu(p3.data(), p2.data(), N, C, H, W, k, 1, pad);
    const float* parts[4] = {x.data(), p1.data(), p2.data(), p3.data()};
    for (int i = 0; i < 4; ++i) concat_forward_cpu(out.data(), parts[i], N, C, HW, 4 * C, i * C);

    cudaStream_t s = b.ctx->stream;
    float *dx = b.upload(x), *dout = b.dalloc(4 * n);
    auto ours = [&] { sppf_forward_cuda(dout, dx, N, C, H, W, k, s); };
    float *c1 = b.dalloc(n), *c2 = b.dalloc(n), *c3 = b.dalloc(n), *cout = b.dalloc(4 * n);
    TensorDesc xd(N, C, H, W);
    MaxPoolDesc pool(k, 1, pad);
    auto cudnn = [&] {
        CUDNN_CHECK(cudnnPoolingForward(b.ctx->cudnn, pool.d, &kOne, xd.d, dx, &kZero, xd.d, c1));
        CUDNN_CHECK(cudnnPoolingForward(b.ctx->cudnn, pool.d, &kOne, xd.d, c1, &kZero, xd.d, c2));
        CUDNN_CHECK(cudnnPoolingForward(b.ctx->cudnn, pool.d, &kOne, xd.d, c2, &kZero, xd.d, c3));
        const float* in[4] = {dx, c1, c2, c3};
        for (int i = 0; i < 4; ++i) concat_memcpy2d(cout, in[i], N, C, HW, 4 * C, i * C, s);
    };

    ours();
    b.check("sppf fused " + shape + " out", dout, out, 0, 0);
    const bool has_base = b.baseline_runs("cudnn max pooling", cudnn);
    if (has_base) b.check("  cudnn baseline: out", cout, out, 0, 0);
    const double ms = b.B.time_ms(ours, b.repeats), base = has_base ? b.B.time_ms(cudnn, b.repeats) : 0;
    b.rows.push_back({"sppf 3x maxpool5 + concat (fused)", shape, ms, 20.0 * n, true, has_base ? "3 cudnn pools + memcpy2D" : "",
                      base});
}

// ----------------------------------------------------------------------------------------------------
// Nearest upsample ×2 (the head's nn.Upsample). No library baseline. Must move: read n, write 4n: 20n bytes.

void upsample2(Bench& b, int N, int C, int H, int W) {
    const int64_t n = (int64_t)N * C * H * W;
    const std::string shape = shape_str({N, C, H, W});
    const std::vector<float> x = b.uniform(n, -1.f, 1.f);
    std::vector<float> out(4 * n);
    upsample_nearest_forward_cpu(out.data(), x.data(), N, C, H, W, 2);
    float *dx = b.upload(x), *dout = b.dalloc(4 * n);
    auto ours = [&] { upsample_nearest_forward_cuda(dout, dx, N, C, H, W, 2, b.ctx->stream); };
    ours();
    b.check("upsample x2 " + shape + " out", dout, out, 0, 0);
    b.rows.push_back({"upsample nearest x2", shape, b.B.time_ms(ours, b.repeats), 20.0 * n, true, "", 0});
}

// ----------------------------------------------------------------------------------------------------
// Channel concat of two (N,Ci,H,W) tensors. Ours: one concat kernel per input. Baseline: one
// cudaMemcpy2DAsync per input. Must move: read both, write the output: 8·(out elements) bytes.

void concat2(Bench& b, int N, int Ca, int Cb, int H, int W) {
    const int HW = H * W, Co = Ca + Cb;
    const int64_t na = (int64_t)N * Ca * HW, nb = (int64_t)N * Cb * HW, no = na + nb;
    const std::string shape = shape_str({N, Ca, H, W}) + "+" + std::to_string(Cb);
    const std::vector<float> a = b.uniform(na, -1.f, 1.f), c = b.uniform(nb, -1.f, 1.f);
    std::vector<float> out(no);
    concat_forward_cpu(out.data(), a.data(), N, Ca, HW, Co, 0);
    concat_forward_cpu(out.data(), c.data(), N, Cb, HW, Co, Ca);
    cudaStream_t s = b.ctx->stream;
    float *da = b.upload(a), *dc = b.upload(c), *dout = b.dalloc(no), *mout = b.dalloc(no);
    auto ours = [&] {
        concat_forward_cuda(dout, da, N, Ca, HW, Co, 0, s);
        concat_forward_cuda(dout, dc, N, Cb, HW, Co, Ca, s);
    };
    auto memcpy2d = [&] {
        concat_memcpy2d(mout, da, N, Ca, HW, Co, 0, s);
        concat_memcpy2d(mout, dc, N, Cb, HW, Co, Ca, s);
    };
    ours();
    memcpy2d();
    b.check("concat " + shape + " out", dout, out, 0, 0);
    b.check("  memcpy2D baseline: out", mout, out, 0, 0);
    const double ms = b.B.time_ms(ours, b.repeats), base = b.B.time_ms(memcpy2d, b.repeats);
    b.rows.push_back({"concat (2 inputs)", shape, ms, 8.0 * no, true, "cudaMemcpy2DAsync x2", base});
}

// ----------------------------------------------------------------------------------------------------
// A C3's cv3 / a head C3's cv1 over two channel parts: conv2d_parts (cuBLAS GEMMs against column slices of the
// weight, no concat) against the path it replaced, concat + cuDNN 1×1 convolution. Both f32 with TF32 off (the
// check is against the CPU's im2col + OpenBLAS). Must move: read both parts and write out: 4(N·C·HW + N·K·HW).

void conv_parts(Bench& b, int N, int Ca, int Cb, int K, int H, int W) {
    const bool tf32 = conv_allow_tf32();
    conv_set_allow_tf32(false);
    const int HW = H * W, C = Ca + Cb;
    const int64_t na = (int64_t)N * Ca * HW, nb = (int64_t)N * Cb * HW, ny = (int64_t)N * K * HW;
    const std::string shape = shape_str({N, Ca, H, W}) + "+" + std::to_string(Cb) + "->" + std::to_string(K);
    const float ws = 1.0f / std::sqrt((float)C);
    const std::vector<float> a = b.uniform(na, -1.f, 1.f), c = b.uniform(nb, -1.f, 1.f), w = b.uniform((int64_t)K * C, -ws, ws);
    std::vector<float> cat(na + nb), y(ny);
    concat_forward_cpu(cat.data(), a.data(), N, Ca, HW, C, 0);
    concat_forward_cpu(cat.data(), c.data(), N, Cb, HW, C, Ca);
    conv2d_fprop_cpu(y.data(), cat.data(), w.data(), (const float*)nullptr, (float*)nullptr, N, C, H, W, K, 1, 1, 1, 0);

    cudaStream_t s = b.ctx->stream;
    float *da = b.upload(a), *dc = b.upload(c), *dw = b.upload(w), *dy = b.dalloc(ny);
    const float* parts[2] = {da, dc};
    const int Cs[2] = {Ca, Cb};
    auto ours = [&] { conv1x1_parts_fprop_cuda(b.ctx, dy, parts, Cs, 2, dw, nullptr, N, K, HW); };
    const Conv2dGeom g{N, C, H, W, K, 1, 1, 1, 0};
    const size_t wsb = conv2d_workspace_cuda(b.ctx, g, ConvPass::Fprop);
    float *dcat = b.dalloc(na + nb), *cy = b.dalloc(ny), *wsp = b.dalloc((int64_t)(wsb + 3) / 4);
    auto base = [&] {
        concat_forward_cuda(dcat, da, N, Ca, HW, C, 0, s);
        concat_forward_cuda(dcat, dc, N, Cb, HW, C, Ca, s);
        conv2d_fprop_cuda(b.ctx, g, cy, dcat, dw, nullptr, wsp, wsb);
    };
    ours();
    base();
    b.check("conv parts " + shape + " out", dy, y, 1e-4, 1e-4);
    b.check("  concat + cudnn baseline: out", cy, y, 1e-4, 1e-4);
    const double ms = b.B.time_ms(ours, b.repeats), bms = b.B.time_ms(base, b.repeats);
    b.rows.push_back({"1x1 conv over 2 parts (cublas)", shape, ms, 4.0 * (na + nb + ny), true, "concat + cudnn 1x1", bms});
    conv_set_allow_tf32(tf32);
}

// ----------------------------------------------------------------------------------------------------
// ECA: out = x · σ(conv1d_channels(global_avgpool(x))), k 3, checked against the CPU's unfused ops. Ours: eca's
// two kernels (the means, then gate + scale in one pass). Baseline: the four unfused kernels it replaced. Must
// move: the pool must finish before the scale, so read x twice and write out: 12n bytes.

void eca_chain(Bench& b, int N, int C, int H, int W) {
    const int HW = H * W, k = 3;
    const int64_t n = (int64_t)N * C * HW;
    const std::string shape = shape_str({N, C, H, W});
    const std::vector<float> x = b.uniform(n, -1.f, 1.5f), w = b.uniform(k, -1.f, 1.f);
    std::vector<float> pooled(N * C), z(N * C), gate(N * C), out(n);
    global_avgpool_forward_cpu(pooled.data(), x.data(), N, C, HW);
    conv1d_channels_forward_cpu(z.data(), pooled.data(), w.data(), N, C, k);
    act_forward_cpu(gate.data(), z.data(), (int64_t)N * C, kSigmoid);
    scale_channels_forward_cpu(out.data(), x.data(), gate.data(), N, C, HW);
    cudaStream_t s = b.ctx->stream;
    float *dx = b.upload(x), *dw = b.upload(w), *dp = b.dalloc(N * C), *dz = b.dalloc(N * C), *dgate = b.dalloc(N * C);
    float *dout = b.dalloc(n), *cout = b.dalloc(n), *cgate = b.dalloc(N * C);
    auto ours = [&] { eca_forward_cuda(dout, dp, dgate, dx, dw, N, C, HW, k, s); };
    auto chain = [&] {
        global_avgpool_forward_cuda(dp, dx, N, C, HW, s);
        conv1d_channels_forward_cuda(dz, dp, dw, N, C, k, s);
        act_forward_cuda(cgate, dz, (int64_t)N * C, kSigmoid, s);
        scale_channels_forward_cuda(cout, dx, cgate, N, C, HW, s);
    };
    ours();
    chain();
    b.check("eca fused " + shape + " gate", dgate, gate, 1e-6, 1e-5);
    b.check("eca fused " + shape + " out", dout, out, 1e-6, 1e-5);
    b.check("  4-kernel baseline: out", cout, out, 1e-6, 1e-5);
    const double ms = b.B.time_ms(ours, b.repeats), base = b.B.time_ms(chain, b.repeats);
    b.rows.push_back({"eca fused (pool; gate+scale)", shape, ms, 12.0 * n, true, "pool, conv1d, sigmoid, scale", base});
}

// ----------------------------------------------------------------------------------------------------
// YOLOv5's loss through ops.h on (bs, 3, ny, nx, 85) maps at 80², 40², 20² that want a gradient, as in
// training: build_targets on the host, one upload, the kernels (loss terms and d loss / d maps), one
// download of the items. Timed by the host clock, since the host part counts. Baseline: the CPU path
// (yolo_loss_cpu, one thread). Must move: read the maps, write their gradient: 8·(map elements) bytes.

void yolo_loss_bench(Bench& b, int bs, int targets_per_image) {
    const int na = 3, no = 85, nl = 3, sizes[3] = {80, 40, 20};
    // yolov5n's anchors (pixels) over the strides 8, 16, 32: grid units, as the model keeps them.
    const float anchors_px[18] = {10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326};
    std::vector<float> anchors(18);
    for (int i = 0; i < 18; ++i) anchors[i] = anchors_px[i] / float(8 << (i / 6));
    std::vector<float> targets;
    for (int img = 0; img < bs; ++img)
        for (int t = 0; t < targets_per_image; ++t)
            targets.insert(targets.end(), {float(img), float(b.rng.randint(80)), b.rng.uniform(0.05f, 0.95f),
                                           b.rng.uniform(0.05f, 0.95f), b.rng.uniform(0.02f, 0.5f), b.rng.uniform(0.02f, 0.5f)});
    const int nt = (int)targets.size() / 6;
    std::vector<std::vector<float>> maps;
    std::vector<int> ny, nx;
    int64_t elems = 0;
    for (int s : sizes) {
        maps.push_back(b.uniform((int64_t)bs * na * s * s * no, -4.f, 2.f));
        ny.push_back(s), nx.push_back(s), elems += (int64_t)maps.back().size();
    }
    LossHyp hyp;  // hyp.scratch-low's gains as train.py scales them for 3 levels, 80 classes, 640

    std::vector<std::vector<float>> dmaps;
    std::vector<const float*> mp;
    std::vector<float*> dp;
    dmaps.reserve(maps.size());
    for (auto& m : maps) dmaps.emplace_back(m.size()), mp.push_back(m.data()), dp.push_back(dmaps.back().data());
    auto cpu = [&] { return yolo_loss_cpu<float>(mp, dp, ny, nx, bs, na, no, targets.data(), nt, anchors.data(), hyp); };
    const LossItems want = cpu();

    // The GPU side runs through ops.h, so it needs the training step's arenas and tape.
    Workspace ws;
    const size_t map_bytes = (size_t)elems * sizeof(float);
    ws.make(Device::CUDA, b.ctx, StepMemory{5 * map_bytes + (128 << 20), 64 << 20});  // maps and their gradients
    std::vector<Tensor> dev_maps;  // the bench's own memory: the tape's clear() empties ws.act every run
    for (size_t i = 0; i < maps.size(); ++i)
        dev_maps.emplace_back(b.upload(maps[i]), Shape{bs, na, ny[i], nx[i], no}, DType::F32, Device::CUDA);
    const Tensor t_host(targets.data(), Shape{nt, 6}, DType::F32, Device::CPU);
    const Tensor a_host(anchors.data(), Shape{nl, na, 2}, DType::F32, Device::CPU);
    std::vector<Var> leaves;
    auto gpu = [&] {
        ws.tape->clear();
        leaves.clear();
        for (const Tensor& t : dev_maps) leaves.push_back(ws.tape->leaf(t));
        return yolo_loss(ws.ctx, leaves, t_host, a_host, hyp);
    };

    YoloLoss got = gpu();
    ws.tape->backward(got.total);
    const std::string shape = "bs " + std::to_string(bs) + ", " + std::to_string(nt) + " targets";
    auto item = [&](const char* name, double g, double w) {
        const float gf = (float)g, wf = (float)w;
        b.ok = check_close(std::string("yolo loss ") + shape + " " + name, &gf, &wf, 1, 1e-12, 1e-4) && b.ok;
    };
    item("lbox", got.items.lbox, want.lbox);
    item("lobj", got.items.lobj, want.lobj);
    item("lcls", got.items.lcls, want.lcls);
    item("total", got.items.total, want.total);
    for (size_t i = 0; i < maps.size(); ++i) {
        float mx = 0;
        for (float v : dmaps[i]) mx = std::max(mx, std::fabs(v));
        b.check("yolo loss d/dmap " + std::to_string(sizes[i]) + "^2", ws.tape->grad(leaves[i]).ptr<float>(), dmaps[i],
                1e-4 * mx, 1e-4);
    }
    const double ms = b.B.time_wall_ms(gpu, b.repeats);
    const double base = b.B.time_wall_ms(cpu, std::max(3, b.repeats / 10));
    b.rows.push_back({"yolo loss fwd (+d/dmaps), host incl.", shape, ms, 8.0 * elems, true, "CPU yolo_loss_cpu", base});
}

// ----------------------------------------------------------------------------------------------------
// The optimizer over yolov5n's 1.87M parameters as one flat range (the store keeps them contiguous).
// Ours: one fused kernel each (sgd, ema), two for the gradient norm and the scale (clip). Baselines: the
// unfused sequences of cuBLAS vector ops a framework without fused optimizers runs (PyTorch's per-op SGD).
// Must move: sgd reads p, g, buf and writes p, buf (20 bytes per parameter); ema reads two and writes one
// (12); clip reads g twice (norm, scale) and writes it (12). 7.5 MB per buffer: the L2 flush matters here.

void optimizer(Bench& b, int64_t n) {
    cudaStream_t s = b.ctx->stream;
    cublasHandle_t h = b.ctx->cublas;
    const std::string shape = "n " + std::to_string(n);
    const float lr = 0.01f, m = 0.937f, wd = 5e-4f;  // hyp.scratch-low's lr0, momentum, weight_decay

    {  // SGD, nesterov: d = g + wd·p; buf = m·buf + d; d += m·buf; p −= lr·d
        const std::vector<float> p0 = b.uniform(n, -1.f, 1.f), g = b.uniform(n, -1.f, 1.f), buf0 = b.uniform(n, -0.1f, 0.1f);
        std::vector<float> p = p0, buf = buf0;
        sgd_cpu(p.data(), g.data(), buf.data(), n, lr, m, wd);
        float *dp = b.upload(p0), *dg = b.upload(g), *dbuf = b.upload(buf0);
        float *cp = b.upload(p0), *cbuf = b.upload(buf0), *cd = b.dalloc(n);
        auto ours = [&] { sgd_cuda(dp, dg, dbuf, n, lr, m, wd, s); };
        auto cublas = [&] {
            const float a_m = m, a_lr = -lr, a_one = 1.f;
            CUDA_CHECK(cudaMemcpyAsync(cd, dg, n * sizeof(float), cudaMemcpyDeviceToDevice, s));  // d = g
            CUBLAS_CHECK(cublasSaxpy(h, (int)n, &wd, cp, 1, cd, 1));                            // d += wd·p
            CUBLAS_CHECK(cublasSscal(h, (int)n, &a_m, cbuf, 1));                                // buf = m·buf
            CUBLAS_CHECK(cublasSaxpy(h, (int)n, &a_one, cd, 1, cbuf, 1));                       //   + d
            CUBLAS_CHECK(cublasSaxpy(h, (int)n, &a_m, cbuf, 1, cd, 1));                         // d += m·buf
            CUBLAS_CHECK(cublasSaxpy(h, (int)n, &a_lr, cd, 1, cp, 1));                          // p −= lr·d
        };
        ours();
        cublas();
        b.check("sgd " + shape + " p", dp, p, 1e-6, 1e-5);
        b.check("sgd " + shape + " momentum", dbuf, buf, 1e-6, 1e-5);
        b.check("  cublas baseline: p", cp, p, 1e-6, 1e-5);
        const double ms = b.B.time_ms(ours, b.repeats), base = b.B.time_ms(cublas, b.repeats);
        b.rows.push_back({"sgd nesterov + decay", shape, ms, 20.0 * n, true, "cuBLAS axpy/scal x5 + copy", base});
    }
    {  // EMA: v = d·v + (1 − d)·w
        const float d = (float)ema_decay(1000);
        const std::vector<float> v0 = b.uniform(n, -1.f, 1.f), w = b.uniform(n, -1.f, 1.f);
        std::vector<float> v = v0;
        ema_cpu(v.data(), w.data(), n, d);
        float *dv = b.upload(v0), *dw = b.upload(w), *cv = b.upload(v0);
        auto ours = [&] { ema_cuda(dv, dw, n, d, s); };
        auto cublas = [&] {
            const float one_minus = 1.f - d;
            CUBLAS_CHECK(cublasSscal(h, (int)n, &d, cv, 1));
            CUBLAS_CHECK(cublasSaxpy(h, (int)n, &one_minus, dw, 1, cv, 1));
        };
        ours();
        cublas();
        b.check("ema " + shape, dv, v, 1e-6, 1e-5);
        b.check("  cublas baseline", cv, v, 1e-6, 1e-5);
        const double ms = b.B.time_ms(ours, b.repeats), base = b.B.time_ms(cublas, b.repeats);
        b.rows.push_back({"ema", shape, ms, 12.0 * n, true, "cuBLAS scal + axpy", base});
    }
    {  // clip_grad_norm_(10): g *= min(1, 10 / (‖g‖ + 1e-6)); gradients large enough to be clipped
        const std::vector<float> g0 = b.uniform(n, -5.f, 5.f);
        double ss = 0;
        for (float v : g0) ss += (double)v * v;
        const double norm = std::sqrt(ss), coef = clip_coef(norm, 10.0);
        std::vector<float> g = g0;
        for (float& v : g) v = float(v * coef);
        float *dg = b.upload(g0), *cg = b.upload(g0);
        void* scratch = b.dev.alloc(clip_grad_norm_scratch_bytes());
        double got_norm = 0;
        auto ours = [&] { clip_grad_norm_cuda(dg, n, 10.0, scratch, clip_grad_norm_scratch_bytes(), &got_norm, s); };
        auto cublas = [&] {
            float nrm = 0;
            CUBLAS_CHECK(cublasSnrm2(h, (int)n, cg, 1, &nrm));  // host pointer mode: waits for the result
            const float c = (float)clip_coef(nrm, 10.0);
            CUBLAS_CHECK(cublasSscal(h, (int)n, &c, cg, 1));
        };
        ours();
        cublas();
        const float gn = (float)got_norm, wn = (float)norm;
        b.ok = check_close("clip_grad_norm " + shape + " norm", &gn, &wn, 1, 0, 1e-6) && b.ok;
        b.check("clip_grad_norm " + shape + " g", dg, g, 1e-7, 1e-5);
        b.check("  cublas baseline: g", cg, g, 1e-7, 1e-4);
        const double ms = b.B.time_ms(ours, b.repeats), base = b.B.time_ms(cublas, b.repeats);
        b.rows.push_back({"clip_grad_norm (norm + scale)", shape, ms, 12.0 * n, true, "cuBLAS nrm2 + scal", base});
    }
}

// ----------------------------------------------------------------------------------------------------
// The batch upload (engine/app/val.cpp's batch_images): uint8 (N,3,H,W) from pinned memory to the device, then
// /255 to float there. The kernel alone must move 5 bytes per element (read 1, write 4). The whole
// upload, timed by the host clock, against the baseline it replaces: convert on the CPU, upload 4× the
// bytes. Its GB/s counts the uint8 bytes delivered per second.

void image_upload(Bench& b, int N, int H, int W) {
    const int64_t n = (int64_t)N * 3 * H * W;
    const std::string shape = shape_str({N, 3, H, W});
    cudaStream_t s = b.ctx->stream;
    uint8_t* h_u8 = nullptr;
    float* h_f = nullptr;
    CUDA_CHECK(cudaMallocHost(&h_u8, n));
    CUDA_CHECK(cudaMallocHost(&h_f, n * sizeof(float)));
    for (int64_t i = 0; i < n; ++i) h_u8[i] = (uint8_t)b.rng.randint(256);
    std::vector<float> want(n);
    images_u8_to_f32_cpu(want.data(), h_u8, n);

    uint8_t* d_u8 = static_cast<uint8_t*>(b.dev.alloc(n));
    float *d_f = b.dalloc(n), *c_f = b.dalloc(n);
    auto kernel = [&] { images_u8_to_f32_cuda(d_f, d_u8, n, s); };
    auto upload = [&] {
        CUDA_CHECK(cudaMemcpyAsync(d_u8, h_u8, n, cudaMemcpyHostToDevice, s));
        kernel();
    };
    auto cpu_then_upload = [&] {
        images_u8_to_f32_cpu(h_f, h_u8, n);
        CUDA_CHECK(cudaMemcpyAsync(c_f, h_f, n * sizeof(float), cudaMemcpyHostToDevice, s));
    };
    upload();
    cpu_then_upload();
    b.check("u8->f32 upload " + shape, d_f, want, 0, 0);
    b.check("  CPU-convert baseline", c_f, want, 0, 0);
    b.rows.push_back({"u8->f32 convert (kernel)", shape, b.B.time_ms(kernel, b.repeats), 5.0 * n, true, "", 0});
    const double ms = b.B.time_wall_ms(upload, b.repeats), base = b.B.time_wall_ms(cpu_then_upload, b.repeats);
    b.rows.push_back({"upload: H2D u8 + convert", shape, ms, 1.0 * n, false, "CPU convert + H2D f32", base});
    CUDA_CHECK(cudaFreeHost(h_u8));
    CUDA_CHECK(cudaFreeHost(h_f));
}

// ----------------------------------------------------------------------------------------------------
// NMS at val.py's settings (multi-label, conf 0.001, IoU 0.6, max_det 300) on yolov5's decoded output at 640,
// (bs, 25200, 85), with about 300 rows per image over conf (objectness 0.01..1, class probabilities uniform:
// about 24000 candidates per image). Ours: nms_batch_cuda, only the detections downloaded. Baseline: what
// it replaces, the whole tensor downloaded and nms_image per image on one thread. Both timed by the host
// clock (each ends in a sync). Must move: read the tensor once, 4·bs·N·no bytes.

void nms_bench(Bench& b, int bs) {
    const int N = 25200, nc = 80, no = nc + 5;
    const int64_t n = (int64_t)bs * N * no;
    std::vector<float> h((size_t)n);
    for (int64_t r = 0; r < (int64_t)bs * N; ++r) {
        float* p = &h[(size_t)r * no];
        p[0] = b.rng.uniform(0, 640), p[1] = b.rng.uniform(0, 640), p[2] = b.rng.uniform(4, 200), p[3] = b.rng.uniform(4, 200);
        p[4] = b.rng.uniform() < 300.0f / N ? b.rng.uniform(0.01f, 1.f) : b.rng.uniform(0, 0.001f);
        for (int c = 0; c < nc; ++c) p[5 + c] = b.rng.uniform();
    }
    NmsParams p;
    p.conf_thres = 0.001f, p.iou_thres = 0.6f, p.multi_label = true, p.max_det = 300;
    const float* d = b.upload(h);
    const size_t bytes = nms_cuda_scratch_bytes(bs, N, no, p);
    Arena nms_scratch("nms scratch", Device::CUDA, bytes);  // its own: the mask alone outgrows small batches' arena
    void* scratch = nms_scratch.alloc(bytes);
    std::vector<std::vector<Detection>> got, want;
    std::vector<float> host((size_t)n);
    auto gpu = [&] { got = nms_batch_cuda(d, bs, N, no, p, scratch, bytes, b.ctx->stream); };
    auto cpu = [&] {
        CUDA_CHECK(cudaMemcpyAsync(host.data(), d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost, b.ctx->stream));
        b.B.sync();
        want.assign(bs, {});
        for (int i = 0; i < bs; ++i) want[i] = nms_image(host.data() + (size_t)i * N * no, N, no, p);
    };
    gpu();
    cpu();
    // Bitwise equal, same order: flattened, with the per-image counts first.
    std::vector<float> g_flat, w_flat;
    for (int i = 0; i < bs; ++i) {
        g_flat.push_back((float)got[i].size()), w_flat.push_back((float)want[i].size());
        for (const Detection& x : got[i]) g_flat.insert(g_flat.end(), x.begin(), x.end());
        for (const Detection& x : want[i]) w_flat.insert(w_flat.end(), x.begin(), x.end());
    }
    const std::string shape = shape_str({bs, N, no});
    b.ok = check_close("nms (counts, detections) " + shape, g_flat, w_flat, 0, 0) && b.ok;
    const double ms = b.B.time_wall_ms(gpu, b.repeats), base = b.B.time_wall_ms(cpu, std::max(3, b.repeats / 10));
    b.rows.push_back({"nms val (multi-label), host incl.", shape, ms, 4.0 * n, false, "D2H + CPU nms_image", base});
}

// ----------------------------------------------------------------------------------------------------
// cuDNN's convolution layout (issue #14): every distinct convolution geometry of yolov5n at --imgsz (640) through
// y5's cuDNN launchers (kernels/conv2d.h) in NCHW, y5's layout, and in NHWC (Conv2dGeom::nhwc: channels-last
// tensors, filter (K,R,S,C)), which cuDNN's tensor-core kernels for f16 prefer. fprop, dgrad and wgrad (each
// accumulating, as in training; no bias: its kernels are y5's own), timed one by one, under the current conv settings
// (y5's training defaults: heuristic algorithms, deterministic, TF32 allowed for f32). Per geometry: its uses in
// yolov5n (PyTorch's module list; y5 runs the C3 cv3s and the head C3s' cv1/cv2 after a concat through cuBLAS,
// conv_parts above, but the decision is about cuDNN), each pass's time in both layouts, their ratio (NCHW / NHWC,
// > 1: NHWC faster); then the totals over yolov5n's 60 convolutions (each geometry times its uses) in f16 (AMP's
// convolutions) and f32. Checked: NHWC's y, dx and dw, transposed back, against NCHW's from zeroed gradients (the
// GPU conv tests check NCHW against the CPU). Tolerance as tests/test_gpu_conv_layout.cpp: both sides within
// 1e-4·max(1, max|want|) of the exact result, so 2e-4·max apart, plus 2^−10 relative (f16: two roundings) or 2e-4
// (f32), or 2e-2 with TF32 (its 10-bit inputs; the TF32 test's 1e-2 per side). The layout's whole cost in training
// would add transposes at the model's ends; these times are the convolutions alone. Must move (the table's bytes):
// fprop x, w → y; dgrad dy, w, dx → dx; wgrad x, dy, dw → dw: (4|x| + 3|y| + 4|w|) elements.

struct ConvGeo {
    int C, H, K, R, stride, pad, uses;  // square input H×H, kernel R×R; input (N,C,H,H), weight (K,C,R,R)
};

// config/models/yolov5n.yaml at 640 (depth 0.33, width 0.25): backbone Convs, C3s (cv1, cv2, Bottleneck 1×1 and 3×3,
// cv3), SPPF's two 1×1s, the head's Convs and C3s, Detect's three 1×1s (3·85 outputs); 60 convolutions.
const ConvGeo kYolov5nConvs[] = {
    {3, 640, 16, 6, 2, 2, 1},     // 0 Conv 6×6 s2 p2 (stem)
    {16, 320, 32, 3, 2, 1, 1},    // 1 Conv s2
    {32, 160, 16, 1, 1, 0, 2},    // 2 C3 cv1, cv2
    {16, 160, 16, 1, 1, 0, 1},    // 2 Bottleneck cv1
    {16, 160, 16, 3, 1, 1, 1},    // 2 Bottleneck cv2
    {32, 160, 32, 1, 1, 0, 1},    // 2 C3 cv3
    {32, 160, 64, 3, 2, 1, 1},    // 3 Conv s2
    {64, 80, 32, 1, 1, 0, 2},     // 4 C3 cv1, cv2
    {32, 80, 32, 1, 1, 0, 3},     // 4 (x2), 17 Bottleneck cv1
    {32, 80, 32, 3, 1, 1, 3},     // 4 (x2), 17 Bottleneck cv2
    {64, 80, 64, 1, 1, 0, 2},     // 4, 17 C3 cv3
    {64, 80, 128, 3, 2, 1, 1},    // 5 Conv s2
    {128, 40, 64, 1, 1, 0, 5},    // 6, 20 C3 cv1, cv2; 14 Conv 1×1
    {64, 40, 64, 1, 1, 0, 5},     // 6 (x3), 13, 20 Bottleneck cv1
    {64, 40, 64, 3, 1, 1, 5},     // 6 (x3), 13, 20 Bottleneck cv2
    {128, 40, 128, 1, 1, 0, 3},   // 6, 13, 20 C3 cv3
    {128, 40, 256, 3, 2, 1, 1},   // 7 Conv s2
    {256, 20, 128, 1, 1, 0, 6},   // 8, 23 C3 cv1, cv2; 9 SPPF cv1; 10 Conv 1×1
    {128, 20, 128, 1, 1, 0, 2},   // 8, 23 Bottleneck cv1
    {128, 20, 128, 3, 1, 1, 2},   // 8, 23 Bottleneck cv2
    {256, 20, 256, 1, 1, 0, 2},   // 8, 23 C3 cv3
    {512, 20, 256, 1, 1, 0, 1},   // 9 SPPF cv2
    {256, 40, 64, 1, 1, 0, 2},    // 13 C3 cv1, cv2
    {128, 80, 32, 1, 1, 0, 2},    // 17 C3 cv1, cv2
    {64, 80, 64, 3, 2, 1, 1},     // 18 Conv s2
    {128, 40, 128, 3, 2, 1, 1},   // 21 Conv s2
    {64, 80, 255, 1, 1, 0, 1},    // 24 Detect P3
    {128, 40, 255, 1, 1, 0, 1},   // 24 Detect P4
    {256, 20, 255, 1, 1, 0, 1},   // 24 Detect P5
};

// (A,B,H,W) ↔ (A,H,W,B) on the host.
template <class T> std::vector<T> nchw_to_nhwc(const std::vector<T>& v, int64_t A, int64_t B, int64_t HW) {
    std::vector<T> r(v.size());
    for (int64_t a = 0; a < A; ++a)
        for (int64_t c = 0; c < B; ++c)
            for (int64_t q = 0; q < HW; ++q) r[(a * HW + q) * B + c] = v[(a * B + c) * HW + q];
    return r;
}
template <class T> std::vector<T> nhwc_to_nchw(const std::vector<T>& v, int64_t A, int64_t B, int64_t HW) {
    std::vector<T> r(v.size());
    for (int64_t a = 0; a < A; ++a)
        for (int64_t c = 0; c < B; ++c)
            for (int64_t q = 0; q < HW; ++q) r[(a * B + c) * HW + q] = v[(a * HW + q) * B + c];
    return r;
}

// One geometry in storage type T (float or f16), both layouts: the three passes' median times per layout
// ([layout][pass], ms) and the bytes they must move; adds its check lines.
struct LayoutTimes {
    std::array<std::array<double, 3>, 2> ms{};
    double bytes = 0;
};

template <class T> LayoutTimes conv_layout_geo(Bench& b, int N, const ConvGeo& cg, int imgsz) {
    constexpr bool half = std::is_same_v<T, f16>;
    const int H = cg.H * imgsz / 640, Ho = conv_out_size(H, cg.R, cg.stride, cg.pad);
    const int64_t nx = (int64_t)N * cg.C * H * H, ny = (int64_t)N * cg.K * Ho * Ho, nw = (int64_t)cg.K * cg.C * cg.R * cg.R;
    const float ws = 1.0f / std::sqrt((float)cg.C * cg.R * cg.R);  // outputs O(1)
    auto store = [](const std::vector<float>& v) {
        std::vector<T> r(v.size());
        for (size_t i = 0; i < v.size(); ++i) r[i] = st<T>(v[i]);
        return r;
    };
    const std::vector<T> x = store(b.uniform(nx, -1.f, 1.f)), w = store(b.uniform(nw, -ws, ws)),
                         dy = store(b.uniform(ny, -1.f, 1.f));
    auto dev = [&](int64_t n) { return static_cast<T*>(b.dev.alloc((size_t)n * sizeof(T))); };
    T *dx_ = dev(nx), *dw_ = dev(nw), *ddy = dev(ny), *ddx = dev(nx), *ddw = dev(nw), *dyo = dev(ny);
    auto put = [&](T* d, const std::vector<T>& h) {
        CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    };
    auto get = [&](const T* d, int64_t n) {
        b.B.sync();
        std::vector<T> h((size_t)n);
        CUDA_CHECK(cudaMemcpy(h.data(), d, (size_t)n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    };
    Conv2dGeom g[2];
    size_t wsb = 0;
    for (int l = 0; l < 2; ++l) {
        g[l] = Conv2dGeom{N, cg.C, H, H, cg.K, cg.R, cg.R, cg.stride, cg.pad, half, l == 1};
        for (ConvPass p : {ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad})
            wsb = std::max(wsb, conv2d_workspace_cuda(b.ctx, g[l], p));
    }
    void* wsp = wsb ? b.dev.alloc(wsb) : nullptr;
    LayoutTimes r;
    std::vector<float> want[3];  // NCHW's y, dx, dw
    const char* names[3] = {"y", "dx", "dw"};
    const bool tf32 = !half && conv_allow_tf32();
    const double rtol = half ? std::ldexp(1.0, -10) : tf32 ? 2e-2 : 2e-4;
    const double rel = tf32 ? 2e-2 : 2e-4;
    char shape[96];
    snprintf(shape, sizeof shape, "(%d,%d,%d,%d) k%d s%d -> %d", N, cg.C, H, H, cg.R, cg.stride, cg.K);
    for (int l = 0; l < 2; ++l) {
        const bool nhwc = l == 1;
        const int64_t HW = (int64_t)H * H, HWo = (int64_t)Ho * Ho, RS = (int64_t)cg.R * cg.R;
        put(dx_, nhwc ? nchw_to_nhwc(x, N, cg.C, HW) : x);
        put(dw_, nhwc ? nchw_to_nhwc(w, cg.K, cg.C, RS) : w);
        put(ddy, nhwc ? nchw_to_nhwc(dy, N, cg.K, HWo) : dy);
        CUDA_CHECK(cudaMemset(ddx, 0, (size_t)nx * sizeof(T)));
        CUDA_CHECK(cudaMemset(ddw, 0, (size_t)nw * sizeof(T)));
        auto fprop = [&] { conv2d_fprop_cuda(b.ctx, g[l], dyo, dx_, dw_, nullptr, wsp, wsb); };
        auto dgrad = [&] { conv2d_dgrad_cuda(b.ctx, g[l], ddx, ddy, dw_, wsp, wsb, true); };  // written, as in a step
        auto wgrad = [&] { conv2d_wgrad_cuda(b.ctx, g[l], ddw, nullptr, ddy, dx_, wsp, wsb); };
        fprop();
        dgrad();
        wgrad();
        const int64_t n[3] = {ny, nx, nw}, A[3] = {N, N, cg.K}, B[3] = {cg.K, cg.C, cg.C}, Q[3] = {HWo, HW, RS};
        const T* d[3] = {dyo, ddx, ddw};
        for (int i = 0; i < 3; ++i) {
            std::vector<T> h = get(d[i], n[i]);
            if (nhwc) h = nhwc_to_nchw(h, A[i], B[i], Q[i]);
            std::vector<float> f(h.size());
            for (size_t j = 0; j < h.size(); ++j) f[j] = ld(h[j]);
            if (!nhwc) {
                want[i] = std::move(f);
                continue;
            }
            float mx = 0;
            for (float v : want[i]) mx = std::max(mx, std::fabs(v));
            b.ok = check_close(std::string("conv ") + (half ? "f16 " : "f32 ") + shape + " NHWC " + names[i], f, want[i],
                               rel * std::max(1.0f, mx), rtol) && b.ok;
        }
        r.ms[l] = {b.B.time_ms(fprop, b.repeats), b.B.time_ms(dgrad, b.repeats), b.B.time_ms(wgrad, b.repeats)};
    }
    r.bytes = sizeof(T) * (4.0 * nx + 3.0 * ny + 4.0 * nw);
    return r;
}

template <class T> void conv_layout(Bench& b, int N, int imgsz) {
    constexpr bool half = std::is_same_v<T, f16>;
    std::printf("\nconv_layout %s, batch %d, %d: ms per pass (median of %d), NCHW | NHWC | ratio NCHW/NHWC (> 1: NHWC "
                "faster)\n",
                half ? "f16" : "f32", N, imgsz, b.repeats);
    std::printf("  %-34s %4s   %-23s %-23s %-23s %s\n", "input, kernel, stride -> K", "uses", "fprop", "dgrad",
                "wgrad", "fprop+dgrad+wgrad");
    auto cell = [](double a, double c) {
        char s[40];
        snprintf(s, sizeof s, "%7.4f %7.4f %6.2fx", a, c, a / c);
        return std::string(s);
    };
    std::array<std::array<double, 4>, 2> total{};  // [layout][pass, all], weighted by uses
    double bytes = 0;
    for (const ConvGeo& cg : kYolov5nConvs) {
        b.dev.reset();
        const LayoutTimes t = conv_layout_geo<T>(b, N, cg, imgsz);
        const auto& ms = t.ms;
        bytes += cg.uses * t.bytes;
        double all[2];
        for (int l = 0; l < 2; ++l) {
            all[l] = ms[l][0] + ms[l][1] + ms[l][2];
            for (int p = 0; p < 3; ++p) total[l][p] += cg.uses * ms[l][p];
            total[l][3] += cg.uses * all[l];
        }
        const int H = cg.H * imgsz / 640;
        char geo[64];
        snprintf(geo, sizeof geo, "(%d,%d,%d,%d) k%d s%d -> %d", N, cg.C, H, H, cg.R, cg.stride, cg.K);
        std::printf("  %-34s %4d   %s %s %s %s\n", geo, cg.uses, cell(ms[0][0], ms[1][0]).c_str(),
                    cell(ms[0][1], ms[1][1]).c_str(), cell(ms[0][2], ms[1][2]).c_str(), cell(all[0], all[1]).c_str());
    }
    int uses = 0;
    for (const ConvGeo& cg : kYolov5nConvs) uses += cg.uses;
    std::printf("  %-34s %4d   %s %s %s %s\n", (std::string("total ") + (half ? "f16" : "f32") + " (x uses)").c_str(),
                uses, cell(total[0][0], total[1][0]).c_str(), cell(total[0][1], total[1][1]).c_str(),
                cell(total[0][2], total[1][2]).c_str(), cell(total[0][3], total[1][3]).c_str());
    b.rows.push_back({std::string("conv NHWC fprop+dgrad+wgrad ") + (half ? "f16" : "f32"),
                      "yolov5n x" + std::to_string(uses) + " @" + std::to_string(imgsz), total[1][3], bytes, true,
                      "NCHW (y5's layout)", total[0][3]});
}

void print_table(const std::vector<Row>& rows, double copy_gbs) {
    std::printf("\n%-38s %-24s %9s %8s %7s   %-28s %9s %8s\n", "op", "shape", "ms", "GB/s", "%copy", "baseline", "base ms",
                "speedup");
    for (const Row& r : rows) {
        const double gbs = r.bytes / (r.ms * 1e-3) / 1e9;
        char pct[16] = "-", base[16] = "-", speed[16] = "-";
        if (r.pct) snprintf(pct, sizeof pct, "%.0f%%", 100 * gbs / copy_gbs);
        if (!r.base.empty()) {
            snprintf(base, sizeof base, "%.4f", r.base_ms);
            snprintf(speed, sizeof speed, "%.2fx", r.base_ms / r.ms);
        }
        std::printf("%-38s %-24s %9.4f %8.1f %7s   %-28s %9s %8s\n", r.op.c_str(), r.shape.c_str(), r.ms, gbs, pct,
                    r.base.empty() ? "-" : r.base.c_str(), base, speed);
    }
}

}  // namespace

// The benchmarks --op selects from, in the order they run: name, what, and one call per yolov5n shape (the
// buffers are released between shapes). An on-request one runs only when --op names it (it takes long enough to
// have its own step in tools/gpu_check.sh).
using ShapeBench = std::function<void(Bench&, int)>;  // (bench, batch)
struct OpBench {
    const char* name;
    const char* what;
    std::vector<ShapeBench> shapes;
    bool on_request = false;
};

int g_conv_imgsz = 640;  // --imgsz: conv_layout's input size

static const std::vector<OpBench>& op_benches() {
    static const std::vector<OpBench> ops = {
        {"bn_silu_forward", "BatchNorm+SiLU forward (layers 0, 1, 3, 7)",
         {[](Bench& b, int N) { bn_silu_forward(b, N, 16, 320, 320); },
          [](Bench& b, int N) { bn_silu_forward(b, N, 32, 160, 160); },
          [](Bench& b, int N) { bn_silu_forward(b, N, 64, 80, 80); },
          [](Bench& b, int N) { bn_silu_forward(b, N, 256, 20, 20); }}},
        {"bn_silu_backward", "BatchNorm+SiLU backward (P1, P3)",
         {[](Bench& b, int N) { bn_silu_backward(b, N, 16, 320, 320); },
          [](Bench& b, int N) { bn_silu_backward(b, N, 64, 80, 80); }}},
        {"sppf_pools", "SPPF's three pools + concat (layer 9)", {[](Bench& b, int N) { sppf_pools(b, N, 128, 20, 20); }}},
        {"upsample", "nearest x2 upsample (layers 11, 15)",
         {[](Bench& b, int N) { upsample2(b, N, 128, 20, 20); }, [](Bench& b, int N) { upsample2(b, N, 64, 40, 40); }}},
        {"concat", "channel concat (layer 2's C3, layers 12, 16)",
         {[](Bench& b, int N) { concat2(b, N, 16, 16, 160, 160); },
          [](Bench& b, int N) { concat2(b, N, 128, 128, 40, 40); },
          [](Bench& b, int N) { concat2(b, N, 64, 64, 80, 80); }}},
        {"conv_parts", "1x1 conv over a concat's two parts (C3 cv3 of layers 2, 6; head C3 cv1 of layer 13)",
         {[](Bench& b, int N) { conv_parts(b, N, 16, 16, 32, 160, 160); },
          [](Bench& b, int N) { conv_parts(b, N, 64, 64, 128, 40, 40); },
          [](Bench& b, int N) { conv_parts(b, N, 128, 128, 64, 40, 40); }}},
        {"eca", "ECA chain (yolov5n-eca layers 5, 11)",
         {[](Bench& b, int N) { eca_chain(b, N, 64, 80, 80); }, [](Bench& b, int N) { eca_chain(b, N, 256, 20, 20); }}},
        {"yolo_loss", "YOLOv5's loss, 8 boxes per image", {[](Bench& b, int N) { yolo_loss_bench(b, N, 8); }}},
        {"optimizer", "SGD + EMA over yolov5n's parameters", {[](Bench& b, int) { optimizer(b, kYolov5nParams); }}},
        {"image_upload", "uint8 batch upload and /255 at 640", {[](Bench& b, int N) { image_upload(b, N, 640, 640); }}},
        {"nms", "NMS at val.py's settings", {[](Bench& b, int N) { nms_bench(b, N); }}},
        {"conv_layout", "cuDNN convolutions NCHW vs NHWC, yolov5n's 29 geometries, f16 and f32 (on request only)",
         {[](Bench& b, int N) { conv_layout<f16>(b, N, g_conv_imgsz); },
          [](Bench& b, int N) { conv_layout<float>(b, N, g_conv_imgsz); }},
         true},
    };
    return ops;
}

int main(int argc, char** argv) {
    CLI::App app{"bench_kernels: y5's CUDA kernels at yolov5n's shapes, checked against the CPU and timed"};
    int repeats = 50, batch = 16;
    std::vector<std::string> only;
    std::string names_help = "run only these benchmarks (repeat, or a comma list); names:";
    for (const OpBench& o : op_benches()) names_help += std::string("\n  ") + o.name + ": " + o.what;
    app.add_option("--repeats", repeats, "timed runs per op (the median is reported)")->capture_default_str();
    app.add_option("--batch", batch, "batch size of the shapes")->capture_default_str();
    app.add_option("--op", only, names_help)->delimiter(',')->type_name("NAME");
    app.add_option("--imgsz", g_conv_imgsz, "conv_layout's image size (a multiple of 32)")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    if (g_conv_imgsz < 32 || g_conv_imgsz % 32) {
        std::fprintf(stderr, "bench_kernels: error: --imgsz %d: a positive multiple of 32\n", g_conv_imgsz);
        return 2;
    }
    // The names first, so a typo fails here even on a machine with no GPU.
    std::vector<bool> selected(op_benches().size());
    for (size_t i = 0; i < op_benches().size(); ++i) selected[i] = only.empty() && !op_benches()[i].on_request;
    for (const std::string& n : only) {
        size_t i = 0;
        while (i < op_benches().size() && n != op_benches()[i].name) ++i;
        if (i == op_benches().size()) {
            std::string valid;
            for (const OpBench& o : op_benches()) valid += std::string(valid.empty() ? "" : ", ") + o.name;
            std::fprintf(stderr, "bench_kernels: error: --op %s: no such benchmark; valid: %s\n", n.c_str(), valid.c_str());
            return 2;
        }
        selected[i] = true;
    }
    if (!gpu_or_skip("bench_kernels")) return 0;
    bool ok = true;
    try {
        CudaContext* ctx = cuda_context_create(0);
        {
            Bencher B(ctx);
            std::printf("%s: %d SMs, %.0f MiB L2, %.1f GiB; cuDNN %zu; device-to-device copy %.0f GB/s (read + write)\n",
                        B.prop.name, B.prop.multiProcessorCount, B.prop.l2CacheSize / 1048576.0,
                        B.prop.totalGlobalMem / 1073741824.0, cudnnGetVersion(), B.copy_gbs);
            std::printf("batch %d, median of %d runs, L2 flushed before each; checks |gpu-cpu| <= atol + rtol*|cpu|:\n",
                        batch, repeats);
            // The largest case, BN+SiLU backward at P1, keeps 8 buffers of 16·320² floats per image (52 MB).
            Arena dev("bench buffers", Device::CUDA, (size_t)std::max(1, batch) * (80u << 20));
            Bench b{ctx, B, dev, repeats};
            const int N = batch;
            auto run = [&](auto&& f) {
                dev.reset();
                f();
            };
            for (size_t i = 0; i < op_benches().size(); ++i)
                if (selected[i])
                    for (const ShapeBench& f : op_benches()[i].shapes) run([&] { f(b, N); });
            print_table(b.rows, B.copy_gbs);
            ok = b.ok;
        }
        cuda_context_destroy(ctx);
    } catch (...) {
        return y5::error_exit("bench_kernels");
    }
    if (!ok) {
        std::printf("\nbench_kernels: MISMATCH: a GPU result (or a baseline's) differs from the CPU reference (FAIL lines above)\n");
        return 1;
    }
    return 0;
}
