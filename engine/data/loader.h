/*
 * DataLoader: YOLOv5's LoadImagesAndLabels.__getitem__ and collate_fn over worker threads with a prefetch
 * queue; workers take samples (not whole batches), so a batch is made in parallel. Training (augment): mosaic with probability hyp.mosaic (else letterbox + random_perspective), HSV,
 * flips. Validation: letterbox to the rect batch shape (sorted by aspect ratio, pad 0.5) or to img_size.
 * Every random draw of sample i in epoch e comes from Rng(seed, e·2³² + i), so the batches depend on the
 * seed only, never on the number of workers or their timing.
 * Batch: images (n, 3, h, w) uint8 RGB; targets (nt, 6) rows (image in batch, class, x, y, w, h) normalised.
 * --cache ram: resized images kept in memory after checking that they fit (an estimate from 30 images × 1.1
 * against MemAvailable, as YOLOv5 checks).
 * --cache disk: each image decoded at full size (cv::imread, BGR uint8 HWC) is kept as YOLOv5's `.npy` beside it
 * (the image path with its extension replaced, as Path.with_suffix('.npy')), so y5 and YOLOv5 share the files;
 * a missing one is written, a malformed one re-made from the image with a warning, and samples read them.
 * --image-weights (train.py): each epoch's samples are random.choices(range(n), weights, k=n) before the shuffle,
 * and mosaic's partners come from that list, as YOLOv5's dataset.indices.
 * --quad (collate_fn4): each batch of 4m images becomes m images of twice the size: with probability 0.5 the
 * first of four upscaled 2x (bilinear), else the 2x2 tile (k, k+2 / k+1, k+3) with its labels moved and halved.
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
    bool augment = false, rect = false, shuffle = false, cache_ram = false, cache_disk = false, quad = false;
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

// YOLOv5's --cache disk file for an image: Path(image).with_suffix('.npy').
std::string npy_path_for(const std::string& image);
// A uint8 HWC 3-channel image as NumPy's np.save writes it (format 1.0, '|u1', C order), atomically.
void write_npy_u8(const std::string& path, const cv::Mat& im);
// Reads such a file; false with the reason in *why when the header is not exactly that (dtype '|u1',
// fortran_order False, shape (h, w, 3)) or the file's size does not match. header_only: checks without reading.
bool read_npy_u8(const std::string& path, cv::Mat* im, std::string* why, bool header_only = false);

// random.choices(range(n), weights=w, k): bisect on the cumulative weights of u·total (Python's algorithm; the
// uniforms from rng). Every weight ≥ 0 and their sum > 0.
std::vector<int> weighted_choices(const std::vector<double>& w, int k, Rng& rng);

// collate_fn4 on a batch of n images (h, w): m = n/4 images (2h, 2w); r[i] < 0.5 upscales image 4i, else tiles
// 4i..4i+3. r holds m draws (injectable for tests).
void collate_quad(const Batch& in, Batch& out, const std::vector<double>& r);

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

    // --image-weights: per-record sampling weights for the following start_epoch calls (empty: every record once).
    void set_image_weights(std::vector<double> w) { image_weights_ = std::move(w); }
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
    std::vector<double> image_weights_;
    Batch quad_;  // --quad: the collated batch, swapped with the consumer's (its memory reused)

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
