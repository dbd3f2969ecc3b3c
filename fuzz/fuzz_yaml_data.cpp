/*
 * libFuzzer harness: a data yaml (load_data_yaml, engine/data/dataset.h): path, train/val/test, names, nc. The
 * input is the yaml file; the harness runs in its scratch folder, so relative paths resolve there.
 * Invariants after a successful load: nc equals the number of names and is positive, train and val are set.
 *   tools/fuzz.sh yaml_data        (corpus: fuzz/corpus/yaml_data: the repository's data yamls)
 */
#include "engine/data/dataset.h"
#include "fuzz/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = y5_fuzz_dir() + "/data.yaml";
    y5_fuzz_write(path, data, size);
    try {
        const y5::DataConfig d = y5::load_data_yaml(path);
        y5_fuzz_require(d.nc > 0 && d.nc == (int)d.names.size(), "nc is the number of names");
        y5_fuzz_require(d.splits.count("train") && d.splits.count("val"), "train and val are set");
    } catch (const std::exception&) {
    }
    return 0;
}
