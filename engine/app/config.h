/*
 * Yaml files named on the command line as YOLOv5's scripts accept them. train.py's check_yaml finds a bare name
 * such as `yolov5n.yaml` among its own files; y5 looks in its config/ folders (config/models, config/hyps,
 * config/data), so `--cfg yolov5n.yaml --hyp hyp.scratch-low.yaml --data coco128.yaml` works as written in
 * YOLOv5's tutorials.
 */
#pragma once
#include <string>

namespace y5 {

// A path that exists is returned as given. A bare name (no folder) that does not exist is looked up in
// config/<kind>/ under the working directory, then in the source tree's config/<kind>/ (where y5 was built).
// Anything else is a y5::Error naming the file and where it looked. kind: "models", "hyps" or "data"; what
// names the flag in the message ("--cfg").
std::string resolve_config(const std::string& name, const char* kind, const char* what);

}  // namespace y5
