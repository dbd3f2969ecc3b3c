/*
 * Export: the fused model's rows as ONNX nodes (export.py's graph at opset 12), and its weights as a y5
 * .safetensors. The module structure is read from the model's yaml rows (kernel, stride, padding, shortcut,
 * scale: what parse_model read) and its parameters by state_dict name; every Conv's weight and bias are the
 * folds Model::fuse computed, so the ONNX Conv computes what y5's fused forward does.
 */
#include "engine/app/export.h"

#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>
#include <onnx/onnx_pb.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

namespace y5 {

namespace {

// ----------------------------------------------------------------------------------------------------
// Graph building: names, initializers, nodes

struct Graph {
    onnx::GraphProto* g;
    bool half;
    int64_t bs;  // the batch in Reshape targets: N, or -1 with --dynamic
    int opset;   // Split's sizes and Squeeze's axes are attributes up to 12, inputs from 13 on

    // A float tensor initializer (f32, or f16 with --half unless f32 is set), dims as given.
    std::string floats(const std::string& name, const std::vector<int64_t>& dims, const float* v, int64_t n,
                       bool f32 = false) {
        onnx::TensorProto* t = g->add_initializer();
        t->set_name(name);
        for (int64_t d : dims) t->add_dims(d);
        if (half && !f32) {
            t->set_data_type(onnx::TensorProto::FLOAT16);
            std::string raw((size_t)n * 2, '\0');
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t b = f32_to_f16(v[i]).bits;
                std::memcpy(&raw[(size_t)i * 2], &b, 2);
            }
            t->set_raw_data(raw);
        } else {
            t->set_data_type(onnx::TensorProto::FLOAT);
            t->set_raw_data(std::string((const char*)v, (size_t)n * 4));
        }
        return name;
    }
    std::string floats(const std::string& name, const std::vector<int64_t>& dims, const std::vector<float>& v,
                       bool f32 = false) {
        return floats(name, dims, v.data(), (int64_t)v.size(), f32);
    }
    std::string tensor(const std::string& name, const Tensor& t) {
        Y5_CHECK(t.device == Device::CPU && t.dtype == DType::F32, "export: %s must be an f32 CPU tensor, got %s",
                 name.c_str(), t.str().c_str());
        return floats(name, std::vector<int64_t>(t.shape.d, t.shape.d + t.ndim()), t.ptr<float>(), t.numel());
    }
    std::string ints(const std::string& name, const std::vector<int64_t>& v) {
        onnx::TensorProto* t = g->add_initializer();
        t->set_name(name);
        t->add_dims((int64_t)v.size());
        t->set_data_type(onnx::TensorProto::INT64);
        t->set_raw_data(std::string((const char*)v.data(), v.size() * 8));
        return name;
    }

    // A node named "/scope/Op" (torch's naming) with one output "/scope/Op_output_0"; returns the output.
    onnx::NodeProto* last = nullptr;
    std::map<std::string, int> seen;
    std::string node(const std::string& scope, const std::string& op, const std::vector<std::string>& in) {
        std::string nm = scope + "/" + op;
        const int k = seen[nm]++;
        if (k) nm += "_" + std::to_string(k);
        last = g->add_node();
        last->set_op_type(op);
        last->set_name(nm);
        for (const std::string& s : in) last->add_input(s);
        last->add_output(nm + "_output_0");
        return nm + "_output_0";
    }
    void attr(const char* name, int64_t v) {
        onnx::AttributeProto* a = last->add_attribute();
        a->set_name(name), a->set_type(onnx::AttributeProto::INT), a->set_i(v);
    }
    void attr(const char* name, float v) {
        onnx::AttributeProto* a = last->add_attribute();
        a->set_name(name), a->set_type(onnx::AttributeProto::FLOAT), a->set_f(v);
    }
    void attr(const char* name, const std::string& v) {
        onnx::AttributeProto* a = last->add_attribute();
        a->set_name(name), a->set_type(onnx::AttributeProto::STRING), a->set_s(v);
    }
    void attr(const char* name, const std::vector<int64_t>& v) {
        onnx::AttributeProto* a = last->add_attribute();
        a->set_name(name), a->set_type(onnx::AttributeProto::INTS);
        for (int64_t x : v) a->add_ints(x);
    }
    std::string scalar(const std::string& name, float v, bool f32 = false) { return floats(name, {}, &v, 1, f32); }
};

// A Conv row's (or a module's inner Conv's) ONNX: Conv with the folded weight and bias, then the activation in
// the form that computes y5's kernels/activation.h: SiLU x·σ(x) as Sigmoid + Mul (export.py's opset-12 graph),
// ReLU6 as Clip(0, 6), Hardswish x·min(max(x + 3, 0), 6)/6 as Add, Clip, Mul, Div.
struct Emitter {
    const Model& m;
    Graph& G;
    std::map<std::string, int> index;  // parameter name → index

    const Param& param(const std::string& name) const {
        auto it = index.find(name);
        Y5_CHECK(it != index.end(), "export: the model has no parameter %s", name.c_str());
        return m.params[it->second];
    }

    std::string act(const std::string& scope, const std::string& x, const Act& a) {
        switch (a.kind) {
            case ActKind::Identity: return x;
            case ActKind::SiLU: {
                const std::string s = G.node(scope + "/act", "Sigmoid", {x});
                return G.node(scope + "/act", "Mul", {x, s});
            }
            case ActKind::ReLU: return G.node(scope + "/act", "Relu", {x});
            case ActKind::Sigmoid: return G.node(scope + "/act", "Sigmoid", {x});
            case ActKind::LeakyReLU: {
                const std::string y = G.node(scope + "/act", "LeakyRelu", {x});
                G.attr("alpha", a.alpha);
                return y;
            }
            case ActKind::ReLU6:
                return G.node(scope + "/act", "Clip", {x, G.scalar(scope + ".act.min", 0.f), G.scalar(scope + ".act.max", 6.f)});
            case ActKind::Hardswish: {
                const std::string p = G.node(scope + "/act", "Add", {x, G.scalar(scope + ".act.three", 3.f)});
                const std::string c = G.node(scope + "/act", "Clip", {p, G.scalar(scope + ".act.min", 0.f),
                                                                       G.scalar(scope + ".act.max", 6.f)});
                const std::string q = G.node(scope + "/act", "Mul", {x, c});
                return G.node(scope + "/act", "Div", {q, G.scalar(scope + ".act.six", 6.f)});
            }
        }
        Y5_FAIL("export: activation %d has no ONNX form", (int)a.kind);
    }

    // prefix "model.3" or "model.2.m.0.cv1": its .conv.weight folded by Model::fuse.
    std::string conv(const std::string& prefix, const std::string& x, int s, int p, const Act& a) {
        const auto it = index.find(prefix + ".conv.weight");
        Y5_CHECK(it != index.end(), "export: the model has no parameter %s.conv.weight", prefix.c_str());
        const ParamStore::Fold* f = m.params.fold(it->second);
        Y5_CHECK(f, "export: %s is not fused (call Model::fuse first)", prefix.c_str());
        const std::string scope = "/" + prefix;
        const int64_t k = f->w.dim(2);
        const std::string y = G.node(scope + "/conv", "Conv", {x, G.tensor(prefix + ".conv.weight", f->w),
                                                               G.tensor(prefix + ".conv.bias", f->b)});
        G.attr("dilations", std::vector<int64_t>{1, 1});
        G.attr("group", (int64_t)1);
        G.attr("kernel_shape", std::vector<int64_t>{k, f->w.dim(3)});
        G.attr("pads", std::vector<int64_t>{p, p, p, p});
        G.attr("strides", std::vector<int64_t>{s, s});
        return act(scope, y, a);
    }

    std::string maxpool(const std::string& scope, const std::string& x, int k) {
        const std::string y = G.node(scope, "MaxPool", {x});
        G.attr("ceil_mode", (int64_t)0);
        G.attr("kernel_shape", std::vector<int64_t>{k, k});
        G.attr("pads", std::vector<int64_t>{k / 2, k / 2, k / 2, k / 2});
        G.attr("strides", std::vector<int64_t>{1, 1});
        return y;
    }

    std::string concat(const std::string& scope, const std::vector<std::string>& in, int64_t axis) {
        const std::string y = G.node(scope, "Concat", in);
        G.attr("axis", axis);
        return y;
    }

    // Bottleneck: cv2(cv1(x)), + x when add.
    std::string bottleneck(const std::string& prefix, const std::string& x, bool add) {
        const std::string h = conv(prefix + ".cv1", x, 1, 0, m.act);
        const std::string y = conv(prefix + ".cv2", h, 1, 1, m.act);
        return add ? G.node("/" + prefix, "Add", {x, y}) : y;
    }

    // Detect's eval decode of level i from its input x (bs, ch, ny, nx): y5's kernels/detect.h in ONNX ops,
    // (bs, na·ny·nx, no).
    std::string detect_level(const std::string& prefix, int i, const std::string& x, int64_t ny, int64_t nx, bool dynamic) {
        const Detect& d = *m.detect;
        const std::string mi = prefix + ".m." + std::to_string(i), scope = "/" + prefix;
        const std::string y = G.node(scope + "/m." + std::to_string(i), "Conv",
                                     {x, G.tensor(mi + ".weight", param(mi + ".weight").value),
                                      G.tensor(mi + ".bias", param(mi + ".bias").value)});
        G.attr("dilations", std::vector<int64_t>{1, 1});
        G.attr("group", (int64_t)1);
        G.attr("kernel_shape", std::vector<int64_t>{1, 1});
        G.attr("pads", std::vector<int64_t>{0, 0, 0, 0});
        G.attr("strides", std::vector<int64_t>{1, 1});
        const std::string L = std::to_string(i);
        // (bs, na·no, ny, nx) → (bs, na, no, ny, nx) → (bs, na, ny, nx, no); static: (1, bs·na, ...)
        std::string shape5, dims_yx;
        if (dynamic) {  // ny, nx from the map: Shape → Slice [2, 4)
            const std::string sh = G.node(scope, "Shape", {y});
            dims_yx = G.node(scope, "Slice", {sh, G.ints(prefix + ".yx.starts." + L, {2}), G.ints(prefix + ".yx.ends." + L, {4}),
                                              G.ints(prefix + ".yx.axes." + L, {0})});
            shape5 = concat(scope, {G.ints(prefix + ".shape5." + L, {-1, d.na, d.no}), dims_yx}, 0);
        } else {
            // (1, bs·na, ...): same memory as (bs, na, ...), and the grids' leading 1 then matches (below)
            shape5 = G.ints(prefix + ".shape5." + L, {1, G.bs * d.na, d.no, ny, nx});
        }
        const std::string r = G.node(scope, "Reshape", {y, shape5});
        const std::string t = G.node(scope, "Transpose", {r});
        G.attr("perm", std::vector<int64_t>{0, 1, 3, 4, 2});
        const std::string s = G.node(scope, "Sigmoid", {t});
        const std::vector<int64_t> sizes = {2, 2, d.nc + 1};
        const std::string sp = G.opset >= 13 ? G.node(scope, "Split", {s, G.ints(prefix + ".split." + L, sizes)})
                                             : G.node(scope, "Split", {s});
        G.attr("axis", (int64_t)4);
        if (G.opset < 13) G.attr("split", sizes);
        const std::string xy = sp, wh = G.last->name() + "_output_1", conf = G.last->name() + "_output_2";
        G.last->add_output(wh);
        G.last->add_output(conf);

        const float st = d.stride[i];
        const Tensor anc = param(prefix + ".anchors").value;  // (nl, na, 2) grid units
        std::string grid, anchor_grid;
        if (!dynamic) {  // (1, N·na, ny, nx, 2): grid − 0.5 and anchor·stride, export.py's _make_grid, repeated over
            // the batch: export.py's are (1, na, ...) against maps (N, na, ...), but OpenCV 4.6 adds and multiplies a
            // (1, ...) constant into the first image only (measured: batch 2's second image came out without its
            // grid), and fails on an (N, ...) one; at batch 1 the graph is export.py's.
            std::vector<float> gv, av;
            for (int64_t b = 0; b < G.bs; ++b)
            for (int a = 0; a < d.na; ++a)
                for (int64_t yy = 0; yy < ny; ++yy)
                    for (int64_t xx = 0; xx < nx; ++xx) {
                        gv.push_back(float(xx) - 0.5f), gv.push_back(float(yy) - 0.5f);
                        av.push_back(anc.ptr<float>()[(i * d.na + a) * 2] * st);
                        av.push_back(anc.ptr<float>()[(i * d.na + a) * 2 + 1] * st);
                    }
            grid = G.floats(prefix + ".grid." + L, {1, G.bs * d.na, ny, nx, 2}, gv);
            anchor_grid = G.floats(prefix + ".anchor_grid." + L, {1, G.bs * d.na, ny, nx, 2}, av);
        } else {  // grid from Range over ny, nx (1, 1, ny, nx, 2); anchors (1, na, 1, 1, 2) broadcast
            const auto dim = [&](int64_t k) {
                const std::string g = G.node(scope, "Gather", {dims_yx, G.ints(prefix + ".yx." + L + "." + std::to_string(k), {k})});
                const std::string c = G.node(scope, "Cast", {g});
                G.attr("to", (int64_t)onnx::TensorProto::FLOAT);  // Range has no f16: the grid is made in f32
                return c;
            };
            const std::string fy = dim(0), fx = dim(1);
            const std::string zero = G.scalar(prefix + ".zero." + L, 0.f, true), one = G.scalar(prefix + ".one." + L, 1.f, true);
            const auto range = [&](const std::string& n, const std::vector<int64_t>& shape) {
                std::string sq;
                if (G.opset >= 13) sq = G.node(scope, "Squeeze", {n, G.ints(prefix + ".sq." + L + "." + n, {0})});
                else {
                    sq = G.node(scope, "Squeeze", {n});
                    G.attr("axes", std::vector<int64_t>{0});
                }
                const std::string rg = G.node(scope, "Range", {zero, sq, one});
                return G.node(scope, "Reshape", {rg, G.ints(prefix + ".rg." + L + "." + n, shape)});
            };
            const std::string gx = range(fx, {1, 1, 1, -1, 1}), gy = range(fy, {1, 1, -1, 1, 1});
            const std::string full = concat(scope, {G.ints(prefix + ".one11." + L, {1, 1}), dims_yx,
                                                    G.ints(prefix + ".one1." + L, {1})}, 0);
            const std::string ex = G.node(scope, "Expand", {gx, full}), ey = G.node(scope, "Expand", {gy, full});
            grid = G.node(scope, "Sub", {concat(scope, {ex, ey}, 4), G.scalar(prefix + ".half." + L, 0.5f, true)});
            if (G.half) {
                grid = G.node(scope, "Cast", {grid});
                G.attr("to", (int64_t)onnx::TensorProto::FLOAT16);
            }
            std::vector<float> av;
            for (int a = 0; a < d.na; ++a) {
                av.push_back(anc.ptr<float>()[(i * d.na + a) * 2] * st);
                av.push_back(anc.ptr<float>()[(i * d.na + a) * 2 + 1] * st);
            }
            anchor_grid = G.floats(prefix + ".anchor_grid." + L, {1, d.na, 1, 1, 2}, av);
        }
        // xy = (σ·2 + grid)·stride; wh = (σ·2)²·anchor_grid (the square as one Mul, as kernels/detect.h)
        const std::string two = G.scalar(prefix + ".two." + L, 2.f), sc = G.scalar(prefix + ".stride." + L, st);
        const std::string xy2 = G.node(scope, "Add", {G.node(scope, "Mul", {xy, two}), grid});
        const std::string oxy = G.node(scope, "Mul", {xy2, sc});
        const std::string q = G.node(scope, "Mul", {wh, two});
        const std::string owh = G.node(scope, "Mul", {G.node(scope, "Mul", {q, q}), anchor_grid});
        const std::string cat = concat(scope, {oxy, owh, conf}, 4);
        // (bs, na·ny·nx, no); dynamic: the batch copied from the map (0), as one Reshape takes only one −1
        return G.node(scope, "Reshape", {cat, G.ints(prefix + ".shape3." + L, {dynamic ? 0 : G.bs, -1, d.no})});
    }
};

std::string py_str(const std::string& s) {  // Python's repr of a str (ASCII quotes and backslashes)
    const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
    const char q = dq ? '"' : '\'';
    std::string r(1, q);
    for (char c : s) {
        if (c == '\\' || c == q) r += '\\';
        r += c;
    }
    return r + q;
}

// The yaml rows (backbone then head), as parse_model read them: the model was built from the same text.
std::vector<YAML::Node> yaml_rows(const Model& m) {
    const YAML::Node y = YAML::Load(m.yaml_text);
    std::vector<YAML::Node> rows;
    for (const char* part : {"backbone", "head"})
        for (const auto& r : y[part]) rows.push_back(r);
    Y5_CHECK(rows.size() == m.layers.size(), "export: %s has %zu rows, the model %zu", m.yaml_path.c_str(), rows.size(),
             m.layers.size());
    return rows;
}

int row_int(const YAML::Node& args, size_t i, int dflt) {
    if (i >= args.size() || args[i].Scalar() == "None") return dflt;
    return args[i].as<int>();
}
bool row_bool(const YAML::Node& args, size_t i, bool dflt) {
    if (i >= args.size()) return dflt;
    const std::string v = args[i].Scalar();
    return v == "True" || v == "true";
}

}  // namespace

std::string names_repr(const Model& m) {
    std::string s = "{";
    for (int i = 0; i < m.nc; ++i) {
        const std::string n = (size_t)i < m.class_names.size() && m.class_names.size() == (size_t)m.nc
                                  ? m.class_names[i] : "class" + std::to_string(i);
        s += (i ? ", " : "") + std::to_string(i) + ": " + py_str(n);
    }
    return s + "}";
}

void export_onnx(const Model& m, const std::string& path, const OnnxOptions& opt) {
    Y5_CHECK(m.fused(), "export: %s is not fused (Model::fuse)", m.name.c_str());
    Y5_CHECK(m.params.device() == Device::CPU && m.params.dtype() == DType::F32, "export: the model must be f32 on the CPU");
    Y5_CHECK(opt.opset >= 12 && opt.opset <= 17, "export: --opset %d: y5 writes opsets 12 to 17", opt.opset);
    float smax = 0;
    for (float s : m.detect->stride) smax = std::max(smax, s);
    Y5_CHECK(opt.height % (int)smax == 0 && opt.width % (int)smax == 0 && opt.height > 0 && opt.width > 0,
             "export: image size %dx%d is not a multiple of the largest stride %d", opt.height, opt.width, (int)smax);
    Y5_CHECK(opt.batch >= 1, "export: batch size %d", opt.batch);

    onnx::ModelProto model;
    model.set_ir_version(opt.opset >= 15 ? 8 : 7);
    model.set_producer_name("y5");
    model.set_producer_version("export");
    onnx::OperatorSetIdProto* ops = model.add_opset_import();
    ops->set_domain("");
    ops->set_version(opt.opset);
    for (auto [k, v] : {std::pair<std::string, std::string>{"stride", std::to_string((int)smax)}, {"names", names_repr(m)}}) {
        onnx::StringStringEntryProto* e = model.add_metadata_props();
        e->set_key(k), e->set_value(v);
    }
    onnx::GraphProto* g = model.mutable_graph();
    g->set_name("main_graph");
    Graph G{g, opt.half, opt.dynamic ? -1 : (int64_t)opt.batch, opt.opset, nullptr, {}};
    Emitter E{m, G, {}};
    for (int i = 0; i < m.params.size(); ++i) E.index[m.params[i].name] = i;

    const int elem = opt.half ? onnx::TensorProto::FLOAT16 : onnx::TensorProto::FLOAT;
    auto io = [&](onnx::ValueInfoProto* v, const char* name, const std::vector<std::pair<int64_t, std::string>>& dims) {
        v->set_name(name);
        onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
        t->set_elem_type(elem);
        for (const auto& [n, label] : dims) {
            onnx::TensorShapeProto_Dimension* d = t->mutable_shape()->add_dim();
            if (label.empty()) d->set_dim_value(n);
            else d->set_dim_param(label);
        }
    };
    const bool dy = opt.dynamic;
    io(g->add_input(), "images", {{opt.batch, dy ? "batch" : ""}, {3, ""}, {opt.height, dy ? "height" : ""},
                                  {opt.width, dy ? "width" : ""}});

    const std::vector<YAML::Node> rows = yaml_rows(m);
    std::vector<std::string> out(m.layers.size());
    std::vector<int64_t> hs(m.layers.size()), ws(m.layers.size());  // each row's output size, for the grids
    int64_t total = 0;
    for (size_t i = 0; i < m.layers.size(); ++i) {
        const Module& L = *m.layers[i];
        const std::string prefix = "model." + std::to_string(i), scope = "/" + prefix;
        const std::string type = L.type.substr(L.type.find_last_of('.') + 1);
        const YAML::Node args = rows[i][3];
        std::vector<std::string> in;
        std::vector<int64_t> ih, iw;
        for (int f : L.from) {
            in.push_back(f < 0 ? std::string("images") : out[f]);
            ih.push_back(f < 0 ? opt.height : hs[f]), iw.push_back(f < 0 ? opt.width : ws[f]);
        }
        std::string y;
        int64_t h = ih[0], w = iw[0];
        if (type == "Conv") {
            const int k = (int)E.param(prefix + ".conv.weight").shape[2];
            const int s = row_int(args, 2, 1), p = row_int(args, 3, k / 2);
            y = E.conv(prefix, in[0], s, p, row_bool(args, 6, true) ? m.act : kNoAct);
            h = (h + 2 * p - k) / s + 1, w = (w + 2 * p - k) / s + 1;
        } else if (type == "Focus") {  // space-to-depth: x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]
            const int k = (int)E.param(prefix + ".conv.conv.weight").shape[2];
            const int s = row_int(args, 2, 1), p = row_int(args, 3, k / 2);
            std::vector<std::string> parts;
            const int64_t big = INT64_MAX;
            for (auto [oy, ox] : {std::pair<int64_t, int64_t>{0, 0}, {1, 0}, {0, 1}, {1, 1}}) {
                const std::string tag = prefix + ".s2d." + std::to_string(oy) + std::to_string(ox);
                parts.push_back(G.node(scope, "Slice", {in[0], G.ints(tag + ".starts", {oy, ox}), G.ints(tag + ".ends", {big, big}),
                                                        G.ints(tag + ".axes", {2, 3}), G.ints(tag + ".steps", {2, 2})}));
            }
            y = E.conv(prefix + ".conv", E.concat(scope, parts, 1), s, p, row_bool(args, 5, true) ? m.act : kNoAct);
            h = (h / 2 + 2 * p - k) / s + 1, w = (w / 2 + 2 * p - k) / s + 1;
        } else if (type == "C3" || type == "Bottleneck") {
            const bool shortcut = row_bool(args, 1, true);
            if (type == "Bottleneck") {
                const Shape w1 = E.param(prefix + ".cv1.conv.weight").shape, w2 = E.param(prefix + ".cv2.conv.weight").shape;
                y = E.bottleneck(prefix, in[0], shortcut && w1[1] == w2[0]);
            } else {
                std::string x = E.conv(prefix + ".cv1", in[0], 1, 0, m.act);
                for (int j = 0; j < L.n; ++j) x = E.bottleneck(prefix + ".m." + std::to_string(j), x, shortcut);
                const std::string x2 = E.conv(prefix + ".cv2", in[0], 1, 0, m.act);
                y = E.conv(prefix + ".cv3", E.concat(scope, {x, x2}, 1), 1, 0, m.act);
            }
        } else if (type == "SPPF") {
            const int k = row_int(args, 1, 5);
            const std::string x = E.conv(prefix + ".cv1", in[0], 1, 0, m.act);
            const std::string y1 = E.maxpool(scope + "/m", x, k), y2 = E.maxpool(scope + "/m", y1, k);
            const std::string y3 = E.maxpool(scope + "/m", y2, k);
            y = E.conv(prefix + ".cv2", E.concat(scope, {x, y1, y2, y3}, 1), 1, 0, m.act);
        } else if (type == "SPP") {
            std::vector<int> ks = {5, 9, 13};
            if (args.size() > 1) {
                ks.clear();
                for (const auto& k : args[1]) ks.push_back(k.as<int>());
            }
            const std::string x = E.conv(prefix + ".cv1", in[0], 1, 0, m.act);
            std::vector<std::string> parts = {x};
            for (size_t j = 0; j < ks.size(); ++j) parts.push_back(E.maxpool(scope + "/m." + std::to_string(j), x, ks[j]));
            y = E.conv(prefix + ".cv2", E.concat(scope, parts, 1), 1, 0, m.act);
        } else if (type == "ECA") {  // x·σ(conv1d_k(mean_hw(x))) over channels, the conv as k×1 over (N, 1, C, 1)
            const Param& pw = E.param(prefix + ".conv.weight");  // (1, 1, k)
            const int64_t k = pw.shape[2], C = L.c2;
            const std::string pool = G.node(scope + "/avg_pool", "GlobalAveragePool", {in[0]});
            const std::string r = G.node(scope, "Reshape", {pool, G.ints(prefix + ".shape_n1c1", {G.bs, 1, C, 1})});
            const std::string c = G.node(scope + "/conv", "Conv", {r, G.floats(prefix + ".conv.weight", {1, 1, k, 1},
                                                                               pw.value.ptr<float>(), k)});
            G.attr("dilations", std::vector<int64_t>{1, 1});
            G.attr("group", (int64_t)1);
            G.attr("kernel_shape", std::vector<int64_t>{k, 1});
            G.attr("pads", std::vector<int64_t>{k / 2, 0, k / 2, 0});
            G.attr("strides", std::vector<int64_t>{1, 1});
            const std::string s = G.node(scope + "/sigmoid", "Sigmoid", {c});
            const std::string gate = G.node(scope, "Reshape", {s, G.ints(prefix + ".shape_nc11", {G.bs, C, 1, 1})});
            y = G.node(scope, "Mul", {in[0], gate});
        } else if (type == "Upsample") {  // torch's nn.Upsample(scale, 'nearest') at opset 12
            const int sc = row_int(args, 1, 2);
            y = G.node(scope, "Resize", {in[0], G.floats(prefix + ".roi", {0}, nullptr, 0, true),  // scales are f32 always
                                         G.floats(prefix + ".scales", {4}, std::vector<float>{1, 1, (float)sc, (float)sc}, true)});
            G.attr("coordinate_transformation_mode", std::string("asymmetric"));
            G.attr("cubic_coeff_a", -0.75f);
            G.attr("mode", std::string("nearest"));
            G.attr("nearest_mode", std::string("floor"));
            h *= sc, w *= sc;
        } else if (type == "Concat") {
            y = E.concat(scope, in, 1);
        } else if (type == "Detect") {
            std::vector<std::string> levels;
            for (size_t j = 0; j < in.size(); ++j) {
                levels.push_back(E.detect_level(prefix, (int)j, in[j], ih[j], iw[j], opt.dynamic));
                total += (int64_t)m.detect->na * ih[j] * iw[j];
            }
            y = E.concat(scope, levels, 1);
        } else {
            Y5_FAIL("export: %s row %zu: module %s has no ONNX form", m.yaml_path.c_str(), i, type.c_str());
        }
        out[i] = y, hs[i] = h, ws[i] = w;
    }
    // The last node's output is the graph's: renamed output0.
    onnx::NodeProto* last = G.last;
    Y5_CHECK(last->output(0) == out.back(), "export: the Detect row did not end the graph");
    last->set_output(0, "output0");
    io(g->add_output(), "output0", {{opt.batch, dy ? "batch" : ""}, {total, dy ? "anchors" : ""}, {m.detect->no, ""}});

    std::string bytes;
    Y5_CHECK(model.SerializeToString(&bytes), "%s: ONNX serialisation failed", path.c_str());
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        Y5_CHECK(f, "%s: cannot open for writing", tmp.c_str());
        f.write(bytes.data(), (std::streamsize)bytes.size());
        Y5_CHECK(f.good(), "%s: write failed (disk full?)", tmp.c_str());
    }
    Y5_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "%s: cannot rename %s onto it", path.c_str(), tmp.c_str());
}

void export_safetensors(const Model& m, const std::string& path, bool half) {
    std::string names;
    for (size_t i = 0; i < m.class_names.size(); ++i) names += (i ? "\n" : "") + m.class_names[i];
    std::map<std::string, std::string> meta;
    if (!names.empty()) meta["names"] = names;
    if (!half) {
        m.save_weights(path, meta);
        return;
    }
    // f16: save_safetensors writes f32/f64 only, so the (small) writer is here: header, then each tensor's
    // values rounded to nearest even, in parameter order.
    m.add_metadata(meta);
    nlohmann::json header = nlohmann::json::object();
    header["__metadata__"] = meta;
    std::string data;
    for (int i = 0; i < m.params.size(); ++i) {
        const Param& p = m.params[i];
        Y5_CHECK(p.value.device == Device::CPU && p.value.dtype == DType::F32, "export: %s must be f32 on the CPU",
                 p.name.c_str());
        const size_t off = data.size();
        for (int64_t j = 0; j < p.value.numel(); ++j) {
            const uint16_t b = f32_to_f16(p.value.ptr<float>()[j]).bits;
            data.append((const char*)&b, 2);
        }
        header[p.name] = {{"dtype", "F16"},
                          {"shape", std::vector<int64_t>(p.shape.d, p.shape.d + p.shape.ndim)},
                          {"data_offsets", {off, data.size()}}};
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');
    const uint64_t hlen = h.size();
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        Y5_CHECK(f, "%s: cannot open for writing", tmp.c_str());
        f.write((const char*)&hlen, 8);
        f.write(h.data(), (std::streamsize)h.size());
        f.write(data.data(), (std::streamsize)data.size());
        Y5_CHECK(f.good(), "%s: write failed (disk full?)", tmp.c_str());
    }
    Y5_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "%s: cannot rename %s onto it", path.c_str(), tmp.c_str());
}

}  // namespace y5
