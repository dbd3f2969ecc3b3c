/*
 * The optimisation recipe against YOLOv5's own objects (tests/fixtures/optim.safetensors, from torch's SGD,
 * LambdaLR, clip_grad_norm_ and YOLOv5's ModelEMA driven as train.py drives them): per-iteration lr,
 * momentum, accumulate and step decisions for both schedules, SGD updates, clipping, EMA.
 */
#include <cstring>

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
