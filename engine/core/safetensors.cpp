#include "engine/core/safetensors.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unistd.h>

namespace y5 {

using json = nlohmann::json;

int64_t SafeEntry::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

static size_t elem_size(const std::string& dt) {
    if (dt == "F64" || dt == "I64") return 8;
    if (dt == "F32" || dt == "I32") return 4;
    if (dt == "F16" || dt == "BF16" || dt == "I16") return 2;
    if (dt == "U8" || dt == "I8" || dt == "BOOL") return 1;
    return 0;
}

float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign;  // ±0
    else {                            // subnormal: normalise
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    Y5_CHECK(in, "%s: cannot open file", path.c_str());
    in.seekg(0, std::ios::end);
    const size_t size = (size_t)in.tellg();
    in.seekg(0);
    Y5_CHECK(size >= 8, "%s: not a safetensors file (%zu bytes)", path.c_str(), size);
    uint64_t hlen = 0;
    in.read(reinterpret_cast<char*>(&hlen), 8);
    Y5_CHECK(hlen <= size - 8, "%s: header length %llu exceeds the file size %zu (truncated or not safetensors)",
             path.c_str(), (unsigned long long)hlen, size);
    std::string header(hlen, '\0');
    in.read(header.data(), (std::streamsize)hlen);
    data_.resize(size - 8 - hlen);
    in.read(reinterpret_cast<char*>(data_.data()), (std::streamsize)data_.size());
    Y5_CHECK(in, "%s: read failed", path.c_str());

    json j;
    try {
        j = json::parse(header);
    } catch (const std::exception& e) {
        Y5_FAIL("%s: malformed safetensors header: %s", path.c_str(), e.what());
    }
    Y5_CHECK(j.is_object(), "%s: safetensors header is not a JSON object", path.c_str());
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "__metadata__") {
            for (auto m = it.value().begin(); m != it.value().end(); ++m)
                meta_[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
            continue;
        }
        const json& v = it.value();
        SafeEntry e;
        try {
            e.dtype = v.at("dtype").get<std::string>();
            e.shape = v.at("shape").get<std::vector<int64_t>>();
            e.begin = v.at("data_offsets").at(0).get<size_t>();
            e.end = v.at("data_offsets").at(1).get<size_t>();
        } catch (const std::exception& ex) {
            Y5_FAIL("%s: tensor '%s' has a malformed header entry: %s", path.c_str(), it.key().c_str(), ex.what());
        }
        const size_t es = elem_size(e.dtype);
        Y5_CHECK(es, "%s: tensor '%s' has unsupported dtype %s", path.c_str(), it.key().c_str(), e.dtype.c_str());
        // No negative size and no more elements than the data section has bytes, overflow-checked as the numbers
        // come from the file (a wrapped product could otherwise match the offsets).
        int64_t n = 1;
        bool sizes_ok = true;
        for (int64_t d : e.shape)
            sizes_ok = sizes_ok && d >= 0 && !__builtin_mul_overflow(n, d, &n) && (uint64_t)n <= data_.size();
        Y5_CHECK(sizes_ok, "%s: tensor '%s' has a negative size or more elements than the file holds", path.c_str(),
                 it.key().c_str());
        Y5_CHECK(e.begin <= e.end && e.end <= data_.size() && e.end - e.begin == e.numel() * es,
                 "%s: tensor '%s' has data offsets [%zu, %zu) inconsistent with its shape or the file size %zu",
                 path.c_str(), it.key().c_str(), e.begin, e.end, data_.size());
        entries_[it.key()] = e;
    }
}

const SafeEntry& SafeTensorsFile::entry(const std::string& name) const {
    auto it = entries_.find(name);
    Y5_CHECK(it != entries_.end(), "%s: no tensor named '%s'", path_.c_str(), name.c_str());
    return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
    std::vector<std::string> v;
    for (auto& kv : entries_) v.push_back(kv.first);
    return v;
}

Shape SafeTensorsFile::shape(const std::string& name) const {
    const SafeEntry& e = entry(name);
    Y5_CHECK((int)e.shape.size() <= kMaxDims, "%s: tensor '%s' has rank %zu", path_.c_str(), name.c_str(),
             e.shape.size());
    Shape s;
    for (int64_t d : e.shape) s.d[s.ndim++] = d;
    return s;
}

template <class T> static std::vector<T> convert(const SafeEntry& e, const uint8_t* p) {
    const int64_t n = e.numel();
    std::vector<T> out(n);
    for (int64_t i = 0; i < n; ++i) {
        if (e.dtype == "F32") {
            float f;
            std::memcpy(&f, p + 4 * i, 4);
            out[i] = (T)f;
        } else if (e.dtype == "F64") {
            double d;
            std::memcpy(&d, p + 8 * i, 8);
            out[i] = (T)d;
        } else if (e.dtype == "F16") {
            uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            out[i] = (T)half_to_float(h);
        } else if (e.dtype == "BF16") {
            uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            out[i] = (T)f;
        } else if (e.dtype == "I64") {
            int64_t v;
            std::memcpy(&v, p + 8 * i, 8);
            out[i] = (T)v;
        } else if (e.dtype == "U8" || e.dtype == "BOOL") {
            out[i] = (T)p[i];
        } else if (e.dtype == "I32") {
            int32_t v;
            std::memcpy(&v, p + 4 * i, 4);
            out[i] = (T)v;
        } else {
            Y5_FAIL("cannot convert dtype %s to floating point", e.dtype.c_str());
        }
    }
    return out;
}

template <class T> std::vector<T> SafeTensorsFile::read(const std::string& name, const Shape* expect) const {
    if (expect)
        Y5_CHECK(shape(name) == *expect, "%s: tensor '%s' has shape %s, expected %s", path_.c_str(), name.c_str(),
                 shape(name).str().c_str(), expect->str().c_str());
    const SafeEntry& e = entry(name);
    return convert<T>(e, data_.data() + e.begin);
}

std::vector<float> SafeTensorsFile::read_f32(const std::string& name, const Shape* expect) const {
    return read<float>(name, expect);
}

std::vector<double> SafeTensorsFile::read_f64(const std::string& name, const Shape* expect) const {
    return read<double>(name, expect);
}

std::vector<char> safetensors_bytes(const std::vector<SaveItem>& items, const std::map<std::string, std::string>& metadata,
                                    const std::string& path) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    size_t off = 0;
    for (const SaveItem& it : items) {
        Y5_CHECK(it.tensor.device == Device::CPU, "save %s: tensor '%s' is not on the host", path.c_str(),
                 it.name.c_str());
        Y5_CHECK(it.tensor.dtype == DType::F32 || it.tensor.dtype == DType::F64, "save %s: tensor '%s' is %s",
                 path.c_str(), it.name.c_str(), dtype_name(it.tensor.dtype));
        std::vector<int64_t> shape(it.tensor.shape.d, it.tensor.shape.d + it.tensor.ndim());
        header[it.name] = {{"dtype", it.tensor.dtype == DType::F32 ? "F32" : "F64"},
                           {"shape", shape},
                           {"data_offsets", {off, off + it.tensor.bytes()}}};
        off += it.tensor.bytes();
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
    std::vector<char> out(8 + h.size() + off);
    const uint64_t hlen = h.size();  // little-endian, as every platform y5 builds for
    std::memcpy(out.data(), &hlen, 8);
    std::memcpy(out.data() + 8, h.data(), h.size());
    char* d = out.data() + 8 + h.size();
    for (const SaveItem& it : items) {
        std::memcpy(d, it.tensor.data, it.tensor.bytes());
        d += it.tensor.bytes();
    }
    return out;
}

namespace {
// bytes into path + ".tmp" (not renamed); the tmp file is removed on failure.
void write_tmp(const std::string& path, const std::vector<char>& bytes) {
    const std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    Y5_CHECK(f, "%s: cannot open for writing", tmp.c_str());
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = (std::fflush(f) == 0) && ok;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) {
        std::remove(tmp.c_str());
        Y5_FAIL("%s: write failed (disk full?); the previous file, if any, is untouched", path.c_str());
    }
}
}  // namespace

void write_files_atomic(const std::vector<std::string>& paths, const std::vector<char>& bytes) {
    if (paths.empty()) return;
    std::vector<std::string> made;  // the temporary files so far, removed when a later one fails
    try {
        write_tmp(paths[0], bytes);
        const std::string first = paths[0] + ".tmp";
        made.push_back(first);
        for (size_t i = 1; i < paths.size(); ++i) {
            const std::string tmp = paths[i] + ".tmp";
            std::remove(tmp.c_str());  // a stale one from a killed run would make link() fail
            if (::link(first.c_str(), tmp.c_str()) != 0) write_tmp(paths[i], bytes);  // no hard links here: write it
            made.push_back(tmp);
        }
    } catch (...) {
        for (const std::string& m : made) std::remove(m.c_str());
        throw;
    }
    for (const std::string& p : paths)
        Y5_CHECK(std::rename((p + ".tmp").c_str(), p.c_str()) == 0, "%s: cannot rename %s.tmp over it", p.c_str(), p.c_str());
}

void save_safetensors(const std::string& path, const std::vector<SaveItem>& items,
                      const std::map<std::string, std::string>& metadata) {
    write_files_atomic({path}, safetensors_bytes(items, metadata, path));
}

}  // namespace y5
