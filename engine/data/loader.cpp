#include "engine/data/loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "kernels/check.h"
#include "engine/device/device.h"

namespace y5 {

// The loader's workers set it from LoaderOptions::pinned: whether their batches ask for page-locked memory.
static thread_local bool t_pin = true;
static std::atomic<int64_t> g_pinned_allocs{0};
int64_t pinned_allocations() { return g_pinned_allocs.load(); }

// Pinned blocks carry a header so deallocate knows which allocator made them.
template <class T> T* PinnedAllocator<T>::allocate(size_t n) {
    const size_t bytes = n * sizeof(T) + 64;
    if (t_pin) g_pinned_allocs++;
    char* p = t_pin ? static_cast<char*>(host_alloc_pinned(bytes)) : nullptr;
    const bool pinned = p != nullptr;
    if (!pinned) p = static_cast<char*>(std::malloc(bytes));
    if (!p) throw std::bad_alloc();
    p[0] = pinned;
    return reinterpret_cast<T*>(p + 64);
}

template <class T> void PinnedAllocator<T>::deallocate(T* q, size_t) {
    char* p = reinterpret_cast<char*>(q) - 64;
    if (p[0]) host_free_pinned(p);
    else std::free(p);
}

template struct PinnedAllocator<uint8_t>;

int64_t mem_available_bytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    int64_t kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit)
        if (key == "MemAvailable:") return kb * 1024;
    return -1;
}

DataLoader::DataLoader(const Dataset& data, const LoaderOptions& opt) : data_(data), opt_(opt) {
    cv::setNumThreads(0);  // the workers are the parallelism; OpenCV's own pool would oversubscribe (as YOLOv5 does)
    Y5_CHECK(opt.img_size > 0 && opt.img_size % opt.stride == 0, "--imgsz %d must be a positive multiple of the stride %d",
             opt.img_size, opt.stride);
    Y5_CHECK(opt.batch_size >= 1, "--batch-size must be at least 1");
    Y5_CHECK(!data.records.empty(), "the dataset has no usable images");
    const int n = (int)data.records.size();
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    if (opt_.rect) {
        std::vector<std::array<int, 2>> wh(n);
        for (int i = 0; i < n; ++i) wh[i] = {data.records[i].width, data.records[i].height};
        rect_batches(wh, opt_.img_size, opt_.batch_size, opt_.stride, opt_.pad, &order_, &rect_shapes_);
    }
    if (opt_.cache_ram) {
        // YOLOv5 check_cache_ram: bytes of 30 sampled resized images, scaled to the dataset, × 1.1 margin.
        const int k = std::min(n, 30);
        double bytes = 0;
        for (int i = 0; i < k; ++i) {
            const ImageRecord& r = data.records[(int64_t)i * n / k];
            const double ratio = (double)opt_.img_size / std::max(r.width, r.height);
            bytes += (double)r.width * ratio * r.height * ratio * 3;
        }
        const double need = bytes * n / k * 1.1;
        const int64_t avail = mem_available_bytes();
        if (avail > 0 && need < (double)avail) {
            cache_.resize(n);
            for (int i = 0; i < n; ++i) cache_[i] = load(i, opt_.augment);
            char msg[160];
            snprintf(msg, sizeof msg, "caching images in RAM: %.1f GB of %.1f GB available", need / 1e9, avail / 1e9);
            cache_msg_ = msg;
        } else {
            char msg[200];
            snprintf(msg, sizeof msg, "WARNING: --cache ram needs %.1f GB but %.1f GB are available; not caching",
                     need / 1e9, avail / 1e9);
            cache_msg_ = msg;
        }
    }
}

DataLoader::~DataLoader() { stop_workers(); }

cv::Mat DataLoader::load(int record, bool augment) const {
    if (!cache_.empty() && !cache_[record].empty()) return cache_[record];
    const std::string& path = data_.records[record].image;
    cv::Mat im = cv::imread(path, cv::IMREAD_COLOR);
    Y5_CHECK(!im.empty(), "%s: image could not be read (it was readable when the dataset was scanned)", path.c_str());
    return load_resize(im, opt_.img_size, augment);
}

// Pixel xyxy boxes of a record's labels for an image of size w × h placed at (padw, padh) (xywhn2xyxy).
static std::vector<Box> label_boxes(const ImageRecord& r, double w, double h, double padw, double padh) {
    std::vector<Box> b;
    for (const LabelRow& l : r.labels)
        b.push_back({l.cls, (float)(w * (l.x - l.w / 2) + padw), (float)(h * (l.y - l.h / 2) + padh),
                     (float)(w * (l.x + l.w / 2) + padw), (float)(h * (l.y + l.h / 2) + padh)});
    return b;
}

// load_mosaic: four images around a random centre of a 2s × 2s canvas, then random_perspective to s × s.
cv::Mat DataLoader::mosaic(int record, Draws& d, std::vector<Box>* boxes) const {
    const int s = opt_.img_size, border = -(s / 2);
    const int yc = (int)d.uniform(-border, 2 * s + border), xc = (int)d.uniform(-border, 2 * s + border);
    const int n = (int)data_.records.size();
    std::vector<int> idx = {record};
    for (int k = 0; k < 3; ++k) idx.push_back(std::min(n - 1, (int)(d.random() * n)));  // random.choices
    for (int i = 3; i > 0; --i) std::swap(idx[i], idx[std::min(i, (int)(d.random() * (i + 1)))]);  // random.shuffle
    cv::Mat canvas(2 * s, 2 * s, CV_8UC3, cv::Scalar(114, 114, 114));
    std::vector<Box> all;
    for (int i = 0; i < 4; ++i) {
        const cv::Mat img = load(idx[i], true);
        const int h = img.rows, w = img.cols;
        int x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b;
        if (i == 0) {  // top left
            x1a = std::max(xc - w, 0), y1a = std::max(yc - h, 0), x2a = xc, y2a = yc;
            x1b = w - (x2a - x1a), y1b = h - (y2a - y1a), x2b = w, y2b = h;
        } else if (i == 1) {  // top right
            x1a = xc, y1a = std::max(yc - h, 0), x2a = std::min(xc + w, 2 * s), y2a = yc;
            x1b = 0, y1b = h - (y2a - y1a), x2b = std::min(w, x2a - x1a), y2b = h;
        } else if (i == 2) {  // bottom left
            x1a = std::max(xc - w, 0), y1a = yc, x2a = xc, y2a = std::min(2 * s, yc + h);
            x1b = w - (x2a - x1a), y1b = 0, x2b = w, y2b = std::min(y2a - y1a, h);
        } else {  // bottom right
            x1a = xc, y1a = yc, x2a = std::min(xc + w, 2 * s), y2a = std::min(2 * s, yc + h);
            x1b = 0, y1b = 0, x2b = std::min(w, x2a - x1a), y2b = std::min(y2a - y1a, h);
        }
        if (x2a > x1a && y2a > y1a)
            img(cv::Rect(x1b, y1b, x2b - x1b, y2b - y1b)).copyTo(canvas(cv::Rect(x1a, y1a, x2a - x1a, y2a - y1a)));
        std::vector<Box> b = label_boxes(data_.records[idx[i]], w, h, x1a - x1b, y1a - y1b);
        all.insert(all.end(), b.begin(), b.end());
    }
    for (Box& b : all) {  // np.clip(labels4[:, 1:], 0, 2s)
        b.x1 = std::clamp(b.x1, 0.0f, 2.0f * s), b.x2 = std::clamp(b.x2, 0.0f, 2.0f * s);
        b.y1 = std::clamp(b.y1, 0.0f, 2.0f * s), b.y2 = std::clamp(b.y2, 0.0f, 2.0f * s);
    }
    cv::Mat out = random_perspective(canvas, all, opt_.hyp, border, border, d);
    *boxes = all;
    return out;
}

cv::Mat DataLoader::get_item(int pos, int epoch, std::vector<std::array<float, 5>>* labels, std::array<double, 6>* shape,
                             int batch_h, int batch_w) const {
    const int record = epoch_order_.empty() ? order_[pos] : epoch_order_[pos];
    const ImageRecord& r = data_.records[record];
    Rng rng(opt_.seed, ((uint64_t)epoch << 32) | (uint32_t)pos);
    Draws d(&rng);
    std::vector<Box> boxes;
    cv::Mat img;
    std::array<double, 6> sh = {(double)r.height, (double)r.width, 1, 1, 0, 0};
    if (opt_.augment && d.random() < opt_.hyp.mosaic) {
        img = mosaic(record, d, &boxes);
    } else {
        const cv::Mat im = load(record, opt_.augment);
        LetterboxInfo lb;
        img = letterbox(im, batch_h, batch_w, &lb, false, false, opt_.augment);
        sh = {(double)r.height, (double)r.width, (double)im.rows / r.height, (double)im.cols / r.width, lb.pad_w, lb.pad_h};
        boxes = label_boxes(r, lb.ratio_w * im.cols, lb.ratio_h * im.rows, lb.pad_w, lb.pad_h);
        if (opt_.augment) img = random_perspective(img, boxes, opt_.hyp, 0, 0, d);
    }
    *labels = to_xywhn(boxes, img.cols, img.rows);
    if (opt_.augment) {
        const double r3[3] = {d.uniform(-1, 1), d.uniform(-1, 1), d.uniform(-1, 1)};
        augment_hsv(img, opt_.hyp.hsv_h, opt_.hyp.hsv_s, opt_.hyp.hsv_v, r3);
        if (d.random() < opt_.hyp.flipud) {
            cv::flip(img, img, 0);
            for (auto& l : *labels) l[2] = 1 - l[2];
        }
        if (d.random() < opt_.hyp.fliplr) {
            cv::flip(img, img, 1);
            for (auto& l : *labels) l[1] = 1 - l[1];
        }
    }
    if (shape) *shape = sh;
    return img;
}

void DataLoader::batch_shape(int b, int* h, int* w) const {
    *h = opt_.rect ? rect_shapes_[b][0] : opt_.img_size;
    *w = opt_.rect ? rect_shapes_[b][1] : opt_.img_size;
}

// One sample into its place in a batch: the image as CHW RGB, its labels, index and shape.
void DataLoader::fill_sample(int p, Batch& B, int k, std::vector<std::array<float, 5>>* labels) const {
    std::array<double, 6> shape;
    cv::Mat img = get_item(p, epoch_, labels, &shape, B.h, B.w);
    Y5_CHECK(img.rows == B.h && img.cols == B.w, "internal: sample of %dx%d in a %dx%d batch", img.cols, img.rows, B.w, B.h);
    uint8_t* dst = B.images.data() + (size_t)k * 3 * B.h * B.w;
    for (int y = 0; y < B.h; ++y) {  // HWC BGR → CHW RGB
        const uint8_t* row = img.ptr<uint8_t>(y);
        for (int x = 0; x < B.w; ++x)
            for (int c = 0; c < 3; ++c) dst[((size_t)(2 - c) * B.h + y) * B.w + x] = row[3 * x + c];
    }
    B.indices[k] = epoch_order_[p];
    B.shapes[k] = shape;
}

void DataLoader::stop_workers() {
    stop_ = true;
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
}

void DataLoader::start_epoch(int epoch) {
    stop_workers();
    epoch_ = epoch;
    next_batch_ = 0;
    claim_ = 0;
    error_.clear();
    epoch_order_ = order_;
    if (opt_.shuffle) {
        Rng rng(opt_.seed, 0xE0000000ull + (uint64_t)epoch);
        for (int i = (int)epoch_order_.size() - 1; i > 0; --i) std::swap(epoch_order_[i], epoch_order_[rng.randint(i + 1)]);
    }
    const int workers = std::max(1, opt_.workers);
    const int slots = opt_.prefetch > 0 ? opt_.prefetch : 2 * workers;
    if ((int)slots_.size() != slots) {  // kept across epochs: their (pinned) memory is reused
        slots_.clear();
        for (int i = 0; i < slots; ++i) slots_.push_back(std::make_unique<Batch>());
    }
    slot_batch_.assign(slots, -1);
    slot_done_.assign(slots, 0);
    slot_labels_.assign(slots, {});
    // Workers claim samples, not batches, in epoch order, so a batch's samples are made in parallel even when
    // an epoch is a single batch. The first claimer of a batch prepares its slot once the consumer has taken
    // the batch that used the slot before; samples write disjoint parts of it.
    const int n = size(), bs = opt_.batch_size;
    for (int w = 0; w < workers; ++w)
        workers_.emplace_back([this, n, bs, slots] {
            t_pin = opt_.pinned;
            for (;;) {
                const int p = claim_++;
                if (p >= n || stop_) return;
                const int b = p / bs, s = b % slots, k = p - b * bs;
                {
                    std::unique_lock<std::mutex> lk(mu_);
                    cv_.wait(lk, [&] { return stop_ || slot_batch_[s] == b || (slot_batch_[s] == -1 && next_batch_ > b - slots); });
                    if (stop_) return;
                    if (slot_batch_[s] != b) {
                        Batch& B = *slots_[s];
                        B.n = std::min(bs, n - b * bs);
                        batch_shape(b, &B.h, &B.w);
                        B.images.assign((size_t)B.n * 3 * B.h * B.w, 114);
                        B.targets.clear();
                        B.indices.assign(B.n, 0);
                        B.shapes.assign(B.n, {});
                        slot_labels_[s].assign(B.n, {});
                        slot_done_[s] = 0;
                        slot_batch_[s] = b;
                    }
                }
                try {
                    fill_sample(p, *slots_[s], k, &slot_labels_[s][k]);
                } catch (const std::exception& e) {
                    std::lock_guard<std::mutex> lk(mu_);
                    if (error_.empty()) error_ = e.what();
                    cv_.notify_all();
                    return;
                }
                std::lock_guard<std::mutex> lk(mu_);
                ++slot_done_[s];
                cv_.notify_all();
            }
        });
}

bool DataLoader::next(Batch& out) {
    if (next_batch_ >= num_batches()) return false;
    Y5_CHECK(!workers_.empty() || next_batch_ > 0 || num_batches() == 0, "DataLoader::next before start_epoch");
    const int slots = (int)slots_.size(), b = next_batch_;
    std::unique_lock<std::mutex> lk(mu_);
    const int s = b % slots;
    cv_.wait(lk, [&] { return (slot_batch_[s] == b && slot_done_[s] == slots_[s]->n) || !error_.empty(); });
    Y5_CHECK(error_.empty(), "data loader: %s", error_.c_str());
    Batch& B = *slots_[s];
    for (int k = 0; k < B.n; ++k)  // targets in sample order: (image in batch, class, x, y, w, h)
        for (const auto& l : slot_labels_[s][k]) B.targets.insert(B.targets.end(), {(float)k, l[0], l[1], l[2], l[3], l[4]});
    std::swap(out, B);
    slot_batch_[s] = -1;
    ++next_batch_;
    cv_.notify_all();
    return true;
}

}  // namespace y5
