/*
 * libFuzzer harness: a PyTorch checkpoint (engine/core/torch_pt.h): the zip (libzip) and the restricted
 * unpickler of its data.pkl. An input that starts with a zip signature ("PK\3\4") is the whole .pt file; any
 * other input is a data.pkl, which the harness packs into a torch.save-like zip (archive/data.pkl, byteorder,
 * storages archive/data/0..3 of 64 bytes each), so the fuzzer reaches the unpickler without having to forge
 * zip headers and CRCs. After a successful open every tensor in the tree is read as f32 and f64, as
 * Model::from_weights does.
 *   tools/fuzz.sh torch_pt         (corpus: fuzz/corpus/torch_pt: tiny checkpoints and pickles, fuzz/make_pt_seeds.py)
 */
#include <zip.h>

#include <set>

#include "engine/core/torch_pt.h"
#include "fuzz/fuzz.h"

namespace {

// Packs data.pkl into a zip as torch.save lays it out (entries stored uncompressed).
void write_pt(const std::string& path, const uint8_t* pkl, size_t size) {
    std::filesystem::remove(path);
    int err = 0;
    zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    y5_fuzz_require(z, "zip_open for writing");
    static const uint8_t storage[64] = {0, 60, 0, 64, 0, 188, 102, 70, 0, 0, 128, 63, 0, 0, 0, 192};
    auto add = [&](const std::string& name, const void* p, size_t n) {
        zip_source_t* s = zip_source_buffer(z, p, n, 0);
        y5_fuzz_require(s && zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE) >= 0, "zip_file_add");
    };
    add("archive/data.pkl", pkl, size);
    add("archive/byteorder", "little", 6);
    for (const char* k : {"0", "1", "2", "3"}) add(std::string("archive/data/") + k, storage, sizeof storage);
    y5_fuzz_require(zip_close(z) == 0, "zip_close");
}

// Every tensor reachable from o, each object once.
void tensors(const y5::PyObj& o, std::set<const y5::PyObj*>& seen, std::vector<const y5::PyObj*>& out) {
    if (!seen.insert(&o).second) return;
    if (o.is(y5::PyObj::Tensor)) out.push_back(&o);
    for (const auto& x : o.items) tensors(*x, seen, out);
    for (const auto& kv : o.dict) {
        tensors(*kv.first, seen, out);
        tensors(*kv.second, seen, out);
    }
    if (o.state) tensors(*o.state, seen, out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = y5_fuzz_dir() + "/in.pt";
    if (size >= 4 && data[0] == 'P' && data[1] == 'K' && data[2] == 3 && data[3] == 4)
        y5_fuzz_write(path, data, size);
    else
        write_pt(path, data, size);
    try {
        y5::TorchPtFile f(path);
        std::set<const y5::PyObj*> seen;
        std::vector<const y5::PyObj*> ts;
        tensors(f.root(), seen, ts);
        for (const y5::PyObj* t : ts) {
            try {
                f.read_f32(*t);
                f.read_f64(*t);
            } catch (const std::exception&) {
            }
        }
    } catch (const std::exception&) {
    }
    return 0;
}
