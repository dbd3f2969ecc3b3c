/*
 * The optimizer on the GPU (kernels/sgd.cu through engine/autograd/optim.cpp) against the same calls on a CPU f32
 * ParamStore: nesterov SGD over the three groups for several steps (values and momentum), clip_grad_norm
 * (the norm, the clipped gradients, determinism of the reduction), the EMA over values and buffers, GradScaler's
 * unscale (the gradients bit for bit, found_inf); and
 * the uint8 → float image conversion (kernels/image.cu, engine/app/val.cpp's batch_images) against the CPU
 * reference, bit for bit.
 */
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/autograd/optim.h"
#include "engine/autograd/params.h"
#include "engine/app/val.h"
#include "kernels/image.h"
#include "kernels/sgd.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

// Parameters of every kind, odd sizes (so the 16-element alignment leaves padding), groups in mixed order.
void add_params(ParamStore& ps, int64_t big = 1000) {
    ps.add("model.0.conv.weight", {16, 3, 6, 6}, ParamKind::Weight);
    ps.add("model.0.bn.weight", {16}, ParamKind::NormWeight);
    ps.add("model.0.bn.bias", {16}, ParamKind::Bias);
    ps.add("model.0.bn.running_mean", {16}, ParamKind::Buffer);
    ps.add("model.0.bn.running_var", {16}, ParamKind::Buffer);
    ps.add("model.1.conv.weight", {big}, ParamKind::Weight);
    ps.add("model.1.bn.weight", {33}, ParamKind::NormWeight);
    ps.add("model.1.bn.bias", {33}, ParamKind::Bias);
    ps.add("model.24.m.0.bias", {255}, ParamKind::Bias);
    ps.add("model.24.m.0.weight", {255, 7, 1, 1}, ParamKind::Weight);
    ps.add("model.1.bn.num_batches_tracked_like", {1}, ParamKind::Buffer);
}

void fill_random(const Tensor& t, Rng& rng, double lo = -1, double hi = 1) {
    float* p = t.ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = (float)rng.uniform_double(lo, hi);
}

// A CPU store and a CUDA store with the same layout and the same random values, gradients and momentum
// (the padding between tensors included).
struct Stores {
    ParamStore cpu, gpu;
    explicit Stores(Gpu& g, Rng& rng, int64_t big = 1000) {
        add_params(cpu, big);
        add_params(gpu, big);
        cpu.allocate(Device::CPU, DType::F32);
        gpu.allocate(Device::CUDA, DType::F32, g.cuda);
        REQUIRE(cpu.values_flat().numel() == gpu.values_flat().numel());
        fill_random(cpu.values_flat(), rng);
        fill_random(cpu.grads_flat(), rng);
        fill_random(cpu.momentum_flat(), rng, -0.1, 0.1);
        upload_all(g);
    }
    void upload_all(Gpu& g) {
        copy(g.ctx, gpu.values_flat(), cpu.values_flat());
        copy(g.ctx, gpu.grads_flat(), cpu.grads_flat());
        copy(g.ctx, gpu.momentum_flat(), cpu.momentum_flat());
    }
};

}  // namespace

TEST_CASE("SGD on the GPU equals the CPU path over the three groups for several steps", "[gpu][optim]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(301);
    Stores s(g, rng);
    for (int step = 0; step < 6; ++step) {
        fill_random(s.cpu.grads_flat(), rng, -2, 2);
        copy(g.ctx, s.gpu.grads_flat(), s.cpu.grads_flat());
        SgdGroup groups[3];
        for (int k = 0; k < 3; ++k)
            groups[k] = {0.01 * (1 + step) * (k == 0 ? 10 : 1), 0.8 + 0.02 * step, k == 1 ? 0.0005 * (1 + step) : 0.0};
        sgd_step(s.cpu, groups);
        sgd_step(s.gpu, groups);
        INFO("step " << step);
        // The same f32 operations; nvcc may fuse a multiply-add where the host compiler rounds twice.
        require_close(g.download(s.gpu.values_flat()), s.cpu.values_flat(), 1e-6, 1e-6, "values");
        require_close(g.download(s.gpu.momentum_flat()), s.cpu.momentum_flat(), 1e-6, 1e-6, "momentum");
        g.host.reset();
    }
    g.reset();
}

TEST_CASE("clip_grad_norm on the GPU equals the CPU path and is deterministic", "[gpu][optim]") {
    Gpu& g = gpu();
    for (int64_t big : {int64_t(1000), int64_t(5000000)}) {  // the second needs the full 1024 first-stage blocks
        for (double scale : {1.0, 1e-3}) {                      // clipped (‖g‖ > 10), and left alone
            DYNAMIC_SECTION("elements " << big << ", gradient scale " << scale) {
                g.reset();
                Rng rng(302);
                Stores s(g, rng, big);
                fill_random(s.cpu.grads_flat(), rng, -scale, scale);
                copy(g.ctx, s.gpu.grads_flat(), s.cpu.grads_flat());
                const double want = clip_grad_norm(s.cpu, 10.0);
                const double got = clip_grad_norm(s.gpu, 10.0);
                CHECK((scale == 1.0 ? want > 10.0 : want < 10.0));
                CHECK(got == Approx(want).epsilon(1e-12));
                // coef is computed in double on both sides (equal up to the norm's last bits): the same products,
                // one f32 rounding each, so at most one f32 ulp (2^-23 relative) apart.
                require_close(g.download(s.gpu.grads_flat()), s.cpu.grads_flat(), 0, 2.4e-7, "clipped gradients");
                // Run to run: the same norm to the last bit (max_norm huge: nothing is scaled).
                const double again1 = clip_grad_norm(s.gpu, 1e30), again2 = clip_grad_norm(s.gpu, 1e30);
                CHECK(std::memcmp(&again1, &again2, sizeof(double)) == 0);
                g.reset();
            }
        }
    }
}

TEST_CASE("EMA on the GPU equals the CPU path over values and buffers", "[gpu][optim]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(303);
    Stores ema(g, rng), model(g, rng);
    for (int k = 1; k <= 5; ++k) {
        fill_random(model.cpu.values_flat(), rng);
        copy(g.ctx, model.gpu.values_flat(), model.cpu.values_flat());
        const double d = ema_decay(k * 700);
        ema_update(ema.cpu, model.cpu, d);
        ema_update(ema.gpu, model.gpu, d);
        INFO("update " << k);
        require_close(g.download(ema.gpu.values_flat()), ema.cpu.values_flat(), 1e-6, 1e-6, "ema values");
        g.host.reset();
    }
    g.reset();
}

TEST_CASE("GradScaler unscale on the GPU equals the CPU path bit for bit, found_inf included", "[gpu][optim][amp]") {
    Gpu& g = gpu();
    // 0: no inf/NaN; 1: one at a random position; 2: many of each kind at random positions
    for (int nonfinite : {0, 1, 2}) {
        // 1: torch's no-multiply shortcut; 2^-10: inv_scale 1024, large finite gradients overflow (not flagged);
        // 0: inv_scale inf (0·inf is NaN)
        for (float scale : {65536.f, 1.f, 3.f, 0.0009765625f, 0.f}) {
            DYNAMIC_SECTION("non-finite case " << nonfinite << ", scale " << scale) {
                g.reset();
                Rng rng(307 + nonfinite);
                Stores s(g, rng, 200000);
                // Every magnitude: sign · (1 + u) · 2^e, e over the f32 exponents (subnormals too), a few zeros.
                float* cg = s.cpu.grads_flat().ptr<float>();
                const int64_t n = s.cpu.grads_flat().numel();
                for (int64_t i = 0; i < n; ++i) {
                    const int e = (int)rng.randint(277) - 149;
                    cg[i] = (rng.uniform() < 0.5f ? -1.f : 1.f) * std::ldexp(1.f + rng.uniform(), e);
                    if (rng.randint(50) == 0) cg[i] = 0.f;
                }
                const float kinds[3] = {INFINITY, -INFINITY, NAN};
                const int count = nonfinite == 0 ? 0 : nonfinite == 1 ? 1 : 300;
                for (int k = 0; k < count; ++k) cg[rng.randint((uint32_t)n)] = kinds[k % 3];
                copy(g.ctx, s.gpu.grads_flat(), s.cpu.grads_flat());
                GradScaler scaler(scale);
                const bool want = scaler.unscale(s.cpu);
                const bool got = scaler.unscale(s.gpu);
                CHECK(want == (nonfinite != 0));
                CHECK(got == want);
                // Bit for bit, except that a NaN is any NaN (x86 keeps an input NaN's bits and makes 0·inf
                // 0xffc00000, a GPU gives 0x7fffffff).
                Tensor dg = g.download(s.gpu.grads_flat());
                const float* a = dg.ptr<float>();
                int64_t bad = 0, first = -1;
                for (int64_t i = 0; i < n; ++i) {
                    const bool same = std::isnan(a[i]) ? std::isnan(cg[i]) : std::memcmp(&a[i], &cg[i], 4) == 0;
                    if (!same && bad++ == 0) first = i;
                }
                INFO(bad << " of " << n << " differ, first at " << first);
                CHECK(bad == 0);
                g.reset();
            }
        }
    }
}

TEST_CASE("optimizer calls on mismatched stores are errors", "[gpu][optim][errors]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(304);
    Stores s(g, rng);
    CHECK_THROWS_WITH(ema_update(s.gpu, s.cpu, 0.5), Catch::Matchers::Contains("ema_update: EMA on cuda"));
    ParamStore orphan;  // a CUDA store allocated without its context has no stream to run on
    add_params(orphan);
    orphan.allocate(Device::CUDA, DType::F32, nullptr);
    SgdGroup groups[3] = {{0.1, 0.9, 0}, {0.1, 0.9, 0}, {0.1, 0.9, 0}};
    CHECK_THROWS_WITH(sgd_step(orphan, groups), Catch::Matchers::Contains("without a CUDA context"));
    g.reset();
}

TEST_CASE("uint8 images to float on the GPU equal the CPU reference bit for bit", "[gpu][image]") {
    Gpu& g = gpu();
    Rng rng(305);
    for (int64_t n : {int64_t(1), int64_t(3), int64_t(4), int64_t(7), int64_t(2 * 3 * 37 * 53), int64_t(1 << 20) + 3}) {
        for (int offset : {0, 1}) {  // offset 1: the input is not 4-byte aligned, the element-wise path
            DYNAMIC_SECTION("n = " << n << ", input offset " << offset) {
                g.reset();
                std::vector<uint8_t> src(n);
                for (auto& v : src) v = (uint8_t)rng.randint(256);
                if (n >= 256)
                    for (int v = 0; v < 256; ++v) src[v] = (uint8_t)v;  // every value at least once
                uint8_t* din = static_cast<uint8_t*>(g.act.alloc(n + 1)) + offset;
                copy_host_to_device(din, src.data(), n, g.cuda);
                Tensor out = g.act.tensor({n});
                images_u8_to_f32_cuda(out.ptr<float>(), din, n, g.cuda->stream);
                Tensor want = g.host.tensor({n});
                images_u8_to_f32_cpu(want.ptr<float>(), src.data(), n);
                require_close(g.download(out), want, 0, 0, "u8 → f32");
                g.reset();
            }
        }
    }
}

TEST_CASE("batch_images on a CUDA context equals the CPU path bit for bit", "[gpu][image]") {
    Gpu& g = gpu();
    g.reset();
    Rng rng(306);
    Batch b;
    b.n = 2, b.h = 37, b.w = 53;
    b.images.resize((size_t)b.n * 3 * b.h * b.w);
    for (auto& v : b.images) v = (uint8_t)rng.randint(256);
    Arena host("cpu activations", Device::CPU, size_t(16) << 20);
    Ctx cpu_ctx;
    cpu_ctx.act = &host;
    Tensor want = batch_images(cpu_ctx, b);
    const size_t work_mark = g.work.mark();
    Tensor got = batch_images(g.ctx, b);
    CHECK(got.device == Device::CUDA);
    CHECK(g.work.mark() == work_mark);  // the upload's scratch is given back
    require_close(g.download(got), want, 0, 0, "batch_images");
    g.reset();
}
#endif
