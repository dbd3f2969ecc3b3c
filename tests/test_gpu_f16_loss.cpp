/*
 * GPU tests of the YOLO loss and Detect's decode on f16 maps (kernels/loss.cu, kernels/detect.cu through their f16
 * launchers) against the CPU f16 references (yolo_loss_cpu<f16>, detect_decode_cpu<f16>; themselves checked against
 * the f32 path in tests/test_f16_loss.cpp), as tests/test_gpu_loss.cpp does for f32:
 *   loss items: 1e-5 relative (float terms, summed in double in another order on the GPU);
 *   map gradients (f16): 1e-5 of the map's largest gradient + one f16 ulp relative (2^-10): the float sums may
 *     differ by float rounding (FMAs, libm's exp/atan/log1p on the GPU), which can move an element across an f16
 *     rounding boundary: one ulp;
 *   decode (f32 output): as the f32 decode test, 1e-4 absolute + 1e-5 relative (FMA and expf differences).
 */
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/detect.h"
#include "layers/yolo.h"
#include "tests/test_gpu.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

const std::vector<float> kAnchors3 = {10 / 8.f,   13 / 8.f,  16 / 8.f,   30 / 8.f,   33 / 8.f,   23 / 8.f,
                                      30 / 16.f,  61 / 16.f, 62 / 16.f,  45 / 16.f,  59 / 16.f,  119 / 16.f,
                                      116 / 32.f, 90 / 32.f, 156 / 32.f, 198 / 32.f, 373 / 32.f, 326 / 32.f};
const std::vector<float> kAnchors2 = {1.25f,  1.625f,  2.0f,   3.75f,   4.125f, 2.875f,
                                      1.875f, 3.8125f, 3.875f, 2.8125f, 3.6875f, 7.4375f};

struct Case {
    int bs = 2, nc = 80;
    std::vector<std::pair<int, int>> grids;
    std::vector<float> anchors, targets;
    LossHyp h;
};

void add_target(std::vector<float>& t, int b, int cls, float x, float y, float w, float h) {
    t.insert(t.end(), {(float)b, (float)cls, x, y, w, h});
}

// n random targets per image, plus duplicates in the last image: a row three times, a second box in its cell,
// centres on cell edges and the image border.
std::vector<float> make_targets(Rng& rng, int bs, int nc, int n, double lo, double hi) {
    std::vector<float> t;
    for (int b = 0; b < bs; ++b)
        for (int k = 0; k < n; ++k) {
            const float w = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            const float h = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            add_target(t, b, (int)rng.randint((uint32_t)nc), (float)rng.uniform_double(0.0, 1.0),
                       (float)rng.uniform_double(0.0, 1.0), w, h);
        }
    const int b = bs - 1;
    for (int r = 0; r < 3; ++r) add_target(t, b, nc / 3, 0.37f, 0.42f, 0.2f, 0.25f);
    add_target(t, b, (nc / 3 + 1) % nc, 0.371f, 0.423f, 0.26f, 0.2f);
    add_target(t, b, 0, 0.5f, 0.5f, 0.2f, 0.25f);
    add_target(t, b, nc - 1, 1.0f, 0.3f, 0.2f, 0.25f);
    add_target(t, b, 0, 0.0f, 0.0f, 0.2f, 0.25f);
    return t;
}

void check_item(double got, double want, const char* what) {
    INFO(what << ": gpu " << got << ", cpu " << want);
    CHECK(std::fabs(got - want) <= 1e-5 * std::fabs(want) + 1e-12);
}

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

void check_grad16(const Tensor& got, const Tensor& want, const std::string& what) {
    REQUIRE(got.dtype == DType::F16);
    REQUIRE(max_abs(want) > 0);
    require_close(got, want, 1e-5 * max_abs(want), 1.0 / 1024, what);
}

// The loss on the device (f16 leaves, backward with gradient `scale`) against yolo_loss_cpu<f16> (its accumulate
// mode with g = scale into zeroed f16 gradients: what the tape's fresh gradients hold).
void run_case(const Case& lc, uint64_t seed, float scale) {
    Gpu& g = gpu();
    g.reset();
    Rng rng(seed);
    const int nl = (int)lc.grids.size(), na = 3, no = 5 + lc.nc, nt = (int)lc.targets.size() / 6;
    std::vector<Tensor> maps, dmaps;
    std::vector<const f16*> mp;
    std::vector<f16*> dp;
    std::vector<int> ny, nx;
    for (auto [h, w] : lc.grids) {
        maps.push_back(rand_tensor(g.host, {lc.bs, na, h, w, no}, DType::F16, rng, -4.0, 4.0));
        dmaps.push_back(g.host.tensor(maps.back().shape, DType::F16));
        std::memset(dmaps.back().data, 0, dmaps.back().bytes());
        mp.push_back(maps.back().ptr<f16>());
        dp.push_back(dmaps.back().ptr<f16>());
        ny.push_back(h);
        nx.push_back(w);
    }
    Tensor tgt = g.host.tensor({nt, 6}), anc = g.host.tensor({nl, na, 2});
    if (nt) std::memcpy(tgt.data, lc.targets.data(), tgt.bytes());
    std::memcpy(anc.data, lc.anchors.data(), anc.bytes());
    const LossItems want =
        yolo_loss_cpu<f16>(mp, dp, ny, nx, lc.bs, na, no, tgt.ptr<float>(), nt, anc.ptr<float>(), lc.h, nullptr, &scale);

    std::vector<Var> vars;
    for (const Tensor& m : maps) vars.push_back(g.tape.leaf(g.upload(m)));
    YoloLoss L = yolo_loss(g.ctx, vars, tgt, anc, lc.h);
    REQUIRE(L.total.t.dtype == DType::F32);
    check_item(L.items.lbox, want.lbox, "lbox");
    check_item(L.items.lobj, want.lobj, "lobj");
    check_item(L.items.lcls, want.lcls, "lcls");
    check_item(L.items.total, want.total, "total");
    CHECK(g.download(L.total.t).ptr<float>()[0] == (float)L.items.total);
    g.tape.backward(L.total, nullptr, scale);
    for (int i = 0; i < nl; ++i) check_grad16(g.download(g.tape.grad(vars[i])), dmaps[i], "map " + std::to_string(i));
    {
        NoGrad ng(g.tape);
        YoloLoss V = yolo_loss(g.ctx, vars, tgt, anc, lc.h);
        check_item(V.items.lobj, want.lobj, "lobj without gradient");
        CHECK(!V.total.requires_grad());
    }
    g.tape.clear();
}

}  // namespace

TEST_CASE("f16 yolo loss on the GPU against the CPU f16 reference", "[gpu][f16][loss]") {
    Rng rng(301);
    SECTION("three levels, nc 80, batch 2, loss scale 65536") {
        Case c;
        c.grids = {{16, 20}, {8, 10}, {4, 5}}, c.anchors = kAnchors3;
        c.targets = make_targets(rng, c.bs, c.nc, 10, 0.02, 0.7);
        run_case(c, 1, 65536.f);
    }
    SECTION("nc 1, label smoothing, pos_weight and gains, batch 3, gradient 1") {
        Case c;
        c.bs = 3, c.nc = 1, c.grids = {{8, 12}, {4, 6}, {2, 3}}, c.anchors = kAnchors3;
        c.targets = make_targets(rng, c.bs, c.nc, 6, 0.05, 0.8);
        c.h.label_smoothing = 0.1, c.h.cls_pw = 1.2, c.h.obj_pw = 0.8, c.h.box = 0.045, c.h.obj = 1.3;
        run_case(c, 2, 1.f);
    }
    SECTION("two levels (balance table of 5), nc 3, scale 0.37") {
        Case c;
        c.nc = 3, c.grids = {{4, 6}, {2, 3}}, c.anchors = kAnchors2;
        c.targets = make_targets(rng, c.bs, c.nc, 5, 0.05, 0.7);
        run_case(c, 3, 0.37f);
    }
    SECTION("no targets") {
        Case c;
        c.grids = {{8, 12}, {4, 6}, {2, 3}}, c.anchors = kAnchors3;
        run_case(c, 4, 1024.f);
    }
}

// The loss's backward adds into a gradient that already holds something: an f16 op recorded after the loss on
// the same map runs its backward first. GPU against the same graph on the CPU in f16.
TEST_CASE("f16 yolo loss on the GPU accumulates into an existing gradient", "[gpu][f16][loss][tape]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(302);
    TestCtx tc;
    const std::vector<std::pair<int, int>> grids = {{16, 20}, {8, 10}, {4, 5}};
    const std::vector<float> tv = make_targets(rng, 2, 80, 8, 0.03, 0.8);
    const int nt = (int)tv.size() / 6;
    Tensor tgt = tc.data.tensor({nt, 6}), anc = tc.data.tensor({3, 3, 2});
    std::memcpy(tgt.data, tv.data(), tgt.bytes());
    std::memcpy(anc.data, kAnchors3.data(), anc.bytes());
    std::vector<Var> gv, cv;
    for (auto [h, w] : grids) {
        Tensor m = rand_tensor(tc.data, {2, 3, h, w, 85}, DType::F16, rng, -4.0, 4.0);
        gv.push_back(g.tape.leaf(g.upload(m)));
        cv.push_back(tc.tape.leaf(m));
    }
    YoloLoss G = yolo_loss(g.ctx, gv, tgt, anc, LossHyp{}), C = yolo_loss(tc.ctx, cv, tgt, anc, LossHyp{});
    check_item(G.items.total, C.items.total, "total");
    Var gz = add(g.ctx, gv[0], gv[0]), cz = add(tc.ctx, cv[0], cv[0]);  // backward first: 2·seed into map 0's gradient
    Tensor zseed = rand_tensor(tc.data, gz.t.shape, DType::F16, rng, -0.01, 0.01);
    Tensor lseed = tc.data.tensor({1});
    lseed.ptr<float>()[0] = 512.f;
    g.tape.backward({G.total, gz}, {g.upload(lseed), g.upload(zseed)});
    tc.tape.backward({C.total, cz}, {lseed, zseed});
    for (int i = 0; i < 3; ++i) check_grad16(g.download(g.tape.grad(gv[i])), tc.tape.grad(cv[i]), "map " + std::to_string(i));
    g.tape.clear();
}

TEST_CASE("f16 Detect decode on the GPU against the CPU f16 reference", "[gpu][f16][detect]") {
    Gpu& g = gpu();
    Rng rng(303);
    struct Level {
        int ny, nx;
        float stride;
    };
    const std::vector<std::vector<Level>> heads = {{{80, 80, 8}, {40, 40, 16}, {20, 20, 32}}, {{5, 7, 8}, {3, 4, 16}, {1, 2, 32}}};
    const int nos[] = {85, 6};
    for (size_t h = 0; h < heads.size(); ++h) {
        g.reset();
        const int bs = 2, na = 3, no = nos[h];
        int64_t total = 0;
        for (const Level& l : heads[h]) total += (int64_t)na * l.ny * l.nx;
        Tensor want = g.host.tensor({bs, total, no}), got = g.act.tensor({bs, total, no});
        Tensor anc = rand_tensor(g.host, {(int64_t)heads[h].size(), na, 2}, DType::F32, rng, 0.5, 6.0);
        Tensor danc = g.upload(anc);
        int64_t offset = 0;
        for (size_t i = 0; i < heads[h].size(); ++i) {
            const Level& l = heads[h][i];
            Tensor m = rand_tensor(g.host, {bs, na, l.ny, l.nx, no}, DType::F16, rng, -6, 6);
            Tensor dm = g.upload(m);
            detect_decode_cpu<f16>(want.ptr<float>(), m.ptr<f16>(), anc.ptr<float>() + 2 * na * i, l.stride, bs, na,
                                   l.ny, l.nx, no, total, offset);
            detect_decode_cuda(got.ptr<float>(), dm.ptr<f16>(), danc.ptr<float>() + 2 * na * i, l.stride, bs, na, l.ny,
                               l.nx, no, total, offset, g.cuda->stream);
            offset += (int64_t)na * l.ny * l.nx;
        }
        require_close(g.download(got), want, 1e-4, 1e-5, "f16 detect decode");
    }
}

#endif
