/*
 * GPU tests of YOLOv5's loss (kernels/loss.cu through yolo_loss) against the CPU reference
 * yolo_loss_cpu<float> (itself checked against YOLOv5's ComputeLoss in tests/test_loss.cpp), on fresh
 * random maps and targets: the three items and the total, and d total / d map element by element (read
 * back through the tape with gradient 1, which is the loss's dmap exactly), and the gradient through the
 * tape with an op before the loss and a seed.
 */
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "layers/yolo.h"
#include "tests/test_gpu.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

// yolov5n's anchors (pixels at strides 8, 16, 32) in grid units, as the model holds them.
const std::vector<float> kV5nAnchors = {10 / 8.f,   13 / 8.f,   16 / 8.f,   30 / 8.f,   33 / 8.f,   23 / 8.f,
                                        30 / 16.f,  61 / 16.f,  62 / 16.f,  45 / 16.f,  59 / 16.f,  119 / 16.f,
                                        116 / 32.f, 90 / 32.f,  156 / 32.f, 198 / 32.f, 373 / 32.f, 326 / 32.f};

struct LossCase {
    int bs = 2, nc = 80;
    std::vector<std::pair<int, int>> grids;  // (ny, nx) per level
    std::vector<float> anchors;              // (nl, 3, 2), grid units
    std::vector<float> targets;              // (nt, 6): image, class, x, y, w, h
    LossHyp h;
};

void add_target(std::vector<float>& t, int b, int cls, float x, float y, float w, float h) {
    t.insert(t.end(), {(float)b, (float)cls, x, y, w, h});
}

// n random targets in every image but `empty` (−1: none empty): centres anywhere, sizes log-uniform in
// [lo, hi] (normalised), so some match several anchors and some none.
void random_targets(std::vector<float>& t, Rng& rng, int bs, int nc, int n, int empty, double lo, double hi) {
    for (int b = 0; b < bs; ++b) {
        if (b == empty) continue;
        for (int k = 0; k < n; ++k) {
            const float w = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            const float h = (float)std::exp(rng.uniform_double(std::log(lo), std::log(hi)));
            add_target(t, b, (int)rng.randint((uint32_t)nc), (float)rng.uniform_double(0.0, 1.0),
                       (float)rng.uniform_double(0.0, 1.0), w, h);
        }
    }
}

// The assignment's corners in image b, size (w, h): centres exactly on cell edges (x = 0.5 or 0.25 on
// grids of even size or a multiple of 4: fmod = 0, so neighbour cells), on the image border (x or y = 0 or
// 1: the clamped centre cell and a neighbour are the same cell, two entries on one cell), a row repeated
// three times and a second box in the same cell (duplicates: gradients add, the last sets tobj).
void edge_targets(std::vector<float>& t, int b, int nc, float w, float h) {
    add_target(t, b, 0, 0.5f, 0.5f, w, h);
    add_target(t, b, nc - 1, 0.25f, 0.75f, w, h);
    add_target(t, b, nc / 2, 1.0f, 0.3f, w, h);
    add_target(t, b, 0, 0.0f, 0.0f, w, h);
    add_target(t, b, nc - 1, 0.61f, 1.0f, w, h);
    for (int r = 0; r < 3; ++r) add_target(t, b, nc / 3, 0.37f, 0.42f, w, h);
    add_target(t, b, (nc / 3 + 1) % nc, 0.371f, 0.423f, 1.3f * w, 0.8f * h);
}

// |got − want| ≤ tol·|want| (+ 1e-12 for components that are 0 on both sides: lcls with nc = 1, lbox
// without targets). The sums run in double over float terms in another order; 1e-5 is float rounding
// with a wide margin.
void check_item(double got, double want, const std::string& what) {
    INFO(what << ": gpu " << got << ", cpu " << want);
    CHECK(std::fabs(got - want) <= 1e-5 * std::fabs(want) + 1e-12);
}

double max_abs(const Tensor& t) {
    double m = 0;
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(at(t, i)));
    return m;
}

// Element-wise dmap compare: atol 1e-5 of the map's largest gradient + rtol 1e-5. An element of the CIoU
// gradient is a sum of terms of mixed signs, so its float error (FMAs on the GPU, libm differences in
// exp/atan/log1p) is relative to the terms, not to the sum: the atol scales with the map, not with the
// element, and an all-zero map (no targets and no gradient) must match exactly.
void check_grad(const Tensor& got, const Tensor& want, const std::string& what) {
    require_close(got, want, 1e-5 * max_abs(want), 1e-5, what);
}

// Runs c on the GPU through yolo_loss (maps as tape leaves, targets and anchors on the host, or on the
// device when `device_inputs`) and on the CPU with yolo_loss_cpu<float>, and compares.
void run_loss_case(const LossCase& lc, uint64_t seed, bool device_inputs = false) {
    Gpu& g = gpu();
    g.reset();
    Rng rng(seed);
    const int nl = (int)lc.grids.size(), na = 3, no = 5 + lc.nc, nt = (int)lc.targets.size() / 6;
    REQUIRE((int)lc.anchors.size() == nl * na * 2);
    std::vector<Tensor> maps, dmaps;
    std::vector<const float*> mp;
    std::vector<float*> dp;
    std::vector<int> ny, nx;
    for (auto [h, w] : lc.grids) {
        maps.push_back(rand_tensor(g.host, {lc.bs, na, h, w, no}, DType::F32, rng, -3.0, 3.0));
        dmaps.push_back(g.host.tensor(maps.back().shape));
        mp.push_back(maps.back().ptr<float>());
        dp.push_back(dmaps.back().ptr<float>());
        ny.push_back(h);
        nx.push_back(w);
    }
    Tensor tgt = g.host.tensor({nt, 6}), anc = g.host.tensor({nl, na, 2});
    if (nt) std::memcpy(tgt.data, lc.targets.data(), tgt.bytes());
    std::memcpy(anc.data, lc.anchors.data(), anc.bytes());
    const LossItems want = yolo_loss_cpu<float>(mp, dp, ny, nx, lc.bs, na, no, tgt.ptr<float>(), nt, anc.ptr<float>(), lc.h);

    std::vector<Var> vars;
    for (const Tensor& m : maps) vars.push_back(g.tape.leaf(g.upload(m)));
    const Tensor t_in = device_inputs ? g.upload(tgt) : tgt, a_in = device_inputs ? g.upload(anc) : anc;
    YoloLoss L = yolo_loss(g.ctx, vars, t_in, a_in, lc.h);
    check_item(L.items.lbox, want.lbox, "lbox");
    check_item(L.items.lobj, want.lobj, "lobj");
    check_item(L.items.lcls, want.lcls, "lcls");
    check_item(L.items.total, want.total, "total");
    const float total_dev = g.download(L.total.t).ptr<float>()[0];
    CHECK(total_dev == (float)L.items.total);
    g.tape.backward(L.total);  // gradient 1: each map's gradient is 0 + 1·dmap, the loss's dmap exactly
    for (int i = 0; i < nl; ++i) check_grad(g.download(g.tape.grad(vars[i])), dmaps[i], "dmap " + std::to_string(i));

    // Without a gradient (validation): the same items, and no dmaps.
    {
        NoGrad ng(g.tape);
        YoloLoss V = yolo_loss(g.ctx, vars, t_in, a_in, lc.h);
        check_item(V.items.lbox, want.lbox, "lbox without gradient");
        check_item(V.items.lobj, want.lobj, "lobj without gradient");
        check_item(V.items.lcls, want.lcls, "lcls without gradient");
        CHECK(!V.total.requires_grad());
        // The level sums and counts validation's chunks combine (combine_loss_items).
        REQUIRE(V.items.nl == want.nl);
        CHECK(V.items.bs == want.bs);
        for (int i = 0; i < nl; ++i) {
            const std::string l = " of level " + std::to_string(i);
            check_item(V.items.sbox[i], want.sbox[i], "sbox" + l);
            check_item(V.items.scls[i], want.scls[i], "scls" + l);
            check_item(V.items.sobj[i], want.sobj[i], "sobj" + l);
            CHECK(V.items.n[i] == want.n[i]);
            CHECK(V.items.cells[i] == want.cells[i]);
        }
    }
    g.tape.clear();
}

LossCase v5n_640(int bs, int nc) {
    LossCase c;
    c.bs = bs, c.nc = nc;
    c.grids = {{80, 80}, {40, 40}, {20, 20}};
    c.anchors = kV5nAnchors;
    return c;
}

}  // namespace

TEST_CASE("yolo loss on the GPU: yolov5n's maps at 640, batch 2, nc 80", "[gpu][loss]") {
    Rng rng(201);
    LossCase c = v5n_640(2, 80);
    random_targets(c.targets, rng, c.bs, c.nc, 25, -1, 0.01, 0.6);
    edge_targets(c.targets, 1, c.nc, 0.05f, 0.08f);
    edge_targets(c.targets, 0, c.nc, 0.3f, 0.2f);
    run_loss_case(c, 1);
}

TEST_CASE("yolo loss on the GPU: nc 1, an image without targets, pos_weight and gains", "[gpu][loss]") {
    Rng rng(202);
    LossCase c = v5n_640(3, 1);
    random_targets(c.targets, rng, c.bs, c.nc, 12, 1, 0.01, 0.6);
    edge_targets(c.targets, 2, c.nc, 0.1f, 0.1f);
    c.h.box = 0.05 * 0.9, c.h.obj = 1.0 * 1.3, c.h.cls = 0.5 * 3 / 80.0;
    c.h.cls_pw = 1.2, c.h.obj_pw = 0.8;
    run_loss_case(c, 2);
}

TEST_CASE("yolo loss on the GPU: no targets at all", "[gpu][loss]") {
    for (int nc : {1, 80}) {
        DYNAMIC_SECTION("nc " << nc) {
            LossCase c = v5n_640(2, nc);
            c.grids = {{8, 12}, {4, 6}, {2, 3}};
            run_loss_case(c, 3);
        }
    }
}

TEST_CASE("yolo loss on the GPU: label smoothing, awkward grid sizes", "[gpu][loss]") {
    Rng rng(204);
    const std::vector<float> small_anchors = {0.6f, 0.9f, 1.2f, 0.7f, 1.5f, 2.2f,   // grid units of small grids
                                              0.8f, 1.1f, 1.4f, 1.6f, 2.0f, 1.0f,
                                              0.5f, 0.5f, 1.0f, 1.0f, 1.7f, 0.9f};
    struct Grid {
        std::vector<std::pair<int, int>> g;
        int bs, nc;
    };
    const std::vector<Grid> grids = {{{{5, 7}, {3, 4}, {1, 2}}, 3, 80},
                                     {{{1, 1}, {1, 1}, {1, 1}}, 2, 5},    // no neighbours (gx ≤ 1), every entry on one cell
                                     {{{9, 3}, {13, 1}, {2, 17}}, 1, 1},
                                     {{{2, 2}, {3, 3}, {4, 4}}, 4, 7}};
    int seed = 40;
    for (double ls : {0.0, 0.1}) {
        for (size_t gi = 0; gi < grids.size(); ++gi) {
            DYNAMIC_SECTION("label smoothing " << ls << ", grids " << gi) {
                LossCase c;
                c.bs = grids[gi].bs, c.nc = grids[gi].nc, c.grids = grids[gi].g, c.anchors = small_anchors;
                c.h.label_smoothing = ls;
                c.h.cls_pw = c.h.obj_pw = ls > 0 ? 1.5 : 1.0;
                random_targets(c.targets, rng, c.bs, c.nc, 6, c.bs > 2 ? 1 : -1, 0.05, 0.9);
                edge_targets(c.targets, 0, c.nc, 0.3f, 0.4f);
                run_loss_case(c, seed++);
            }
        }
    }
}

TEST_CASE("yolo loss on the GPU: two levels (balance table of 5), device targets and anchors", "[gpu][loss]") {
    Rng rng(205);
    LossCase c;
    c.bs = 2, c.nc = 3;
    c.grids = {{4, 6}, {2, 3}};
    c.anchors = {1.25f, 1.625f, 2.0f, 3.75f, 4.125f, 2.875f, 1.875f, 3.8125f, 3.875f, 2.8125f, 3.6875f, 7.4375f};
    random_targets(c.targets, rng, c.bs, c.nc, 5, -1, 0.05, 0.7);
    edge_targets(c.targets, 1, c.nc, 0.2f, 0.3f);
    SECTION("host targets and anchors") { run_loss_case(c, 5, false); }
    SECTION("device targets and anchors") { run_loss_case(c, 5, true); }
}

TEST_CASE("yolo loss on the GPU: a level of more than 1024 objectness blocks", "[gpu][loss][grid]") {
    // loss_obj_blocks caps the objectness kernel at 1024 blocks of 256 cells and the blocks loop over the rest:
    // 1·3·300·300 = 270000 cells need 1055.
    Rng rng(208);
    LossCase c = v5n_640(1, 1);
    c.grids = {{300, 300}, {150, 150}, {75, 75}};
    random_targets(c.targets, rng, c.bs, c.nc, 20, -1, 0.005, 0.3);
    edge_targets(c.targets, 0, c.nc, 0.02f, 0.03f);
    REQUIRE(loss_obj_blocks(3 * 300 * 300) == 1024);
    run_loss_case(c, 8);
}

TEST_CASE("yolo loss on the GPU is deterministic", "[gpu][loss]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(206);
    LossCase c = v5n_640(2, 80);
    random_targets(c.targets, rng, c.bs, c.nc, 30, -1, 0.01, 0.6);
    edge_targets(c.targets, 0, c.nc, 0.05f, 0.05f);
    const int nt = (int)c.targets.size() / 6;
    Tensor tgt = g.host.tensor({nt, 6}), anc = g.host.tensor({3, 3, 2});
    std::memcpy(tgt.data, c.targets.data(), tgt.bytes());
    std::memcpy(anc.data, c.anchors.data(), anc.bytes());
    std::vector<Tensor> dev_maps;
    for (auto [h, w] : c.grids) dev_maps.push_back(g.upload(rand_tensor(g.host, {2, 3, h, w, 85}, DType::F32, rng, -3, 3)));
    std::vector<std::vector<float>> first;
    LossItems first_items;
    for (int run = 0; run < 2; ++run) {
        std::vector<Var> vars;
        for (const Tensor& m : dev_maps) vars.push_back(g.tape.leaf(m));
        YoloLoss L = yolo_loss(g.ctx, vars, tgt, anc, c.h);
        g.tape.backward(L.total);
        for (int i = 0; i < 3; ++i) {
            Tensor gr = g.download(g.tape.grad(vars[i]));
            std::vector<float> v(gr.ptr<float>(), gr.ptr<float>() + gr.numel());
            if (run == 0) first.push_back(v);
            else CHECK(std::memcmp(v.data(), first[i].data(), v.size() * sizeof(float)) == 0);
        }
        if (run == 0) {
            first_items = L.items;
        } else {
            CHECK(L.items.lbox == first_items.lbox);
            CHECK(L.items.lobj == first_items.lobj);
            CHECK(L.items.lcls == first_items.lcls);
        }
        g.tape.clear();  // forgets the leaves; the next run starts from fresh, zeroed gradients
    }
}

TEST_CASE("yolo loss on the GPU through the tape: an op before it, a seed", "[gpu][loss][tape]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(207);
    LossCase c = v5n_640(2, 80);
    c.grids = {{16, 20}, {8, 10}, {4, 5}};
    random_targets(c.targets, rng, c.bs, c.nc, 8, -1, 0.03, 0.8);
    edge_targets(c.targets, 1, c.nc, 0.2f, 0.25f);
    const int nt = (int)c.targets.size() / 6;
    TestCtx tc;  // the CPU side: the same ops in f32 through its own tape
    Tensor tgt = tc.data.tensor({nt, 6}), anc = tc.data.tensor({3, 3, 2}), seed = tc.data.tensor({1});
    std::memcpy(tgt.data, c.targets.data(), tgt.bytes());
    std::memcpy(anc.data, c.anchors.data(), anc.bytes());
    seed.ptr<float>()[0] = 0.37f;
    std::vector<Tensor> host_maps;
    std::vector<Var> gv, cv, gy, cy;
    for (auto [h, w] : c.grids) {
        host_maps.push_back(rand_tensor(tc.data, {2, 3, h, w, 85}, DType::F32, rng, -3, 3));
        gv.push_back(g.tape.leaf(g.upload(host_maps.back())));
        cv.push_back(tc.tape.leaf(host_maps.back()));
        gy.push_back(add(g.ctx, gv.back(), gv.back()));  // the loss sees 2x; x gets both halves of the gradient
        cy.push_back(add(tc.ctx, cv.back(), cv.back()));
    }
    YoloLoss G = yolo_loss(g.ctx, gy, tgt, anc, c.h), C = yolo_loss(tc.ctx, cy, tgt, anc, c.h);
    check_item(G.items.total, C.items.total, "total");
    check_item(G.items.lbox, C.items.lbox, "lbox");
    Tensor dseed = g.upload(seed);
    g.tape.backward(G.total, &dseed);
    tc.tape.backward(C.total, &seed);
    for (int i = 0; i < 3; ++i)
        check_grad(g.download(g.tape.grad(gv[i])), tc.tape.grad(cv[i]), "d/dx " + std::to_string(i));
    g.tape.clear();
}

#endif
