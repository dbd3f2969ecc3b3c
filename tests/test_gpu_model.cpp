/*
 * Model-level GPU tests: the whole model on the GPU against the same model on the CPU in f32, with the same
 * weights and inputs.
 *   (a) yolov5n and yolov5n-eca on the Ultralytics fixtures (2×3×64×96, tests/test_model.cpp's weights and
 *       seeds) and yolov5n at 1×3×640×640 with random weights: every layer output and Detect map of a training
 *       forward, every parameter gradient of Σ seed ⊙ maps, the BN running statistics that forward leaves, and
 *       the decoded output of an eval forward; on the fixtures also against YOLOv5's float64 results with the
 *       CPU f32 path's own tolerances; and a second GPU backward gives the same gradient bits.
 *   (b) training steps on fixed synthetic batches through y5train's own step (TrainStep: batch_images, forward,
 *       yolo_loss, backward, clip_grad_norm, sgd_step, zero_grad, ema_update): every step's loss items and gradient norm,
 *       then every weight, BN statistic, momentum and EMA value; four steps each started from the CPU's state
 *       (the run is chaotic), and two at a small learning rate where each side carries its own state. Each
 *       step costs the emulated device ~11 s whatever the image size (its BN reductions' shuffles, per channel).
 * TF32 is off for these tests (kernels/conv2d.h), so both sides compute in f32 and differ only by the order of
 * their sums. GPU-vs-CPU comparisons are per element (check_elems); those against YOLOv5's float64 fixtures
 * keep tests/test_model.cpp's per-tensor criterion.
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/data/loader.h"
#include "engine/app/step.h"
#include "engine/autograd/optim.h"
#include "engine/core/safetensors.h"
#include "engine/app/val.h"
#include "kernels/conv2d.h"
#include "layers/model.h"
#include "layers/yolo.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"
#if Y5_CUDA_EMU
#include "tests/cudaemu/emu.h"
#endif

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

std::string src(const std::string& rel) { return std::string(Y5_SOURCE_DIR) + "/" + rel; }

// Against the float64 fixtures the GPU gets the CPU f32 path's own bounds (tests/test_model.cpp), as per-tensor
// relative errors max |got − want| / max |want|.
constexpr double kFixtureFwdTol = 2e-4, kFixtureGradTol = 5e-4;

// GPU against CPU, per element: |gpu − cpu| ≤ t·(|cpu| + rms), rms over the compared tensor (check_elems). t is
// 5–10× the largest any element needed on the emulated device (tests/cudaemu; the same in forward and reverse thread
// order), worst over the fixtures, the 640 case and the fused models, and ≥ 3× how far 0.5–2 ulp random changes of
// the CPU model's weights move the CPU's own results (about the rounding a reordered sum adds, as cuDNN's will):
//   training forward, every layer   1.7e-4 (yolov5n, layer 23)      weights ±2 ulp: 3.0e-4  → 1e-3
//   Detect maps                     7.9e-6                           1.5e-5                  → 5e-5
//   parameter gradients             1.05e-3 (yolov5n-eca, model.25)  1.2e-3                  → 6e-3
//   BN running statistics           3.1e-6                           5.0e-6                  → 2e-5
//   eval decode, boxes and scores   3.0e-7 (fused: 3.7e-7)           9.4e-7                  → 3e-6
//   fused eval layers               7.3e-7                           eval layers 2.1e-6      → 7e-6
// The training-mode errors are large for f32 because BatchNorm over the few values per channel of the deep layers
// (12 at 2×3×64×96) amplifies any rounding difference; on the emulator the convolutions are y5's CPU ones (the
// cuDNN stand-in), so there the difference starts in BN's float statistics (by slices, against the CPU's double).
constexpr double kFwdT = 1e-3, kMapT = 5e-5, kGradT = 6e-3, kStatsT = 2e-5, kDecodedT = 3e-6, kFusedT = 7e-6;

struct Tf32Off {  // compare f32 with f32: no TF32 tensor-core convolutions while a test runs
    bool was = conv_allow_tf32();
    Tf32Off() { conv_set_allow_tf32(false); }
    ~Tf32Off() { conv_set_allow_tf32(was); }
};

// One device's arenas, tape and context (the shared fixture's arenas are too small for a 640 training step).
// CPU arenas are address space: only what a test touches becomes memory.
struct Side {
    Arena act, work, grads;
    Tape tape;
    Ctx ctx;
    Side(Device d, CudaContext* cuda, size_t act_b, size_t work_b)
        : act("model test activations", d, act_b), work("model test workspace", d, work_b),
          grads("model test gradients", d, act_b), tape(&grads, cuda) {
        ctx.act = &act, ctx.work = &work, ctx.tape = &tape, ctx.cuda = cuda;
        act.set_tracking(true);  // as y5train's Workspace: TrainStep's recomputation drops and rebuilds on both sides
    }
    void reset() {
        tape.clear();
        act.reset();
        work.reset();
    }
};

std::vector<float> to_host(Ctx& c, const Tensor& t) {
    REQUIRE(t.dtype == DType::F32);
    std::vector<float> v((size_t)t.numel());
    copy(c, Tensor(v.data(), t.shape, DType::F32, Device::CPU), t);
    return v;
}

Tensor to_device(Side& s, const std::vector<float>& v, Shape shape) {
    Tensor d = s.act.tensor(shape);
    copy(s.ctx, d, Tensor(const_cast<float*>(v.data()), shape, DType::F32, Device::CPU));
    return d;
}

// max |got − want| / max |want| (the fixtures' criterion); infinite when got has a NaN or an infinity.
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        num = std::max(num, (double)std::fabs(got[i] - want[i]));
        den = std::max(den, (double)std::fabs(want[i]));
    }
    return num / std::max(den, 1e-30);
}

#define CHECK_REL(what, err, tol)                  \
    do {                                           \
        const double e_ = (err);                   \
        INFO(what << ": rel err " << e_);          \
        CHECK(e_ <= (tol));                        \
    } while (0)

// |got − want| ≤ t·(|want| + rms) element by element over want[0, n), rms the root mean square of want there:
// rtol t, and an atol t·rms scaled to the tensor, because an element that is a sum of terms of both signs (a
// convolution's output, a gradient, a normalised value) carries an error of the size of its terms, not of its
// own value near zero. Failures are recorded and the test goes on.
void check_elems(const std::string& what, const float* got, const float* want, int64_t n, double t) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += (double)want[i] * want[i];
    const double rms = n ? std::sqrt(ss / n) : 0;
    const Tensor g(const_cast<float*>(got), Shape{n}, DType::F32, Device::CPU);
    const Tensor w(const_cast<float*>(want), Shape{n}, DType::F32, Device::CPU);
    check_close(g, w, t * rms, t, what);
}
void check_elems(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double t) {
    REQUIRE(got.size() == want.size());
    check_elems(what, got.data(), want.data(), (int64_t)got.size(), t);
}

// Decoded rows (…, 5 + nc): boxes in pixels and scores in [0, 1] compared separately, each against its own rms.
void check_decoded(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, int no,
                   double t) {
    REQUIRE(got.size() == want.size());
    std::vector<float> bg, bw, sg, sw;
    for (size_t i = 0; i < got.size(); ++i) {
        const bool box = (int)(i % no) < 4;
        (box ? bg : sg).push_back(got[i]);
        (box ? bw : sw).push_back(want[i]);
    }
    check_elems(what + " boxes", bg, bw, t);
    check_elems(what + " scores", sg, sw, t);
}

// The same model on both devices with the same weights: loaded from a file, or YOLOv5's init (seeded) with
// the BN affine parameters drawn away from 1 and 0 so that they matter.
struct Pair {
    Model cpu, gpu;
    Pair(const std::string& yaml, int nc, CudaContext* cuda, const std::string& weights, uint64_t seed = 0)
        : cpu(yaml, nc), gpu(yaml, nc) {
        cpu.allocate(Device::CPU);
        gpu.allocate(Device::CUDA, DType::F32, cuda);
        if (!weights.empty()) {
            cpu.load_weights(weights);
            gpu.load_weights(weights, cuda);
            return;
        }
        Rng rng(seed);
        cpu.init_weights(rng);
        for (int i = 0; i < cpu.params.size(); ++i) {
            const Param& p = cpu.params[i];
            float* v = p.value.ptr<float>();
            for (int64_t j = 0; j < p.value.numel(); ++j) {
                if (p.kind == ParamKind::NormWeight) v[j] = (float)rng.uniform_double(0.5, 1.5);
                else if (p.kind == ParamKind::Bias && p.name.find(".bn.") != std::string::npos)
                    v[j] = (float)rng.uniform_double(-0.3, 0.3);
            }
        }
        Ctx c;
        c.cuda = cuda;
        copy(c, gpu.params.values_flat(), cpu.params.values_flat());
    }
};

// Compares every output of (a) for one model and input. seeds: one host vector per Detect map. fixture: the
// Ultralytics file the weights, input and seeds came from ("" for none), checked too.
void compare_model(Pair& m, Side& cs, Side& gs, const std::vector<float>& input, Shape in_shape,
                   const std::vector<std::vector<float>>& seeds, const std::string& fixture) {
    std::unique_ptr<SafeTensorsFile> fx;
    if (!fixture.empty()) fx = std::make_unique<SafeTensorsFile>(fixture);
    cs.reset();
    gs.reset();
    Tensor xc(const_cast<float*>(input.data()), in_shape, DType::F32, Device::CPU);
    Tensor xg = to_device(gs, input, in_shape);

    // Training forward: every layer, then the Detect maps (the last row's output is the first map).
    std::vector<Var> lc, lg;
    Model::Output oc = m.cpu.forward(cs.ctx, Tape::constant(xc), true, &lc);
    Model::Output og = m.gpu.forward(gs.ctx, Tape::constant(xg), true, &lg);
    REQUIRE(lc.size() == lg.size());
    for (size_t i = 0; i + 1 < lc.size(); ++i) {
        REQUIRE(lg[i].shape() == lc[i].shape());
        const std::vector<float> got = to_host(gs.ctx, lg[i].t), want = to_host(cs.ctx, lc[i].t);
        check_elems("layer " + std::to_string(i) + " " + lc[i].t.str(), got, want, kFwdT);
        if (fx) CHECK_REL("layer " << i << " vs YOLOv5", rel_err(got, fx->read_f32("out.layer." + std::to_string(i))),
                          kFixtureFwdTol);
    }
    REQUIRE(oc.maps.size() == og.maps.size());
    REQUIRE(seeds.size() == oc.maps.size());
    std::vector<Tensor> sc, sg;
    for (size_t j = 0; j < oc.maps.size(); ++j) {
        REQUIRE(og.maps[j].shape() == oc.maps[j].shape());
        const std::vector<float> got = to_host(gs.ctx, og.maps[j].t), want = to_host(cs.ctx, oc.maps[j].t);
        check_elems("Detect map " + std::to_string(j), got, want, kMapT);
        if (fx) CHECK_REL("Detect map " << j << " vs YOLOv5", rel_err(got, fx->read_f32("out.detect." + std::to_string(j))),
                          kFixtureFwdTol);
        REQUIRE((int64_t)seeds[j].size() == oc.maps[j].t.numel());
        sc.push_back(Tensor(const_cast<float*>(seeds[j].data()), oc.maps[j].shape(), DType::F32, Device::CPU));
        sg.push_back(to_device(gs, seeds[j], oc.maps[j].shape()));
    }

    // Backward of Σ seed ⊙ maps: every parameter's gradient.
    m.cpu.params.zero_grad();
    m.gpu.params.zero_grad();
    cs.tape.backward(oc.maps, sc);
    gs.tape.backward(og.maps, sg);
    const std::vector<float> gg = to_host(gs.ctx, m.gpu.params.grads_flat()), gc = to_host(cs.ctx, m.cpu.params.grads_flat());
    int checked = 0;
    for (int i = 0; i < m.cpu.params.size(); ++i) {
        const Param& p = m.cpu.params[i];
        if (!p.trainable()) continue;
        check_elems("grad " + p.name, gg.data() + p.offset, gc.data() + p.offset, p.shape.numel(), kGradT);
        if (fx) {
            const std::vector<float> got(gg.begin() + p.offset, gg.begin() + p.offset + p.shape.numel());
            CHECK_REL("grad " << p.name << " vs YOLOv5", rel_err(got, fx->read_f32("grad." + p.name)), kFixtureGradTol);
        }
        ++checked;
    }
    CHECK(checked > 50);

    // The BN running statistics the training forward left (every other value is untouched: equal bits).
    const std::vector<float> vg = to_host(gs.ctx, m.gpu.params.values_flat()), vc = to_host(cs.ctx, m.cpu.params.values_flat());
    for (int i = 0; i < m.cpu.params.size(); ++i) {
        const Param& p = m.cpu.params[i];
        if (p.name.find("running_") == std::string::npos) continue;
        check_elems(p.name, vg.data() + p.offset, vc.data() + p.offset, p.shape.numel(), kStatsT);
        if (fx) {
            const std::vector<float> got(vg.begin() + p.offset, vg.begin() + p.offset + p.shape.numel());
            CHECK_REL(p.name << " vs YOLOv5", rel_err(got, fx->read_f32("after." + p.name)), kFixtureFwdTol);
        }
    }

    // Determinism: the same backward again on the GPU gives the same bits (no atomics; cuDNN's deterministic
    // algorithms). The running statistics move again, but training-mode gradients do not depend on them.
    gs.reset();
    m.gpu.params.zero_grad();
    Model::Output og2 = m.gpu.forward(gs.ctx, Tape::constant(to_device(gs, input, in_shape)), true);
    std::vector<Tensor> sg2;
    for (size_t j = 0; j < og2.maps.size(); ++j) sg2.push_back(to_device(gs, seeds[j], og2.maps[j].shape()));
    gs.tape.backward(og2.maps, sg2);
    const std::vector<float> gg2 = to_host(gs.ctx, m.gpu.params.grads_flat());
    CHECK(std::memcmp(gg.data(), gg2.data(), gg.size() * sizeof(float)) == 0);

    // Eval forward on the updated statistics (the GPU's from two forwards: put the CPU's back first), decoded.
    copy(gs.ctx, m.gpu.params.values_flat(), m.cpu.params.values_flat());
    cs.reset();
    gs.reset();
    NoGrad ngc(cs.tape), ngg(gs.tape);
    Model::Output ec = m.cpu.forward(cs.ctx, Tape::constant(xc), false);
    Model::Output eg = m.gpu.forward(gs.ctx, Tape::constant(to_device(gs, input, in_shape)), false);
    REQUIRE(eg.decoded.device == Device::CUDA);
    REQUIRE(eg.decoded.shape == ec.decoded.shape);
    const std::vector<float> dg = to_host(gs.ctx, eg.decoded);
    check_decoded("decoded", dg, to_host(cs.ctx, ec.decoded), (int)ec.decoded.shape[2], kDecodedT);
    if (fx) CHECK_REL("decoded vs YOLOv5", rel_err(dg, fx->read_f32("out.decoded")), kFixtureFwdTol);
}

void compare_fixture(const char* fixture, const char* yaml, int nc) {
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    const std::string path = src(fixture);
    Pair m(src(yaml), nc, g.cuda, path);
    SafeTensorsFile f(path);
    std::vector<std::vector<float>> seeds;
    for (size_t j = 0; j < m.cpu.detect->stride.size(); ++j) seeds.push_back(f.read_f32("lossw." + std::to_string(j)));
    Side cs(Device::CPU, nullptr, size_t(1) << 30, size_t(1) << 30), gs(Device::CUDA, g.cuda, size_t(1) << 30, size_t(512) << 20);
    compare_model(m, cs, gs, f.read_f32("input"), f.shape("input"), seeds, path);
}

}  // namespace

TEST_CASE("yolov5n on the GPU equals the CPU and YOLOv5: forward, gradients, BN statistics, decode", "[gpu][model]") {
    compare_fixture("tests/fixtures/model_yolov5n.safetensors", "config/models/yolov5n.yaml", 80);
}

TEST_CASE("yolov5n-eca on the GPU equals the CPU and YOLOv5: forward, gradients, BN statistics, decode", "[gpu][model]") {
    compare_fixture("tests/fixtures/model_yolov5n_eca.safetensors", "config/models/yolov5n-eca.yaml", 1);
}

TEST_CASE("yolov5n at 640 on the GPU equals the CPU: forward, gradients, BN statistics, decode", "[gpu][model]") {
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    Pair m(src("config/models/yolov5n.yaml"), 80, g.cuda, "", 640);
    Rng rng(641);
    const Shape in{1, 3, 640, 640};
    std::vector<float> x((size_t)in.numel());
    for (float& v : x) v = (float)rng.uniform_double(0, 1);
    std::vector<std::vector<float>> seeds;
    for (int s : {80, 40, 20}) {
        seeds.emplace_back((size_t)3 * s * s * 85);
        for (float& v : seeds.back()) v = (float)rng.uniform_double(-1, 1);
    }
    // One 640 image's training step takes about 0.2 GB of activations and as much of gradients (y5train's
    // measuring pass, nc 3; nc 80 adds little).
    Side cs(Device::CPU, nullptr, size_t(1) << 30, size_t(1) << 30), gs(Device::CUDA, g.cuda, size_t(1) << 30, size_t(512) << 20);
    compare_model(m, cs, gs, x, in, seeds, "");
}

namespace {

// Model::fuse on both devices: the GPU model's fold is computed on the host from its downloaded parameters, so
// its folded tensors equal the CPU's bit for bit; then the fused eval forwards (tape off) agree as (a)'s eval
// forward does (convolutions summed in other orders), and the fused GPU forward equals the unfused one there.
void compare_fused(const char* yaml, int nc, Shape in, uint64_t seed) {
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    Pair m(src(yaml), nc, g.cuda, "", seed);
    Rng rng(seed + 1);
    for (int i = 0; i < m.cpu.params.size(); ++i) {  // running statistics away from 0 and 1
        const Param& p = m.cpu.params[i];
        const bool mean = p.name.find("running_mean") != std::string::npos, var = p.name.find("running_var") != std::string::npos;
        if (!mean && !var) continue;
        for (int64_t j = 0; j < p.value.numel(); ++j)
            p.value.ptr<float>()[j] = (float)(mean ? rng.uniform_double(-0.5, 0.5) : rng.uniform_double(0.2, 2.0));
    }
    Side cs(Device::CPU, nullptr, size_t(1) << 30, size_t(1) << 30), gs(Device::CUDA, g.cuda, size_t(1) << 30, size_t(512) << 20);
    copy(gs.ctx, m.gpu.params.values_flat(), m.cpu.params.values_flat());
    std::vector<float> x((size_t)in.numel());
    for (float& v : x) v = (float)rng.uniform_double(0, 1);
    NoGrad ngc(cs.tape), ngg(gs.tape);
    const std::vector<float> unfused = to_host(gs.ctx, m.gpu.forward(gs.ctx, Tape::constant(to_device(gs, x, in)), false).decoded);
    gs.reset();
    m.cpu.fuse();
    m.gpu.fuse();
    int folds = 0;
    for (int i = 0; i < m.cpu.params.size(); ++i) {
        const ParamStore::Fold *fc = m.cpu.params.fold(i), *fg = m.gpu.params.fold(i);
        REQUIRE((fc == nullptr) == (fg == nullptr));
        if (!fc) continue;
        ++folds;
        REQUIRE(fg->w.device == Device::CUDA);
        const std::vector<float> wg = to_host(gs.ctx, fg->w), bg = to_host(gs.ctx, fg->b);
        CHECK(std::memcmp(wg.data(), fc->w.data, fc->w.bytes()) == 0);
        CHECK(std::memcmp(bg.data(), fc->b.data, fc->b.bytes()) == 0);
    }
    CHECK(folds > 0);
    std::vector<Var> lc, lg;
    Model::Output ec = m.cpu.forward(cs.ctx, Tape::constant(Tensor(x.data(), in, DType::F32, Device::CPU)), false, &lc);
    Model::Output eg = m.gpu.forward(gs.ctx, Tape::constant(to_device(gs, x, in)), false, &lg);
    REQUIRE(lc.size() == lg.size());
    for (size_t i = 0; i < lc.size(); ++i)
        check_elems("fused layer " + std::to_string(i), to_host(gs.ctx, lg[i].t), to_host(cs.ctx, lc[i].t), kFusedT);
    REQUIRE(eg.decoded.device == Device::CUDA);
    const std::vector<float> dg = to_host(gs.ctx, eg.decoded);
    const int no = (int)ec.decoded.shape[2];
    check_decoded("fused decoded, GPU vs CPU", dg, to_host(cs.ctx, ec.decoded), no, kDecodedT);
    check_decoded("fused vs unfused decoded on the GPU", dg, unfused, no, kDecodedT);
}

}  // namespace

TEST_CASE("fused yolov5n on the GPU equals the fused CPU model: folds, layers, decode", "[gpu][model][fuse]") {
    compare_fused("config/models/yolov5n.yaml", 80, Shape{2, 3, 64, 96}, 31);
    compare_fused("config/models/yolov5n.yaml", 80, Shape{1, 3, 320, 320}, 32);
}

TEST_CASE("fused yolov5n-eca on the GPU equals the fused CPU model: folds, layers, decode", "[gpu][model][fuse]") {
    compare_fused("config/models/yolov5n-eca.yaml", 1, Shape{2, 3, 64, 96}, 33);
}

namespace {

// One side of the training comparison: y5train's step (engine/app/step.h) over a model, its EMA and its arenas.
struct Trainer {
    Side& side;
    TrainStep step;
    int64_t ni = 0;
    // One iteration with accumulate 1 (the optimizer steps every batch). *norm: the gradient norm.
    LossItems run(const Batch& b, const SgdGroup* groups, double* norm) {
        side.reset();
        const StepResult r = step.run(side.ctx, b, ni++, 1, groups);
        REQUIRE(r.stepped);
        *norm = r.grad_norm;
        return r.items;
    }
};

// yolov5n (nc 3) on both devices from the same weights, an EMA each, and fixed synthetic batches of 4 images of
// 64×96 (hyp.scratch-low.yaml's loss gains scaled as train.py scales them: 3 levels, nc 3, imgsz 96).
struct TrainPair {
    static constexpr int nc = 3, bs = 4, h = 64, w = 96;
    Pair m;
    Model ema_c, ema_g;
    Side cs, gs;
    LossHyp lh;
    std::vector<Batch> batches;
    Trainer rc, rg;
    TrainPair(Gpu& g, int steps)
        : m(src("config/models/yolov5n.yaml"), nc, g.cuda, "", 10), ema_c(src("config/models/yolov5n.yaml"), nc),
          ema_g(src("config/models/yolov5n.yaml"), nc), cs(Device::CPU, nullptr, size_t(1) << 30, size_t(1) << 30),
          gs(Device::CUDA, g.cuda, size_t(1) << 30, size_t(512) << 20), lh(loss_hyp()),
          rc{cs, TrainStep(m.cpu, ema_c, lh)}, rg{gs, TrainStep(m.gpu, ema_g, lh)} {
        ema_c.allocate(Device::CPU);
        ema_g.allocate(Device::CUDA, DType::F32, g.cuda);
        copy(cs.ctx, ema_c.params.values_flat(), m.cpu.params.values_flat());
        copy(gs.ctx, ema_g.params.values_flat(), m.gpu.params.values_flat());
        m.cpu.params.zero_grad();
        m.gpu.params.zero_grad();
        Rng rng(11);
        for (int s = 0; s < steps; ++s) batches.push_back(synthetic_batch(rng, bs, h, w, nc));
    }
    static LossHyp loss_hyp() {
        LossHyp lh;
        lh.box = 0.05, lh.cls = 0.5 * nc / 80.0, lh.obj = 1.0 * (w / 640.0) * (w / 640.0), lh.anchor_t = 4.0;
        return lh;
    }
    // The GPU side takes the CPU side's weights, BN statistics, momentum and EMA (the gradients are zero on both).
    void sync() {
        copy(gs.ctx, m.gpu.params.values_flat(), m.cpu.params.values_flat());
        copy(gs.ctx, m.gpu.params.momentum_flat(), m.cpu.params.momentum_flat());
        copy(gs.ctx, ema_g.params.values_flat(), ema_c.params.values_flat());
    }
};

// One step's bounds, GPU against CPU: relative for the loss items and the gradient norm, check_elems's t for every
// parameter's value, momentum and EMA. Measured worst on the emulator (forward and reverse order, the same) over
// 10 steps from the CPU's state and 4 carried ones: loss items 1.1e-6, gradient norm 4.5e-5, values 2.4e-5 (a deep
// BN's running mean), momentum 1.1e-3 (the step's clipped gradient: the gradients' 1e-3 above), EMA 2.4e-5.
struct StepTol {
    double loss, norm, value, momentum, ema;
};
constexpr StepTol kStepTol{5e-6, 3e-4, 2e-4, 6e-3, 2e-4};

void check_scalar(const std::string& what, double got, double want, double t) {
    INFO(what << ": gpu " << got << ", cpu " << want);
    CHECK(std::fabs(got - want) <= t * std::fabs(want));
}

// One step on both sides (batch s), then everything the step produced: the loss items, the gradient norm, and
// every parameter's value (weights and BN statistics), momentum and EMA.
void step_and_check(TrainPair& t, int s, const SgdGroup* groups, const StepTol& tol, const std::string& tag) {
    double nc = 0, ng = 0;
    const LossItems a = t.rc.run(t.batches[s], groups, &nc), b = t.rg.run(t.batches[s], groups, &ng);
    const std::string at = tag + " step " + std::to_string(s) + ": ";
    CHECK(std::isfinite(b.total));
    check_scalar(at + "lbox", b.lbox, a.lbox, tol.loss);
    check_scalar(at + "lobj", b.lobj, a.lobj, tol.loss);
    check_scalar(at + "lcls", b.lcls, a.lcls, tol.loss);
    check_scalar(at + "total", b.total, a.total, tol.loss);
    check_scalar(at + "grad norm", ng, nc, tol.norm);
    Ctx& gc = t.gs.ctx;
    const std::vector<float> vg = to_host(gc, t.m.gpu.params.values_flat()), vc = to_host(gc, t.m.cpu.params.values_flat());
    const std::vector<float> mg = to_host(gc, t.m.gpu.params.momentum_flat()), mc = to_host(gc, t.m.cpu.params.momentum_flat());
    const std::vector<float> eg = to_host(gc, t.ema_g.params.values_flat()), ec = to_host(gc, t.ema_c.params.values_flat());
    for (int i = 0; i < t.m.cpu.params.size(); ++i) {
        const Param& p = t.m.cpu.params[i];
        const int64_t o = p.offset, n = p.shape.numel();
        check_elems(at + "value " + p.name, vg.data() + o, vc.data() + o, n, tol.value);
        if (p.trainable()) check_elems(at + "momentum " + p.name, mg.data() + o, mc.data() + o, n, tol.momentum);
        check_elems(at + "EMA " + p.name, eg.data() + o, ec.data() + o, n, tol.ema);
    }
}

}  // namespace

TEST_CASE("training steps on the GPU, each from the CPU's state, equal the CPU's", "[gpu][model][train]") {
    // The run itself is chaotic: with these learning rates (biases 0.05, no warmup) a 1e-6 relative change of the
    // CPU run's initial weights puts the CPU's own weights 6.9e-5, 2.1e-3, 4.3e-2 apart after steps 0, 1, 2 and
    // the gradient norms 31% apart at step 2 (at 128×160 the same: 4.9e-5, 1.5e-3, 5.7e-2), as GPU against CPU
    // went (7.9e-6, 1.4e-3, 2.3e-2). So each step starts from the CPU's state and is compared as one step.
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    const int steps = 4;
    TrainPair t(g, steps);
    const SgdGroup groups[3] = {{0.05, 0.9, 0.0}, {0.01, 0.9, 5e-4}, {0.01, 0.9, 0.0}};  // warmup-like: biases faster
    for (int s = 0; s < steps; ++s) {
        t.sync();
        step_and_check(t, s, groups, kStepTol, "from the CPU's state,");
    }
}

TEST_CASE("pipelined training steps on the GPU give the waiting steps' bits, and the host waits only to collect",
          "[gpu][model][train]" Y5_EMU_SLOW) {
    // y5train's pipelined step (engine/app/step.h): uploads on the copy stream, the loss items and the gradient
    // norm into page-locked memory, mixed precision's scaler on the device, each step's result collected after the
    // next one is queued. From the same state, three steps each way: the same loss items, norms, skips, loss scale,
    // and weight, momentum and EMA bits; in f32, in AMP (some steps skipped), and in AMP from a scale so large that
    // every step's gradients overflow (each skipped, the scale halved, SGD changing nothing). On the emulated device the steps
    // after the first (and the last collect()) are counted: the host may wait twice per step (for the copy of the
    // batch's images to leave before run() returns, and in collect()); the waiting step waits at least three times
    // (its images' upload, the loss items, the clip's norm; the unscale's flag under AMP).
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    const int steps = 3;
    TrainPair t(g, steps);
    const SgdGroup groups[3] = {{0.05, 0.9, 0.0}, {0.01, 0.9, 5e-4}, {0.01, 0.9, 0.0}};
    struct Run {
        std::vector<StepResult> r;
        std::vector<float> values, momentum, ema;
        float scale = 0;
        int32_t tracker = 0;
        uint64_t waits = 0;  // host waits over steps 1.. (emulated device)
    };
    auto run = [&](bool pipelined, bool amp, float scale) {
        t.sync();
        TrainStep& st = t.rg.step;
        st.updates = 0, st.last_opt_step = -1, st.pipelined = pipelined, st.amp = amp;
        st.scaler.set_state(scale, 0);
        Run out;
        uint64_t w0 = 0;
        for (int s = 0; s < steps; ++s) {
#if Y5_CUDA_EMU
            if (s == 1) w0 = cudaemu::stats().host_waits;
#endif
            t.gs.reset();
            st.run(t.gs.ctx, t.batches[s], s, 1, groups);
            if (st.in_flight() == 2 || !pipelined) out.r.push_back(st.collect());
        }
        while (st.in_flight()) out.r.push_back(st.collect());
#if Y5_CUDA_EMU
        out.waits = cudaemu::stats().host_waits - w0;
#endif
        (void)w0;
        Ctx& gc = t.gs.ctx;
        out.values = to_host(gc, t.m.gpu.params.values_flat());
        out.momentum = to_host(gc, t.m.gpu.params.momentum_flat());
        out.ema = to_host(gc, t.ema_g.params.values_flat());
        out.scale = st.scaler.loss_scale(), out.tracker = st.scaler.growth_tracker();
        st.pipelined = false, st.amp = false;
        return out;
    };
    // skips: f32 none; AMP from 2^16 some (this small model's first gradients overflow f16 at that scale: steps 0
    // and 2 are skipped, as torch's GradScaler would) but not all; from 2^100 all.
    enum Skips { kNone, kSome, kAll };
    struct Case {
        const char* name;
        bool amp;
        float scale;
        Skips skips;
    };
    for (const Case& k : {Case{"f32", false, GradScaler::kInitScale, kNone}, Case{"AMP", true, GradScaler::kInitScale, kSome},
                          Case{"AMP, overflowing", true, 0x1p100f, kAll}}) {
        const Run a = run(false, k.amp, k.scale), b = run(true, k.amp, k.scale);
        REQUIRE(a.r.size() == (size_t)steps);
        REQUIRE(b.r.size() == (size_t)steps);
        int skipped = 0;
        for (const StepResult& r : a.r) skipped += r.skipped;
        INFO(k.name << ": " << skipped << " of " << steps << " steps skipped");
        CHECK(skipped == (k.skips == kNone ? 0 : k.skips == kAll ? steps : std::clamp(skipped, 1, steps - 1)));
        for (int s = 0; s < steps; ++s) {
            INFO(k.name << " step " << s << ": total " << a.r[s].items.total << " / " << b.r[s].items.total
                        << ", norm " << a.r[s].grad_norm << " / " << b.r[s].grad_norm);
            CHECK(b.r[s].finite);
            CHECK(b.r[s].stepped);
            CHECK(std::isfinite(a.r[s].items.total));
            CHECK(b.r[s].skipped == a.r[s].skipped);
            if (!a.r[s].skipped) CHECK(a.r[s].grad_norm > 0);
            CHECK(b.r[s].items.lbox == a.r[s].items.lbox);
            CHECK(b.r[s].items.lobj == a.r[s].items.lobj);
            CHECK(b.r[s].items.lcls == a.r[s].items.lcls);
            CHECK(b.r[s].items.total == a.r[s].items.total);
            CHECK((b.r[s].grad_norm == a.r[s].grad_norm || (std::isnan(a.r[s].grad_norm) && std::isnan(b.r[s].grad_norm))));
        }
        INFO(k.name << ": loss scale " << a.scale << " / " << b.scale);
        CHECK(b.scale == a.scale);
        CHECK(b.tracker == a.tracker);
        if (k.skips == kAll) CHECK(a.scale == std::ldexp(k.scale, -steps));
        CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(a.momentum.data(), b.momentum.data(), a.momentum.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(a.ema.data(), b.ema.data(), a.ema.size() * sizeof(float)) == 0);
#if Y5_CUDA_EMU
        INFO(k.name << ": host waits over steps 1-2: waiting " << a.waits << ", pipelined " << b.waits);
        CHECK(b.waits <= 2 * (steps - 1) + 1);
        CHECK(a.waits >= 3 * (steps - 1));
#endif
    }
}

TEST_CASE("CUDA graphs: captured and replayed training steps give the pipelined steps' bits", "[gpu][model][train]"
          Y5_EMU_SLOW) {
    // TrainStep::cuda_graph: a batch shape's first step runs as it is, its second is captured, later ones replay
    // the graph; a batch with more targets than the graph's lists hold is captured again. Five steps: shape A
    // (eager, captured), shape B (eager), A with sixteen times the targets (captured again), A (replayed); against
    // the same five pipelined steps without graphs: the same loss items, norms and weight, momentum, EMA and
    // loss-scale bits, in AMP with recomputation (the device scaler's seed inside the graph) and --multi-scale's
    // resize (the resized image rebuilt), and in f32 without recomputation with --quad's loss gain (the uploaded
    // seed).
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    const int steps = 5;
    TrainPair t(g, steps);
    {
        Rng rng(5);
        t.batches[2] = synthetic_batch(rng, TrainPair::bs, TrainPair::w, TrainPair::h, TrainPair::nc);
        std::vector<float>& tg = t.batches[3].targets;
        const std::vector<float> one = tg;
        for (int k = 1; k < 16; ++k) tg.insert(tg.end(), one.begin(), one.end());
        REQUIRE(t.batches[3].num_targets() >= 64);
    }
    const SgdGroup groups[3] = {{0.05, 0.9, 0.0}, {0.01, 0.9, 5e-4}, {0.01, 0.9, 0.0}};
    struct Run {
        std::vector<StepResult> r;
        std::vector<float> values, momentum, ema;
        float scale = 0;
        int captures = 0, replays = 0;
    };
    struct Case {
        const char* name;
        bool amp, recompute;
        double loss_gain;
        int resize;
    };
    auto run = [&](const Case& k, bool graphs) {
        t.sync();
        TrainStep& st = t.rg.step;
        st.updates = 0, st.last_opt_step = -1, st.pipelined = true, st.amp = k.amp, st.cuda_graph = graphs;
        st.recompute = k.recompute, st.loss_gain = k.loss_gain, st.resize_h = st.resize_w = k.resize;
        st.scaler.set_state(GradScaler::kInitScale, 0);
        const int c0 = st.graph_captures, r0 = st.graph_replays;
        Run out;
        for (int s = 0; s < steps; ++s) {
            t.gs.reset();
            st.run(t.gs.ctx, t.batches[s], s, 1, groups);
            if (st.in_flight() == 2) out.r.push_back(st.collect());
        }
        while (st.in_flight()) out.r.push_back(st.collect());
        Ctx& gc = t.gs.ctx;
        out.values = to_host(gc, t.m.gpu.params.values_flat());
        out.momentum = to_host(gc, t.m.gpu.params.momentum_flat());
        out.ema = to_host(gc, t.ema_g.params.values_flat());
        out.scale = st.scaler.loss_scale();
        out.captures = st.graph_captures - c0, out.replays = st.graph_replays - r0;
        st.pipelined = false, st.amp = false, st.cuda_graph = false, st.recompute = true, st.loss_gain = 1;
        st.resize_h = st.resize_w = 0;
        return out;
    };
    for (const Case& k : {Case{"AMP, resized to 64", true, true, 1.0, 64}, Case{"f32, no recomputation, loss gain 4", false, false, 4.0, 0}}) {
        const Run a = run(k, false), b = run(k, true);
        INFO(k.name << ": " << b.captures << " captures, " << b.replays << " replays");
        CHECK(a.captures == 0);
        CHECK(b.captures == 2);
        CHECK(b.replays == 1);
        REQUIRE(a.r.size() == (size_t)steps);
        REQUIRE(b.r.size() == (size_t)steps);
        for (int s = 0; s < steps; ++s) {
            INFO(k.name << " step " << s << ": total " << a.r[s].items.total << " / " << b.r[s].items.total);
            CHECK(std::isfinite(a.r[s].items.total));
            CHECK(b.r[s].items.lbox == a.r[s].items.lbox);
            CHECK(b.r[s].items.lobj == a.r[s].items.lobj);
            CHECK(b.r[s].items.lcls == a.r[s].items.lcls);
            CHECK(b.r[s].items.total == a.r[s].items.total);
            for (int i = 0; i < a.r[s].items.nl; ++i) CHECK(b.r[s].items.n[i] == a.r[s].items.n[i]);
            CHECK(b.r[s].skipped == a.r[s].skipped);
            CHECK((b.r[s].grad_norm == a.r[s].grad_norm || (std::isnan(a.r[s].grad_norm) && std::isnan(b.r[s].grad_norm))));
        }
        CHECK(b.scale == a.scale);
        CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(a.momentum.data(), b.momentum.data(), a.momentum.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(a.ema.data(), b.ema.data(), a.ema.size() * sizeof(float)) == 0);
    }
}

TEST_CASE("training steps on the GPU at a small learning rate stay with the CPU's", "[gpu][model][train]") {
    // Each side carries its own weights, momentum, EMA and BN statistics from step to step. At 1/1000 of the
    // learning rates above the run is not chaotic: a 1e-6 relative change of the initial weights stays ≤ 7e-5
    // apart in the weights (from step 0 on, not growing), ≤ 3e-4 in the gradient norm and ≤ 4e-6 in the loss over
    // ten CPU steps (at 1/100 it already grows: 5e-4 in the weights after ten).
    Gpu& g = gpu();
    g.reset();
    Tf32Off tf;
    const int steps = 2;
    TrainPair t(g, steps);
    const SgdGroup groups[3] = {{5e-5, 0.9, 0.0}, {1e-5, 0.9, 5e-4}, {1e-5, 0.9, 0.0}};
    for (int s = 0; s < steps; ++s) step_and_check(t, s, groups, kStepTol, "carried,");
}

#endif
