/*
 * Engine core: tensors, arenas, the parameter store, the tape, the RNG, the thread pool, and the clear
 * errors that wrong requests get.
 */
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "engine/device/device.h"
#include "engine/autograd/params.h"
#include "engine/core/safetensors.h"
#include "engine/core/threadpool.h"
#include "tests/test_util.h"

using namespace y5;
using namespace y5test;
using Catch::Matchers::Contains;

TEST_CASE("tensor shapes and views and typed access", "[engine][tensor]") {
    float buf[24];
    Tensor t(buf, Shape{2, 3, 4});
    CHECK(t.numel() == 24);
    CHECK(t.bytes() == 96);
    CHECK(t.dim(-1) == 4);
    CHECK(t.view({6, 4}).shape == Shape({6, 4}));
    CHECK_THROWS_WITH(t.view({5, 5}), Contains("cannot view (2, 3, 4) as (5, 5)"));
    CHECK_THROWS_WITH(t.ptr<double>(), Contains("is f32, read as f64"));
    CHECK_THROWS_WITH((Shape{1, 2, 3, 4, 5, 6, 7}), Contains("rank 7 exceeds"));
    CHECK(Shape({1, 2}) != Shape({1, 2, 1}));
}

TEST_CASE("arena alignment and marks and peak and overflow", "[engine][arena]") {
    Arena a("unit", Device::CPU, 4096);
    CHECK(reinterpret_cast<uintptr_t>(a.base()) % Arena::kAlign == 0);
    void* p1 = a.alloc(3);
    void* p2 = a.alloc(5);
    void* p3 = a.alloc(1, 64);
    CHECK(reinterpret_cast<uintptr_t>(p1) % 256 == 0);
    CHECK(reinterpret_cast<uintptr_t>(p2) % 256 == 0);
    CHECK(reinterpret_cast<uintptr_t>(p3) % 64 == 0);
    CHECK((char*)p2 - (char*)p1 == 256);
    CHECK((char*)p3 - (char*)p2 == 64);  // 256 + 5 rounded up to a multiple of 64
    size_t m = a.mark();
    Tensor t = a.tensor({10, 10});
    CHECK(t.bytes() == 400);
    CHECK((char*)t.data - a.base() == 512);
    a.reset(m);
    CHECK(a.used() == m);
    CHECK(a.peak() == 512 + 400);
    Tensor again = a.tensor({10, 10});
    CHECK(again.data == t.data);  // the same bytes are reused after reset
    CHECK_THROWS_WITH(a.alloc(4000), Contains("arena 'unit' overflow: 4000 bytes requested"));
    CHECK(a.used() == 912);  // a failed request leaves the arena as it was
    CHECK_THROWS_WITH(a.alloc(8, 3), Contains("not a power of two"));
    CHECK_THROWS_WITH(a.reset(5000), Contains("beyond"));
}

TEST_CASE("parameter store keeps values and gradients and momentum in one block each", "[engine][params]") {
    ParamStore ps;
    ps.add("model.0.conv.weight", {16, 3, 6, 6}, ParamKind::Weight);
    ps.add("model.0.bn.weight", {16}, ParamKind::NormWeight);
    ps.add("model.0.bn.bias", {16}, ParamKind::Bias);
    ps.add("model.0.bn.running_mean", {16}, ParamKind::Buffer);
    ps.add("model.0.bn.running_var", {16}, ParamKind::Buffer);
    ps.add("model.1.conv.weight", {3, 16, 1, 1}, ParamKind::Weight);
    CHECK_THROWS_WITH(ps.add("model.0.bn.bias", {16}, ParamKind::Bias), Contains("registered twice"));
    ps.allocate(Device::CPU);
    CHECK_THROWS_WITH(ps.add("late", {1}, ParamKind::Bias), Contains("after the parameter blocks were allocated"));

    CHECK(ps.count(true) == 16 * 3 * 36 + 16 + 16 + 48);
    CHECK(ps.count(false) == ps.count(true) + 32);
    // Trainable tensors by optimizer group (biases, decayed weights, norm weights), buffers after; each
    // start 64-byte aligned.
    CHECK(ps[2].offset == 0);
    CHECK(ps[0].offset == 16);
    CHECK(ps[5].offset == 1744);
    CHECK(ps[1].offset == 1792);
    CHECK(ps.trainable_elems() == 1808);
    CHECK(ps[3].offset == 1808);
    CHECK(ps[4].offset == 1824);
    CHECK(ps.group_range(0) == std::make_pair<int64_t, int64_t>(0, 16));
    CHECK(ps.group_range(1) == std::make_pair<int64_t, int64_t>(16, 1792));
    CHECK(ps.group_range(2) == std::make_pair<int64_t, int64_t>(1792, 1808));
    CHECK_FALSE(ps[3].grad.defined());
    CHECK(ps.find("model.1.conv.weight") == &ps[5]);
    CHECK(ps.find("nope") == nullptr);

    // Gradients and parameters are views into the flat blocks at the same offsets.
    CHECK(ps[5].grad.ptr<float>() == ps.grads_flat().ptr<float>() + 1744);
    CHECK(ps[5].value.ptr<float>() == ps.values_flat().ptr<float>() + 1744);
    CHECK(ps.momentum_flat().numel() == ps.trainable_elems());
    for (int64_t i = 0; i < ps.grads_flat().numel(); ++i) ps.grads_flat().ptr<float>()[i] = 1.0f + i;
    ps.zero_grad();
    for (int64_t i = 0; i < ps.grads_flat().numel(); ++i) REQUIRE(ps.grads_flat().ptr<float>()[i] == 0.0f);
}

TEST_CASE("tape accumulates fan-out and parameter gradients and records nothing without grad",
          "[engine][tape]") {
    TestCtx tc;
    Ctx& c = tc.ctx;
    Tensor x = f64_zeros(tc.data, {1, 2, 2, 2});
    for (int i = 0; i < 8; ++i) x.ptr<double>()[i] = i - 3.5;

    SECTION("a value used twice receives both gradients") {
        Var xv = tc.tape.leaf(x);
        Var y = add(c, xv, xv);                     // dy/dx = 2
        Var z = add(c, y, activation(c, xv, Act{ActKind::ReLU, 0}));  // + relu'(x)
        Tensor seed = f64_zeros(tc.data, z.shape());
        for (int i = 0; i < 8; ++i) seed.ptr<double>()[i] = 1.0;
        tc.tape.backward(z, &seed);
        Tensor g = tc.tape.grad(xv);
        for (int i = 0; i < 8; ++i) CHECK(g.ptr<double>()[i] == (i - 3.5 > 0 ? 3.0 : 2.0));
    }
    SECTION("parameter gradients accumulate over two backward passes until zero_grad") {
        ParamStore ps;
        ps.add("w", {1, 2}, ParamKind::Weight);
        ps.allocate(Device::CPU, DType::F64);
        ps[0].value.ptr<double>()[0] = 2.0;
        ps[0].value.ptr<double>()[1] = -1.0;
        Tensor in = f64_zeros(tc.data, {1, 2});
        in.ptr<double>()[0] = 3.0;
        in.ptr<double>()[1] = 5.0;
        for (int pass = 1; pass <= 2; ++pass) {
            Var w = tc.tape.param(ps[0].value, ps[0].grad);
            Var s = scale_channels(c, Tape::constant(in.view({1, 2, 1, 1})), w);
            Tensor seed = f64_zeros(tc.data, s.shape());
            seed.ptr<double>()[0] = seed.ptr<double>()[1] = 1.0;
            tc.tape.backward(s, &seed);
            CHECK(ps[0].grad.ptr<double>()[0] == 3.0 * pass);
            CHECK(ps[0].grad.ptr<double>()[1] == 5.0 * pass);
            tc.tape.clear();
        }
        ps.zero_grad();
        CHECK(ps[0].grad.ptr<double>()[0] == 0.0);
    }
    SECTION("no-grad mode records nothing and allocates no gradients") {
        Var xv = tc.tape.leaf(x);
        size_t before = tc.grads.used();
        {
            NoGrad ng(tc.tape);
            Var y = activation(c, add(c, xv, xv), Act{});
            CHECK_FALSE(y.requires_grad());
        }
        CHECK(tc.tape.size() == 0);
        CHECK(tc.grads.used() == before);
        CHECK(tc.tape.recording());
        Var y = activation(c, xv, Act{});
        CHECK(y.requires_grad());
        CHECK(tc.tape.size() == 1);
    }
    SECTION("backward needs something to differentiate, and a scalar or a seed") {
        Var k = Tape::constant(x);
        Var y = add(c, k, k);
        CHECK_THROWS_WITH(tc.tape.backward(y), Contains("does not depend on anything that requires a gradient"));
        Var xv = tc.tape.leaf(x);
        Var z = add(c, xv, k);
        CHECK_THROWS_WITH(tc.tape.backward(z), Contains("is not a scalar"));
    }
    SECTION("an op's output gradient is released after its backward and its memory reused") {
        // A chain of 6 SiLUs: with release at most two intermediate gradients are alive at once (the one being
        // read and the one being written), plus the leaf's, instead of all 6.
        Rng rng(9);
        Tensor big = rand_tensor(tc.data, {1, 4, 32, 32}, DType::F64, rng);
        Var xv = tc.tape.leaf(big);
        std::vector<Var> h = {xv};
        for (int i = 0; i < 6; ++i) h.push_back(activation(c, h.back(), Act{}));
        Tensor seed = rand_tensor(tc.data, big.shape, DType::F64, rng);
        tc.tape.backward(h.back(), &seed);
        CHECK(tc.grads.peak() <= 3 * (big.bytes() + Arena::kAlign));
        CHECK_THROWS_WITH(tc.tape.grad(h[3]), Contains("was released"));
        Tensor g = tc.tape.grad(xv);  // a leaf's gradient is kept: x → SiLU⁶, checked against the chain rule
        for (int64_t i = 0; i < big.numel(); i += 97) {
            double d = seed.ptr<double>()[i], v = big.ptr<double>()[i];
            std::vector<double> vs = {v};
            for (int k = 0; k < 6; ++k) vs.push_back(act_forward(Act{}, vs.back()));
            for (int k = 5; k >= 0; --k) d *= act_grad(Act{}, vs[k]);
            CHECK(g.ptr<double>()[i] == Approx(d).epsilon(1e-12));
        }
    }
    SECTION("clear rewinds the gradient arena") {
        Var xv = tc.tape.leaf(x);
        tc.tape.grad(xv);
        CHECK(tc.grads.used() > 0);
        tc.tape.clear();
        CHECK(tc.grads.used() == 0);
        CHECK(tc.tape.size() == 0);
    }
}

TEST_CASE("rng gives PCG32 reference values and reproducible independent streams", "[engine][rng]") {
    // pcg32_srandom(42, 54) from the PCG reference demo: first outputs 0xa15c02b7 0x7b47f409 0xba1d3330.
    Rng r(42, 54);
    CHECK(r.next_u32() == 0xa15c02b7u);
    CHECK(r.next_u32() == 0x7b47f409u);
    CHECK(r.next_u32() == 0xba1d3330u);

    Rng a(7, 1), b(7, 1), other(7, 2);
    int same = 0;
    for (int i = 0; i < 100; ++i) {
        uint32_t x = a.next_u32();
        CHECK(x == b.next_u32());
        same += x == other.next_u32();
    }
    CHECK(same < 3);

    Rng u(3);
    double sum = 0, sq = 0;
    std::set<uint32_t> seen;
    const int n = 20000;
    for (int i = 0; i < n; ++i) {
        float f = u.uniform();
        REQUIRE(f >= 0.0f);
        REQUIRE(f < 1.0f);
        uint32_t k = u.randint(7);
        REQUIRE(k < 7);
        seen.insert(k);
        double g = u.normal();
        sum += g;
        sq += g * g;
    }
    CHECK(seen.size() == 7);
    CHECK(std::fabs(sum / n) < 0.05);
    CHECK(std::fabs(sq / n - 1.0) < 0.05);
}

TEST_CASE("thread pool covers every index once and propagates errors", "[engine][threadpool]") {
    ThreadPool pool(3);
    CHECK(pool.size() == 3);
    std::vector<std::atomic<int>> hits(10007);
    pool.parallel_for((int64_t)hits.size(), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (auto& h : hits) REQUIRE(h.load() == 1);
    CHECK_THROWS_WITH(pool.parallel_for(100, [](int64_t b, int64_t) {
        Y5_CHECK(b == 0, "chunk starting at %lld failed", (long long)b);
    }), Contains("failed"));
    std::atomic<int> ran{0};
    auto f = pool.submit([&] { ran = 1; });
    f.get();
    CHECK(ran == 1);
    pool.parallel_for(0, [](int64_t, int64_t) { FAIL("called for an empty range"); });
}

TEST_CASE("wrong requests give clear errors", "[engine][errors]") {
    TestCtx tc;
    Ctx& c = tc.ctx;
    Rng rng(1);
    Var x = Tape::constant(rand_tensor(tc.data, {1, 3, 8, 8}, DType::F32, rng));
    Var w4 = Tape::constant(rand_tensor(tc.data, {16, 4, 3, 3}, DType::F32, rng));
    Var w3 = Tape::constant(rand_tensor(tc.data, {16, 3, 3, 3}, DType::F32, rng));
    Var w64 = Tape::constant(rand_tensor(tc.data, {16, 3, 3, 3}, DType::F64, rng));
    Var b8 = Tape::constant(rand_tensor(tc.data, {8}, DType::F32, rng));

    CHECK_THROWS_WITH(conv2d(c, x, w4, nullptr, 1, 1),
                      Contains("conv2d: input f32(1, 3, 8, 8)@cpu has 3 channels but weight f32(16, 4, 3, 3)@cpu expects 4"));
    CHECK_THROWS_WITH(conv2d(c, x, w3, &b8, 1, 1), Contains("does not match 16 output channels"));
    CHECK_THROWS_WITH(conv2d(c, x, w64, nullptr, 1, 1), Contains("different dtypes"));
    CHECK_THROWS_WITH(conv2d(c, Tape::constant(x.t.view({3, 8, 8})), w3, nullptr, 1, 1), Contains("must have rank 4"));
    Var small = Tape::constant(rand_tensor(tc.data, {1, 3, 2, 2}, DType::F32, rng));
    CHECK_THROWS_WITH(conv2d(c, small, Tape::constant(rand_tensor(tc.data, {4, 3, 6, 6}, DType::F32, rng)), nullptr, 1, 0),
                      Contains("larger than padded input"));
    CHECK_THROWS_WITH(add(c, x, small), Contains("add: shapes f32(1, 3, 8, 8)@cpu and f32(1, 3, 2, 2)@cpu differ"));
    CHECK_THROWS_WITH(concat(c, {x, Tape::constant(rand_tensor(tc.data, {1, 3, 4, 8}, DType::F32, rng))}),
                      Contains("outside the channel dimension"));
    CHECK_THROWS_WITH(maxpool2d(c, x, 5, 1, 3), Contains("pad <= kernel/2"));
    CHECK_THROWS_WITH(conv1d_channels(c, Tape::constant(x.t.view({3, 64})), Tape::constant(b8.t.view({8}))),
                      Contains("must be odd"));
    CHECK_THROWS_WITH(batchnorm2d(c, x, b8, b8, b8.t, b8.t, true, 1e-3f, 0.03f), Contains("per-channel tensor"));
    CHECK_THROWS_WITH(parse_act("nn.GELU()"), Contains("unknown activation 'nn.GELU()'"));
    CHECK_THROWS_WITH(parse_act("nn.LeakyReLU(abc)"), Contains("is not a number"));
    CHECK_THROWS_WITH(parse_act("nn.ReLU(3)"), Contains("takes no argument"));
    CHECK(parse_act("nn.LeakyReLU(0.1)").alpha == Approx(0.1f));
    CHECK(act_name(parse_act("nn.Hardswish()")) == "nn.Hardswish()");

    // A tensor on a device the context cannot serve is an error too.
    Var fake_cuda = Tape::constant(Tensor(x.t.data, x.t.shape, DType::F32, Device::CUDA));
    CHECK_THROWS_WITH(activation(c, fake_cuda, Act{}), Contains("activation arena is on cpu"));

    // The arena names itself when a batch does not fit.
    Arena tiny("activations", Device::CPU, 512);
    Ctx small_ctx = c;
    small_ctx.act = &tiny;
    CHECK_THROWS_WITH(activation(small_ctx, x, Act{}), Contains("arena 'activations' overflow"));
}

namespace {
std::vector<char> file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("checkpoint files: one serialisation written to several paths, each renamed into place", "[engine][safetensors]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / "y5_test_write_files";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string last = (dir / "last.safetensors").string(), best = (dir / "best.safetensors").string();
    std::vector<float> v = {1.5f, -2.f, 3.25f, 0.125f, 7.f, -0.5f};
    const Tensor t(v.data(), Shape{2, 3}, DType::F32, Device::CPU);
    std::vector<char> a = safetensors_bytes({{"w", t}}, {{"epoch", "3"}}, last);
    v[0] = 9.f;  // the bytes are a copy: changing the tensor after serialising changes nothing
    { std::ofstream(best + ".tmp") << "stale temporary file of a killed run"; }
    write_files_atomic({last, best}, a);
    CHECK(file_bytes(last) == a);
    CHECK(file_bytes(best) == a);
    CHECK(!fs::exists(last + ".tmp"));
    CHECK(!fs::exists(best + ".tmp"));
    const SafeTensorsFile f(best);
    CHECK(f.read_f32("w") == std::vector<float>({1.5f, -2.f, 3.25f, 0.125f, 7.f, -0.5f}));
    CHECK(f.metadata().at("epoch") == "3");

    // The next epoch replaces last alone: best keeps its bytes (a hard link shares the file, never a later write).
    const std::vector<char> b = safetensors_bytes({{"w", t}}, {{"epoch", "4"}}, last);
    write_files_atomic({last}, b);
    CHECK(file_bytes(last) == b);
    CHECK(file_bytes(best) == a);

    // Another filesystem for the second path, where no hard link can be made: written a second time.
    struct stat sd {}, ss {};
    const fs::path other = "/dev/shm/y5_test_write_files.safetensors";
    if (stat(dir.c_str(), &sd) == 0 && stat("/dev/shm", &ss) == 0 && sd.st_dev != ss.st_dev && access("/dev/shm", W_OK) == 0) {
        write_files_atomic({last, other.string()}, a);
        CHECK(file_bytes(other.string()) == a);
        CHECK(file_bytes(last) == a);
        fs::remove(other);
    } else {
        WARN("no second filesystem at /dev/shm: the copy without a hard link is not exercised here");
    }

    // A write that cannot happen names the file and leaves the previous one.
    fs::create_directories(dir / "blocked.safetensors.tmp" / "x");
    CHECK_THROWS_WITH(write_files_atomic({(dir / "blocked.safetensors").string()}, a),
                      Contains("blocked.safetensors.tmp: cannot open for writing"));
    CHECK_THROWS_WITH(write_files_atomic({last, (dir / "blocked.safetensors").string()}, b), Contains("blocked.safetensors"));
    CHECK(file_bytes(last) == a);  // nothing renamed when a later path failed, and no temporary file left
    CHECK(!fs::exists(last + ".tmp"));
    fs::remove_all(dir);
}

TEST_CASE("device discovery treats any runtime error as 'no GPU'", "[engine][device]") {
    std::string why;
    bool ok = cuda_available(&why);
    if (!ok) {
        CHECK_FALSE(why.empty());
        CHECK_THROWS_WITH(cuda_context_create(0), Contains("no usable CUDA device") || Contains("built without CUDA"));
        CHECK_THROWS(Arena("device", Device::CUDA, 1024));
    } else {
        WARN("a CUDA device is present; the GPU tests (ctest -L gpu) exercise it");
    }
}

TEST_CASE("device spellings as YOLOv5's scripts take them", "[engine][device]") {
    CHECK(parse_device("cpu") == -1);
    CHECK(parse_device("CPU") == -1);
    CHECK_THROWS_WITH(parse_device("0,1"), Contains("one device"));
    CHECK_THROWS_WITH(parse_device("gpu"), Contains("expected cpu, or a CUDA device index"));
    CHECK_THROWS_WITH(parse_device("-1"), Contains("expected cpu, or a CUDA device index"));
    std::string why;
    if (!cuda_available(&why)) {
        CHECK(parse_device("") == -1);  // YOLOv5: '' means the first GPU if there is one, else the CPU
        for (const char* d : {"0", "cuda", "cuda:0", "1"})
            CHECK_THROWS_WITH(parse_device(d), Contains("no usable CUDA device") && Contains("use --device cpu"));
    } else {
        CHECK(parse_device("") == 0);
        CHECK(parse_device("0") == 0);
        CHECK(parse_device("cuda:0") == 0);
        CHECK_THROWS_WITH(parse_device("999"), Contains("this machine has"));
    }
}
