/*
 * Fine-tuning (y5train --weights, --freeze): Model::transfer_weights against train.py's intersect_dicts counts and
 * values, for the official yolov5n.pt, the train.py-style pt_last_tiny.pt fixture and a y5 .safetensors; frozen
 * parameters untouched by SGD, Adam and AdamW steps and left out of the gradient norm.
 *
 * The reference counts are train.py v7.0's "Transferred N/M items", from its own code in /work/venv-torch:
 *   model = Model(cfg or ckpt['model'].yaml, ch=3, nc=nc); exclude = ['anchor'] if cfg else []
 *   csd = intersect_dicts(ckpt['model'].float().state_dict(), model.state_dict(), exclude=exclude)
 *   print(len(csd), len(model.state_dict()))
 * yolov5n.pt: nc=1 with cfg 342/349, without 343/349; nc=80 with cfg 348/349, without 349/349.
 * pt_last_tiny.pt (no cfg): nc=1 343/349, nc=2 349/349.
 */
#include <cmath>
#include <cstring>
#include <filesystem>

#include "engine/autograd/optim.h"
#include "engine/core/safetensors.h"
#include "kernels/check.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;
namespace fs = std::filesystem;

static std::string src(const std::string& rel) { return std::string(Y5_SOURCE_DIR) + "/" + rel; }
static const std::string kYolov5n = std::string(Y5_SOURCE_DIR) + "/../shared/weights/yolov5n.pt";

static std::vector<float> values(const Param& p) {
    const float* v = (const float*)p.value.data;
    return std::vector<float>(v, v + p.value.numel());
}

static bool is_detect_conv(const std::string& n) { return n.rfind("model.24.m.", 0) == 0; }

// A fresh model (init from seed 7) of `yaml`, nc; returns its values before any transfer.
static std::vector<std::vector<float>> fresh(Model& m) {
    m.allocate(Device::CPU);
    Rng rng(7);
    m.init_weights(rng);
    std::vector<std::vector<float>> v;
    for (int i = 0; i < m.params.size(); ++i) v.push_back(values(m.params[i]));
    return v;
}

TEST_CASE("yolov5n.pt transfers into a 1-class yolov5n as train.py's intersect_dicts", "[finetune]") {
    if (!fs::exists(kYolov5n)) {
        WARN("../shared/weights/yolov5n.pt is absent (a user's clone): skipping the official checkpoint");
        return;
    }
    auto ck = Model::from_weights(kYolov5n);  // the strict reader, checked against torch in test_torch_pt.cpp
    const std::string cfg = src("config/models/yolov5n.yaml");
    Model m(cfg, 1);
    const auto before = fresh(m);
    const Model::Transfer t = m.transfer_weights(kYolov5n, {"anchor"});
    CHECK(t.transferred == 342);
    CHECK(t.total == 349);
    int kept = 0;
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        INFO(p.name);
        if (is_detect_conv(p.name) || p.name == "model.24.anchors") {
            CHECK(values(p) == before[i]);  // shape mismatch (18 vs 255 outputs) or excluded: the fresh init
            ++kept;
        } else {
            CHECK(values(p) == values(*ck->params.find(p.name)));
            CHECK(values(p) != before[i]);
        }
    }
    CHECK(kept == 7);  // m.{0,1,2}.{weight,bias} and the anchors
    // nc=80: only the anchors stay out; without --cfg they come too.
    Model m80(cfg, 80);
    fresh(m80);
    const Model::Transfer t80 = m80.transfer_weights(kYolov5n, {"anchor"});
    CHECK(t80.transferred == 348);
    CHECK(t80.total == 349);
    for (int nc : {1, 80}) {
        const auto y = Model::weights_yaml(kYolov5n);
        CHECK(y.first == "yolov5n.yaml");
        Model w(y.first, y.second, nc);
        fresh(w);
        const Model::Transfer tw = w.transfer_weights(kYolov5n, {});
        CHECK(tw.transferred == (nc == 1 ? 343 : 349));
        CHECK(tw.total == 349);
        CHECK(w.nc == nc);
        CHECK(values(*w.params.find("model.24.anchors")) == values(*ck->params.find("model.24.anchors")));
    }
}

TEST_CASE("a training .pt transfers its 'model', not its EMA, as train.py reads it", "[finetune]") {
    const std::string pt = src("tests/fixtures/pt_last_tiny.pt");
    SafeTensorsFile sums(src("tests/fixtures/pt_sums.safetensors"));
    const auto y = Model::weights_yaml(pt);
    for (int nc : {1, 2}) {
        Model m(y.first, y.second, nc);
        const auto before = fresh(m);
        const Model::Transfer t = m.transfer_weights(pt, {});
        CHECK(t.transferred == (nc == 1 ? 343 : 349));
        CHECK(t.total == 349);
        for (int i = 0; i < m.params.size(); ++i) {
            const Param& p = m.params[i];
            INFO(p.name);
            if (nc == 1 && is_detect_conv(p.name)) {
                CHECK(values(p) == before[i]);
                continue;
            }
            const std::vector<double> want = sums.read_f64("last_model." + p.name);  // [sum, sum of squares]
            double s = 0, q = 0;
            for (float v : values(p)) s += v, q += (double)v * v;
            CHECK(std::fabs(s - want[0]) <= 1e-9 * (1 + std::sqrt(p.value.numel() * want[1])));
            CHECK(std::fabs(q - want[1]) <= 1e-9 * want[1] + 1e-300);
        }
    }
}

TEST_CASE("a y5 .safetensors transfers by name and shape and holds no num_batches_tracked", "[finetune]") {
    const std::string cfg = src("config/models/yolov5n.yaml");
    Model a(cfg, 3);
    fresh(a);
    Rng rng(11);
    for (int i = 0; i < a.params.size(); ++i)  // values no fresh init has
        for (int64_t k = 0; k < a.params[i].value.numel(); ++k) a.params[i].value.ptr<float>()[k] = rng.uniform(-1, 1);
    const std::string path = (fs::temp_directory_path() / "y5_test_finetune.safetensors").string();
    a.save_weights(path, {});
    Model b(cfg, 5);
    const auto before = fresh(b);
    const Model::Transfer t = b.transfer_weights(path, {"anchor"});
    CHECK(t.total == 349);
    CHECK(t.transferred == 292 - 6 - 1);  // y5's parameters less Detect's convs (nc 3 vs 5) and the anchors
    for (int i = 0; i < b.params.size(); ++i) {
        const Param& p = b.params[i];
        INFO(p.name);
        if (is_detect_conv(p.name) || p.name == "model.24.anchors") CHECK(values(p) == before[i]);
        else CHECK(values(p) == values(*a.params.find(p.name)));
    }
    const auto y = Model::weights_yaml(path);
    CHECK(y.first == "yolov5n.yaml");
    CHECK(y.second == a.yaml_text);
    fs::remove(path);
}

// A store with every group split by frozen parameters: b0 b1 | w0 w1 w2 | n0 n1, the middle ones frozen.
static void make_store(ParamStore& ps, bool freeze) {
    const char* names[7] = {"b0", "b1", "w0", "w1", "w2", "n0", "n1"};
    const ParamKind kinds[7] = {ParamKind::Bias, ParamKind::Bias, ParamKind::Weight, ParamKind::Weight,
                                ParamKind::Weight, ParamKind::NormWeight, ParamKind::NormWeight};
    for (int i = 0; i < 7; ++i) ps.add(names[i], {5 + 3 * i}, kinds[i]);
    ps.add("rm", {4}, ParamKind::Buffer);
    ps.allocate(Device::CPU, DType::F32);
    Rng rng(3);
    for (int i = 0; i < ps.size(); ++i)
        for (int64_t k = 0; k < ps[i].value.numel(); ++k) ps[i].value.ptr<float>()[k] = rng.uniform(-1, 1);
    if (freeze)
        for (const char* n : {"b0", "w1", "n1"})
            for (int i = 0; i < ps.size(); ++i)
                if (ps[i].name == n) ps[i].frozen = true;
}

static void fill_grads(ParamStore& ps, Rng& rng) {
    for (int i = 0; i < ps.size(); ++i)
        if (ps[i].trainable())
            for (int64_t k = 0; k < ps[i].grad.numel(); ++k) ps[i].grad.ptr<float>()[k] = rng.uniform(-1, 1);
}

TEST_CASE("frozen parameters keep their values through SGD, Adam and AdamW steps", "[finetune][freeze]") {
    for (OptimizerKind kind : {OptimizerKind::SGD, OptimizerKind::Adam, OptimizerKind::AdamW}) {
        INFO(optimizer_name(kind));
        ParamStore fz, all;
        make_store(fz, true);
        make_store(all, false);
        std::vector<std::vector<float>> start;
        for (int i = 0; i < fz.size(); ++i) start.push_back(values(fz[i]));
        Optimizer of(kind, 0.937), oa(kind, 0.937);
        of.allocate(fz);
        oa.allocate(all);
        const SgdGroup groups[3] = {{0.1, 0.9, 0}, {0.01, 0.93, 5e-4}, {0.01, 0.93, 0}};
        Rng gf(5), ga(5);
        for (int s = 0; s < 4; ++s) {
            fill_grads(fz, gf);
            fill_grads(all, ga);
            const double nf = clip_grad_norm(fz, 1.0), na = clip_grad_norm(all, 1.0);
            CHECK(nf < na);  // the frozen gradients are not in the norm
            // All the same gradients for the others, after the same clip factor as the frozen store's.
            const double c = std::min(1.0, 1.0 / (nf + 1e-6)) / std::min(1.0, 1.0 / (na + 1e-6));
            for (int i = 0; i < all.size(); ++i)
                if (all[i].trainable())
                    for (int64_t k = 0; k < all[i].grad.numel(); ++k) all[i].grad.ptr<float>()[k] *= (float)c;
            of.step(fz, groups);
            oa.step(all, groups);
        }
        for (int i = 0; i < fz.size(); ++i) {
            const Param& p = fz[i];
            INFO(p.name);
            if (p.frozen) {
                CHECK(std::memcmp(p.value.data, start[i].data(), p.value.bytes()) == 0);  // bit-identical
                const Tensor m = fz.momentum(i);
                for (int64_t k = 0; k < m.numel(); ++k) CHECK(m.ptr<float>()[k] == 0.f);
            } else if (p.trainable()) {
                CHECK(values(p) != start[i]);
                // as the store without frozen parameters, up to the rescaled gradients' rounding
                for (int64_t k = 0; k < p.value.numel(); ++k)
                    CHECK(std::fabs(p.value.ptr<float>()[k] - all[i].value.ptr<float>()[k]) <= 1e-5f);
            } else {
                CHECK(values(p) == start[i]);  // buffers: no optimizer
            }
        }
    }
}

TEST_CASE("update_ranges leaves out exactly the frozen parameters", "[finetune][freeze]") {
    ParamStore ps;
    make_store(ps, true);
    for (int g = 0; g < 3; ++g) {
        std::vector<char> covered(ps.trainable_elems(), 0);
        for (auto r : ps.update_ranges(g)) {
            CHECK(r.first >= ps.group_range(g).first);
            CHECK(r.second <= ps.group_range(g).second);
            CHECK(r.first < r.second);
            for (int64_t k = r.first; k < r.second; ++k) covered[k] = 1;
        }
        for (int i = 0; i < ps.size(); ++i) {
            const Param& p = ps[i];
            if (!p.trainable() || p.offset < ps.group_range(g).first || p.offset >= ps.group_range(g).second) continue;
            for (int64_t k = 0; k < p.shape.numel(); ++k) CHECK(covered[p.offset + k] == (p.frozen ? 0 : 1));
        }
    }
    ParamStore none;
    make_store(none, false);
    for (int g = 0; g < 3; ++g) CHECK(none.update_ranges(g) == std::vector<std::pair<int64_t, int64_t>>{none.group_range(g)});
}
