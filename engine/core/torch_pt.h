/*
 * PyTorch checkpoints (torch.save's zip format, PyTorch >= 1.6) read in C++, with no Python. The zip (libzip)
 * holds <archive>/data.pkl, the pickle of the saved object, and <archive>/data/<key>, the raw little-endian
 * bytes of each storage. A restricted unpickler turns data.pkl into a tree of PyObj and never imports or calls
 * anything: a GLOBAL is only a name, checked against an allow-list (OrderedDict and set, torch's tensor
 * rebuilders and storage types, torch.nn module classes, YOLOv5's models.* classes, and the argparse, pathlib,
 * numpy and _codecs data objects of train.py's extra keys); any other global is an error naming it. An object
 * is its class name with its constructor arguments and the state BUILD gives it, so an nn.Module is an
 * Object whose state holds its _parameters, _buffers and _modules. Opcodes: the binary ones of pickle
 * protocols 0-2 (what torch.save writes); any other is an error naming it and its byte offset.
 * Every error names the file and is one line.
 */
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

struct zip;  // libzip's archive handle

namespace y5 {

struct PyObj;
using PyRef = std::shared_ptr<PyObj>;

struct PyObj {
    enum Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Set, Dict, Global, Object, Storage, Tensor };
    Kind kind = None;
    int64_t i = 0;                              // Bool, Int
    double f = 0;                               // Float
    std::string s;                              // Str, Bytes; Global and Object: the class, "module.name"
    std::vector<PyRef> items;                   // Tuple, List, Set; Object: the constructor's arguments
    std::vector<std::pair<PyRef, PyRef>> dict;  // Dict, in insertion order
    PyRef state;                                // Object: what BUILD set (a module's __dict__), or null
    // Storage: key ("<archive>/data/<key>"), dtype and numel. Tensor: its storage's, with offset, shape, strides
    // in elements.
    std::string key, dtype;                     // dtype: "F16", "BF16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
    int64_t storage_numel = 0, offset = 0;
    std::vector<int64_t> shape, stride;
    int depth = 1;                              // nesting, bounded so a hostile pickle cannot overflow the stack

    // A Dict's value under a string key (for an Object, its state's), or nullptr.
    const PyObj* get(const std::string& k) const;
    bool is(Kind k) const { return kind == k; }
    int64_t numel() const;                      // Tensor
    std::string describe() const;               // for messages: "a list", "an object models.yolo.DetectionModel"
};

class TorchPtFile {
public:
    explicit TorchPtFile(const std::string& path);
    ~TorchPtFile();
    TorchPtFile(const TorchPtFile&) = delete;
    TorchPtFile& operator=(const TorchPtFile&) = delete;

    const std::string& path() const { return path_; }
    const PyObj& root() const { return *root_; }
    // A Tensor's elements in row-major order, converted (F16, BF16, F32, F64 storages; any strides).
    std::vector<float> read_f32(const PyObj& tensor) const;
    std::vector<double> read_f64(const PyObj& tensor) const;

private:
    std::vector<uint8_t> entry(const std::string& name) const;  // a zip entry's bytes, CRC checked
    std::string path_, prefix_;                                 // prefix_: "<archive>/"
    zip* zip_ = nullptr;
    PyRef root_;
};

}  // namespace y5
