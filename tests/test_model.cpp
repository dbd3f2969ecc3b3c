/*
 * Models from yaml against Ultralytics YOLOv5 v7.0: the summary (parameters, layers, GFLOPs, the table),
 * and forward / backward / BN statistics / decoded output against fixtures that YOLOv5's own code wrote
 * (tools/golden/make_model_fixtures.py). Plus the errors a bad yaml or a bad weights file gets.
 */
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <type_traits>

#include "engine/core/safetensors.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

static std::string src(const std::string& rel) { return std::string(Y5_SOURCE_DIR) + "/" + rel; }

static std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

static std::string write_temp(const std::string& name, const std::string& text) {
    std::string path = "/tmp/y5_test_" + name;
    std::ofstream(path) << text;
    return path;
}

// max |got − want| / max |want| over a tensor: the per-tensor relative error of the parity criteria.
template <class T> static double rel_err(const T* got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num = std::max(num, (double)std::fabs(got[i] - want[i]));
        den = std::max(den, (double)std::fabs(want[i]));
    }
    return num / std::max(den, 1e-30);
}

TEST_CASE("model summary matches YOLOv5's", "[model][summary]") {
    struct Case {
        const char* yaml;
        int nc;
        long long params;
        int layers;
        const char* gflops;
    };
    // Parameter counts, layer counts and GFLOPs as YOLOv5 7.0 prints them for these files.
    const Case cases[] = {{"config/models/yolov5n.yaml", 80, 1872157, 214, "4.6"},
                          {"config/models/yolov5s.yaml", 80, 7235389, 214, "16.6"},
                          {"config/models/yolov5n-eca.yaml", 80, 1872163, 222, "4.6"},
                          {"config/models/yolov5n-eca.yaml", 1, 1765276, 222, "4.2"},
                          {"config/models/yolov5n.yaml", 1, 1765270, 214, "4.2"}};
    for (const Case& k : cases) {
        DYNAMIC_SECTION(k.yaml << " nc=" << k.nc) {
            Model m(src(k.yaml), k.nc);
            CHECK(m.num_parameters() == k.params);
            CHECK(m.torch_layer_count() == k.layers);
            char g[16];
            snprintf(g, sizeof g, "%.1f", m.gflops());
            CHECK(std::string(g) == k.gflops);
            CHECK(m.detect->stride == std::vector<float>{8, 16, 32});
        }
    }
    SECTION("the yolov5n table, row by row") {
        Model m(src("config/models/yolov5n.yaml"));
        CHECK(m.summary().substr(1) == read_text(src("tests/fixtures/summary_yolov5n.txt")));
    }
}

TEST_CASE("model init follows YOLOv5", "[model][init]") {
    Model m(src("config/models/yolov5n.yaml"));
    m.allocate(Device::CPU);
    Rng rng(0);
    m.init_weights(rng);
    const Param* a = m.params.find("model.24.anchors");
    REQUIRE(a);
    CHECK(a->shape == Shape({3, 3, 2}));
    CHECK(a->value.ptr<float>()[0] == 10.0f / 8);   // P3 anchor (10, 13) / stride 8
    CHECK(a->value.ptr<float>()[17] == 326.0f / 32);
    const Param* w = m.params.find("model.1.conv.weight");  // fan_in 16·3·3: bound 1/12
    float lo = 1, hi = -1;
    for (int64_t i = 0; i < w->value.numel(); ++i) {
        lo = std::min(lo, w->value.ptr<float>()[i]);
        hi = std::max(hi, w->value.ptr<float>()[i]);
    }
    CHECK(hi <= 1.0f / 12);
    CHECK(lo >= -1.0f / 12);
    CHECK(hi > 0.9f / 12);
    CHECK(m.params.find("model.0.bn.weight")->value.ptr<float>()[3] == 1.0f);
    CHECK(m.params.find("model.0.bn.running_var")->value.ptr<float>()[3] == 1.0f);
    CHECK(m.params.find("model.0.bn.running_mean")->value.ptr<float>()[3] == 0.0f);
    // Detect bias priors: obj += log(8 / (640/s)²), cls += log(0.6 / (nc − 0.99999)), on U(±1/√64) at P3.
    const float* b = m.params.find("model.24.m.0.bias")->value.ptr<float>();
    CHECK(std::fabs(b[4] - std::log(8.0 / 6400.0)) <= 0.125 + 1e-6);
    CHECK(std::fabs(b[85 + 5] - std::log(0.6 / 79.00001)) <= 0.125 + 1e-6);
}

// The fixtures hold YOLOv5's results computed in float64 (stored as F32). y5's f64 path must match them to
// the storage rounding; its f32 path to float32 noise, which train-mode BatchNorm over the few values per
// channel in the deep layers amplifies to ~5e-5 (forward) and ~9e-5 (gradients), in torch's f32 as in ours.
template <class T> static void check_fixture(const char* fixture, const char* yaml, int nc) {
    const bool f64 = std::is_same<T, double>::value;
    const double fwd_tol = f64 ? 1e-6 : 2e-4, grad_tol = f64 ? 1e-6 : 5e-4;
    const std::string path = src(fixture);
    SafeTensorsFile f(path);
    Model m(src(yaml), nc);
    m.allocate(Device::CPU, dtype_of<T>());
    m.load_weights(path);

    TestCtx tc;
    Ctx& c = tc.ctx;
    Shape in_shape = f.shape("input");
    std::vector<float> in = f.read_f32("input");
    Tensor x = tc.data.tensor(in_shape, dtype_of<T>());
    for (size_t i = 0; i < in.size(); ++i) x.ptr<T>()[i] = in[i];

    // (b) training forward: every layer and the Detect maps
    std::vector<Var> outs;
    Model::Output o = m.forward(c, Tape::constant(x), true, &outs);
    for (size_t i = 0; i + 1 < outs.size(); ++i) {
        const std::string nm = "out.layer." + std::to_string(i);
        REQUIRE(outs[i].shape() == f.shape(nm));
        double e = rel_err(outs[i].t.ptr<T>(), f.read_f32(nm));
        INFO(nm << " rel err " << e);
        CHECK(e <= fwd_tol);
    }
    std::vector<Tensor> seeds;
    for (size_t j = 0; j < o.maps.size(); ++j) {
        const std::string nm = "out.detect." + std::to_string(j);
        REQUIRE(o.maps[j].shape() == f.shape(nm));
        double e = rel_err(o.maps[j].t.ptr<T>(), f.read_f32(nm));
        INFO(nm << " rel err " << e);
        CHECK(e <= fwd_tol);
        std::vector<float> w = f.read_f32("lossw." + std::to_string(j));
        Tensor s = tc.data.tensor(o.maps[j].shape(), dtype_of<T>());
        for (size_t i = 0; i < w.size(); ++i) s.ptr<T>()[i] = w[i];
        seeds.push_back(s);
    }
    // (c) gradients of L = Σ lossw ⊙ maps; the maps do not require grad themselves, the parameters do.
    tc.tape.backward(o.maps, seeds);
    int checked = 0;
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        if (!p.trainable()) continue;
        double e = rel_err(p.grad.ptr<T>(), f.read_f32("grad." + p.name));
        INFO("grad." << p.name << " rel err " << e);
        CHECK(e <= grad_tol);
        ++checked;
    }
    const std::vector<std::string> names = f.names();
    CHECK(checked == (int)std::count_if(names.begin(), names.end(),
                                        [](const std::string& n) { return n.rfind("grad.", 0) == 0; }));
    // (d) BN running statistics after that training forward
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        if (p.name.find("running_") == std::string::npos) continue;
        double e = rel_err(p.value.ptr<T>(), f.read_f32("after." + p.name));
        INFO("after." << p.name << " rel err " << e);
        CHECK(e <= fwd_tol);
    }
    // (e) eval forward: decoded predictions in pixels
    tc.tape.clear();
    NoGrad ng(tc.tape);
    Model::Output ev = m.forward(c, Tape::constant(x), false);
    REQUIRE(ev.decoded.shape == f.shape("out.decoded"));
    double e = rel_err(ev.decoded.ptr<T>(), f.read_f32("out.decoded"));
    INFO("out.decoded rel err " << e);
    CHECK(e <= fwd_tol);
}

TEST_CASE("yolov5n forward and backward match Ultralytics", "[model][parity]") {
    SECTION("f32") { check_fixture<float>("tests/fixtures/model_yolov5n.safetensors", "config/models/yolov5n.yaml", 80); }
    SECTION("f64") { check_fixture<double>("tests/fixtures/model_yolov5n.safetensors", "config/models/yolov5n.yaml", 80); }
}

TEST_CASE("yolov5n-eca forward and backward match Ultralytics", "[model][parity]") {
    SECTION("f32") { check_fixture<float>("tests/fixtures/model_yolov5n_eca.safetensors", "config/models/yolov5n-eca.yaml", 1); }
    SECTION("f64") { check_fixture<double>("tests/fixtures/model_yolov5n_eca.safetensors", "config/models/yolov5n-eca.yaml", 1); }
}

TEST_CASE("weights round trip and mismatched files name the tensors", "[model][weights]") {
    Model a(src("config/models/yolov5n.yaml"), 3);
    a.allocate(Device::CPU);
    Rng rng(5);
    a.init_weights(rng);
    const std::string path = "/tmp/y5_test_weights.safetensors";
    a.save_weights(path, {{"note", "test"}});
    Model b(src("config/models/yolov5n.yaml"), 3);
    b.allocate(Device::CPU);
    b.load_weights(path);
    Tensor va = a.params.values_flat(), vb = b.params.values_flat();
    REQUIRE(va.numel() == vb.numel());
    CHECK(std::memcmp(va.data, vb.data, va.bytes()) == 0);
    SafeTensorsFile f(path);
    CHECK(f.metadata().at("nc") == "3");
    CHECK(f.metadata().at("note") == "test");

    Model other(src("config/models/yolov5n.yaml"), 80);  // Detect is 255 wide instead of 24
    other.allocate(Device::CPU);
    CHECK_THROWS_WITH(other.load_weights(path), Contains("mis-shaped: model.24.m.0.weight (24, 64, 1, 1) vs model (255, 64, 1, 1)"));
    Model eca(src("config/models/yolov5n-eca.yaml"), 3);
    eca.allocate(Device::CPU);
    CHECK_THROWS_WITH(eca.load_weights(path), Contains("mis-shaped: model.5.conv.weight (128, 64, 3, 3) vs model (1, 1, 3)") && Contains("unexpected: model.10.bn.bias"));
    CHECK_THROWS_WITH(a.load_weights("/tmp/y5_no_such_file.safetensors"), Contains("cannot open file"));
    const std::string junk = write_temp("junk.safetensors", "this is not a safetensors file at all");
    CHECK_THROWS_WITH(a.load_weights(junk), Contains("y5_test_junk.safetensors"));
    std::remove(path.c_str());
}

TEST_CASE("bad model yaml gets an error naming the file and row", "[model][errors]") {
    const std::string base = read_text(src("config/models/yolov5n.yaml"));
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = base;
        size_t p = s.find(from);
        REQUIRE(p != std::string::npos);
        return s.replace(p, from.size(), to);
    };
    std::string p = write_temp("unknown.yaml", with("[-1, 1, SPPF, [1024, 5]]", "[-1, 1, C2f, [1024, 5]]"));
    CHECK_THROWS_WITH(Model(p), Contains("y5_test_unknown.yaml: row 9") && Contains("module C2f: unknown module"));
    p = write_temp("from.yaml", with("[[-1, 6], 1, Concat, [1]]", "[[-1, 30], 1, Concat, [1]]"));
    CHECK_THROWS_WITH(Model(p), Contains("row 12") && Contains("'from' 30 does not name an earlier row"));
    p = write_temp("noanchors.yaml", with("anchors:", "anchorz:"));
    CHECK_THROWS_WITH(Model(p), Contains("missing key 'anchors'"));
    p = write_temp("broken.yaml", base.substr(0, base.size() / 2) + "\n  [[-1, 1, Conv, [64");
    CHECK_THROWS_WITH(Model(p), Contains("y5_test_broken.yaml: line") && Contains("malformed yaml"));
    p = write_temp("act.yaml", "activation: nn.GELU()\n" + base);
    CHECK_THROWS_WITH(Model(p), Contains("unknown activation 'nn.GELU()'"));
    CHECK_THROWS_WITH(Model("/tmp/y5_no_such.yaml"), Contains("cannot open model yaml"));
}

TEST_CASE("anchors in descending order are reversed as check_anchor_order does", "[model][init]") {
    std::string s = read_text(src("config/models/yolov5n.yaml"));
    const std::string p3 = "[10,13, 16,30, 33,23]", p5 = "[116,90, 156,198, 373,326]";
    s.replace(s.find(p3), p3.size(), "P5TMP");
    s.replace(s.find(p5), p5.size(), p3);
    s.replace(s.find("P5TMP"), 5, p5);
    Model m(write_temp("reversed.yaml", s));
    m.allocate(Device::CPU);
    Rng rng(1);
    m.init_weights(rng);
    const float* a = m.params.find("model.24.anchors")->value.ptr<float>();
    // YOLOv5 v7.0 flips the pixel anchors, then divides by the strides: P3 gets (10, 13) / 8 back.
    CHECK(a[0] == 10.0f / 8);
    CHECK(a[12] == 116.0f / 32);
}

TEST_CASE("ECA kernel size: fixed and adaptive", "[model]") {
    std::string s = read_text(src("config/models/yolov5n-eca.yaml"));
    s.replace(s.find("[-1, 1, ECA, [256]]"), 19, "[-1, 1, ECA, [256, 0]]");   // 64 channels: k = 3
    s.replace(s.find("[-1, 1, ECA, [1024]]"), 20, "[-1, 1, ECA, [1024, 0]]");  // 256 channels: k = 5
    Model m(write_temp("eca_adaptive.yaml", s));
    CHECK(m.params.find("model.5.conv.weight")->shape == Shape({1, 1, 3}));
    CHECK(m.params.find("model.11.conv.weight")->shape == Shape({1, 1, 5}));
}

TEST_CASE("activation key and Focus/SPP modules build", "[model]") {
    const std::string base = read_text(src("config/models/yolov5n.yaml"));
    std::string s = "activation: nn.ReLU6()\n" + base;
    s.replace(s.find("[-1, 1, Conv, [64, 6, 2, 2]]"), 28, "[-1, 1, Focus, [64, 3, 1]]  ");
    s.replace(s.find("[-1, 1, SPPF, [1024, 5]]"), 24, "[-1, 1, SPP, [1024, [5, 9, 13]]]");
    Model m(write_temp("focus.yaml", s), 2);
    CHECK(m.act.kind == ActKind::ReLU6);
    m.allocate(Device::CPU);
    Rng rng(3);
    m.init_weights(rng);
    TestCtx tc;
    Tensor x = rand_tensor(tc.data, {1, 3, 64, 64}, DType::F32, rng, 0, 1);
    NoGrad ng(tc.tape);
    Model::Output o = m.forward(tc.ctx, Tape::constant(x), false);
    CHECK(o.decoded.shape == Shape({1, 3 * (64 + 16 + 4), 7}));
    CHECK(m.params.find("model.0.conv.conv.weight")->shape == Shape({16, 12, 3, 3}));
    CHECK(m.params.find("model.9.cv2.conv.weight")->shape == Shape({256, 512, 1, 1}));
}

// A Concat read by a module that cannot take parts (a 3×3 Conv here) gets one built concat; the C3 rows after the
// other Concats read parts. Training forward and backward run and reach the Conv's weights.
TEST_CASE("a Concat before a module that takes no parts is concatenated", "[model][parts]") {
    std::string s = read_text(src("config/models/yolov5n.yaml"));
    s.replace(s.find("[-1, 3, C3, [512, False]],  # 13"), 32, "[-1, 1, Conv, [512, 3, 1]],     # 13");
    Model m(write_temp("concat_conv.yaml", s), 3);
    m.allocate(Device::CPU);
    Rng rng(5);
    m.init_weights(rng);
    TestCtx tc;
    Tensor x = rand_tensor(tc.data, {2, 3, 64, 64}, DType::F32, rng, 0, 1);
    Model::Output o = m.forward(tc.ctx, Tape::constant(x), true);
    std::vector<Tensor> seeds;
    for (const Var& v : o.maps) seeds.push_back(rand_tensor(tc.data, v.shape(), DType::F32, rng));
    tc.tape.backward(o.maps, seeds);
    const Param* w = m.params.find("model.13.conv.weight");
    REQUIRE(w);
    REQUIRE(w->shape == Shape({128, 256, 3, 3}));
    double sum = 0;
    for (int64_t i = 0; i < w->grad.numel(); ++i) sum += std::fabs(w->grad.ptr<float>()[i]);
    CHECK(std::isfinite(sum));
    CHECK(sum > 0);
}

// ----------------------------------------------------------------------------------------------------
// Model::fuse (YOLOv5's fuse_conv_and_bn)

// YOLOv5's init, then every BN's γ, β and running statistics drawn away from 1, 0, 0, 1 so the fold matters.
static void init_with_bn_stats(Model& m, uint64_t seed) {
    Rng rng(seed);
    m.init_weights(rng);
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        if (p.name.find(".bn.") == std::string::npos) continue;
        const bool var = p.name.find("running_var") != std::string::npos;
        const double lo = var ? 0.2 : p.kind == ParamKind::NormWeight ? 0.5 : -0.5, hi = var ? 2.0 : lo + 1.0;
        for (int64_t j = 0; j < p.value.numel(); ++j) {
            const double v = rng.uniform_double(lo, hi);
            if (p.value.dtype == DType::F64) p.value.ptr<double>()[j] = v;
            else p.value.ptr<float>()[j] = (float)v;
        }
    }
}

// Eval forward with the tape off: every row's output (host copies) and the decoded predictions last.
template <class T> static std::vector<std::vector<T>> eval_outputs(Model& m, const Tensor& x) {
    TestCtx tc;
    NoGrad ng(tc.tape);
    std::vector<Var> outs;
    Model::Output o = m.forward(tc.ctx, Tape::constant(x), false, &outs);
    std::vector<std::vector<T>> r;
    for (const Var& v : outs) r.emplace_back(v.t.ptr<T>(), v.t.ptr<T>() + v.t.numel());
    r.emplace_back(o.decoded.ptr<T>(), o.decoded.ptr<T>() + o.decoded.numel());
    return r;
}

template <class T> static double rel_err_v(const std::vector<T>& got, const std::vector<T>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num = std::max(num, std::fabs((double)got[i] - (double)want[i]));
        den = std::max(den, std::fabs((double)want[i]));
    }
    return num / std::max(den, 1e-30);
}

// Fused and unfused eval forwards differ only by reassociation: conv(x, w·s) + b against (conv(x, w) − mean)·s + β
// rounds differently, about one f32 ulp (6e-8) of each layer's magnitude, and 60 Convs in a row plus the
// Detect sigmoid/exp decode carry it on (eval BN has no batch statistics to amplify it). Measured worst tensor:
// 6.5e-7 (yolov5n) and 5.8e-7 (yolov5n-eca) in f32, 1.8e-15 in f64; the bounds leave a factor of 15 and 50.
template <class T> static void check_fused_equals_unfused(const char* yaml, int nc) {
    const bool f64 = std::is_same<T, double>::value;
    const double tol = f64 ? 1e-13 : 1e-5;
    Model m(src(yaml), nc);
    m.allocate(Device::CPU, dtype_of<T>());
    init_with_bn_stats(m, 77);
    TestCtx data;
    Rng rng(78);
    Tensor x = rand_tensor(data.data, {2, 3, 64, 96}, dtype_of<T>(), rng, 0, 1);
    const std::vector<std::vector<T>> ref = eval_outputs<T>(m, x);
    m.fuse();
    REQUIRE(m.fused());
    const std::vector<std::vector<T>> got = eval_outputs<T>(m, x);
    REQUIRE(got.size() == ref.size());
    double worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        REQUIRE(got[i].size() == ref[i].size());
        const double e = rel_err_v(got[i], ref[i]);
        worst = std::max(worst, e);
        INFO((i + 1 == ref.size() ? std::string("decoded") : "layer " + std::to_string(i)) << " rel err " << e);
        CHECK(e <= tol);
    }
    INFO(yaml << (f64 ? " f64" : " f32") << ": worst fused vs unfused rel err " << worst);
    // The fused path really ran: bits differ somewhere (a silent fallback would give equal outputs).
    CHECK(worst > 0);
}

TEST_CASE("fused inference equals the unfused eval forward", "[model][fuse]") {
    SECTION("yolov5n f32") { check_fused_equals_unfused<float>("config/models/yolov5n.yaml", 80); }
    SECTION("yolov5n f64") { check_fused_equals_unfused<double>("config/models/yolov5n.yaml", 80); }
    SECTION("yolov5n-eca f32") { check_fused_equals_unfused<float>("config/models/yolov5n-eca.yaml", 1); }
    SECTION("yolov5n-eca f64") { check_fused_equals_unfused<double>("config/models/yolov5n-eca.yaml", 1); }
}

TEST_CASE("fuse folds as fuse_conv_and_bn, refolds on new weights, refuses training", "[model][fuse]") {
    Model m(src("config/models/yolov5n.yaml"), 3);
    m.allocate(Device::CPU);
    init_with_bn_stats(m, 5);
    m.fuse();
    // The fold in f32 with PyTorch's order of operations, bit for bit; every BN'd Conv has one, Detect's none.
    const Param &w = *m.params.find("model.0.conv.weight"), &g = *m.params.find("model.0.bn.weight"),
                &b = *m.params.find("model.0.bn.bias"), &mu = *m.params.find("model.0.bn.running_mean"),
                &var = *m.params.find("model.0.bn.running_var");
    const ParamStore::Fold* f = m.params.fold((int)(&w - &m.params[0]));
    REQUIRE(f);
    CHECK(f->w.shape == w.shape);
    CHECK(f->b.shape == Shape({w.shape[0]}));
    const int64_t per = w.shape.numel() / w.shape[0];
    int wrong = 0;
    for (int64_t k = 0; k < w.shape[0]; ++k) {
        const float gk = g.value.ptr<float>()[k], sd = std::sqrt(var.value.ptr<float>()[k] + kBnEps), scale = gk / sd;
        for (int64_t j = 0; j < per; ++j)
            wrong += f->w.ptr<float>()[k * per + j] != scale * w.value.ptr<float>()[k * per + j];
        wrong += f->b.ptr<float>()[k] != b.value.ptr<float>()[k] - gk * mu.value.ptr<float>()[k] / sd;
    }
    CHECK(wrong == 0);
    int folds = 0;
    for (int i = 0; i < m.params.size(); ++i) folds += m.params.fold(i) != nullptr;
    CHECK(folds == 57);  // yolov5n's Conv modules, C3/SPPF ones included
    CHECK(m.params.fold((int)(m.params.find("model.24.m.0.weight") - &m.params[0])) == nullptr);

    TestCtx tc;
    Rng rng(6);
    Tensor x = rand_tensor(tc.data, {1, 3, 64, 64}, DType::F32, rng, 0, 1);
    // A training forward of a fused model is refused; after unfuse() it runs.
    CHECK_THROWS_WITH(m.forward(tc.ctx, Tape::constant(x), true), Contains("fused for inference"));
    // Eval with the tape recording takes the conv → BN path (gradients reach the real parameters): the unfused bits.
    Model u(src("config/models/yolov5n.yaml"), 3);
    u.allocate(Device::CPU);
    init_with_bn_stats(u, 5);
    Model::Output ru = u.forward(tc.ctx, Tape::constant(x), false), rf = m.forward(tc.ctx, Tape::constant(x), false);
    CHECK(std::memcmp(ru.decoded.data, rf.decoded.data, ru.decoded.bytes()) == 0);

    // New weights (load_weights) are folded again: the fused model follows the file, not the old snapshot.
    const std::string path = "/tmp/y5_test_fuse.safetensors";
    u.save_weights(path, {});
    Model v(src("config/models/yolov5n.yaml"), 3);
    v.allocate(Device::CPU);
    init_with_bn_stats(v, 9);
    v.fuse();
    v.load_weights(path);
    REQUIRE(v.fused());
    const std::vector<std::vector<float>> a = eval_outputs<float>(u, x), bv = eval_outputs<float>(v, x);
    CHECK(rel_err_v(bv.back(), a.back()) <= 1e-5);
    std::remove(path.c_str());

    m.unfuse();
    CHECK(!m.fused());
    CHECK_NOTHROW(m.forward(tc.ctx, Tape::constant(x), true));
}

// ----------------------------------------------------------------------------------------------------
// Blocked CPU inference (Model::blocked_inference: oneDNN's channel-blocked layout between the layers)

// The blocked forward against the plain fused one (y5's own SiLU after each convolution, every tensor NCHW), same
// model and input: maps and decoded predictions. They differ by oneDNN's swish post-op (its own exp, ≤ 2e-7
// relative per value); measured worst tensor 3.5e-7 (yolov5n; before the shortcut's addend was kept apart from
// the output, which the convolution uses for partial sums, 3.4e-3), bound 2e-5. Batch 1 runs on oneDNN's OpenMP
// team of all the threads, batch 3 images over y5's threads.
static double blocked_vs_plain(Model& m, int n, int h, int w, uint64_t seed) {
    TestCtx tc;
    NoGrad ng(tc.tape);
    Rng rng(seed);
    Tensor x = rand_tensor(tc.data, {n, 3, h, w}, DType::F32, rng, 0, 1);
    m.blocked_inference = false;
    REQUIRE(!m.runs_blocked(Tape::constant(x)));
    Model::Output p = m.forward(tc.ctx, Tape::constant(x), false);
    std::vector<std::vector<float>> want;
    for (const Var& v : p.maps) want.emplace_back(v.t.ptr<float>(), v.t.ptr<float>() + v.t.numel());
    want.emplace_back(p.decoded.ptr<float>(), p.decoded.ptr<float>() + p.decoded.numel());
    m.blocked_inference = true;
    REQUIRE(m.runs_blocked(Tape::constant(x)));
    double worst = 0;
    std::vector<float> blocked_dec;
    for (int rep = 0; rep < 2; ++rep) {  // the second run reuses the runs' arenas and the reordered weights
        Model::Output b = m.forward(tc.ctx, Tape::constant(x), false);
        REQUIRE(b.maps.size() + 1 == want.size());
        for (size_t i = 0; i < want.size(); ++i) {
            const Tensor& t = i < b.maps.size() ? b.maps[i].t : b.decoded;
            REQUIRE(t.shape == (i < b.maps.size() ? p.maps[i].t.shape : p.decoded.shape));
            const double e = rel_err_v(std::vector<float>(t.ptr<float>(), t.ptr<float>() + t.numel()), want[i]);
            INFO((i < b.maps.size() ? "map " + std::to_string(i) : std::string("decoded")) << " rel err " << e);
            CHECK(e <= 2e-5);
            worst = std::max(worst, e);
        }
        blocked_dec.assign(b.decoded.ptr<float>(), b.decoded.ptr<float>() + b.decoded.numel());
    }
    // Without maps (y5detect): no maps, the same decoded bits (decoded from a grid row's buffer instead).
    m.inference_maps = false;
    Model::Output nm = m.forward(tc.ctx, Tape::constant(x), false);
    m.inference_maps = true;
    CHECK(nm.maps.empty());
    REQUIRE(nm.decoded.shape == p.decoded.shape);
    CHECK(std::memcmp(nm.decoded.ptr<float>(), blocked_dec.data(), blocked_dec.size() * sizeof(float)) == 0);
    return worst;
}

TEST_CASE("blocked CPU inference matches the plain fused forward", "[model][fuse][dnnl]") {
    if (dnnl_block() == 0) {
        WARN("no oneDNN blocked layout on this CPU (or Y5_CONV=ref): the blocked path cannot run here");
        return;
    }
    SECTION("yolov5n: Bottlenecks with and without shortcut, SPPF, Upsample, Concat") {
        Model m(src("config/models/yolov5n.yaml"), 80);
        m.allocate(Device::CPU);
        init_with_bn_stats(m, 31);
        m.fuse();
        double worst = 0;
        for (int n : {1, 3}) worst = std::max(worst, blocked_vs_plain(m, n, 64, 96, 40 + n));
        INFO("worst " << worst);
        CHECK(worst > 0);  // the blocked path really ran: the swish post-op's bits differ somewhere
        // New weights fold again and the reordered weights follow them.
        m.fuse();
        CHECK(blocked_vs_plain(m, 1, 64, 64, 50) <= 2e-5);
    }
    SECTION("SPP and LeakyReLU") {
        std::string s = "activation: nn.LeakyReLU(0.1)\n" + read_text(src("config/models/yolov5n.yaml"));
        s.replace(s.find("[-1, 1, SPPF, [1024, 5]]"), 24, "[-1, 1, SPP, [1024, [5, 9, 13]]]");
        Model m(write_temp("spp_leaky.yaml", s), 2);
        m.allocate(Device::CPU);
        init_with_bn_stats(m, 32);
        m.fuse();
        blocked_vs_plain(m, 1, 96, 64, 60);
    }
    SECTION("not taken: unfused, ECA, Focus") {
        TestCtx tc;
        Rng rng(7);
        const Var x = Tape::constant(rand_tensor(tc.data, {1, 3, 64, 64}, DType::F32, rng, 0, 1));
        Model u(src("config/models/yolov5n.yaml"), 80);
        u.allocate(Device::CPU);
        init_with_bn_stats(u, 33);
        CHECK(!u.runs_blocked(x));
        CHECK(u.blocks_when_fused());  // y5train's validation folds it (ValFold)
        Model e(src("config/models/yolov5n-eca.yaml"), 1);
        e.allocate(Device::CPU);
        init_with_bn_stats(e, 34);
        CHECK(!e.blocks_when_fused());  // validated unfused, as train.py
        e.fuse();
        CHECK(!e.runs_blocked(x));
        std::string s = read_text(src("config/models/yolov5n.yaml"));
        s.replace(s.find("[-1, 1, Conv, [64, 6, 2, 2]]"), 28, "[-1, 1, Focus, [64, 3, 1]]  ");
        Model f(write_temp("focus_blocked.yaml", s), 2);
        f.allocate(Device::CPU);
        init_with_bn_stats(f, 35);
        f.fuse();
        CHECK(!f.runs_blocked(x));
        // Autocast (y5val --half on the CPU) keeps the plain path's f16 activations: f16 maps.
        Model a(src("config/models/yolov5n.yaml"), 80);
        a.allocate(Device::CPU);
        init_with_bn_stats(a, 36);
        a.fuse();
        REQUIRE(a.runs_blocked(x));
        TestCtx ac;
        ac.ctx.autocast = true;
        NoGrad ng(ac.tape);
        CHECK(a.forward(ac.ctx, x, false).maps[0].t.dtype == DType::F16);
    }
}
