#include "engine/core/threadpool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <cblas.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() { std::this_thread::yield(); }
#endif

namespace y5 {

static thread_local bool t_in_pool_job = false;  // inside a parallel_for chunk: a nested one runs serially

ThreadPool::ThreadPool(int threads) {
    if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
    t_in_pool_job = true;
    for (;;) {
        const int64_t b = next_.fetch_add(job_chunk_, std::memory_order_relaxed);
        if (b >= job_n_) break;
        try {
            (*job_fn_)(b, std::min(job_n_, b + job_chunk_));
        } catch (...) {
            std::lock_guard<std::mutex> lk(err_mu_);
            if (!err_) err_ = std::current_exception();
        }
    }
    t_in_pool_job = false;
}

void ThreadPool::worker_loop() {
    uint64_t seen = gen_.load();
    for (;;) {
        // Spin for a new parallel_for a short while, then sleep until one comes, a task is queued, or the pool stops.
        const auto until = std::chrono::steady_clock::now() + kSpin;
        for (int i = 0; gen_.load(std::memory_order_acquire) == seen; ++i) {
            cpu_relax();
            if (i % 64 == 63 && std::chrono::steady_clock::now() > until) break;
        }
        const uint64_t g = gen_.load(std::memory_order_acquire);
        if (g != seen) {
            seen = g;
            if (g % 2 == 1) {  // a job is open: join it unless its caller has closed it meanwhile
                running_.fetch_add(1);
                if (gen_.load() == g) run_chunks();
                running_.fetch_sub(1, std::memory_order_release);
            }
            continue;
        }
        std::packaged_task<void()> task;
        {
            std::unique_lock<std::mutex> lk(mu_);
            ++sleepers_;
            cv_.wait(lk, [&] { return stop_ || !queue_.empty() || gen_.load() != seen; });
            --sleepers_;
            if (gen_.load() != seen) continue;
            if (stop_ && queue_.empty()) return;
            task = std::move(queue_.front());
            queue_.pop_front();
        }
        task();
    }
}

std::future<void> ThreadPool::submit(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    std::future<void> f = task.get_future();
    {
        std::lock_guard<std::mutex> lk(mu_);
        queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return f;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
    if (n <= 0) return;
    const int64_t parts = std::min<int64_t>(size() + 1, std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
    const int64_t chunk = (n + parts - 1) / parts;
    std::unique_lock<std::mutex> job(job_mu_, std::defer_lock);
    if (parts <= 1 || t_in_pool_job || !job.try_lock()) {  // serially, in the same chunks
        for (int64_t b = 0; b < n; b += chunk) fn(b, std::min(n, b + chunk));
        return;
    }
    // gen_ is even while no job is open, odd while one is. A worker that saw the last job's odd gen_ late may
    // still be inside it (finding every chunk claimed): wait for it before changing the job's fields.
    auto wait_workers = [this] {
        for (int i = 0; running_.load(std::memory_order_acquire) != 0; ++i)
            if (i < 4096) cpu_relax();
            else std::this_thread::yield();
    };
    wait_workers();
    job_fn_ = &fn, job_n_ = n, job_chunk_ = chunk, err_ = nullptr;
    next_.store(0, std::memory_order_relaxed);
    gen_.fetch_add(1);  // opens the job (seq_cst: after its fields, before the sleepers check below)
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (sleepers_ > 0) cv_.notify_all();
    }
    run_chunks();
    wait_workers();  // every chunk is claimed; the workers still running one finish it
    gen_.fetch_add(1);  // closes it: a worker joining now sees a newer gen_ and leaves the fields alone
    if (err_) std::rethrow_exception(err_);
}

// OpenBLAS is set to one thread because the ops call it per image from several threads at once, and its own threads
// spin (sched_yield) on these small GEMMs: a third of the CPU time was lost that way.
struct CpuPool {
    int threads;
    ThreadPool* pool;  // threads − 1 workers, or null for one thread; lives as long as the program
};

static const CpuPool& cpu_pool() {
    static const CpuPool p = [] {
        const char* e = std::getenv("Y5_THREADS");
        const int n = std::max(1, e ? std::atoi(e) : (int)std::thread::hardware_concurrency());
        openblas_set_num_threads(1);
        return CpuPool{n, n > 1 ? new ThreadPool(n - 1) : nullptr};
    }();
    return p;
}

int cpu_op_threads() { return cpu_pool().threads; }

void par(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk) {
    const CpuPool& p = cpu_pool();
    if (p.pool) p.pool->parallel_for(n, fn, min_chunk);
    else if (n > 0) fn(0, n);
}

void par_zero(void* p, int64_t bytes) {
    char* b = static_cast<char*>(p);
    par(bytes, [&](int64_t i0, int64_t i1) { std::memset(b + i0, 0, i1 - i0); }, 4 * kElemChunk);
}

}  // namespace y5
