/*
 * libFuzzer harness: a model yaml (layers/model.h, YOLOv5's parse_model semantics), given as text to the
 * Model constructor that y5train's --cfg uses: parsing, the rows' checks and the shape dry run that finds the
 * strides. Parameters are not allocated (a fuzzed width could ask for any amount of memory, as a real one can).
 * After a successful build the model's table and parameter count are computed.
 *   tools/fuzz.sh yaml_model       (corpus: fuzz/corpus/yaml_model: the repository's model yamls)
 */
#include "fuzz/fuzz.h"
#include "layers/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        y5::Model m("fuzz.yaml", text, 0);
        y5_fuzz_require(m.num_parameters() > 0, "a model has parameters");
    } catch (const std::exception&) {
    }
    return 0;
}
