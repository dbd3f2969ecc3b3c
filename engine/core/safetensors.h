/*
 * safetensors files (https://github.com/huggingface/safetensors): 8-byte little-endian header length,
 * a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw little-endian
 * data. y5 weights and checkpoints use it with PyTorch state_dict names ("model.0.conv.weight", ...), so PyTorch users
 * open them with the safetensors package and y5 reads fixtures written by torch.
 * Reading accepts F16/BF16/F32/F64 floats and I64/I32 integers; every error names the file.
 * Writing goes to "<path>.tmp" and is renamed over <path>, so a crash never leaves a half-written file.
 */
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/core/tensor.h"

namespace y5 {

struct SafeEntry {
    std::string dtype;           // "F32", "F16", ...
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;   // byte offsets into the data section
    int64_t numel() const;
};

class SafeTensorsFile {
public:
    explicit SafeTensorsFile(const std::string& path);

    const std::string& path() const { return path_; }
    bool has(const std::string& name) const { return entries_.count(name) != 0; }
    const SafeEntry& entry(const std::string& name) const;
    std::vector<std::string> names() const;  // sorted
    const std::map<std::string, std::string>& metadata() const { return meta_; }

    // The tensor converted to float / double; `expect` (if given) must equal its shape.
    std::vector<float> read_f32(const std::string& name, const Shape* expect = nullptr) const;
    std::vector<double> read_f64(const std::string& name, const Shape* expect = nullptr) const;
    Shape shape(const std::string& name) const;

private:
    template <class T> std::vector<T> read(const std::string& name, const Shape* expect) const;
    std::string path_;
    std::vector<uint8_t> data_;
    std::map<std::string, SafeEntry> entries_;
    std::map<std::string, std::string> meta_;
};

struct SaveItem {
    std::string name;
    Tensor tensor;  // CPU, f32 or f64
};

void save_safetensors(const std::string& path, const std::vector<SaveItem>& items,
                      const std::map<std::string, std::string>& metadata);

// save_safetensors in two halves: the whole file in memory (a copy of the tensors, so they may change after it
// returns; `path` only names the file in errors), then the same bytes written to each of `paths` (each through
// "<path>.tmp" and a rename; the later paths are hard links to the first's file where the filesystem has them,
// one write for all, and written again where it has not). y5train's checkpoints: serialised between steps,
// written by a background thread while training goes on.
std::vector<char> safetensors_bytes(const std::vector<SaveItem>& items, const std::map<std::string, std::string>& metadata,
                                    const std::string& path);
void write_files_atomic(const std::vector<std::string>& paths, const std::vector<char>& bytes);

float half_to_float(uint16_t h);

}  // namespace y5
