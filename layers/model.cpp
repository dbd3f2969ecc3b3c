/*
 * Model: yaml → modules (YOLOv5's parse_model), shape dry run, init, forward, summary, weights I/O.
 * Every error about the yaml names the file, the row and its line.
 */
#include "layers/model.h"

#include <yaml-cpp/yaml.h>

#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "engine/device/device.h"
#include "engine/core/safetensors.h"
#include "engine/core/torch_pt.h"
#include "engine/ops/op.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// yaml helpers

namespace {

struct RowCtx {
    const std::string& file;
    int row, line;
    std::string module;
    [[noreturn]] void fail(const std::string& msg) const {
        Y5_FAIL("%s: row %d (line %d), module %s: %s", file.c_str(), row, line, module.c_str(), msg.c_str());
    }
};

int make_divisible(double x, int divisor) { return (int)std::ceil(x / divisor) * divisor; }

bool is_int(const YAML::Node& n) {
    if (!n.IsScalar()) return false;
    const std::string& s = n.Scalar();
    if (s.empty()) return false;
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (i == s.size() || s.size() - i > 9) return false;  // more digits than an int holds: not an integer here
    for (; i < s.size(); ++i)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

// Python's repr of a yaml argument after YOLOv5's eval (nc and anchors substituted).
std::string py_repr(const YAML::Node& n, int nc, const std::string& anchors_repr) {
    if (n.IsSequence()) {
        std::string s = "[";
        for (size_t i = 0; i < n.size(); ++i) s += (i ? ", " : "") + py_repr(n[i], nc, anchors_repr);
        return s + "]";
    }
    if (!n.IsScalar()) return "None";
    const std::string& v = n.Scalar();
    if (v == "nc") return std::to_string(nc);
    if (v == "anchors") return anchors_repr;
    if (v == "None" || v == "True" || v == "False" || is_int(n)) return v;
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (end && *end == '\0' && !v.empty()) {
        std::ostringstream o;
        o << d;
        std::string s = o.str();
        return s.find_first_of(".e") == std::string::npos ? s + ".0" : s;
    }
    return "'" + v + "'";
}

int arg_int(const RowCtx& rc, const YAML::Node& args, size_t i, int dflt, const char* what) {
    if (i >= args.size() || (args[i].IsScalar() && args[i].Scalar() == "None")) return dflt;
    if (!is_int(args[i])) rc.fail(std::string("argument ") + std::to_string(i) + " (" + what + ") must be an integer");
    return args[i].as<int>();
}

bool arg_bool(const RowCtx& rc, const YAML::Node& args, size_t i, bool dflt, const char* what) {
    if (i >= args.size()) return dflt;
    const std::string v = args[i].IsScalar() ? args[i].Scalar() : "";
    if (v == "True" || v == "true") return true;
    if (v == "False" || v == "false") return false;
    rc.fail(std::string("argument ") + std::to_string(i) + " (" + what + ") must be True or False");
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// Building

static std::string read_text_file(const std::string& path) {
    std::ifstream in(path);
    Y5_CHECK(in, "%s: cannot open model yaml", path.c_str());
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

Model::Model(const std::string& path, int nc_override) : Model(path, read_text_file(path), nc_override) {}

Tensor Model::loss_anchors(std::vector<float>* keep) const {
    const Tensor& a = params[detect->anchors].value;
    if (a.device == Device::CPU) return a;
    keep->resize((size_t)a.numel());
    copy_device_to_host(keep->data(), a.data, a.bytes(), params.cuda());
    return Tensor(keep->data(), a.shape, a.dtype, Device::CPU);
}

static bool is_torch_pt(const std::string& path) {
    const std::string ext = path.substr(path.find_last_of('.') + 1);
    return path.find('.') != std::string::npos && (ext == "pt" || ext == "pth");
}

std::unique_ptr<Model> Model::from_weights(const std::string& weights, CudaContext* cuda) {
    if (is_torch_pt(weights)) return from_torch_pt(weights, cuda);
    SafeTensorsFile f(weights);
    const auto& m = f.metadata();
    Y5_CHECK(m.count("yaml") && m.count("nc"), "%s: no model yaml in its metadata (not a y5 weights file); pass --cfg",
             weights.c_str());
    const std::string name = m.count("yaml_name") ? m.at("yaml_name") : "model.yaml";
    auto model = std::unique_ptr<Model>(new Model(name, m.at("yaml"), std::stoi(m.at("nc"))));
    model->allocate(cuda ? Device::CUDA : Device::CPU, DType::F32, cuda);
    model->load_weights(weights, cuda);
    if (m.count("names")) {  // one per line, as y5train writes them
        std::stringstream ss(m.at("names"));
        for (std::string item; std::getline(ss, item, '\n');) model->class_names.push_back(item);
    }
    return model;
}

std::string Model::override_anchors(const std::string& path, const std::string& text, int na) {
    Y5_CHECK(na >= 1, "%s: anchors=%d: at least one anchor per level", path.c_str(), na);
    YAML::Node y;
    try {
        y = YAML::Load(text);
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: line %d: malformed yaml: %s", path.c_str(), e.mark.line + 1, e.msg.c_str());
    }
    Y5_CHECK(y.IsMap() && y["anchors"] && y["anchors"].IsSequence() && y["anchors"].size() > 0,
             "%s: no anchors list to override (anchors=%d)", path.c_str(), na);
    const size_t nl = y["anchors"].size();
    std::string lvl = "[";
    for (int j = 0; j < 2 * na; ++j) lvl += (j ? ", " : "") + std::to_string(j);
    lvl += "]";
    std::string repl = "anchors: [";
    for (size_t l = 0; l < nl; ++l) repl += (l ? ", " : "") + lvl;
    repl += "]  # hyp anchors=" + std::to_string(na) + ": placeholders, fitted by AutoAnchor\n";
    // The top-level `anchors:` line and its continuation (indented, list or comment lines) are replaced.
    std::istringstream in(text);
    std::string out, line;
    bool in_anchors = false, done = false;
    while (std::getline(in, line)) {
        if (!done && line.rfind("anchors:", 0) == 0) {
            out += repl;
            in_anchors = done = true;
            continue;
        }
        if (in_anchors && (line.empty() || line[0] == ' ' || line[0] == '\t' || line[0] == '-' || line[0] == '#')) continue;
        in_anchors = false;
        out += line + "\n";
    }
    Y5_CHECK(done, "%s: the anchors entry is not a top-level 'anchors:' line", path.c_str());
    return out;
}

Model::Model(const std::string& path, const std::string& text, int nc_override) : yaml_path(path), yaml_text(text) {
    YAML::Node y;
    try {
        y = YAML::Load(yaml_text);
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: line %d: malformed yaml: %s", path.c_str(), e.mark.line + 1, e.msg.c_str());
    }
    Y5_CHECK(y.IsMap(), "%s: not a model yaml (expected keys nc, depth_multiple, width_multiple, anchors, backbone, head)",
             path.c_str());
    for (const char* key : {"nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"})
        Y5_CHECK(y[key], "%s: missing key '%s'", path.c_str(), key);

    std::string stem = path.substr(path.find_last_of('/') + 1);
    stem = stem.substr(0, stem.find_last_of('.'));
    name = stem;
    if (name.rfind("yolov5", 0) == 0) name = "YOLOv5" + name.substr(6);

    double gd = 0, gw = 0;
    try {
        nc = y["nc"].as<int>();
        gd = y["depth_multiple"].as<double>();
        gw = y["width_multiple"].as<double>();
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: line %d: nc, depth_multiple and width_multiple must be numbers", path.c_str(), e.mark.line + 1);
    }
    if (nc_override > 0) nc = nc_override;
    Y5_CHECK(nc >= 1 && nc <= 100000, "%s: nc must be from 1 to 100000, got %d", path.c_str(), nc);
    // 0 would divide by zero or build empty layers, huge values overflow the channel counts
    Y5_CHECK(std::isfinite(gd) && gd > 0 && gd <= 100, "%s: depth_multiple %g must be above 0 and at most 100",
             path.c_str(), gd);
    Y5_CHECK(std::isfinite(gw) && gw > 0 && gw <= 100, "%s: width_multiple %g must be above 0 and at most 100",
             path.c_str(), gw);
    if (y["activation"]) act = parse_act(y["activation"].as<std::string>());

    std::vector<std::vector<float>> anchors;
    const YAML::Node an = y["anchors"];
    Y5_CHECK(an.IsSequence() && an.size() > 0, "%s: line %d: anchors must be a list of per-level lists (an integer "
             "anchor count needs AutoAnchor, which y5 does not do at build time)", path.c_str(), an.Mark().line + 1);
    for (const auto& lvl : an) {
        Y5_CHECK(lvl.IsSequence() && lvl.size() >= 2 && lvl.size() % 2 == 0, "%s: line %d: each anchor level needs "
                 "w,h pairs", path.c_str(), lvl.Mark().line + 1);
        std::vector<float> v;
        for (const auto& a : lvl) {
            float x = 0;
            try {
                x = a.as<float>();
            } catch (const YAML::Exception&) {
                Y5_FAIL("%s: line %d: anchor '%s' is not a number", path.c_str(), a.Mark().line + 1, a.Scalar().c_str());
            }
            // 0 is allowed: YOLOv5's placeholders for a hyp `anchors: N` ([0, 1, 2, ...], fitted by AutoAnchor).
            Y5_CHECK(std::isfinite(x) && x >= 0 && x <= 65536, "%s: line %d: anchor %g must be from 0 to 65536",
                     path.c_str(), a.Mark().line + 1, x);
            v.push_back(x);
        }
        Y5_CHECK(v.size() == an[0].size(), "%s: line %d: every anchor level needs the same number of anchors",
                 path.c_str(), lvl.Mark().line + 1);
        anchors.push_back(v);
    }
    std::string anchors_repr = "[";
    for (size_t i = 0; i < anchors.size(); ++i) {
        anchors_repr += i ? ", [" : "[";
        for (size_t j = 0; j < anchors[i].size(); ++j) anchors_repr += (j ? ", " : "") + py_repr(an[i][j], nc, "");
        anchors_repr += "]";
    }
    anchors_repr += "]";
    const int na = (int)anchors[0].size() / 2, no = na * (nc + 5);

    std::vector<YAML::Node> rows;
    for (const char* part : {"backbone", "head"}) {
        Y5_CHECK(y[part].IsSequence(), "%s: '%s' must be a list of [from, number, module, args] rows", path.c_str(), part);
        for (const auto& r : y[part]) rows.push_back(r);
    }

    std::vector<int> ch;  // output channels per row
    std::vector<std::vector<int>> from_abs(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
        const YAML::Node& r = rows[i];
        RowCtx rc{path, (int)i, r.Mark().line + 1, "?"};
        if (!r.IsSequence() || r.size() != 4) rc.fail("a row must be [from, number, module, args]");
        rc.module = r[2].IsScalar() ? r[2].Scalar() : "?";
        const std::string& mod = rc.module;
        // from: an int or a list; −1 is the previous row (the image for row 0), other negatives count back.
        std::vector<int> from;
        const bool from_list = r[0].IsSequence();
        if (from_list) {
            for (const auto& f : r[0]) {
                if (!is_int(f)) rc.fail("'from' entries must be integers");
                from.push_back(f.as<int>());
            }
        } else {
            if (!is_int(r[0])) rc.fail("'from' must be an integer or a list of integers");
            from.push_back(r[0].as<int>());
        }
        for (int f : from) {
            int a = f < 0 ? (int)i + f : f;
            if (a < -1 || a >= (int)i || (f < -1 && a < 0)) rc.fail("'from' " + std::to_string(f) + " does not name an earlier row");
            if (f == -1 && i == 0) a = -1;
            from_abs[i].push_back(a);
        }
        if (!is_int(r[1]) || r[1].as<int>() < 1 || r[1].as<int>() > 1000) rc.fail("'number' must be an integer from 1 to 1000");
        int n = r[1].as<int>();
        if (n > 1 && n * gd > 1000) rc.fail("'number' times depth_multiple exceeds 1000 repeats");
        if (n > 1) n = std::max((int)std::nearbyint(n * gd), 1);
        const YAML::Node args = r[3];
        if (!args.IsSequence()) rc.fail("'args' must be a list");
        auto in_ch = [&](int k) { return from_abs[i][k] < 0 ? 3 : ch[from_abs[i][k]]; };
        const std::string prefix = "model." + std::to_string(i);
        std::string from_repr = from_list ? py_repr(r[0], nc, "") : std::to_string(from[0]);
        if (n > 1 && mod != "C3") rc.fail("number > 1 is supported only for C3");
        if ((mod != "Concat" && mod != "Detect") && from.size() != 1) rc.fail("takes one input");

        std::unique_ptr<Module> m;
        std::string rest;  // the yaml args after c2, for the printed argument list
        for (size_t k = 1; k < args.size(); ++k) rest += ", " + py_repr(args[k], nc, anchors_repr);
        const int c1 = in_ch(0);
        auto scaled_c2 = [&]() {
            if (args.size() < 1 || !is_int(args[0])) rc.fail("argument 0 (output channels) must be an integer");
            const int c2 = args[0].as<int>();
            if (c2 < 1 || c2 > 65536 || (c2 != no && c2 * gw > 65536))
                rc.fail("output channels " + std::to_string(c2) + " (times width_multiple) must be from 1 to 65536");
            return c2 != no ? make_divisible(c2 * gw, 8) : c2;
        };
        std::string printed;
        if (mod == "Conv" || mod == "Focus") {
            const int c2 = scaled_c2(), k = arg_int(rc, args, 1, 1, "kernel"), s = arg_int(rc, args, 2, 1, "stride");
            const int p = arg_int(rc, args, 3, k / 2, "padding"), g = arg_int(rc, args, 4, 1, "groups");
            if (k < 1 || k > 31 || s < 1 || s > 64 || p < 0 || p > k)
                rc.fail("kernel (1..31), stride (1..64) or padding (0..kernel) out of range");
            if (g != 1) rc.fail("groups > 1 are not supported");
            Act a = act;
            if (mod == "Conv") {
                if (arg_int(rc, args, 5, 1, "dilation") != 1) rc.fail("dilation > 1 is not supported");
                if (!arg_bool(rc, args, 6, true, "act")) a = Act{ActKind::Identity, 0};
                m = make_conv(params, prefix, c1, c2, k, s, p, a);
            } else {
                if (!arg_bool(rc, args, 5, true, "act")) a = Act{ActKind::Identity, 0};
                m = make_focus(params, prefix, c1, c2, k, s, p, a);
            }
            printed = "[" + std::to_string(c1) + ", " + std::to_string(c2) + rest + "]";
        } else if (mod == "C3" || mod == "Bottleneck") {
            const int c2 = scaled_c2();
            const bool shortcut = arg_bool(rc, args, 1, true, "shortcut");
            if (arg_int(rc, args, 2, 1, "groups") != 1) rc.fail("groups > 1 are not supported");
            if (args.size() > 3 && args[3].as<double>() != 0.5) rc.fail("expansion e other than 0.5 is not supported");
            if (mod == "C3") {
                m = make_c3(params, prefix, c1, c2, n, shortcut, act);
                printed = "[" + std::to_string(c1) + ", " + std::to_string(c2) + ", " + std::to_string(n) + rest + "]";
            } else {
                m = make_bottleneck(params, prefix, c1, c2, shortcut, act);
                printed = "[" + std::to_string(c1) + ", " + std::to_string(c2) + rest + "]";
            }
        } else if (mod == "SPPF") {
            const int c2 = scaled_c2();
            const int k = arg_int(rc, args, 1, 5, "kernel");
            if (k < 1 || k > 31 || k % 2 == 0) rc.fail("kernel must be odd, from 1 to 31");
            m = make_sppf(params, prefix, c1, c2, k, act);
            printed = "[" + std::to_string(c1) + ", " + std::to_string(c2) + rest + "]";
        } else if (mod == "SPP") {
            const int c2 = scaled_c2();
            std::vector<int> ks = {5, 9, 13};
            if (args.size() > 1) {
                if (!args[1].IsSequence()) rc.fail("argument 1 (kernels) must be a list");
                ks.clear();
                for (const auto& k : args[1]) {
                    if (!is_int(k) || k.as<int>() < 1 || k.as<int>() > 31 || k.as<int>() % 2 == 0)
                        rc.fail("argument 1 (kernels) must be odd integers from 1 to 31");
                    ks.push_back(k.as<int>());
                }
            }
            m = make_spp(params, prefix, c1, c2, ks, act);
            printed = "[" + std::to_string(c1) + ", " + std::to_string(c2) + rest + "]";
        } else if (mod == "nn.Upsample") {
            const bool none_size = args.size() >= 1 && args[0].IsScalar() && args[0].Scalar() == "None";
            const std::string mode = args.size() >= 3 ? args[2].Scalar() : "nearest";
            if (!none_size || args.size() < 2 || !is_int(args[1]) || mode != "nearest")
                rc.fail("only nn.Upsample(None, <integer scale>, 'nearest') is supported");
            if (args[1].as<int>() < 1 || args[1].as<int>() > 16) rc.fail("the scale must be from 1 to 16");
            m = make_upsample(c1, args[1].as<int>());
            printed = py_repr(args, nc, anchors_repr);
        } else if (mod == "Concat") {
            if (arg_int(rc, args, 0, 1, "dimension") != 1) rc.fail("only channel concat (dimension 1) is supported");
            int c2 = 0;
            for (size_t k = 0; k < from.size(); ++k) c2 += in_ch((int)k);
            m = make_concat(c2);
            printed = py_repr(args, nc, anchors_repr);
        } else if (mod == "ECA") {
            int k = arg_int(rc, args, 1, 3, "kernel");
            if (k == 0) {  // the ECA paper's adaptive size (γ = 2, b = 1): t = ⌊|log2 c1 + 1| / 2⌋, made odd
                int t = (int)(std::fabs(std::log2((double)c1) + 1) / 2);
                k = t % 2 ? t : t + 1;
            }
            if (k < 1 || k % 2 == 0) rc.fail("kernel size must be odd (or 0 for the adaptive size)");
            m = make_eca(params, prefix, c1, k);
            printed = py_repr(args, nc, anchors_repr);
        } else if (mod == "Detect") {
            if (i + 1 != rows.size()) rc.fail("Detect must be the last row");
            if (from.size() != anchors.size())
                rc.fail("Detect takes " + std::to_string(anchors.size()) + " inputs (one per anchor level)");
            std::vector<int> dch;
            for (size_t k = 0; k < from.size(); ++k) dch.push_back(in_ch((int)k));
            auto d = make_detect(params, prefix, nc, anchors, dch);
            detect = d.get();
            m = std::move(d);
            std::string chs;
            for (size_t k = 0; k < dch.size(); ++k) chs += (k ? ", " : "") + std::to_string(dch[k]);
            printed = "[" + std::to_string(nc) + ", " + anchors_repr + ", [" + chs + "]]";
        } else {
            rc.fail("unknown module (y5 builds Conv, Bottleneck, C3, SPPF, SPP, Focus, nn.Upsample, Concat, ECA, Detect)");
        }
        m->index = (int)i;
        m->from = from_abs[i];
        m->n = n;
        m->args = printed;
        m->type = (mod == "Detect" ? "models.yolo." : mod.rfind("nn.", 0) == 0 ? "torch.nn.modules.upsampling." : "models.common.") +
                  (mod == "nn.Upsample" ? std::string("Upsample") : mod);
        m->from_str = from_repr;
        ch.push_back(m->c2);
        layers.push_back(std::move(m));
    }
    Y5_CHECK(detect, "%s: the model has no Detect row", path.c_str());

    // Strides from a dry run of the shapes at 256×256 (YOLOv5 runs a forward of zeros at that size).
    std::vector<Shape> out(layers.size());
    Shape img{1, 3, 256, 256};
    for (size_t i = 0; i < layers.size(); ++i) {
        std::vector<Shape> in;
        for (int f : layers[i]->from) in.push_back(f < 0 ? img : out[f]);
        if (layers[i].get() == detect) {
            for (const Shape& s : in) detect->stride.push_back(256.0f / (float)s[2]);
        }
        out[i] = layers[i]->out_shape(in);
    }
}

void Model::allocate(Device device, DType dtype, CudaContext* cuda) {
    params.allocate(device, dtype, cuda);
}

// ----------------------------------------------------------------------------------------------------
// Init (YOLOv5: PyTorch defaults, initialize_weights, _initialize_biases, anchors / stride, check_anchor_order)

void Model::init_weights(Rng& rng) {
    Y5_CHECK(params.allocated(), "init_weights before allocate");
    const int nl = detect->nl, na = detect->na;
    // check_anchor_order on the pixel anchors (mean area per level must grow with the stride, else the
    // levels are reversed), then division by the strides in f32, in YOLOv5's order.
    std::vector<float> anc = detect->anchors_px;
    auto mean_area = [&](int l) {
        float s = 0;
        for (int a = 0; a < na; ++a) s += anc[(l * na + a) * 2] * anc[(l * na + a) * 2 + 1];
        return s / na;
    };
    const float da = mean_area(nl - 1) - mean_area(0), ds = detect->stride[nl - 1] - detect->stride[0];
    if (da != 0 && ((da > 0) != (ds > 0))) {
        std::vector<float> flipped(anc.size());
        for (int l = 0; l < nl; ++l)
            std::memcpy(&flipped[l * 2 * na], &anc[(nl - 1 - l) * 2 * na], 2 * na * sizeof(float));
        anc = flipped;
    }
    for (int l = 0; l < nl; ++l)
        for (int j = 0; j < 2 * na; ++j) anc[l * 2 * na + j] /= detect->stride[l];

    std::vector<std::vector<double>> host(params.size());
    for (int i = 0; i < params.size(); ++i) {
        const Param& p = params[i];
        std::vector<double>& v = host[i];
        v.assign(p.shape.numel(), 0.0);
        const std::string& nm = p.name;
        auto ends = [&](const char* s) { return nm.size() >= strlen(s) && nm.compare(nm.size() - strlen(s), strlen(s), s) == 0; };
        int64_t fan_in = p.shape.ndim > 1 ? p.shape.numel() / p.shape[0] : 1;
        if (p.kind == ParamKind::Weight) {  // kaiming_uniform_(a=√5): bound = 1/√fan_in
            double bound = 1.0 / std::sqrt((double)fan_in);
            for (double& x : v) x = rng.uniform_double(-bound, bound);
        } else if (p.kind == ParamKind::NormWeight || ends("running_var")) {
            for (double& x : v) x = 1.0;
        }
    }
    // Detect: bias U(±1/√fan_in) (Conv2d default) plus the objectness and class priors.
    for (int l = 0; l < nl; ++l) {
        const int64_t fan_in = detect->ch[l];
        const double bound = 1.0 / std::sqrt((double)fan_in), s = detect->stride[l];
        std::vector<double>& b = host[detect->b[l]];
        for (double& x : b) x = rng.uniform_double(-bound, bound);
        for (int a = 0; a < na; ++a) {
            b[a * detect->no + 4] += std::log(8.0 / ((640.0 / s) * (640.0 / s)));
            for (int c = 0; c < nc; ++c) b[a * detect->no + 5 + c] += std::log(0.6 / (nc - 0.99999));
        }
    }
    for (size_t j = 0; j < anc.size(); ++j) host[detect->anchors][j] = anc[j];

    for (int i = 0; i < params.size(); ++i) {
        const Tensor& t = params[i].value;
        std::vector<float> f(host[i].begin(), host[i].end());
        const void* src = t.dtype == DType::F64 ? (const void*)host[i].data() : (const void*)f.data();
        if (t.device == Device::CPU) std::memcpy(t.data, src, t.bytes());
        else copy_host_to_device(t.data, src, t.bytes(), params.cuda());  // the stream the kernels run on
    }
    if (fused()) fuse();  // the folds follow the new weights
}

// ----------------------------------------------------------------------------------------------------
// Forward

Model::Output Model::forward(Ctx& c, const Var& x, bool training, std::vector<Var>* layer_outputs,
                             const std::function<void(size_t)>& after_layer) {
    Y5_CHECK(!training || !fused(), "%s is fused for inference (Model::fuse): its folded Conv weights would go stale "
             "as training changes the parameters; unfuse() it before a training forward", name.c_str());
    Y5_CHECK(x.t.ndim() == 4 && x.t.dim(1) == 3, "model input must be (N, 3, H, W), got %s", x.t.str().c_str());
    const int64_t smax = (int64_t)detect->stride.back();
    Y5_CHECK(x.t.dim(2) % smax == 0 && x.t.dim(3) % smax == 0, "model input %s: height and width must be multiples of "
             "the largest stride %lld", x.t.str().c_str(), (long long)smax);
    if (!training && !c.tape->recording() && !c.autocast && !layer_outputs && !after_layer && runs_blocked(x))
        return forward_blocked(c, x);
    Output out;
    // y[i]: row i's output, as parts when it is a Concat's (modules.h). A module that does not take parts gets
    // them concatenated, once: the concat replaces the parts for any later reader.
    std::vector<std::vector<Var>> y(layers.size());
    std::vector<Var> input{x};
    // Liveness (a tracking activation arena, engine/core/arena.h): after each row, memory that no later row reads
    // (and that is not a Detect map) goes back. In inference every such block, the input's included; in training
    // with recomputation (Ctx::recompute) the row outputs the tape can rebuild (Tape::drop). last[i + 1] is the
    // last row that reads row i (last[0]: the input). A Concat row's parts are its sources' tensors, so reading it
    // keeps them; the check is by memory, not by row.
    const bool inference = !c.tape->recording();
    const bool liveness = c.act->tracking() && (inference || c.recompute) && !layer_outputs;
    std::vector<int> last(layers.size() + 1, -1);
    for (size_t i = 0; i < layers.size(); ++i)
        for (int f : layers[i]->from) last[f + 1] = std::max(last[f + 1], (int)i);
    bool x_released = false;  // its memory may hold a later block: release once
    auto sweep = [&](int i) {
        std::vector<const Tensor*> live;
        for (int j = -1; j <= i; ++j)
            if (last[j + 1] > i)
                for (const Var& v : j < 0 ? input : y[j]) live.push_back(&v.t);
        for (const Var& v : out.maps) live.push_back(&v.t);
        auto is_live = [&](const char* lo, size_t bytes) {
            for (const Tensor* t : live) {
                const char* d = static_cast<const char*>(t->data);
                if (d < lo + bytes && d + t->bytes() > lo) return true;
            }
            return false;
        };
        if (!inference) {
            // Once the rows that read the image ran, its memory goes back: under autocast they read it only through
            // their casts to f16 (whose backward reads nothing); a rebuildable image (Tape::rebuildable, the training
            // step's under recomputation) is rebuilt for the first conv's weight gradient.
            const bool rebuild = c.tape->recomputable(x);
            if ((c.autocast || rebuild) && last[0] <= i && !x_released && !x.requires_grad() &&
                c.act->owns(x.t.data) && !is_live(static_cast<const char*>(x.t.data), x.t.bytes())) {
                if (rebuild) c.tape->drop(x, c.act);
                else c.act->release(x.t.data);
                x_released = true;
            }
            for (int j = 0; j <= i; ++j)
                if (last[j + 1] <= i)
                    for (const Var& v : y[j])
                        if (c.tape->recomputable(v) && !is_live(static_cast<const char*>(v.t.data), v.t.bytes()))
                            c.tape->drop(v, c.act);
            return;
        }
        const std::vector<Arena::Block> blocks = c.act->blocks();
        for (const Arena::Block& b : blocks) {
            const char* lo = c.act->base() + b.off;
            if (!is_live(lo, b.bytes)) c.act->release(lo);
        }
    };
    if (labels_.empty())
        for (const auto& l : layers)
            labels_.push_back("model." + std::to_string(l->index) + " " + l->type.substr(l->type.rfind('.') + 1));
    for (size_t i = 0; i < layers.size(); ++i) {
        Module& m = *layers[i];
        c.act->set_label(labels_[i].c_str());
        std::vector<Var> in;
        for (int f : m.from) {
            std::vector<Var>& src = f < 0 ? input : y[f];
            if (src.size() > 1 && !m.takes_parts()) src = {concat(c, src)};
            in.insert(in.end(), src.begin(), src.end());
        }
        std::vector<Var> r = m.forward(c, in, training);
        if (&m == detect) {
            out.maps = r;
            r.resize(1);
        }
        if (layer_outputs) layer_outputs->push_back(r.size() > 1 ? concat(c, r) : r[0]);
        y[i] = std::move(r);
        if (liveness) sweep((int)i);
        if (after_layer) after_layer(i);
    }
    c.act->set_label("Detect decode");
    if (!training) out.decoded = detect->decode(c, out.maps);
    c.act->set_label(nullptr);
    return out;
}

// ----------------------------------------------------------------------------------------------------
// Blocked CPU inference

bool Model::runs_blocked(const Var& x) const {
    return fused() && x.t.device == Device::CPU && x.t.dtype == DType::F32 && blocks_when_fused();
}

bool Model::blocks_when_fused() const {
    if (!blocked_inference || params.device() != Device::CPU || params.dtype() != DType::F32) return false;
    const int B = dnnl_block();
    if (B == 0) return false;
    for (size_t i = 0; i < layers.size(); ++i) {
        const Module& m = *layers[i];
        bool nchw_in = false;
        for (int f : m.from) {
            if (f < 0) nchw_in = true;
            if (f < 0 && i > 0) return false;  // only the first row reads the image
            if (m.from.size() > 1 && f >= 0 && layers[f]->c2 % B) return false;  // a concat of whole blocks
        }
        if (!m.blocked(B, nchw_in)) return false;
    }
    return true;
}

size_t Model::blocked_bytes() const {
    size_t b = bweights_ ? bweights_->bytes() : 0;
    for (const auto& r : bruns_) b += r->bytes();
    return b;
}

// Images over y5's CPU threads, each thread with its own run and oneDNN on that thread alone; fewer images than
// threads: one image at a time, on oneDNN's OpenMP team of all the threads. The maps and the decoded predictions
// come out in the Ctx's activation arena, as the plain forward's do.
Model::Output Model::forward_blocked(Ctx& c, const Var& x) {
    const int N = (int)x.t.dim(0), H = (int)x.t.dim(2), W = (int)x.t.dim(3), T = cpu_op_threads();
    const int G = N >= T ? T : 1;
    if (!bweights_) bweights_ = std::make_unique<BlockedWeights>();
    while ((int)bruns_.size() < G) bruns_.push_back(std::make_unique<BRun>());
    Output out;
    std::vector<Tensor> maps;
    int64_t total = 0;
    for (int i = 0; i < detect->nl; ++i) {
        const int64_t ny = H / (int64_t)detect->stride[i], nx = W / (int64_t)detect->stride[i];
        if (inference_maps) {
            maps.push_back(c.act->tensor(Shape{N, detect->na, ny, nx, detect->no}, DType::F32));
            out.maps.push_back(Tape::constant(maps.back()));
        }
        total += detect->na * ny * nx;
    }
    c.act->set_label("Detect decode");
    out.decoded = c.act->tensor(Shape{N, total, detect->no}, DType::F32);
    c.act->set_label(nullptr);
    auto image = [&](BRun& r, int64_t n) {
        r.reset();
        std::vector<BT> y(layers.size());
        const BT input{x.t.ptr<float>() + n * 3 * (int64_t)H * W, 3, H, W, true};
        for (size_t i = 0; i < layers.size(); ++i) {
            std::vector<BT> in;
            for (int f : layers[i]->from) in.push_back(f < 0 ? input : y[f]);
            if (layers[i].get() == detect) detect->forward_blocked(r, in, maps, out.decoded, n);
            else y[i] = layers[i]->forward_blocked(r, in);
        }
    };
    for (int g = 0; g < G; ++g) {
        BRun& r = *bruns_[g];
        r.B = dnnl_block(), r.threads = G == 1 ? T : 1, r.weights = bweights_.get();
    }
    if (G == 1) {
        for (int64_t n = 0; n < N; ++n) image(*bruns_[0], n);
    } else {
        par(G, [&](int64_t g0, int64_t g1) {
            for (int64_t g = g0; g < g1; ++g)
                for (int64_t n = N * g / G; n < N * (g + 1) / G; ++n) image(*bruns_[g], n);
        });
    }
    return out;
}

// ----------------------------------------------------------------------------------------------------
// Fuse (YOLOv5 fuse_conv_and_bn)

namespace {

template <class T> std::vector<T> download(const Tensor& t, CudaContext* cuda) {
    std::vector<T> v((size_t)t.numel());
    if (t.device == Device::CPU) std::memcpy(v.data(), t.data, t.bytes());
    else copy_device_to_host(v.data(), t.data, t.bytes(), cuda);
    return v;
}

void upload(const Tensor& t, const void* src, CudaContext* cuda) {
    if (t.device == Device::CPU) std::memcpy(t.data, src, t.bytes());
    else copy_host_to_device(t.data, src, t.bytes(), cuda);
}

// One Conv's fold in T, PyTorch's order of operations: scale = γ / √(eps + var) and w' = scale·w (torch.mm with
// diag(scale): the other terms are exact zeros); b' = β − (γ·mean) / √(var + eps) (b_bn; the conv has no bias).
template <class T>
void fold_conv(const ParamStore& ps, int w, int g, int be, int rm, int rv, const Tensor& fw, const Tensor& fb) {
    CudaContext* cuda = ps.cuda();
    std::vector<T> wt = download<T>(ps[w].value, cuda), ga = download<T>(ps[g].value, cuda),
                   bt = download<T>(ps[be].value, cuda), mean = download<T>(ps[rm].value, cuda),
                   var = download<T>(ps[rv].value, cuda);
    const T eps = (T)kBnEps;  // as batchnorm2d takes it
    const size_t K = ga.size(), per = wt.size() / K;
    std::vector<T> b(K);
    for (size_t k = 0; k < K; ++k) {
        const T sd = std::sqrt(var[k] + eps), scale = ga[k] / sd;
        for (size_t j = 0; j < per; ++j) wt[k * per + j] = scale * wt[k * per + j];
        b[k] = bt[k] - ga[k] * mean[k] / sd;
    }
    upload(fw, wt.data(), cuda);
    upload(fb, b.data(), cuda);
}

}  // namespace

void Model::fuse() {
    Y5_CHECK(params.allocated(), "fuse before allocate");
    auto store = std::make_unique<ParamStore>();
    std::vector<std::array<int, 2>> at;  // per conv_bns entry: its folded weight and bias in `store`
    for (const ParamStore::ConvBnIndices& cb : params.conv_bns) {
        const Param& w = params[cb.w];
        const std::string pre = w.name.substr(0, w.name.size() - std::string(".weight").size());
        at.push_back({store->add(w.name, w.shape, ParamKind::Buffer),
                      store->add(pre + ".bias", Shape{w.shape[0]}, ParamKind::Buffer)});
    }
    store->allocate(params.device(), params.dtype(), params.cuda());
    params.folds.assign(params.size(), ParamStore::Fold{});
    for (size_t i = 0; i < at.size(); ++i) {
        const ParamStore::ConvBnIndices& cb = params.conv_bns[i];
        const Tensor &fw = (*store)[at[i][0]].value, &fb = (*store)[at[i][1]].value;
        if (params.dtype() == DType::F64) fold_conv<double>(params, cb.w, cb.g, cb.b, cb.rm, cb.rv, fw, fb);
        else fold_conv<float>(params, cb.w, cb.g, cb.b, cb.rm, cb.rv, fw, fb);
        params.folds[cb.w] = {fw, fb};
    }
    folded_ = std::move(store);
    bweights_.reset();
}

void Model::unfuse() {
    params.folds.clear();
    folded_.reset();
    bweights_.reset();
}

// ----------------------------------------------------------------------------------------------------
// Summary

int Model::torch_layer_count() const {
    int n = 3;  // the Model, its Sequential, and the one activation module every Conv shares
    for (const auto& m : layers) n += m->torch_modules();
    return n;
}

double Model::gflops(int imgsz) const {
    const int s = std::max(32, (int)detect->stride.back());
    std::vector<Shape> out(layers.size());
    Shape img{1, 3, s, s};
    double macs = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
        std::vector<Shape> in;
        for (int f : layers[i]->from) in.push_back(f < 0 ? img : out[f]);
        macs += layers[i]->macs(in);
        out[i] = layers[i]->out_shape(in);
    }
    return macs * 2 / 1e9 * ((double)imgsz / s) * ((double)imgsz / s);
}

std::string Model::summary(int imgsz) const {
    std::string s;
    char line[512];
    snprintf(line, sizeof line, "\n%3s%18s%3s%10s  %-40s%-30s\n", "", "from", "n", "params", "module", "arguments");
    s += line;
    for (const auto& m : layers) {
        snprintf(line, sizeof line, "%3d%18s%3d%10lld  %-40s%-30s\n", m->index, m->from_str.c_str(), m->n,
                 (long long)m->nparams, m->type.c_str(), m->args.c_str());
        s += line;
    }
    const long long np = (long long)num_parameters();
    snprintf(line, sizeof line, "%s summary: %d layers, %lld parameters, %lld gradients, %.1f GFLOPs\n", name.c_str(),
             torch_layer_count(), np, np, gflops(imgsz));
    return s + line;
}

// ----------------------------------------------------------------------------------------------------
// Weights

struct WeightSource {
    std::string path;
    std::vector<std::string> names;
    std::function<Shape(const std::string&)> shape;
    std::function<std::vector<float>(const std::string&)> read_f32;
    std::function<std::vector<double>(const std::string&)> read_f64;
};

void Model::load_weights(const std::string& path, CudaContext* cuda, const std::string& prefix) {
    SafeTensorsFile f(path);
    load_tensors({path, f.names(), [&](const std::string& n) { return f.shape(n); },
                  [&](const std::string& n) { return f.read_f32(n); }, [&](const std::string& n) { return f.read_f64(n); }},
                 cuda, prefix);
}

void Model::load_tensors(const WeightSource& f, CudaContext* cuda, const std::string& prefix) {
    Y5_CHECK(params.allocated(), "load_weights before allocate");
    // Copies go on the store's stream when no context is given: a null context would mean the legacy default
    // stream, which is not ordered with the context's non-blocking stream (kernels still reading the weights).
    if (!cuda) cuda = params.cuda();
    const std::string& path = f.path;
    std::set<std::string> has(f.names.begin(), f.names.end());
    std::vector<std::string> missing, misshaped, unexpected;
    std::set<std::string> known;
    for (int i = 0; i < params.size(); ++i) {
        const Param& p = params[i];
        const std::string key = prefix + p.name;
        known.insert(key);
        if (!has.count(key)) {
            missing.push_back(key);
            continue;
        }
        if (f.shape(key) != p.shape) misshaped.push_back(key + " " + f.shape(key).str() + " vs model " + p.shape.str());
    }
    for (const std::string& n : f.names) {
        const bool other = n.rfind(prefix + "model.", 0) != 0;  // other prefixes: training state, fixtures
        const bool counter = n.size() > 20 && n.compare(n.size() - 20, 20, ".num_batches_tracked") == 0;
        if (!other && !counter && !known.count(n)) unexpected.push_back(n);
    }
    auto list = [](const std::vector<std::string>& v) {
        std::string s;
        for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
        if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
        return s;
    };
    if (!missing.empty() || !misshaped.empty() || !unexpected.empty()) {
        std::string msg;
        if (!missing.empty()) msg += std::to_string(missing.size()) + " missing: " + list(missing) + "; ";
        if (!misshaped.empty()) msg += std::to_string(misshaped.size()) + " mis-shaped: " + list(misshaped) + "; ";
        if (!unexpected.empty()) msg += std::to_string(unexpected.size()) + " unexpected: " + list(unexpected) + "; ";
        msg.resize(msg.size() - 2);
        Y5_FAIL("%s does not fit %s (%s): %s", path.c_str(), yaml_path.c_str(), name.c_str(), msg.c_str());
    }
    for (int i = 0; i < params.size(); ++i) {
        const Tensor& t = params[i].value;
        if (t.dtype == DType::F64) {
            std::vector<double> v = f.read_f64(prefix + params[i].name);
            if (t.device == Device::CPU) std::memcpy(t.data, v.data(), t.bytes());
            else copy_host_to_device(t.data, v.data(), t.bytes(), cuda);
        } else {
            std::vector<float> v = f.read_f32(prefix + params[i].name);
            if (t.device == Device::CPU) std::memcpy(t.data, v.data(), t.bytes());
            else copy_host_to_device(t.data, v.data(), t.bytes(), cuda);
        }
    }
    if (fused()) fuse();  // the folds follow the new weights
}

void Model::save_weights(const std::string& path, const std::map<std::string, std::string>& metadata,
                         CudaContext* cuda) const {
    if (!cuda) cuda = params.cuda();  // as load_weights
    std::vector<std::vector<float>> host(params.size());
    std::vector<SaveItem> items;
    for (int i = 0; i < params.size(); ++i) {
        const Tensor& t = params[i].value;
        Y5_CHECK(t.dtype == DType::F32, "save_weights: parameters are %s; weights files hold f32", dtype_name(t.dtype));
        host[i].resize(t.numel());
        if (t.device == Device::CPU) std::memcpy(host[i].data(), t.data, t.bytes());
        else copy_device_to_host(host[i].data(), t.data, t.bytes(), cuda);
        items.push_back({params[i].name, Tensor(host[i].data(), t.shape, DType::F32, Device::CPU)});
    }
    std::map<std::string, std::string> meta = metadata;
    add_metadata(meta);
    save_safetensors(path, items, meta);
}

void Model::add_metadata(std::map<std::string, std::string>& meta) const {
    meta["yaml"] = yaml_text;
    meta["yaml_name"] = yaml_path.substr(yaml_path.find_last_of('/') + 1);
    meta["nc"] = std::to_string(nc);
}

// ----------------------------------------------------------------------------------------------------
// YOLOv5 .pt checkpoints: torch.save({'model': DetectionModel, 'ema': DetectionModel or None, 'optimizer', ...}),
// the nn.Module tree read as data by engine/core/torch_pt.h. The model is rebuilt from its `yaml` attribute (the
// yaml dict YOLOv5 built it from, written back as yaml text), its state_dict names are its paths of `_modules`
// keys down to each `_parameters` / `_buffers` entry ("model.0.conv.weight"), which are y5's names.

namespace {

std::string yaml_float(double v) {  // the shortest text that reads back as v, always with a '.' or an exponent
    char b[40];
    for (int prec = 1; prec <= 17; ++prec) {
        snprintf(b, sizeof b, "%.*g", prec, v);
        if (std::strtod(b, nullptr) == v) break;
    }
    std::string t = b;
    return t.find_first_of(".eEn") == std::string::npos ? t + ".0" : t;
}

// A yaml dict value as flow yaml: strings single-quoted (YOLOv5's 'None', 'nearest', 'nc' read back as the same
// scalars), Python's True/False/None as YOLOv5's yaml files write them.
std::string yaml_flow(const PyObj& o, const std::string& file) {
    switch (o.kind) {
        case PyObj::None: return "None";
        case PyObj::Bool: return o.i ? "True" : "False";
        case PyObj::Int: return std::to_string(o.i);
        case PyObj::Float: return yaml_float(o.f);
        case PyObj::Str: {
            std::string q = "'";
            for (char c : o.s) q += c == '\'' ? std::string("''") : std::string(1, c);
            return q + "'";
        }
        case PyObj::List:
        case PyObj::Tuple: {
            std::string t = "[";
            for (size_t i = 0; i < o.items.size(); ++i) t += (i ? ", " : "") + yaml_flow(*o.items[i], file);
            return t + "]";
        }
        case PyObj::Dict: {
            std::string t = "{";
            for (size_t i = 0; i < o.dict.size(); ++i)
                t += (i ? ", " : "") + yaml_flow(*o.dict[i].first, file) + ": " + yaml_flow(*o.dict[i].second, file);
            return t + "}";
        }
        default: Y5_FAIL("%s: the model's yaml dict holds %s", file.c_str(), o.describe().c_str());
    }
}

// The yaml dict as text, one row per line for lists of lists (backbone, head, anchors); `anchors` replaces the
// dict's anchors when not empty.
std::string yaml_text_of(const PyObj& y, const std::string& file, const std::string& anchors) {
    std::string t = "# the yaml dict of " + file.substr(file.find_last_of('/') + 1) + "\n";
    for (const auto& kv : y.dict) {
        Y5_CHECK(kv.first->is(PyObj::Str), "%s: the model's yaml dict has a key that is %s", file.c_str(),
                 kv.first->describe().c_str());
        const PyObj& v = *kv.second;
        if (kv.first->s == "anchors" && !anchors.empty()) {
            t += "anchors:\n" + anchors;
            continue;
        }
        bool rows = v.is(PyObj::List) && !v.items.empty();
        for (const auto& it : v.items) rows = rows && it->is(PyObj::List);
        t += kv.first->s + ":";
        if (rows)
            for (const auto& it : v.items) t += "\n  - " + yaml_flow(*it, file);
        else
            t += " " + yaml_flow(v, file);
        t += "\n";
    }
    return t;
}

// Every tensor of an nn.Module tree under its state_dict name: _parameters, then _buffers (less the
// non-persistent ones), then each child module's, as Module.state_dict orders them.
void collect_tensors(const PyObj& m, const std::string& prefix, const std::string& file,
                     std::vector<std::pair<std::string, const PyObj*>>& out) {
    Y5_CHECK(m.is(PyObj::Object) && m.state && m.state->is(PyObj::Dict), "%s: module %s is %s, not an nn.Module",
             file.c_str(), prefix.empty() ? "(root)" : prefix.c_str(), m.describe().c_str());
    std::set<std::string> skip;
    if (const PyObj* np = m.get("_non_persistent_buffers_set"))
        for (const auto& x : np->items) skip.insert(x->s);
    for (const char* part : {"_parameters", "_buffers", "_modules"}) {
        const PyObj* d = m.get(part);
        Y5_CHECK(d && d->is(PyObj::Dict), "%s: module %s (%s) has no %s dict", file.c_str(),
                 prefix.empty() ? "(root)" : prefix.c_str(), m.s.c_str(), part);
        for (const auto& kv : d->dict) {
            const PyObj& v = *kv.second;
            Y5_CHECK(kv.first->is(PyObj::Str), "%s: a %s key of %s is not a string", file.c_str(), part, m.s.c_str());
            const std::string name = prefix + kv.first->s;
            if (v.is(PyObj::None) || (part == std::string("_buffers") && skip.count(kv.first->s))) continue;
            if (part == std::string("_modules")) {
                collect_tensors(v, name + ".", file, out);
                continue;
            }
            Y5_CHECK(v.is(PyObj::Tensor), "%s: %s is %s, not a tensor", file.c_str(), name.c_str(), v.describe().c_str());
            out.emplace_back(name, &v);
        }
    }
}

bool is_yolov5_detection_model(const std::string& cls) {
    for (const char* c : {"models.yolo.DetectionModel", "models.yolo.Model", "yolov5.models.yolo.DetectionModel",
                          "yolov5.models.yolo.Model"})
        if (cls == c) return true;
    return false;
}

}  // namespace

// The checkpoint's detection model: `ema` if present and use_ema, else `model`. *which names it.
static const PyObj& pt_model(const TorchPtFile& pt, bool use_ema, const char** which) {
    const PyObj& ck = pt.root();
    const std::string& path = pt.path();
    Y5_CHECK(ck.is(PyObj::Dict) && ck.get("model"), "%s: not a YOLOv5 checkpoint: the pickle holds %s, not a dict with "
             "a 'model'", path.c_str(), ck.describe().c_str());
    const PyObj* ema = ck.get("ema");
    use_ema = use_ema && ema && !ema->is(PyObj::None);
    const PyObj& m = use_ema ? *ema : *ck.get("model");
    *which = use_ema ? "ema" : "model";
    Y5_CHECK(m.is(PyObj::Object) && is_yolov5_detection_model(m.s), "%s: '%s' is %s, not a YOLOv5 detection model "
             "(models.yolo.DetectionModel)", path.c_str(), *which, m.describe().c_str());
    return m;
}

// A checkpoint model's yaml as text (its tensors, for an anchors buffer) and its measured strides.
static std::string pt_yaml(const TorchPtFile& pt, const PyObj& m,
                           const std::vector<std::pair<std::string, const PyObj*>>& tensors, std::vector<double>* stride) {
    const std::string& path = pt.path();
    const PyObj* yaml = m.get("yaml");
    Y5_CHECK(yaml && yaml->is(PyObj::Dict), "%s: the %s has no yaml dict (a model built from a yaml file has one)",
             path.c_str(), m.s.c_str());
    const PyObj* stride_t = m.get("stride");
    Y5_CHECK(stride_t && stride_t->is(PyObj::Tensor), "%s: the model has no stride tensor", path.c_str());
    *stride = pt.read_f64(*stride_t);

    // A yaml whose anchors were a count (AutoAnchor computed them): the anchors buffer, in pixels.
    std::string anchors;
    const PyObj* ya = yaml->get("anchors");
    if (!ya || !ya->is(PyObj::List)) {
        const PyObj* buf = nullptr;
        for (const auto& t : tensors)
            if (t.first.size() > 8 && t.first.compare(t.first.size() - 8, 8, ".anchors") == 0) buf = t.second;
        Y5_CHECK(buf && buf->shape.size() == 3 && buf->shape[0] == (int64_t)stride->size(), "%s: the yaml's anchors "
                 "are not a list and the model has no (nl, na, 2) anchors buffer", path.c_str());
        const std::vector<double> a = pt.read_f64(*buf);
        for (int64_t l = 0, k = 0; l < buf->shape[0]; ++l) {
            anchors += "  - [";
            for (int64_t j = 0; j < buf->shape[1] * 2; ++j, ++k) anchors += (j ? ", " : "") + yaml_float(a[k] * (*stride)[l]);
            anchors += "]\n";
        }
    }
    return yaml_text_of(*yaml, path, anchors);
}

static std::string pt_yaml_name(const PyObj& m) {
    if (const PyObj* f = m.get("yaml_file"); f && f->is(PyObj::Str) && !f->s.empty())
        return f->s.substr(f->s.find_last_of("/\\") + 1);
    return "model.yaml";
}

// A checkpoint model's tensors as a WeightSource; `by_name` keeps the lookup the functions use.
static WeightSource pt_source(const TorchPtFile& pt, const std::vector<std::pair<std::string, const PyObj*>>& tensors,
                              std::map<std::string, const PyObj*>& by_name) {
    by_name = std::map<std::string, const PyObj*>(tensors.begin(), tensors.end());
    const std::string path = pt.path();
    WeightSource src{path, {}, {}, {}, {}};
    for (const auto& t : tensors) src.names.push_back(t.first);
    src.shape = [&by_name, path](const std::string& n) {
        const PyObj& t = *by_name.at(n);
        Y5_CHECK((int)t.shape.size() <= kMaxDims, "%s: %s has rank %zu", path.c_str(), n.c_str(), t.shape.size());
        Shape s;
        for (int64_t d : t.shape) s.d[s.ndim++] = d;
        return s;
    };
    src.read_f32 = [&by_name, &pt](const std::string& n) { return pt.read_f32(*by_name.at(n)); };
    src.read_f64 = [&by_name, &pt](const std::string& n) { return pt.read_f64(*by_name.at(n)); };
    return src;
}

std::unique_ptr<Model> Model::from_torch_pt(const std::string& path, CudaContext* cuda) {
    TorchPtFile pt(path);
    const char* which = nullptr;
    const PyObj& m = pt_model(pt, true, &which);
    const PyObj* opt = pt.root().get("optimizer");
    if (opt && !opt->is(PyObj::None))
        fprintf(stderr, "%s: a training checkpoint: using its '%s' weights; its optimizer state is ignored\n",
                path.c_str(), which);
    std::vector<std::pair<std::string, const PyObj*>> tensors;
    collect_tensors(m, "", path, tensors);
    std::vector<double> stride;
    const std::string text = pt_yaml(pt, m, tensors, &stride);

    int nc = 0;
    if (const PyObj* n = m.get("nc")) nc = n->is(PyObj::Int) ? (int)n->i : 0;
    auto model = std::unique_ptr<Model>(new Model(pt_yaml_name(m), text, nc));

    // The strides YOLOv5 measured must be the ones y5's dry run finds.
    std::string want, got;
    for (double s : stride) want += (want.empty() ? "" : ",") + yaml_float(s);
    for (float s : model->detect->stride) got += (got.empty() ? "" : ",") + yaml_float(s);
    Y5_CHECK(want == got, "%s: the checkpoint's strides %s differ from %s of the model its yaml builds", path.c_str(),
             want.c_str(), got.c_str());

    if (const PyObj* names = m.get("names")) {  // a list, or {index: name} as YOLOv5 v7.0's check_dataset makes it
        if (names->is(PyObj::List) || names->is(PyObj::Tuple)) {
            for (const auto& x : names->items) model->class_names.push_back(x->is(PyObj::Str) ? x->s : "?");
        } else if (names->is(PyObj::Dict)) {
            model->class_names.assign(names->dict.size(), "");
            for (const auto& kv : names->dict) {
                Y5_CHECK(kv.first->is(PyObj::Int) && kv.first->i >= 0 && kv.first->i < (int64_t)names->dict.size() &&
                         kv.second->is(PyObj::Str), "%s: names is not {0: name, 1: name, ...}", path.c_str());
                model->class_names[kv.first->i] = kv.second->s;
            }
        }
    }

    model->allocate(cuda ? Device::CUDA : Device::CPU, DType::F32, cuda);
    std::map<std::string, const PyObj*> by_name;
    const WeightSource src = pt_source(pt, tensors, by_name);
    model->load_tensors(src, cuda, "");
    return model;
}

// ----------------------------------------------------------------------------------------------------
// Fine-tuning (train.py --weights): the model comes from --cfg or the file's yaml, and the file's tensors are
// transferred by name and shape (utils/general.py's intersect_dicts, then load_state_dict(strict=False)).

std::pair<std::string, std::string> Model::weights_yaml(const std::string& path) {
    if (is_torch_pt(path)) {
        TorchPtFile pt(path);
        const char* which = nullptr;
        const PyObj& m = pt_model(pt, false, &which);  // train.py: ckpt['model'].yaml
        std::vector<std::pair<std::string, const PyObj*>> tensors;
        collect_tensors(m, "", path, tensors);
        std::vector<double> stride;
        return {pt_yaml_name(m), pt_yaml(pt, m, tensors, &stride)};
    }
    SafeTensorsFile f(path);
    const auto& m = f.metadata();
    Y5_CHECK(m.count("yaml"), "%s: no model yaml in its metadata (not a y5 weights file); pass --cfg", path.c_str());
    return {m.count("yaml_name") ? m.at("yaml_name") : "model.yaml", m.at("yaml")};
}

Model::Transfer Model::transfer_weights(const std::string& path, const std::vector<std::string>& exclude,
                                        CudaContext* cuda) {
    Y5_CHECK(params.allocated(), "transfer_weights before allocate");
    if (!cuda) cuda = params.cuda();  // as load_weights
    std::unique_ptr<TorchPtFile> pt;
    std::unique_ptr<SafeTensorsFile> st;
    std::vector<std::pair<std::string, const PyObj*>> tensors;
    std::map<std::string, const PyObj*> by_name;
    WeightSource src;
    if (is_torch_pt(path)) {
        pt = std::make_unique<TorchPtFile>(path);
        const char* which = nullptr;
        collect_tensors(pt_model(*pt, false, &which), "", path, tensors);  // train.py: ckpt['model'], not the EMA
        src = pt_source(*pt, tensors, by_name);
    } else {
        st = std::make_unique<SafeTensorsFile>(path);
        SafeTensorsFile& f = *st;
        src = {path, f.names(), [&f](const std::string& n) { return f.shape(n); },
               [&f](const std::string& n) { return f.read_f32(n); }, [&f](const std::string& n) { return f.read_f64(n); }};
    }
    auto excluded = [&](const std::string& n) {
        for (const std::string& x : exclude)
            if (n.find(x) != std::string::npos) return true;
        return false;
    };
    std::set<std::string> has(src.names.begin(), src.names.end());
    // PyTorch's state_dict also holds each BatchNorm's num_batches_tracked, which y5 does not keep (it only counts
    // for momentum=None): counted as train.py counts them, one per running_mean, transferred when the file has it.
    Transfer r;
    r.total = params.size();
    for (int i = 0; i < params.size(); ++i) {
        const Param& p = params[i];
        const std::string& n = p.name;
        if (n.size() > 13 && n.compare(n.size() - 13, 13, ".running_mean") == 0) {
            ++r.total;
            const std::string nbt = n.substr(0, n.size() - 13) + ".num_batches_tracked";
            if (has.count(nbt) && !excluded(nbt) && src.shape(nbt).numel() == 1) ++r.transferred;
        }
        if (!has.count(n) || excluded(n) || src.shape(n) != p.shape) continue;
        ++r.transferred;
        const Tensor& t = p.value;
        if (t.dtype == DType::F64) {
            std::vector<double> v = src.read_f64(n);
            if (t.device == Device::CPU) std::memcpy(t.data, v.data(), t.bytes());
            else copy_host_to_device(t.data, v.data(), t.bytes(), cuda);
        } else {
            std::vector<float> v = src.read_f32(n);
            if (t.device == Device::CPU) std::memcpy(t.data, v.data(), t.bytes());
            else copy_host_to_device(t.data, v.data(), t.bytes(), cuda);
        }
    }
    if (fused()) fuse();
    return r;
}

}  // namespace y5
