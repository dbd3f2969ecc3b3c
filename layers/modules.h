/*
 * YOLOv5's modules (models/common.py, models/yolo.py Detect) on y5's ops. Each module registers its
 * parameters in the model's ParamStore under their PyTorch state_dict names ("model.2.m.0.cv1.conv.weight")
 * when built, and on every forward wraps them as tape parameters, so their gradients land in the
 * gradient block. Shapes are (N,C,H,W); Detect's training output is YOLOv5's (bs, na, ny, nx, no) maps.
 * Besides forward, each module answers the questions YOLOv5's model summary asks: output shape (for the
 * strides' dry run), multiply-accumulates as thop counts them (for GFLOPs), and how many nn.Module
 * instances PyTorch would list (for "N layers").
 */
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "engine/autograd/params.h"

namespace y5 {

constexpr float kBnEps = 1e-3f;       // YOLOv5 initialize_weights
constexpr float kBnMomentum = 0.03f;

// Ultralytics Conv: Conv2d(c1, c2, k, s, k//2, bias=False) → BatchNorm2d → activation.
struct ConvBN {
    int c1 = 0, c2 = 0, k = 1, s = 1, p = 0;
    Act act;
    ParamStore* ps = nullptr;
    int w = -1, bn_w = -1, bn_b = -1, rm = -1, rv = -1;

    void setup(ParamStore& store, const std::string& prefix, int c1, int c2, int k, int s, int p, Act act);
    // conv → BN(+act); in inference with the tape off, a fused store's folded conv + bias → act instead.
    Var forward(Ctx& c, const Var& x, bool training) const;
    // The input as channel parts of a concat that was never built (a Concat's or C3's inputs): a 1×1 conv reads
    // them in place (conv2d_parts); any other kernel size concatenates them first.
    Var forward(Ctx& c, const std::vector<Var>& parts, bool training) const;
    Shape out_shape(Shape in) const;
    int64_t conv_out(int64_t h) const;
    double macs(Shape in) const;  // conv + BN (thop counts BN as 4 per element)
    int64_t values(Shape in) const { return out_shape(in).numel(); }
    int64_t params() const { return (int64_t)c2 * c1 * k * k + 2 * c2; }
};

struct Module {
    int index = 0;            // row in the model yaml
    std::vector<int> from;    // absolute rows; −1 is the model's input
    std::string from_str;     // the yaml "from" as printed ("-1", "[-1, 6]")
    int n = 1;                // repeats, as printed
    std::string type;         // "models.common.C3", as printed
    std::string args;         // constructor arguments in Python's repr, as YOLOv5 prints them
    int c2 = 0;               // output channels
    int64_t nparams = 0;

    virtual ~Module() = default;
    // Detect returns its nl maps; Concat the channel parts of its output, unconcatenated; every other module one
    // tensor. `in` holds one tensor per `from` row, except for modules that take parts, which get a Concat's
    // parts as they are (the model concatenates them for every other module).
    virtual std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) = 0;
    virtual bool takes_parts() const { return false; }
    virtual Shape out_shape(const std::vector<Shape>& in) const = 0;
    virtual double macs(const std::vector<Shape>& in) const = 0;
    virtual int torch_modules() const = 0;
    // Elements of every convolution output the module computes for these inputs: what a backward must keep at
    // least (bench_step's physical floor of the stored activations).
    virtual int64_t conv_values(const std::vector<Shape>&) const { return 0; }
};

std::unique_ptr<Module> make_conv(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, int s, int p, Act act);
std::unique_ptr<Module> make_c3(ParamStore& ps, const std::string& prefix, int c1, int c2, int n, bool shortcut, Act act);
std::unique_ptr<Module> make_bottleneck(ParamStore& ps, const std::string& prefix, int c1, int c2, bool shortcut, Act act);
std::unique_ptr<Module> make_sppf(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, Act act);
std::unique_ptr<Module> make_spp(ParamStore& ps, const std::string& prefix, int c1, int c2, std::vector<int> ks, Act act);
std::unique_ptr<Module> make_focus(ParamStore& ps, const std::string& prefix, int c1, int c2, int k, int s, int p, Act act);
std::unique_ptr<Module> make_eca(ParamStore& ps, const std::string& prefix, int c, int k);
std::unique_ptr<Module> make_upsample(int c, int scale);
std::unique_ptr<Module> make_concat(int c2);

// Detect: per level a 1×1 Conv2d with bias to na·(5+nc) channels, anchors (nl, na, 2) in grid units as a buffer.
struct Detect : Module {
    int nc = 0, no = 0, nl = 0, na = 0;
    std::vector<int> ch;
    std::vector<float> stride;             // per level, set by the model's dry run
    std::vector<float> anchors_px;         // (nl, na, 2) as written in the yaml, pixels
    ParamStore* ps = nullptr;
    std::vector<int> w, b;                 // per level
    int anchors = -1;                      // buffer "model.N.anchors", grid units after the model is built

    std::vector<Var> forward(Ctx& c, const std::vector<Var>& in, bool training) override;
    Shape out_shape(const std::vector<Shape>& in) const override { return in[0]; }
    double macs(const std::vector<Shape>& in) const override;
    int torch_modules() const override { return 2 + nl; }  // Detect, ModuleList, nl Conv2d
    int64_t conv_values(const std::vector<Shape>& in) const override {
        int64_t v = 0;
        for (int i = 0; i < nl; ++i) v += in[i][0] * na * no * in[i][2] * in[i][3];
        return v;
    }
    // Decoded predictions (bs, Σ na·ny·nx, no) from the maps, in pixels of the input (no gradient).
    Tensor decode(Ctx& c, const std::vector<Var>& maps) const;
};

std::unique_ptr<Detect> make_detect(ParamStore& ps, const std::string& prefix, int nc,
                                    const std::vector<std::vector<float>>& anchors, const std::vector<int>& ch);

}  // namespace y5
