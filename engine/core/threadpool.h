/*
 * A fixed pool of worker threads for CPU ops and the data loader.
 *   parallel_for(n, fn): calls fn(begin, end) over disjoint chunks covering [0, n), on the workers and
 *   the calling thread, and returns when all are done. Each index is owned by exactly one chunk and the chunks
 *   depend only on n and the pool's size, so results do not depend on which thread ran which chunk as long as fn
 *   writes only its own range.
 *   submit(fn): runs fn on a worker; the returned future reports completion (and rethrows errors).
 * An exception thrown inside parallel_for is rethrown in the caller after all chunks finish.
 * parallel_for allocates nothing and wakes nobody when the workers are awake: a worker spins for a short while
 * (kSpin) after its last chunk before it sleeps, since the CPU ops call parallel_for hundreds of times a step
 * and a sleeping thread takes tens of microseconds to wake. A parallel_for called while another runs (another
 * thread's, or from inside a chunk) runs its whole range on the calling thread.
 * The CPU threads of y5's ops, optimizer and tape: one pool with a thread per core (Y5_THREADS=n overrides), the
 * caller being one of them; par() runs a loop over them, cpu_op_threads() says how many.
 */
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace y5 {

class ThreadPool {
public:
    explicit ThreadPool(int threads);  // threads ≤ 0: one per hardware core
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return (int)workers_.size(); }
    std::future<void> submit(std::function<void()> fn);
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);

    static constexpr std::chrono::microseconds kSpin{50};

private:
    void worker_loop();
    void run_chunks();  // claims and runs the current job's chunks until none is left
    std::vector<std::thread> workers_;
    std::deque<std::packaged_task<void()>> queue_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    int sleepers_ = 0;  // workers waiting on cv_ (under mu_)
    // The current parallel_for: set by its caller while gen_ is even, then gen_ made odd (open) until every chunk
    // has run, then even again (closed). A worker joins an open job by raising running_ and checking that gen_ is
    // still the one it saw.
    std::mutex job_mu_;  // held by the caller for the whole parallel_for
    const std::function<void(int64_t, int64_t)>* job_fn_ = nullptr;
    int64_t job_n_ = 0, job_chunk_ = 0;
    std::atomic<int64_t> next_{0};  // the next chunk's begin
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> running_{0};  // workers inside the current job
    std::mutex err_mu_;
    std::exception_ptr err_;
};

// fn(begin, end) over disjoint chunks of [0, n) on the CPU threads (cpu_op_threads()); chunks of at least
// min_chunk.
void par(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t min_chunk = 1);
// CPU threads (one per core, or Y5_THREADS). conv2d takes one im2col buffer per thread from the work arena, so sizing
// that arena needs it (engine/app/memory.h).
int cpu_op_threads();
constexpr int64_t kElemChunk = 1 << 15;  // elementwise work below this stays on one thread
// bytes zeroed at p over the CPU threads (the tape's and the optimizer's gradients, the ops' partial sums).
void par_zero(void* p, int64_t bytes);

}  // namespace y5
