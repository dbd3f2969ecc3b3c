/*
 * A YOLOv5 v6/v7 detection model built from its yaml, with YOLOv5's parse_model semantics:
 * rows [from, number, module, args]; depth_multiple (n = max(round(n·gd), 1) when n > 1, Python's
 * round-half-even); width_multiple (make_divisible(c·gw, 8)); the `activation:` key; nc and anchors.
 * Strides come from a dry run of the shapes at 256×256, anchors are divided by them and put in
 * ascending order (check_anchor_order), and init follows YOLOv5 (PyTorch's default conv init,
 * BN 1/0 with eps 1e-3 and momentum 0.03, Detect's bias priors).
 * forward(training) gives the Detect maps (bs, na, ny, nx, 5+nc); forward(eval) also the decoded
 * predictions (bs, N, 5+nc) in input pixels.
 */
#pragma once
#include <map>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/rng.h"
#include "layers/modules.h"

namespace y5 {

struct WeightSource;  // a weights file's tensors by state_dict name (model.cpp)

class Model {
public:
    // Parses and builds the graph and registers every parameter; nc > 0 overrides the yaml's nc.
    explicit Model(const std::string& yaml_path, int nc = 0);
    // The same from yaml text; yaml_path only names it (messages, the model's name).
    Model(const std::string& yaml_path, const std::string& yaml_text, int nc);
    // The model a weights file describes, weights loaded, on the CPU or, given a context, on its CUDA device:
    // a y5 .safetensors (its metadata holds the yaml, nc and class names) or a YOLOv5 .pt/.pth checkpoint (the
    // model's yaml dict, nc, names, strides and the weights of `ema` if present, else `model`, fp16 or fp32;
    // read by engine/core/torch_pt.h, which runs no pickled code).
    static std::unique_ptr<Model> from_weights(const std::string& weights_path, CudaContext* cuda = nullptr);
    // train.py's Model(cfg, anchors=hyp['anchors']): the yaml text with its `anchors:` entry replaced by na
    // placeholder anchors per level, YOLOv5's [list(range(na * 2))] * nl (nl: the yaml's anchor levels), for
    // AutoAnchor to fit before training. The rest of the text is kept as it is.
    static std::string override_anchors(const std::string& path, const std::string& yaml_text, int na);
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    // Allocates the parameter blocks on a device, sets the anchor buffer, and initialises as YOLOv5.
    void allocate(Device device, DType dtype = DType::F32, CudaContext* cuda = nullptr);
    void init_weights(Rng& rng);

    struct Output {
        std::vector<Var> maps;  // per level (bs, na, ny, nx, 5+nc)
        Tensor decoded;         // eval only: (bs, Σ na·ny·nx, 5+nc)
    };
    // layer_outputs, if given, receives every row's output (Detect's first map for the Detect row; a Concat's
    // parts concatenated). after_layer, if given, is called after each row (bench_step's per-layer timing).
    Output forward(Ctx& c, const Var& x, bool training, std::vector<Var>* layer_outputs = nullptr,
                   const std::function<void(size_t)>& after_layer = {});

    std::string summary(int imgsz = 640) const;  // YOLOv5's table and "N layers, P parameters, ... GFLOPs"
    int64_t num_parameters() const { return params.count(true); }
    int torch_layer_count() const;               // len(list(model.modules())) in PyTorch
    double gflops(int imgsz = 640) const;        // as YOLOv5's model_info (thop at max(stride, 32), scaled)
    // Detect's anchors (nl, na, 2) in grid units, where the loss reads them: on the host. A CPU model's own
    // buffer; for a device model a copy downloaded once into *keep, so no training step downloads them.
    Tensor loss_anchors(std::vector<float>* keep) const;

    // YOLOv5's model.fuse() (fuse_conv_and_bn), for inference: every Conv's BatchNorm folded into its weight,
    // w' = w·γ/√(var+eps), and a bias, b' = β − γ·mean/√(var+eps), in the store's dtype (f32 as PyTorch), kept in
    // a separate store on the model's device (computed on the host: once, not per step). Eval forwards with the
    // tape off then run conv+bias → act per Conv. A snapshot of the weights: load_weights and init_weights fold
    // again; a training forward of a fused model is an error (unfuse() first). detect.py, val.py and train.py's
    // final validation of best.pt fuse; train.py's per-epoch validation of the EMA does not.
    void fuse();
    void unfuse();
    bool fused() const { return folded_ != nullptr; }
    // A fused f32 model's eval forward on the CPU (tape off, no autocast) runs in oneDNN's blocked layout (BRun,
    // layers/modules.h) when oneDNN is on, the CPU has a block (dnnl_block) and every row has the blocked path;
    // false: never (the plain path, which keeps y5's own SiLU: tests and benches compare the two). The runs'
    // arenas stay allocated. runs_blocked: whether x would take it (autocast aside); blocks_when_fused: whether
    // the model itself would (on the CPU in f32 with every row's blocked path), fused or not yet.
    bool blocked_inference = true;
    // false: the blocked path gives no maps (Output::maps empty; only the decoded predictions), for callers that
    // compute no loss (y5detect, bench_detect): Detect's maps are not written out (8.7 MB per 640 image).
    bool inference_maps = true;
    bool runs_blocked(const Var& x) const;
    bool blocks_when_fused() const;
    size_t blocked_bytes() const;  // the runs' arenas and reordered weights (host memory outside the Ctx's arenas)

    // safetensors with state_dict names. Missing, unexpected or mis-shaped tensors are one error naming them.
    // prefix "" reads model.*; "ema." reads ema.model.* (a training checkpoint's EMA weights).
    void load_weights(const std::string& path, CudaContext* cuda = nullptr, const std::string& prefix = "");
    void save_weights(const std::string& path, const std::map<std::string, std::string>& metadata,
                      CudaContext* cuda = nullptr) const;

    // Fine-tuning, as train.py with --weights. weights_yaml: the file's model yaml, {file name, text} (a .pt's
    // ckpt['model'].yaml, y5's metadata), for a model built without --cfg. transfer_weights: utils/general.py's
    // intersect_dicts + load_state_dict(strict=False): each tensor of the file (a .pt's 'model', as train.py reads
    // it, not its EMA; a y5 file's model.*) whose name is one of the model's, with the same shape and none of the
    // `exclude` substrings in its name, is copied in; the other parameters keep their values. The counts are
    // train.py's "Transferred N/M items": M = len(model.state_dict()), which holds each BatchNorm's
    // num_batches_tracked (y5 keeps none; counted, and transferred when the file has them: .pt files do).
    static std::pair<std::string, std::string> weights_yaml(const std::string& weights_path);
    struct Transfer {
        int transferred = 0, total = 0;
    };
    Transfer transfer_weights(const std::string& weights_path, const std::vector<std::string>& exclude,
                              CudaContext* cuda = nullptr);

    // The yaml text, its file name and nc: what from_weights needs to rebuild the model from a weights file.
    void add_metadata(std::map<std::string, std::string>& meta) const;

    ParamStore params;
    std::string yaml_path, yaml_text, name;  // name: "YOLOv5n", as YOLOv5 derives it from the file name
    int nc = 0;
    std::vector<std::string> class_names;    // from_weights: the file's class names, when it has them
    Act act;
    std::vector<std::unique_ptr<Module>> layers;
    Detect* detect = nullptr;

private:
    static std::unique_ptr<Model> from_torch_pt(const std::string& path, CudaContext* cuda);
    void load_tensors(const WeightSource& src, CudaContext* cuda, const std::string& prefix);
    std::unique_ptr<ParamStore> folded_;  // fuse(): "<conv>.conv.weight" / "<conv>.conv.bias", as buffers
    Output forward_blocked(Ctx& c, const Var& x);
    std::unique_ptr<BlockedWeights> bweights_;  // fuse(): reset, as the folds change
    std::vector<std::unique_ptr<BRun>> bruns_;  // one per thread running images
    std::vector<std::string> labels_;     // "model.3 Conv": the activation arena's labels per row (Arena::set_label)
};

}  // namespace y5
