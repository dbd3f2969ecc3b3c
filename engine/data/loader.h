/*
 * DataLoader: YOLOv5's LoadImagesAndLabels.__getitem__ and collate_fn over worker threads with a prefetch
 * queue; workers take samples (not whole batches), so a batch is made in parallel. Training (augment): mosaic with probability hyp.mosaic (else letterbox + random_perspective), HSV,
 * flips. Validation: letterbox to the rect batch shape (sorted by aspect ratio, pad 0.5) or to img_size.
 * Every random draw of sample i in epoch e comes from Rng(seed, e·2³² + i), so the batches depend on the
 * seed only, never on the number of workers or their timing.
 * Batch: images (n, 3, h, w) uint8 RGB; targets (nt, 6) rows (image in batch, class, x, y, w, h) normalised.
 * --cache ram: resized images kept in memory after checking that they fit (an estimate from 30 images × 1.1
 * against MemAvailable, as YOLOv5 checks).
 */
#pragma once
#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <opencv2/core.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/data/augment.h"
#include "engine/data/dataset.h"

namespace y5 {

struct LoaderOptions {
    int img_size = 640, batch_size = 16, workers = 4, stride = 32, prefetch = 0;  // prefetch 0: 2 per worker
    bool augment = false, rect = false, shuffle = false, cache_ram = false;
    double pad = 0.0;
    AugmentHyp hyp;
    uint64_t seed = 0;
    bool pinned = true;  // batch images page-locked when a CUDA device is usable; y5train: only when it trains on one
};

// Batch images live in page-locked memory when a CUDA device is usable and the loader's `pinned` is set (fast
// asynchronous upload), in ordinary memory otherwise. The loader keeps its ring of batches across epochs, so a
// consumer that keeps its Batch too allocates no memory after the first epoch.
// pinned_allocations(): the allocations that asked for page-locked memory so far (tests).
int64_t pinned_allocations();
template <class T> struct PinnedAllocator {
    using value_type = T;
    PinnedAllocator() = default;
    template <class U> PinnedAllocator(const PinnedAllocator<U>&) {}
    T* allocate(size_t n);
    void deallocate(T* p, size_t n);
    template <class U> bool operator==(const PinnedAllocator<U>&) const { return true; }
    template <class U> bool operator!=(const PinnedAllocator<U>&) const { return false; }
};

struct Batch {
    int n = 0, h = 0, w = 0;
    std::vector<uint8_t, PinnedAllocator<uint8_t>> images;  // (n, 3, h, w) RGB
    std::vector<float> targets;    // (nt, 6)
    std::vector<int> indices;      // dataset records
    std::vector<std::array<double, 6>> shapes;  // per image: h0, w0, ratio_h, ratio_w, pad_w, pad_h (letterbox)
    int64_t num_targets() const { return (int64_t)targets.size() / 6; }
};

// MemAvailable from /proc/meminfo in bytes (−1 if unknown).
int64_t mem_available_bytes();

class DataLoader {
public:
    DataLoader(const Dataset& data, const LoaderOptions& opt);
    ~DataLoader();
    DataLoader(const DataLoader&) = delete;
    DataLoader& operator=(const DataLoader&) = delete;

    int num_batches() const { return (int)((order_.size() + opt_.batch_size - 1) / opt_.batch_size); }
    int size() const { return (int)order_.size(); }
    const std::vector<int>& order() const { return order_; }
    std::string cache_message() const { return cache_msg_; }

    void start_epoch(int epoch);  // orders the samples and starts the workers
    bool next(Batch& b);          // batches in order; false after the last one of the epoch

    // One sample as __getitem__ returns it (image HWC BGR after augmentation, normalised labels); public
    // for tests and for y5data --show.
    cv::Mat get_item(int pos, int epoch, std::vector<std::array<float, 5>>* labels, std::array<double, 6>* shape,
                     int batch_h, int batch_w) const;

private:
    cv::Mat load(int record, bool augment) const;  // load_image: decoded and resized (or from the RAM cache)
    cv::Mat mosaic(int record, Draws& d, std::vector<Box>* boxes) const;
    void batch_shape(int b, int* h, int* w) const;
    void fill_sample(int p, Batch& B, int k, std::vector<std::array<float, 5>>* labels) const;
    void stop_workers();

    const Dataset& data_;
    LoaderOptions opt_;
    std::vector<int> order_;                      // record per position (rect: aspect order)
    std::vector<std::array<int, 2>> rect_shapes_;  // per batch (h, w)
    std::vector<cv::Mat> cache_;
    std::string cache_msg_;

    int epoch_ = 0, next_batch_ = 0;
    std::vector<int> epoch_order_;
    std::vector<std::thread> workers_;
    std::atomic<int> claim_{0};
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::unique_ptr<Batch>> slots_;   // ring of prefetched batches
    std::vector<int> slot_batch_;                  // which batch each slot holds (−1: empty)
    std::vector<int> slot_done_;                   // samples finished in each slot
    std::vector<std::vector<std::vector<std::array<float, 5>>>> slot_labels_;  // per slot, per sample
    std::string error_;
};

}  // namespace y5
