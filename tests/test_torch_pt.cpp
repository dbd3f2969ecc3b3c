/*
 * YOLOv5 .pt checkpoints: the official yolov5n.pt and a train.py-style last.pt load with the weights torch
 * reads (per-tensor sums from tools/golden/make_pt_fixtures.py); the unpickler rebuilds tensors with their
 * strides and dtypes; hostile, truncated and foreign files fail with one line naming the file and the reason.
 */
#include <zip.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/core/safetensors.h"
#include "engine/core/torch_pt.h"
#include "kernels/check.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

static std::string src(const std::string& rel) { return std::string(Y5_SOURCE_DIR) + "/" + rel; }
static const std::string kYolov5n = std::string(Y5_SOURCE_DIR) + "/../shared/weights/yolov5n.pt";

// ----------------------------------------------------------------------------------------------------
// Pickle and zip writers for hand-made files

namespace {

std::string le32(uint32_t v) { return std::string{(char)v, (char)(v >> 8), (char)(v >> 16), (char)(v >> 24)}; }
std::string str(const std::string& s) { return "X" + le32((uint32_t)s.size()) + s; }  // BINUNICODE
std::string global(const std::string& mod, const std::string& name) { return "c" + mod + "\n" + name + "\n"; }
std::string int1(int v) { return "K" + std::string(1, (char)v); }                      // BININT1
std::string long8(int64_t v) {                                                           // LONG1 of 8 bytes
    std::string s = "\x8a\x08";
    for (int i = 0; i < 8; ++i) s += (char)(v >> (8 * i));
    return s;
}
const std::string kProto = "\x80\x02", kStop = ".";

// _rebuild_tensor_v2(('storage', <dtype>Storage, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
std::string tensor(const std::string& storage, const std::string& key, int numel, int offset,
                   std::vector<int64_t> size, std::vector<int64_t> stride) {
    std::string p = global("torch._utils", "_rebuild_tensor_v2") + "(";
    p += "(" + str("storage") + global("torch", storage) + str(key) + str("cpu") + int1(numel) + "tQ";
    p += int1(offset) + "(";
    for (int64_t s : size) p += long8(s);
    p += "t(";
    for (int64_t s : stride) p += long8(s);
    p += "t\x89" + global("collections", "OrderedDict") + ")R" + "tR";
    return p;
}

void write_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries) {
    int err = 0;
    zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    REQUIRE(z);
    for (const auto& e : entries) {
        zip_source_t* s = zip_source_buffer(z, e.second.data(), e.second.size(), 0);
        REQUIRE(s);
        REQUIRE(zip_file_add(z, e.first.c_str(), s, ZIP_FL_OVERWRITE) >= 0);
    }
    REQUIRE(zip_close(z) == 0);
}

std::string bytes_of(const std::vector<float>& v) { return std::string((const char*)v.data(), v.size() * 4); }

// The error y5 throws for a file, checked to be one line naming the file.
std::string error_of(const std::function<void()>& f, const std::string& file) {
    try {
        f();
    } catch (const Error& e) {
        const std::string m = e.what();
        CHECK(m.find('\n') == std::string::npos);
        CHECK_THAT(m, Contains(file));
        return m;
    }
    FAIL("no y5::Error for " << file);
    return "";
}

// [sum, sum of squares] of a parameter in f64, as the fixture script computes them.
std::pair<double, double> sums(const Model& m, const std::string& name) {
    const Param* p = m.params.find(name);
    REQUIRE(p);
    const float* v = (const float*)p->value.data;
    double s = 0, q = 0;
    for (int64_t i = 0; i < p->value.numel(); ++i) s += v[i], q += (double)v[i] * v[i];
    return {s, q};
}

// Every fixture tensor "<prefix>.<name>" equals the model's; returns how many were compared.
int check_sums(const Model& m, const SafeTensorsFile& f, const std::string& prefix) {
    int n = 0;
    for (const std::string& k : f.names()) {
        if (k.rfind(prefix + ".model.", 0) != 0) continue;
        const std::string name = k.substr(prefix.size() + 1);
        const std::vector<double> want = f.read_f64(k);
        const auto got = sums(m, name);
        // f16 values are exact in f32 and f64; only the order of the f64 additions differs.
        const double tol = 1e-12 * (1 + std::sqrt(m.params.find(name)->value.numel() * want[1]));
        INFO(name << ": sum " << got.first << " vs " << want[0] << ", squares " << got.second << " vs " << want[1]);
        CHECK(std::fabs(got.first - want[0]) <= tol);
        CHECK(std::fabs(got.second - want[1]) <= 1e-12 * want[1] + 1e-300);
        ++n;
    }
    return n;
}

std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> v;
    std::stringstream ss(s);
    for (std::string l; std::getline(ss, l, '\n');) v.push_back(l);
    return v;
}

}  // namespace

// ----------------------------------------------------------------------------------------------------

TEST_CASE("the official yolov5n.pt loads with the weights torch reads", "[pt]") {
    if (!fs::exists(kYolov5n)) {
        WARN("../shared/weights/yolov5n.pt is absent (a user's clone): skipping the official checkpoint");
        return;
    }
    auto model = Model::from_weights(kYolov5n);
    SafeTensorsFile f(src("tests/fixtures/pt_sums.safetensors"));
    // Every tensor of the checkpoint's state_dict (less num_batches_tracked) is a y5 parameter, and no other.
    CHECK(check_sums(*model, f, "yolov5n") == model->params.size());
    CHECK(model->params.size() == 292);  // 349 state_dict entries less 57 BatchNorms' num_batches_tracked
    CHECK(model->num_parameters() == 1872157);
    CHECK(model->name == "YOLOv5n");
    CHECK(model->nc == std::stoi(f.metadata().at("yolov5n_nc")));
    CHECK(model->class_names == lines(f.metadata().at("yolov5n_names")));
    CHECK(model->class_names.at(0) == "person");
    const std::vector<float> stride = f.read_f32("yolov5n.stride");
    CHECK(model->detect->stride == stride);
    // The anchors buffer (grid units) and the yaml's anchors (pixels) agree.
    const Param* a = model->params.find("model.24.anchors");
    REQUIRE(a);
    for (int i = 0; i < 18; ++i)
        CHECK(((const float*)a->value.data)[i] * stride[i / 6] == model->detect->anchors_px[i]);
}

TEST_CASE("a train.py last.pt loads its EMA weights, names and AutoAnchor anchors", "[pt]") {
    auto model = Model::from_weights(src("tests/fixtures/pt_last_tiny.pt"));
    SafeTensorsFile f(src("tests/fixtures/pt_sums.safetensors"));
    CHECK(check_sums(*model, f, "last") == model->params.size());
    // The live model's weights are not what was loaded.
    const std::vector<double> live = f.read_f64("last_model.model.0.conv.weight");
    CHECK(std::fabs(sums(*model, "model.0.conv.weight").second - live[1]) > 1e-6 * live[1]);
    CHECK(model->nc == 2);
    CHECK(model->class_names == std::vector<std::string>{"cat", "dog"});  // names {0: 'cat', 1: 'dog'}
    // The yaml said `anchors: 3`: the anchors are the buffer's, in pixels (the script's AutoAnchor values).
    const std::vector<float> px = {12, 15, 20, 33, 35, 26, 31, 60, 64, 46, 58, 121, 118, 92, 160, 196, 370, 330.5};
    CHECK(model->detect->anchors_px == px);
    CHECK(model->yaml_text.find("width_multiple: 0.0625") != std::string::npos);
    // The model runs: an eval forward gives (1, Σ na·ny·nx, 5 + nc) predictions.
    y5test::TestCtx t;
    NoGrad ng(t.tape);
    Rng rng(3);
    Tensor x = y5test::rand_tensor(t.data, {1, 3, 64, 64}, DType::F32, rng, 0, 1);
    Model::Output out = model->forward(t.ctx, Tape::constant(x), false);
    REQUIRE(out.decoded.shape == Shape({1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 7}));
    for (int64_t i = 0; i < out.decoded.numel(); ++i) REQUIRE(std::isfinite(out.decoded.ptr<float>()[i]));
}

TEST_CASE("the unpickler rebuilds tensors with their strides and dtypes", "[pt]") {
    const std::string path = "/tmp/y5_test_pt_tensors.pt";
    // {'a': 2x2 f32 transposed (stride (1, 2)), 'b': 3 f16 from offset 1, 'c': [1, -2, 2.5, 'x', None, True]}
    const std::string pkl = kProto + "}(" + str("a") + tensor("FloatStorage", "0", 4, 0, {2, 2}, {1, 2}) +
                            str("b") + tensor("HalfStorage", "1", 4, 1, {3}, {1}) + str("c") + "](" + int1(1) +
                            "J" + le32((uint32_t)-2) + std::string("G\x40\x04\0\0\0\0\0\0", 9) + str("x") + "N\x88" +
                            "e" + "u" + kStop;
    const uint16_t h[4] = {0x3c00, 0xc000, 0x3800, 0x7bff};  // 1, -2, 0.5, 65504
    write_zip(path, {{"archive/data.pkl", pkl},
                     {"archive/data/0", bytes_of({1, 2, 3, 4})},
                     {"archive/data/1", std::string((const char*)h, 8)},
                     {"archive/byteorder", "little"}});
    TorchPtFile f(path);
    const PyObj& r = f.root();
    REQUIRE(r.is(PyObj::Dict));
    CHECK(f.read_f32(*r.get("a")) == std::vector<float>{1, 3, 2, 4});  // row-major walk of the transposed view
    CHECK(f.read_f64(*r.get("b")) == std::vector<double>{-2, 0.5, 65504});
    const PyObj& c = *r.get("c");
    REQUIRE(c.is(PyObj::List));
    REQUIRE(c.items.size() == 6);
    CHECK(c.items[0]->i == 1);
    CHECK(c.items[1]->i == -2);
    CHECK(c.items[2]->f == 2.5);
    CHECK(c.items[3]->s == "x");
    CHECK(c.items[4]->is(PyObj::None));
    CHECK((c.items[5]->is(PyObj::Bool) && c.items[5]->i == 1));

    // A storage entry missing from the zip, and a view past its storage.
    write_zip(path, {{"archive/data.pkl", kProto + tensor("FloatStorage", "0", 4, 0, {2}, {1}) + kStop}});
    CHECK_THAT(error_of([&] { TorchPtFile g(path); g.read_f32(g.root()); }, path), Contains("no entry archive/data/0"));
    write_zip(path, {{"archive/data.pkl", kProto + tensor("FloatStorage", "0", 4, 2, {3}, {1}) + kStop},
                     {"archive/data/0", bytes_of({1, 2, 3, 4})}});
    CHECK_THAT(error_of([&] { TorchPtFile g(path); }, path), Contains("tensor reaches past its storage 0"));
    // Sizes and strides whose products overflow 64 bits do not wrap around into the storage.
    const int64_t big = int64_t(1) << 62;
    write_zip(path, {{"archive/data.pkl", kProto + tensor("FloatStorage", "0", 4, 0, {big + 1, 4}, {big, 1}) + kStop},
                     {"archive/data/0", bytes_of({1, 2, 3, 4})}});
    CHECK_THAT(error_of([&] { TorchPtFile g(path); }, path), Contains("tensor reaches past its storage 0"));
    write_zip(path, {{"archive/data.pkl", kProto + tensor("FloatStorage", "0", 4, 0, {big, 4}, {0, 0}) + kStop},
                     {"archive/data/0", bytes_of({1, 2, 3, 4})}});
    CHECK_THAT(error_of([&] { TorchPtFile g(path); }, path), Contains("tensor reaches past its storage 0"));
    std::remove(path.c_str());
}

TEST_CASE("hostile, truncated and foreign .pt files fail with one line naming the file", "[pt]") {
    const std::string path = "/tmp/y5_test_hostile.pt";
    auto load = [&] { Model::from_weights(path); };

    // os.system('ls') as a pickle: the global is refused before anything else happens.
    write_zip(path, {{"archive/data.pkl", kProto + global("os", "system") + "(" + str("ls") + "tR" + kStop}});
    CHECK_THAT(error_of(load, path), Contains(path + ": pickle global os.system is not allowed"));
    write_zip(path, {{"archive/data.pkl", kProto + global("builtins", "eval") + kStop}});
    CHECK_THAT(error_of(load, path), Contains("pickle global builtins.eval is not allowed"));

    // A pickle of a plain list, and a dict whose model is not a YOLOv5 DetectionModel.
    write_zip(path, {{"archive/data.pkl", kProto + "](" + int1(1) + int1(2) + "e" + kStop}});
    CHECK_THAT(error_of(load, path), Contains("not a YOLOv5 checkpoint: the pickle holds a list"));
    write_zip(path, {{"archive/data.pkl", kProto + "}" + str("model") + global("torch.nn.modules.conv", "Conv2d") +
                                              ")\x81" + "s" + kStop}});
    CHECK_THAT(error_of(load, path), Contains("'model' is an object torch.nn.modules.conv.Conv2d, not a YOLOv5 "
                                              "detection model"));

    // A reference cycle through two lists (A = [B], B = [A], through the memo), and a chain nested 5000 deep whose
    // lists were each empty when put into the one before (so no single insertion sees the depth): refused at STOP
    // as cycle and depth, not freed recursively or leaked (the sanitizer suite runs this too).
    write_zip(path, {{"archive/data.pkl", kProto + std::string("]q\0" "]q\x01" "h\0" "aa", 10) + kStop}});
    CHECK_THAT(error_of(load, path), Contains("a list contains itself through other containers (a reference cycle)"));
    {
        std::string chain = kProto + "]r" + le32(0);
        for (uint32_t i = 1; i <= 5000; ++i) chain += "]r" + le32(i) + "a0j" + le32(i);
        write_zip(path, {{"archive/data.pkl", chain + "0j" + le32(0) + kStop}});
        CHECK_THAT(error_of(load, path), Contains("the pickle nests deeper than 1000 levels"));
        chain = kProto + "]r" + le32(0);  // the same 900 deep is a plain (if odd) pickle: no error about nesting
        for (uint32_t i = 1; i <= 900; ++i) chain += "]r" + le32(i) + "a0j" + le32(i);
        write_zip(path, {{"archive/data.pkl", chain + "0j" + le32(0) + kStop}});
        CHECK_THAT(error_of(load, path), Contains("not a YOLOv5 checkpoint: the pickle holds a list"));
    }

    // An opcode outside protocol 2's binary set (protocol 0's INT), and a pickle cut short.
    write_zip(path, {{"archive/data.pkl", kProto + "I1\n" + kStop}});
    CHECK_THAT(error_of(load, path), Contains("unsupported pickle opcode 0x49 (data.pkl byte 2)"));
    write_zip(path, {{"archive/data.pkl", kProto + "](" + int1(1)}});
    CHECK_THAT(error_of(load, path), Contains("the pickle ends before STOP"));

    // A zip without data.pkl; a file that is not a zip; the checkpoints cut in half.
    write_zip(path, {{"archive/other", "x"}});
    CHECK_THAT(error_of(load, path), Contains("a zip without <archive>/data.pkl"));
    std::ofstream(path, std::ios::binary) << "not a zip at all";
    CHECK_THAT(error_of(load, path), Contains("not a readable PyTorch zip checkpoint"));
    // A damaged byte inside data.pkl (torch stores entries uncompressed): the zip's CRC catches it.
    {
        std::ifstream in(src("tests/fixtures/pt_last_tiny.pt"), std::ios::binary);
        std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const size_t at = all.find("\x80\x02}");
        REQUIRE(at != std::string::npos);
        all[at + 100] ^= 0x20;
        std::ofstream(path, std::ios::binary) << all;
        CHECK_THAT(error_of(load, path), Contains("cannot read pt_last_tiny/data.pkl") && Contains("CRC"));
    }
    for (const std::string& whole : {src("tests/fixtures/pt_last_tiny.pt"), kYolov5n}) {
        if (!fs::exists(whole)) continue;
        std::ifstream in(whole, std::ios::binary);
        const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::ofstream(path, std::ios::binary) << all.substr(0, all.size() / 2);
        CHECK_THAT(error_of(load, path), Contains("not a readable PyTorch zip checkpoint"));
    }
    std::remove(path.c_str());
}
