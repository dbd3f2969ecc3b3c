/*
 * The training loop of YOLOv5 v7.0's train.py on y5's engine. One loop for both devices: the model, EMA,
 * arenas and tape live on the chosen device, targets and the schedule on the host, and checkpoints are
 * written from host copies.
 */
#include "engine/app/train.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>
#include <yaml-cpp/yaml.h>

#include "kernels/check.h"
#include "engine/data/dataset.h"
#include "engine/device/device.h"
#include "engine/app/config.h"
#include "engine/app/autoanchor.h"
#include "engine/app/hyp.h"
#include "engine/data/loader.h"
#include "engine/autograd/optim.h"
#include "engine/app/plots.h"
#include "engine/core/safetensors.h"
#include "engine/app/val.h"
#include "engine/app/memory.h"
#include "engine/app/step.h"
#include "layers/model.h"
#include "layers/yolo.h"
#if Y5_CUDA
#include "kernels/conv2d.h"
#endif

namespace fs = std::filesystem;

namespace y5 {

namespace {

std::string increment_path(const std::string& base, bool exist_ok) {
    if (exist_ok || !fs::exists(base)) return base;
    for (int n = 2;; ++n)
        if (!fs::exists(base + std::to_string(n))) return base + std::to_string(n);
}

// A host copy of t (itself when t is already on the host); keep owns the copied bytes.
Tensor host_view(const Tensor& t, std::vector<std::vector<char>>& keep, CudaContext* cuda) {
    if (t.device == Device::CPU) return t;
    keep.emplace_back(t.bytes());
    copy_device_to_host(keep.back().data(), t.data, t.bytes(), cuda);
    return Tensor(keep.back().data(), t.shape, t.dtype, Device::CPU);
}

std::string results_header() {
    const char* keys[] = {"epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                          "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                          "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"};
    std::string s;
    char b[64];
    for (const char* k : keys) {
        snprintf(b, sizeof b, "%20s,", k);
        s += b;
    }
    s.pop_back();
    return s + "\n";
}

std::string results_row(int epoch, const std::vector<double>& vals) {
    char b[64];
    snprintf(b, sizeof b, "%20.5g,", (double)epoch);
    std::string s = b;
    for (double v : vals) {
        snprintf(b, sizeof b, "%20.5g,", v);
        s += b;
    }
    s.pop_back();
    return s + "\n";
}

struct TrainState {
    int64_t last_opt_step = -1;
    int accumulate = 1;
    std::string maps;  // --image-weights: the last validation's per-class mAP50-95, comma-separated ("" otherwise)
};

// The checkpoint file's bytes (path names it in errors): the live model, the EMA and the optimizer state
// (with_state), or the EMA alone as the model (strip_optimizer's file).
std::vector<char> checkpoint_bytes(const std::string& path, const Model& live, const Model* ema, bool with_state, int epoch,
                                   double best_fitness, int64_t updates, const std::string& opt_yaml,
                                   const std::string& names, const TrainState& ts = {}, const GradScaler* scaler = nullptr,
                                   const Optimizer* optim = nullptr) {
    std::vector<SaveItem> items;
    std::vector<std::vector<char>> keep;  // host copies of device tensors
    CudaContext* cuda = live.params.cuda();
    auto add_all = [&](const Model& m, const std::string& prefix) {
        for (int i = 0; i < m.params.size(); ++i)
            items.push_back({prefix + m.params[i].name, host_view(m.params[i].value, keep, cuda)});
    };
    if (with_state) {
        add_all(live, "");
        if (ema) add_all(*ema, "ema.");
        const bool adam = optim && optim->kind != OptimizerKind::SGD;  // Adam's exp_avg is the momentum block
        for (int i = 0; i < live.params.size(); ++i)
            if (live.params[i].trainable()) {
                const std::string& n = live.params[i].name;
                items.push_back({(adam ? "optimizer.exp_avg." : "optimizer.momentum.") + n,
                                 host_view(live.params.momentum(i), keep, cuda)});
                if (adam) {
                    const Tensor v = optim->exp_avg_sq(live.params, i);
                    items.push_back({"optimizer.exp_avg_sq." + n, host_view(v, keep, cuda)});
                }
                // gradients accumulated since the last step, so a resumed run continues exactly
                items.push_back({"optimizer.grad." + live.params[i].name, host_view(live.params[i].grad, keep, cuda)});
            }
    } else {
        add_all(ema ? *ema : live, "");  // a stripped checkpoint: the EMA weights as the model, as strip_optimizer
    }
    std::map<std::string, std::string> meta = {{"format", "y5 checkpoint v1"},
                                               {"epoch", std::to_string(epoch)},
                                               {"best_fitness", std::to_string(best_fitness)},
                                               {"updates", std::to_string(updates)},
                                               {"opt", opt_yaml},
                                               {"names", names},
                                               {"last_opt_step", std::to_string(ts.last_opt_step)},
                                               {"accumulate", std::to_string(ts.accumulate)}};
    if (!ts.maps.empty()) meta["maps"] = ts.maps;
    if (optim) meta["optimizer"] = optimizer_name(optim->kind);
    if (optim && optim->kind != OptimizerKind::SGD)  // torch's state['step'] per group, for the bias correction
        meta["adam_step"] = std::to_string(optim->steps[0]) + "," + std::to_string(optim->steps[1]) + "," +
                            std::to_string(optim->steps[2]);
    if (scaler) {  // mixed precision: the GradScaler's state_dict, so a resumed run keeps its loss scale
        char b[32];
        snprintf(b, sizeof b, "%.9g", (double)scaler->loss_scale());
        meta["amp_scale"] = b;
        meta["amp_growth_tracker"] = std::to_string(scaler->growth_tracker());
    }
    live.add_metadata(meta);
    return safetensors_bytes(items, meta, path);
}

// Checkpoints written by a background thread while the next epoch trains: last and best are 4 copies of the
// parameters each (28 MB for yolov5n), and writing them held the demo's 2.5 s epochs up by 0.1-0.35 s on a shared
// disk. One write in flight: the next save, the end of training and an early return wait for it, and its error
// (disk full, ...) is raised there, or at the first step after it failed (check). The files of one epoch are one
// write (write_files_atomic's hard links).
struct CheckpointWriter {
    std::future<void> pending;
    void wait() {
        if (pending.valid()) pending.get();
    }
    void check() {
        if (pending.valid() && pending.wait_for(std::chrono::seconds(0)) == std::future_status::ready) pending.get();
    }
    template <class Bytes> void write(std::vector<std::string> paths, Bytes&& make_bytes) {
        wait();  // before the new copy is made: one checkpoint in memory at a time
        pending = std::async(std::launch::async, [p = std::move(paths), b = make_bytes()] { write_files_atomic(p, b); });
    }
    ~CheckpointWriter() {  // leaving on an error: the write in flight still lands
        try {
            wait();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
        }
    }
};

std::string fmt_mem(size_t b) {
    char s[16];
    snprintf(s, sizeof s, "%.3gG", b / 1e9);
    return s;
}

}  // namespace

// The newest runs/train/*/weights/last.safetensors (YOLOv5's get_latest_run).
static std::string latest_run() {
    std::string best;
    fs::file_time_type t{};
    if (fs::exists("runs/train"))
        for (const auto& e : fs::directory_iterator("runs/train")) {
            const fs::path p = e.path() / "weights" / "last.safetensors";
            if (fs::exists(p) && (best.empty() || fs::last_write_time(p) > t)) best = p.string(), t = fs::last_write_time(p);
        }
    Y5_CHECK(!best.empty(), "--resume: no runs/train/*/weights/last.safetensors to resume");
    return best;
}

// The options a checkpoint was trained with (its opt.yaml, kept in the metadata).
static TrainOptions options_from(const std::string& ckpt) {
    SafeTensorsFile f(ckpt);
    Y5_CHECK(f.metadata().count("opt"), "%s: not a y5 training checkpoint (no options in its metadata)", ckpt.c_str());
    bool has_state = false;
    for (const std::string& n : f.names()) has_state = has_state || n.rfind("ema.", 0) == 0;
    Y5_CHECK(has_state, "%s: this run has finished (its checkpoint was stripped); nothing to resume", ckpt.c_str());
    YAML::Node y = YAML::Load(f.metadata().at("opt"));
    TrainOptions o;
    auto str = [&](const char* k) { return y[k] && !y[k].IsNull() ? y[k].as<std::string>() : std::string(); };
    o.weights = str("weights"), o.cfg = str("cfg"), o.data = str("data"), o.hyp = str("hyp");
    o.epochs = y["epochs"].as<int>(), o.batch_size = y["batch_size"].as<int>(), o.imgsz = y["imgsz"].as<int>();
    o.rect = y["rect"].as<bool>(), o.nosave = y["nosave"].as<bool>(), o.noval = y["noval"].as<bool>();
    if (y["noautoanchor"]) o.noautoanchor = y["noautoanchor"].as<bool>();  // older checkpoints: the default
    o.cache = str("cache"), o.device = str("device"), o.single_cls = y["single_cls"].as<bool>();
    o.workers = y["workers"].as<int>(), o.project = str("project"), o.name = str("name");
    o.cos_lr = y["cos_lr"].as<bool>(), o.label_smoothing = y["label_smoothing"].as<double>();
    o.patience = y["patience"].as<int>(), o.save_period = y["save_period"].as<int>(), o.seed = y["seed"].as<int>();
    if (y["deterministic"]) o.deterministic = y["deterministic"].as<bool>();  // runs before these options: defaults
    if (y["workspace"]) o.workspace_mib = y["workspace"].as<int>();
    if (y["amp"]) o.amp = y["amp"].as<bool>() ? 1 : 0;
    if (y["recompute"] && !y["recompute"].IsNull()) o.recompute = y["recompute"].as<bool>() ? 1 : 0;
    if (y["optimizer"]) o.optimizer = y["optimizer"].as<std::string>();  // older checkpoints: SGD
    if (y["noplots"]) o.noplots = y["noplots"].as<bool>();
    if (y["sync_bn"]) o.sync_bn = y["sync_bn"].as<bool>();
    if (y["freeze"]) o.freeze = y["freeze"].as<std::vector<int>>();
    if (y["image_weights"]) o.image_weights = y["image_weights"].as<bool>();
    if (y["quad"]) o.quad = y["quad"].as<bool>();
    if (y["multi_scale"]) o.multi_scale = y["multi_scale"].as<bool>();
    if (y["cuda_graph"]) o.cuda_graph = y["cuda_graph"].as<bool>();
    o.exist_ok = true;
    o.resume = ckpt;
    return o;
}

// options_from with a malformed, missing or mistyped stored field named by its checkpoint.
static TrainOptions resume_options(const std::string& ckpt) {
    try {
        return options_from(ckpt);
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: the training options stored in the checkpoint cannot be read: %s", ckpt.c_str(), e.what());
    }
}

// Where a resumed run writes: the folder recorded in its options (train.py: opt.save_dir), wherever the checkpoint
// now is; for checkpoints without it, the checkpoint's run folder.
static std::string recorded_save_dir(const std::string& ckpt) {
    SafeTensorsFile f(ckpt);
    const YAML::Node y = YAML::Load(f.metadata().at("opt"));
    if (y["save_dir"] && y["save_dir"].IsScalar() && !y["save_dir"].Scalar().empty()) return y["save_dir"].Scalar();
    return fs::path(ckpt).parent_path().parent_path().string();
}

void set_conv_options(bool deterministic, int workspace_mib) {
    Y5_CHECK(workspace_mib >= 0 && workspace_mib <= (1 << 20), "--workspace %d: the cuDNN workspace cap is in MiB, "
             "from 0 (algorithms that need none where there is one) to 1048576", workspace_mib);
#if Y5_CUDA
    conv_set_deterministic(deterministic);
    conv_set_workspace_limit((size_t)workspace_mib << 20);
#else
    (void)deterministic;
#endif
}

std::string train(const TrainOptions& opt_in, std::vector<double>* results) {
    TrainOptions opt = opt_in.resume.empty() ? opt_in : resume_options(opt_in.resume == "latest" ? latest_run() : opt_in.resume);
    if (opt.evolve) opt.noplots = true;  // train.py: plots = not evolve and not noplots
    // Bare yaml names (--cfg yolov5n.yaml) as train.py finds them, before any dataset work.
    Y5_CHECK(!opt.cfg.empty() || !opt.weights.empty(), "--cfg or --weights is needed: the model comes from one of them");
    if (!opt.cfg.empty()) opt.cfg = resolve_config(opt.cfg, "models", "--cfg");
    opt.data = resolve_config(opt.data, "data", "--data");
    if (!opt.hyp.empty()) opt.hyp = resolve_config(opt.hyp, "hyps", "--hyp");
    set_conv_options(opt.deterministic, opt.workspace_mib);  // before the memory plan measures (engine/app/memory.h)
    const OptimizerKind optimizer_kind = parse_optimizer(opt.optimizer);
    const int device_index = parse_device(opt.device);
    const Device dev = device_index >= 0 ? Device::CUDA : Device::CPU;
    CudaContext* cuda = dev == Device::CUDA ? cuda_context_create(device_index) : nullptr;
    struct CudaRelease {
        CudaContext* c;
        ~CudaRelease() { cuda_context_destroy(c); }
    } cuda_release{cuda};
    Ctx dctx;  // for copies between host and device
    dctx.cuda = cuda;
    const bool amp = opt.amp < 0 ? dev == Device::CUDA : opt.amp == 1;
    bool recompute = opt.recompute < 0 ? dev == Device::CUDA : opt.recompute == 1;
    Y5_CHECK(opt.epochs >= 1 && opt.batch_size >= 1, "--epochs and --batch-size must be at least 1");
    Y5_CHECK(opt.cache.empty() || opt.cache == "ram" || opt.cache == "disk", "--cache %s: 'ram' or 'disk'",
             opt.cache.c_str());
    Y5_CHECK(!(opt.image_weights && opt.rect), "--image-weights with --rect: rect batches need the sorted order");
    const bool resuming = !opt.resume.empty();
    const std::string save_dir = resuming ? recorded_save_dir(opt.resume)
                                          : increment_path(opt.project + "/" + opt.name, opt.exist_ok);
    fs::create_directories(opt.evolve ? save_dir : save_dir + "/weights");
    const std::string w_last = save_dir + "/weights/last.safetensors", w_best = save_dir + "/weights/best.safetensors";

    const std::string hyp_path = opt.hyp.empty() ? resolve_config("hyp.scratch-low.yaml", "hyps", "--hyp") : opt.hyp;
    Hyp hyp = load_hyp(hyp_path);
    for (const auto& [k, x] : opt.hyp_values) hyp.v[k] = x;  // --evolve's generation
    std::printf("%s\n", hyp_line(hyp_path, hyp, isatty(fileno(stdout))).c_str());  // train.py's first line
    DataConfig data = load_data_yaml(opt.data);
    if (!data.root_note.empty()) std::printf("%s\n", data.root_note.c_str());
    const int nc = opt.single_cls ? 1 : data.nc;
    std::vector<std::string> names = opt.single_cls ? std::vector<std::string>{"item"} : data.names;
    std::string names_meta;  // class names, one per line, in the checkpoints' metadata
    for (const std::string& n : names) names_meta += (names_meta.empty() ? "" : "\n") + n;

    // opt.yaml (also kept in every checkpoint's metadata, where --resume reads it back).
    auto yn = [](bool b) { return b ? "true" : "false"; };
    std::string freeze_list;
    for (int f : opt.freeze) freeze_list += (freeze_list.empty() ? "" : ", ") + std::to_string(f);
    // Strings as YAML reads them back (--resume): plain when they are a plain string to YAML (letters, digits,
    // _ . / + -, not a number, bool or null), as yaml.safe_dump leaves them; else double-quoted with escapes.
    auto q = [](const std::string& v) {
        std::string low = v;
        for (char& c : low) c = (char)std::tolower((unsigned char)c);
        bool plain = !v.empty() && (std::isalpha((unsigned char)v[0]) || v[0] == '_' || v[0] == '/') &&
                     low != "true" && low != "false" && low != "yes" && low != "no" && low != "on" && low != "off" &&
                     low != "null" && low != "y" && low != "n" && low != ".inf" && low != ".nan";
        for (char c : v) plain = plain && (std::isalnum((unsigned char)c) || std::strchr("_./+-", c));
        if (plain) return v;
        std::string t = "\"";
        for (unsigned char c : v) {
            if (c == '"' || c == '\\') {
                t += '\\';
                t += (char)c;
            } else if (c < 0x20 || c == 0x7f) {
                char b[8];
                snprintf(b, sizeof b, "\\x%02x", c);
                t += b;
            } else {
                t += (char)c;
            }
        }
        return t + "\"";
    };
    std::ostringstream oy;
    oy << "weights: " << q(opt.weights) << "\ncfg: " << q(opt.cfg) << "\ndata: " << q(opt.data) << "\nhyp: " << q(hyp_path)
       << "\nepochs: " << opt.epochs << "\nbatch_size: " << opt.batch_size << "\nimgsz: " << opt.imgsz
       << "\nrect: " << yn(opt.rect) << "\nnosave: " << yn(opt.nosave) << "\nnoval: " << yn(opt.noval)
       << "\nnoautoanchor: " << yn(opt.noautoanchor) << "\nimage_weights: " << yn(opt.image_weights)
       << "\nquad: " << yn(opt.quad) << "\nmulti_scale: " << yn(opt.multi_scale)
       << "\ncache: " << (opt.cache.empty() ? "null" : q(opt.cache)) << "\ndevice: " << q(opt.device)
       << "\nsingle_cls: " << yn(opt.single_cls) << "\nworkers: " << opt.workers << "\nproject: " << q(opt.project)
       << "\nname: " << q(opt.name) << "\nexist_ok: " << yn(opt.exist_ok) << "\ncos_lr: " << yn(opt.cos_lr)
       << "\nlabel_smoothing: " << opt.label_smoothing << "\npatience: " << opt.patience
       << "\nsave_period: " << opt.save_period << "\nseed: " << opt.seed << "\ndeterministic: " << yn(opt.deterministic)
       << "\nworkspace: " << opt.workspace_mib << "\namp: " << yn(amp) << "\nrecompute: " << (opt.recompute < 0 ? "null" : yn(opt.recompute == 1))
       << "\ncuda_graph: " << yn(opt.cuda_graph) << "\nfreeze: [" << freeze_list << "]\noptimizer: " << q(opt.optimizer) << "\nsync_bn: " << yn(opt.sync_bn) << "\nnoplots: " << yn(opt.noplots)
       << "\nsave_dir: " << q(save_dir) << "\n";
    int start_epoch = 0;
    const std::string opt_yaml = oy.str();
    if (!resuming && !opt.evolve) std::ofstream(save_dir + "/opt.yaml") << opt_yaml;
    if (!opt.evolve) std::ofstream(save_dir + "/hyp.yaml") << hyp.yaml();

    // Data: scan, check classes before anything trains, loaders.
    Dataset train_ds = scan_dataset(data.splits.at("train"), opt.workers);
    std::printf("train: %d images, %d backgrounds, %d corrupt, %lld instances\n", train_ds.stats.images,
                train_ds.stats.backgrounds, train_ds.stats.corrupt, (long long)train_ds.stats.instances);
    for (const std::string& w : train_ds.stats.warnings) std::printf("%s\n", w.c_str());
    if (!opt.single_cls) {
        std::vector<std::string> bad = check_classes(train_ds, nc);
        Y5_CHECK(bad.empty(), "%s (and %zu more): labels must be < nc=%d in %s", bad.empty() ? "" : bad[0].c_str(),
                 bad.size() - 1, nc, opt.data.c_str());
    }
    Dataset val_ds = scan_dataset(data.splits.at("val"), opt.workers);
    for (Dataset* d : {&train_ds, &val_ds})
        for (ImageRecord& r : d->records)
            for (LabelRow& l : r.labels)
                if (opt.single_cls) l.cls = 0;

    // Model and EMA from --cfg, else from the --weights file's yaml with the data's nc (train.py: Model(cfg or
    // ckpt['model'].yaml, nc=nc); a resumed run's from its checkpoint's), then hyperparameters scaled as train.py.
    std::pair<std::string, std::string> yaml;
    if (opt.cfg.empty()) {
        yaml = Model::weights_yaml(resuming ? opt.resume : opt.weights);
    } else {
        std::ifstream in(opt.cfg);
        Y5_CHECK(in, "%s: cannot open model yaml", opt.cfg.c_str());
        std::stringstream ss;
        ss << in.rdbuf();
        yaml = {opt.cfg, ss.str()};
    }
    // hyp `anchors: N` (train.py's Model(..., anchors=hyp.get('anchors'))): N placeholder anchors per level, also on
    // resume (the checkpoint's anchors are then loaded over them), fitted by AutoAnchor below.
    const int hyp_anchors = hyp.v.count("anchors") ? (int)std::nearbyint(hyp["anchors"]) : 0;
    if (hyp_anchors > 0) {
        std::printf("Overriding model.yaml anchors with anchors=%d\n", hyp_anchors);
        yaml.second = Model::override_anchors(yaml.first, yaml.second, hyp_anchors);
    }
    Model model(yaml.first, yaml.second, nc), ema(yaml.first, yaml.second, nc);
    model.allocate(dev, DType::F32, cuda);
    ema.allocate(dev, DType::F32, cuda);
    Rng init_rng((uint64_t)opt.seed, 1);
    model.init_weights(init_rng);
    // Fine-tuning: tensors transferred by name and shape, the anchors kept from --cfg when one is given (train.py's
    // exclude). A resumed run loads its own checkpoint below instead.
    if (!opt.weights.empty() && !resuming) {
        const bool keep_anchors = !opt.cfg.empty() || hyp_anchors > 0;  // train.py: exclude when cfg or hyp anchors
        const std::vector<std::string> exclude = keep_anchors ? std::vector<std::string>{"anchor"} : std::vector<std::string>{};
        const Model::Transfer t = model.transfer_weights(opt.weights, exclude, cuda);
        std::printf("Transferred %d/%d items from %s\n", t.transferred, t.total, opt.weights.c_str());
    }
    // --freeze as train.py: one value N freezes layers 0 .. N−1, several freeze the listed layers; a parameter is
    // frozen when its name holds "model.{i}." (a substring test, as train.py's).
    std::vector<std::string> freeze;
    if (opt.freeze.size() > 1)
        for (int i : opt.freeze) freeze.push_back("model." + std::to_string(i) + ".");
    else
        for (int i = 0; i < (opt.freeze.empty() ? 0 : opt.freeze[0]); ++i) freeze.push_back("model." + std::to_string(i) + ".");
    for (int i = 0; i < model.params.size(); ++i) {
        Param& p = model.params[i];
        for (const std::string& f : freeze)
            if (p.trainable() && p.name.find(f) != std::string::npos) {
                std::printf("freezing %s\n", p.name.c_str());
                p.frozen = true;
                break;
            }
    }
    // AutoAnchor as train.py runs it (not on resume: the checkpoint holds the anchors); before the EMA copy, so
    // the EMA, the checkpoints and the loss (TrainStep reads the anchors once) all have the evolved anchors.
    if (!resuming && !opt.noautoanchor) check_anchors(train_ds, model, hyp["anchor_t"], opt.imgsz, (uint64_t)opt.seed);
    if (!resuming && !opt.noplots) plot_labels(train_ds, names, save_dir);  // train.py's on_pretrain_routine_end
    copy(dctx, ema.params.values_flat(), model.params.values_flat());
    const int nl = model.detect->nl;
    LossHyp lh;
    lh.box = hyp["box"] * 3.0 / nl;
    lh.cls = hyp["cls"] * nc / 80.0 * 3.0 / nl;
    lh.obj = hyp["obj"] * (opt.imgsz / 640.0) * (opt.imgsz / 640.0) * 3.0 / nl;
    lh.anchor_t = hyp["anchor_t"], lh.cls_pw = hyp["cls_pw"], lh.obj_pw = hyp["obj_pw"];
    lh.label_smoothing = opt.label_smoothing;
    AugmentHyp ah;
    ah.hsv_h = (float)hyp["hsv_h"], ah.hsv_s = (float)hyp["hsv_s"], ah.hsv_v = (float)hyp["hsv_v"];
    ah.degrees = (float)hyp["degrees"], ah.translate = (float)hyp["translate"], ah.scale = (float)hyp["scale"];
    ah.shear = (float)hyp["shear"], ah.perspective = (float)hyp["perspective"], ah.flipud = (float)hyp["flipud"];
    ah.fliplr = (float)hyp["fliplr"], ah.mosaic = (float)hyp["mosaic"];

    LoaderOptions tl;
    tl.img_size = opt.imgsz, tl.batch_size = opt.batch_size, tl.workers = std::max(1, opt.workers);
    tl.pinned = dev == Device::CUDA;  // page-locked batches only for uploads to a GPU
    tl.augment = true, tl.rect = opt.rect, tl.shuffle = !opt.rect, tl.cache_ram = opt.cache == "ram";
    tl.cache_disk = opt.cache == "disk", tl.quad = opt.quad;
    tl.hyp = ah, tl.seed = (uint64_t)opt.seed;
    if (opt.rect) tl.hyp.mosaic = 0;  // YOLOv5: rect training is incompatible with mosaic
    DataLoader train_loader(train_ds, tl);
    LoaderOptions vl = tl;
    vl.batch_size = opt.batch_size * 2, vl.augment = false, vl.rect = true, vl.shuffle = false, vl.pad = 0.5;
    vl.quad = false;
    DataLoader val_loader(val_ds, vl);
    if (!train_loader.cache_message().empty()) std::printf("%s\n", train_loader.cache_message().c_str());

    const int nb = train_loader.num_batches(), nbs = 64;
    Schedule sched(hyp["lr0"], hyp["lrf"], hyp["momentum"], hyp["warmup_epochs"], hyp["warmup_momentum"],
                   hyp["warmup_bias_lr"], opt.epochs, nb, opt.batch_size, opt.cos_lr, nbs);
    int accumulate = sched.initial_accumulate();
    const double weight_decay = hyp["weight_decay"] * ((double)(opt.batch_size * accumulate) / nbs);  // as train.py
    // smart_optimizer: its state lives on the device with the model (allocated before the memory check).
    Optimizer optimizer(optimizer_kind, hyp["momentum"]);
    optimizer.allocate(model.params);
    int groups_n[3] = {0, 0, 0};
    for (int i = 0; i < model.params.size(); ++i)
        if (model.params[i].trainable()) ++groups_n[(int)model.params[i].kind];
    std::printf("optimizer: %s(lr=%s) with parameter groups %d weight(decay=0.0), %d weight(decay=%s), %d bias\n",
                optimizer_name(optimizer_kind), py_float(hyp["lr0"]).c_str(), groups_n[2], groups_n[1],
                py_float(weight_decay).c_str(), groups_n[0]);

    // Arenas from the memory plan (engine/app/memory.h): training batches at imgsz (--quad: batch/4 at 2·imgsz), and
    // validation's rect batches on the same arenas (idle between epochs).
    // --multi-scale: the forward at up to its largest size, the loader's batch kept beside its resized copy.
    int val_chunk = 0;
    int gs = 32;  // train.py: max(int(model.stride.max()), 32)
    for (float s : model.detect->stride) gs = std::max(gs, (int)s);
    const int batch_side = opt.quad ? 2 * opt.imgsz : opt.imgsz;
    auto plan_run = [&](bool rec) {
        return plan_train_run(model, opt.imgsz, opt.quad ? std::max(1, opt.batch_size / 4) : opt.batch_size,
                              vl.batch_size, lh, amp, opt.single_cls, rec,
                              opt.multi_scale ? multi_scale_max(opt.imgsz, gs) : batch_side,
                              opt.multi_scale ? batch_side : 0, &val_chunk);
    };
    StepMemory plan = plan_run(recompute);
    if (opt.recompute < 0 && !recompute && !plan_fits(dev, {plan})) {  // the CPU's default, where keeping fits
        recompute = true;
        plan = plan_run(true);
        std::printf("recompute: on (the BatchNorm outputs kept would not fit in the memory available)\n");
    }
    check_fits(dev, {plan}, "batch " + std::to_string(opt.batch_size) + " at --imgsz " + std::to_string(opt.imgsz),
               "--batch-size or --imgsz");
    Workspace tw;
    tw.make(dev, cuda, plan);
    std::printf("%s summary: %d layers, %lld parameters; batch %d (accumulate %d to %d), %d batches per epoch; "
                "memory: %s activations and gradients + %s workspace\n", model.name.c_str(), model.torch_layer_count(),
                (long long)model.num_parameters(), opt.batch_size, accumulate, nbs, nb, fmt_mem(tw.act->capacity()).c_str(),
                fmt_mem(tw.work->capacity()).c_str());
    if (val_chunk < vl.batch_size)
        std::printf("validation: batches of %d in forwards of %d images (what the training arenas hold; the same "
                    "results)\n", vl.batch_size, val_chunk);
    std::printf("Logging results to %s\nStarting training for %d epochs...\n", save_dir.c_str(), opt.epochs);

    TrainStep step(model, ema, lh);
    step.amp = amp;
    step.recompute = recompute;
    step.loss_gain = opt.quad ? 4.0 : 1.0;  // train.py: if opt.quad: loss *= 4.
    // On a GPU the host queues a step while the previous one runs (engine/app/step.h); the loader's batches
    // (batch_size images at imgsz, or a quarter as many at twice the side under --quad) go up beside it.
    step.pipelined = dev == Device::CUDA;
    if (step.pipelined) step.reserve_upload(tw.ctx, (size_t)opt.batch_size * 3 * opt.imgsz * opt.imgsz);
    step.cuda_graph = opt.cuda_graph && step.pipelined;
    if (opt.cuda_graph && !step.pipelined) std::printf("cuda-graph: no effect on the CPU\n");
    step.optimizer = std::move(optimizer);
    // --image-weights: model.class_weights (labels_to_class_weights · nc, float32) and maps, the last validation's
    // per-class mAP50-95 (zeros before the first; restored on resume, where train.py would restart from zeros).
    std::vector<float> class_weights;
    std::vector<double> maps(nc, 0.0);
    if (opt.image_weights) {
        class_weights = labels_to_class_weights(train_ds, nc);
        for (float& w : class_weights) w *= (float)nc;
    }
    std::printf("AMP: %s\n", amp ? "mixed precision (f16 activations, f32 weights, loss scaling from 65536)" : "off (f32)");
    const bool tty = isatty(fileno(stdout));
    double best_fitness = 0;
    int best_epoch = 0;
    if (resuming) {
        SafeTensorsFile ck(opt.resume);
        model.load_weights(opt.resume, cuda);
        ema.load_weights(opt.resume, cuda, "ema.");
        const bool adam = optimizer_kind != OptimizerKind::SGD;
        for (int i = 0; i < model.params.size(); ++i)
            if (model.params[i].trainable()) {
                const Shape& shape = model.params[i].shape;  // read_f32 checks it
                const std::string& n = model.params[i].name;
                std::vector<float> m = ck.read_f32((adam ? "optimizer.exp_avg." : "optimizer.momentum.") + n, &shape);
                copy(dctx, model.params.momentum(i), Tensor(m.data(), shape, DType::F32, Device::CPU));
                if (adam) {
                    std::vector<float> v = ck.read_f32("optimizer.exp_avg_sq." + n, &shape);
                    copy(dctx, step.optimizer.exp_avg_sq(model.params, i),
                         Tensor(v.data(), shape, DType::F32, Device::CPU));
                }
                std::vector<float> g = ck.read_f32("optimizer.grad." + model.params[i].name, &shape);
                copy(dctx, model.params[i].grad, Tensor(g.data(), shape, DType::F32, Device::CPU));
            }
        // YOLOv5 restarts last_opt_step at −1 on resume; keeping it (and the accumulated gradients) makes the
        // resumed run equal the uninterrupted one.
        try {
            step.last_opt_step = std::stoll(ck.metadata().at("last_opt_step"));
            accumulate = std::stoi(ck.metadata().at("accumulate"));
            start_epoch = std::stoi(ck.metadata().at("epoch")) + 1;
            best_fitness = std::stod(ck.metadata().at("best_fitness"));
            step.updates = std::stoll(ck.metadata().at("updates"));
        } catch (const std::logic_error& e) {  // std::out_of_range (a missing key, a huge number), std::invalid_argument
            Y5_FAIL("%s: the training state in its metadata (epoch, accumulate, updates, ...) is missing or not a "
                    "number (%s)", opt.resume.c_str(), e.what());
        }
        Y5_CHECK(accumulate >= 1 && step.updates >= 0, "%s: accumulate %d or updates %lld in its metadata out of range",
                 opt.resume.c_str(), accumulate, (long long)step.updates);
        if (adam) {
            Y5_CHECK(ck.metadata().count("adam_step"), "%s: an %s run's checkpoint without its step counts (adam_step)",
                     opt.resume.c_str(), opt.optimizer.c_str());
            std::istringstream st(ck.metadata().at("adam_step"));
            char comma;
            st >> step.optimizer.steps[0] >> comma >> step.optimizer.steps[1] >> comma >> step.optimizer.steps[2];
            Y5_CHECK(!st.fail(), "%s: adam_step '%s' is not three step counts", opt.resume.c_str(),
                     ck.metadata().at("adam_step").c_str());
        }
        if (amp && ck.metadata().count("amp_scale")) {
            step.scaler.set_state(std::stof(ck.metadata().at("amp_scale")),
                                  std::stoi(ck.metadata().at("amp_growth_tracker")));
            std::printf("AMP: loss scale %g, %d steps since it last changed (from the checkpoint)\n",
                        (double)step.scaler.loss_scale(), (int)step.scaler.growth_tracker());
        }
        if (opt.image_weights && ck.metadata().count("maps")) {
            std::istringstream ms(ck.metadata().at("maps"));
            std::string item;
            for (int c = 0; c < nc && std::getline(ms, item, ','); ++c) maps[c] = std::stod(item);
        }
        best_epoch = start_epoch - 1;
        Y5_CHECK(start_epoch >= 1 && start_epoch <= opt.epochs, "%s: epoch %d in the checkpoint is outside its run's "
                 "0..%d", opt.resume.c_str(), start_epoch - 1, opt.epochs - 1);
        std::printf("Resuming training from %s from epoch %d to %d total epochs\n", opt.resume.c_str(), start_epoch,
                    opt.epochs);
    } else if (!opt.evolve || !fs::exists(save_dir + "/results.csv")) {  // --evolve: generations append, as train.py
        std::ofstream(save_dir + "/results.csv") << results_header();
    }
    if (!resuming) model.params.zero_grad(cuda);
    const char* stop_env = std::getenv("Y5_STOP_AFTER_EPOCH");
    const int stop_after = stop_env ? std::atoi(stop_env) : -1;
    // Y5_LOSS_LOG=path appends each batch's losses and lr, unaveraged, to compare devices or runs batch by batch.
    const char* loss_log_env = std::getenv("Y5_LOSS_LOG");
    std::unique_ptr<FILE, int (*)(FILE*)> loss_log(nullptr, std::fclose);
    if (loss_log_env && *loss_log_env) {
        loss_log.reset(std::fopen(loss_log_env, "a"));
        Y5_CHECK(loss_log, "Y5_LOSS_LOG=%s: cannot open for appending", loss_log_env);
    }
    const auto t_start = std::chrono::steady_clock::now();
    bool prefetched = false;
    Batch b, vb;  // kept across epochs with the loaders' rings: their (pinned) memory is allocated once
    int epochs_done = 0;  // a run killed after its last epoch's checkpoint resumes to none, then strips and validates
    CheckpointWriter ckpt_writer;
    for (int epoch = start_epoch; epoch < opt.epochs; ++epoch) {
        if (opt.image_weights)  // train.py: cw = class_weights·(1 − maps)²/nc, iw per image, random.choices
            train_loader.set_image_weights(labels_to_image_weights(train_ds, nc, epoch_class_weights(class_weights, maps, nc)));
        if (!prefetched) train_loader.start_epoch(epoch);
        prefetched = false;
        double mloss[3] = {0, 0, 0};
        double lr_logged[3] = {0, 0, 0};
        int skipped = 0;  // mixed precision's optimizer steps skipped for inf/NaN gradients
        const auto t0 = std::chrono::steady_clock::now();
        std::printf("\n%11s%11s%11s%11s%11s%11s%11s\n", "Epoch", "mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size");
        // A step's losses, shown and checked once collected (pipelined on a GPU: one step after it was queued).
        struct Shown {
            int i;
            double lr[3];
            int64_t instances;
            int size;
        } shown[2];
        int i_first = 0;  // shown[i_first]: the oldest step in flight
        auto consume = [&] {
            const StepResult r = step.collect();
            const Shown& sh = shown[i_first];
            i_first = (i_first + 1) % 2;
            skipped += r.skipped;
            const LossItems& li = r.items;
            Y5_CHECK(r.finite, "loss is %g at epoch %d, batch %d; training stopped, the last good checkpoint is %s",
                     li.total, epoch, sh.i, w_last.c_str());
            for (int j = 0; j < 3; ++j) lr_logged[j] = sh.lr[j];
            if (loss_log) {  // flushed per line: a killed run keeps every batch it finished
                std::fprintf(loss_log.get(), "%d %d %.9g %.9g %.9g %.9g %.9g %.9g\n", epoch, sh.i, li.lbox, li.lobj,
                             li.lcls, sh.lr[0], sh.lr[1], sh.lr[2]);
                std::fflush(loss_log.get());
            }
            const double items[3] = {li.lbox, li.lobj, li.lcls};
            for (int j = 0; j < 3; ++j) mloss[j] = (mloss[j] * sh.i + items[j]) / (sh.i + 1);
            const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const double rate = (sh.i + 1) / el;
            if (tty || sh.i + 1 == nb) {
                char ep[32];
                snprintf(ep, sizeof ep, "%d/%d", epoch, opt.epochs - 1);
                std::printf("%s%11s%11s%11.4g%11.4g%11.4g%11lld%11d %d/%d %.2fit/s ETA %.0fs%s", tty ? "\r" : "", ep,
                            fmt_mem(tw.peak()).c_str(), mloss[0], mloss[1], mloss[2], (long long)sh.instances, sh.size,
                            sh.i + 1, nb, rate, (nb - sh.i - 1) / rate, tty ? "" : "\n");
                std::fflush(stdout);
            }
        };
        for (int i = 0; i < nb && train_loader.next(b); ++i) {
            // the next epoch's data loads meanwhile (not under --image-weights: its weights need this epoch's mAPs)
            if (i + 1 == nb && epoch + 1 < opt.epochs && epoch != stop_after && !opt.image_weights) {
                train_loader.start_epoch(epoch + 1);
                prefetched = true;
            }
            if (b.n == 0) continue;  // --quad: a last batch of fewer than 4 images collates to none
            const int64_t ni = i + (int64_t)nb * epoch;
            step.resize_h = step.resize_w = 0;
            if (opt.multi_scale) {  // train.py's size rule; the draw from this batch's own stream
                Rng ms(opt.seed, ((0xB0000000ull + (uint64_t)epoch) << 32) | (uint32_t)i);
                const int sz = multi_scale_size(opt.imgsz, gs, (int)ms.randint((uint32_t)multi_scale_span(opt.imgsz, gs)));
                multi_scale_shape(sz, b.h, b.w, gs, &step.resize_h, &step.resize_w);
            }
            ckpt_writer.check();
            ScheduleState st = sched.at(ni, epoch, accumulate);
            accumulate = st.accumulate;
            SgdGroup groups[3];
            for (int j = 0; j < 3; ++j) groups[j] = {st.lr[j], st.momentum[j], j == 1 ? weight_decay : 0.0};
            step.run(tw.ctx, b, ni, accumulate, groups);
            if (ni < 3 && !opt.noplots) plot_batch(b, names, save_dir + "/train_batch" + std::to_string(ni) + ".jpg");
            shown[(i_first + step.in_flight() - 1) % 2] = {i, {st.lr[0], st.lr[1], st.lr[2]}, b.num_targets(),
                                                           step.resize_w ? step.resize_w : b.w};
            if (step.in_flight() == 2 || !step.pipelined) consume();  // pipelined: the previous step, this one queued
        }
        while (step.in_flight()) consume();
        if (tty) std::printf("\n");
        if (skipped)
            std::printf("AMP: %d optimizer step%s skipped for inf/NaN gradients this epoch; loss scale now %g\n", skipped,
                        skipped > 1 ? "s" : "", (double)step.scaler.loss_scale());

        const bool final_epoch = epoch + 1 == opt.epochs;
        ValResult vr;
        if (!opt.noval || final_epoch) {
            tw.tape->clear();
            tw.ctx.autocast = amp;  // train.py validates with half=amp
            ValOptions vo;
            vo.single_cls = opt.single_cls, vo.chunk = val_chunk;
            {
                ValFold fold(ema, amp);
                vr = validate(ema, val_loader, tw.ctx, lh, vo, nullptr, &vb);
            }
            std::printf("%s", val_table(vr, names, false).c_str());
            if (results) *results = {vr.mp, vr.mr, vr.map50, vr.map, vr.loss[0], vr.loss[1], vr.loss[2]};
            // val.py's maps: the overall mAP50-95 for classes without labels, else the class's own
            std::fill(maps.begin(), maps.end(), vr.map);
            for (size_t k = 0; k < vr.per_class.classes.size(); ++k) {
                double a = 0;
                for (double x : vr.per_class.ap[k]) a += x;
                if (vr.per_class.classes[k] < nc) maps[vr.per_class.classes[k]] = a / kIouThresholds;
            }
        }
        const double fi = vr.fitness();
        if (fi >= best_fitness) best_fitness = fi, best_epoch = epoch;
        std::ofstream(save_dir + "/results.csv", std::ios::app)
            << results_row(epoch, {mloss[0], mloss[1], mloss[2], vr.mp, vr.mr, vr.map50, vr.map, vr.loss[0], vr.loss[1],
                                   vr.loss[2], lr_logged[0], lr_logged[1], lr_logged[2]});
        if (!opt.nosave || (final_epoch && !opt.evolve)) {  // train.py: --evolve saves no checkpoint
            TrainState ts{step.last_opt_step, accumulate, ""};
            if (opt.image_weights) {
                char v[32];
                for (double m : maps) snprintf(v, sizeof v, "%.17g", m), ts.maps += (ts.maps.empty() ? "" : ",") + std::string(v);
            }
            const GradScaler* sc = amp ? &step.scaler : nullptr;
            const Optimizer* op = &step.optimizer;
            std::vector<std::string> paths = {w_last};  // the same bytes in each
            if (best_epoch == epoch) paths.push_back(w_best);
            if (opt.save_period > 0 && epoch % opt.save_period == 0)
                paths.push_back(save_dir + "/weights/epoch" + std::to_string(epoch) + ".safetensors");
            ckpt_writer.write(paths, [&] {
                return checkpoint_bytes(w_last, model, &ema, true, epoch, best_fitness, step.updates, opt_yaml,
                                        names_meta, ts, sc, op);
            });
        }
        if (epoch == stop_after) {
            ckpt_writer.wait();
            std::printf("Y5_STOP_AFTER_EPOCH=%d: stopping as if killed; resume with --resume %s\n", stop_after, w_last.c_str());
            return save_dir;
        }
        epochs_done = epoch - start_epoch + 1;
        if (opt.patience != 0 && epoch - best_epoch >= opt.patience) {  // train.py: --patience 0 never stops
            std::printf("Stopping training early as no improvement observed in last %d epochs. Best results observed at "
                        "epoch %d, best model saved as %s.\n", opt.patience, best_epoch, w_best.c_str());
            break;
        }
    }
    const double hours = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() / 3600;
    std::printf("\n%d epochs completed in %.3f hours.\n", epochs_done, hours);
    if (step.cuda_graph)
        std::printf("CUDA graphs: %d captured, %d replayed\n", step.graph_captures, step.graph_replays);
    // strip_optimizer: the finished checkpoints hold the EMA weights as the model, without training state.
    ckpt_writer.wait();
    for (const std::string& w : {w_last, w_best})
        if (fs::exists(w)) {  // none under --evolve
            Model m(yaml.first, yaml.second, nc);
            m.allocate(Device::CPU);
            m.load_weights(w, nullptr, "ema.");
            write_files_atomic({w}, checkpoint_bytes(w, m, nullptr, false, opt.epochs - 1, best_fitness, step.updates,
                                                     opt_yaml, names_meta));
            std::printf("Optimizer stripped from %s\n", w.c_str());
        }
    if (fs::exists(w_best)) {
        std::printf("\nValidating %s...\n", w_best.c_str());
        Model m(yaml.first, yaml.second, nc);
        m.allocate(dev, DType::F32, cuda);
        m.load_weights(w_best, cuda);
        m.fuse();  // train.py validates best.pt through attempt_load, which fuses; the per-epoch EMA runs do not
        tw.tape->clear();
        tw.ctx.autocast = amp;
        ValOptions vo;
        vo.single_cls = opt.single_cls, vo.plot_dir = opt.noplots ? "" : save_dir, vo.names = &names;
        vo.chunk = val_chunk;
        ValResult vr = validate(m, val_loader, tw.ctx, lh, vo, nullptr, &vb);
        std::printf("%s", val_table(vr, names, val_per_class_rows(true, nc, true)).c_str());  // train.py: verbose=True
        if (results) *results = {vr.mp, vr.mr, vr.map50, vr.map, vr.loss[0], vr.loss[1], vr.loss[2]};
    }
    if (!opt.noplots) plot_results(save_dir + "/results.csv", save_dir + "/results.png");
    std::printf("Results saved to %s\n", save_dir.c_str());
    return save_dir;
}

}  // namespace y5
