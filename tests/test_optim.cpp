/*
 * The optimisation recipe against YOLOv5's own objects (tests/fixtures/optim.safetensors, from torch's SGD,
 * LambdaLR, clip_grad_norm_ and YOLOv5's ModelEMA driven as train.py drives them): per-iteration lr,
 * momentum, accumulate and step decisions for both schedules, SGD updates, clipping, EMA. The loss scaler against
 * torch's GradScaler (tests/fixtures/amp_scaler.safetensors): scale, found_inf, skipped step and growth tracker
 * step for step over three runs, the unscaled gradients bit for bit.
 */
#include <cstring>
#include <set>

#include "engine/autograd/optim.h"
#include "engine/core/safetensors.h"
#include "tests/test_util.h"

using namespace y5;

static const SafeTensorsFile& fx() {
    static SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/optim.safetensors");
    return f;
}

TEST_CASE("lr / momentum / accumulate per iteration equal YOLOv5's over whole runs", "[optim][parity]") {
    const SafeTensorsFile& f = fx();
    const int runs = std::stoi(f.metadata().at("schedule_runs"));
    REQUIRE(runs >= 4);
    for (int r = 0; r < runs; ++r) {
        const std::string c = "sched" + std::to_string(r) + ".";
        INFO(f.metadata().at("sched" + std::to_string(r)));
        std::vector<double> cfg = f.read_f64(c + "config"), lr = f.read_f64(c + "lr"), mom = f.read_f64(c + "momentum"),
                            acc = f.read_f64(c + "accumulate"), step = f.read_f64(c + "step"), elr = f.read_f64(c + "epoch_lr");
        const int E = (int)cfg[0], nb = (int)cfg[1], bs = (int)cfg[2], nbs = (int)cfg[3];
        Schedule s(0.01, 0.01, 0.937, 3.0, 0.8, 0.1, E, nb, bs, cfg[4] != 0, nbs);
        CHECK(0.0005 * bs * s.initial_accumulate() / nbs == Approx(cfg[5]));
        int accumulate = s.initial_accumulate();
        int64_t last_opt_step = -1;
        int steps = 0;
        for (int e = 0; e < E; ++e) {
            ScheduleState st{};
            for (int i = 0; i < nb; ++i) {
                const int64_t ni = i + (int64_t)nb * e;
                st = s.at(ni, e, accumulate);
                accumulate = st.accumulate;
                for (int j = 0; j < 3; ++j) {
                    REQUIRE(st.lr[j] == Approx(lr[ni * 3 + j]).epsilon(1e-12).margin(1e-15));
                    REQUIRE(st.momentum[j] == Approx(mom[ni * 3 + j]).epsilon(1e-12));
                }
                REQUIRE(accumulate == (int)acc[ni]);
                const bool do_step = ni - last_opt_step >= accumulate;
                REQUIRE(do_step == (step[ni] != 0));
                if (do_step) last_opt_step = ni, ++steps;
            }
            for (int j = 0; j < 3; ++j) CHECK(st.lr[j] == Approx(elr[e * 3 + j]).epsilon(1e-12));  // results.csv x/lr
        }
        CHECK(steps > 0);
    }
}

TEST_CASE("SGD / clipping / EMA updates equal torch's and YOLOv5's", "[optim][parity]") {
    const SafeTensorsFile& f = fx();
    std::vector<double> p0 = f.read_f64("sgd.p0"), sizes = f.read_f64("sgd.sizes"), lr = f.read_f64("sgd.lr"),
                        mom = f.read_f64("sgd.momentum"), wd = f.read_f64("sgd.wd"), grad = f.read_f64("sgd.grad"),
                        want = f.read_f64("sgd.p");
    const int n = (int)p0.size(), T = (int)lr.size() / 3;
    ParamStore ps;
    const ParamKind kinds[3] = {ParamKind::Bias, ParamKind::Weight, ParamKind::NormWeight};
    for (int g = 0; g < 3; ++g) ps.add("g" + std::to_string(g), {(int64_t)sizes[g]}, kinds[g]);
    ps.allocate(Device::CPU, DType::F64);
    auto scatter = [&](const std::vector<double>& flat, size_t at, bool to_grad) {  // fixture order: groups back to back
        size_t k = at;
        for (int g = 0; g < 3; ++g) {
            const Tensor& t = to_grad ? ps[g].grad : ps[g].value;
            for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = flat[k++];
        }
    };
    scatter(p0, 0, false);
    for (int t = 0; t < T; ++t) {
        scatter(grad, (size_t)t * n, true);
        SgdGroup groups[3];
        for (int g = 0; g < 3; ++g) groups[g] = {lr[t * 3 + g], mom[t * 3 + g], wd[g]};
        sgd_step(ps, groups);
        size_t k = (size_t)t * n;
        for (int g = 0; g < 3; ++g)
            for (int64_t i = 0; i < ps[g].value.numel(); ++i, ++k)
                REQUIRE(ps[g].value.ptr<double>()[i] == Approx(want[k]).epsilon(1e-12).margin(1e-15));
    }

    for (const char* which : {"", "_small"}) {
        std::vector<double> g = f.read_f64(std::string("clip.g") + which), out = f.read_f64(std::string("clip.out") + which);
        ParamStore c;
        c.add("w", {(int64_t)g.size()}, ParamKind::Weight);
        c.allocate(Device::CPU, DType::F64);
        std::memcpy(c[0].grad.data, g.data(), g.size() * 8);
        const double norm = clip_grad_norm(c, 10.0);
        CHECK(norm == Approx(f.read_f64("clip.norm")[which[0] ? 1 : 0]).epsilon(1e-12));
        for (size_t i = 0; i < g.size(); ++i) REQUIRE(c[0].grad.ptr<double>()[i] == Approx(out[i]).epsilon(1e-12).margin(1e-15));
    }

    std::vector<double> init = f.read_f64("ema.init"), model = f.read_f64("ema.model"), out = f.read_f64("ema.out"),
                        updates = f.read_f64("ema.updates"), decay = f.read_f64("ema.decay");
    const int m = (int)init.size(), K = (int)updates.size();
    ParamStore ema, live;
    ema.add("s", {m}, ParamKind::Weight);
    live.add("s", {m}, ParamKind::Weight);
    ema.allocate(Device::CPU, DType::F64);
    live.allocate(Device::CPU, DType::F64);
    std::memcpy(ema[0].value.data, init.data(), m * 8);
    for (int k = 0; k < K; ++k) {
        std::memcpy(live[0].value.data, &model[(size_t)k * m], m * 8);
        const double d = ema_decay((int64_t)updates[k]);
        CHECK(d == Approx(decay[k]).epsilon(1e-14));
        ema_update(ema, live, d);
        for (int i = 0; i < m; ++i) REQUIRE(ema[0].value.ptr<double>()[i] == Approx(out[(size_t)k * m + i]).epsilon(1e-12).margin(1e-15));
    }
}

// ---- GradScaler (tools/golden/make_amp_fixtures.py)

static const SafeTensorsFile& amp_fx() {
    static SafeTensorsFile f(std::string(Y5_SOURCE_DIR) + "/tests/fixtures/amp_scaler.safetensors");
    return f;
}

template <class T> static auto bits(T v) {
    typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type b;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

// Replays run r as the fixture's train.py loop drives torch's scaler: gradient = f32(scale·w) plus the injected
// inf/NaN, unscale, step unless found_inf, update, zero_grad. At each step in `resume_at` (after its update) the scaler is
// rebuilt from its saved state, as a resumed run would. Every step must equal torch's.
static void replay_amp_run(int r, const std::set<int>& resume_at) {
    const SafeTensorsFile& f = amp_fx();
    const std::string c = "run" + std::to_string(r) + ".";
    std::vector<double> cfg = f.read_f64(c + "config"), inject = f.read_f64(c + "inject"),
                        found_inf = f.read_f64(c + "found_inf"), skipped = f.read_f64(c + "skipped"),
                        tracker_after = f.read_f64(c + "tracker_after");
    std::vector<float> w = f.read_f32(c + "w"), scale_before = f.read_f32(c + "scale_before"),
                       scale_after = f.read_f32(c + "scale_after"), grad0 = f.read_f32(c + "grad0");
    const int S = (int)cfg[4], n = (int)w.size();
    REQUIRE((int)found_inf.size() == S);
    auto make = [&] { return GradScaler((float)cfg[0], cfg[1], cfg[2], (int)cfg[3]); };
    GradScaler scaler = make();
    ParamStore ps;
    ps.add("p", {n}, ParamKind::Weight);
    ps.allocate(Device::CPU, DType::F32);
    float* g = ps[0].grad.ptr<float>();
    const float nonfinite[3] = {INFINITY, -INFINITY, NAN};
    size_t k = 0;  // next injection (rows [step, element, kind], by step)
    int skips = 0;
    for (int s = 0; s < S; ++s) {
        INFO("run " << r << ", step " << s);
        REQUIRE(bits(scaler.loss_scale()) == bits(scale_before[s]));
        for (int i = 0; i < n; ++i) g[i] = scaler.loss_scale() * w[i];  // backward of loss·scale
        for (; k < inject.size() / 3 && (int)inject[3 * k] == s; ++k) g[(int)inject[3 * k + 1]] = nonfinite[(int)inject[3 * k + 2]];
        const bool found = scaler.unscale(ps);
        REQUIRE(found == (found_inf[s] != 0));
        REQUIRE(found == (skipped[s] != 0));  // train.py steps the optimizer only without inf/NaN
        REQUIRE(bits(g[0]) == bits(grad0[s]));
        skips += found;
        scaler.update(found);
        ps.zero_grad();  // optimizer.zero_grad() (the padding too, which a scale of 0 has made 0·inf = NaN)
        REQUIRE(bits(scaler.loss_scale()) == bits(scale_after[s]));
        REQUIRE(scaler.growth_tracker() == (int32_t)tracker_after[s]);
        if (resume_at.count(s)) {
            const float saved_scale = scaler.loss_scale();
            const int32_t saved_tracker = scaler.growth_tracker();
            scaler = make();
            scaler.set_state(saved_scale, saved_tracker);
        }
    }
    CHECK(k == inject.size() / 3);
    CHECK(skips > 0);
}

TEST_CASE("GradScaler: scale, found_inf, skipped steps and growth tracker equal torch's step for step",
          "[optim][amp][parity]") {
    const int runs = std::stoi(amp_fx().metadata().at("runs"));
    REQUIRE(runs == 3);
    for (int r = 0; r < runs; ++r) {
        INFO(amp_fx().metadata().at("run" + std::to_string(r)));
        replay_amp_run(r, {});
    }
}

TEST_CASE("GradScaler: state saved and restored mid-run continues as torch's", "[optim][amp][parity]") {
    const SafeTensorsFile& f = amp_fx();
    for (int r = 0; r < 3; ++r) {
        const std::string c = "run" + std::to_string(r) + ".";
        std::vector<double> cfg = f.read_f64(c + "config"), tracker = f.read_f64(c + "tracker_after");
        const int S = (int)cfg[4];
        // Halfway, and right before every growth of the scale (the tracker one short of the interval): a resume
        // that lost the tracker would not grow at the next step.
        std::set<int> at = {S / 2};
        for (int s = 0; s < S; ++s)
            if ((int)tracker[s] == (int)cfg[3] - 1) at.insert(s);
        REQUIRE(at.size() > 1);
        replay_amp_run(r, at);
    }
}

TEST_CASE("GradScaler: unscaled gradients equal torch's bit for bit (f32 and f64)", "[optim][amp][parity]") {
    const SafeTensorsFile& f = amp_fx();
    std::vector<float> scales = f.read_f32("unscale.scales"), inv = f.read_f32("unscale.inv"), g = f.read_f32("unscale.g"),
                       out = f.read_f32("unscale.out");
    std::vector<double> found = f.read_f64("unscale.found"), g64 = f.read_f64("unscale.g64"),
                        out64 = f.read_f64("unscale.out64"), found64 = f.read_f64("unscale.found64");
    const int M = (int)scales.size(), N = (int)g.size() / 2, N64 = (int)g64.size();
    for (int m = 0; m < M; ++m) {
        INFO("scale " << scales[m] << " (inv_scale " << inv[m] << ")");
        GradScaler scaler(scales[m]);
        REQUIRE(bits(scaler.inv_scale()) == bits(inv[m]));
        for (int row = 0; row < 2; ++row) {
            INFO((row ? "with inf / NaN" : "finite"));
            ParamStore ps;
            ps.add("g", {N}, ParamKind::Weight);
            ps.allocate(Device::CPU, DType::F32);
            std::memcpy(ps[0].grad.data, &g[(size_t)row * N], (size_t)N * 4);
            CHECK(scaler.unscale(ps) == (found[(size_t)m * 2 + row] != 0));
            const float* got = ps[0].grad.ptr<float>();
            for (int i = 0; i < N; ++i) {
                const float want = out[((size_t)m * 2 + row) * N + i];
                INFO("element " << i << ": " << g[(size_t)row * N + i] << " -> " << got[i] << ", torch " << want);
                REQUIRE(bits(got[i]) == bits(want));
            }
        }
        ParamStore ps;
        ps.add("g", {N64}, ParamKind::Weight);
        ps.allocate(Device::CPU, DType::F64);
        std::memcpy(ps[0].grad.data, g64.data(), (size_t)N64 * 8);
        CHECK(scaler.unscale(ps) == (found64[m] != 0));
        for (int i = 0; i < N64; ++i) {
            INFO("f64 element " << i << ": " << g64[i]);
            REQUIRE(bits(ps[0].grad.ptr<double>()[i]) == bits(out64[(size_t)m * N64 + i]));
        }
    }
}
