/*
 * Yaml files named on the command line as YOLOv5's scripts accept them. train.py's check_yaml finds a bare name
 * such as `yolov5n.yaml` among its own files; y5 looks in its config/ folders (config/models, config/hyps,
 * config/data), so `--cfg yolov5n.yaml --hyp hyp.scratch-low.yaml --data coco128.yaml` works as written in
 * YOLOv5's tutorials. And the console lines a YOLOv5 user looks for, formatted as train.py and val.py print them.
 */
#pragma once
#include <string>

#include "engine/app/hyp.h"

namespace y5 {

// A path that exists is returned as given. A bare name (no folder) that does not exist is looked up in
// config/<kind>/ under the working directory, then in the source tree's config/<kind>/ (where y5 was built).
// Anything else is a y5::Error naming the file and where it looked. kind: "models", "hyps" or "data"; what
// names the flag in the message ("--cfg").
std::string resolve_config(const std::string& name, const char* kind, const char* what);

// A double as Python's repr writes it (the shortest string that reads back: 0.01, 0.0005, 1e-05, 1.0).
std::string py_float(double v);

// train.py's first line: "hyperparameters: lr0=0.01, lrf=0.01, momentum=0.937, ..." in the hyp yaml's order of
// keys, each value as Python prints what yaml.safe_load read (an integer literal stays "3", a float is repr'd).
// color: the label in colorstr's blue bold (for a terminal).
std::string hyp_line(const std::string& hyp_path, const Hyp& hyp, bool color);

// val.py's rule for the per-class rows: (verbose or (nc < 50 and not training)) and nc > 1.
inline bool val_per_class_rows(bool verbose, int nc, bool training) {
    return (verbose || (nc < 50 && !training)) && nc > 1;
}

}  // namespace y5
