/*
 * conv2d's layout switch (Conv2dGeom::nhwc, kernels/conv2d.h; issue #14): the cuDNN passes with channels-last
 * (NHWC) tensors and filter against the same passes in NCHW, the data transposed on the host, through the launchers
 * (y5's ops pass NCHW only). f32 and f16; fprop with bias, dgrad and wgrad (with the bias gradient) accumulating
 * into random pre-filled gradients. Each case runs NCHW then NHWC on one geometry, so the plan cache must keep the
 * two apart (a shared plan would hand cuDNN the other layout's descriptors and give transposed garbage).
 * Tolerances:
 *   - emulated device: equal. The cuDNN stand-in transposes NHWC operands to NCHW, runs the same CPU convolution
 *     and transposes the result back, so every element gets the same float value before the same blend and rounding;
 *     the bias kernels add (fprop) and sum (wgrad) each channel's terms in the same order in both layouts.
 *   - GPU: cuDNN picks its algorithms per layout, which sum in different orders. The GPU conv tests bound each
 *     side's distance to the exact result by atol 1e-4·max(1, max|want|) + rtol 1e-4 (f32, TF32 off;
 *     tests/test_gpu_conv.cpp) and by δ = 1e-4·max(1, max|want|) before one rounding of at most half an f16 ulp,
 *     2^−11 relative (f16; tests/test_gpu_f16_conv.cpp). NHWC against NCHW is the difference of two such results:
 *     f32 within 2e-4·max(1, max|want|) + 2e-4·|want|, f16 within 2e-4·max(1, max|want|) + 2^−10·|want|.
 */
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/conv2d.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

std::string geo_str(const Geo& g, DType dt) {
    char s[160];
    snprintf(s, sizeof s, "x (%d,%d,%d,%d) w (%d,%d,%d,%d) s%d p%d%s %s", g.N, g.C, g.H, g.W, g.K, g.C, g.R, g.S,
             g.stride, g.pad, g.bias ? " +bias" : "", dtype_name(dt));
    return s;
}

// TF32 off (f32 at full precision, as the GPU conv tests), deterministic algorithms, restored at the end.
struct ConvSettings {
    bool det = conv_deterministic(), tf32 = conv_allow_tf32();
    ConvSettings() {
        conv_set_allow_tf32(false);
        conv_set_deterministic(true);
    }
    ~ConvSettings() {
        conv_set_deterministic(det);
        conv_set_allow_tf32(tf32);
    }
};

// (A,B,H,W) → (A,H,W,B) (to_nhwc) and back (from_nhwc), host tensors of 2- or 4-byte elements, in arena `a`.
Tensor to_nhwc(Arena& a, const Tensor& t) {
    const int64_t A = t.dim(0), B = t.dim(1), H = t.dim(2), W = t.dim(3), HW = H * W;
    const size_t es = dtype_size(t.dtype);
    Tensor r = a.tensor({A, H, W, B}, t.dtype);
    const char* src = static_cast<const char*>(t.data);
    char* dst = static_cast<char*>(r.data);
    for (int64_t i = 0; i < A; ++i)
        for (int64_t q = 0; q < HW; ++q)
            for (int64_t c = 0; c < B; ++c)
                std::memcpy(dst + ((i * HW + q) * B + c) * es, src + ((i * B + c) * HW + q) * es, es);
    return r;
}
Tensor from_nhwc(Arena& a, const Tensor& t) {
    const int64_t A = t.dim(0), H = t.dim(1), W = t.dim(2), B = t.dim(3), HW = H * W;
    const size_t es = dtype_size(t.dtype);
    Tensor r = a.tensor({A, B, H, W}, t.dtype);
    const char* src = static_cast<const char*>(t.data);
    char* dst = static_cast<char*>(r.data);
    for (int64_t i = 0; i < A; ++i)
        for (int64_t q = 0; q < HW; ++q)
            for (int64_t c = 0; c < B; ++c)
                std::memcpy(dst + ((i * B + c) * HW + q) * es, src + ((i * HW + q) * B + c) * es, es);
    return r;
}

struct Result {
    Tensor y, dx, dw, db;  // host tensors, NCHW
};

// The three passes in one layout. in: x, w, b, dy, gx0, gw0, gb0 (NCHW host tensors); the gradients accumulate
// into copies of gx0, gw0, gb0. Results come back transposed to NCHW.
template <class T> Result run_layout(const Geo& geo, bool nhwc, const std::vector<Tensor>& in) {
    Gpu& G = gpu();
    Arena& h = G.host;
    Conv2dGeom g{geo.N, geo.C, geo.H, geo.W, geo.K, geo.R, geo.S, geo.stride, geo.pad};
    g.f16 = std::is_same_v<T, f16>;
    g.nhwc = nhwc;
    auto put = [&](const Tensor& t) { return G.upload(nhwc && t.ndim() == 4 ? to_nhwc(h, t) : t); };
    auto get = [&](const Tensor& t) {
        Tensor r = G.download(t);
        return nhwc && r.ndim() == 4 ? from_nhwc(h, r) : r;
    };
    Tensor x = put(in[0]), w = put(in[1]), b = put(in[2]), dy = put(in[3]), dx = put(in[4]), dw = put(in[5]),
           db = put(in[6]);
    const int Ho = conv_out_size(geo.H, geo.R, geo.stride, geo.pad);
    const int Wo = conv_out_size(geo.W, geo.S, geo.stride, geo.pad);
    Tensor y = G.act.tensor(nhwc ? Shape{geo.N, Ho, Wo, geo.K} : Shape{geo.N, geo.K, Ho, Wo}, in[0].dtype);
    size_t ws = 0;
    for (ConvPass p : {ConvPass::Fprop, ConvPass::Dgrad, ConvPass::Wgrad})
        ws = std::max(ws, conv2d_workspace_cuda(G.cuda, g, p));
    void* wsp = ws ? G.work.alloc(ws) : nullptr;
    conv2d_fprop_cuda(G.cuda, g, y.ptr<T>(), x.ptr<T>(), w.ptr<T>(), geo.bias ? b.ptr<T>() : nullptr, wsp, ws);
    conv2d_dgrad_cuda(G.cuda, g, dx.ptr<T>(), dy.ptr<T>(), w.ptr<T>(), wsp, ws, false);
    conv2d_wgrad_cuda(G.cuda, g, dw.ptr<T>(), geo.bias ? db.ptr<T>() : nullptr, dy.ptr<T>(), x.ptr<T>(), wsp, ws);
    return Result{get(y), get(dx), get(dw), get(db)};
}

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

void require_layouts_agree(const Tensor& got, const Tensor& want, const std::string& what) {
#if Y5_CUDA_EMU
    require_close(got, want, 0, 0, what + " (NHWC equals NCHW on the emulated device)");
#else
    const double rtol = want.dtype == DType::F16 ? std::ldexp(1.0, -10) : 2e-4;
    require_close(got, want, 2e-4 * std::max(1.0, max_abs(want)), rtol, what);
#endif
}

void compare_layouts(const Geo& g, DType dt, Rng& rng) {
    Gpu& G = gpu();
    G.reset();
    INFO(geo_str(g, dt));
    Arena& h = G.host;
    const double wscale = 1.0 / std::sqrt((double)g.C * g.R * g.S);  // keeps the output O(1)
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    const Tensor x = rand_tensor(h, {g.N, g.C, g.H, g.W}, dt, rng);
    const Tensor w = rand_tensor(h, {g.K, g.C, g.R, g.S}, dt, rng, -wscale, wscale);
    const std::vector<Tensor> in = {x, w, rand_tensor(h, {g.K}, dt, rng), rand_tensor(h, {g.N, g.K, Ho, Wo}, dt, rng),
                                    rand_tensor(h, x.shape, dt, rng), rand_tensor(h, w.shape, dt, rng),
                                    rand_tensor(h, {g.K}, dt, rng)};
    const bool half = dt == DType::F16;
    const Result want = half ? run_layout<f16>(g, false, in) : run_layout<float>(g, false, in);
    const Result got = half ? run_layout<f16>(g, true, in) : run_layout<float>(g, true, in);
    require_layouts_agree(got.y, want.y, "fprop: output");
    require_layouts_agree(got.dx, want.dx, "dgrad: dx (accumulated)");
    require_layouts_agree(got.dw, want.dw, "wgrad: dw (accumulated)");
    require_layouts_agree(got.db, want.db, g.bias ? "wgrad: db (accumulated)" : "db (untouched)");
    if (!g.bias) require_close(got.db, in[6], 0, 0, "db untouched without bias");
    // The NCHW pass really ran: its output is not the bias or zero everywhere (a test that cannot fail otherwise).
    REQUIRE(max_abs(want.y) > 0);
    G.reset();
}

}  // namespace

TEST_CASE("conv2d NHWC on the GPU equals NCHW with the data transposed", "[gpu][conv][layout]") {
    ConvSettings s;
    Rng rng(501);
    // Channel counts differ from each other and from the spatial sizes, so a swapped axis cannot go unseen.
    const std::vector<Geo> geos = {
        {2, 6, 9, 7, 10, 1, 1, 1, 0, true},     // 1×1 (the CPU's pointwise path), bias
        {2, 5, 11, 10, 8, 3, 3, 1, 1, true},    // 3×3 s1 p1
        {3, 8, 13, 9, 6, 3, 3, 2, 1, false},    // 3×3 s2 p1 on odd sizes, no bias
        {2, 3, 14, 12, 16, 6, 6, 2, 2, true},   // 6×6 s2 p2, yolov5n's stem (3 input channels)
        {2, 32, 20, 20, 64, 3, 3, 1, 1, true},  // yolov5n-like 3×3, more channels
    };
    for (DType dt : {DType::F32, DType::F16})
        for (const Geo& g : geos) DYNAMIC_SECTION(geo_str(g, dt)) { compare_layouts(g, dt, rng); }
}
#endif
