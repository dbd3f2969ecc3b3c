/*
 * YOLOv5's loss: hand-checked pieces (CIoU, BCE, target assignment), a finite-difference gradient check of
 * the whole loss in double, and parity with ComputeLoss from YOLOv5's own code (tests/fixtures/loss.safetensors).
 */
#include <cstring>

#include "engine/core/safetensors.h"
#include "layers/yolo.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;

TEST_CASE("CIoU and BCE-with-logits values", "[loss]") {
    const double a[4] = {5, 5, 2, 4};
    CHECK(ciou(a, a) == Approx(1.0).epsilon(1e-6));  // identical boxes: IoU 1, no centre or aspect penalty
    const double b[4] = {6, 5, 2, 4};  // shifted by half a width: intersection 4, union 12
    // enclosing box 3 × 4: c² = 25, centres 1 apart: ρ² = 1; same aspect: v = 0
    CHECK(ciou(a, b) == Approx(1.0 / 3 - 1.0 / 25).epsilon(1e-6));
    const double c[4] = {50, 50, 2, 4};  // disjoint: IoU 0; ρ² = 45² + 45², enclosing 47 × 49
    CHECK(ciou(a, c) == Approx(-4050.0 / (47 * 47 + 49 * 49)).epsilon(1e-6));
    CHECK(bce_logits(0.0, 1.0, 1.0) == Approx(std::log(2.0)));
    CHECK(bce_logits(2.0, 0.25, 1.0) == Approx(-(0.25 * std::log(sigmoid(2.0)) + 0.75 * std::log(1 - sigmoid(2.0)))));
    CHECK(bce_logits(-800.0, 1.0, 1.0) == Approx(800.0));  // no overflow
    CHECK(bce_logits(1.5, 1.0, 3.0) == Approx(-3.0 * std::log(sigmoid(1.5))));  // pos_weight scales the positive term
    CHECK(bce_logits_grad(0.7, 0.2, 1.0) == Approx(sigmoid(0.7) - 0.2));
}

TEST_CASE("build_targets: anchor ratio test / neighbour cells / clamps", "[loss]") {
    // One level 4 × 6 (ny × nx), one anchor of 1 × 1 cell, anchor_t 4.
    const double anchors[2] = {1.0, 1.0};
    // A target centred at grid (2.3, 1.7): left (x frac < 0.5, x > 1) and down (y: ny − 1.7 = 2.3, frac 0.3 < 0.5)
    // neighbours, so cells (gi, gj) = (2, 1), (1, 1), (2, 2) in that order (centre, left, down).
    const double t1[6] = {0, 2, 2.3 / 6, 1.7 / 4, 1.0 / 6, 1.0 / 4};
    LevelTargets<double> lt = build_targets_level(t1, 1, anchors, 1, 4, 6, 4.0);
    REQUIRE(lt.size() == 3);
    CHECK((lt.gi == std::vector<int>{2, 1, 2}));
    CHECK((lt.gj == std::vector<int>{1, 1, 2}));
    CHECK(lt.tbox[0] == Approx(0.3));
    CHECK(lt.tbox[4] == Approx(1.3));   // offset from the left neighbour's corner
    CHECK(lt.tbox[9] == Approx(-0.3));  // from the lower neighbour's corner
    CHECK(lt.cls[0] == 2);
    // A box 5 cells wide against a 1-cell anchor: ratio 5 > 4, no match.
    const double t2[6] = {0, 0, 0.5, 0.5, 5.0 / 6, 1.0 / 4};
    CHECK(build_targets_level(t2, 1, anchors, 1, 4, 6, 4.0).size() == 0);
    // x = 1 exactly: gx = nx, cell index clamped to nx − 1 in place, so tbox x = 1.
    const double t3[6] = {1, 0, 1.0, 0.5, 1.0 / 6, 1.0 / 4};
    LevelTargets<double> e = build_targets_level(t3, 1, anchors, 1, 4, 6, 4.0);
    REQUIRE(e.size() >= 1);
    CHECK(e.gi[0] == 5);
    CHECK(e.tbox[0] == 1.0);
    CHECK(e.b[0] == 1);
}

TEST_CASE("loss helpers shared with CUDA: box decode, cell index, grouping by cell", "[loss]") {
    // Box decode and its chain rule against central differences, in double.
    const double raw[4] = {0.3, -1.2, 0.7, -0.4}, anch[2] = {1.5, 2.5}, w[4] = {0.7, -1.1, 0.4, 1.9};
    double s[4], pb[4], draw[4];
    loss_decode_box(raw, anch, s, pb);
    CHECK(pb[0] == Approx(2 * sigmoid(0.3) - 0.5));
    CHECK(pb[1] == Approx(2 * sigmoid(-1.2) - 0.5));
    CHECK(pb[2] == Approx(4 * sigmoid(0.7) * sigmoid(0.7) * 1.5));
    CHECK(pb[3] == Approx(4 * sigmoid(-0.4) * sigmoid(-0.4) * 2.5));
    loss_decode_box_grad(s, anch, w, draw);
    for (int q = 0; q < 4; ++q) {
        double rp[4], rm[4], sp[4], sm[4], pp[4], pm[4];
        std::memcpy(rp, raw, sizeof raw);
        std::memcpy(rm, raw, sizeof raw);
        rp[q] += 1e-6, rm[q] -= 1e-6;
        loss_decode_box(rp, anch, sp, pp);
        loss_decode_box(rm, anch, sm, pm);
        CHECK(draw[q] == Approx(w[q] * (pp[q] - pm[q]) / 2e-6).epsilon(1e-7));
    }
    CHECK(loss_tobj(-0.2) == 0.0);
    CHECK(loss_tobj(0.0) == 0.0);
    CHECK(loss_tobj(0.3) == 0.3);
    // Cell index in int64: past 2^31 elements once multiplied by no.
    CHECK(loss_cell(1, 2, 3, 4, 3, 5, 7) == ((1 * 3 + 2) * 5 + 3) * 7 + 4);
    CHECK(loss_cell(2000, 2, 79, 79, 3, 80, 80) * 85 == ((int64_t)6002 * 6400 + 79 * 80 + 79) * 85);

    // Grouping: every entry once; groups are distinct cells; within a group the list order is kept, so
    // the last entry of a group is the last one in the list on that cell (the one that sets tobj).
    const float anchors[6] = {1.0f, 1.0f, 2.0f, 1.5f, 0.7f, 1.2f};
    const float tg[7][6] = {{0, 1, 0.31f, 0.42f, 0.2f, 0.3f}, {0, 2, 0.31f, 0.42f, 0.2f, 0.3f},  // same box twice
                            {1, 0, 1.0f, 0.5f, 0.15f, 0.2f},                                    // clamped edge
                            {1, 1, 0.0f, 0.0f, 0.3f, 0.2f},  {0, 0, 0.33f, 0.40f, 0.25f, 0.2f},
                            {1, 2, 0.5f, 0.5f, 0.2f, 0.25f}, {0, 1, 0.31f, 0.42f, 0.2f, 0.3f}};
    const int na = 3, ny = 5, nx = 7;
    LevelTargets<float> lt = build_targets_level(&tg[0][0], 7, anchors, na, ny, nx, 4.0);
    std::vector<LossTargetPacked> packed;
    std::vector<int> starts;
    pack_level_targets(lt, na, ny, nx, packed, starts);
    const int n = lt.size();
    REQUIRE((int)packed.size() == n);
    REQUIRE(starts.size() >= 2);
    CHECK(starts.front() == 0);
    CHECK(starts.back() == n);
    auto cell_of = [&](const LossTargetPacked& p) { return loss_cell(p.b, p.a, p.gj, p.gi, na, ny, nx); };
    int dup_groups = 0;
    for (size_t g = 0; g + 1 < starts.size(); ++g) {
        REQUIRE(starts[g] < starts[g + 1]);
        const int64_t c = cell_of(packed[starts[g]]);
        if (g > 0) CHECK(cell_of(packed[starts[g - 1]]) < c);
        std::vector<int> ks;  // the list entries on this cell, in list order
        for (int k = 0; k < n; ++k)
            if (loss_cell(lt.b[k], lt.a[k], lt.gj[k], lt.gi[k], na, ny, nx) == c) ks.push_back(k);
        REQUIRE((int)ks.size() == starts[g + 1] - starts[g]);
        dup_groups += ks.size() > 1;
        for (size_t j = 0; j < ks.size(); ++j) {
            const LossTargetPacked& p = packed[starts[g] + j];
            const int k = ks[j];
            CHECK(cell_of(p) == c);
            CHECK(p.cls == lt.cls[k]);
            for (int q = 0; q < 4; ++q) CHECK(p.tbox[q] == lt.tbox[4 * k + q]);
            for (int q = 0; q < 2; ++q) CHECK(p.anch[q] == lt.anch[2 * k + q]);
        }
    }
    CHECK(dup_groups >= 3);  // the repeated box (3 rows), the clamped edge and the corner share cells
    pack_level_targets(LevelTargets<float>{}, na, ny, nx, packed, starts);
    CHECK(packed.empty());
    CHECK(starts == std::vector<int>{0});
}

TEST_CASE("yolo loss gradient by finite differences", "[loss][gradcheck]") {
    Rng rng(31);
    const int bs = 2, na = 3, nc = 3, no = 5 + nc;
    const std::vector<int> ny = {4, 2}, nx = {6, 3};
    std::vector<std::vector<double>> maps(2);
    for (int i = 0; i < 2; ++i) {
        maps[i].resize((size_t)bs * na * ny[i] * nx[i] * no);
        for (double& v : maps[i]) v = rng.uniform_double(-2, 2);
    }
    const double anchors[12] = {1.25, 1.625, 2.0, 3.75, 4.125, 2.875, 1.875, 3.8125, 3.875, 2.8125, 3.6875, 7.4375};
    const double tg[5][6] = {{0, 0, 0.31, 0.42, 0.2, 0.3},
                             {0, 2, 0.77, 0.18, 0.35, 0.1},
                             {1, 1, 0.52, 0.61, 0.12, 0.22},
                             {1, 1, 0.52, 0.63, 0.5, 0.45},  // shares a cell with the previous target
                             {1, 0, 0.08, 0.93, 0.1, 0.12}};
    for (double ls : {0.0, 0.1}) {
        DYNAMIC_SECTION("label smoothing " << ls) {
            LossHyp h;
            h.label_smoothing = ls;
            h.obj_pw = h.cls_pw = ls > 0 ? 1.5 : 1.0;  // pos_weight other than 1 in the second pass
            std::vector<std::vector<double>> grads = {std::vector<double>(maps[0].size()), std::vector<double>(maps[1].size())};
            LossDetached<double> det;  // α and tobj as YOLOv5 detaches them, recorded at the base point
            auto run = [&](bool with_grad) {
                std::vector<const double*> mp = {maps[0].data(), maps[1].data()};
                std::vector<double*> dp;
                if (with_grad) dp = {grads[0].data(), grads[1].data()};
                return yolo_loss_cpu<double>(mp, dp, ny, nx, bs, na, no, &tg[0][0], 5, anchors, h, &det).total;
            };
            run(true);
            det.replay = true;
            int bad = 0, probes = 0;
            double worst = 0, scale = 0;
            for (auto& g : grads)
                for (double v : g) scale = std::max(scale, std::fabs(v));
            for (int i = 0; i < 2; ++i)
                for (size_t j = 0; j < maps[i].size(); ++j) {  // every element: 1296 + 288
                    const double x0 = maps[i][j], hstep = 1e-6;
                    maps[i][j] = x0 + hstep;
                    const double lp = run(false);
                    maps[i][j] = x0 - hstep;
                    const double lm = run(false);
                    maps[i][j] = x0;
                    const double num = (lp - lm) / (2 * hstep), ana = grads[i][j];
                    const double err = std::fabs(num - ana) / (scale + std::fabs(ana));
                    worst = std::max(worst, err);
                    bad += !(err <= 1e-7);
                    ++probes;
                }
            INFO(probes << " probes, worst rel err " << worst);
            CHECK(bad == 0);
            CHECK(scale > 0.01);
        }
    }
    SECTION("through the op and the tape") {
        TestCtx tc;
        Tensor m0 = tc.data.tensor({bs, na, 4, 6, no}, DType::F64), m1 = tc.data.tensor({bs, na, 2, 3, no}, DType::F64);
        std::memcpy(m0.data, maps[0].data(), m0.bytes());
        std::memcpy(m1.data, maps[1].data(), m1.bytes());
        Tensor anc = tc.data.tensor({2, na, 2}, DType::F64), tgt = tc.data.tensor({5, 6}, DType::F64);
        std::memcpy(anc.data, anchors, sizeof anchors);
        std::memcpy(tgt.data, tg, sizeof tg);
        Var v0 = tc.tape.leaf(m0), v1 = tc.tape.leaf(m1);
        YoloLoss L = yolo_loss(tc.ctx, {v0, v1}, tgt, anc, LossHyp{});
        Tensor seed = tc.data.tensor({1}, DType::F64);
        seed.ptr<double>()[0] = 0.5;
        tc.tape.backward(L.total, &seed);
        std::vector<double> g0(m0.numel()), g1(m1.numel());
        std::vector<const double*> mp = {maps[0].data(), maps[1].data()};
        std::vector<double*> dp = {g0.data(), g1.data()};
        LossItems direct = yolo_loss_cpu<double>(mp, dp, ny, nx, bs, na, no, &tg[0][0], 5, anchors, LossHyp{});
        CHECK(L.items.total == direct.total);
        CHECK(L.total.t.ptr<double>()[0] == direct.total);
        for (int64_t j = 0; j < m0.numel(); ++j) REQUIRE(tc.tape.grad(v0).ptr<double>()[j] == 0.5 * g0[j]);
        for (int64_t j = 0; j < m1.numel(); ++j) REQUIRE(tc.tape.grad(v1).ptr<double>()[j] == 0.5 * g1[j]);
    }
}

// Max |got − want| / max |want| over a tensor.
template <class T> static double rel_err_vec(const std::vector<T>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num = std::max(num, std::fabs((double)got[i] - want[i]));
        den = std::max(den, std::fabs(want[i]));
    }
    return den > 0 ? num / den : num;
}

template <class T> static void loss_fixture_case(const SafeTensorsFile& f, int k, double tol_loss, double tol_grad) {
    const std::string c = "case" + std::to_string(k) + ".";
    std::vector<std::vector<T>> maps(3), grads(3);
    std::vector<int> ny, nx;
    Shape s0 = f.shape(c + "p0");
    const int bs = s0[0], na = s0[1], no = s0[4];
    for (int i = 0; i < 3; ++i) {
        const std::string nm = c + "p" + std::to_string(i);
        std::vector<double> v = f.read_f64(nm);
        maps[i].assign(v.begin(), v.end());
        grads[i].resize(v.size());
        ny.push_back(f.shape(nm)[2]);
        nx.push_back(f.shape(nm)[3]);
    }
    std::vector<double> tg64 = f.read_f64(c + "targets"), an64 = f.read_f64(c + "anchors"), hv = f.read_f64(c + "hyp");
    std::vector<T> tg(tg64.begin(), tg64.end()), an(an64.begin(), an64.end());
    LossHyp h;
    h.box = hv[0], h.obj = hv[1], h.cls = hv[2], h.anchor_t = hv[3], h.cls_pw = hv[4], h.obj_pw = hv[5];
    h.label_smoothing = hv[6];
    REQUIRE(hv[7] == 0.0);  // focal loss is not used by YOLOv5's hyps
    const int nt = f.shape(c + "targets")[0];
    std::vector<const T*> mp = {maps[0].data(), maps[1].data(), maps[2].data()};
    std::vector<T*> dp = {grads[0].data(), grads[1].data(), grads[2].data()};
    LossItems L = yolo_loss_cpu<T>(mp, dp, ny, nx, bs, na, no, tg.data(), nt, an.data(), h);
    INFO(c << " " << f.metadata().at("case" + std::to_string(k)));
    auto near = [&](double got, const std::string& nm) {
        const double want = f.read_f64(c + nm)[0];
        INFO(nm << ": y5 " << got << ", YOLOv5 " << want);
        CHECK(std::fabs(got - want) <= tol_loss * std::max(std::fabs(want), 1e-12));
    };
    near(L.lbox, "lbox");
    near(L.lobj, "lobj");
    near(L.lcls, "lcls");
    near(L.total, "loss");
    for (int i = 0; i < 3; ++i) {
        double e = rel_err_vec(grads[i], f.read_f64(c + "grad.p" + std::to_string(i)));
        INFO("grad.p" << i << " rel err " << e);
        CHECK(e <= tol_grad);
        // The assignment itself: same cells, in the same order, with the same boxes.
        LevelTargets<T> lt = build_targets_level(tg.data(), nt, an.data() + 2 * na * i, na, ny[i], nx[i], h.anchor_t);
        const std::string b = c + "bt" + std::to_string(i) + ".";
        std::vector<double> ind = f.read_f64(b + "indices"), tbox = f.read_f64(b + "tbox"), tcls = f.read_f64(b + "tcls");
        const int n = (int)tcls.size();
        REQUIRE(lt.size() == n);
        for (int j = 0; j < n; ++j) {
            CHECK(lt.b[j] == (int)ind[j]);
            CHECK(lt.a[j] == (int)ind[n + j]);
            CHECK(lt.gj[j] == (int)ind[2 * n + j]);
            CHECK(lt.gi[j] == (int)ind[3 * n + j]);
            CHECK(lt.cls[j] == (int)tcls[j]);
        }
        CHECK(rel_err_vec(lt.tbox, tbox) <= 1e-6);
    }
}

TEST_CASE("yolo loss matches YOLOv5's ComputeLoss", "[loss][parity]") {
    SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/loss.safetensors");
    const int cases = std::stoi(f.metadata().at("cases"));
    REQUIRE(cases >= 7);
    for (int k = 0; k < cases; ++k) {
        DYNAMIC_SECTION("case " << k << " f64") { loss_fixture_case<double>(f, k, 1e-9, 1e-9); }
        DYNAMIC_SECTION("case " << k << " f32") { loss_fixture_case<float>(f, k, 1e-5, 1e-4); }
    }
}
