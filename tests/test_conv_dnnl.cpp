/*
 * The oneDNN convolutions (kernels/conv2d_dnnl.h) against the im2col + BLAS references (kernels/conv2d.h), on
 * fresh random inputs: fprop, dgrad and wgrad (accumulating into random starting gradients) for every distinct
 * yolov5n convolution at 64 px and odd shapes, |dnnl − ref| ≤ atol + rtol·|ref|; the bits of fprop and dgrad with
 * 1, 2 and 3 OpenMP threads (the ops rely on them being the same: batch 1 runs on oneDNN's threads, larger batches
 * one image group per y5 thread); and the ops conv2d, conv2d_parts and conv1x1_maps (forward and every gradient)
 * with oneDNN on against the same ops with it off (Y5_CONV=ref's path); inference's fprop with the activation as
 * oneDNN's post-op against conv then y5's activation, and the ops conv2d_act / conv2d_parts_act against the two ops.
 * Skipped in a build without oneDNN (but for the reference path's checks).
 */
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/conv2d.h"
#include "kernels/conv2d_dnnl.h"
#include "kernels/conv_stem.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

namespace {

// yolov5n's convolutions at 64 px (backbone, SPPF, head, Detect), each (C, H, K, k, s) once, batch 2.
std::vector<Geo> yolov5n_geos() {
    struct L {
        int C, H, K, k, s;
        bool bias;
    };
    const L ls[] = {
        {3, 64, 16, 6, 2, false},   {16, 32, 32, 3, 2, false},  {32, 16, 16, 1, 1, false}, {16, 16, 16, 1, 1, false},
        {16, 16, 16, 3, 1, false},  {32, 16, 32, 1, 1, false},  {32, 16, 64, 3, 2, false}, {64, 8, 32, 1, 1, false},
        {32, 8, 32, 1, 1, false},   {32, 8, 32, 3, 1, false},   {64, 8, 64, 1, 1, false},  {64, 8, 128, 3, 2, false},
        {128, 4, 64, 1, 1, false},  {64, 4, 64, 1, 1, false},   {64, 4, 64, 3, 1, false},  {128, 4, 128, 1, 1, false},
        {128, 4, 256, 3, 2, false}, {256, 2, 128, 1, 1, false}, {128, 2, 128, 1, 1, false}, {128, 2, 128, 3, 1, false},
        {256, 2, 256, 1, 1, false}, {512, 2, 256, 1, 1, false}, {256, 4, 64, 1, 1, false},  {128, 4, 64, 1, 1, false},
        {128, 8, 32, 1, 1, false},  {64, 8, 64, 3, 2, false},   {128, 4, 128, 3, 2, false},
        {64, 8, 255, 1, 1, true},   {128, 4, 255, 1, 1, true},  {256, 2, 255, 1, 1, true},
        {32, 16, 16, 3, 1, true},  // fused inference (BN folded in: every convolution has a bias)
    };
    std::vector<Geo> g;
    for (const L& l : ls) g.push_back({2, l.C, l.H, l.H, l.K, l.k, l.k, l.s, l.k / 2 - (l.k == 6 ? 1 : 0), l.bias});
    return g;
}

// Shapes off the beaten path: C = 3, stride 2 on odd sizes, K not a multiple of 8 or 16, batch 1 and 5.
const std::vector<Geo> kOdd = {
    {1, 3, 13, 11, 5, 3, 3, 2, 1, true},  {5, 3, 15, 17, 17, 6, 6, 2, 2, false}, {5, 7, 9, 9, 10, 3, 3, 1, 1, true},
    {1, 20, 7, 5, 9, 1, 1, 2, 0, false},  {5, 16, 6, 6, 24, 1, 1, 1, 0, true},   {1, 1, 1, 1, 1, 1, 1, 1, 0, true},
    {5, 24, 9, 13, 36, 3, 3, 2, 1, false}, {1, 48, 5, 5, 40, 5, 5, 1, 2, true},
};

std::vector<float> rand_vec(int64_t n, Rng& rng, double lo = -1.0, double hi = 1.0) {
    std::vector<float> v(n);
    for (float& x : v) x = (float)rng.uniform_double(lo, hi);
    return v;
}

// |got − want| ≤ atol + rtol·|want| everywhere; atol scaled by the largest |want| (sums of many O(1) products).
void require_close_vec(const std::vector<float>& got, const std::vector<float>& want, double rtol, const char* what) {
    REQUIRE(got.size() == want.size());
    double m = 0;
    for (float w : want) m = std::max(m, (double)std::fabs(w));
    const double atol = rtol * std::max(1.0, m);
    int64_t bad = 0, first = -1;
    for (size_t i = 0; i < got.size(); ++i)
        if (!(std::fabs((double)got[i] - want[i]) <= atol + rtol * std::fabs(want[i]))) {
            if (first < 0) first = (int64_t)i;
            ++bad;
        }
    INFO(what << ": " << bad << " of " << got.size() << " outside tolerance"
              << (first >= 0 ? ", first at " + std::to_string(first) + ": " + std::to_string(got[first]) + " vs " +
                                   std::to_string(want[first])
                             : std::string()));
    REQUIRE(bad == 0);
}

struct Data {
    std::vector<float> x, w, b, dy, dx0, dw0;
};

Data make_data(const Geo& g, Rng& rng) {
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    const double ws = 1.0 / std::sqrt((double)g.C * g.R * g.S);
    return {rand_vec((int64_t)g.N * g.C * g.H * g.W, rng),  rand_vec((int64_t)g.K * g.C * g.R * g.S, rng, -ws, ws),
            rand_vec(g.K, rng),                              rand_vec((int64_t)g.N * g.K * Ho * Wo, rng),
            rand_vec((int64_t)g.N * g.C * g.H * g.W, rng),  rand_vec((int64_t)g.K * g.C * g.R * g.S, rng)};
}

struct Out {
    std::vector<float> y, dx, dw;
};

Out run_ref(const Geo& g, const Data& d) {
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    std::vector<float> col(std::max<int64_t>(1, conv2d_col_elems(g.C, g.R, g.S, Ho, Wo, g.stride, g.pad)));
    Out o{std::vector<float>((int64_t)g.N * g.K * Ho * Wo), d.dx0, d.dw0};
    conv2d_fprop_cpu<float>(o.y.data(), d.x.data(), d.w.data(), g.bias ? d.b.data() : nullptr, col.data(), g.N, g.C,
                            g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
    conv2d_backward_cpu<float>(o.dx.data(), o.dw.data(), nullptr, d.dy.data(), d.x.data(), d.w.data(), col.data(), g.N,
                               g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
    return o;
}

Out run_dnnl(const Geo& g, const Data& d, int threads) {
    const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
    std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, threads));
    Out o{std::vector<float>((int64_t)g.N * g.K * Ho * Wo), d.dx0, d.dw0};
    conv_dnnl_set_threads(threads);
    conv2d_dnnl_fprop(o.y.data(), d.x.data(), d.w.data(), g.bias ? d.b.data() : nullptr, work.data(), g.N, g.C, g.H,
                      g.W, g.K, g.R, g.S, g.stride, g.pad);
    conv2d_dnnl_backward(o.dx.data(), o.dw.data(), d.dy.data(), d.x.data(), d.w.data(), work.data(), g.N, g.C, g.H,
                         g.W, g.K, g.R, g.S, g.stride, g.pad);
    conv_dnnl_set_threads(1);
    return o;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Turns oneDNN on or off for a scope, then back to what it was.
struct DnnlSwitch {
    bool prev;
    explicit DnnlSwitch(bool on) : prev(conv_dnnl_on()) { conv_dnnl_set(on); }
    ~DnnlSwitch() { conv_dnnl_set(prev); }
};

}  // namespace

TEST_CASE("oneDNN conv2d matches the im2col + BLAS reference (fprop, dgrad, wgrad)", "[dnnl][conv]") {
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    Rng rng(1801);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    for (const Geo& g : geos) {
        INFO(geo_str(g));
        const Data d = make_data(g, rng);
        const Out r = run_ref(g, d), o = run_dnnl(g, d, 2);
        require_close_vec(o.y, r.y, 1e-5, "output");
        require_close_vec(o.dx, r.dx, 1e-5, "dx (accumulated)");
        require_close_vec(o.dw, r.dw, 1e-5, "dw (accumulated)");
    }
}

TEST_CASE("oneDNN's Winograd passes for 3x3 stride-1 convolutions match the reference and the direct ones",
          "[dnnl][conv][winograd]") {
    // make_plan (kernels/conv2d_dnnl.cpp): the training passes of yolov5n's bottleneck convolutions at 640 px sizes
    // go to oneDNN's Winograd F(4x4, 3x3) where it has one (AVX-512 cores); against the im2col reference at the
    // usual tolerance, against the direct algorithm (conv_dnnl_set_winograd(false)) likewise; threads as the thread
    // test. Maps under 16, little work (Ho·Wo·C under 16384) and strided convolutions keep the direct algorithm.
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    DnnlSwitch on(true);
    struct Wino {
        bool prev = conv_dnnl_set_winograd(true);
        ~Wino() { conv_dnnl_set_winograd(prev); }
    } restore;
    CHECK_FALSE(conv2d_dnnl_winograd(64, 12, 12, 64, 3, 3, 1, 1));  // 12x12 output: direct
    CHECK_FALSE(conv2d_dnnl_winograd(32, 40, 40, 64, 3, 3, 2, 1));  // stride 2: direct
    CHECK_FALSE(conv2d_dnnl_winograd(16, 24, 24, 16, 3, 3, 1, 1));  // few channels on a small map: direct
    if (!conv2d_dnnl_winograd(16, 32, 32, 16, 3, 3, 1, 1)) {
        WARN("oneDNN has no Winograd convolution on this CPU (it needs AVX-512): the direct algorithm runs");
        return;
    }
    Rng rng(1815);
    const std::vector<Geo> geos = {
        {2, 16, 32, 32, 16, 3, 3, 1, 1, false}, {1, 32, 24, 26, 32, 3, 3, 1, 1, false},
        {2, 64, 16, 16, 64, 3, 3, 1, 1, false}, {1, 128, 20, 20, 128, 3, 3, 1, 1, false},
        {1, 32, 23, 25, 16, 3, 3, 1, 1, false},  // sides that are no multiple of the 4x4 tiles
    };
    for (const Geo& g : geos) {
        INFO(geo_str(g));
        REQUIRE(conv2d_dnnl_winograd(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad));
        const Data d = make_data(g, rng);
        const Out r = run_ref(g, d), w1 = run_dnnl(g, d, 1), w2 = run_dnnl(g, d, 2);
        require_close_vec(w1.y, r.y, 1e-5, "output");
        require_close_vec(w1.dx, r.dx, 1e-5, "dx (accumulated)");
        require_close_vec(w1.dw, r.dw, 1e-5, "dw (accumulated)");
        REQUIRE(same_bits(w1.y, w2.y));
        REQUIRE(same_bits(w1.dx, w2.dx));
        REQUIRE(same_bits(w1.dw, w2.dw));
        conv_dnnl_set_winograd(false);
        REQUIRE_FALSE(conv2d_dnnl_winograd(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad));
        const Out dir = run_dnnl(g, d, 1);
        conv_dnnl_set_winograd(true);
        require_close_vec(w1.y, dir.y, 1e-5, "output against the direct algorithm");
        require_close_vec(w1.dx, dir.dx, 1e-5, "dx against the direct algorithm");
        require_close_vec(w1.dw, dir.dw, 1e-5, "dw against the direct algorithm");
        CHECK_FALSE(same_bits(w1.y, dir.y));  // a different algorithm did run
    }
}

TEST_CASE("oneDNN conv2d's fprop and dgrad bits do not depend on the thread count", "[dnnl][conv][threads]") {
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    Rng rng(1802);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    // At training sizes too: 320 px's first layers, where oneDNN has the most pixels to split.
    geos.push_back({1, 3, 320, 320, 16, 6, 6, 2, 2, false});
    geos.push_back({1, 16, 160, 160, 32, 3, 3, 2, 1, false});
    geos.push_back({1, 32, 80, 80, 16, 1, 1, 1, 0, false});
    geos.push_back({1, 16, 80, 80, 16, 3, 3, 1, 1, false});
    for (const Geo& g : geos) {
        INFO(geo_str(g));
        const Data d = make_data(g, rng);
        const Out a = run_dnnl(g, d, 1);
        for (int t : {2, 3}) {
            INFO(t << " threads against 1");
            const Out b = run_dnnl(g, d, t);
            REQUIRE(same_bits(a.y, b.y));
            REQUIRE(same_bits(a.dx, b.dx));
            REQUIRE(same_bits(a.dw, b.dw));  // wgrad runs on one thread whatever the setting
        }
    }
}

TEST_CASE("oneDNN conv2d with weights prepared once gives the per-call reorder's bits", "[dnnl][conv][weights]") {
    // conv2d_dnnl_weights (the ops reorder an op's weights once for all its image groups): fprop with and without
    // bias, with a post-op, and dgrad, against the same calls reordering the weights themselves.
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    DnnlSwitch on(true);
    Rng rng(1807);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    const Act relu{ActKind::ReLU, 0.f};
    int prepared = 0, split = 0;
    for (const Geo& g : geos)
        for (const Act act : {kNoAct, relu}) {
            INFO(geo_str(g) << ", activation " << (int)act.kind);
            const Data d = make_data(g, rng);
            const float* b = g.bias ? d.b.data() : nullptr;
            std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, 1));
            Out per_call = run_dnnl(g, d, 1), once{per_call.y, d.dx0, d.dw0};
            conv2d_dnnl_fprop(per_call.y.data(), d.x.data(), d.w.data(), b, work.data(), g.N, g.C, g.H, g.W, g.K, g.R,
                              g.S, g.stride, g.pad, act);
            const size_t nf = conv2d_dnnl_weights_floats(false, b, act, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad),
                         nd = conv2d_dnnl_weights_floats(true, false, kNoAct, g.C, g.H, g.W, g.K, g.R, g.S, g.stride,
                                                         g.pad);
            prepared += nf > 0 && nd > 0;
            // Random contents first: a prepare that wrote nothing would leave them, not the weights.
            std::vector<float> wf = rand_vec((int64_t)std::max<size_t>(nf, 1), rng),
                               wd = rand_vec((int64_t)std::max<size_t>(nd, 1), rng);
            conv2d_dnnl_weights(wf.data(), false, b, act, d.w.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
            conv2d_dnnl_weights(wd.data(), true, false, kNoAct, d.w.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride,
                                g.pad);
            std::fill(once.y.begin(), once.y.end(), 7.f);
            conv2d_dnnl_fprop(once.y.data(), d.x.data(), d.w.data(), b, work.data(), g.N, g.C, g.H, g.W, g.K, g.R, g.S,
                              g.stride, g.pad, act, nf ? wf.data() : nullptr);
            conv2d_dnnl_backward(once.dx.data(), nullptr, d.dy.data(), d.x.data(), d.w.data(), work.data(), g.N, g.C,
                                 g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, nd ? wd.data() : nullptr);
            REQUIRE(same_bits(once.y, per_call.y));
            REQUIRE(same_bits(once.dx, per_call.dx));
            // The same reorders split over output-channel parts (the ops run them on their threads), each part over
            // random contents: together they write every element the whole reorder writes, with its bits.
            for (const bool dg : {false, true}) {
                const size_t nw = dg ? nd : nf;
                if (!nw) continue;
                const bool bb = !dg && b;
                const Act aa = dg ? kNoAct : act;
                const int parts =
                    conv2d_dnnl_weights_parts(dg, bb, aa, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, 3);
                REQUIRE(parts >= 1);
                REQUIRE(parts <= 3);
                split += parts > 1;
                std::vector<float> wp = rand_vec((int64_t)nw, rng);
                for (int j = parts - 1; j >= 0; --j)
                    conv2d_dnnl_weights(wp.data(), dg, bb, aa, d.w.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride,
                                        g.pad, j, parts);
                REQUIRE(same_bits(wp, dg ? wd : wf));
            }
            // The weight gradient's finish (blocked partial added into (K,C,R,S)) split the same way.
            const size_t nb = conv2d_dnnl_wgrad_floats(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
            const int wparts = conv2d_dnnl_wgrad_parts(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, 2);
            REQUIRE(wparts >= 1);
            REQUIRE(wparts <= 2);
            if (wparts > 1) {
                ++split;
                const std::vector<float> dwb = rand_vec((int64_t)nb, rng);
                std::vector<float> whole = d.dw0, parted = d.dw0;
                conv2d_dnnl_wgrad_finish(whole.data(), dwb.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
                for (int j = 0; j < wparts; ++j)
                    conv2d_dnnl_wgrad_finish(parted.data(), dwb.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad,
                                             j, wparts);
                REQUIRE(same_bits(parted, whole));
                REQUIRE(!same_bits(whole, d.dw0));  // it added something
            }
        }
    CHECK(prepared > 0);  // oneDNN chose blocked weights somewhere: the prepared path ran
    CHECK(split > 0);     // and some were split into parts
}

TEST_CASE("oneDNN's dgrad and wgrad on one reorder of dy give the separate passes' bits", "[dnnl][conv][wgrad]") {
    // conv2d_dnnl_backward_blocked (the training backward): dinp += dgrad and the blocked weight gradient, image by
    // image, against conv2d_dnnl_backward then conv2d_dnnl_wgrad_blocked; the gradients start random.
    if (!conv_dnnl_built()) {
        SUCCEED("built without oneDNN");
        return;
    }
    DnnlSwitch on(true);
    Rng rng(4242);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    int shared = 0;
    for (const Geo& g : geos) {
        INFO(geo_str(g));
        const Data d = make_data(g, rng);
        std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, 1));
        const size_t nd =
            conv2d_dnnl_weights_floats(true, false, kNoAct, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        std::vector<float> wd(std::max<size_t>(nd, 1));
        conv2d_dnnl_weights(wd.data(), true, false, kNoAct, d.w.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        const float* wre = nd ? wd.data() : nullptr;
        shared += conv2d_dnnl_dy_shared(wre != nullptr, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        const size_t nb = conv2d_dnnl_wgrad_floats(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        std::vector<float> dx_sep = d.dx0, dx_one = d.dx0, dwb_sep = rand_vec((int64_t)nb, rng), dwb_one = dwb_sep;
        conv2d_dnnl_backward(dx_sep.data(), nullptr, d.dy.data(), d.x.data(), d.w.data(), work.data(), g.N, g.C, g.H,
                             g.W, g.K, g.R, g.S, g.stride, g.pad, wre);
        conv2d_dnnl_wgrad_blocked(dwb_sep.data(), false, d.dy.data(), d.x.data(), work.data(), g.N, g.C, g.H, g.W, g.K,
                                  g.R, g.S, g.stride, g.pad);
        conv2d_dnnl_backward_blocked(dx_one.data(), dwb_one.data(), d.dy.data(), d.x.data(), d.w.data(), wre,
                                     work.data(), g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        REQUIRE(same_bits(dx_one, dx_sep));
        REQUIRE(same_bits(dwb_one, dwb_sep));
        REQUIRE(!same_bits(dx_one, d.dx0));  // dgrad added something
    }
    CHECK(shared > 0);  // the shared path ran
}

TEST_CASE("oneDNN's weight gradient over several images per call matches the reference", "[dnnl][conv][wgrad]") {
    // conv2d_dnnl_wgrad_group (the ops' small maps, engine/ops/op.h wgrad_groups): N images in one call, written over
    // random contents, then finished into (K,C,R,S) as the one-image partials are.
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    DnnlSwitch on(true);
    Rng rng(1811);
    std::vector<Geo> geos = yolov5n_geos();
    for (Geo& g : geos) g.N = 6;
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    int grouped = 0;
    for (const Geo& g : geos) {
        INFO(geo_str(g));
        if (!conv2d_dnnl_wgrad_group_ok(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad)) continue;
        ++grouped;
        const Data d = make_data(g, rng);
        std::vector<char> work(conv2d_dnnl_wgrad_group_bytes(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad));
        std::vector<float> dwb =
            rand_vec((int64_t)conv2d_dnnl_wgrad_floats(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad), rng);
        conv2d_dnnl_wgrad_group(dwb.data(), d.dy.data(), d.x.data(), work.data(), g.N, g.C, g.H, g.W, g.K, g.R, g.S,
                                g.stride, g.pad);
        std::vector<float> dw = d.dw0;
        conv2d_dnnl_wgrad_finish(dw.data(), dwb.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad);
        require_close_vec(dw, run_ref(g, d).dw, 1e-5, "dweight");
    }
    CHECK(grouped >= (int)yolov5n_geos().size());
}

TEST_CASE("oneDNN fprop over a range of output channels gives the full convolution's bits", "[dnnl][conv][threads]") {
    // Batch 1 with several threads splits the output channels (conv_k_parts), so its bits must be the
    // whole convolution's: then y5detect gives the same boxes with any Y5_THREADS.
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    for (int K : {1, 16, 17, 24, 32, 255, 256})
        for (int want : {1, 2, 3, 5}) {
            const int parts = conv_k_parts(K, want);
            REQUIRE(parts >= 1);
            REQUIRE(parts <= want);
            REQUIRE(conv_k_start(K, parts, 0) == 0);
            REQUIRE(conv_k_start(K, parts, parts) == K);
            for (int j = 0; j < parts; ++j) {
                REQUIRE(conv_k_start(K, parts, j) < conv_k_start(K, parts, j + 1));
                REQUIRE(conv_k_start(K, parts, j) % 16 == 0);
            }
        }
    Rng rng(1804);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    geos.push_back({1, 3, 320, 320, 16, 6, 6, 2, 2, true});
    geos.push_back({1, 64, 80, 80, 255, 1, 1, 1, 0, true});
    for (Geo g : geos) {
        g.N = 1;
        const Data d = make_data(g, rng);
        const Out full = run_dnnl(g, d, 1);
        const int64_t P = (int64_t)conv_out_size(g.H, g.R, g.stride, g.pad) * conv_out_size(g.W, g.S, g.stride, g.pad);
        for (int want : {2, 3}) {
            const int parts = conv_k_parts(g.K, want);
            INFO(geo_str(g) << ", " << parts << " parts");
            std::vector<float> y(full.y.size());
            for (int j = 0; j < parts; ++j) {
                const int k0 = conv_k_start(g.K, parts, j), k1 = conv_k_start(g.K, parts, j + 1);
                std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, k1 - k0, g.R, g.S, g.stride, g.pad, 1));
                conv2d_dnnl_fprop(y.data() + k0 * P, d.x.data(), d.w.data() + (int64_t)k0 * g.C * g.R * g.S,
                                  g.bias ? d.b.data() + k0 : nullptr, work.data(), 1, g.C, g.H, g.W, k1 - k0, g.R, g.S,
                                  g.stride, g.pad);
            }
            REQUIRE(same_bits(y, full.y));
        }
    }
}

TEST_CASE("conv2d, conv2d_parts and conv1x1_maps with oneDNN match the reference path", "[dnnl][conv][parts]") {
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    Rng rng(1803);
    TestCtx T;
    auto run = [&](bool on, auto&& op, std::vector<Tensor> ins, const Tensor& dy) {
        DnnlSwitch sw(on);
        std::vector<Var> vs;
        for (const Tensor& t : ins) vs.push_back(T.tape.leaf(t));
        Var y = op(vs);
        Tensor dyc = dy;
        T.tape.backward(y, &dyc);
        std::vector<Tensor> r = {copy_of(T.data, y.t)};
        for (const Var& v : vs) r.push_back(copy_of(T.data, T.tape.grad(v)));
        T.tape.clear();
        return r;
    };
    auto compare = [&](const std::vector<Tensor>& got, const std::vector<Tensor>& want) {
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) {
            double m = 0;
            for (int64_t j = 0; j < want[i].numel(); ++j) m = std::max(m, std::fabs(at(want[i], j)));
            require_close(got[i], want[i], 1e-5 * std::max(1.0, m), 1e-5, i ? "gradient " + std::to_string(i) : "output");
        }
    };
    SECTION("conv2d, batch 5 (more images than threads), 3x3 stride 2 with a bias") {
        Tensor x = rand_tensor(T.data, {5, 24, 17, 15}, DType::F32, rng), w = rand_tensor(T.data, {40, 24, 3, 3}, DType::F32, rng, -0.1, 0.1);
        Tensor b = rand_tensor(T.data, {40}, DType::F32, rng), dy = rand_tensor(T.data, {5, 40, 9, 8}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv2d(T.ctx, v[0], v[1], &v[2], 2, 1); };
        compare(run(true, op, {x, w, b}, dy), run(false, op, {x, w, b}, dy));
    }
    SECTION("conv2d, batch 19 (8 groups of 2 or 3 images), the weight used twice (its gradient added to)") {
        Tensor x = rand_tensor(T.data, {19, 16, 12, 10}, DType::F32, rng), w = rand_tensor(T.data, {40, 16, 3, 3}, DType::F32, rng, -0.1, 0.1);
        Tensor x2 = rand_tensor(T.data, {19, 16, 12, 10}, DType::F32, rng), dy = rand_tensor(T.data, {19, 40, 12, 10}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) {
            return add(T.ctx, conv2d(T.ctx, v[0], v[1], nullptr, 1, 1), conv2d(T.ctx, v[2], v[1], nullptr, 1, 1));
        };
        compare(run(true, op, {x, w, x2}, dy), run(false, op, {x, w, x2}, dy));
    }
    SECTION("conv2d, batch 1 (oneDNN's threads)") {
        Tensor x = rand_tensor(T.data, {1, 16, 32, 32}, DType::F32, rng), w = rand_tensor(T.data, {32, 16, 3, 3}, DType::F32, rng, -0.1, 0.1);
        Tensor dy = rand_tensor(T.data, {1, 32, 16, 16}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv2d(T.ctx, v[0], v[1], nullptr, 2, 1); };
        compare(run(true, op, {x, w}, dy), run(false, op, {x, w}, dy));
    }
    SECTION("conv2d_parts, three parts, batch 11 (groups of 1 and 2 images)") {
        Tensor x0 = rand_tensor(T.data, {11, 16, 8, 8}, DType::F32, rng), x1 = rand_tensor(T.data, {11, 8, 8, 8}, DType::F32, rng);
        Tensor x2 = rand_tensor(T.data, {11, 24, 8, 8}, DType::F32, rng), w = rand_tensor(T.data, {32, 48, 1, 1}, DType::F32, rng, -0.2, 0.2);
        Tensor b = rand_tensor(T.data, {32}, DType::F32, rng), dy = rand_tensor(T.data, {11, 32, 8, 8}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv2d_parts(T.ctx, {v[0], v[1], v[2]}, v[3], &v[4]); };
        compare(run(true, op, {x0, x1, x2, w, b}, dy), run(false, op, {x0, x1, x2, w, b}, dy));
    }
    SECTION("conv2d at 6x6 and 3x3, batch 16 (the weight gradient over groups of 8 and 16 images beside the dgrad)") {
        for (const int hw : {6, 3}) {
            INFO(hw << "x" << hw);
            const int64_t in_img = (int64_t)64 * hw * hw, out_img = (int64_t)64 * hw * hw;
            REQUIRE(wgrad_groups(16, in_img, out_img, hw * hw) == (hw == 6 ? 2 : 1));
            Tensor x = rand_tensor(T.data, {16, 64, hw, hw}, DType::F32, rng);
            Tensor w = rand_tensor(T.data, {64, 64, 3, 3}, DType::F32, rng, -0.1, 0.1);
            Tensor dy = rand_tensor(T.data, {16, 64, hw, hw}, DType::F32, rng);
            auto op = [&](std::vector<Var>& v) { return conv2d(T.ctx, v[0], v[1], nullptr, 1, 1); };
            compare(run(true, op, {x, w}, dy), run(false, op, {x, w}, dy));
        }
    }
    // Pointwise convolutions: fprop and dgrad as GEMMs from kConvGemmMinPixels (OpenBLAS's, oneDNN's sgemm from
    // kConvSgemmPixels), wgrad as a GEMM below kConvGemmWgradPixels, oneDNN's convolution otherwise: each side of the
    // thresholds, for conv2d, conv2d_parts and conv1x1_maps.
    SECTION("pointwise conv2d on each side of the GEMM thresholds, with a bias") {
        for (const auto& hw : {std::array<int, 2>{7, 9}, std::array<int, 2>{8, 8}, std::array<int, 2>{11, 11},
                               std::array<int, 2>{12, 12}, std::array<int, 2>{15, 17}, std::array<int, 2>{16, 16}}) {
            const int64_t P = (int64_t)hw[0] * hw[1];
            INFO(hw[0] << "x" << hw[1] << " pixels");
            REQUIRE(conv_gemm_data(160, 1, 1, 1, 0, P) == (P >= kConvGemmMinPixels));
            REQUIRE(conv_gemm_wgrad(1, 1, 1, 0, P) == (P < kConvGemmWgradPixels));
            Tensor x = rand_tensor(T.data, {3, 160, hw[0], hw[1]}, DType::F32, rng);
            Tensor w = rand_tensor(T.data, {40, 160, 1, 1}, DType::F32, rng, -0.2, 0.2);
            Tensor b = rand_tensor(T.data, {40}, DType::F32, rng), dy = rand_tensor(T.data, {3, 40, hw[0], hw[1]}, DType::F32, rng);
            auto op = [&](std::vector<Var>& v) { return conv2d(T.ctx, v[0], v[1], &v[2], 1, 0); };
            compare(run(true, op, {x, w, b}, dy), run(false, op, {x, w, b}, dy));
        }
    }
    SECTION("conv2d_parts, two parts, at 36x30 (sgemm fprop and dgrad, oneDNN wgrad over the parts copied)") {
        Tensor x0 = rand_tensor(T.data, {3, 16, 36, 30}, DType::F32, rng), x1 = rand_tensor(T.data, {3, 8, 36, 30}, DType::F32, rng);
        Tensor w = rand_tensor(T.data, {24, 24, 1, 1}, DType::F32, rng, -0.2, 0.2), dy = rand_tensor(T.data, {3, 24, 36, 30}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv2d_parts(T.ctx, {v[0], v[1]}, v[2], nullptr); };
        compare(run(true, op, {x0, x1, w}, dy), run(false, op, {x0, x1, w}, dy));
    }
    SECTION("conv2d_parts, two parts, at 3x3 (oneDNN's fprop and dgrad, a GEMM wgrad)") {
        REQUIRE(!conv_gemm_data(144, 1, 1, 1, 0, 9));
        REQUIRE(conv_gemm_wgrad(1, 1, 1, 0, 9));
        Tensor x0 = rand_tensor(T.data, {4, 48, 3, 3}, DType::F32, rng), x1 = rand_tensor(T.data, {4, 96, 3, 3}, DType::F32, rng);
        Tensor w = rand_tensor(T.data, {32, 144, 1, 1}, DType::F32, rng, -0.2, 0.2), dy = rand_tensor(T.data, {4, 32, 3, 3}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv2d_parts(T.ctx, {v[0], v[1]}, v[2], nullptr); };
        compare(run(true, op, {x0, x1, w}, dy), run(false, op, {x0, x1, w}, dy));
    }
    SECTION("conv1x1_maps at 32x32 (sgemm, oneDNN wgrad)") {
        Tensor x = rand_tensor(T.data, {2, 32, 32, 32}, DType::F32, rng), w = rand_tensor(T.data, {255, 32, 1, 1}, DType::F32, rng, -0.1, 0.1);
        Tensor b = rand_tensor(T.data, {255}, DType::F32, rng), dy = rand_tensor(T.data, {2, 3, 32, 32, 85}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv1x1_maps(T.ctx, v[0], v[1], &v[2], 3); };
        compare(run(true, op, {x, w, b}, dy), run(false, op, {x, w, b}, dy));
    }
    SECTION("conv1x1_maps (Detect's head), batch 10 (groups of 1 and 2 images), 3 anchors") {
        Tensor x = rand_tensor(T.data, {10, 64, 8, 8}, DType::F32, rng), w = rand_tensor(T.data, {255, 64, 1, 1}, DType::F32, rng, -0.1, 0.1);
        Tensor b = rand_tensor(T.data, {255}, DType::F32, rng), dy = rand_tensor(T.data, {10, 3, 8, 8, 85}, DType::F32, rng);
        auto op = [&](std::vector<Var>& v) { return conv1x1_maps(T.ctx, v[0], v[1], &v[2], 3); };
        compare(run(true, op, {x, w, b}, dy), run(false, op, {x, w, b}, dy));
    }
}

TEST_CASE("oneDNN fprop with the activation as its post-op matches conv then y5's activation", "[dnnl][conv][act]") {
    // Inference (conv2d_act): bias and activation inside the primitive (ReLU, LeakyReLU; SiLU stays y5's, applied
    // after the primitive: conv_dnnl_act_fusable); the bound is fprop's. The channel split and the thread count
    // must not change the bits (y5detect's boxes do not depend on Y5_THREADS).
    if (!conv_dnnl_built()) {
        WARN("built without oneDNN (Y5_DNNL=OFF): nothing to compare");
        return;
    }
    Rng rng(1805);
    std::vector<Geo> geos = yolov5n_geos();
    geos.insert(geos.end(), kOdd.begin(), kOdd.end());
    geos.push_back({1, 3, 67, 61, 16, 6, 6, 2, 2, true});    // the stem on odd sizes
    geos.push_back({1, 20, 23, 19, 40, 3, 3, 2, 1, true});   // C, K not multiples of 16
    geos.push_back({1, 72, 11, 13, 85, 1, 1, 1, 0, true});   // 1×1, K odd
    geos.push_back({2, 5, 9, 7, 33, 3, 3, 1, 1, false});     // no bias
    CHECK_FALSE(conv_dnnl_act_fusable(Act{ActKind::SiLU, 0.f}));
    for (const Act act : {Act{ActKind::ReLU, 0.f}, Act{ActKind::LeakyReLU, 0.1f}}) {
        REQUIRE(conv_dnnl_act_fusable(act));
        for (const Geo& g : geos) {
            INFO(geo_str(g) << ", activation " << (int)act.kind);
            const Data d = make_data(g, rng);
            const float* b = g.bias ? d.b.data() : nullptr;
            const int64_t P = (int64_t)conv_out_size(g.H, g.R, g.stride, g.pad) * conv_out_size(g.W, g.S, g.stride, g.pad);
            Out r = run_ref(g, d);
            act_forward_cpu<float>(r.y.data(), r.y.data(), (int64_t)r.y.size(), act);
            std::vector<float> y1(r.y.size()), y2(r.y.size()), ys(r.y.size());
            for (int t : {1, 2}) {
                std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, t));
                conv_dnnl_set_threads(t);
                conv2d_dnnl_fprop(t == 1 ? y1.data() : y2.data(), d.x.data(), d.w.data(), b, work.data(), g.N, g.C,
                                  g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, act);
                conv_dnnl_set_threads(1);
            }
            require_close_vec(y1, r.y, 1e-5, "conv + activation");
            REQUIRE(same_bits(y1, y2));
            const int parts = conv_k_parts(g.K, 2);
            for (int n = 0; n < g.N; ++n)
                for (int j = 0; j < parts; ++j) {
                    const int k0 = conv_k_start(g.K, parts, j), k1 = conv_k_start(g.K, parts, j + 1);
                    std::vector<char> work(conv2d_dnnl_work_bytes(g.C, g.H, g.W, k1 - k0, g.R, g.S, g.stride, g.pad, 1));
                    conv2d_dnnl_fprop(ys.data() + ((int64_t)n * g.K + k0) * P, d.x.data() + (int64_t)n * g.C * g.H * g.W,
                                      d.w.data() + (int64_t)k0 * g.C * g.R * g.S, b ? b + k0 : nullptr, work.data(), 1,
                                      g.C, g.H, g.W, k1 - k0, g.R, g.S, g.stride, g.pad, act);
                }
            REQUIRE(same_bits(ys, y1));
        }
    }
}

TEST_CASE("conv2d_act and conv2d_parts_act match conv2d / conv2d_parts then activation", "[dnnl][conv][act][parts]") {
    // With oneDNN on within fprop's bound of the reference path's conv + activation, and the same bits as the two
    // ops run through oneDNN (SiLU and Hardswish are y5's, applied after the primitive: y5detect's boxes equal the
    // GPU's); with it off, and in f16, the same bits as the two ops.
    Rng rng(1806);
    TestCtx T;
    NoGrad ng(T.tape);
    const Act silu{ActKind::SiLU, 0.f}, hsw{ActKind::Hardswish, 0.f};  // Hardswish: no post-op, applied after
    Tensor x = rand_tensor(T.data, {1, 24, 17, 15}, DType::F32, rng), w = rand_tensor(T.data, {40, 24, 3, 3}, DType::F32, rng, -0.1, 0.1);
    Tensor b = rand_tensor(T.data, {40}, DType::F32, rng);
    Tensor x0 = rand_tensor(T.data, {3, 16, 8, 8}, DType::F32, rng), x1 = rand_tensor(T.data, {3, 8, 8, 8}, DType::F32, rng);
    Tensor w1 = rand_tensor(T.data, {33, 24, 1, 1}, DType::F32, rng, -0.2, 0.2), b1 = rand_tensor(T.data, {33}, DType::F32, rng);
    auto vars = [&](std::vector<Tensor> ts) {
        std::vector<Var> v;
        for (const Tensor& t : ts) v.push_back(Tape::constant(t));
        return v;
    };
    auto fused = [&](const std::vector<Var>& v, Act a, bool parts) {
        return copy_of(T.data, parts ? conv2d_parts_act(T.ctx, {v[0], v[1]}, v[2], &v[3], a).t
                                     : conv2d_act(T.ctx, v[0], v[1], &v[2], 2, 1, a).t);
    };
    auto two_ops = [&](const std::vector<Var>& v, Act a, bool parts) {
        const Var y = parts ? conv2d_parts(T.ctx, {v[0], v[1]}, v[2], &v[3]) : conv2d(T.ctx, v[0], v[1], &v[2], 2, 1);
        return copy_of(T.data, activation(T.ctx, y, a).t);
    };
    for (bool parts : {false, true}) {
        INFO((parts ? "conv2d_parts_act" : "conv2d_act"));
        const std::vector<Tensor> ts = parts ? std::vector<Tensor>{x0, x1, w1, b1} : std::vector<Tensor>{x, w, b};
        const std::vector<Var> v = vars(ts);
        for (Act a : {silu, hsw}) {
            INFO("activation " << (int)a.kind);
            Tensor want;
            {
                DnnlSwitch sw(false);
                want = two_ops(v, a, parts);
                const Tensor got = fused(v, a, parts);
                REQUIRE(std::memcmp(got.data, want.data, want.bytes()) == 0);
            }
            if (conv_dnnl_built()) {
                DnnlSwitch sw(true);
                double m = 0;
                for (int64_t j = 0; j < want.numel(); ++j) m = std::max(m, std::fabs(at(want, j)));
                const Tensor got = fused(v, a, parts), two = two_ops(v, a, parts);
                require_close(got, want, 1e-5 * std::max(1.0, m), 1e-5, "oneDNN conv + activation");
                REQUIRE(std::memcmp(got.data, two.data, two.bytes()) == 0);
            }
            std::vector<Tensor> th;
            for (const Tensor& t : ts) th.push_back(as_dtype(T.data, t, DType::F16));
            const std::vector<Var> vh = vars(th);
            const Tensor got = fused(vh, a, parts), wh = two_ops(vh, a, parts);
            REQUIRE(std::memcmp(got.data, wh.data, wh.bytes()) == 0);
        }
    }
}

TEST_CASE("the stem's direct convolution into the blocked layout matches the reference", "[dnnl][conv][stem]") {
    // kernels/conv_stem.h: act(conv + bias) of an NCHW image into (K/B, Ho, Wo, B) for B 8 and 16, against the
    // im2col + BLAS reference then y5's activation; output rows split anywhere give the same bits; dnnl_bconv takes
    // it for a model's first convolution (the image, no addend) and gives its bits.
    if (!stem_conv_fits(3, 16, 8)) {
        WARN("not an AVX2 + FMA build: stem_conv is never taken");
        return;
    }
    Rng rng(2112);
    const std::vector<Geo> geos = {
        {1, 3, 67, 61, 16, 6, 6, 2, 2, true},  // yolov5n's stem on odd sizes: edge columns and rows on every side
        {1, 3, 64, 64, 32, 6, 6, 2, 2, true},  // two pairs of 8-channel groups
        {1, 3, 13, 17, 48, 3, 3, 1, 1, true},  // stride 1
        {1, 4, 9, 23, 24, 5, 5, 3, 2, true},   // stride 3 (not a constant in the kernel), 3 groups (a single tail)
        {1, 1, 5, 5, 8, 7, 7, 1, 3, true},     // a kernel wider than the image: every column checked
    };
    for (const Geo& g : geos)
        for (const Act act : {Act{ActKind::SiLU, 0.f}, kNoAct, Act{ActKind::LeakyReLU, 0.1f}}) {
            const Data d = make_data(g, rng);
            std::vector<float> y8;  // block 8's result unblocked: block 16's 512-bit tiles (AVX-512) give its bits
            for (const int B : {8, 16}) {
                if (!stem_conv_fits(g.C, g.K, B)) continue;
                INFO(geo_str(g) << ", activation " << (int)act.kind << ", block " << B);
                const int Ho = conv_out_size(g.H, g.R, g.stride, g.pad), Wo = conv_out_size(g.W, g.S, g.stride, g.pad);
                const int64_t P = (int64_t)Ho * Wo;
                Out r = run_ref(g, d);
                act_forward_cpu<float>(r.y.data(), r.y.data(), (int64_t)r.y.size(), act);
                std::vector<float> w8(stem_weights_floats(g.C, g.K, g.R, g.S));
                stem_weights(w8.data(), d.w.data(), g.C, g.K, g.R, g.S);
                std::vector<float> blk(r.y.size(), NAN), split(r.y.size(), NAN);  // NaN: every output written
                stem_conv(blk.data(), d.x.data(), w8.data(), d.b.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad,
                          B, act, 0, Ho);
                for (const auto [y0, y1] : {std::pair{0, Ho / 3}, std::pair{Ho / 3, Ho}})  // rows split in two
                    stem_conv(split.data(), d.x.data(), w8.data(), d.b.data(), g.C, g.H, g.W, g.K, g.R, g.S, g.stride,
                              g.pad, B, act, y0, y1);
                REQUIRE(same_bits(split, blk));
                std::vector<float> y(r.y.size());
                for (int k = 0; k < g.K; ++k)
                    for (int64_t p = 0; p < P; ++p) y[k * P + p] = blk[((int64_t)(k / B) * P + p) * B + k % B];
                require_close_vec(y, r.y, 1e-5, "stem_conv");
                if (B == 8) y8 = y;
                else REQUIRE(same_bits(y, y8));
                if (B == dnnl_block()) {
                    const BConv bc{g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, true, 1};
                    std::vector<float> wd((dnnl_bconv_weights_bytes(bc, act, false) + 3) / 4), yd(r.y.size(), NAN);
                    dnnl_bconv_weights(wd.data(), d.w.data(), bc, act, false);
                    dnnl_bconv(yd.data(), d.x.data(), wd.data(), d.b.data(), bc, act);
                    REQUIRE(same_bits(yd, blk));
                }
            }
        }
}
