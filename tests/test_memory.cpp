/*
 * The memory plan (engine/app/memory.h) and inference liveness (engine/core/arena.h tracking, Model::forward):
 * the tracking arena's reuse and coalescing, the liveness forward giving the same bits as keeping everything
 * with a lower peak, the plan bounding a real batch, the training plan's replay equal to a real step's peaks, and
 * y5train's plan for YOLOv5's seed command (batch 64 at 640) against a 15 GB device budget.
 */
#include <algorithm>
#include <cstring>
#include <filesystem>

#include "engine/app/memory.h"
#include "engine/app/step.h"
#include "engine/app/val.h"
#include "layers/model.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

static std::string src(const std::string& rel) { return std::string(Y5_SOURCE_DIR) + "/" + rel; }

TEST_CASE("a tracking arena reuses released blocks and lowers its top", "[memory][arena]") {
    Arena a("t", Device::CPU, 1 << 20);
    a.set_tracking(true);
    char* p0 = static_cast<char*>(a.alloc(1000));   // 1024 bytes as a block
    char* p1 = static_cast<char*>(a.alloc(3000));   // 3072
    char* p2 = static_cast<char*>(a.alloc(256));
    CHECK(p1 == p0 + 1024);
    CHECK(p2 == p1 + 3072);
    CHECK(a.used() == 1024 + 3072 + 256);
    a.release(p1 + 100);  // any address inside a block releases it (a view's data)
    CHECK(a.blocks().size() == 2);
    CHECK(a.used() == 1024 + 3072 + 256);  // a hole below the top: the top stays
    char* p3 = static_cast<char*>(a.alloc(2048));  // first fit: the hole's start
    CHECK(p3 == p1);
    char* p4 = static_cast<char*>(a.alloc(1024));  // the rest of the hole, not the top
    CHECK(p4 == p1 + 2048);
    CHECK(a.used() == 1024 + 3072 + 256);
    a.release(p2);  // the top block: the top comes down
    CHECK(a.used() == 1024 + 3072);
    a.release(p3);
    a.release(p0);  // holes [0, 1024) and [1024, 3072) coalesce
    char* p5 = static_cast<char*>(a.alloc(3072));
    CHECK(p5 == p0);
    a.release(p4);
    a.release(p5);  // everything released: the top is back at 0
    CHECK(a.used() == 0);
    CHECK(a.blocks().empty());
    CHECK(a.peak() == 1024 + 3072 + 256);
    CHECK_THROWS_WITH(a.release(p0), Contains("not a tracked block"));
    a.alloc(512);
    a.reset();
    CHECK(a.blocks().empty());
    CHECK(a.tracking());
    a.alloc(512);
    CHECK_THROWS_WITH(a.set_tracking(true), Contains("starts on an empty arena"));
}

// A model from a yaml on the CPU with random weights from rng.
static std::unique_ptr<Model> random_model(const char* yaml, int nc, Rng& rng) {
    auto m = std::make_unique<Model>(src(yaml), nc);
    m->allocate(Device::CPU);
    m->init_weights(rng);
    return m;
}

// Decoded predictions and maps of one eval forward with the tape off (host copies), and the activation peak.
struct EvalRun {
    std::vector<std::vector<char>> bytes;  // the maps, then the decoded predictions
    size_t peak = 0;
};

static EvalRun eval_run(Model& m, const Tensor& x, bool tracking, bool autocast) {
    TestCtx tc;
    tc.ctx.autocast = autocast;
    NoGrad ng(tc.tape);
    tc.act.set_tracking(tracking);
    Tensor xin = tc.act.tensor(x.shape, x.dtype);  // the input in the arena, as batch_images puts it
    std::memcpy(xin.data, x.data, x.bytes());
    Model::Output o = m.forward(tc.ctx, Tape::constant(xin), false);
    EvalRun r;
    for (const Var& v : o.maps) r.bytes.emplace_back((char*)v.t.data, (char*)v.t.data + v.t.bytes());
    r.bytes.emplace_back((char*)o.decoded.data, (char*)o.decoded.data + o.decoded.bytes());
    r.peak = tc.act.peak();
    return r;
}

// The liveness forward changes where tensors live, never a value: the outputs are equal bit for bit. Its peak is
// what is live at once. Measured at 2×3×128×160: yolov5n f32 keeps 16.4 % of the keep-everything peak, AMP 14.6 %,
// yolov5n-eca 16.1 %, fused 16.4 % and 14.6 %. Releasing only inside modules (no row sweep) gave 61 %, only the
// row sweep 30 %: the bound (25 %) fails if either stops.
static void check_liveness(const char* yaml, bool autocast, bool fused) {
    Rng rng(11);
    const auto mp = random_model(yaml, 3, rng);
    Model& m = *mp;
    if (fused) m.fuse();
    m.blocked_inference = false;  // the plain path's liveness (the blocked one keeps only the maps in the arena)
    TestCtx data;
    const Tensor x = rand_tensor(data.data, {2, 3, 128, 160}, DType::F32, rng, 0, 1);
    const EvalRun all = eval_run(m, x, false, autocast), live = eval_run(m, x, true, autocast);
    REQUIRE(live.bytes.size() == all.bytes.size());
    for (size_t i = 0; i < all.bytes.size(); ++i) {
        INFO("output " << i);
        REQUIRE(live.bytes[i].size() == all.bytes[i].size());
        CHECK(std::memcmp(live.bytes[i].data(), all.bytes[i].data(), all.bytes[i].size()) == 0);
    }
    INFO(yaml << (autocast ? " AMP" : " f32") << (fused ? " fused" : "") << ": peak " << live.peak << " of " << all.peak
              << " bytes (" << 100.0 * live.peak / all.peak << " %)");
    CHECK(live.peak < all.peak * 0.25);
}

TEST_CASE("the liveness forward equals keeping everything, with a lower peak", "[memory][liveness]") {
    SECTION("yolov5n f32") { check_liveness("config/models/yolov5n.yaml", false, false); }
    SECTION("yolov5n AMP") { check_liveness("config/models/yolov5n.yaml", true, false); }
    SECTION("yolov5n-eca f32") { check_liveness("config/models/yolov5n-eca.yaml", false, false); }
    SECTION("yolov5n fused") { check_liveness("config/models/yolov5n.yaml", false, true); }
    SECTION("yolov5n fused AMP") { check_liveness("config/models/yolov5n.yaml", true, true); }
}

TEST_CASE("the inference plan bounds a real batch's peak", "[memory][plan]") {
    Rng rng(12);
    const auto mp = random_model("config/models/yolov5n.yaml", 80, rng);
    Model& m = *mp;
    const LossHyp lh;
    for (bool amp : {false, true}) {
        const StepMemory one = measure_eval_image(m, 160, 160, lh, amp, true);
        const StepMemory plan = plan_inference(m, one, 6, 0);
        TestCtx tc;
        tc.ctx.autocast = amp;
        NoGrad ng(tc.tape);
        tc.act.set_tracking(true);
        Batch b;
        b.n = 6, b.h = 160, b.w = 128;  // a rect batch, narrower than the measured side
        b.images.resize((size_t)6 * 3 * 160 * 128);
        for (uint8_t& v : b.images) v = (uint8_t)rng.randint(256);
        b.targets = {0, 1, 0.5f, 0.5f, 0.3f, 0.2f, 3, 7, 0.4f, 0.6f, 0.1f, 0.1f};
        Tensor x = batch_images(tc.ctx, b);
        Model::Output o = m.forward(tc.ctx, Tape::constant(x), false);
        std::vector<float> ah;
        yolo_loss(tc.ctx, o.maps, batch_targets(b), m.loss_anchors(&ah), lh);
        INFO((amp ? "AMP" : "f32") << ": one image " << one.act << " bytes; batch of 6: peak " << tc.act.peak()
                                   << ", plan " << plan.act);
        CHECK(tc.act.peak() <= plan.act);
        // Without the plan's 64 MiB of headroom (which hid it here): the per-image part of the measure must bound the
        // batch. Seen on an H200 at 640, batch 128 in one forward: the AMP weight copies were counted as fixed though
        // they are not live at the forward's peak, and the plan fell 0.1 GB short.
        CHECK(tc.act.peak() <= plan.act - ((size_t)64 << 20));
        CHECK(tc.act.peak() > 3 * one.act);  // the measure is of the same thing: six images take several times one
    }
}

// Two training steps (TrainStep, as y5train runs them: optimizer every batch, several targets per image, a
// non-square batch's worth of boxes) of a fresh yolov5n (nc 80, seeded init) on bs random images at side × side, on
// arenas of exactly the plan y5train makes for them, which poison what they get back (a read of a dropped value is
// NaN). resize > 0: the batch resized to resize × resize first (--multi-scale; the plan then also holds the batch
// before its resize, as plan_train_run's). The weights after, the activation arena's peak and the plan.
struct PlannedSteps {
    std::vector<char> weights;
    size_t peak = 0, one_act = 0;
    StepMemory plan;
};
static PlannedSteps planned_steps(bool amp, bool recompute, int bs, int side, int resize, uint64_t seed) {
    Model m(src("config/models/yolov5n.yaml"), 80), ema(src("config/models/yolov5n.yaml"), 80);
    m.allocate(Device::CPU);
    ema.allocate(Device::CPU);
    Rng rng(seed);
    m.init_weights(rng);
    const LossHyp lh;
    PlannedSteps r;
    const StepMemory one = measure_one_image(m, side, side, lh, amp, recompute);
    REQUIRE(one.traces);
    r.one_act = one.act;
    r.plan = plan_training(m, one, bs);
    if (resize > 0) r.plan.act += (size_t)bs * 3 * side * side * sizeof(float);
    Workspace w;
    w.make(Device::CPU, nullptr, r.plan);
    w.act->set_poison(true);
    TrainStep step(m, ema, lh);
    step.amp = amp, step.recompute = recompute;
    step.resize_h = step.resize_w = resize;
    Batch b;
    b.n = bs, b.h = side, b.w = side;
    b.images.resize((size_t)bs * 3 * side * side);
    for (uint8_t& v : b.images) v = (uint8_t)rng.randint(256);
    for (int i = 0; i < 3 * bs; ++i)
        b.targets.insert(b.targets.end(), {(float)(i % bs), (float)(i % 80), rng.uniform(0.2f, 0.8f),
                                           rng.uniform(0.2f, 0.8f), rng.uniform(0.05f, 0.3f), rng.uniform(0.05f, 0.3f)});
    const SgdGroup groups[3] = {{0.01, 0.9, 0.0}, {0.01, 0.9, 5e-4}, {0.01, 0.9, 0.0}};
    for (int s = 0; s < 2; ++s) CHECK(step.run(w.ctx, b, s, 1, groups).finite);
    const Tensor v = m.params.values_flat();
    r.weights.assign((const char*)v.data, (const char*)v.data + v.bytes());
    r.peak = w.act->peak();
    return r;
}

// The training plan replays the step's allocations at the batch's sizes (replay_peak): a real step on arenas of
// exactly the planned sizes reaches exactly the planned peaks, f32 and AMP, with and without recomputation. A replay
// that missed fragmentation, or a plan that dropped back to the 10 % headroom, fails. The steps leave the same
// weights with and without recomputation, bit for bit (the image dropped after the first row and rebuilt from its
// pixels for the first conv's weight gradient: a read of the dropped image is NaN).
TEST_CASE("the training plan is a real step's peak, exactly", "[memory][plan]") {
    for (bool amp : {false, true}) {
        std::vector<char> weights[2];
        for (bool recompute : {true, false}) {
            const PlannedSteps r = planned_steps(amp, recompute, 5, 160, 0, 14);
            INFO((amp ? "AMP" : "f32") << (recompute ? ", recompute" : "") << ": activations and gradients " << r.peak
                                       << " of " << r.plan.act << " planned (one image " << r.one_act
                                       << "; at the peak " << r.plan.grads << " of gradients)");
            CHECK(r.peak == r.plan.act);
            CHECK(r.plan.grads > 0);
            weights[recompute] = r.weights;
        }
        REQUIRE(weights[0].size() == weights[1].size());
        CHECK(std::memcmp(weights[0].data(), weights[1].data(), weights[0].size()) == 0);
    }
}

// --multi-scale: the step trains on the batch resized (here 160 → 128); under recomputation the resized image is
// dropped after the first row and rebuilt from the batch before its resize (kept in the arena, as the plan counts it).
// The same weights either way, bit for bit, within the plan y5train makes.
TEST_CASE("a resized batch (--multi-scale) gives the same weights with and without recomputation", "[memory][recompute]") {
    for (bool amp : {false, true}) {
        const PlannedSteps re = planned_steps(amp, true, 3, 160, 128, 15), keep = planned_steps(amp, false, 3, 160, 128, 15);
        INFO((amp ? "AMP" : "f32") << ": peaks " << re.peak << " and " << keep.peak);
        CHECK(re.peak <= re.plan.act);
        REQUIRE(re.weights.size() == keep.weights.size());
        CHECK(std::memcmp(re.weights.data(), keep.weights.data(), re.weights.size()) == 0);
    }
}

// YOLOv5's seed command on a T4 (15 GB): y5train's plan for batch 64 at 640 (validation: batch 128 with sides up to
// 672), measured on the CPU path (the same planner; the GPU's adds cuDNN's capped workspace), must pass the check.
// Measured with recomputation (y5train's default on a GPU): f32 4.2 GB, AMP 2.3 GB (activations and their gradients
// in one arena, planned by replaying the step's allocations; tests/test_gpu_recompute.cpp checks the GPU path's). Before validation reused the training
// arenas, the gradients' memory was reused by any shape and the BatchNorm outputs were recomputed: 33.8 GB and
// 18.3 GB, refused.
TEST_CASE("y5train's plan for batch 64 at 640 fits a 15 GB device", "[memory][plan]") {
    Rng rng(13);
    const auto mp = random_model("config/models/yolov5n.yaml", 80, rng);
    Model& m = *mp;
    const LossHyp lh;
    const int64_t t4 = 15'000'000'000;
    const StepMemory amp = plan_train_run(m, 640, 64, 128, lh, true, false);
    const StepMemory f32 = plan_train_run(m, 640, 64, 128, lh, false, false);
    INFO("AMP " << amp.total() << " bytes, f32 " << f32.total() << " bytes");
    CHECK_NOTHROW(check_fits(Device::CUDA, {amp}, "batch 64 at --imgsz 640", "--batch-size or --imgsz", t4));
    CHECK_NOTHROW(check_fits(Device::CUDA, {f32}, "batch 64 at --imgsz 640", "--batch-size or --imgsz", t4));
    CHECK(amp.total() < f32.total() * 0.6);
    CHECK_THROWS_WITH(check_fits(Device::CUDA, {amp}, "batch 64 at --imgsz 640", "--batch-size or --imgsz", 2'000'000'000),
                      Contains("batch 64 at --imgsz 640 needs") && Contains("lower --batch-size or --imgsz"));
}

// Tiny images: one image's validation plan is mostly the fixed headroom and larger than training's, so validation
// takes the whole batch in one forward (growing the arena by at most that headroom) instead of one image at a time.
// At 640 the training arenas decide, as before.
TEST_CASE("validation's chunk at tiny images is the whole batch", "[memory][plan]") {
    Rng rng(14);
    const auto mp = random_model("config/models/yolov5n.yaml", 3, rng);
    Model& m = *mp;
    const LossHyp lh;
    int chunk = 0;
    const StepMemory tiny = plan_train_run(m, 96, 16, 32, lh, false, false, false, 0, 0, &chunk);
    CHECK(chunk == 32);
    CHECK(tiny.act < ((size_t)256 << 20));
    CHECK(!m.fused());  // the plan measured the folded forward (ValFold) and left the model as it was
}

// ----------------------------------------------------------------------------------------------------
// Recomputation (Ctx::recompute): BatchNorm + activation outputs dropped after the forward, rebuilt in backward.

static std::string write_yaml(const std::string& name, const std::string& text) {
    const std::string path = "/tmp/y5_test_mem_" + name;
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
    return path;
}

static std::string read_yaml(const std::string& path) {
    std::string s;
    FILE* f = std::fopen(path.c_str(), "r");
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
    std::fclose(f);
    return s;
}

struct TrainRun {
    std::vector<char> grads, values;  // every parameter's gradient, and the values (BN running statistics)
    size_t peak = 0, zeroed = 0;      // zeroed: bytes of gradient the tape zeroed
    size_t f16_copies = 0;            // under autocast: bytes of the parameters' f16 copies (autocast_copy_bytes)
};

// One training forward, the loss and the backward of a fresh model (seeded init), on a tracking activation arena
// whose released blocks are poisoned (NaN): a backward that read a dropped value directly would give NaN.
// map_reader: an op on map 0 recorded after the loss, seeded with zeros (its backward runs first). one_arena:
// the gradients in the activations' arena, as y5train's Workspace has them (else TestCtx's own gradient arena).
// poison: every gradient the tape hands out unzeroed starts as NaN (Tape::set_poison).
static TrainRun train_run(const std::string& yaml, DType dt, bool autocast, bool recompute, bool map_reader = false,
                          bool one_arena = false, bool poison = false) {
    Model m(yaml, 3);
    m.allocate(Device::CPU, dt);
    Rng rng(21);
    m.init_weights(rng);
    TestCtx tc;
    tc.act.set_tracking(true);
    tc.act.set_poison(true);
    Tape shared(&tc.act);
    if (one_arena) tc.ctx.tape = &shared;
    tc.ctx.tape->set_poison(poison);
    tc.ctx.autocast = autocast, tc.ctx.recompute = recompute;
    Tensor xd = rand_tensor(tc.data, {2, 3, 128, 160}, dt, rng, 0, 1);
    Tensor x = tc.act.tensor(xd.shape, dt);
    std::memcpy(x.data, xd.data, xd.bytes());
    Model::Output o = m.forward(tc.ctx, Tape::constant(x), true);
    std::vector<float> rows = {0, 1, 0.5f, 0.5f, 0.3f, 0.2f, 1, 2, 0.3f, 0.6f, 0.1f, 0.15f, 1, 0, 0.7f, 0.4f, 0.5f, 0.5f};
    std::vector<double> rows64(rows.begin(), rows.end());
    Tensor t = dt == DType::F64 ? Tensor(rows64.data(), Shape{3, 6}, dt, Device::CPU)
                                : Tensor(rows.data(), Shape{3, 6}, DType::F32, Device::CPU);
    std::vector<float> ah;
    YoloLoss L = yolo_loss(tc.ctx, o.maps, t, m.loss_anchors(&ah), LossHyp{});
    if (map_reader) {
        Var z = add(tc.ctx, o.maps[0], o.maps[0]);
        Tensor one = tc.data.tensor({1}, L.total.t.dtype), zeros = tc.data.tensor(z.t.shape, z.t.dtype);
        std::memset(zeros.data, 0, zeros.bytes());
        if (one.dtype == DType::F64) one.ptr<double>()[0] = 1.0;
        else one.ptr<float>()[0] = 1.f;
        tc.ctx.tape->backward({L.total, z}, {one, zeros});
    } else {
        tc.ctx.tape->backward(L.total);
    }
    TrainRun r;
    const Tensor g = m.params.grads_flat(), v = m.params.values_flat();
    r.grads.assign((char*)g.data, (char*)g.data + g.bytes());
    r.values.assign((char*)v.data, (char*)v.data + v.bytes());
    r.peak = tc.act.peak();
    r.zeroed = tc.ctx.tape->zeroed_bytes();
    r.f16_copies = autocast ? autocast_copy_bytes(m) : 0;
    return r;
}

// The same gradients and statistics bit for bit with and without recomputation (the rebuild runs the forward's own
// normalising pass on the saved statistics, or the add), and a lower activation peak. Measured at 2×3×128×160:
// yolov5n f32 keeps 61.4 % of the peak, f64 61.1 %, yolov5n-eca 63.4 %, the Focus/SPP/Bottleneck/ReLU6 variant
// 66.6 %; AMP 72.7 % and 76.4 % (its f16 weight copies, 3.8 MB for any batch, are much of the peak at this size);
// the bounds (75 %, AMP 85 %) fail if the drops stop. A closure that read a dropped value without Tape::value, or
// a block released twice, reads poison: NaN gradients, unequal bits (the image's release under autocast once did).
static void check_recompute(const std::string& yaml, DType dt, bool autocast) {
    const TrainRun keep = train_run(yaml, dt, autocast, false), re = train_run(yaml, dt, autocast, true);
    REQUIRE(keep.grads.size() == re.grads.size());
    CHECK(std::memcmp(keep.grads.data(), re.grads.data(), keep.grads.size()) == 0);
    CHECK(std::memcmp(keep.values.data(), re.values.data(), keep.values.size()) == 0);
    bool finite = true;
    const int64_t n = (int64_t)keep.grads.size() / dtype_size(dt);
    for (int64_t i = 0; i < n; ++i)
        finite = finite && std::isfinite(dt == DType::F64 ? ((const double*)re.grads.data())[i]
                                                          : ((const float*)re.grads.data())[i]);
    CHECK(finite);
    INFO(yaml << (autocast ? " AMP" : "") << ": peak " << re.peak << " of " << keep.peak << " bytes ("
              << 100.0 * re.peak / keep.peak << " %)");
    CHECK(re.peak < keep.peak * (autocast ? 0.85 : 0.75));
}

// The loss's backward (recomputing, as y5train runs it) writes the maps' gradients over the maps themselves
// (Tape::grad_over_value: no gradient map beside the maps at its peak); where an op after the loss gave a map a
// gradient first, it adds into the gradients instead. The parameters' gradients are the same values either way.
TEST_CASE("the loss's backward writes the maps' gradients over the maps", "[memory][grads]") {
    for (bool autocast : {false, true}) {
        const std::string yaml = src("config/models/yolov5n.yaml");
        const TrainRun over = train_run(yaml, DType::F32, autocast, true, false, true),
                       added = train_run(yaml, DType::F32, autocast, true, true, true);
        REQUIRE(over.grads.size() == added.grads.size());
        const float *a = (const float*)over.grads.data(), *b = (const float*)added.grads.data();
        int64_t differ = 0, nonzero = 0;
        for (size_t i = 0; i < over.grads.size() / sizeof(float); ++i) {
            differ += !(a[i] == b[i]);
            nonzero += a[i] != 0;
        }
        INFO((autocast ? "AMP" : "f32") << ": " << differ << " gradients differ, " << nonzero << " non-zero");
        CHECK(differ == 0);
        CHECK(nonzero > 1000);
    }
}

TEST_CASE("recomputation gives the same gradients with less activation memory", "[memory][recompute]") {
    SECTION("yolov5n f32") { check_recompute(src("config/models/yolov5n.yaml"), DType::F32, false); }
    SECTION("yolov5n AMP") { check_recompute(src("config/models/yolov5n.yaml"), DType::F32, true); }
    SECTION("yolov5n f64") { check_recompute(src("config/models/yolov5n.yaml"), DType::F64, false); }
    SECTION("yolov5n-eca f32") { check_recompute(src("config/models/yolov5n-eca.yaml"), DType::F32, false); }
    SECTION("Focus, SPP, Bottleneck, ReLU6") {
        std::string s = "activation: nn.ReLU6()\n" + read_yaml(src("config/models/yolov5n.yaml"));
        s.replace(s.find("[-1, 1, Conv, [64, 6, 2, 2]]"), 28, "[-1, 1, Focus, [64, 3, 1]]  ");
        s.replace(s.find("[-1, 1, SPPF, [1024, 5]]"), 24, "[-1, 1, SPP, [1024, [5, 9, 13]]]");
        s.replace(s.find("[-1, 3, C3, [128]]"), 18, "[-1, 1, Bottleneck, [128]]");
        const std::string yaml = write_yaml("focus_spp.yaml", s);
        check_recompute(yaml, DType::F32, false);
        check_recompute(yaml, DType::F32, true);
    }
}

// Gradients written by their first producer (Tape::grad_lazy, grad_from, grad_over_value: the ops zero their own
// parts or write), not zeroed by the tape: with every such gradient poisoned (NaN) the step gives the same bits, so
// each producer wrote every element of its gradient. The tape zeroes nothing in f32 and f64, and under autocast only
// the gradients of the parameters' f16 copies, which the weight gradients add to.
TEST_CASE("activation gradients on the CPU are written by their first producers", "[memory][grads]") {
    const std::string yaml = src("config/models/yolov5n.yaml");
    for (int k = 0; k < 3; ++k) {
        const DType dt = k == 2 ? DType::F64 : DType::F32;
        const bool amp = k == 1;
        const TrainRun plain = train_run(yaml, dt, amp, true);
        const TrainRun poisoned = train_run(yaml, dt, amp, true, false, false, true);
        INFO((amp ? "AMP" : dtype_name(dt)) << ": " << plain.zeroed << " bytes zeroed");
        CHECK(std::memcmp(plain.grads.data(), poisoned.grads.data(), plain.grads.size()) == 0);
        CHECK(std::memcmp(plain.values.data(), poisoned.values.data(), plain.values.size()) == 0);
        CHECK(plain.zeroed == plain.f16_copies);
        CHECK(poisoned.zeroed == plain.f16_copies);
    }
}

// A BatchNorm's backward writes its input's gradient over its output's (Tape::grad_from): one gradient of the
// tensor's size is live, not two (a Conv's BN at 640 in the first layers: the gradients' peak). The values against
// the accumulating path are checked by "batchnorm2d with a fused activation equals BN then the activation".
TEST_CASE("a BatchNorm's input gradient takes its output gradient's memory", "[memory][grads]") {
    for (DType dt : {DType::F32, DType::F16})
        for (bool training : {true, false}) {
            TestCtx tc;
            Rng rng(31);
            const DType pdt = dt == DType::F16 ? DType::F32 : dt;
            Tensor x = rand_tensor(tc.data, {2, 8, 40, 40}, dt, rng, -2, 3), seed = rand_tensor(tc.data, x.shape, dt, rng);
            Tensor g = rand_tensor(tc.data, {8}, pdt, rng, 0.5, 2), b = rand_tensor(tc.data, {8}, pdt, rng);
            Tensor rm = rand_tensor(tc.data, {8}, pdt, rng, -0.1, 0.1), rv = rand_tensor(tc.data, {8}, pdt, rng, 0.5, 1.5);
            Var xv = tc.tape.leaf(x), gv = tc.tape.leaf(g), bv = tc.tape.leaf(b);
            Var y = batchnorm2d(tc.ctx, xv, gv, bv, rm, rv, training, 1e-3f, 0.03f, Act{ActKind::SiLU, 0.f});
            tc.tape.backward(y, &seed);
            const size_t one = (x.bytes() + Arena::kAlign - 1) / Arena::kAlign * Arena::kAlign;
            INFO(dtype_name(dt) << (training ? " train" : " eval") << ": gradients' peak " << tc.grads.peak()
                                << " bytes, one gradient " << one);
            CHECK(tc.grads.peak() <= one + 2 * Arena::kAlign);  // dx (in dy's place), dgamma, dbeta
            Tensor dx = tc.tape.grad(xv);
            bool finite = true;
            for (int64_t i = 0; i < dx.numel(); ++i)
                finite = finite && std::isfinite(dt == DType::F16 ? f16_to_f32(dx.ptr<f16>()[i]) : dx.ptr<float>()[i]);
            CHECK(finite);
        }
}

// The loss items of a batch equal those combined from its parts' level sums (validation's image chunks).
TEST_CASE("loss items combine from parts of a batch", "[memory][val]") {
    Rng rng(21);
    const int bs = 5, na = 3, nc = 4, no = 5 + nc;
    const std::vector<int> ny{8, 4, 2}, nx{6, 3, 2};
    std::vector<std::vector<float>> maps(3);
    for (int i = 0; i < 3; ++i) {
        maps[i].resize((size_t)bs * na * ny[i] * nx[i] * no);
        for (float& v : maps[i]) v = (float)rng.uniform_double(-3, 3);
    }
    std::vector<float> targets;  // (image, class, x, y, w, h): images 0, 2, 3 and 4 have objects
    for (int img : {0, 0, 2, 3, 3, 3, 4})
        targets.insert(targets.end(), {(float)img, (float)rng.randint(nc), (float)rng.uniform_double(0.2, 0.8),
                                       (float)rng.uniform_double(0.2, 0.8), (float)rng.uniform_double(0.05, 0.4),
                                       (float)rng.uniform_double(0.05, 0.4)});
    const std::vector<float> anchors{1.25f, 1.625f, 2.0f, 3.75f, 4.125f, 2.875f, 1.875f, 3.8125f, 3.875f,
                                     2.8125f, 3.6875f, 7.4375f, 3.625f, 2.8125f, 4.875f, 6.1875f, 11.65625f, 10.1875f};
    LossHyp h;
    h.label_smoothing = 0.1;
    // Images [i0, i1) of the batch: their maps' slices and their targets, renumbered.
    auto items = [&](int i0, int i1) {
        std::vector<const float*> mp;
        for (int i = 0; i < 3; ++i) mp.push_back(maps[i].data() + (size_t)i0 * na * ny[i] * nx[i] * no);
        std::vector<float> t;
        for (size_t k = 0; k < targets.size(); k += 6)
            if (targets[k] >= i0 && targets[k] < i1) {
                t.insert(t.end(), targets.begin() + k, targets.begin() + k + 6);
                t[t.size() - 6] -= (float)i0;
            }
        return yolo_loss_cpu<float>(mp, {}, ny, nx, i1 - i0, na, no, t.data(), (int)t.size() / 6, anchors.data(), h);
    };
    const LossItems whole = items(0, bs);
    CHECK(whole.nl == 3);
    CHECK(whole.n[0] + whole.n[1] + whole.n[2] > 0);
    for (const std::vector<int>& cuts : std::vector<std::vector<int>>{{0, 5}, {0, 2, 5}, {0, 1, 2, 3, 4, 5}, {0, 3, 5}}) {
        std::vector<LossItems> parts;
        for (size_t j = 0; j + 1 < cuts.size(); ++j) parts.push_back(items(cuts[j], cuts[j + 1]));
        const LossItems c = combine_loss_items(parts, h, nc);
        INFO(parts.size() << " parts");
        CHECK(c.bs == bs);
        CHECK_THAT(c.lbox, Catch::Matchers::WithinRel(whole.lbox, 1e-12));
        CHECK_THAT(c.lobj, Catch::Matchers::WithinRel(whole.lobj, 1e-12));
        CHECK_THAT(c.lcls, Catch::Matchers::WithinRel(whole.lcls, 1e-12));
        CHECK_THAT(c.total, Catch::Matchers::WithinRel(whole.total, 1e-12));
    }
    // One part per image: the images without targets have no box or class terms, only objectness.
    CHECK(items(1, 2).n[0] + items(1, 2).n[1] + items(1, 2).n[2] == 0);
    CHECK(items(1, 2).lobj > 0);
}

// validate() with its batches split into chunks of images (y5train on arenas planned for training) gives the same
// table, confusion matrix and losses as whole batches: the official yolov5n on 12 coco128 images at 320.
TEST_CASE("validation in chunks of images gives the whole batches' results", "[memory][val]") {
    namespace fs = std::filesystem;
    const std::string shared = std::string(Y5_SOURCE_DIR) + "/../shared";
    const std::string dir = "/tmp/y5_test_val_chunks";
    fs::remove_all(dir);
    fs::create_directories(dir + "/images");
    fs::create_directories(dir + "/labels");
    std::vector<fs::path> imgs;
    for (const auto& e : fs::directory_iterator(shared + "/data/coco128/images/train2017")) imgs.push_back(e.path());
    std::sort(imgs.begin(), imgs.end());
    for (int i = 0; i < 12; ++i) {
        fs::copy_file(imgs[i], dir + "/images/" + imgs[i].filename().string());
        const fs::path lab = fs::path(shared + "/data/coco128/labels/train2017") / (imgs[i].stem().string() + ".txt");
        if (fs::exists(lab)) fs::copy_file(lab, dir + "/labels/" + lab.filename().string());
    }
    auto model = Model::from_weights(shared + "/weights/yolov5n.pt", nullptr);
    model->fuse();
    Dataset ds = scan_dataset({dir + "/images"});
    LoaderOptions o;
    o.img_size = 320, o.batch_size = 5, o.workers = 1, o.rect = true, o.pad = 0.5;
    DataLoader loader(ds, o);
    const LossHyp lh;
    struct Run {
        ValResult r;
        std::vector<double> cm;
    };
    auto run = [&](int chunk) {
        TestCtx tc;
        ValOptions vo;
        vo.chunk = chunk;
        ConfusionMatrix cm(80);
        Run out;
        out.r = validate(*model, loader, tc.ctx, lh, vo, &cm);
        for (int i = 0; i <= 80; ++i)
            for (int j = 0; j <= 80; ++j) out.cm.push_back(cm.at(i, j));
        return out;
    };
    const Run whole = run(0);
    REQUIRE(whole.r.images == 12);
    CHECK(whole.r.map50 > 0.3);  // the real model finds the objects: the comparison has detections to compare
    for (int chunk : {1, 2, 4}) {
        const Run c = run(chunk);
        INFO("chunks of " << chunk);
        CHECK(c.r.images == whole.r.images);
        CHECK(c.r.instances == whole.r.instances);
        CHECK(c.r.mp == whole.r.mp);
        CHECK(c.r.mr == whole.r.mr);
        CHECK(c.r.map50 == whole.r.map50);
        CHECK(c.r.map == whole.r.map);
        CHECK(c.cm == whole.cm);
        for (int k = 0; k < 3; ++k) CHECK_THAT(c.r.loss[k], Catch::Matchers::WithinRel(whole.r.loss[k], 1e-9));
    }
    // y5train's per-epoch validation on the CPU in f32 (ValFold): the unfused model folded for the validation only,
    // through the blocked inference, the results those of the unfused model up to float rounding.
    model->unfuse();
    const Run plain = run(0);
    Tensor x(std::vector<float>(3 * 64 * 64, 0.5f).data(), Shape{1, 3, 64, 64}, DType::F32, Device::CPU);
    Run folded;
    {
        ValFold fold(*model, false);
        REQUIRE(fold.on);
        CHECK(model->runs_blocked(Tape::constant(x)));
        folded = run(0);
    }
    CHECK(!model->fused());
    CHECK(folded.r.images == plain.r.images);
    CHECK_THAT(folded.r.map50, Catch::Matchers::WithinAbs(plain.r.map50, 2e-3));
    CHECK_THAT(folded.r.map, Catch::Matchers::WithinAbs(plain.r.map, 2e-3));
    for (int k = 0; k < 3; ++k) CHECK_THAT(folded.r.loss[k], Catch::Matchers::WithinRel(plain.r.loss[k], 1e-5));
    {
        ValFold fold(*model, true);  // autocast: validated unfused, as train.py
        CHECK(!fold.on);
        CHECK(!model->fused());
    }
    model->fuse();
    {
        ValFold fold(*model, false);  // already folded: left folded
        CHECK(!fold.on);
    }
    CHECK(model->fused());
}
