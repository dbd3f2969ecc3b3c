/*
 * Dataset scanning: data.yaml, image lists, verify_image_label's rules, the label cache.
 */
#include "engine/data/dataset.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <sstream>

#include "kernels/check.h"
#include "engine/core/threadpool.h"

namespace fs = std::filesystem;

namespace y5 {

static const char* kImageExts[] = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"};

static std::string lower_ext(const std::string& p) {
    std::string e = fs::path(p).extension().string();
    if (!e.empty() && e[0] == '.') e = e.substr(1);
    std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return (char)std::tolower(c); });
    return e;
}

static bool is_image(const std::string& p) {
    const std::string e = lower_ext(p);
    for (const char* x : kImageExts)
        if (e == x) return true;
    return false;
}

// ----------------------------------------------------------------------------------------------------
// data.yaml

DataConfig load_data_yaml(const std::string& path) {
    DataConfig d;
    d.yaml_path = path;
    Y5_CHECK(fs::is_regular_file(path), "%s: data yaml does not exist", path.c_str());
    YAML::Node y;
    try {
        y = YAML::LoadFile(path);
    } catch (const YAML::Exception& e) {
        Y5_FAIL("%s: line %d: malformed yaml: %s", path.c_str(), e.mark.line + 1, e.msg.c_str());
    }
    Y5_CHECK(y.IsMap(), "%s: not a data yaml (expected keys path, train, val, names)", path.c_str());
    for (const char* k : {"train", "val", "names"})
        Y5_CHECK(y[k] && !y[k].IsNull(), "%s: data.yaml '%s:' field missing", path.c_str(), k);

    const YAML::Node names = y["names"];
    if (names.IsSequence()) {
        for (const auto& n : names) d.names.push_back(n.as<std::string>());
    } else if (names.IsMap()) {
        std::map<int, std::string> m;
        for (auto it = names.begin(); it != names.end(); ++it) {
            int k = 0;
            try {
                k = it->first.as<int>();
            } catch (const YAML::Exception&) {
                Y5_FAIL("%s: line %d: names keys must be integers, i.e. 2: car", path.c_str(), it->first.Mark().line + 1);
            }
            m[k] = it->second.as<std::string>();
        }
        for (int i = 0; i < (int)m.size(); ++i) {
            Y5_CHECK(m.count(i), "%s: names has no entry for class %d (keys must be 0..%zu)", path.c_str(), i, m.size() - 1);
            d.names.push_back(m[i]);
        }
    } else {
        Y5_FAIL("%s: line %d: names must be a list or a map of class id to name", path.c_str(), names.Mark().line + 1);
    }
    d.nc = (int)d.names.size();
    Y5_CHECK(d.nc > 0, "%s: names is empty", path.c_str());
    if (y["nc"] && !y["nc"].IsNull()) {
        int nc = 0;
        try {
            nc = y["nc"].as<int>();
        } catch (const YAML::Exception&) {
            Y5_FAIL("%s: line %d: nc must be an integer", path.c_str(), y["nc"].Mark().line + 1);
        }
        Y5_CHECK(nc == d.nc, "%s: nc is %d but names lists %d classes", path.c_str(), nc, d.nc);
    }
    for (const char* k : {"train", "val", "test"}) {
        if (!y[k] || y[k].IsNull()) continue;
        std::vector<std::string>& src = d.splits[k];
        if (y[k].IsSequence())
            for (const auto& s : y[k]) src.push_back(s.as<std::string>());
        else
            src.push_back(y[k].as<std::string>());
    }

    // The root. A relative `path:` is read as YOLOv5 reads it (check_dataset: relative to its repo root; here
    // the working directory) when the train and val sources exist there, else relative to the yaml's folder
    // (y5's reading, so `path: .` beside the images works from anywhere); root_note says which. No `path:`:
    // the yaml's folder.
    const fs::path yaml_dir = fs::absolute(path).parent_path();
    fs::path root = yaml_dir;
    if (y["path"] && !y["path"].IsNull()) {
        const std::string text = y["path"].as<std::string>();
        const fs::path p = text;
        if (p.is_absolute()) {
            root = p;
        } else {
            auto has_sources = [&](const fs::path& r) {  // the folder and every relative train/val source in it
                if (!fs::is_directory(r)) return false;
                for (const char* k : {"train", "val"})
                    for (const std::string& s : d.splits[k])
                        if (!fs::path(s).is_absolute() && !fs::exists(r / s)) return false;
                return true;
            };
            const fs::path cwd_root = fs::absolute(p), yaml_root = yaml_dir / p;
            const bool in_cwd = has_sources(cwd_root), in_yaml = has_sources(yaml_root);
            root = in_cwd ? cwd_root : yaml_root;
            d.root_note = "data: path '" + text + "' is " + fs::weakly_canonical(root).string() +
                          (in_cwd    ? ", relative to the working directory (as YOLOv5 reads it)"
                           : in_yaml ? ", relative to the yaml's folder (its train/val are not under the working directory)"
                                     : ", relative to the yaml's folder (its train/val are not there nor under the "
                                       "working directory)");
        }
    }
    d.root = fs::weakly_canonical(root).string();
    for (auto& [k, src] : d.splits)
        for (std::string& s : src) {
            fs::path p = s;
            s = (p.is_absolute() ? p : fs::path(d.root) / p).lexically_normal().string();
        }
    return d;
}

// ----------------------------------------------------------------------------------------------------
// Image lists

std::string label_path_for(const std::string& image) {
    const std::string sa = "/images/", sb = "/labels/";
    std::string p = image;
    size_t k = p.rfind(sa);
    if (k != std::string::npos) p = p.substr(0, k) + sb + p.substr(k + sa.size());
    size_t dot = p.rfind('.');
    size_t slash = p.rfind('/');
    if (dot != std::string::npos && (slash == std::string::npos || dot > slash)) p = p.substr(0, dot);
    return p + ".txt";
}

std::vector<std::string> list_images(const std::vector<std::string>& sources) {
    std::vector<std::string> files;
    for (const std::string& s : sources) {
        if (fs::is_directory(s)) {
            for (const auto& e : fs::recursive_directory_iterator(s, fs::directory_options::follow_directory_symlink))
                if (e.is_regular_file()) files.push_back(e.path().string());
        } else if (fs::is_regular_file(s)) {
            std::ifstream in(s);
            const std::string parent = fs::path(s).parent_path().string() + "/";
            std::string line;
            while (std::getline(in, line)) {
                while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
                if (line.empty()) continue;
                if (line.rfind("./", 0) == 0) line = parent + line.substr(2);
                files.push_back(line);
            }
        } else {
            Y5_FAIL("%s does not exist", s.c_str());
        }
    }
    std::vector<std::string> out;
    for (std::string& f : files)
        if (is_image(f)) out.push_back(f);
    std::sort(out.begin(), out.end());
    Y5_CHECK(!out.empty(), "no images found in %s", sources.empty() ? "(no source)" : sources[0].c_str());
    return out;
}

// ----------------------------------------------------------------------------------------------------
// verify_image_label

namespace {

struct Verified {
    bool ok = false, background = false;
    int duplicates = 0;
    std::string warning;
};

bool jpeg_complete(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(-2, std::ios::end);
    char tail[2] = {0, 0};
    f.read(tail, 2);
    return f && (unsigned char)tail[0] == 0xFF && (unsigned char)tail[1] == 0xD9;
}

std::vector<std::string> split_ws(const std::string& s) {
    std::istringstream in(s);
    std::vector<std::string> t;
    std::string x;
    while (in >> x) t.push_back(x);
    return t;
}

Verified verify(ImageRecord& r) {
    Verified v;
    auto bad = [&](const std::string& why) {
        v.warning = "WARNING: " + r.image + ": ignoring corrupt image/label: " + why;
        return v;
    };
    std::error_code ec;
    const auto size = fs::file_size(r.image, ec);
    if (ec) return bad("cannot read the file");
    if (size == 0) return bad("empty file (0 bytes)");
    cv::Mat im = cv::imread(r.image, cv::IMREAD_COLOR);
    if (im.empty()) return bad("cannot decode the image (not an image, or an unsupported format)");
    const std::string ext = lower_ext(r.image);
    if ((ext == "jpg" || ext == "jpeg") && !jpeg_complete(r.image)) return bad("truncated JPEG (no end-of-image marker)");
    if (im.cols < 10 || im.rows < 10) return bad("image size " + std::to_string(im.cols) + "x" + std::to_string(im.rows) + " <10 pixels");
    r.width = im.cols;
    r.height = im.rows;

    std::ifstream lf(r.label);
    if (!lf) {
        v.ok = v.background = true;
        return v;
    }
    std::vector<std::vector<std::string>> rows;
    std::vector<int> lines;
    std::string line;
    for (int ln = 1; std::getline(lf, line); ++ln) {
        std::vector<std::string> t = split_ws(line);
        if (t.empty()) continue;
        rows.push_back(t);
        lines.push_back(ln);
    }
    bool segments = false;
    for (const auto& t : rows) segments = segments || t.size() > 6;
    std::vector<std::array<float, 5>> lb;
    for (size_t i = 0; i < rows.size(); ++i) {
        const std::string where = r.label + ":" + std::to_string(lines[i]) + ": ";
        std::vector<float> f;
        for (const std::string& s : rows[i]) {
            char* end = nullptr;
            float x = std::strtof(s.c_str(), &end);
            if (!end || *end) return bad(where + "'" + s + "' is not a number");
            f.push_back(x);
        }
        if (segments) {  // class, then polygon x y pairs: its bounding box (segments2boxes)
            if (f.size() < 3 || f.size() % 2 == 0) return bad(where + "a polygon needs a class and x y pairs");
            float x0 = 1e30f, y0 = 1e30f, x1 = -1e30f, y1 = -1e30f;
            for (size_t k = 1; k + 1 < f.size(); k += 2) {
                x0 = std::min(x0, f[k]), x1 = std::max(x1, f[k]);
                y0 = std::min(y0, f[k + 1]), y1 = std::max(y1, f[k + 1]);
            }
            f = {f[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0};
        } else if (f.size() != 5) {
            return bad(where + "labels require 5 columns, " + std::to_string(f.size()) + " columns detected");
        }
        for (int k = 0; k < 5; ++k) {
            if (!std::isfinite(f[k])) return bad(where + "non-finite label value " + rows[i][k]);
            if (f[k] < 0) return bad(where + "negative label value " + rows[i][k]);
            if (k > 0 && f[k] > 1) return bad(where + "non-normalized or out of bounds coordinate " + rows[i][k]);
        }
        if (f[0] != std::floor(f[0])) return bad(where + "class " + rows[i][0] + " is not an integer");
        lb.push_back({f[0], f[1], f[2], f[3], f[4]});
    }
    // np.unique(lb, axis=0): when rows repeat, the unique rows in sorted order
    std::vector<size_t> order(lb.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lb[a] < lb[b]; });
    std::vector<size_t> uniq;
    for (size_t k = 0; k < order.size(); ++k)
        if (k == 0 || lb[order[k]] != lb[order[k - 1]]) uniq.push_back(order[k]);
    if (uniq.size() < lb.size()) {
        v.duplicates = (int)(lb.size() - uniq.size());
        v.warning = "WARNING: " + r.image + ": " + std::to_string(v.duplicates) + " duplicate labels removed (" + r.label + ")";
    } else {
        uniq = std::vector<size_t>(order.size());
        for (size_t i = 0; i < uniq.size(); ++i) uniq[i] = i;
    }
    for (size_t i : uniq) {
        r.labels.push_back({lb[i][0], lb[i][1], lb[i][2], lb[i][3], lb[i][4]});
        r.label_lines.push_back(lines[i]);
    }
    v.ok = true;
    v.background = r.labels.empty();
    return v;
}

// ----------------------------------------------------------------------------------------------------
// Cache: magic, version, hash, then the records and the counts.

constexpr uint32_t kCacheMagic = 0x43354C59;  // "YL5C"
constexpr uint32_t kCacheVersion = 1;

uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

// Hash of every image and label path with its size (−1 when missing), as YOLOv5's get_hash does.
uint64_t dataset_hash(const std::vector<std::string>& images) {
    uint64_t h = 1469598103934665603ull;
    for (const std::string& im : images)
        for (const std::string& p : {im, label_path_for(im)}) {
            std::error_code ec;
            int64_t sz = (int64_t)fs::file_size(p, ec);
            if (ec) sz = -1;
            h = fnv1a(h, p.data(), p.size());
            h = fnv1a(h, &sz, sizeof sz);
        }
    return h;
}

template <class T> void put(std::ostream& o, const T& v) { o.write(reinterpret_cast<const char*>(&v), sizeof v); }
void put_str(std::ostream& o, const std::string& s) {
    put<uint32_t>(o, (uint32_t)s.size());
    o.write(s.data(), (std::streamsize)s.size());
}
template <class T> bool get(std::istream& i, T& v) { return (bool)i.read(reinterpret_cast<char*>(&v), sizeof v); }
bool get_str(std::istream& i, std::string& s) {
    uint32_t n = 0;
    if (!get(i, n) || n > (1u << 20)) return false;
    s.resize(n);
    return (bool)i.read(s.data(), n);
}

// Fills out only when the whole cache reads: a damaged one leaves out as it was, to be rescanned. Counts are
// checked against the bytes left, so a corrupt count cannot ask for more memory than the file could describe.
bool read_cache(const std::string& path, uint64_t hash, Dataset& out) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return false;
    const uint64_t size = (uint64_t)in.tellg();
    in.seekg(0);
    uint32_t magic = 0, version = 0;
    uint64_t h = 0, n = 0;
    if (!get(in, magic) || magic != kCacheMagic || !get(in, version) || version != kCacheVersion || !get(in, h) ||
        h != hash || !get(in, n) || n > size / 20)  // a record takes at least 20 bytes
        return false;
    Dataset d;
    d.records.resize(n);
    for (ImageRecord& r : d.records) {
        uint32_t nl = 0;
        if (!get_str(in, r.image) || !get_str(in, r.label) || !get(in, r.width) || !get(in, r.height) || !get(in, nl) ||
            nl > size / (sizeof(LabelRow) + 4))
            return false;
        r.labels.resize(nl);
        r.label_lines.resize(nl);
        for (uint32_t k = 0; k < nl; ++k)
            if (!get(in, r.labels[k]) || !get(in, r.label_lines[k])) return false;
    }
    uint32_t nw = 0;
    ScanStats& s = d.stats;
    if (!get(in, s.images) || !get(in, s.backgrounds) || !get(in, s.corrupt) || !get(in, s.duplicates_removed) ||
        !get(in, s.instances) || !get(in, nw) || nw > size / 4)
        return false;
    s.warnings.resize(nw);
    for (std::string& w : s.warnings)
        if (!get_str(in, w)) return false;
    s.from_cache = true;
    d.cache_path = out.cache_path;
    out = std::move(d);
    return true;
}

void write_cache(const std::string& path, uint64_t hash, const Dataset& d, ScanStats& s) {
    // A folder marked read-only is left alone even when the process could write it (root).
    std::error_code ec;
    const fs::perms pm = fs::status(fs::path(path).parent_path(), ec).permissions();
    if (ec || (pm & fs::perms::owner_write) == fs::perms::none) {
        s.warnings.push_back("WARNING: cache directory " + fs::path(path).parent_path().string() +
                             " is not writeable; the labels will be rescanned next time");
        return;
    }
    const std::string tmp = path + ".tmp";
    {
        std::ofstream o(tmp, std::ios::binary);
        if (!o) {
            s.warnings.push_back("WARNING: cache directory " + fs::path(path).parent_path().string() +
                                 " is not writeable; the labels will be rescanned next time");
            return;
        }
        put(o, kCacheMagic);
        put(o, kCacheVersion);
        put(o, hash);
        put<uint64_t>(o, d.records.size());
        for (const ImageRecord& r : d.records) {
            put_str(o, r.image);
            put_str(o, r.label);
            put(o, r.width);
            put(o, r.height);
            put<uint32_t>(o, (uint32_t)r.labels.size());
            for (size_t k = 0; k < r.labels.size(); ++k) {
                put(o, r.labels[k]);
                put(o, r.label_lines[k]);
            }
        }
        put(o, s.images);
        put(o, s.backgrounds);
        put(o, s.corrupt);
        put(o, s.duplicates_removed);
        put(o, s.instances);
        put<uint32_t>(o, (uint32_t)s.warnings.size());
        for (const std::string& w : s.warnings) put_str(o, w);
        if (!o) {
            std::remove(tmp.c_str());
            s.warnings.push_back("WARNING: could not write the label cache " + path);
            return;
        }
    }
    fs::rename(tmp, path, ec);
    if (ec) s.warnings.push_back("WARNING: could not write the label cache " + path + ": " + ec.message());
}

}  // namespace

Dataset scan_dataset(const std::vector<std::string>& sources, int threads, bool use_cache) {
    const std::vector<std::string> images = list_images(sources);
    Dataset d;
    const std::string first_label = label_path_for(images[0]);
    d.cache_path = fs::path(first_label).parent_path().string() + ".y5cache";
    const uint64_t hash = dataset_hash(images);
    if (use_cache && read_cache(d.cache_path, hash, d)) return d;

    std::vector<ImageRecord> recs(images.size());
    std::vector<Verified> ver(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
        recs[i].image = images[i];
        recs[i].label = label_path_for(images[i]);
    }
    ThreadPool pool(threads > 0 ? threads : 0);
    pool.parallel_for((int64_t)images.size(), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) ver[i] = verify(recs[i]);
    });
    ScanStats& s = d.stats;
    for (size_t i = 0; i < images.size(); ++i) {
        if (!ver[i].warning.empty()) s.warnings.push_back(ver[i].warning);
        if (!ver[i].ok) {
            ++s.corrupt;
            continue;
        }
        ++s.images;
        s.backgrounds += ver[i].background;
        s.duplicates_removed += ver[i].duplicates;
        s.instances += (int64_t)recs[i].labels.size();
        d.records.push_back(std::move(recs[i]));
    }
    Y5_CHECK(!d.records.empty(), "%s: no usable images (%d corrupt)", sources[0].c_str(), s.corrupt);
    if (use_cache) write_cache(d.cache_path, hash, d, s);
    return d;
}

// Class ids are compared as floats: a label file's id is any integer value (1e30 passes verify's rules) and a
// damaged cache's any float, neither always an int. Negative or NaN ids (a damaged cache) are reported too.
std::vector<std::string> check_classes(const Dataset& d, int nc) {
    std::vector<std::string> bad;
    for (const ImageRecord& r : d.records)
        for (size_t k = 0; k < r.labels.size(); ++k)
            if (!(r.labels[k].cls >= 0 && r.labels[k].cls < (float)nc)) {
                char cls[48];
                std::snprintf(cls, sizeof cls, "%.0f", r.labels[k].cls);
                bad.push_back(r.label + ":" + std::to_string(r.label_lines[k]) + ": class " + cls + " exceeds nc=" +
                              std::to_string(nc));
            }
    return bad;
}

std::vector<int64_t> class_counts(const Dataset& d, int nc) {
    std::vector<int64_t> c(nc, 0);
    for (const ImageRecord& r : d.records)
        for (const LabelRow& l : r.labels)
            if (l.cls >= 0 && l.cls < (float)nc) c[(int)l.cls]++;
    return c;
}

}  // namespace y5
