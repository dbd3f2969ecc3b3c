/*
 * cudaemu's host side: errors, the allocation table (device and pinned memory), copies and memsets,
 * streams and events. Work is queued per stream and runs only when the host synchronises with it, in
 * CUDA's order: a stream runs in FIFO order; the legacy stream (0) waits for the blocking streams' earlier
 * work and they wait for its; non-blocking streams order only through events. Deferred execution is what
 * lets races show: a copy on one stream that reads what an unsynchronised kernel on another stream writes
 * sees stale bytes here, and the race check below names it.
 * Pinned buffers that an asynchronous copy will read or write are kept inaccessible (mprotect) until the
 * copy has run, so a host access before the stream is synchronised stops with a message naming the copy.
 */
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "emu.h"
#include "internal.h"

namespace cudaemu {

// ---------------------------------------------------------------------------------------------------- state
void host_wait(const char* call, const char* file, int line);

namespace {

struct Alloc {
    char* base;
    size_t bytes;
    bool pinned;
    std::string site;  // file:line of the allocating call
    int pending = 0;   // queued copies that touch this pinned buffer (it is PROT_NONE while > 0)
};

struct Stream;
struct Op {
    uint64_t seq;
    Stream* stream;
    std::string what, site;
    std::function<void()> fn;
    std::vector<Range> ranges;
    std::vector<std::shared_ptr<Op>> deps;  // besides the ops before it in its own stream
    std::vector<Alloc*> pinned;             // pinned buffers it touches
    bool done = false, running = false;
    std::chrono::steady_clock::time_point t;  // when it ran (event markers)
};

struct Stream {
    unsigned flags;
    bool legacy;
    std::deque<std::shared_ptr<Op>> queue;  // not yet run, in order
};

struct Event {
    std::shared_ptr<Op> marker;
};

// A captured piece of work (what push() would have queued), and a graph: the work in capture order. An
// instantiated graph (cudaGraphExec_t) is a copy.
struct Rec {
    std::string what, site;
    std::function<void()> fn;
    std::vector<Range> ranges;
};
struct Graph {
    std::vector<Rec> ops;
};

struct State {
    std::recursive_mutex mu;
    std::map<uintptr_t, Alloc> allocs;  // by base address: device and pinned
    size_t device_bytes = 0;
    Stream legacy{0, true, {}};
    std::set<Stream*> streams;
    std::set<Event*> events;
    uint64_t seq = 0;
    cudaError_t sticky = cudaSuccess, last = cudaSuccess;
    Settings settings;
    Stats stats{0, 0, 0, 0};
    // The stream being captured (one at a time), where the capture began, and what it recorded so far.
    Stream* capturing = nullptr;
    cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
    std::thread::id capture_thread;
    std::string capture_site;
    Graph capture;
    std::set<Graph*> graphs, execs;
};

State& S() {
    static State* s = new State;  // never destroyed: destructors of y5's statics call cudaFree at exit
    return *s;
}

std::string site_str(const char* file, int line) {
    const char* slash = file ? std::strrchr(file, '/') : nullptr;
    return std::string(slash ? slash + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}


cudaError_t set_last(cudaError_t e) {
    if (e != cudaSuccess && S().last == cudaSuccess) S().last = e;
    return e;
}

// Whether a call that is unsafe during a capture (a host wait, an allocation) is refused from this thread: from any
// thread under cudaStreamCaptureModeGlobal, from the capturing one under ThreadLocal, from none under Relaxed.
bool capture_refuses() {
    if (!S().capturing || S().capture_mode == cudaStreamCaptureModeRelaxed) return false;
    return S().capture_mode == cudaStreamCaptureModeGlobal || std::this_thread::get_id() == S().capture_thread;
}

// A call a stream capture does not allow, made while one is active: a fault naming the call and the capture.
cudaError_t capture_fault(const char* call, const char* file, int line, const char* why) {
    return set_last(fault(cudaErrorStreamCaptureUnsupported,
                          "%s at %s while the stream capture begun at %s is active: %s", call,
                          site_str(file, line).c_str(), S().capture_site.c_str(), why));
}

// Every runtime call starts here: after a fault the sticky error is all it returns.
#define CUDAEMU_ENTER()                                        \
    std::lock_guard<std::recursive_mutex> lock_(S().mu);       \
    if (S().sticky != cudaSuccess) return S().sticky

Alloc* find_alloc(const void* p) {
    auto& m = S().allocs;
    auto it = m.upper_bound(reinterpret_cast<uintptr_t>(p));
    if (it == m.begin()) return nullptr;
    --it;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return a < it->first + it->second.bytes ? &it->second : nullptr;
}

// Nearest allocation below p, for a fault message.
std::string nearest(const void* p) {
    auto& m = S().allocs;
    auto it = m.upper_bound(reinterpret_cast<uintptr_t>(p));
    if (it == m.begin()) return "no allocation below it";
    --it;
    char b[200];
    std::snprintf(b, sizeof b, "nearest: %s allocation %p of %zu bytes from %s, %zu bytes past its start",
                  it->second.pinned ? "pinned" : "device", (void*)it->second.base, it->second.bytes,
                  it->second.site.c_str(), (size_t)(reinterpret_cast<uintptr_t>(p) - it->first));
    return b;
}

Settings read_settings() {
    Settings s;
    const char* o = std::getenv("CUDAEMU_ORDER");
    if (o && *o) {
        std::string v(o);
        if (v == "forward") s.order = Order::Forward;
        else if (v == "reverse") s.order = Order::Reverse;
        else if (v.rfind("random", 0) == 0) {
            s.order = Order::Random;
            if (v.size() > 7 && v[6] == ':') s.seed = std::strtoull(v.c_str() + 7, nullptr, 10);
        } else {
            std::fprintf(stderr, "cudaemu: CUDAEMU_ORDER=%s is not forward, reverse or random[:seed]\n", o);
            std::exit(2);
        }
    }
    if (const char* m = std::getenv("CUDAEMU_MEMORY_MB")) s.memory = (size_t)std::strtoull(m, nullptr, 10) << 20;
    if (const char* v = std::getenv("CUDAEMU_VERBOSE")) s.verbose = *v && *v != '0';
    if (const char* v = std::getenv("CUDAEMU_SYNC")) s.sync_every = *v && *v != '0';
    return s;
}

// ---------------------------------------------------------------------------------------------------- pinned guard
// A pinned buffer with queued copies is PROT_NONE; a host access lands here.
struct sigaction g_prev_segv;

void segv_handler(int sig, siginfo_t* info, void* uctx) {
    Alloc* a = nullptr;
    for (auto& [base, al] : S().allocs)  // no lock: the faulting thread may hold it; the table is not changing
        if (al.pinned && al.pending > 0 && (char*)info->si_addr >= al.base && (char*)info->si_addr < al.base + al.bytes)
            a = &al;
    if (a) {
        char b[512];
        int n = std::snprintf(b, sizeof b,
                              "cudaemu: the host accessed pinned buffer %p (%zu bytes, allocated at %s) at %p while "
                              "an asynchronous copy into or out of it was still queued: synchronise the stream first\n",
                              (void*)a->base, a->bytes, a->site.c_str(), info->si_addr);
        if (write(2, b, (size_t)n) < 0) {}
        signal(SIGABRT, SIG_DFL);
        abort();
    }
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) return g_prev_segv.sa_sigaction(sig, info, uctx);
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        return g_prev_segv.sa_handler(sig);
    }
    sigaction(SIGSEGV, &g_prev_segv, nullptr);  // returning re-runs the access, which now takes the default path
}

void install_segv_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    struct sigaction sa {};
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
}

void protect(Alloc* a, bool on) {
    size_t len = (a->bytes + 4095) & ~size_t(4095);
    mprotect(a->base, len, on ? PROT_NONE : PROT_READ | PROT_WRITE);
}

void pin_pending(Alloc* a) {
    install_segv_handler();
    if (a->pending++ == 0) protect(a, true);
}
void unpin_pending(Alloc* a) {
    if (--a->pending == 0) protect(a, false);
}

// ---------------------------------------------------------------------------------------------------- queues
Stream* stream_of(cudaStream_t s) {
    if (s == nullptr || s == cudaStreamLegacy) return &S().legacy;
    Stream* st = reinterpret_cast<Stream*>(s);
    return S().streams.count(st) ? st : nullptr;
}

bool overlap(const Range& a, const Range& b) {
    if (!a.write && !b.write) return false;
    const char *a0 = (const char*)a.p, *b0 = (const char*)b.p;
    return a0 < b0 + std::max<size_t>(b.bytes, 1) && b0 < a0 + std::max<size_t>(a.bytes, 1);
}

// True when pending op y is ordered after op x (x is about to run): some chain of y's dependencies and of the ops
// before y in its own stream reaches x's stream at or after x.
bool ordered_after(const Op& y, const Op& x, std::set<const Op*>& seen) {
    std::vector<const Op*> edges;
    for (auto& d : y.deps) edges.push_back(d.get());
    auto& q = y.stream->queue;
    for (size_t i = 0; i < q.size() && q[i].get() != &y; ++i) edges.push_back(q[i].get());
    for (const Op* t : edges) {
        if (t->done) continue;  // it ran before x runs, so it cannot order y after x
        if (t->stream == x.stream && t->seq >= x.seq) return true;
        if (seen.insert(t).second && ordered_after(*t, x, seen)) return true;
    }
    return false;
}

// An op about to run against every op still pending on another stream that nothing orders with it: one queued
// earlier (its own dependencies have all run, so that one is not among them), or one queued later that does not
// wait for it. Touching the same bytes, one of them writing, is a race.
void race_check(const Op& op) {
    auto check = [&](Stream* st) {
        if (st == op.stream) return;
        for (auto& other : st->queue) {
            if (other->done || other->running) continue;
            bool hit = false;
            const Range *ra = nullptr, *rb = nullptr;
            for (const Range& a : op.ranges)
                for (const Range& b : other->ranges)
                    if (!hit && overlap(a, b)) hit = true, ra = &a, rb = &b;
            if (!hit) continue;
            std::set<const Op*> seen;
            if (other->seq > op.seq && ordered_after(*other, op, seen)) continue;
            fault(cudaErrorIllegalState,
                  "race: %s (%s) touches %p, which %s (%s), queued %s it on another stream, %s; nothing orders the "
                  "two streams (synchronise, or record and wait on an event)",
                  op.what.c_str(), op.site.c_str(), ra->p, other->what.c_str(), other->site.c_str(),
                  other->seq < op.seq ? "before" : "after", rb->write ? "writes" : "reads");
            return;
        }
    };
    check(&S().legacy);
    for (Stream* st : S().streams) check(st);
}

void run_op(const std::shared_ptr<Op>& op);

// Runs everything queued on op's stream up to and including op, after op's cross-stream dependencies.
void run_through(const std::shared_ptr<Op>& op) {
    if (op->done || op->running) return;
    Stream* st = op->stream;
    while (!op->done && S().sticky == cudaSuccess) {
        if (st->queue.empty()) break;
        std::shared_ptr<Op> front = st->queue.front();
        run_op(front);
    }
}

void run_op(const std::shared_ptr<Op>& op) {
    if (op->done || op->running) return;
    op->running = true;
    for (auto& d : op->deps) run_through(d);
    if (S().sticky == cudaSuccess) race_check(*op);
    for (Alloc* a : op->pinned) protect(a, false);
    if (S().sticky == cudaSuccess && op->fn) op->fn();
    for (Alloc* a : op->pinned) {
        if (a->pending > 1) protect(a, true);
        unpin_pending(a);
    }
    op->t = std::chrono::steady_clock::now();
    op->done = true;
    op->running = false;
    auto& q = op->stream->queue;
    q.erase(std::find(q.begin(), q.end(), op));
}

void drain(Stream* st) {
    while (!st->queue.empty()) run_op(st->queue.front());
}

void drain_all() {
    // In queue order across streams: the op with the lowest sequence number first.
    for (;;) {
        Stream* best = S().legacy.queue.empty() ? nullptr : &S().legacy;
        for (Stream* st : S().streams)
            if (!st->queue.empty() && (!best || st->queue.front()->seq < best->queue.front()->seq)) best = st;
        if (!best) return;
        run_op(best->queue.front());
    }
}

// Queues work on st; on a capturing stream it is recorded instead (and null returned).
std::shared_ptr<Op> push_at(Stream* st, std::string what, std::function<void()> fn, std::vector<Range> ranges,
                            std::string site) {
    if (S().capturing == st) {
        S().capture.ops.push_back(Rec{std::move(what), std::move(site), std::move(fn), std::move(ranges)});
        return nullptr;
    }
    auto op = std::make_shared<Op>();
    op->seq = ++S().seq;
    op->stream = st;
    op->what = std::move(what);
    op->site = std::move(site);
    op->fn = std::move(fn);
    op->ranges = std::move(ranges);
    // The legacy stream and the blocking streams wait for each other's earlier work.
    if (st->legacy) {
        for (Stream* o : S().streams)
            if (!(o->flags & cudaStreamNonBlocking) && !o->queue.empty()) op->deps.push_back(o->queue.back());
    } else if (!(st->flags & cudaStreamNonBlocking) && !S().legacy.queue.empty()) {
        op->deps.push_back(S().legacy.queue.back());
    }
    for (const Range& r : op->ranges)
        if (Alloc* a = find_alloc(r.p))
            if (a->pinned && std::find(op->pinned.begin(), op->pinned.end(), a) == op->pinned.end()) {
                op->pinned.push_back(a);
                pin_pending(a);
            }
    st->queue.push_back(op);
    return op;
}
std::shared_ptr<Op> push(Stream* st, std::string what, std::function<void()> fn, std::vector<Range> ranges,
                         const char* file, int line) {
    return push_at(st, std::move(what), std::move(fn), std::move(ranges), site_str(file, line));
}

// ---------------------------------------------------------------------------------------------------- copies
enum class Where { Host, Pinned, Device };
Where where(const void* p) {
    Alloc* a = find_alloc(p);
    return !a ? Where::Host : (a->pinned ? Where::Pinned : Where::Device);
}

// Checks one side of a copy: device memory must lie inside one allocation; host memory must not be device memory.
bool check_side(const void* p, size_t bytes, bool device, const char* side, const char* call, const char* file,
                int line) {
    if (device) {
        char what[96];
        std::snprintf(what, sizeof what, "%s's %s", call, side);
        return check_device_range(p, bytes, what, file, line);
    }
    Where w = where(p);
    if (w == Where::Device) {
        fault(cudaErrorInvalidValue, "%s at %s: the %s %p is device memory, but the copy kind says host (wrong copy direction)",
              call, site_str(file, line).c_str(), side, p);
        return false;
    }
    if (w == Where::Pinned) {
        Alloc* a = find_alloc(p);
        if ((const char*)p + bytes > a->base + a->bytes) {
            fault(cudaErrorInvalidValue, "%s at %s: the %s range %p + %zu runs past its pinned allocation (%zu bytes at %p)",
                  call, site_str(file, line).c_str(), side, p, bytes, a->bytes, (void*)a->base);
            return false;
        }
    }
    return true;
}

// A 2-D (or, with height 1, plain) copy of `height` rows of `width` bytes. sync: the host waits for it;
// otherwise it is queued on s (a pageable source is staged now, a pageable destination makes it synchronous,
// as CUDA does).
cudaError_t copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                   cudaMemcpyKind kind, cudaStream_t s, bool sync, const char* call, const char* file, int line) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st) return set_last(fault(cudaErrorInvalidResourceHandle, "%s at %s: invalid stream %p", call, site_str(file, line).c_str(), (void*)s));
    if (height == 0 || width == 0) return cudaSuccess;
    if (height > 1 && (dpitch < width || spitch < width))
        return set_last(fault(cudaErrorInvalidValue, "%s at %s: pitch smaller than the row width", call, site_str(file, line).c_str()));
    if (kind == cudaMemcpyDefault) {
        bool dd = where(dst) == Where::Device, sd = where(src) == Where::Device;
        kind = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice) : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    }
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice)
        return set_last(fault(cudaErrorInvalidMemcpyDirection, "%s at %s: invalid copy kind %d", call, site_str(file, line).c_str(), (int)kind));
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    const size_t dspan = dpitch * (height - 1) + width, sspan = spitch * (height - 1) + width;
    if (!check_side(dst, dspan, dst_dev, "destination", call, file, line) ||
        !check_side(src, sspan, src_dev, "source", call, file, line))
        return S().sticky;
    const bool src_pageable = !src_dev && where(src) == Where::Host;
    const bool dst_pageable = !dst_dev && where(dst) == Where::Host;
    if (S().capturing == st && (sync || src_pageable || dst_pageable))
        return capture_fault(call, file, line, sync ? "a synchronous copy" : "a copy from or to pageable host memory");
    std::shared_ptr<std::vector<char>> staged;
    if (src_pageable) {  // staged at the call, so the caller may reuse its buffer at once
        staged = std::make_shared<std::vector<char>>(sspan);
        std::memcpy(staged->data(), src, sspan);
    }
    const char* from = staged ? staged->data() : static_cast<const char*>(src);
    char* to = static_cast<char*>(dst);
    auto fn = [=]() {  // holds `staged` until the copy has run
        (void)staged;
        for (size_t r = 0; r < height; ++r) std::memmove(to + r * dpitch, from + r * spitch, width);
    };
    char what[64];
    std::snprintf(what, sizeof what, "%s of %zu bytes", call, width * height);
    std::vector<Range> ranges{{dst, dspan, true}};
    if (!src_pageable) ranges.push_back({src, sspan, false});
    auto op = push(st, what, fn, ranges, file, line);
    if (sync || dst_pageable || (src_pageable && !dst_dev)) {
        host_wait(call, file, line);
        run_through(op);
    }
    return S().sticky;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------- internal API
Settings& settings() {
    static bool read = false;
    if (!read) {
        S().settings = read_settings();
        read = true;
    }
    return S().settings;
}

// A call that makes the host wait for the device: counted (Stats::host_waits), and named under CUDAEMU_VERBOSE.
void host_wait(const char* call, const char* file, int line) {
    if (capture_refuses()) capture_fault(call, file, line, "the host would wait for the device");
    S().stats.host_waits++;
    if (settings().verbose) std::fprintf(stderr, "cudaemu: the host waits: %s at %s\n", call, site_str(file, line).c_str());
}
Order order() { return settings().order; }
const char* order_name() {
    switch (settings().order) {
        case Order::Forward: return "forward";
        case Order::Reverse: return "reverse";
        default: return "random";
    }
}
Stats stats() { return S().stats; }
Stats& stats_mut() { return S().stats; }
std::recursive_mutex& runtime_mutex() { return S().mu; }
bool sticky_error() { return S().sticky != cudaSuccess; }

// Prints "cudaemu: <message>" as one line.
static void report(const char* fmt, va_list ap) {
    char b[2048];
    std::vsnprintf(b, sizeof b, fmt, ap);
    std::fprintf(stderr, "cudaemu: %s\n", b);
}

cudaError_t fault(cudaError_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    report(fmt, ap);
    va_end(ap);
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    if (S().sticky == cudaSuccess) S().sticky = code;
    return code;
}

cudaError_t launch_error(cudaError_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    report(fmt, ap);
    va_end(ap);
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    return set_last(code);
}

bool check_device_range(const void* p, size_t bytes, const char* what, const char* file, int line) {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    Alloc* a = find_alloc(p);
    if (!a && bytes == 0 && p) a = find_alloc((const char*)p - 1);  // one past the end
    if (!a || a->pinned != false) {
        if (a && a->pinned && bytes == 0) return true;
        fault(cudaErrorIllegalAddress, "%s at %s: %p is not device memory (%s)", what, site_str(file, line).c_str(), p,
              nearest(p).c_str());
        return false;
    }
    if ((const char*)p + bytes > a->base + a->bytes) {
        fault(cudaErrorIllegalAddress, "%s at %s: %zu bytes at %p run %zu bytes past the end of the allocation of %zu bytes made at %s",
              what, site_str(file, line).c_str(), bytes, p, (size_t)((const char*)p + bytes - (a->base + a->bytes)),
              a->bytes, a->site.c_str());
        return false;
    }
    return true;
}

int pointer_space(const void* p) {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    Alloc* a = find_alloc(p);
    if (!a && p) a = find_alloc((const char*)p - 1);
    return !a ? 0 : (a->pinned ? 1 : 2);
}

void enqueue(cudaStream_t s, std::string what, std::function<void()> fn, std::vector<Range> ranges, const char* file,
             int line) {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    if (S().sticky != cudaSuccess) return;
    Stream* st = stream_of(s);
    if (!st) {
        set_last(fault(cudaErrorInvalidResourceHandle, "%s at %s: invalid stream %p", what.c_str(), site_str(file, line).c_str(), (void*)s));
        return;
    }
    auto op = push(st, std::move(what), std::move(fn), std::move(ranges), file, line);
    if (op && settings().sync_every) run_through(op);
}

bool valid_stream(cudaStream_t s) {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    return stream_of(s) != nullptr;
}

void reset_for_tests() {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    for (auto& [b, a] : S().allocs) {
        if (a.pinned) {
            protect(&a, false);
            munmap(a.base, (a.bytes + 4095) & ~size_t(4095));
        } else {
            std::free(a.base);
        }
    }
    S().allocs.clear();
    S().device_bytes = 0;
    S().legacy.queue.clear();
    for (Stream* st : S().streams) delete st;
    S().streams.clear();
    for (Event* e : S().events) delete e;
    S().events.clear();
    S().sticky = S().last = cudaSuccess;
    for (Graph* g : S().graphs) delete g;
    for (Graph* g : S().execs) delete g;
    S().graphs.clear(), S().execs.clear();
    S().capturing = nullptr, S().capture.ops.clear();
    S().stats = Stats{0, 0, 0, 0};  // the launch count seeds the random order: a reset makes a schedule reproducible
    S().settings = read_settings();
}

}  // namespace cudaemu

using namespace cudaemu;

// ---------------------------------------------------------------------------------------------------- errors
const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define N(x) case x: return #x;
        N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation) N(cudaErrorInitializationError)
        N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidDevicePointer) N(cudaErrorInvalidMemcpyDirection)
        N(cudaErrorNoDevice) N(cudaErrorInvalidDevice) N(cudaErrorInvalidResourceHandle) N(cudaErrorIllegalState)
        N(cudaErrorNotReady) N(cudaErrorIllegalAddress) N(cudaErrorLaunchOutOfResources) N(cudaErrorAssert)
        N(cudaErrorIllegalInstruction) N(cudaErrorLaunchFailure) N(cudaErrorStreamCaptureUnsupported)
        N(cudaErrorStreamCaptureInvalidated) N(cudaErrorStreamCaptureUnmatched) N(cudaErrorUnknown)
#undef N
    }
    return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorIllegalState: return "operation not permitted in the current state (emulator: a race between streams)";
        case cudaErrorNotReady: return "device not ready";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
        case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        default: return cudaGetErrorName(e);
    }
}
cudaError_t cudaGetLastError() {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    if (S().sticky != cudaSuccess) return S().sticky;
    cudaError_t e = S().last;
    S().last = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError() {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    return S().sticky != cudaSuccess ? S().sticky : S().last;
}

// ---------------------------------------------------------------------------------------------------- device
cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    CUDAEMU_ENTER();
    return d == 0 ? cudaSuccess : set_last(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
    if (d != 0) return set_last(cudaErrorInvalidDevice);
    std::memset(p, 0, sizeof *p);
    std::snprintf(p->name, sizeof p->name, "cudaemu (emulated on the CPU, %s thread order)", order_name());
    p->totalGlobalMem = settings().memory;
    p->sharedMemPerBlock = kMaxSharedBytes;
    p->sharedMemPerBlockOptin = kMaxSharedBytes;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->major = 7;
    p->minor = 5;
    p->multiProcessorCount = 1;
    p->maxThreadsPerMultiProcessor = 1024;
    p->l2CacheSize = 4 << 20;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(const char* file, int line) {
    CUDAEMU_ENTER();
    host_wait("cudaDeviceSynchronize", file, line);
    drain_all();
    return S().sticky;
}
cudaError_t cudaDeviceReset() {
    reset_for_tests();
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
    CUDAEMU_ENTER();
    *total_b = settings().memory;
    *free_b = settings().memory - std::min(settings().memory, S().device_bytes);
    return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------- memory
cudaError_t cudaMalloc(void** p, size_t bytes, const char* file, int line) {
    CUDAEMU_ENTER();
    *p = nullptr;
    if (capture_refuses()) return capture_fault("cudaMalloc", file, line, "an allocation");
    if (bytes == 0) return cudaSuccess;
    if (S().device_bytes + bytes > settings().memory) return set_last(cudaErrorMemoryAllocation);
    void* m = nullptr;
    // Exactly `bytes` from the ordinary allocator, so AddressSanitizer sees a kernel's access past the end.
    if (posix_memalign(&m, 256, bytes) != 0) return set_last(cudaErrorMemoryAllocation);
    std::memset(m, 0xFF, bytes);  // poison: NaN in every float, so reading unwritten memory shows
    S().allocs[reinterpret_cast<uintptr_t>(m)] = Alloc{static_cast<char*>(m), bytes, false, site_str(file, line)};
    S().device_bytes += bytes;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFree(void* p, const char* file, int line) {
    CUDAEMU_ENTER();
    if (!p) return cudaSuccess;
    auto it = S().allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == S().allocs.end() || it->second.pinned)
        return set_last(fault(cudaErrorInvalidDevicePointer, "cudaFree at %s: %p is not the start of a device allocation (%s)",
                              site_str(file, line).c_str(), p, nearest(p).c_str()));
    host_wait("cudaFree", file, line);
    drain_all();  // cudaFree synchronises the device
    S().device_bytes -= it->second.bytes;
    std::free(it->second.base);
    S().allocs.erase(it);
    return S().sticky;
}
cudaError_t cudaMallocHost(void** p, size_t bytes, const char* file, int line) {
    CUDAEMU_ENTER();
    *p = nullptr;
    if (capture_refuses()) return capture_fault("cudaMallocHost", file, line, "an allocation");
    if (bytes == 0) return cudaSuccess;
    // Whole pages of their own, so a pending copy can make them inaccessible.
    size_t len = (bytes + 4095) & ~size_t(4095);
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return set_last(cudaErrorMemoryAllocation);
    std::memset(m, 0xFF, bytes);
    S().allocs[reinterpret_cast<uintptr_t>(m)] = Alloc{static_cast<char*>(m), bytes, true, site_str(file, line)};
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned, const char* file, int line) {
    return cudaMallocHost(p, bytes, file, line);
}
cudaError_t cudaFreeHost(void* p, const char* file, int line) {
    CUDAEMU_ENTER();
    if (!p) return cudaSuccess;
    auto it = S().allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == S().allocs.end() || !it->second.pinned)
        return set_last(fault(cudaErrorInvalidValue, "cudaFreeHost at %s: %p is not the start of a pinned allocation (%s)",
                              site_str(file, line).c_str(), p, nearest(p).c_str()));
    host_wait("cudaFreeHost", file, line);
    drain_all();
    Alloc& a = it->second;
    munmap(a.base, (a.bytes + 4095) & ~size_t(4095));
    S().allocs.erase(it);
    return S().sticky;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* file, int line) {
    return copy2d(dst, bytes, src, bytes, bytes, 1, kind, 0, true, "cudaMemcpy", file, line);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s,
                            const char* file, int line) {
    return copy2d(dst, bytes, src, bytes, bytes, 1, kind, s, false, "cudaMemcpyAsync", file, line);
}
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind kind, const char* file, int line) {
    return copy2d(dst, dpitch, src, spitch, width, height, kind, 0, true, "cudaMemcpy2D", file, line);
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s, const char* file, int line) {
    return copy2d(dst, dpitch, src, spitch, width, height, kind, s, false, "cudaMemcpy2DAsync", file, line);
}

static cudaError_t memset_impl(void* p, int value, size_t bytes, cudaStream_t s, bool sync, const char* call,
                               const char* file, int line) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st) return set_last(fault(cudaErrorInvalidResourceHandle, "%s at %s: invalid stream %p", call, site_str(file, line).c_str(), (void*)s));
    if (bytes == 0) return cudaSuccess;
    if (!check_device_range(p, bytes, call, file, line)) return S().sticky;
    if (sync && capture_refuses()) return capture_fault(call, file, line, "a synchronous memset");
    char what[64];
    std::snprintf(what, sizeof what, "%s of %zu bytes", call, bytes);
    auto op = push(st, what, [=]() { std::memset(p, value, bytes); }, {{p, bytes, true}}, file, line);
    if (sync) {
        host_wait(call, file, line);
        run_through(op);
    }
    return S().sticky;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes, const char* file, int line) {
    return memset_impl(p, value, bytes, 0, true, "cudaMemset", file, line);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s, const char* file, int line) {
    return memset_impl(p, value, bytes, s, false, "cudaMemsetAsync", file, line);
}

// ---------------------------------------------------------------------------------------------------- streams
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
    CUDAEMU_ENTER();
    Stream* st = new Stream{flags, false, {}};
    S().streams.insert(st);
    *s = reinterpret_cast<cudaStream_t>(st);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st || st->legacy) return set_last(cudaErrorInvalidResourceHandle);
    host_wait("cudaStreamDestroy", "?", 0);
    drain(st);  // CUDA lets queued work finish first
    S().streams.erase(st);
    delete st;
    return S().sticky;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s, const char* file, int line) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st)
        return set_last(fault(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize at %s: invalid stream %p",
                              site_str(file, line).c_str(), (void*)s));
    if (S().capturing == st) return capture_fault("cudaStreamSynchronize", file, line, "the capturing stream");
    if (st->legacy) {  // the legacy stream also waits for the blocking streams
        for (Stream* o : S().streams)
            if (!(o->flags & cudaStreamNonBlocking)) drain(o);
    }
    if (!st->queue.empty()) host_wait("cudaStreamSynchronize", file, line);  // else no wait
    drain(st);
    return S().sticky;
}
// The emulated device makes progress only when the host waits, so a query runs the stream's work (a polling loop
// would otherwise never end).
cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    Event* ev = reinterpret_cast<Event*>(e);
    if (!st || !S().events.count(ev)) return set_last(cudaErrorInvalidResourceHandle);
    if (S().capturing == st)
        return capture_fault("cudaStreamWaitEvent", "?", 0, "events inside a capture are not emulated");
    auto op = push(st, "cudaStreamWaitEvent", nullptr, {}, "?", 0);
    if (ev->marker && !ev->marker->done) op->deps.push_back(ev->marker);
    return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------- events
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
    CUDAEMU_ENTER();
    Event* ev = new Event;
    S().events.insert(ev);
    *e = reinterpret_cast<cudaEvent_t>(ev);
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    CUDAEMU_ENTER();
    Event* ev = reinterpret_cast<Event*>(e);
    if (!S().events.erase(ev)) return set_last(cudaErrorInvalidResourceHandle);
    delete ev;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    CUDAEMU_ENTER();
    Event* ev = reinterpret_cast<Event*>(e);
    Stream* st = stream_of(s);
    if (!st || !S().events.count(ev)) return set_last(cudaErrorInvalidResourceHandle);
    if (S().capturing == st) return capture_fault("cudaEventRecord", "?", 0, "events inside a capture are not emulated");
    ev->marker = push(st, "cudaEventRecord", nullptr, {}, "?", 0);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e, const char* file, int line) {
    CUDAEMU_ENTER();
    Event* ev = reinterpret_cast<Event*>(e);
    if (!S().events.count(ev)) return set_last(cudaErrorInvalidResourceHandle);
    if (ev->marker && !ev->marker->done) host_wait("cudaEventSynchronize", file, line);  // else no wait
    if (ev->marker) run_through(ev->marker);
    return S().sticky;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    CUDAEMU_ENTER();
    Event *a = reinterpret_cast<Event*>(start), *b = reinterpret_cast<Event*>(end);
    if (!S().events.count(a) || !S().events.count(b) || !a->marker || !b->marker)
        return set_last(cudaErrorInvalidResourceHandle);
    if (!a->marker->done || !b->marker->done) return set_last(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(b->marker->t - a->marker->t).count();
    return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------------- graphs
bool cudaemu::capturing() {
    std::lock_guard<std::recursive_mutex> lock(S().mu);
    return S().capturing != nullptr;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode, const char* file, int line) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st) return set_last(cudaErrorInvalidResourceHandle);
    if (S().capturing) return capture_fault("cudaStreamBeginCapture", file, line, "one capture at a time is emulated");
    if (st->legacy)
        return set_last(fault(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture at %s: the legacy stream "
                              "cannot be captured", site_str(file, line).c_str()));
    S().capturing = st;
    S().capture_mode = mode;
    S().capture_thread = std::this_thread::get_id();
    S().capture_site = site_str(file, line);
    S().capture.ops.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st || !graph) return set_last(cudaErrorInvalidValue);
    if (S().capturing != st)
        return set_last(fault(cudaErrorStreamCaptureUnmatched, "cudaStreamEndCapture: stream %p is not capturing",
                              (void*)s));
    Graph* g = new Graph{std::move(S().capture.ops)};
    S().capturing = nullptr, S().capture.ops.clear();
    S().graphs.insert(g);
    *graph = reinterpret_cast<cudaGraph_t>(g);
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
    CUDAEMU_ENTER();
    Stream* st = stream_of(s);
    if (!st || !status) return set_last(cudaErrorInvalidValue);
    *status = S().capturing == st ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
    CUDAEMU_ENTER();
    Graph* g = reinterpret_cast<Graph*>(graph);
    if (!exec || !S().graphs.count(g)) return set_last(cudaErrorInvalidValue);
    Graph* e = new Graph(*g);
    S().execs.insert(e);
    *exec = reinterpret_cast<cudaGraphExec_t>(e);
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    CUDAEMU_ENTER();
    Graph* e = reinterpret_cast<Graph*>(exec);
    Stream* st = stream_of(s);
    if (!st || !S().execs.count(e)) return set_last(cudaErrorInvalidResourceHandle);
    if (S().capturing == st) return capture_fault("cudaGraphLaunch", "?", 0, "graphs inside a capture are not emulated");
    S().stats.graph_launches++;
    std::shared_ptr<Op> last;
    for (const Rec& r : e->ops) last = push_at(st, r.what, r.fn, r.ranges, r.site);
    if (last && settings().sync_every) run_through(last);
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    CUDAEMU_ENTER();
    Graph* g = reinterpret_cast<Graph*>(graph);
    if (!S().graphs.erase(g)) return set_last(cudaErrorInvalidValue);
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    CUDAEMU_ENTER();
    Graph* e = reinterpret_cast<Graph*>(exec);
    if (!S().execs.erase(e)) return set_last(cudaErrorInvalidValue);
    delete e;
    return cudaSuccess;
}
