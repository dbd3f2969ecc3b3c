/*
 * libFuzzer harness: a safetensors file (engine/core/safetensors.h): the 8-byte header length, the JSON header,
 * the data offsets. The input is the whole file; after a successful open every tensor is read as f32 and f64 and
 * its shape taken, as Model::load_weights does.
 *   tools/fuzz.sh safetensors      (corpus: fuzz/corpus/safetensors)
 */
#include "engine/core/safetensors.h"
#include "fuzz/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = y5_fuzz_dir() + "/in.safetensors";
    y5_fuzz_write(path, data, size);
    try {
        y5::SafeTensorsFile f(path);
        for (const std::string& n : f.names()) {
            const y5::SafeEntry& e = f.entry(n);
            y5_fuzz_require(e.begin <= e.end && e.end <= size, "data offsets inside the file");
            try {
                f.shape(n);
                f.read_f32(n);
                f.read_f64(n);
            } catch (const std::exception&) {
            }
        }
    } catch (const std::exception&) {
    }
    return 0;
}
