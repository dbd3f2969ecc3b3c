/*
 * conv2d through oneDNN on the CPU (see kernels/conv2d_dnnl.h for the contract). A plan per (pass, geometry):
 * the primitive with layouts of oneDNN's choice, the reorders between them and y5's NCHW / (K,C,R,S), and the
 * offsets of each buffer in the caller's work memory. Outputs that y5 accumulates into (dgrad, wgrad) are written
 * by the primitive into work and added by a reorder with a sum post-op (dst = src + dst), one add per element.
 */
#include "kernels/conv2d_dnnl.h"

#include "kernels/check.h"
#include "kernels/conv_stem.h"
#include "kernels/reshape.h"

#if Y5_DNNL
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

#if defined(Y5_CUDA_EMU) && Y5_CUDA_EMU
#define Y5_CUDA_EMU_BUILD 1
#else
#define Y5_CUDA_EMU_BUILD 0
#endif

namespace y5 {

bool conv_dnnl_built() { return true; }

namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

dnnl::engine& cpu_engine() {
    static dnnl::engine e(dnnl::engine::kind::cpu, 0);
    return e;
}

// −1: not decided yet (read Y5_CONV on first use), 0 off, 1 on.
std::atomic<int> g_on{-1};

enum Pass { Fprop = 0, Dgrad = 1, Wgrad = 2 };

// One tensor as the primitive takes it: its descriptor, and the reorder from (to) y5's plain layout when they differ.
struct Operand {
    memory::desc plain, md;
    bool reordered = false;
    dnnl::reorder to, from;  // plain → md (inputs), md → plain with sum (accumulated outputs) or without
    size_t off = 0;          // in work, when reordered (or always, for accumulated outputs)
    bool acc = false;        // an accumulated output
    int unblock = 0;         // B where md is plain's dims in whole nChw{B}c blocks: md → plain by unblock_cpu
};

struct Plan {
    dnnl::primitive prim;
    bool wino = false;  // Winograd (make_plan)
    Operand a, b, c;  // fprop: src, weights, dst; dgrad: diff_dst, weights, diff_src; wgrad: src, diff_dst, diff_weights
    memory::desc bias;
    size_t pad_off = 0, bytes = 0;
};

size_t align_up(size_t n) { return (n + 63) / 64 * 64; }

dnnl::primitive_attr user_scratchpad() {
    dnnl::primitive_attr a;
    a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
}

// An input operand: reordered from plain when oneDNN chose another layout.
void input(Operand& o, const memory::desc& plain, const memory::desc& md, size_t& bytes) {
    o.plain = plain, o.md = md;
    o.reordered = plain != md;
    if (o.reordered) {
        o.to = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), plain, cpu_engine(), md));
        o.off = bytes;
        bytes += align_up(md.get_size());
    }
}

// B where md holds plain's 4 dims as whole nChw{B}c channel blocks (no padding), else 0.
int whole_blocks(const memory::desc& plain, const memory::desc& md) {
    const dnnl_memory_desc_t& d = plain.data;
    if (d.ndims != 4) return 0;
    const memory::dims dims(d.dims, d.dims + 4);
    for (int B : {16, 8})
        if (dims[1] % B == 0 && md == memory::desc(dims, dt::f32, B == 16 ? tag::nChw16c : tag::nChw8c)) return B;
    return 0;
}

// An output operand: written by the primitive into work, then reorder-added (accumulate) or reordered into plain.
void output(Operand& o, const memory::desc& plain, const memory::desc& md, bool accumulate, size_t& bytes) {
    o.plain = plain, o.md = md;
    o.reordered = accumulate || plain != md;
    if (!o.reordered) return;
    o.acc = accumulate;
    o.unblock = whole_blocks(plain, md);
    dnnl::primitive_attr attr;  // reorders keep oneDNN's own (library) scratchpad: f32 ones need none
    if (accumulate) {
        dnnl::post_ops po;
        po.append_sum(1.f);
        attr.set_post_ops(po);
    }
    o.from = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), md, cpu_engine(), plain, attr));
    o.off = bytes;
    bytes += align_up(md.get_size());
}

// The eltwise post-op for a fusable activation (none for Identity).
void append_act(dnnl::post_ops& po, Act a) {
    switch (a.kind) {
        case ActKind::ReLU: po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f); break;
        case ActKind::LeakyReLU: po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, a.alpha, 0.f); break;
        default: break;
    }
}

Plan make_plan_alg(dnnl::algorithm alg, Pass pass, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                   int stride, int pad, int mb) {
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    const memory::dims x_d{mb, C, H, W}, w_d{K, C, R, S}, b_d{K}, y_d{mb, K, Ho, Wo}, st{stride, stride},
        pd{pad, pad};
    const memory::desc x_any(x_d, dt::f32, tag::any), w_any(w_d, dt::f32, tag::any), y_any(y_d, dt::f32, tag::any);
    const memory::desc x_pl(x_d, dt::f32, tag::nchw), w_pl(w_d, dt::f32, tag::oihw), y_pl(y_d, dt::f32, tag::nchw);
    const memory::desc b_md(b_d, dt::f32, tag::x);
    dnnl::primitive_attr attr = user_scratchpad();
    using fwd = dnnl::convolution_forward;
    const fwd::primitive_desc hint(
        fwd::desc(dnnl::prop_kind::forward_training, alg, x_any, w_any, y_any, st, pd, pd), cpu_engine());
    Plan p;
    size_t bytes = 0;
    if (pass == Fprop) {
        if (act.kind != ActKind::Identity) {
            dnnl::post_ops po;
            append_act(po, act);
            attr.set_post_ops(po);
        }
        const fwd::primitive_desc pdsc =
            with_bias ? fwd::primitive_desc(fwd::desc(dnnl::prop_kind::forward_training, alg, x_any, w_any, b_md, y_any,
                                                      st, pd, pd),
                                            attr, cpu_engine())
                      : fwd::primitive_desc(
                            fwd::desc(dnnl::prop_kind::forward_training, alg, x_any, w_any, y_any, st, pd, pd), attr,
                            cpu_engine());
        p.prim = fwd(pdsc);
        input(p.a, x_pl, pdsc.src_desc(), bytes);
        input(p.b, w_pl, pdsc.weights_desc(), bytes);
        output(p.c, y_pl, pdsc.dst_desc(), false, bytes);
        p.bias = b_md;
        p.pad_off = bytes;
        bytes += align_up(pdsc.scratchpad_desc().get_size());
    } else if (pass == Dgrad) {
        using bwd = dnnl::convolution_backward_data;
        const bwd::primitive_desc pdsc(bwd::desc(alg, x_any, w_any, y_any, st, pd, pd), attr, cpu_engine(), hint);
        p.prim = bwd(pdsc);
        input(p.a, y_pl, pdsc.diff_dst_desc(), bytes);
        input(p.b, w_pl, pdsc.weights_desc(), bytes);
        output(p.c, x_pl, pdsc.diff_src_desc(), true, bytes);
        p.pad_off = bytes;
        bytes += align_up(pdsc.scratchpad_desc().get_size());
    } else {
        using bwd = dnnl::convolution_backward_weights;
        const bwd::primitive_desc pdsc(bwd::desc(alg, x_any, w_any, y_any, st, pd, pd), attr, cpu_engine(), hint);
        p.prim = bwd(pdsc);
        input(p.a, x_pl, pdsc.src_desc(), bytes);
        input(p.b, y_pl, pdsc.diff_dst_desc(), bytes);
        output(p.c, w_pl, pdsc.diff_weights_desc(), true, bytes);
        p.pad_off = bytes;
        bytes += align_up(pdsc.scratchpad_desc().get_size());
    }
    p.bytes = bytes;
    return p;
}

// Winograd F(4×4, 3×3) for the training passes of 3×3 stride-1 convolutions (no bias, no post-op: the BatchNorm's
// convolutions) whose output maps are kWinoMin pixels or more on each side, where oneDNN has it (jit_wino_4x3, on
// AVX-512 cores): one Zen 4 core, one image, fprop / wgrad / dgrad in ms, direct → Winograd: 16 channels at 160×160
// 1.38 / 1.16 / 1.35 → 0.75 / 0.67 / 0.76; 64 at 40×40 0.98 / 1.18 / 0.99 → 0.45 / 0.49 / 0.44; 128 at 20×20
// 0.97 / 1.07 / 0.96 → 0.56 / 0.45 / 0.57; 32 at 24×24 0.087 / 0.093 / 0.087 → 0.063 / 0.059 / 0.062. Smaller maps
// lose (64 at 12×12: 0.081 → 0.118 fprop): fprop and dgrad transform the weights on every call, one per image; so
// do few channels on maps near 16 (16 at 16×16 0.010 → 0.014, at 24×24 0.023 → 0.025; 32 at 16×16 even): Winograd
// takes Ho·Wo·C ≥ kWinoMinWork too (64 at 16×16 0.157 → 0.123, 32 at 24×24 above).
// Its rounding differs from the direct algorithm's (max error against a double reference 2.6e-6 of the largest
// output at 256 channels, direct 2.7e-7): Y5_WINOGRAD=0 (or conv_dnnl_set_winograd(false)) keeps the direct algorithm.
// A layout other than a blocked one (a Winograd-specific weights format) is not taken.
constexpr int kWinoMin = 16, kWinoMinInfer = 10;
constexpr int64_t kWinoMinWork = 16384;
std::atomic<int> g_wino{-1};  // −1: not decided yet (Y5_WINOGRAD on first use), 0 off, 1 on

bool wino_on() {
    int v = g_wino.load(std::memory_order_relaxed);
    if (v < 0) {
        const char* e = std::getenv("Y5_WINOGRAD");
        v = e && std::strcmp(e, "0") == 0 ? 0 : 1;
        g_wino.store(v);
    }
    return v == 1;
}

// A 3×3 stride-1 convolution whose output is at least `side` a side, with Winograd on.
bool wino_fits(int R, int S, int stride, int Ho, int Wo, int side) {
    return wino_on() && R == 3 && S == 3 && stride == 1 && Ho >= side && Wo >= side;
}

bool blocked_layouts(const Plan& p) {
    for (const Operand* o : {&p.a, &p.b, &p.c})
        if (o->md.data.format_kind != dnnl_blocked) return false;
    return true;
}

Plan make_plan(Pass pass, bool with_bias, Act act, int C, int H, int W, int K, int R, int S, int stride, int pad,
               int mb) {
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    if (mb == 1 && wino_fits(R, S, stride, Ho, Wo, kWinoMin) && (int64_t)Ho * Wo * C >= kWinoMinWork && !with_bias &&
        act.kind == ActKind::Identity) {
        try {
            Plan p = make_plan_alg(dnnl::algorithm::convolution_winograd, pass, with_bias, act, C, H, W, K, R, S,
                                   stride, pad, mb);
            p.wino = true;
            if (blocked_layouts(p)) return p;
        } catch (const dnnl::error&) {  // no Winograd implementation here (an AVX2 core): the direct one
        }
    }
    return make_plan_alg(dnnl::algorithm::convolution_direct, pass, with_bias, act, C, H, W, K, R, S, stride, pad, mb);
}

// The OpenMP threads the calling thread gives fprop and dgrad (libgomp keeps omp_set_num_threads per thread).
thread_local int t_threads = 1;

struct OmpThreads {  // omp_set_num_threads(n) for a scope, restored after
    int prev;
    explicit OmpThreads(int n) : prev(omp_get_max_threads()) { omp_set_num_threads(n); }
    ~OmpThreads() { omp_set_num_threads(prev); }
};

// oneDNN fixes a primitive's split over threads when it is created, from omp_get_max_threads() then, and runs
// that many whatever the setting at execution: the thread count is part of the plan.
using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, float, int>;
std::mutex g_mu;
std::map<Key, std::unique_ptr<Plan>> g_plans;  // a Plan never moves once made (callers keep the pointer)

// Blocked inference plans (dnnl_bconv): the primitive with y5's layouts fixed (blocked, or NCHW for the image) and the
// weights in the layout it chose. Key: geometry, NCHW input, activation, slope, add, threads.
struct BPlan {
    dnnl::primitive prim;
    memory::desc x, w, w_plain, b, y;
    size_t pad_bytes = 0;
    int add_arg = 0;    // the binary add's argument (the addend), 0 without add
    bool wino = false;  // Winograd, which takes no post-op: dnnl_bconv applies the activation and the add after it
};
using BKey = std::tuple<int, int, int, int, int, int, int, int, bool, int, float, bool, int>;
std::map<BKey, std::unique_ptr<BPlan>> g_bplans;

const Plan& plan(Pass pass, bool with_bias, int threads, int C, int H, int W, int K, int R, int S, int stride,
                 int pad, Act act = kNoAct, int mb = 1) {
    const float alpha = act.kind == ActKind::LeakyReLU ? act.alpha : 0.f;
    const Key k{pass, with_bias, threads, C, H, W, K, R, S, stride, pad, (int)act.kind, alpha, mb};
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_plans.find(k);
    if (it == g_plans.end()) {
        try {
            OmpThreads omp(threads);
            it = g_plans.emplace(k, std::make_unique<Plan>(make_plan(pass, with_bias, act, C, H, W, K, R, S, stride, pad, mb)))
                     .first;
        } catch (const dnnl::error& e) {
            Y5_FAIL("conv2d (oneDNN): no primitive for x (%d,%d,%d) w (%d,%d,%d,%d) s%d p%d, pass %d: %s", C, H, W, K,
                    C, R, S, stride, pad, (int)pass, e.what());
        }
    }
    return *it->second;
}

// A weight reorder split over output-channel blocks (dim 0): part j of `parts` covers the blocks
// [nb·j/parts, nb·(j+1)/parts) of dim 0's nb blocks, as sub-memories of both sides. Only where no dimension is
// padded (dim_parts > 1): a padded layout's padding is zeroed by the whole reorder, which a part would not do.
struct PartReorder {
    dnnl::reorder r;
    memory::desc from, to;  // the sub-memories' descriptors
};
std::map<std::tuple<const Operand*, int, int>, std::unique_ptr<PartReorder>> g_part_reorders;  // under g_mu

// Dim 0's blocks in md (its inner block over dim 0, 1 if none), or 1 where any dimension is padded.
int dim0_blocks(const memory::desc& md) {
    const dnnl_memory_desc_t& d = md.data;
    for (int i = 0; i < d.ndims; ++i)
        if (d.padded_dims[i] != d.dims[i]) return 1;
    int64_t blk = 1;
    const dnnl_blocking_desc_t& b = d.format_desc.blocking;
    for (int i = 0; i < b.inner_nblks; ++i)
        if (b.inner_idxs[i] == 0) blk *= b.inner_blks[i];
    return (int)(d.dims[0] / blk);
}

// o's reorder between plain and md (md → plain with its sum when from_md), over part j of parts.
PartReorder& part_reorder(const Operand& o, bool from_md, int j, int parts) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto& slot = g_part_reorders[{&o, from_md ? -1 - j : j, parts}];
    if (!slot) {
        const int nb = dim0_blocks(o.md);
        const memory::dim blk = o.md.data.dims[0] / nb, k0 = blk * (nb * j / parts), k1 = blk * (nb * (j + 1) / parts);
        memory::dims dims(o.md.data.dims, o.md.data.dims + o.md.data.ndims), off(dims.size(), 0);
        dims[0] = k1 - k0, off[0] = k0;
        const memory::desc sp = o.plain.submemory_desc(dims, off), sm = o.md.submemory_desc(dims, off);
        dnnl::primitive_attr attr;
        if (from_md) {  // the weight gradient's finish: added into the plain gradient
            dnnl::post_ops po;
            po.append_sum(1.f);
            attr.set_post_ops(po);
        }
        const memory::desc &src = from_md ? sm : sp, &dst = from_md ? sp : sm;
        slot = std::make_unique<PartReorder>(
            PartReorder{dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), src, cpu_engine(), dst, attr)), src,
                        dst});
    }
    return *slot;
}

dnnl::stream& cpu_stream() {
    thread_local dnnl::stream s(cpu_engine());
    return s;
}

memory mem(const memory::desc& md, const void* p) { return memory(md, cpu_engine(), const_cast<void*>(p)); }

// A plan's memory objects on this thread, one per buffer descriptor, made on first use and pointed at each call's
// buffers (set_data_handle, which zero-pads a padded layout as creation does); executed through the C API with the
// arguments on the stack. Made per call, with the C++ API's argument maps, they cost about 4 % of a 96 px training
// step in malloc and free. conv_dnnl_clear_cache() bumps g_gen, which empties every thread's cache.
struct Mems {
    memory a, a_plain, b, b_plain, c, c_plain, pad, bias;
};
std::atomic<uint64_t> g_gen{0};

Mems& mems(const Plan& p) {
    thread_local std::unordered_map<const Plan*, Mems> cache;
    thread_local uint64_t gen = 0;
    const uint64_t now = g_gen.load(std::memory_order_acquire);
    if (gen != now) cache.clear(), gen = now;
    auto it = cache.find(&p);
    if (it != cache.end()) return it->second;
    auto mk = [](const memory::desc& d) { return memory(d, cpu_engine(), DNNL_MEMORY_NONE); };
    Mems m{mk(p.a.md), mk(p.a.plain), mk(p.b.md), mk(p.b.plain), mk(p.c.md), mk(p.c.plain),
           mk(memory::desc({(memory::dim)(p.bytes - p.pad_off)}, dt::u8, tag::x)), memory()};
    if (!p.bias.is_zero()) m.bias = mk(p.bias);
    return cache.emplace(&p, std::move(m)).first->second;
}

dnnl_memory_t at(const memory& m, const void* ptr) {
    m.set_data_handle(const_cast<void*>(ptr));
    return m.get();
}

void exec(const dnnl::primitive& prim, std::initializer_list<dnnl_exec_arg_t> args) {
    const dnnl_status_t s = dnnl_primitive_execute(prim.get(), cpu_stream().get(), (int)args.size(), args.begin());
    Y5_CHECK(s == dnnl_success, "conv2d (oneDNN): a primitive failed to execute (status %d)", (int)s);
}

// The buffer the primitive reads for an input: reordered into work (m_plain → m), or the plain tensor itself.
dnnl_memory_t in_mem(const Operand& o, const memory& m, const memory& m_plain, const float* plain, char* work) {
    if (!o.reordered) return at(m, plain);
    exec(o.to, {{DNNL_ARG_FROM, at(m_plain, plain)}, {DNNL_ARG_TO, at(m, work + o.off)}});
    return m.get();
}

// An output operand from the primitive's layout (blk, in work) into plain, added when accumulated: whole channel
// blocks by unblock_cpu over `threads` OpenMP threads, others by the plan's reorder.
void to_plain(const Operand& o, const memory& m, const memory& m_plain, const float* blk, float* plain, int threads) {
    if (!o.unblock) {
        exec(o.from, {{DNNL_ARG_FROM, at(m, blk)}, {DNNL_ARG_TO, at(m_plain, plain)}});
        return;
    }
    const dnnl_memory_desc_t& d = o.plain.data;
    const int B = o.unblock;
    const int64_t G = d.dims[0] * d.dims[1] / B, P = d.dims[2] * d.dims[3];
    dnnl_omp_for(threads, G, [&](int64_t g0, int64_t g1) {
        if (o.acc) unblock_cpu<true>(plain, blk, g0, g1, P, B);
        else unblock_cpu<false>(plain, blk, g0, g1, P, B);
    });
}

// Whether p may be handed to oneDNN as a blocked operand: its Winograd kernels store with vmovntps, which faults on
// addresses that are not 64-byte aligned (y5's arenas align to 256; a test's std::vector may not).
bool aligned64(const void* p) { return (uintptr_t)p % 64 == 0; }

// The weights as the primitive reads them: prepared (wre, where aligned), reordered into work, or the plain tensor.
dnnl_memory_t weights_mem(const Operand& o, const Mems& ms, const float* weight, const float* wre, char* work) {
    return wre && o.reordered && aligned64(wre) ? at(ms.b, wre) : in_mem(o, ms.b, ms.b_plain, weight, work);
}

// Runs part j of parts of o's reorder: plain → md (from_md false) or md → plain with its sum, between the whole
// tensors `plain` and `blocked` (each part's sub-memory offsets address its own elements). The memory objects are
// this thread's, as mems().
void run_part(const Operand& o, bool from_md, const float* plain, const float* blocked, int j, int parts) {
    PartReorder& pr = part_reorder(o, from_md, j, parts);
    thread_local std::unordered_map<const PartReorder*, std::pair<memory, memory>> cache;
    thread_local uint64_t gen = 0;
    const uint64_t now = g_gen.load(std::memory_order_acquire);
    if (gen != now) cache.clear(), gen = now;
    auto it = cache.find(&pr);
    if (it == cache.end())
        it = cache.emplace(&pr, std::make_pair(memory(pr.from, cpu_engine(), DNNL_MEMORY_NONE),
                                               memory(pr.to, cpu_engine(), DNNL_MEMORY_NONE)))
                 .first;
    exec(pr.r, {{DNNL_ARG_FROM, at(it->second.first, from_md ? blocked : plain)},
                {DNNL_ARG_TO, at(it->second.second, from_md ? plain : blocked)}});
}

}  // namespace

bool conv_dnnl_on() {
    int v = g_on.load(std::memory_order_relaxed);
    if (v < 0) {
        // The emulated CUDA build's cuDNN stand-in (tests/cudaemu) computes with the im2col reference, and its GPU
        // tests expect the CPU ops' f16 bits from it: there the CPU ops default to the reference too.
        const char* e = std::getenv("Y5_CONV");
        const bool dflt = !Y5_CUDA_EMU_BUILD;
        v = e ? (std::strcmp(e, "ref") == 0 ? 0 : 1) : dflt;
        Y5_CHECK(!e || v == 0 || std::strcmp(e, "dnnl") == 0, "conv2d: Y5_CONV=%s, expected ref or dnnl", e);
        g_on.store(v);
    }
    return v == 1;
}

void conv_dnnl_set(bool on) { g_on.store(on ? 1 : 0); }

bool conv_dnnl_set_winograd(bool on) {
    const bool prev = wino_on();
    if (prev == on) return prev;
    g_wino.store(on ? 1 : 0);
    conv_dnnl_clear_cache();  // the plans made with the other choice
    return prev;
}

bool conv2d_dnnl_winograd(int C, int H, int W, int K, int R, int S, int stride, int pad) {
    return plan(Fprop, false, t_threads, C, H, W, K, R, S, stride, pad).wino;
}

void conv_dnnl_set_threads(int n) { t_threads = std::max(1, n); }

bool conv_dnnl_act_fusable(Act a) {
    return a.kind == ActKind::Identity || a.kind == ActKind::ReLU || a.kind == ActKind::LeakyReLU;
}

// conv2d_dnnl_work_bytes's answers (the ops ask on every call; seven plan lookups each).
using WKey = std::tuple<int, int, int, int, int, int, int, int, int>;
static std::mutex g_work_mu;
static std::map<WKey, size_t> g_work_bytes;

size_t conv2d_dnnl_work_bytes(int C, int H, int W, int K, int R, int S, int stride, int pad, int max_threads) {
    const WKey key{C, H, W, K, R, S, stride, pad, max_threads};
    {
        std::lock_guard<std::mutex> lock(g_work_mu);
        auto it = g_work_bytes.find(key);
        if (it != g_work_bytes.end()) return it->second;
    }
    size_t b = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad).bytes;
    for (int t : {1, std::max(1, max_threads)})
        for (Pass p : {Fprop, Dgrad})
            for (bool bias : {false, p == Fprop})
                b = std::max(b, plan(p, bias, t, C, H, W, K, R, S, stride, pad).bytes);
    for (int t : {1, std::max(1, max_threads)})  // the inference fprop (bias and a post-op): its scratchpad may differ
        b = std::max(b, plan(Fprop, true, t, C, H, W, K, R, S, stride, pad, Act{ActKind::ReLU, 0.f}).bytes);
    const Plan& pd = plan(Dgrad, false, 1, C, H, W, K, R, S, stride, pad);  // conv2d_dnnl_backward_blocked's
    b = std::max(b, align_up(pd.a.md.get_size()) + std::max(pd.bytes, plan(Wgrad, false, 1, C, H, W, K, R, S, stride,
                                                                            pad).bytes));
    b += 64;  // the start aligned to 64 inside the caller's buffer
    std::lock_guard<std::mutex> lock(g_work_mu);
    g_work_bytes[key] = b;
    return b;
}

static char* aligned(void* work) { return (char*)(((uintptr_t)work + 63) & ~(uintptr_t)63); }

// The plan whose weights conv2d_dnnl_weights prepares: the calling thread's fprop (bias, act) or dgrad plan.
static const Plan& weights_plan(bool dgrad, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                                int stride, int pad) {
    return dgrad ? plan(Dgrad, false, t_threads, C, H, W, K, R, S, stride, pad)
                 : plan(Fprop, with_bias, t_threads, C, H, W, K, R, S, stride, pad, act);
}

size_t conv2d_dnnl_weights_floats(bool dgrad, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                                  int stride, int pad) {
    const Plan& p = weights_plan(dgrad, with_bias, act, C, H, W, K, R, S, stride, pad);
    return p.b.reordered ? p.b.md.get_size() / sizeof(float) : 0;
}

int conv2d_dnnl_weights_parts(bool dgrad, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                              int stride, int pad, int want) {
    const Plan& p = weights_plan(dgrad, with_bias, act, C, H, W, K, R, S, stride, pad);
    return p.b.reordered ? std::max(1, std::min(want, dim0_blocks(p.b.md))) : 1;
}

void conv2d_dnnl_weights(float* dst, bool dgrad, bool with_bias, Act act, const float* weight, int C, int H, int W,
                         int K, int R, int S, int stride, int pad, int part, int parts) {
    const Plan& p = weights_plan(dgrad, with_bias, act, C, H, W, K, R, S, stride, pad);
    if (!p.b.reordered) return;
    OmpThreads omp(t_threads);
    if (parts > 1) {
        Y5_CHECK(parts <= dim0_blocks(p.b.md) && part >= 0 && part < parts,
                 "conv2d_dnnl_weights: part %d of %d (weights (%d,%d,%d,%d))", part, parts, K, C, R, S);
        run_part(p.b, false, weight, dst, part, parts);
        return;
    }
    const Mems& ms = mems(p);
    exec(p.b.to, {{DNNL_ARG_FROM, at(ms.b_plain, weight)}, {DNNL_ARG_TO, at(ms.b, dst)}});
}

void conv2d_dnnl_fprop(float* out, const float* inp, const float* weight, const float* bias, void* work, int N, int C,
                       int H, int W, int K, int R, int S, int stride, int pad, Act act, const float* wre) {
    Y5_CHECK(conv_dnnl_act_fusable(act), "conv2d (oneDNN): activation %d has no post-op", (int)act.kind);
    const Plan& p = plan(Fprop, bias != nullptr, t_threads, C, H, W, K, R, S, stride, pad, act);
    char* wk = aligned(work);
    OmpThreads omp(t_threads);
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    const int64_t in_img = (int64_t)C * H * W, out_img = (int64_t)K * Ho * Wo;
    const Mems& ms = mems(p);
    dnnl_memory_t wm = weights_mem(p.b, ms, weight, wre, wk), pm = at(ms.pad, wk + p.pad_off),
                  bm = bias ? at(ms.bias, bias) : nullptr;
    for (int n = 0; n < N; ++n) {
        dnnl_memory_t xm = in_mem(p.a, ms.a, ms.a_plain, inp + n * in_img, wk),
                      ym = at(ms.c, p.c.reordered ? (void*)(wk + p.c.off) : (void*)(out + n * out_img));
        if (bm)
            exec(p.prim, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, ym},
                          {DNNL_ARG_SCRATCHPAD, pm}});
        else
            exec(p.prim, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}, {DNNL_ARG_SCRATCHPAD, pm}});
        if (p.c.reordered) to_plain(p.c, ms.c, ms.c_plain, (const float*)(wk + p.c.off), out + n * out_img, t_threads);
    }
}

void conv2d_dnnl_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                          void* work, int N, int C, int H, int W, int K, int R, int S, int stride, int pad,
                          const float* wre) {
    char* wk = aligned(work);
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    const int64_t in_img = (int64_t)C * H * W, out_img = (int64_t)K * Ho * Wo;
    if (dinp) {
        const Plan& p = plan(Dgrad, false, t_threads, C, H, W, K, R, S, stride, pad);
        OmpThreads omp(t_threads);
        const Mems& ms = mems(p);
        dnnl_memory_t wm = weights_mem(p.b, ms, weight, wre, wk), pm = at(ms.pad, wk + p.pad_off),
                      dxm = at(ms.c, wk + p.c.off);
        for (int n = 0; n < N; ++n) {
            dnnl_memory_t dym = in_mem(p.a, ms.a, ms.a_plain, dout + n * out_img, wk);
            exec(p.prim, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm},
                          {DNNL_ARG_SCRATCHPAD, pm}});
            // dinp += dgrad
            to_plain(p.c, ms.c, ms.c_plain, (const float*)(wk + p.c.off), dinp + n * in_img, t_threads);
        }
    }
    if (dweight) {
        const Plan& p = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad);
        OmpThreads omp(1);  // one thread: the reduction over pixels in one fixed order
        const Mems& ms = mems(p);
        dnnl_memory_t pm = at(ms.pad, wk + p.pad_off), dwm = at(ms.c, wk + p.c.off), dst = at(ms.c_plain, dweight);
        for (int n = 0; n < N; ++n) {
            dnnl_memory_t xm = in_mem(p.a, ms.a, ms.a_plain, inp + n * in_img, wk),
                          dym = in_mem(p.b, ms.b, ms.b_plain, dout + n * out_img, wk);
            exec(p.prim, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dwm},
                          {DNNL_ARG_SCRATCHPAD, pm}});
            exec(p.c.from, {{DNNL_ARG_FROM, dwm}, {DNNL_ARG_TO, dst}});  // dweight += this image's wgrad
        }
    }
}

// Shared: both plans take dy in one layout other than NCHW, this thread runs dgrad on one thread, and the dgrad
// weights are prepared (wgrad's buffers overlap the ones dgrad reorders its weights into).
static bool dy_shared(const Plan& pd, const Plan& pw, bool prepared) {
    return t_threads == 1 && pd.a.reordered && pd.a.md == pw.b.md && (prepared || !pd.b.reordered);
}

bool conv2d_dnnl_dy_shared(bool prepared, int C, int H, int W, int K, int R, int S, int stride, int pad) {
    return dy_shared(plan(Dgrad, false, 1, C, H, W, K, R, S, stride, pad),
                     plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad), prepared);
}

void conv2d_dnnl_backward_blocked(float* dinp, float* dwb, const float* dout, const float* inp, const float* weight,
                                  const float* wre, void* work, int N, int C, int H, int W, int K, int R, int S,
                                  int stride, int pad) {
    const Plan& pd = plan(Dgrad, false, 1, C, H, W, K, R, S, stride, pad);
    const Plan& pw = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad);
    if (!dy_shared(pd, pw, wre != nullptr)) {
        conv2d_dnnl_backward(dinp, nullptr, dout, inp, weight, work, N, C, H, W, K, R, S, stride, pad, wre);
        conv2d_dnnl_wgrad_blocked(dwb, false, dout, inp, work, N, C, H, W, K, R, S, stride, pad);
        return;
    }
    // work: dy reordered, then the two plans' buffers over one another (each image's dgrad is done with its own
    // before wgrad's are written).
    char* dyb = aligned(work);
    char* rest = dyb + align_up(pd.a.md.get_size());
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    const int64_t in_img = (int64_t)C * H * W, out_img = (int64_t)K * Ho * Wo;
    const int64_t nb = (int64_t)(pw.c.md.get_size() / sizeof(float));
    OmpThreads omp(1);
    const Mems &md = mems(pd), &mw = mems(pw);
    float* tmp = (float*)(rest + pw.c.off);
    for (int n = 0; n < N; ++n) {
        exec(pd.a.to, {{DNNL_ARG_FROM, at(md.a_plain, dout + n * out_img)}, {DNNL_ARG_TO, at(md.a, dyb)}});
        exec(pd.prim, {{DNNL_ARG_DIFF_DST, md.a.get()}, {DNNL_ARG_WEIGHTS, weights_mem(pd.b, md, weight, wre, rest)},
                       {DNNL_ARG_DIFF_SRC, at(md.c, rest + pd.c.off)},
                       {DNNL_ARG_SCRATCHPAD, at(md.pad, rest + pd.pad_off)}});
        to_plain(pd.c, md.c, md.c_plain, (const float*)(rest + pd.c.off), dinp + n * in_img, 1);  // dinp += dgrad
        const bool direct = !n && aligned64(dwb);
        exec(pw.prim, {{DNNL_ARG_SRC, in_mem(pw.a, mw.a, mw.a_plain, inp + n * in_img, rest)},
                       {DNNL_ARG_DIFF_DST, at(mw.b, dyb)}, {DNNL_ARG_DIFF_WEIGHTS, at(mw.c, direct ? dwb : tmp)},
                       {DNNL_ARG_SCRATCHPAD, at(mw.pad, rest + pw.pad_off)}});
        if (n)
            for (int64_t i = 0; i < nb; ++i) dwb[i] += tmp[i];
        else if (!direct)
            std::memcpy(dwb, tmp, nb * sizeof(float));
    }
}

size_t conv2d_dnnl_wgrad_floats(int C, int H, int W, int K, int R, int S, int stride, int pad) {
    return plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad).c.md.get_size() / sizeof(float);
}

void conv2d_dnnl_wgrad_blocked(float* dwb, bool add, const float* dout, const float* inp, void* work, int N, int C,
                               int H, int W, int K, int R, int S, int stride, int pad) {
    char* wk = aligned(work);
    const int Ho = (H + 2 * pad - R) / stride + 1, Wo = (W + 2 * pad - S) / stride + 1;
    const int64_t in_img = (int64_t)C * H * W, out_img = (int64_t)K * Ho * Wo;
    const Plan& p = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad);
    const int64_t nb = (int64_t)(p.c.md.get_size() / sizeof(float));
    OmpThreads omp(1);  // one thread: the reduction over pixels in one fixed order
    const Mems& ms = mems(p);
    dnnl_memory_t pm = at(ms.pad, wk + p.pad_off);
    float* tmp = (float*)(wk + p.c.off);  // wgrad's output is always reordered (accumulated), so it has its buffer
    for (int n = 0; n < N; ++n) {
        const bool direct = !n && !add && aligned64(dwb);  // image 0 written over dwb itself
        dnnl_memory_t xm = in_mem(p.a, ms.a, ms.a_plain, inp + n * in_img, wk),
                      dym = in_mem(p.b, ms.b, ms.b_plain, dout + n * out_img, wk), dwm = at(ms.c, direct ? dwb : tmp);
        exec(p.prim, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dwm},
                      {DNNL_ARG_SCRATCHPAD, pm}});
        if (n || add)
            for (int64_t i = 0; i < nb; ++i) dwb[i] += tmp[i];
        else if (!direct)
            std::memcpy(dwb, tmp, nb * sizeof(float));
    }
}

bool conv2d_dnnl_wgrad_group_ok(int N, int C, int H, int W, int K, int R, int S, int stride, int pad) {
    return plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad, kNoAct, N).c.md ==
           plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad).c.md;
}

size_t conv2d_dnnl_wgrad_group_bytes(int N, int C, int H, int W, int K, int R, int S, int stride, int pad) {
    return plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad, kNoAct, N).bytes + 64;
}

void conv2d_dnnl_wgrad_group(float* dwb, const float* dout, const float* inp, void* work, int N, int C, int H, int W,
                             int K, int R, int S, int stride, int pad) {
    char* wk = aligned(work);
    const Plan& p = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad, kNoAct, N);
    OmpThreads omp(1);  // one thread: the reduction over images and pixels in one fixed order
    const Mems& ms = mems(p);
    dnnl_memory_t pm = at(ms.pad, wk + p.pad_off), xm = in_mem(p.a, ms.a, ms.a_plain, inp, wk),
                  dym = in_mem(p.b, ms.b, ms.b_plain, dout, wk);
    exec(p.prim, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, at(ms.c, dwb)},
                  {DNNL_ARG_SCRATCHPAD, pm}});
}

int conv2d_dnnl_wgrad_parts(int C, int H, int W, int K, int R, int S, int stride, int pad, int want) {
    return std::max(1, std::min(want, dim0_blocks(plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad).c.md)));
}

void conv2d_dnnl_wgrad_finish(float* dweight, const float* dwb, int C, int H, int W, int K, int R, int S, int stride,
                              int pad, int part, int parts) {
    const Plan& p = plan(Wgrad, false, 1, C, H, W, K, R, S, stride, pad);
    if (parts > 1) {
        Y5_CHECK(parts <= dim0_blocks(p.c.md) && part >= 0 && part < parts,
                 "conv2d_dnnl_wgrad_finish: part %d of %d (weights (%d,%d,%d,%d))", part, parts, K, C, R, S);
        OmpThreads omp(1);
        run_part(p.c, true, dweight, dwb, part, parts);  // its channels' dweight += dwb
        return;
    }
    const Mems& ms = mems(p);
    exec(p.c.from, {{DNNL_ARG_FROM, at(ms.c, dwb)}, {DNNL_ARG_TO, at(ms.c_plain, dweight)}});  // dweight += dwb
}

void conv2d_dnnl_wgrad_sum(float* dwb, int G, int64_t floats, int64_t i0, int64_t i1) {
    for (int g = 1; g < G; ++g)
        for (int64_t i = i0; i < i1; ++i) dwb[i] += dwb[g * floats + i];
}

void conv_dnnl_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                     int ldb, float beta, float* C, int ldc) {
    OmpThreads omp(1);
    const dnnl_status_t s =
        dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    Y5_CHECK(s == dnnl_success, "conv2d (oneDNN): sgemm %dx%dx%d failed (status %d)", M, N, K, (int)s);
}

void conv_dnnl_clear_cache() {
    std::lock_guard<std::mutex> lock(g_mu);
    g_gen.fetch_add(1, std::memory_order_release);  // every thread's memory objects (Mems) for the plans go too
    g_part_reorders.clear();  // before the plans: keyed by their operands
    g_plans.clear();
    {
        std::lock_guard<std::mutex> wlock(g_work_mu);
        g_work_bytes.clear();
    }
    g_bplans.clear();
}

// ---- Blocked inference

namespace {

tag block_tag(int B) { return B == 16 ? tag::nChw16c : tag::nChw8c; }

bool post_op_alg(Act a, dnnl::algorithm& alg, float& alpha, float& beta) {
    alpha = 0.f, beta = 0.f;
    switch (a.kind) {
        case ActKind::SiLU: alg = dnnl::algorithm::eltwise_swish, alpha = 1.f; return true;
        case ActKind::ReLU: alg = dnnl::algorithm::eltwise_relu; return true;
        case ActKind::LeakyReLU: alg = dnnl::algorithm::eltwise_relu, alpha = a.alpha; return true;
        case ActKind::ReLU6: alg = dnnl::algorithm::eltwise_clip, alpha = 0.f, beta = 6.f; return true;
        case ActKind::Hardswish: alg = dnnl::algorithm::eltwise_hardswish; return true;
        case ActKind::Sigmoid: alg = dnnl::algorithm::eltwise_logistic; return true;
        default: return false;
    }
}

const BPlan& bplan(const BConv& g, Act act, bool add) {
    const int B = dnnl_block();
    Y5_CHECK(B > 0, "conv2d (oneDNN, blocked): no blocked layout on this CPU");
    const float alpha = act.kind == ActKind::LeakyReLU ? act.alpha : 0.f;
    const BKey k{g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad, g.nchw_in, (int)act.kind, alpha, add, g.threads};
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_bplans.find(k);
    if (it != g_bplans.end()) return *it->second;
    const int Ho = (g.H + 2 * g.pad - g.R) / g.stride + 1, Wo = (g.W + 2 * g.pad - g.S) / g.stride + 1;
    const memory::desc x_md({1, g.C, g.H, g.W}, dt::f32, g.nchw_in ? tag::nchw : block_tag(B)),
        w_any({g.K, g.C, g.R, g.S}, dt::f32, tag::any), b_md({g.K}, dt::f32, tag::x),
        y_md({1, g.K, Ho, Wo}, dt::f32, block_tag(B));
    dnnl::primitive_attr attr = user_scratchpad();
    dnnl::post_ops po;
    dnnl::algorithm alg;
    float a0, a1;
    int n_po = 0;
    if (post_op_alg(act, alg, a0, a1)) po.append_eltwise(1.f, alg, a0, a1), ++n_po;
    else Y5_CHECK(act.kind == ActKind::Identity, "conv2d (oneDNN, blocked): activation %d has no post-op",
                  (int)act.kind);
    // The shortcut as a binary add (oneDNN's JIT convolutions take no sum post-op after an eltwise)
    if (add) po.append_binary(dnnl::algorithm::binary_add, y_md);
    attr.set_post_ops(po);
    // Winograd (oneDNN's inference kernels, the weights transformed once by dnnl_bconv_weights) for 3×3 stride-1
    // convolutions of maps kWinoMinInfer pixels or more a side; no post-ops there: dnnl_bconv applies them. One Zen 4
    // core, ms a call with bias, direct → Winograd: 16 channels at 160×160 1.33 → 0.70, 32 at 80×80 1.00 → 0.65,
    // 64 at 40×40 0.98 → 0.54, 128 at 20×20 0.96 → 0.30, 128 at 10×10 0.22 → 0.15.
    using fwd = dnnl::convolution_forward;
    auto make = [&](dnnl::algorithm alg, const dnnl::primitive_attr& attrs) {
        return fwd::primitive_desc(fwd::desc(dnnl::prop_kind::forward_inference, alg, x_md, w_any, b_md, y_md,
                                             {g.stride, g.stride}, {g.pad, g.pad}, {g.pad, g.pad}),
                                   attrs, cpu_engine());
    };
    auto p = std::make_unique<BPlan>();
    OmpThreads omp(g.threads);  // the primitive's thread count is fixed here (see plan())
    fwd::primitive_desc pd;
    if (!g.nchw_in && wino_fits(g.R, g.S, g.stride, Ho, Wo, kWinoMinInfer)) {
        try {
            pd = make(dnnl::algorithm::convolution_winograd, user_scratchpad());
            p->wino = true;
        } catch (const dnnl::error&) {  // none on this CPU: the direct one with its post-ops
        }
    }
    try {
        if (!p->wino) pd = make(dnnl::algorithm::convolution_direct, attr);
        p->prim = fwd(pd);
    } catch (const dnnl::error& e) {
        Y5_FAIL("conv2d (oneDNN, blocked): no primitive for x (%d,%d,%d) w (%d,%d,%d,%d) s%d p%d: %s", g.C, g.H, g.W,
                g.K, g.C, g.R, g.S, g.stride, g.pad, e.what());
    }
    p->x = x_md, p->y = y_md, p->w = pd.weights_desc(), p->b = b_md;
    p->w_plain = memory::desc({g.K, g.C, g.R, g.S}, dt::f32, tag::oihw);
    p->pad_bytes = pd.scratchpad_desc().get_size();
    p->add_arg = add && !p->wino ? DNNL_ARG_ATTR_MULTIPLE_POST_OP(n_po) | DNNL_ARG_SRC_1 : 0;
    return *g_bplans.emplace(k, std::move(p)).first->second;
}

}  // namespace

int dnnl_block() {
    static const int b = [] {
        if (!conv_dnnl_on()) return 0;
        // The widest block with a JIT direct convolution (not oneDNN's reference code) for a typical inner layer:
        // 64 → 64, 3×3, 40×40.
        for (int B : {16, 8}) {
            const memory::desc x({1, 64, 40, 40}, dt::f32, block_tag(B)), w({64, 64, 3, 3}, dt::f32, tag::any),
                y({1, 64, 40, 40}, dt::f32, block_tag(B));
            try {
                using fwd = dnnl::convolution_forward;
                const fwd::primitive_desc pd(fwd::desc(dnnl::prop_kind::forward_inference,
                                                       dnnl::algorithm::convolution_direct, x, w, y, {1, 1}, {1, 1},
                                                       {1, 1}),
                                             cpu_engine());
                if (std::string(pd.impl_info_str()).rfind("jit", 0) == 0) return B;
            } catch (const dnnl::error&) {
            }
        }
        return 0;
    }();
    return conv_dnnl_on() ? b : 0;
}

bool dnnl_post_op(Act a) {
    dnnl::algorithm alg;
    float a0, a1;
    return a.kind == ActKind::Identity || post_op_alg(a, alg, a0, a1);
}

// The image's convolution goes to stem_conv (kernels/conv_stem.h) where it fits: no addend, whole blocks.
static std::atomic<bool> g_stem{true};
static bool stem(const BConv& g, bool add) {
    return g_stem.load() && g.nchw_in && !add && stem_conv_fits(g.C, g.K, dnnl_block());
}
void dnnl_stem_set(bool on) { g_stem.store(on); }

size_t dnnl_bconv_weights_bytes(const BConv& g, Act act, bool add) {
    if (stem(g, add)) return stem_weights_floats(g.C, g.K, g.R, g.S) * sizeof(float);
    return bplan(g, act, add).w.get_size();
}

uint64_t dnnl_bconv_weights_layout(const BConv& g, Act act, bool add) {
    // stem_weights' layout: its own tag ("5TEM") over the shape, apart from the FNV hashes of oneDNN's layouts.
    if (stem(g, add)) return 0x5737e3ull ^ ((uint64_t)g.K << 32 | (uint64_t)g.C << 16 | (uint64_t)g.R << 8 | g.S);
    const dnnl_memory_desc_t& d = bplan(g, act, add).w.data;
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the dims, padded dims, strides and inner blocks
    auto mix = [&](int64_t v) { h = (h ^ (uint64_t)v) * 1099511628211ull; };
    if (d.format_kind == dnnl_format_kind_wino) {  // Winograd's own weights format: its parameters
        const dnnl_wino_desc_t& w = d.format_desc.wino_desc;
        for (int64_t v : {(int64_t)d.format_kind, (int64_t)w.wino_format, (int64_t)w.r, (int64_t)w.alpha, (int64_t)w.ic,
                          (int64_t)w.oc, (int64_t)w.ic_block, (int64_t)w.oc_block, (int64_t)w.ic2_block,
                          (int64_t)w.oc2_block, (int64_t)w.size})
            mix(v);
        return h;
    }
    const dnnl_blocking_desc_t& b = d.format_desc.blocking;
    mix(d.ndims), mix(d.format_kind), mix(b.inner_nblks);
    for (int i = 0; i < d.ndims; ++i) mix(d.dims[i]), mix(d.padded_dims[i]), mix(b.strides[i]);
    for (int i = 0; i < b.inner_nblks; ++i) mix(b.inner_blks[i]), mix(b.inner_idxs[i]);
    return h;
}

void dnnl_bconv_weights(void* dst, const float* weight, const BConv& g, Act act, bool add) {
    if (stem(g, add)) return stem_weights(static_cast<float*>(dst), weight, g.C, g.K, g.R, g.S);
    const BPlan& p = bplan(g, act, add);
    OmpThreads omp(1);
    memory src = mem(p.w_plain, weight), out = mem(p.w, dst);
    dnnl::reorder(src, out).execute(cpu_stream(), src, out);
}

void dnnl_omp_for(int threads, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (threads <= 1 || n <= 1) {
        if (n > 0) fn(0, n);
        return;
    }
    const int t = (int)std::min<int64_t>(threads, n);
    std::exception_ptr err;  // an exception must not leave the parallel region: rethrown after it
    std::mutex err_mu;
#pragma omp parallel num_threads(t)
    {
        const int64_t i = omp_get_thread_num();
        try {
            fn(n * i / t, n * (i + 1) / t);
        } catch (...) {
            std::lock_guard<std::mutex> lock(err_mu);
            if (!err) err = std::current_exception();
        }
    }
    if (err) std::rethrow_exception(err);
}

void dnnl_bconv(float* out, const float* in, const void* weights, const float* bias, const BConv& g, Act act,
                const float* addend) {
    Y5_CHECK(addend != out, "conv2d (oneDNN, blocked): the addend cannot be the output");
    if (stem(g, addend != nullptr)) {
        const int Ho = (g.H + 2 * g.pad - g.R) / g.stride + 1;
        dnnl_omp_for(g.threads, Ho, [&](int64_t y0, int64_t y1) {
            stem_conv(out, in, static_cast<const float*>(weights), bias, g.C, g.H, g.W, g.K, g.R, g.S, g.stride, g.pad,
                      dnnl_block(), act, (int)y0, (int)y1);
        });
        return;
    }
    const BPlan& p = bplan(g, act, addend != nullptr);
    thread_local std::vector<char> pad;  // grows to the largest scratchpad this thread has needed, then stays
    if (pad.size() < p.pad_bytes + 64) pad.resize(p.pad_bytes + 64);
    Y5_CHECK(!p.wino || (aligned64(out) && aligned64(in) && aligned64(weights)),
             "conv2d (oneDNN, blocked): Winograd needs 64-byte aligned buffers");
    OmpThreads omp(g.threads);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, mem(p.x, in)},
        {DNNL_ARG_WEIGHTS, mem(p.w, weights)},
        {DNNL_ARG_BIAS, mem(p.b, bias)},
        {DNNL_ARG_DST, mem(p.y, out)},
        {DNNL_ARG_SCRATCHPAD, mem(memory::desc({(memory::dim)p.pad_bytes}, dt::u8, tag::x), aligned(pad.data()))}};
    if (p.add_arg) args.insert({p.add_arg, mem(p.y, addend)});
    p.prim.execute(cpu_stream(), args);
    if (p.wino && (act.kind != ActKind::Identity || addend)) {  // the post-ops: out = act(out) + addend
        const int64_t n = (int64_t)(p.y.get_size() / sizeof(float)), chunk = 4096;  // padding channels included
        dnnl_omp_for(g.threads, (n + chunk - 1) / chunk, [&](int64_t c0, int64_t c1) {
            for (int64_t c = c0; c < c1; ++c) {
                float* o = out + c * chunk;
                const int64_t m = std::min(chunk, n - c * chunk);
                if (act.kind != ActKind::Identity) act_forward_cpu(o, o, m, act);
                if (addend)
                    for (int64_t i = 0; i < m; ++i) o[i] += addend[c * chunk + i];
            }
        });
    }
}

}  // namespace y5

#else  // built without oneDNN (Y5_DNNL=OFF): the references run, these are never reached

namespace y5 {

bool conv_dnnl_built() { return false; }
bool conv_dnnl_on() { return false; }
void conv_dnnl_set(bool on) { Y5_CHECK(!on, "conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)"); }
void conv_dnnl_set_threads(int) {}
bool conv_dnnl_act_fusable(Act) { return false; }
size_t conv2d_dnnl_work_bytes(int, int, int, int, int, int, int, int, int) { return 0; }
void conv2d_dnnl_fprop(float*, const float*, const float*, const float*, void*, int, int, int, int, int, int, int, int,
                       int, Act, const float*) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void conv2d_dnnl_backward(float*, float*, const float*, const float*, const float*, void*, int, int, int, int, int,
                          int, int, int, int, const float*) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
size_t conv2d_dnnl_weights_floats(bool, bool, Act, int, int, int, int, int, int, int, int) { return 0; }
int conv2d_dnnl_weights_parts(bool, bool, Act, int, int, int, int, int, int, int, int, int) { return 1; }
void conv2d_dnnl_weights(float*, bool, bool, Act, const float*, int, int, int, int, int, int, int, int, int, int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
size_t conv2d_dnnl_wgrad_floats(int, int, int, int, int, int, int, int) { return 0; }
bool conv2d_dnnl_wgrad_group_ok(int, int, int, int, int, int, int, int, int) { return false; }
size_t conv2d_dnnl_wgrad_group_bytes(int, int, int, int, int, int, int, int, int) { return 0; }
void conv2d_dnnl_wgrad_group(float*, const float*, const float*, void*, int, int, int, int, int, int, int, int, int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void conv2d_dnnl_wgrad_blocked(float*, bool, const float*, const float*, void*, int, int, int, int, int, int, int, int,
                               int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
bool conv2d_dnnl_dy_shared(bool, int, int, int, int, int, int, int, int) { return false; }
void conv2d_dnnl_backward_blocked(float*, float*, const float*, const float*, const float*, const float*, void*, int,
                                  int, int, int, int, int, int, int, int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
int conv2d_dnnl_wgrad_parts(int, int, int, int, int, int, int, int, int) { return 1; }
void conv2d_dnnl_wgrad_finish(float*, const float*, int, int, int, int, int, int, int, int, int, int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void conv2d_dnnl_wgrad_sum(float*, int, int64_t, int64_t, int64_t) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void conv_dnnl_clear_cache() {}
bool conv_dnnl_set_winograd(bool) { return false; }
bool conv2d_dnnl_winograd(int, int, int, int, int, int, int, int) { return false; }
void conv_dnnl_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
int dnnl_block() { return 0; }
bool dnnl_post_op(Act) { return false; }
size_t dnnl_bconv_weights_bytes(const BConv&, Act, bool) { return 0; }
uint64_t dnnl_bconv_weights_layout(const BConv&, Act, bool) { return 0; }
void dnnl_bconv_weights(void*, const float*, const BConv&, Act, bool) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void dnnl_bconv(float*, const float*, const void*, const float*, const BConv&, Act, const float*) {
    Y5_FAIL("conv2d_dnnl.cpp: y5 was built without oneDNN (Y5_DNNL=OFF)");
}
void dnnl_stem_set(bool) {}
void dnnl_omp_for(int, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (n > 0) fn(0, n);
}

}  // namespace y5

#endif
