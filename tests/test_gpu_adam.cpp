/*
 * --optimizer Adam / AdamW on the GPU (kernels/sgd.cu's adam kernel through engine/autograd/optim.cpp's
 * Optimizer) against the same Optimizer on a CPU f32 ParamStore: several steps over the three groups with a
 * changing lr (warmup's), random gradients from 1e-4 to 2 in magnitude, compared after every step: values,
 * exp_avg (the store's momentum block), exp_avg_sq, and the step counts.
 */
#include <cmath>
#include <vector>

#include "engine/autograd/optim.h"
#include "engine/autograd/params.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

#if Y5_CUDA
using namespace y5;
using namespace y5test;

namespace {

// Every kind, odd sizes (the 16-element alignment leaves padding between tensors), groups in mixed order.
void add_adam_params(ParamStore& ps) {
    ps.add("model.0.conv.weight", {16, 3, 6, 6}, ParamKind::Weight);
    ps.add("model.0.bn.weight", {16}, ParamKind::NormWeight);
    ps.add("model.0.bn.bias", {16}, ParamKind::Bias);
    ps.add("model.0.bn.running_mean", {16}, ParamKind::Buffer);
    ps.add("model.1.conv.weight", {40000}, ParamKind::Weight);  // several blocks of the grid-stride kernel
    ps.add("model.1.bn.weight", {33}, ParamKind::NormWeight);
    ps.add("model.24.m.0.bias", {255}, ParamKind::Bias);
    ps.add("model.24.m.0.weight", {255, 7, 1, 1}, ParamKind::Weight);
}

// sign · uniform(0, 1) · 10^uniform(−4, log10(2)): gradients small enough that sqrt(v) meets eps's scale.
void fill_grads(const Tensor& t, Rng& rng) {
    float* p = t.ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i)
        p[i] = (float)(rng.uniform_double(-1, 1) * std::pow(10.0, rng.uniform_double(-4, std::log10(2.0))));
}

}  // namespace

TEST_CASE("Adam and AdamW on the GPU equal the CPU path over the three groups for several steps",
          "[gpu][optim][adam]") {
    Gpu& g = gpu();
    for (OptimizerKind kind : {OptimizerKind::Adam, OptimizerKind::AdamW}) {
        DYNAMIC_SECTION(optimizer_name(kind)) {
            g.reset();
            Rng rng(311 + (int)kind);
            ParamStore cpu_ps, gpu_ps;
            add_adam_params(cpu_ps);
            add_adam_params(gpu_ps);
            cpu_ps.allocate(Device::CPU, DType::F32);
            gpu_ps.allocate(Device::CUDA, DType::F32, g.cuda);
            float* v = cpu_ps.values_flat().ptr<float>();
            for (int64_t i = 0; i < cpu_ps.values_flat().numel(); ++i) v[i] = (float)rng.uniform_double(-1, 1);
            copy(g.ctx, gpu_ps.values_flat(), cpu_ps.values_flat());
            Optimizer oc(kind, 0.937), og(kind, 0.937);
            oc.allocate(cpu_ps);
            og.allocate(gpu_ps);
            for (int step = 0; step < 6; ++step) {
                fill_grads(cpu_ps.grads_flat(), rng);
                copy(g.ctx, gpu_ps.grads_flat(), cpu_ps.grads_flat());
                SgdGroup groups[3];
                for (int k = 0; k < 3; ++k)  // warmup: the bias lr falls from 0.1, the others rise from 0
                    groups[k] = {k == 0 ? 0.1 - 0.015 * step : 0.002 * step, 0.8, k == 1 ? 0.0005 : 0.0};
                oc.step(cpu_ps, groups);
                og.step(gpu_ps, groups);
                INFO("step " << step);
                for (int k = 0; k < 3; ++k) REQUIRE(og.steps[k] == step + 1);
                // The same f32 operations per element; a GPU may fuse a multiply-add where the host rounds twice,
                // one ulp per step in exp_avg and through the update in the values.
                require_close(g.download(gpu_ps.trainable_flat()), cpu_ps.trainable_flat(), 1e-6, 1e-6, "values");
                require_close(g.download(gpu_ps.momentum_flat()), cpu_ps.momentum_flat(), 1e-7, 1e-5, "exp_avg");
                require_close(g.download(og.exp_avg_sq_flat()), oc.exp_avg_sq_flat(), 1e-12, 1e-5, "exp_avg_sq");
                g.host.reset();
            }
            g.reset();
        }
    }
}

TEST_CASE("an Adam optimizer refuses a store it was not allocated for", "[gpu][optim][adam][errors]") {
    Gpu& g = gpu();
    g.reset();
    ParamStore cpu_ps, gpu_ps;
    add_adam_params(cpu_ps);
    add_adam_params(gpu_ps);
    cpu_ps.allocate(Device::CPU, DType::F32);
    gpu_ps.allocate(Device::CUDA, DType::F32, g.cuda);
    Optimizer o(OptimizerKind::Adam, 0.937);
    o.allocate(cpu_ps);
    const SgdGroup groups[3] = {{0.01, 0.9, 0}, {0.01, 0.9, 5e-4}, {0.01, 0.9, 0}};
    CHECK_THROWS_WITH(o.step(gpu_ps, groups), Catch::Matchers::Contains("allocated for another parameter store"));
    g.reset();
}
#endif
