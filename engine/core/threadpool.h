/*
 * A fixed pool of worker threads for CPU ops and the data loader.
 *   parallel_for(n, fn): calls fn(begin, end) over disjoint chunks covering [0, n), on the workers and
 *   the calling thread, and returns when all are done. Each index is owned by exactly one chunk, so
 *   results do not depend on the number of threads as long as fn writes only its own range.
 *   submit(fn): runs fn on a worker; the returned future reports completion (and rethrows errors).
 * An exception thrown inside parallel_for is rethrown in the caller after all chunks finish.
 */
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
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

private:
    void worker_loop();
    std::vector<std::thread> workers_;
    std::deque<std::packaged_task<void()>> queue_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
};

}  // namespace y5
