#include "engine/data/loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <unistd.h>
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

std::string npy_path_for(const std::string& image) {
    const size_t slash = image.find_last_of('/'), dot = image.find_last_of('.');
    const bool has_ext = dot != std::string::npos && (slash == std::string::npos || dot > slash + 1);
    return (has_ext ? image.substr(0, dot) : image) + ".npy";
}

void write_npy_u8(const std::string& path, const cv::Mat& im) {
    Y5_CHECK(im.type() == CV_8UC3 && im.isContinuous(), "%s: only continuous uint8 3-channel images are cached",
             path.c_str());
    // np.save's format 1.0 header: magic, version, little-endian u16 length, the dict padded with spaces and
    // ended by '\n' so that the data starts at a multiple of 64 bytes.
    std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + std::to_string(im.rows) + ", " +
                       std::to_string(im.cols) + ", 3), }";
    const size_t total = (10 + dict.size() + 1 + 63) / 64 * 64;
    dict.append(total - 10 - dict.size() - 1, ' ');
    dict += '\n';
    std::string head = "\x93NUMPY";
    head += (char)1, head += (char)0, head += (char)(dict.size() & 0xff), head += (char)(dict.size() >> 8);
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary);
        Y5_CHECK(out, "%s: cannot write the --cache disk file (is the dataset folder writable?)", tmp.c_str());
        out << head << dict;
        out.write(reinterpret_cast<const char*>(im.data), (std::streamsize)im.total() * 3);
        Y5_CHECK(out.good(), "%s: write failed", tmp.c_str());
    }
    Y5_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "%s: cannot rename to %s", tmp.c_str(), path.c_str());
}

bool read_npy_u8(const std::string& path, cv::Mat* im, std::string* why, bool header_only) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return *why = "cannot open", false;
    const int64_t size = (int64_t)in.tellg();
    in.seekg(0);
    char pre[12] = {};
    in.read(pre, 10);
    if (!in || std::memcmp(pre, "\x93NUMPY", 6) != 0) return *why = "not a .npy file (bad magic)", false;
    const int major = (unsigned char)pre[6];
    size_t hlen = (unsigned char)pre[8] | ((unsigned char)pre[9] << 8), start = 10;
    if (major == 2 || major == 3) {  // 4-byte header length
        in.read(pre + 10, 2);
        hlen |= ((size_t)(unsigned char)pre[10] << 16) | ((size_t)(unsigned char)pre[11] << 24);
        start = 12;
    } else if (major != 1) {
        return *why = "unknown .npy format version " + std::to_string(major), false;
    }
    if ((int64_t)(start + hlen) > size) return *why = "header longer than the file", false;
    std::string dict(hlen, '\0');
    in.read(&dict[0], (std::streamsize)hlen);
    dict.erase(dict.find_last_not_of(" \n") + 1);
    auto value = [&](const std::string& key) {  // the text after 'key': up to the next top-level ','
        const size_t k = dict.find("'" + key + "':");
        if (k == std::string::npos) return std::string();
        size_t b = k + key.size() + 3, depth = 0, e = b;
        for (; e < dict.size() && (depth || (dict[e] != ',' && dict[e] != '}')); ++e)
            depth += dict[e] == '(' ? 1 : dict[e] == ')' ? -1 : 0;
        std::string v = dict.substr(b, e - b);
        v.erase(0, v.find_first_not_of(' '));
        return v;
    };
    if (value("descr") != "'|u1'") return *why = "dtype " + value("descr") + " is not '|u1' (uint8)", false;
    if (value("fortran_order") != "False") return *why = "fortran_order is not False", false;
    int h = 0, w = 0, c = 0;
    char tail = 0;
    if (std::sscanf(value("shape").c_str(), "(%d, %d, %d%c", &h, &w, &c, &tail) != 4 || tail != ')' || h <= 0 ||
        w <= 0 || c != 3)
        return *why = "shape " + value("shape") + " is not (h, w, 3)", false;
    if (size != (int64_t)(start + hlen) + (int64_t)h * w * 3)
        return *why = "file size " + std::to_string(size) + " does not match shape (" + std::to_string(h) + ", " +
                      std::to_string(w) + ", 3)", false;
    if (header_only) return true;
    im->create(h, w, CV_8UC3);
    in.read(reinterpret_cast<char*>(im->data), (std::streamsize)h * w * 3);
    if (!in) return *why = "short read", false;
    return true;
}

std::vector<int> weighted_choices(const std::vector<double>& w, int k, Rng& rng) {
    std::vector<double> cum(w.size());
    double total = 0;
    for (size_t i = 0; i < w.size(); ++i) {
        Y5_CHECK(w[i] >= 0 && std::isfinite(w[i]), "image weight %zu is %g (must be finite and >= 0)", i, w[i]);
        cum[i] = total += w[i];
    }
    Y5_CHECK(!w.empty() && total > 0, "--image-weights: the image weights sum to 0 (no labels in the training set?)");
    std::vector<int> out(k);
    for (int j = 0; j < k; ++j) {
        const double u = rng.uniform_double() * total;
        out[j] = std::min((int)(std::upper_bound(cum.begin(), cum.end(), u) - cum.begin()), (int)w.size() - 1);
    }
    return out;
}

void collate_quad(const Batch& in, Batch& out, const std::vector<double>& r) {
    const int m = in.n / 4, h = in.h, w = in.w, H = 2 * h, W = 2 * w;
    Y5_CHECK((int)r.size() >= m, "collate_quad: %zu draws for %d images", r.size(), m);
    out.n = m, out.h = H, out.w = W;
    out.images.resize((size_t)m * 3 * H * W);
    out.targets.clear();
    out.indices.assign(in.indices.begin(), in.indices.begin() + std::min((int)in.indices.size(), m));  // path[:n]
    out.shapes.assign(in.shapes.begin(), in.shapes.begin() + std::min((int)in.shapes.size(), m));
    std::vector<float> plane((size_t)h * w), big((size_t)H * W);
    const int64_t nt = in.num_targets();
    for (int i = 0; i < m; ++i) {
        uint8_t* dst = out.images.data() + (size_t)i * 3 * H * W;
        const int k = 4 * i;
        if (r[i] < 0.5) {  // image k upscaled: bilinear on floats, then .type(uint8) truncates
            for (int c = 0; c < 3; ++c) {
                const uint8_t* src = in.images.data() + ((size_t)k * 3 + c) * h * w;
                for (size_t j = 0; j < plane.size(); ++j) plane[j] = src[j];
                resize_bilinear(plane.data(), 1, h, w, big.data(), H, W);
                for (size_t j = 0; j < big.size(); ++j) dst[(size_t)c * H * W + j] = (uint8_t)big[j];
            }
            for (int64_t t = 0; t < nt; ++t)
                if ((int)in.targets[t * 6] == k)
                    out.targets.insert(out.targets.end(), {(float)i, in.targets[t * 6 + 1], in.targets[t * 6 + 2],
                                                           in.targets[t * 6 + 3], in.targets[t * 6 + 4], in.targets[t * 6 + 5]});
        } else {  // cat((cat(k, k+1 on h), cat(k+2, k+3 on h)) on w): k+1 below k, k+2 right of k
            for (int q = 0; q < 4; ++q) {
                const int oy = (q & 1) * h, ox = (q >> 1) * w;
                for (int c = 0; c < 3; ++c)
                    for (int y = 0; y < h; ++y)
                        std::memcpy(dst + ((size_t)c * H + oy + y) * W + ox,
                                    in.images.data() + (((size_t)(k + q) * 3 + c) * h + y) * w, (size_t)w);
                for (int64_t t = 0; t < nt; ++t)
                    if ((int)in.targets[t * 6] == k + q) {
                        const float* l = &in.targets[t * 6];
                        const float dx = (float)(q >> 1), dy = (float)(q & 1);
                        out.targets.insert(out.targets.end(), {(float)i, l[1], (l[2] + dx) * 0.5f, (l[3] + dy) * 0.5f,
                                                               l[4] * 0.5f, l[5] * 0.5f});
                    }
            }
        }
    }
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
    if (opt_.cache_disk) {
        // cache_images_to_disk: one .npy per image, written when missing (and here also when malformed).
        double bytes = 0;
        std::string warnings;
        for (const ImageRecord& r : data.records) {
            const std::string npy = npy_path_for(r.image);
            std::string why;
            cv::Mat unused;
            const bool exists = access(npy.c_str(), F_OK) == 0;
            if (!exists || !read_npy_u8(npy, &unused, &why, true)) {
                if (exists) warnings += "WARNING: " + npy + ": " + why + "; re-made from " + r.image + "\n";
                const cv::Mat im = cv::imread(r.image, cv::IMREAD_COLOR);
                Y5_CHECK(!im.empty(), "%s: image could not be read for --cache disk", r.image.c_str());
                write_npy_u8(npy, im);
            }
            std::ifstream f(npy, std::ios::binary | std::ios::ate);
            bytes += (double)f.tellg();
        }
        char msg[96];
        snprintf(msg, sizeof msg, "Caching images (%.1fGB disk)", bytes / (1 << 30));
        cache_msg_ = warnings + msg;
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
    cv::Mat im;
    if (opt_.cache_disk) {
        std::string why;
        Y5_CHECK(read_npy_u8(npy_path_for(path), &im, &why), "%s: %s (it was valid when the loader started)",
                 npy_path_for(path).c_str(), why.c_str());
        return load_resize(im, opt_.img_size, augment);
    }
    im = cv::imread(path, cv::IMREAD_COLOR);
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
    for (int k = 0; k < 3; ++k) {  // random.choices(dataset.indices): the epoch's weighted list under --image-weights
        const int j = std::min(n - 1, (int)(d.random() * n));
        idx.push_back(image_weights_.empty() ? j : epoch_order_[j]);
    }
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
    if (!image_weights_.empty()) {
        Y5_CHECK(image_weights_.size() == order_.size(), "--image-weights: %zu weights for %zu images",
                 image_weights_.size(), order_.size());
        Rng rng(opt_.seed, 0xD0000000ull + (uint64_t)epoch);
        epoch_order_ = weighted_choices(image_weights_, (int)order_.size(), rng);
    }
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
    if (opt_.quad) {  // collate_fn4, one draw per output image from this epoch's and batch's own stream
        Rng rng(opt_.seed, ((0xC0000000ull + (uint64_t)epoch_) << 32) | (uint32_t)b);
        std::vector<double> r(B.n / 4);
        for (double& x : r) x = rng.uniform_double();
        t_pin = opt_.pinned;
        collate_quad(B, quad_, r);
        std::swap(out, quad_);
    } else {
        std::swap(out, B);
    }
    slot_batch_[s] = -1;
    ++next_batch_;
    cv_.notify_all();
    return true;
}

}  // namespace y5
