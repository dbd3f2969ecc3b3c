/*
 * GPU tests (CTest label "gpu"): every CUDA op against its CPU reference on fresh random inputs, by
 * |gpu − cpu| ≤ atol + rtol·|cpu|. Without a usable device (or in a build without CUDA) the binary
 * prints why and exits 77, which CTest reports as skipped.
 */
#define CATCH_CONFIG_RUNNER
#include <cstdio>
#include <cstring>

#include "engine/device/device.h"
#include "engine/autograd/params.h"
#include "kernels/elementwise.h"
#include "tests/test_gpu.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

#if Y5_CUDA
namespace y5test {
Gpu& gpu() {
    static Gpu g;
    return g;
}

TestCtx& cpu() {
    static TestCtx t;
    return t;
}

void compare_op(const std::string& what, const std::vector<Tensor>& inputs, const std::vector<bool>& wants_grad,
                const DevOp& op, Rng& rng, Tol out_tol, const std::vector<Tol>& grad_tol) {
    Gpu& g = gpu();
    TestCtx& tc = cpu();
    tc.tape.clear();
    tc.act.reset();
    tc.work.reset();
    tc.grads.reset();
    REQUIRE(wants_grad.size() == inputs.size());
    REQUIRE(grad_tol.size() == inputs.size());
    std::string shapes;
    for (const Tensor& t : inputs) shapes += (shapes.empty() ? "" : " ") + t.str();
    INFO(what << ", inputs " << shapes);

    std::vector<Var> cv, gv;
    for (size_t i = 0; i < inputs.size(); ++i) {
        cv.push_back(wants_grad[i] ? tc.tape.leaf(inputs[i]) : Tape::constant(inputs[i]));
        Tensor d = g.upload(inputs[i]);
        gv.push_back(wants_grad[i] ? g.tape.leaf(d) : Tape::constant(d));
        if (wants_grad[i]) {
            Tensor start = rand_tensor(g.host, inputs[i].shape, inputs[i].dtype, rng);
            copy(tc.ctx, tc.tape.grad(cv[i]), start);
            copy(g.ctx, g.tape.grad(gv[i]), start);
        }
    }
    Var cy = op(tc.ctx, cv, false);
    Var gy = op(g.ctx, gv, true);
    REQUIRE(gy.t.device == Device::CUDA);
    REQUIRE(gy.t.dtype == cy.t.dtype);
    REQUIRE(gy.shape() == cy.shape());
    require_close(g.download(gy.t), cy.t, out_tol.atol, out_tol.rtol, what + " output");

    Tensor seed = rand_tensor(g.host, cy.shape(), cy.t.dtype, rng);
    Tensor dseed = g.upload(seed);
    tc.tape.backward(cy, &seed);
    g.tape.backward(gy, &dseed);
    for (size_t i = 0; i < inputs.size(); ++i)
        if (wants_grad[i]) {
            Tensor gg = g.download(g.tape.grad(gv[i]));
            REQUIRE(gg.dtype == inputs[i].dtype);
            require_close(gg, tc.tape.grad(cv[i]), grad_tol[i].atol, grad_tol[i].rtol,
                          what + " d input " + std::to_string(i));
        }
    tc.tape.clear();
    g.tape.clear();
}
}  // namespace y5test

TEST_CASE("elementwise CUDA kernels against the CPU reference", "[gpu][elementwise]") {
    Gpu& g = gpu();
    Rng rng(101);
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1 << 20) + 3}) {
        DYNAMIC_SECTION("n = " << n) {
            g.act.reset();
            g.host.reset();
            Tensor x = rand_tensor(g.host, {n}, DType::F32, rng), y = rand_tensor(g.host, {n}, DType::F32, rng);
            Tensor dx = g.upload(x), dy = g.upload(y);

            Tensor want = g.host.tensor({n});
            copy_cpu(want.ptr<float>(), y.ptr<float>(), n);
            axpy_cpu(want.ptr<float>(), -0.37f, x.ptr<float>(), n);
            axpy_cuda(dy.ptr<float>(), -0.37f, dx.ptr<float>(), n, false, g.cuda->stream);
            require_close(g.download(dy), want, 1e-6, 1e-6, "axpy");
            // fresh: y unread (NaN here), y = a·x.
            Tensor yf = g.host.tensor({n}), wf = g.host.tensor({n});
            std::memset(yf.data, 0xFF, yf.bytes());
            std::memset(wf.data, 0xFF, wf.bytes());
            Tensor dyf = g.upload(yf);
            axpy_cpu(wf.ptr<float>(), -0.37f, x.ptr<float>(), n, true);
            axpy_cuda(dyf.ptr<float>(), -0.37f, dx.ptr<float>(), n, true, g.cuda->stream);
            require_close(g.download(dyf), wf, 0, 0, "axpy into a fresh y");

            Tensor sum = g.act.tensor({n});
            add_cuda(sum.ptr<float>(), dx.ptr<float>(), dy.ptr<float>(), n, g.cuda->stream);
            add_cpu(want.ptr<float>(), x.ptr<float>(), want.ptr<float>(), n);
            require_close(g.download(sum), want, 1e-6, 1e-6, "add");

            Tensor cp = g.act.tensor({n});
            copy_cuda(cp.ptr<float>(), dx.ptr<float>(), n, g.cuda->stream);
            require_close(g.download(cp), x, 0, 0, "copy");

            fill_cuda(cp.ptr<float>(), 2.5f, n, g.cuda->stream);
            fill_cpu(want.ptr<float>(), 2.5f, n);
            require_close(g.download(cp), want, 0, 0, "fill");
        }
    }
}

TEST_CASE("f16 casts and elementwise ops on the GPU equal the CPU's bit for bit", "[gpu][f16][elementwise]") {
    // Each is one float operation on widened values and one rounding on both sides: exact.
    Gpu& g = gpu();
    Rng rng(102);
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(1 << 20) + 3}) {
        DYNAMIC_SECTION("n = " << n) {
            g.reset();
            Tensor a = rand_tensor(g.host, {n}, DType::F16, rng, -100, 100), b = rand_tensor(g.host, {n}, DType::F16, rng);
            Tensor x32 = rand_tensor(g.host, {n}, DType::F32, rng, -60000, 60000);  // across f16's range
            compare_op("add f16", {a, b}, {true, true},
                       [](Ctx& c, const std::vector<Var>& v, bool) { return add(c, v[0], v[1]); }, rng, kExact,
                       {kExact, kExact});
            compare_op("cast f32 -> f16", {x32}, {true},
                       [](Ctx& c, const std::vector<Var>& v, bool) { return cast(c, v[0], DType::F16); }, rng, kExact,
                       {kExact});
            compare_op("cast f16 -> f32", {a}, {true},
                       [](Ctx& c, const std::vector<Var>& v, bool) { return cast(c, v[0], DType::F32); }, rng, kExact,
                       {kExact});
            Tensor y = copy_of(g.host, b), dy = g.upload(b), da = g.upload(a);
            axpy(cpu().ctx, y, -0.37, a);
            axpy(g.ctx, dy, -0.37, da);
            require_close(g.download(dy), y, 0, 0, "axpy f16");
            fill(cpu().ctx, y, 0.1);
            fill(g.ctx, dy, 0.1);
            require_close(g.download(dy), y, 0, 0, "fill f16");
        }
    }
}

TEST_CASE("tape on the GPU: add forward and backward with fan-out", "[gpu][tape]") {
    Gpu& g = gpu();
    g.act.reset();
    g.host.reset();
    g.tape.clear();
    Rng rng(102);
    Tensor a = rand_tensor(g.host, {2, 3, 5, 7}, DType::F32, rng), b = rand_tensor(g.host, {2, 3, 5, 7}, DType::F32, rng);
    Var av = g.tape.leaf(g.upload(a)), bv = g.tape.leaf(g.upload(b));
    Var s = add(g.ctx, add(g.ctx, av, bv), av);  // a + b + a
    Tensor seed = rand_tensor(g.host, s.shape(), DType::F32, rng);
    Tensor dseed = g.upload(seed);
    g.tape.backward(s, &dseed);

    Tensor want = g.host.tensor(a.shape);
    for (int64_t i = 0; i < a.numel(); ++i) want.ptr<float>()[i] = 2 * a.ptr<float>()[i] + b.ptr<float>()[i];
    require_close(g.download(s.t), want, 1e-6, 1e-6, "a + b + a");
    for (int64_t i = 0; i < a.numel(); ++i) want.ptr<float>()[i] = 2 * seed.ptr<float>()[i];
    require_close(g.download(g.tape.grad(av)), want, 1e-6, 1e-6, "d/da");
    require_close(g.download(g.tape.grad(bv)), seed, 1e-6, 1e-6, "d/db");
    g.tape.clear();
}

TEST_CASE("device parameter store and arena and out-of-memory errors", "[gpu][engine][oom]") {
    Gpu& g = gpu();
    g.host.reset();
    ParamStore ps;
    ps.add("a", {5, 3}, ParamKind::Weight);
    ps.add("b", {7}, ParamKind::Bias);
    ps.allocate(Device::CUDA, DType::F32, g.cuda);
    Tensor ones = g.host.tensor(ps.grads_flat().shape);
    fill_cpu(ones.ptr<float>(), 1.0f, ones.numel());
    copy(g.ctx, ps.grads_flat(), ones);
    ps.zero_grad(g.cuda);
    Tensor back = g.download(ps.grads_flat());
    for (int64_t i = 0; i < back.numel(); ++i) REQUIRE(back.ptr<float>()[i] == 0.0f);

    Arena small("device scratch", Device::CUDA, 1 << 20);
    CHECK(reinterpret_cast<uintptr_t>(small.alloc(3)) % 256 == 0);
    CHECK_THROWS_WITH(small.alloc(2 << 20), Contains("arena 'device scratch' overflow"));
    CHECK_THROWS_WITH(device_alloc(size_t(1) << 50, "a petabyte"), Contains("out of GPU memory allocating") && Contains("'a petabyte'"));
}
#endif

int main(int argc, char** argv) {
    std::string why;
    if (!cuda_available(&why)) {
        std::printf("SKIPPED: no usable CUDA device (%s); the GPU tests need one\n", why.c_str());
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
