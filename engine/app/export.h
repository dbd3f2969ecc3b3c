/*
 * Export (YOLOv5 export.py's --include onnx and the weights it strips): a fused model as an ONNX graph, written
 * with the ONNX library's protobuf classes (Debian's libonnx-dev), and its weights as a y5 .safetensors.
 * The ONNX graph is export.py's for the same model at opset 12: input `images` (N, 3, H, W), output `output0`
 * (N, Σ na·ny·nx, 5+nc), the decoded predictions y5's eval forward gives (Model::Output::decoded, what NMS
 * reads); metadata_props `stride` (the largest, an int as text) and `names` (a Python dict's repr). Each row of
 * the model becomes the ONNX nodes that compute what y5 computes, in the same order of float operations where
 * ONNX has one: Conv with the folded bias, SiLU as Sigmoid + Mul, MaxPool, Concat, Resize (nearest, asymmetric,
 * floor: torch's nn.Upsample), Add, ECA as GlobalAveragePool → Reshape → Conv (k × 1 over the channels) →
 * Sigmoid → Mul, and Detect's decode with the grid and anchor grid as initializers (dynamic shapes: computed
 * from the map's shape with Range).
 * Built only when CMake finds ONNX (Y5_ONNX); y5export and tests/test_export.cpp use it.
 */
#pragma once
#include <string>

#include "layers/model.h"

namespace y5 {

struct OnnxOptions {
    int height = 640, width = 640;  // multiples of the model's largest stride
    int batch = 1;
    bool dynamic = false;           // axes batch/height/width of images, batch/anchors of output0, as export.py
    bool half = false;              // f16 initializers, input and output (export.py's --half)
    int opset = 12;
};

// Writes model (fused: Model::fuse(), on the CPU, f32) as ONNX to path; the `names` metadata are its class_names
// (none: class0, class1, ... as YOLOv5 names a model without any).
void export_onnx(const Model& model, const std::string& path, const OnnxOptions& opt);

// The model's weights (its state_dict, BatchNorms unfolded: what y5val and y5detect load) as a y5 .safetensors,
// f32, or f16 with half; metadata: the model yaml, nc and the class names, as y5train writes them.
void export_safetensors(const Model& model, const std::string& path, bool half);

// Python's repr of {0: 'person', 1: 'bicycle', ...}, export.py's `names` metadata.
std::string names_repr(const Model& model);

}  // namespace y5
