/*
 * cudaemu's device side: a launch is checked as the hardware checks it, queued on its stream, and run
 * block by block, each CUDA thread a fiber (Boost.Context) with its own small stack. A fiber runs until it
 * reaches a sync point (__syncthreads, __syncwarp, a *_sync warp intrinsic) or exits; a sync point resolves
 * when every participant has arrived, so barriers and shuffles are real rendezvous. Threads (and blocks) run
 * in the order CUDAEMU_ORDER says: a missing barrier changes the result when the order changes.
 * Most kernels never reach a sync point, so a block starts as one "runner" fiber that calls the threads' bodies
 * one after another in that order; the first thread to reach a sync point keeps the runner's stack as its own
 * fiber and the threads not yet started get theirs. As each thread runs until its first sync point or its exit
 * either way, the order of everything the threads do is the one of a fiber per thread from the start.
 * Faults (a barrier some threads cannot reach, a warp intrinsic naming an exited or absent lane, lanes in
 * different intrinsics, a deadlock) print one line naming the kernel, block, thread and source line, stop
 * the launch, and become the sticky error.
 */
#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <boost/context/detail/fcontext.hpp>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDAEMU_ASAN 1
#else
#define CUDAEMU_ASAN 0
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace cudaemu {
namespace {

namespace bctx = boost::context::detail;

#if CUDAEMU_ASAN
constexpr size_t kStack = 512 * 1024;  // AddressSanitizer's redzones need room
#else
constexpr size_t kStack = 128 * 1024;
#endif
constexpr size_t kPage = 4096;

enum class TState : uint8_t { Ready, AtBarrier, AtWarp, Exited };

struct Thread {
    bctx::fcontext_t ctx;
    char* stk;  // its stack's lowest address (AddressSanitizer's fiber switches need it)
    TState st;
    int lin;  // linear thread index in the block
    uint3 idx;
    // A pending warp intrinsic
    WarpKind kind;
    unsigned mask;
    uint64_t bits, result;
    int arg, width;
    const char *name, *file;
    int line;
};

struct Launch {
    const Site* site;
    const Config* cfg;
    const std::function<void()>* body;
};

// One OS thread's executor: the fiber stacks (reused by every block) and the block being run.
struct Exec {
    std::vector<char*> stacks;  // one per thread of the largest block so far that reached a sync point
    char* runner = nullptr;     // the runner's stack
    std::vector<Thread> th;
    std::vector<uint32_t> w_at, w_exited;  // per warp: the lanes waiting in a warp intrinsic, and those exited
    dim3 dims{0, 0, 0};         // the block's shape that `th` was set up for
    int n = 0;                  // threads in the block
    int run_pos = 0;            // the runner's position in `ord`
    bool promoted = false;      // a thread on the runner reached a sync point: the rest are fibers
    int exited = 0, at_barrier = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    Thread* cur = nullptr;
    bctx::fcontext_t sched = nullptr;
    bool faulted = false;
    Launch L{};
    std::vector<std::pair<const void*, void*>> statics;  // __shared__ declarations of this block
    void* dyn = nullptr;
    std::mt19937_64 rng;
    std::vector<int> ord;
    Order ord_order = Order::Forward;  // the order `ord` was built for (reset_for_tests may change the setting)
#if CUDAEMU_ASAN
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};
thread_local Exec* g_exec = nullptr;

Exec& exec() {
    if (!g_exec) g_exec = new Exec;  // per OS thread, kept for the thread's life
    return *g_exec;
}

// One mapping per stack with a guard page below it: a stack overflow faults instead of corrupting.
char* map_stack() {
    void* m = mmap(nullptr, kStack + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        std::fprintf(stderr, "cudaemu: cannot map fiber stacks\n");
        std::abort();
    }
    mprotect(m, kPage, PROT_NONE);
    return static_cast<char*>(m) + kPage;
}

char* stack(Exec& e, int i) {
    while ((int)e.stacks.size() <= i) e.stacks.push_back(map_stack());
    return e.stacks[i];
}

// A fresh fiber on stack s that starts in entry.
bctx::fcontext_t new_fiber(char* s, void (*entry)(bctx::transfer_t)) {
#if CUDAEMU_ASAN
    __asan_unpoison_memory_region(s + kStack - 16 * kPage, 16 * kPage);  // the top, where the entry's frame lives
#endif
    return bctx::make_fcontext(s + kStack, kStack, entry);
}

std::string where(const Exec& e, const Thread* t) {
    char b[400];
    std::snprintf(b, sizeof b, "kernel %s (launched at %s:%d), block (%u,%u,%u), thread (%u,%u,%u)", e.L.site->kernel,
                  e.L.site->file, e.L.site->line, blockIdx.x, blockIdx.y, blockIdx.z, t ? t->idx.x : 0u,
                  t ? t->idx.y : 0u, t ? t->idx.z : 0u);
    return b;
}

void fiber_fault(Exec& e, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// ---------------------------------------------------------------------------------------------------- switching
// From the block scheduler into a fiber (whose stack is stk) until it yields; returns the fiber's context then.
bctx::fcontext_t jump_in(Exec& e, bctx::fcontext_t ctx, char* stk) {
#if CUDAEMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stk, kStack);
#else
    (void)stk;
#endif
    bctx::transfer_t r = bctx::jump_fcontext(ctx, &e);
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    return r.fctx;
}

void switch_to_fiber(Exec& e, Thread& t) {
    e.cur = &t;
    threadIdx = t.idx;
    t.ctx = jump_in(e, t.ctx, t.stk);
    e.cur = nullptr;
}

// From a fiber back to the block scheduler; returns when the scheduler resumes this fiber.
void yield(Exec& e, bool exiting) {
#if CUDAEMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, e.sched_bottom, e.sched_size);
#else
    (void)exiting;
#endif
    bctx::transfer_t r = bctx::jump_fcontext(e.sched, nullptr);
    e.sched = r.fctx;
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &e.sched_bottom, &e.sched_size);
#endif
}

void check_exit(Exec& e, Thread& me);

void exit_thread(Exec& e, Thread& me) {
    me.st = TState::Exited;
    ++e.exited;
    e.w_exited[me.lin >> 5] |= 1u << (me.lin & 31);
    check_exit(e, me);
}

// A fiber's first steps: keep the scheduler's context to yield to.
Exec& enter_fiber(bctx::transfer_t t) {
    Exec& e = *static_cast<Exec*>(t.data);
    e.sched = t.fctx;
#if CUDAEMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &e.sched_bottom, &e.sched_size);
#endif
    return e;
}

void fiber_entry(bctx::transfer_t t) {
    Exec& e = enter_fiber(t);
    (*e.L.body)();
    exit_thread(e, *e.cur);
    yield(e, true);  // never resumed
}

// The threads of a block in `ord`'s order as plain calls, until one yields at a sync point (the scheduler then
// sets `promoted`, and this fiber is that thread's from then on) or all have exited.
void runner_entry(bctx::transfer_t t) {
    Exec& e = enter_fiber(t);
    for (; e.run_pos < e.n; ++e.run_pos) {
        Thread& me = e.th[e.ord[e.run_pos]];
        e.cur = &me;
        threadIdx = me.idx;
        (*e.L.body)();
        exit_thread(e, *e.cur);
        if (e.promoted) break;
    }
    yield(e, true);  // never resumed
}

void fiber_fault(Exec& e, const char* fmt, ...) {
    char b[1200];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    fault(cudaErrorLaunchFailure, "%s: %s", where(e, e.cur).c_str(), b);
    e.faulted = true;
    yield(e, true);  // the launch is abandoned: this fiber is never resumed
}

// ---------------------------------------------------------------------------------------------------- warps
const char* kind_name(WarpKind k) {
    switch (k) {
        case WarpKind::Sync: return "__syncwarp";
        case WarpKind::ShflIdx: return "__shfl_sync";
        case WarpKind::ShflUp: return "__shfl_up_sync";
        case WarpKind::ShflDown: return "__shfl_down_sync";
        case WarpKind::ShflXor: return "__shfl_xor_sync";
        case WarpKind::Ballot: return "__ballot_sync";
        case WarpKind::Any: return "__any_sync";
        default: return "__all_sync";
    }
}

// Every lane of `mask` in warp `base` has arrived: check they agree, then give each its result.
void resolve_warp(Exec& e, int base, unsigned mask, Thread& me) {
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        Thread& o = e.th[base + l];
        if (o.kind != me.kind || o.mask != me.mask)
            fiber_fault(e, "lanes of one warp are in different warp intrinsics: lane %d in %s(mask 0x%08x) at %s:%d, lane %d in %s(mask 0x%08x) at %s:%d",
                        me.lin - base, kind_name(me.kind), me.mask, me.file, me.line, l, kind_name(o.kind), o.mask, o.file, o.line);
    }
    uint64_t ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) ballot |= (e.th[base + l].bits != 0 ? 1ull : 0ull) << l;
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        Thread& o = e.th[base + l];
        const int w = o.width, seg = l & ~(w - 1);
        int src = l;
        switch (o.kind) {
            case WarpKind::ShflIdx: src = seg + ((o.arg % w) + w) % w; break;
            case WarpKind::ShflUp: src = l - o.arg >= seg ? l - o.arg : l; break;
            case WarpKind::ShflDown: src = l + o.arg < seg + w ? l + o.arg : l; break;
            case WarpKind::ShflXor: src = (l ^ o.arg) < seg + w ? (l ^ o.arg) : l; break;
            default: break;
        }
        switch (o.kind) {
            case WarpKind::Sync: o.result = 0; break;
            case WarpKind::Ballot: o.result = ballot; break;
            case WarpKind::Any: o.result = ballot != 0; break;
            case WarpKind::All: o.result = ballot == mask; break;
            default:
                if (!(mask >> src & 1))
                    fiber_fault(e, "%s at %s:%d: lane %d reads lane %d, which the mask 0x%08x does not name (its value is undefined)",
                                kind_name(o.kind), o.file, o.line, l, src, mask);
                o.result = e.th[base + src].bits;
        }
        if (&o != &me) o.st = TState::Ready;
    }
    me.st = TState::Ready;
    e.w_at[base >> 5] &= ~mask;
}

// A thread exits: a lane waiting for it in a warp intrinsic, or threads waiting at a barrier, can never go on.
void check_exit(Exec& e, Thread& me) {
    const int base = me.lin & ~31, lane = me.lin & 31;
    for (uint32_t waiting = e.w_at[base >> 5]; waiting; waiting &= waiting - 1) {
        const int l = __builtin_ctz(waiting);
        Thread& o = e.th[base + l];
        if (o.mask >> lane & 1)
            fiber_fault(e, "this thread exited while lane %d waits for it in %s(mask 0x%08x) at %s:%d", l, kind_name(o.kind),
                        o.mask, o.file, o.line);
    }
    if (e.at_barrier > 0)
        fiber_fault(e, "this thread exited while %d threads of its block wait at __syncthreads at %s:%d (a barrier in divergent code)",
                    e.at_barrier, e.bar_file, e.bar_line);
}

}  // namespace

uint64_t warp_op(WarpKind kind, unsigned mask, uint64_t bits, int arg, int width, const char* name, const char* file,
                 int line) {
    Exec& e = exec();
    Thread& me = *e.cur;
    const int base = me.lin & ~31, lane = me.lin & 31;
    if (kind != WarpKind::Sync && kind != WarpKind::Ballot && kind != WarpKind::Any && kind != WarpKind::All &&
        (width < 1 || width > 32 || (width & (width - 1))))
        fiber_fault(e, "%s at %s:%d: width %d is not a power of two in [1, 32]", name, file, line, width);
    if (!(mask >> lane & 1))
        fiber_fault(e, "%s at %s:%d: the mask 0x%08x does not name the calling lane %d", name, file, line, mask, lane);
    const uint32_t others = mask & ~(1u << lane), exist = e.n - base >= 32 ? ~0u : (1u << (e.n - base)) - 1;
    const uint32_t absent = others & ~exist, gone = others & e.w_exited[base >> 5];
    if (absent | gone) {  // the lowest such lane, as a loop over the lanes would name it
        const int l = __builtin_ctz(absent | gone);
        if (absent >> l & 1)
            fiber_fault(e, "%s at %s:%d: the mask 0x%08x names lane %d, which does not exist (the block has %d threads)",
                        name, file, line, mask, l, e.n);
        fiber_fault(e, "%s at %s:%d: the mask 0x%08x names lane %d, which has exited", name, file, line, mask, l);
    }
    me.kind = kind;
    me.mask = mask;
    me.bits = bits;
    me.arg = arg;
    me.width = width;
    me.name = name;
    me.file = file;
    me.line = line;
    me.st = TState::AtWarp;
    uint32_t& at = e.w_at[base >> 5];
    at |= 1u << lane;
    if ((mask & ~at) == 0) resolve_warp(e, base, mask, me);
    else yield(e, false);
    return me.result;
}

void syncthreads(const char* file, int line) {
    Exec& e = exec();
    if (e.exited > 0)
        fiber_fault(e, "__syncthreads at %s:%d is reached after %d threads of the block have exited (a barrier in divergent code)",
                    file, line, e.exited);
    if (e.at_barrier == 0) {
        e.bar_file = file;
        e.bar_line = line;
    } else if (e.bar_line != line || (e.bar_file != file && std::strcmp(e.bar_file, file) != 0)) {
        fiber_fault(e, "threads of one block wait at different barriers: __syncthreads at %s:%d and at %s:%d", file, line,
                    e.bar_file, e.bar_line);
    }
    e.cur->st = TState::AtBarrier;
    ++e.at_barrier;
    yield(e, false);
}

void* static_shared(const void* key, size_t bytes) {
    Exec& e = exec();
    for (auto& [k, p] : e.statics)
        if (k == key) return p;
    // Its own heap block (AddressSanitizer sees an overrun), poisoned as uninitialised shared memory.
    void* p = std::malloc(bytes ? bytes : 1);
    std::memset(p, 0xFF, bytes);
    e.statics.emplace_back(key, p);
    return p;
}

void* dynamic_shared() { return exec().dyn; }

// ---------------------------------------------------------------------------------------------------- blocks
namespace {

// The order threads are resumed in, each round: fixed for forward and reverse, reshuffled for random.
const std::vector<int>& ordering(Exec& e, int n) {
    const Order o = settings().order;
    if ((int)e.ord.size() != n || o != e.ord_order || o == Order::Random) {
        e.ord_order = o;
        e.ord.resize(n);
        for (int i = 0; i < n; ++i) e.ord[i] = o == Order::Reverse ? n - 1 - i : i;
        if (o == Order::Random) std::shuffle(e.ord.begin(), e.ord.end(), e.rng);
    }
    return e.ord;
}

// Runs one block to completion; false after a fault.
bool run_block(Exec& e) {
    const dim3 b = e.L.cfg->block;
    if (b.x != e.dims.x || b.y != e.dims.y || b.z != e.dims.z) {  // the threads' indices, once per block shape
        e.dims = b;
        e.n = (int)(b.x * b.y * b.z);
        e.th.resize(e.n);
        for (int i = 0; i < e.n; ++i) {
            e.th[i].lin = i;
            e.th[i].idx = uint3{(unsigned)i % b.x, (unsigned)(i / b.x) % b.y, (unsigned)(i / (b.x * b.y))};
        }
    }
    e.w_at.assign((e.n + 31) / 32, 0);
    e.w_exited.assign((e.n + 31) / 32, 0);
    e.exited = e.at_barrier = 0;
    for (Thread& t : e.th) t.st = TState::Ready;
    if (e.L.cfg->smem) {
        e.dyn = std::malloc(e.L.cfg->smem);
        std::memset(e.dyn, 0xFF, e.L.cfg->smem);
    }
    // The first round: the runner, then (if a thread reached a sync point) the threads after it as fibers.
    const std::vector<int>* ord = &ordering(e, e.n);
    if (!e.runner) e.runner = map_stack();
    e.run_pos = 0;
    e.promoted = false;
    const bctx::fcontext_t rc = jump_in(e, new_fiber(e.runner, runner_entry), e.runner);
    e.cur = nullptr;
    int from = e.n;
    if (!e.faulted && e.run_pos < e.n) {
        e.promoted = true;
        Thread& t = e.th[(*ord)[e.run_pos]];
        t.ctx = rc;
        t.stk = e.runner;
        for (int k = e.run_pos + 1; k < e.n; ++k) {
            Thread& u = e.th[(*ord)[k]];
            u.stk = stack(e, u.lin);
            u.ctx = new_fiber(u.stk, fiber_entry);
        }
        from = e.run_pos + 1;
    }
    bool ok = !e.faulted;
    for (bool ran = true; ok && e.exited < e.n; ran = false, ord = &ordering(e, e.n), from = 0) {
        for (int k = from; k < e.n && !e.faulted; ++k) {
            Thread& t = e.th[(*ord)[k]];
            if (t.st != TState::Ready) continue;
            switch_to_fiber(e, t);
            ran = true;
        }
        if (e.faulted) {
            ok = false;
            break;
        }
        if (e.at_barrier > 0 && e.at_barrier == e.n - e.exited) {  // everyone is at the barrier: release it
            for (Thread& t : e.th)
                if (t.st == TState::AtBarrier) t.st = TState::Ready;
            e.at_barrier = 0;
            continue;
        }
        if (!ran && e.exited < e.n) {
            // Nobody can move: threads at the barrier wait for lanes stuck in a warp intrinsic, or the reverse.
            int warp_waiters = 0;
            const Thread* w = nullptr;
            for (const Thread& t : e.th)
                if (t.st == TState::AtWarp) {
                    ++warp_waiters;
                    if (!w) w = &t;
                }
            fault(cudaErrorLaunchFailure, "%s: deadlock: %d threads wait at __syncthreads at %s:%d while %d wait in %s at %s:%d",
                  where(e, w).c_str(), e.at_barrier, e.bar_file ? e.bar_file : "?", e.bar_line, warp_waiters,
                  w ? kind_name(w->kind) : "-", w ? w->file : "?", w ? w->line : 0);
            ok = false;
            break;
        }
    }
    for (auto& [k, p] : e.statics) std::free(p);
    e.statics.clear();
    std::free(e.dyn);
    e.dyn = nullptr;
#if CUDAEMU_ASAN
    if (!ok) {  // abandoned fibers leave poisoned frames on the stacks
        for (char* s : e.stacks) __asan_unpoison_memory_region(s, kStack);
        __asan_unpoison_memory_region(e.runner, kStack);
    }
#endif
    return ok;
}

void run_grid(const Site& site, const Config& cfg, const std::function<void()>& body) {
    Exec& e = exec();
    e.L = Launch{&site, &cfg, &body};
    e.faulted = false;
    e.rng.seed(settings().seed * 0x9E3779B97F4A7C15ull + stats_mut().launches);
    const dim3 g = cfg.grid;
    const uint64_t nblocks = (uint64_t)g.x * g.y * g.z;
    gridDim = g;
    blockDim = cfg.block;
    std::vector<uint64_t> order(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
    if (settings().order == Order::Reverse) std::reverse(order.begin(), order.end());
    else if (settings().order == Order::Random) std::shuffle(order.begin(), order.end(), e.rng);
    if (settings().verbose)
        std::fprintf(stderr, "cudaemu: %s (%s:%d) grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", site.kernel, site.file,
                     site.line, g.x, g.y, g.z, cfg.block.x, cfg.block.y, cfg.block.z, cfg.smem);
    for (uint64_t i : order) {
        blockIdx = uint3{(unsigned)(i % g.x), (unsigned)(i / g.x % g.y), (unsigned)(i / ((uint64_t)g.x * g.y))};
        if (!run_block(e)) return;
    }
    stats_mut().threads += nblocks * cfg.block.x * cfg.block.y * cfg.block.z;
}

}  // namespace

void launch_erased(const Site& site, const Config& cfg, std::function<void()> body, std::vector<PtrArg> ptrs) {
    std::lock_guard<std::recursive_mutex> lock(runtime_mutex());
    if (sticky_error()) return;
    const dim3 g = cfg.grid, b = cfg.block;
    const uint64_t threads = (uint64_t)b.x * b.y * b.z;
    const char* bad = nullptr;
    if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z) bad = "a dimension is 0";
    else if (b.x > 1024 || b.y > 1024 || b.z > 64) bad = "block dimensions over (1024, 1024, 64)";
    else if (threads > 1024) bad = "more than 1024 threads in a block";
    else if (g.x > 2147483647u || g.y > 65535 || g.z > 65535) bad = "grid dimensions over (2^31-1, 65535, 65535)";
    else if (cfg.smem > kMaxSharedBytes) bad = "dynamic shared memory over 48 KiB";
    if (bad) {
        launch_error(cudaErrorInvalidConfiguration,
                     "invalid launch configuration for kernel %s at %s:%d: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes "
                     "of dynamic shared memory: %s",
                     site.kernel, site.file, site.line, g.x, g.y, g.z, b.x, b.y, b.z, cfg.smem, bad);
        return;
    }
    if (!valid_stream(cfg.stream)) {
        launch_error(cudaErrorInvalidResourceHandle, "kernel %s at %s:%d: invalid stream %p", site.kernel, site.file,
                     site.line, (void*)cfg.stream);
        return;
    }
    std::vector<Range> ranges;
    for (const PtrArg& a : ptrs) {
        if (!a.p) continue;
        if (pointer_space(a.p) == 0) {
            fault(cudaErrorIllegalAddress,
                  "kernel %s at %s:%d: argument %d is %p, which is neither device memory nor pinned host memory",
                  site.kernel, site.file, site.line, a.index, a.p);
            return;
        }
        ranges.push_back(Range{a.p, 1, a.writable});  // the pointer itself: arenas make whole allocations too coarse
    }
    ++stats_mut().launches;
    auto site_copy = std::make_shared<Site>(site);
    auto cfg_copy = std::make_shared<Config>(cfg);
    auto body_ptr = std::make_shared<std::function<void()>>(std::move(body));
    enqueue(cfg.stream, std::string("kernel ") + site.kernel,
            [site_copy, cfg_copy, body_ptr]() { run_grid(*site_copy, *cfg_copy, *body_ptr); }, std::move(ranges),
            site.file, site.line);
}

}  // namespace cudaemu
