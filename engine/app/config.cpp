/*
 * Bare yaml names resolved to y5's config/ folders (engine/app/config.h).
 */
#include "engine/app/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "kernels/check.h"

namespace fs = std::filesystem;

namespace y5 {

std::string resolve_config(const std::string& name, const char* kind, const char* what) {
    if (fs::exists(name)) return name;
    const fs::path p(name);
    Y5_CHECK(!name.empty() && !p.has_parent_path(), "%s %s: no such file", what, name.c_str());
    const std::string here = std::string("config/") + kind + "/" + name;
    if (fs::exists(here)) return here;
    const std::string built = std::string(Y5_CONFIG_DIR) + "/" + kind + "/" + name;
    if (fs::exists(built)) return built;
    Y5_FAIL("%s %s: no such file, nor %s, nor %s", what, name.c_str(), here.c_str(), built.c_str());
}

std::string py_float(double v) {
    if (!std::isfinite(v)) return std::isnan(v) ? "nan" : v < 0 ? "-inf" : "inf";
    char b[40];
    for (int p = 1; p <= 17; ++p) {
        snprintf(b, sizeof b, "%.*e", p - 1, v);
        if (std::strtod(b, nullptr) == v) break;
    }
    std::string m = b, sign = m[0] == '-' ? "-" : "";
    const size_t e_at = m.find('e');
    const int e = std::atoi(m.c_str() + e_at + 1);
    std::string d;  // the significant digits
    for (size_t i = sign.size(); i < e_at; ++i)
        if (m[i] != '.') d += m[i];
    while (d.size() > 1 && d.back() == '0') d.pop_back();
    if (e < -4 || e >= 16) {  // repr's scientific form: 1e-05, 2.5e+16
        snprintf(b, sizeof b, "e%c%02d", e < 0 ? '-' : '+', std::abs(e));
        return sign + d.substr(0, 1) + (d.size() > 1 ? "." + d.substr(1) : "") + b;
    }
    if (e < 0) return sign + "0." + std::string(-e - 1, '0') + d;
    if ((int)d.size() <= e + 1) return sign + d + std::string(e + 1 - d.size(), '0') + ".0";
    return sign + d.substr(0, e + 1) + "." + d.substr(e + 1);
}

std::string hyp_line(const std::string& hyp_path, const Hyp& hyp, bool color) {
    const YAML::Node y = YAML::LoadFile(hyp_path);  // load_hyp has read and checked it: only the order is new
    std::string s = color ? "\033[34m\033[1mhyperparameters: \033[0m" : "hyperparameters: ";
    for (auto it = y.begin(); it != y.end(); ++it) {
        const std::string k = it->first.as<std::string>(), text = it->second.Scalar();
        const bool integer = !text.empty() && text.find_first_not_of("0123456789", text[0] == '-') == std::string::npos;
        s += (it == y.begin() ? "" : ", ") + k + "=" + (integer ? text : py_float(hyp[k]));
    }
    return s;
}

}  // namespace y5
