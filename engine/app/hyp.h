/*
 * Training hyperparameters: a YOLOv5 hyp yaml (config/hyps/hyp.scratch-low.yaml). Every key YOLOv5 reads
 * is required; an unknown key or a non-number is an error naming the file and line. `anchors` (optional, as
 * train.py's hyp.get('anchors')): that many placeholder anchors per level, refitted by AutoAnchor.
 */
#pragma once
#include <map>
#include <string>

namespace y5 {

struct Hyp {
    std::map<std::string, double> v;  // in the yaml's order of keys is not kept; names as in YOLOv5
    double operator[](const std::string& k) const;
    std::string yaml() const;  // written to runs/train/expN/hyp.yaml
};

Hyp load_hyp(const std::string& path);

}  // namespace y5
