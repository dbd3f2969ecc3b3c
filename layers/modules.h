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
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops/ops.h"
#include "engine/autograd/params.h"
#include "kernels/conv2d_dnnl.h"

namespace y5 {

constexpr float kBnEps = 1e-3f;       // YOLOv5 initialize_weights
constexpr float kBnMomentum = 0.03f;

// ---- The fused model's blocked CPU inference (Model::forward on the CPU with oneDNN, kernels/conv2d_dnnl.h): one
// image at a time through forward_blocked, every output a BT in oneDNN's channel-blocked layout, the activations
// and a Bottleneck's add inside the convolutions, the concatenations built by the convolutions writing into their
// halves (C3, SPPF) or copied as whole blocks (Concat), so no reorder runs between layers.
struct BT {
    float* p = nullptr;
    int c = 0, h = 0, w = 0;
    bool nchw = false;  // the model's input image; every other BT is blocked
    BT part(int c0, int n, int B) const { return BT{p + (int64_t)c0 / B * B * h * w, n, h, w}; }  // c0 % B == 0
};
// The convolutions' weights reordered once into the layouts their primitives take; shared by the threads' runs
// and by the input sizes whose primitives take the same layout (y5detect's letterboxed shapes).
struct BlockedWeights {
    const void* get(const float* weight, const BConv& g, Act act, bool add);
    size_t bytes() const;
private:
    struct Free {
        void operator()(float* p) const { std::free(p); }
    };
    struct Copy {
        std::unique_ptr<float, Free> mem;  // std::aligned_alloc'd (64 bytes: oneDNN's Winograd kernels need it)
        size_t bytes = 0;
    };
    mutable std::mutex mu_;
    std::map<std::pair<const float*, uint64_t>, Copy> m_;  // (weights, layout)
};
// One thread's run: its arena (chunks kept from image to image, so after the first image nothing is allocated).
struct BRun {
    int B = 0;        // channel block
    int threads = 1;  // oneDNN's OpenMP team for one image (1 when the images go over y5's threads)
    BlockedWeights* weights = nullptr;
    void par(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const { dnnl_omp_for(threads, n, fn); }
    BT alloc(int c, int h, int w);  // (⌈c/B⌉, h, w, B) floats
    float* scratch(size_t n);
    void reset() { chunk_ = 0, used_ = 0; }
    size_t bytes() const;  // the arena's size

private:
    struct Free {
        void operator()(float* p) const { std::free(p); }
    };
    struct Chunk {
        std::unique_ptr<float, Free> mem;  // std::aligned_alloc'd: 64-byte lines
        size_t n = 0;
    };
    std::vector<Chunk> chunks_;
    size_t chunk_ = 0, used_ = 0;
};

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
    // Blocked inference (a fused model): into *into (its channels), else a new BT; plus *addend if given.
    BT forward_blocked(BRun& r, const BT& x, const BT* into = nullptr, const BT* addend = nullptr) const;
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
    // The blocked CPU inference of this row (BRun, BT): whether the module has it for channel block B (its
    // concatenations must be of whole blocks, its activations oneDNN post-ops) and an NCHW input if nchw_in;
    // forward_blocked runs it on one image.
    virtual bool blocked(int, bool) const { return false; }
    virtual BT forward_blocked(BRun&, const std::vector<BT>&) const { Y5_FAIL("no blocked inference for this module"); }
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
    // Blocked inference: image n's maps (maps[i] (bs, na, ny, nx, no)) and its rows of the decoded predictions
    // (bs, Σ na·ny·nx, no), f32 on the CPU, from the levels' inputs.
    bool blocked(int, bool nchw_in) const override { return !nchw_in; }
    void forward_blocked(BRun& r, const std::vector<BT>& in, const std::vector<Tensor>& maps, const Tensor& decoded,
                         int64_t n) const;
    // Decoded predictions (bs, Σ na·ny·nx, no) from the maps, in pixels of the input (no gradient).
    Tensor decode(Ctx& c, const std::vector<Var>& maps) const;
};

std::unique_ptr<Detect> make_detect(ParamStore& ps, const std::string& prefix, int nc,
                                    const std::vector<std::vector<float>>& anchors, const std::vector<int>& ch);

}  // namespace y5
