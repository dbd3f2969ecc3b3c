/*
 * CPU tests of the YOLO loss and Detect's decode on mixed precision's f16 maps: the f16 path reads the f16 values
 * as float and runs the f32 path's per-element math on them, so against the f32 path on the same values (the f16
 * maps widened exactly to f32):
 *   loss items: equal (the same float terms summed in double in the same order);
 *   map gradients: the f32 gradient rounded once to f16, bit for bit (the f16 backward sums each element's
 *     gradient in float as the f32 dmap does, then stores st(g·d + ld(grad)) as the f32 path's axpy computes it
 *     in float; the build has -ffp-contract=off, so no FMA separates the two);
 *   decode: equal (detect_decode_value on the same floats).
 * Targets cover duplicates (repeated rows, two boxes in one cell, border cells) and 3- and 2-level heads.
 */
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/detect.h"
#include "layers/model.h"
#include "layers/yolo.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

namespace {

struct F16LossCase {
    int bs = 2, nc = 80;
    std::vector<std::pair<int, int>> grids;  // (ny, nx) per level
    std::vector<float> anchors;              // (nl, 3, 2), grid units
    std::vector<float> targets;              // (nt, 6)
    LossHyp h;
};

void add_target(std::vector<float>& t, int b, int cls, float x, float y, float w, float h) {
    t.insert(t.end(), {(float)b, (float)cls, x, y, w, h});
}

// n random targets per image: centres anywhere, sizes log-uniform in [lo, hi] (some match several anchors).
void random_targets(std::vector<float>& t, Rng& rng, int bs, int nc, int n, double lo, double hi) {
    for (int b = 0; b < bs; ++b)
        for (int k = 0; k < n; ++k) {
            const float w = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            const float h = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            add_target(t, b, (int)rng.randint((uint32_t)nc), (float)rng.uniform_double(0.0, 1.0),
                       (float)rng.uniform_double(0.0, 1.0), w, h);
        }
}

// Duplicates: a row three times, a second box in the same cell, centres on cell edges and the image border
// (the clamped centre cell and a neighbour coincide): several entries on one cell, whose gradients add.
void duplicate_targets(std::vector<float>& t, int b, int nc, float w, float h) {
    for (int r = 0; r < 3; ++r) add_target(t, b, nc / 3, 0.37f, 0.42f, w, h);
    add_target(t, b, (nc / 3 + 1) % nc, 0.371f, 0.423f, 1.3f * w, 0.8f * h);
    add_target(t, b, 0, 0.5f, 0.5f, w, h);
    add_target(t, b, nc - 1, 1.0f, 0.3f, w, h);
    add_target(t, b, 0, 0.0f, 0.0f, w, h);
}

F16LossCase v5n_case(int bs, int nc, uint64_t seed) {
    F16LossCase c;
    c.bs = bs, c.nc = nc;
    c.grids = {{16, 20}, {8, 10}, {4, 5}};
    c.anchors = {10 / 8.f,  13 / 8.f,  16 / 8.f,  30 / 8.f,  33 / 8.f,  23 / 8.f,  30 / 16.f,  61 / 16.f,  62 / 16.f,
                 45 / 16.f, 59 / 16.f, 119 / 16.f, 116 / 32.f, 90 / 32.f, 156 / 32.f, 198 / 32.f, 373 / 32.f, 326 / 32.f};
    Rng rng(seed);
    random_targets(c.targets, rng, bs, nc, 10, 0.02, 0.7);
    duplicate_targets(c.targets, bs - 1, nc, 0.2f, 0.25f);
    return c;
}

F16LossCase two_level_case(uint64_t seed) {  // balance table of 5, nc 3
    F16LossCase c;
    c.bs = 2, c.nc = 3;
    c.grids = {{4, 6}, {2, 3}};
    c.anchors = {1.25f, 1.625f, 2.0f, 3.75f, 4.125f, 2.875f, 1.875f, 3.8125f, 3.875f, 2.8125f, 3.6875f, 7.4375f};
    Rng rng(seed);
    random_targets(c.targets, rng, c.bs, c.nc, 5, 0.05, 0.7);
    duplicate_targets(c.targets, 0, c.nc, 0.2f, 0.3f);
    return c;
}

// Every element of got (f16) is want (f32) rounded once to f16, bit for bit.
void require_rounded(const Tensor& got, const Tensor& want, const std::string& what) {
    REQUIRE(got.dtype == DType::F16);
    REQUIRE(want.dtype == DType::F32);
    REQUIRE(got.numel() == want.numel());
    int64_t bad = 0, first = -1, nonzero = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
        const float w = want.ptr<float>()[i];
        nonzero += w != 0.f;
        if (got.ptr<f16>()[i].bits != f32_to_f16(w).bits) {
            if (first < 0) first = i;
            ++bad;
        }
    }
    INFO(what << ": " << bad << " of " << got.numel() << " elements are not the f32 value rounded to f16; first "
              << first << (first >= 0 ? ": f16 " + fmt(at(got, first)) + ", f32 " + fmt(at(want, first)) : ""));
    CHECK(bad == 0);
    CHECK(nonzero > 0);  // the comparison saw gradients
}

// The op: f16 maps against their f32 copies, items and total, then the backward with gradient `scale` (as AMP's
// loss scale) into fresh gradients.
void run_op_case(const F16LossCase& lc, uint64_t seed, double scale) {
    TestCtx tc, t32;  // the f16 run on tc, the f32 run on its own tape
    Rng rng(seed);
    const int nl = (int)lc.grids.size(), na = 3, no = 5 + lc.nc, nt = (int)lc.targets.size() / 6;
    Tensor tgt = tc.data.tensor({nt, 6}), anc = tc.data.tensor({nl, na, 2});
    std::memcpy(tgt.data, lc.targets.data(), tgt.bytes());
    std::memcpy(anc.data, lc.anchors.data(), anc.bytes());
    std::vector<Var> v16, v32;
    for (auto [h, w] : lc.grids) {
        Tensor m16 = rand_tensor(tc.data, {lc.bs, na, h, w, no}, DType::F16, rng, -4.0, 4.0);
        v16.push_back(tc.tape.leaf(m16));
        v32.push_back(t32.tape.leaf(as_dtype(tc.data, m16, DType::F32)));
    }
    YoloLoss L16 = yolo_loss(tc.ctx, v16, tgt, anc, lc.h);
    YoloLoss L32 = yolo_loss(t32.ctx, v32, tgt, anc, lc.h);
    REQUIRE(L16.total.t.dtype == DType::F32);
    CHECK(L16.items.lbox == L32.items.lbox);
    CHECK(L16.items.lobj == L32.items.lobj);
    CHECK(L16.items.lcls == L32.items.lcls);
    CHECK(L16.items.total == L32.items.total);
    CHECK(L16.total.t.ptr<float>()[0] == L32.total.t.ptr<float>()[0]);
    CHECK(L32.items.lbox > 0);
    if (lc.nc > 1) CHECK(L32.items.lcls > 0);
    tc.tape.backward(L16.total, nullptr, scale);
    t32.tape.backward(L32.total, nullptr, scale);
    for (int i = 0; i < nl; ++i) require_rounded(tc.tape.grad(v16[i]), t32.tape.grad(v32[i]), "map " + std::to_string(i));

    NoGrad ng(tc.tape);  // validation: the same items without a gradient
    YoloLoss V = yolo_loss(tc.ctx, v16, tgt, anc, lc.h);
    CHECK(V.items.total == L32.items.total);
    CHECK(V.items.lobj == L32.items.lobj);
    CHECK(!V.total.requires_grad());
}

}  // namespace

TEST_CASE("f16 yolo loss equals the f32 loss of the same values, its gradients the f32 ones rounded once",
          "[f16][loss]") {
    SECTION("yolov5n's three levels, nc 80, batch 2, gradient 1") { run_op_case(v5n_case(2, 80, 11), 1, 1.0); }
    SECTION("nc 80, batch 3, loss scale 65536") { run_op_case(v5n_case(3, 80, 12), 2, 65536.0); }
    SECTION("nc 1, label smoothing, pos_weight and gains, scale 1024") {
        F16LossCase c = v5n_case(2, 1, 13);
        c.h.label_smoothing = 0.1, c.h.cls_pw = 1.2, c.h.obj_pw = 0.8;
        c.h.box = 0.05 * 0.9, c.h.obj = 1.0 * 1.3, c.h.cls = 0.5 * 3 / 80.0;
        run_op_case(c, 3, 1024.0);
    }
    SECTION("two levels (balance table of 5), label smoothing, scale 0.37") {
        F16LossCase c = two_level_case(14);
        c.h.label_smoothing = 0.1;
        run_op_case(c, 4, 0.37);
    }
    SECTION("no targets") {
        F16LossCase c = v5n_case(2, 80, 15);
        c.targets.clear();
        TestCtx tc, t32;
        Rng rng(5);
        std::vector<Var> v16, v32;
        for (auto [h, w] : c.grids) {
            Tensor m16 = rand_tensor(tc.data, {2, 3, h, w, 85}, DType::F16, rng, -4.0, 4.0);
            v16.push_back(tc.tape.leaf(m16));
            v32.push_back(t32.tape.leaf(as_dtype(tc.data, m16, DType::F32)));
        }
        Tensor tgt = tc.data.tensor({0, 6}), anc = tc.data.tensor({3, 3, 2});
        std::memcpy(anc.data, c.anchors.data(), anc.bytes());
        YoloLoss L16 = yolo_loss(tc.ctx, v16, tgt, anc, c.h), L32 = yolo_loss(t32.ctx, v32, tgt, anc, c.h);
        CHECK(L16.items.lobj == L32.items.lobj);
        CHECK(L16.items.lbox == 0.0);
        tc.tape.backward(L16.total, nullptr, 256.0);
        t32.tape.backward(L32.total, nullptr, 256.0);
        for (int i = 0; i < 3; ++i) require_rounded(tc.tape.grad(v16[i]), t32.tape.grad(v32[i]), "map " + std::to_string(i));
    }
}

// The reference's accumulate mode directly: an existing gradient (random f16) plus g · d total / d map must be
// st(axpy_op(g, dmap32, ld(old))) of the f32 reference's dmap, bit for bit, including the elements the loss does not
// touch (kept as they were); and in f32 the accumulate mode equals overwrite + axpy exactly.
TEST_CASE("f16 yolo_loss_cpu accumulates g·dmap into an existing f16 gradient with one rounding", "[f16][loss]") {
    for (int which = 0; which < 2; ++which) {
        DYNAMIC_SECTION((which == 0 ? "three levels, nc 80" : "two levels, nc 3")) {
            const F16LossCase lc = which == 0 ? v5n_case(2, 80, 21) : two_level_case(22);
            TestCtx tc;
            Rng rng(23 + which);
            const int nl = (int)lc.grids.size(), na = 3, no = 5 + lc.nc, nt = (int)lc.targets.size() / 6;
            std::vector<Tensor> m16, m32, old16, g16, d32, a32;
            std::vector<const f16*> p16;
            std::vector<const float*> p32;
            std::vector<f16*> dp16;
            std::vector<float*> dp32, ap32;
            std::vector<int> ny, nx;
            for (auto [h, w] : lc.grids) {
                m16.push_back(rand_tensor(tc.data, {lc.bs, na, h, w, no}, DType::F16, rng, -4.0, 4.0));
                m32.push_back(as_dtype(tc.data, m16.back(), DType::F32));
                old16.push_back(rand_tensor(tc.data, m16.back().shape, DType::F16, rng, -0.05, 0.05));
                g16.push_back(copy_of(tc.data, old16.back()));
                d32.push_back(tc.data.tensor(m16.back().shape, DType::F32));
                a32.push_back(as_dtype(tc.data, old16.back(), DType::F32));
                p16.push_back(m16.back().ptr<f16>());
                p32.push_back(m32.back().ptr<float>());
                dp16.push_back(g16.back().ptr<f16>());
                dp32.push_back(d32.back().ptr<float>());
                ap32.push_back(a32.back().ptr<float>());
                ny.push_back(h);
                nx.push_back(w);
            }
            const float g = 37.5f;
            const LossItems L32 = yolo_loss_cpu<float>(p32, dp32, ny, nx, lc.bs, na, no, lc.targets.data(), nt,
                                                       lc.anchors.data(), lc.h);
            const LossItems L16 = yolo_loss_cpu<f16>(p16, dp16, ny, nx, lc.bs, na, no, lc.targets.data(), nt,
                                                     lc.anchors.data(), lc.h, nullptr, &g);
            // f32 accumulate mode on the old gradient's f32 copy.
            yolo_loss_cpu<float>(p32, ap32, ny, nx, lc.bs, na, no, lc.targets.data(), nt, lc.anchors.data(), lc.h,
                                 nullptr, &g);
            CHECK(L16.total == L32.total);
            CHECK(L16.lbox == L32.lbox);
            CHECK(L16.lcls == L32.lcls);
            for (int i = 0; i < nl; ++i) {
                Tensor want = tc.data.tensor(m16[i].shape, DType::F32);
                int64_t moved = 0;
                for (int64_t j = 0; j < want.numel(); ++j) {
                    const float o = f16_to_f32(old16[i].ptr<f16>()[j]), d = d32[i].ptr<float>()[j];
                    want.ptr<float>()[j] = g * d + o;  // axpy_op(g, dmap, grad) of the f32 backward
                    CHECK(a32[i].ptr<float>()[j] == want.ptr<float>()[j]);
                    moved += g16[i].ptr<f16>()[j].bits != old16[i].ptr<f16>()[j].bits;
                }
                require_rounded(g16[i], want, "level " + std::to_string(i));
                CHECK(moved > 0);
            }
        }
    }
}

TEST_CASE("f16 Detect decode equals the f32 decode of the same values", "[f16][detect]") {
    Rng rng(31);
    TestCtx tc;
    const int bs = 2, na = 3;
    struct Level {
        int ny, nx;
        float stride;
    };
    const std::vector<Level> lv = {{8, 10, 8}, {4, 5, 16}, {2, 3, 32}};
    for (int no : {85, 6}) {
        int64_t total = 0;
        for (const Level& l : lv) total += (int64_t)na * l.ny * l.nx;
        Tensor anc = rand_tensor(tc.data, {3, na, 2}, DType::F32, rng, 0.5, 6.0);
        Tensor got = tc.data.tensor({bs, total, no}), want = tc.data.tensor({bs, total, no});
        int64_t offset = 0;
        for (size_t i = 0; i < lv.size(); ++i) {
            const Level& l = lv[i];
            Tensor m16 = rand_tensor(tc.data, {bs, na, l.ny, l.nx, no}, DType::F16, rng, -8.0, 8.0);
            Tensor m32 = as_dtype(tc.data, m16, DType::F32);
            detect_decode_cpu<f16>(got.ptr<float>(), m16.ptr<f16>(), anc.ptr<float>() + 2 * na * i, l.stride, bs, na,
                                   l.ny, l.nx, no, total, offset);
            detect_decode_cpu<float>(want.ptr<float>(), m32.ptr<float>(), anc.ptr<float>() + 2 * na * i, l.stride, bs,
                                     na, l.ny, l.nx, no, total, offset);
            offset += (int64_t)na * l.ny * l.nx;
        }
        require_close(got, want, 0.0, 0.0, "decode, no " + std::to_string(no));  // the same float math: exact
    }
}

// Detect::decode itself under autocast: an eval forward's f16 maps decode (f32 output, no f32 copy of the maps)
// exactly as Detect::decode of the maps' f32 copies.
TEST_CASE("Detect::decode of f16 maps under autocast equals the decode of their f32 copies", "[f16][detect]") {
    Model m(std::string(Y5_SOURCE_DIR) + "/config/models/yolov5n.yaml", 80);
    m.allocate(Device::CPU);
    Rng rng(32);
    m.init_weights(rng);
    TestCtx tc;
    tc.ctx.autocast = true;
    NoGrad ng(tc.tape);
    Tensor x = rand_tensor(tc.data, {2, 3, 64, 96}, DType::F32, rng, 0.0, 1.0);
    Model::Output o = m.forward(tc.ctx, Tape::constant(x), false);
    REQUIRE(o.maps[0].t.dtype == DType::F16);
    REQUIRE(o.decoded.dtype == DType::F32);
    std::vector<Var> m32;
    for (const Var& v : o.maps) m32.push_back(Tape::constant(as_dtype(tc.data, v.t, DType::F32)));
    Tensor want = m.detect->decode(tc.ctx, m32);
    require_close(o.decoded, want, 0.0, 0.0, "decoded");
}
