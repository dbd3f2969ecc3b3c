/*
 * libFuzzer harness: the label cache (<labels folder>.y5cache, engine/data/dataset.cpp), read by scan_dataset
 * for a two-image dataset, then check_classes and class_counts as y5data and y5train run them. The input is the
 * cache's body; the harness writes its 32-byte header first: the 16-byte key (magic, version, the dataset's hash)
 * and the body's checksum (FNV-1a, as dataset.cpp's) and size. Without a right header the reader stops at once, so
 * the fuzzer could never reach the records.
 * Invariants: when the cache is refused the dataset is rescanned and holds exactly the two images.
 *   tools/fuzz.sh cache            (corpus: fuzz/corpus/cache: caches y5 wrote, their keys cut off)
 */
#include <opencv2/imgcodecs.hpp>

#include <vector>

#include "engine/data/dataset.h"
#include "fuzz/fuzz.h"

namespace {

struct Fixture {
    std::string images, cache;
    std::vector<char> key;  // the first 16 bytes of the cache y5 wrote for this dataset (magic, version, hash)
};

const Fixture& fixture() {
    static const Fixture f = [] {
        Fixture f;
        const std::string root = y5_fuzz_dir() + "/cache_ds";
        std::filesystem::create_directories(root + "/images");
        std::filesystem::create_directories(root + "/labels");
        for (const char* n : {"a", "b"}) {
            cv::imwrite(root + "/images/" + n + ".png", cv::Mat(16, 16, CV_8UC3, cv::Scalar(40, 90, 160)));
            y5_fuzz_write(root + "/labels/" + n + ".txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n", 36);
        }
        f.images = root + "/images";
        const y5::Dataset d = y5::scan_dataset({f.images}, 1, true);
        f.cache = d.cache_path;
        std::ifstream in(f.cache, std::ios::binary);
        f.key.resize(16);
        in.read(f.key.data(), 16);
        y5_fuzz_require(in && d.records.size() == 2, "the harness's dataset scans and writes its cache");
        return f;
    }();
    return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const Fixture& f = fixture();
    {
        uint64_t sum = 1469598103934665603ull;  // FNV-1a 64 of the body, xor its size: dataset.cpp's checksum
        for (size_t i = 0; i < size; ++i) sum = (sum ^ data[i]) * 1099511628211ull;
        const uint64_t body_size = size;
        sum ^= body_size;
        std::ofstream o(f.cache, std::ios::binary | std::ios::trunc);
        o.write(f.key.data(), 16);
        o.write(reinterpret_cast<const char*>(&sum), 8);
        o.write(reinterpret_cast<const char*>(&body_size), 8);
        o.write(reinterpret_cast<const char*>(data), (std::streamsize)size);
    }
    y5::Dataset d;
    try {
        d = y5::scan_dataset({f.images}, 1, true);
    } catch (const std::exception&) {
        return 0;
    }
    if (!d.stats.from_cache) {
        y5_fuzz_require(d.records.size() == 2 && d.stats.images == 2, "a refused cache leaves a clean rescan");
        y5_fuzz_require(d.records[0].labels.size() == 2 && d.records[1].labels.size() == 2, "rescanned labels");
    }
    for (const y5::ImageRecord& r : d.records)
        y5_fuzz_require(r.labels.size() == r.label_lines.size(), "a line per label row");
    y5::check_classes(d, 80);
    y5::class_counts(d, 80);
    return 0;
}
