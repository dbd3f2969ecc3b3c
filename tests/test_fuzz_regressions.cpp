/*
 * Inputs the fuzz harnesses (fuzz/, tools/fuzz.sh) or their sanitizer builds showed to crash or mislead a parser,
 * each in tests/fixtures/fuzz/ and fed here to the same parser: y5 must reject it with a y5::Error naming the
 * file, or read it correctly. Each case fails on the code before its fix.
 *   cache_damaged_record.bin, cache_class_out_of_int.bin   a label cache's body, after its 32-byte header (fuzz_cache)
 *   label_class_1e30.txt                                    a label file whose class id is past int's range
 *   safetensors_*.safetensors                               headers whose shapes overflow, wrap or are negative
 *   pt_entry_size_lies.pt                                   a zip whose data.pkl entry claims 4 GB
 *   model_depth_multiple_huge.yaml                          yolov5n.yaml with depth_multiple 8.9e16 (fuzz_yaml_model)
 *   pkl_tuple_in_itself.pkl                                 a data.pkl appending a tuple to itself (fuzz_torch_pt)
 *   model_conv_stride_0.yaml                                yolov5n.yaml with a Conv of stride 0 (fuzz_yaml_model)
 */
#include <catch2/catch.hpp>

#include <opencv2/imgcodecs.hpp>
#include <zip.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/core/safetensors.h"
#include "engine/core/torch_pt.h"
#include "engine/data/dataset.h"
#include "kernels/check.h"
#include "layers/model.h"

using namespace y5;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

static const std::string kFuzz = std::string(Y5_SOURCE_DIR) + "/tests/fixtures/fuzz/";

static std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

static void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// The dataset fuzz_cache scans: two 16×16 images with two labels each. Returns its images folder.
static std::string two_image_dataset(const std::string& name) {
    const std::string root = "/tmp/y5_test_fuzz_" + name;
    fs::remove_all(root);
    fs::create_directories(root + "/images");
    fs::create_directories(root + "/labels");
    for (const char* n : {"a", "b"}) {
        REQUIRE(cv::imwrite(root + "/images/" + n + ".png", cv::Mat(16, 16, CV_8UC3, cv::Scalar(40, 90, 160))));
        write_bytes(root + "/labels/" + n + ".txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n");
    }
    return root + "/images";
}

// Scans the dataset once (writing its cache), then replaces the cache by its key, the body's checksum and size
// (FNV-1a 64 xor the size, as dataset.cpp writes them) and `body`, as fuzz_cache does, and scans again.
static Dataset scan_with_cache_body(const std::string& images, const std::string& body) {
    const Dataset first = scan_dataset({images}, 1, true);
    REQUIRE(first.records.size() == 2);
    const std::string key = read_bytes(first.cache_path).substr(0, 16);
    uint64_t sum = 1469598103934665603ull;
    for (unsigned char b : body) sum = (sum ^ b) * 1099511628211ull;
    const uint64_t size = body.size();
    sum ^= size;
    write_bytes(first.cache_path, key + std::string(reinterpret_cast<const char*>(&sum), 8) +
                                      std::string(reinterpret_cast<const char*>(&size), 8) + body);
    return scan_dataset({images}, 1, true);
}

TEST_CASE("fuzz regression: a damaged label cache is rescanned, with no records left from it", "[fuzz]") {
    // Before: the reader filled the dataset's records as it went and left them there when it failed; the rescan
    // then appended the two real images to four bogus ones.
    const Dataset d = scan_with_cache_body(two_image_dataset("cache_damaged"), read_bytes(kFuzz + "cache_damaged_record.bin"));
    CHECK_FALSE(d.stats.from_cache);
    REQUIRE(d.records.size() == 2);
    CHECK(d.stats.images == 2);
    CHECK(d.stats.instances == 4);
    for (const ImageRecord& r : d.records) CHECK(r.labels.size() == 2);
}

TEST_CASE("fuzz regression: a cached class id past int's range is refused with the cache, not cast", "[fuzz]") {
    // The cache holds three records (another dataset's), one label with class 3.69e19, under a valid header. Before:
    // (int) of it was undefined (UBSan), in practice INT_MIN, so check_classes let it through to the loss. Now the
    // reader checks cached labels against the label rules: the cache is refused and the dataset rescanned.
    const Dataset d = scan_with_cache_body(two_image_dataset("cache_class"), read_bytes(kFuzz + "cache_class_out_of_int.bin"));
    CHECK_FALSE(d.stats.from_cache);
    REQUIRE(d.records.size() == 2);
    CHECK(check_classes(d, 80).empty());
    int64_t counted = 0;
    for (int64_t c : class_counts(d, 80)) counted += c;
    CHECK(counted == 4);
}

TEST_CASE("fuzz regression: a label class id of 1e30 is reported by check_classes", "[fuzz]") {
    const std::string images = two_image_dataset("label_1e30");
    write_bytes(images + "/../labels/b.txt", read_bytes(kFuzz + "label_class_1e30.txt"));
    const Dataset d = scan_dataset({images}, 1, false);
    REQUIRE(d.records.size() == 2);
    const std::vector<std::string> bad = check_classes(d, 80);
    REQUIRE(bad.size() == 1);
    CHECK_THAT(bad[0], Contains("labels/b.txt:1: class 1000000015047466219876688855040 exceeds nc=80"));
    CHECK(class_counts(d, 80)[0] == 1);
}

TEST_CASE("fuzz regression: safetensors shapes that overflow, wrap or are negative are refused", "[fuzz]") {
    // overflow: [2^32, 2^32, 4] (signed overflow in the element count, UBSan); wraps: [2^62] F32, whose byte count
    // wraps to 0 and matched empty offsets; negative: [-1, -4], whose product matched 16 bytes.
    for (const char* f : {"safetensors_numel_overflow.safetensors", "safetensors_numel_wraps.safetensors",
                          "safetensors_negative_dims.safetensors"}) {
        INFO(f);
        const std::string path = kFuzz + f;
        CHECK_THROWS_WITH(SafeTensorsFile(path), Contains(path + ": tensor 'a' has a negative size or more elements"));
    }
}

TEST_CASE("fuzz regression: a .pt zip entry that claims more bytes than it stores is refused", "[fuzz]") {
    // data.pkl stored (uncompressed) in 6 bytes, its headers claiming 4294967280: before, y5 allocated that much.
    const std::string path = kFuzz + "pt_entry_size_lies.pt";
    CHECK_THROWS_WITH(TorchPtFile(path), Contains(path + ": entry archive/data.pkl claims 4294967280 bytes from 6 stored"));
}

TEST_CASE("fuzz regression: a model yaml's depth_multiple past int's range is refused", "[fuzz]") {
    // Before: (int) of number × depth_multiple was undefined (UBSan), in practice INT_MIN, so max(·, 1) built one
    // repeat and the yaml was accepted.
    const std::string path = kFuzz + "model_depth_multiple_huge.yaml";
    CHECK_THROWS_WITH(Model(path), Contains(path + ": depth_multiple 8.88889e+16 must be above 0 and at most 100"));
}

TEST_CASE("fuzz regression: a model yaml's Conv with stride 0 is refused", "[fuzz]") {
    // Before: the shape dry run divided by the stride (UBSan: division by zero; SIGFPE without it).
    const std::string path = kFuzz + "model_conv_stride_0.yaml";
    CHECK_THROWS_WITH(Model(path), Contains("kernel (1..31), stride (1..64) or padding (0..kernel) out of range"));
}

TEST_CASE("fuzz regression: a pickle that puts a tuple inside itself is refused", "[fuzz]") {
    // "N)2a": NONE, EMPTY_TUPLE, DUP, APPEND. Before: the tuple held a shared_ptr to itself and leaked (LeakSanitizer).
    // Packed as fuzz_torch_pt packs a bare data.pkl.
    const std::string pkl = read_bytes(kFuzz + "pkl_tuple_in_itself.pkl");
    const std::string path = "/tmp/y5_test_fuzz_pkl_tuple.pt";
    fs::remove(path);
    int err = 0;
    zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    REQUIRE(z);
    zip_source_t* src = zip_source_buffer(z, pkl.data(), pkl.size(), 0);
    REQUIRE((src && zip_file_add(z, "archive/data.pkl", src, 0) >= 0));
    REQUIRE(zip_close(z) == 0);
    CHECK_THROWS_WITH(TorchPtFile(path), Contains(path + ": ") && Contains("a tuple put inside itself (a reference cycle)"));
}

TEST_CASE("fuzz seeds: the committed corpus files parse", "[fuzz]") {
    // The seeds are meant to reach deep into the parsers: each must be accepted as it is.
    const std::string corpus = std::string(Y5_SOURCE_DIR) + "/fuzz/corpus/";
    const SafeTensorsFile st(corpus + "safetensors/tiny.safetensors");
    CHECK(st.names().size() == 6);
    CHECK(st.read_f32("a.weight").size() == 6);
    const TorchPtFile pt(corpus + "torch_pt/tiny_model.pt");
    REQUIRE(pt.root().get("model"));
    CHECK(pt.root().get("model")->is(PyObj::Object));
}
