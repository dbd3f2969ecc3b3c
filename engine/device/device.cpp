// parse_device: YOLOv5's --device spellings, for every backend (engine/device/device.h).
#include <cctype>

#include "kernels/check.h"
#include "engine/device/device.h"

namespace y5 {

int parse_device(const std::string& spec_in) {
    std::string spec;
    for (char ch : spec_in) spec += (char)std::tolower((unsigned char)ch);
    if (spec.rfind("cuda:", 0) == 0) spec = spec.substr(5);
    else if (spec == "cuda") spec = "0";
    if (spec == "cpu") return -1;
    std::string why;
    if (spec.empty()) return cuda_available() ? 0 : -1;
    Y5_CHECK(spec.find(',') == std::string::npos, "--device %s: y5 trains on one device; give one index such as 0",
             spec_in.c_str());
    bool digits = true;
    for (char ch : spec) digits = digits && std::isdigit((unsigned char)ch);
    Y5_CHECK(digits && spec.size() < 4, "--device %s: expected cpu, or a CUDA device index such as 0", spec_in.c_str());
    Y5_CHECK(cuda_available(&why), "--device %s: no usable CUDA device (%s); use --device cpu", spec_in.c_str(),
             why.c_str());
    const int idx = std::stoi(spec), n = cuda_device_count();
    Y5_CHECK(idx < n, "--device %s: this machine has %d CUDA device%s", spec_in.c_str(), n, n == 1 ? "" : "s");
    return idx;
}

}  // namespace y5
