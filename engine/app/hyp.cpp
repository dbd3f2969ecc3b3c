#include "engine/app/hyp.h"

#include <yaml-cpp/yaml.h>

#include <cmath>

#include <cstdio>

#include "kernels/check.h"

namespace y5 {

static const char* kKeys[] = {"lr0",     "lrf",       "momentum",  "weight_decay", "warmup_epochs", "warmup_momentum",
                              "warmup_bias_lr", "box", "cls",      "cls_pw",       "obj",           "obj_pw",
                              "iou_t",   "anchor_t",  "fl_gamma",  "hsv_h",        "hsv_s",         "hsv_v",
                              "degrees", "translate", "scale",     "shear",        "perspective",   "flipud",
                              "fliplr",  "mosaic",    "mixup",     "copy_paste"};

double Hyp::operator[](const std::string& k) const {
    auto it = v.find(k);
    Y5_CHECK(it != v.end(), "hyperparameter '%s' is not set", k.c_str());
    return it->second;
}

std::string Hyp::yaml() const {
    std::string s;
    for (const char* k : kKeys) {
        char line[96];
        snprintf(line, sizeof line, "%s: %.10g\n", k, (*this)[k]);
        s += line;
    }
    if (v.count("anchors")) s += "anchors: " + std::to_string((int)std::nearbyint(v.at("anchors"))) + "\n";
    return s;
}

Hyp load_hyp(const std::string& path) {
    YAML::Node y;
    try {
        y = YAML::LoadFile(path);
    } catch (const YAML::BadFile&) {
        Y5_FAIL("%s: hyperparameter yaml does not exist", path.c_str());
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: line %d: malformed yaml: %s", path.c_str(), e.mark.line + 1, e.msg.c_str());
    }
    Y5_CHECK(y.IsMap(), "%s: not a hyperparameter yaml", path.c_str());
    Hyp h;
    for (auto it = y.begin(); it != y.end(); ++it) {
        const std::string k = it->first.as<std::string>();
        bool known = k == "anchors";  // optional: train.py's hyp.get('anchors'), placeholder anchors per level
        for (const char* x : kKeys) known = known || k == x;
        known = known || k == "anchors";  // optional, as in YOLOv5's hyps (hyp_evolve.yaml has it); see y5train --evolve
        Y5_CHECK(known, "%s: line %d: unknown hyperparameter '%s'", path.c_str(), it->first.Mark().line + 1, k.c_str());
        try {
            h.v[k] = it->second.as<double>();
        } catch (const YAML::Exception&) {
            Y5_FAIL("%s: line %d: '%s' must be a number", path.c_str(), it->second.Mark().line + 1, k.c_str());
        }
        // every YOLOv5 hyperparameter is a rate, gain, probability or size: finite and not negative
        Y5_CHECK(std::isfinite(h.v[k]) && h.v[k] >= 0, "%s: line %d: '%s' is %g; it must be a finite number, 0 or more",
                 path.c_str(), it->second.Mark().line + 1, k.c_str(), h.v[k]);
    }
    for (const char* k : kKeys) Y5_CHECK(h.v.count(k), "%s: hyperparameter '%s' is missing", path.c_str(), k);
    Y5_CHECK(h["fl_gamma"] == 0, "%s: fl_gamma %g: focal loss is not supported", path.c_str(), h["fl_gamma"]);
    Y5_CHECK(h["mixup"] == 0 && h["copy_paste"] == 0, "%s: mixup and copy_paste are not supported (set them to 0)",
             path.c_str());
    if (h.v.count("anchors"))
        Y5_CHECK(h["anchors"] >= 0 && h["anchors"] <= 100, "%s: anchors %g must be an anchor count per level (0: the "
                 "model yaml's)", path.c_str(), h["anchors"]);
    return h;
}

}  // namespace y5
