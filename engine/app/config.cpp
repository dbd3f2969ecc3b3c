/*
 * Bare yaml names resolved to y5's config/ folders (engine/app/config.h).
 */
#include "engine/app/config.h"

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

}  // namespace y5
