/*
 * libFuzzer harness: a hyperparameter yaml (load_hyp, engine/app/hyp.h). The input is the yaml file; after a
 * successful load every key YOLOv5 reads is set (the loader's contract) and the hyp.yaml y5train writes is
 * made from it.
 *   tools/fuzz.sh yaml_hyp         (corpus: fuzz/corpus/yaml_hyp: the repository's hyp yamls)
 */
#include "engine/app/hyp.h"
#include "fuzz/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = y5_fuzz_dir() + "/hyp.yaml";
    y5_fuzz_write(path, data, size);
    try {
        const y5::Hyp h = y5::load_hyp(path);
        y5_fuzz_require(!h.yaml().empty() && h.v.size() >= 28, "every hyperparameter is set");
    } catch (const std::exception&) {
    }
    return 0;
}
