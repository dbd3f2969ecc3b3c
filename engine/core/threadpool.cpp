#include "engine/core/threadpool.h"

#include <algorithm>

namespace y5 {

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

void ThreadPool::worker_loop() {
    for (;;) {
        std::packaged_task<void()> task;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
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
    int64_t parts = std::min<int64_t>(size() + 1, std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
    if (parts <= 1) {
        fn(0, n);
        return;
    }
    int64_t chunk = (n + parts - 1) / parts;
    std::vector<std::future<void>> done;
    for (int64_t b = chunk; b < n; b += chunk) {
        int64_t e = std::min(n, b + chunk);
        done.push_back(submit([&fn, b, e] { fn(b, e); }));
    }
    std::exception_ptr err;
    try {
        fn(0, std::min(n, chunk));  // the caller does the first chunk itself
    } catch (...) {
        err = std::current_exception();
    }
    for (auto& f : done) {
        try {
            f.get();
        } catch (...) {
            if (!err) err = std::current_exception();
        }
    }
    if (err) std::rethrow_exception(err);
}

}  // namespace y5
