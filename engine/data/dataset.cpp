/*
 * Dataset scanning: data.yaml, image lists, verify_image_label's rules, the label cache.
 */
#include "engine/data/dataset.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <csetjmp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <set>
#include <sstream>

#include <jpeglib.h>

#include "kernels/check.h"
#include "engine/core/threadpool.h"
#include "engine/data/download.h"

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
    fs::path root = yaml_dir, download_root = yaml_dir;  // download_root: where a download's folder must appear
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
            download_root = cwd_root;
            const bool in_cwd = has_sources(cwd_root), in_yaml = has_sources(yaml_root);
            root = in_cwd ? cwd_root : yaml_root;
            d.root_note = "data: path '" + text + "' is " + fs::weakly_canonical(root).string() +
                          (in_cwd    ? ", relative to the working directory (as YOLOv5 reads it)"
                           : in_yaml ? ", relative to the yaml's folder (its train/val are not under the working directory)"
                                     : ", relative to the yaml's folder (its train/val are not there nor under the "
                                       "working directory)");
        }
    }
    if (y["path"] && !y["path"].IsNull() && fs::path(y["path"].as<std::string>()).is_absolute()) download_root = root;
    // Missing val sources (check_dataset looks at val only) and a `download:` URL: check_dataset's download into the
    // datasets folder (the parent of `path`, read as YOLOv5 reads it), then the sources are looked for there.
    std::vector<std::string> missing;
    for (const char* k : {"val"})
        for (const std::string& s : d.splits[k])
            if (!fs::exists(fs::path(s).is_absolute() ? fs::path(s) : root / s)) missing.push_back((root / s).string());
    if (!missing.empty() && y["download"] && y["download"].IsScalar()) {
        std::string list;
        for (const std::string& m : missing) list += (list.empty() ? "'" : ", '") + m + "'";
        std::printf("\nDataset not found ⚠️, missing paths [%s]\n", list.c_str());
        download_dataset(path, y["download"].as<std::string>(), download_root.parent_path().string());
        root = download_root;
        d.root_note = "data: path is " + fs::weakly_canonical(root).string() + ", downloaded from " +
                      y["download"].as<std::string>();
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

// Files under dir as YOLOv5 lists them, Python's glob('dir/**/*.*', recursive=True): names starting with '.' are
// skipped (files and folders), as is an unreadable folder; each real folder is listed once, so a symlink loop
// (which glob follows until the kernel's symlink limit, listing the same files again at every level) ends here.
static void glob_files(const fs::path& dir, std::set<std::string>& seen, std::vector<std::string>& out) {
    std::error_code ec;
    const fs::path real = fs::canonical(dir, ec);
    if (ec || !seen.insert(real.string()).second) return;
    fs::directory_iterator it(dir, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
        const fs::path p = it->path();
        const std::string name = p.filename().string();
        if (name.empty() || name[0] == '.') continue;
        std::error_code e2;
        if (name.find('.') != std::string::npos) out.push_back(p.string());  // a folder named x.jpg too, as glob
        if (it->is_directory(e2)) glob_files(p, seen, out);
    }
}

std::vector<std::string> list_images(const std::vector<std::string>& sources) {
    std::vector<std::string> files;
    for (const std::string& s : sources) {
        if (fs::is_directory(s)) {
            std::set<std::string> seen;
            glob_files(s, seen, files);
        } else if (fs::is_regular_file(s)) {
            std::ifstream in(s);
            Y5_CHECK(in, "%s: cannot read the image list: %s", s.c_str(), std::strerror(errno));
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

// PIL's decompression-bomb limit: Image.open refuses more than 2 × MAX_IMAGE_PIXELS (89478485) pixels.
constexpr int64_t kBombPixels = 2 * 89478485LL;

// The file's first bytes (enough for the headers read below).
std::string head_bytes(const std::string& path, size_t n) {
    std::ifstream f(path, std::ios::binary);
    std::string b(n, '\0');
    f.read(b.data(), (std::streamsize)n);
    b.resize((size_t)std::max<std::streamsize>(f.gcount(), 0));
    return b;
}

// Width × height as the PNG, JPEG or BMP header declares it (−1: another format or no size found), read before
// decoding so that a decompression bomb is refused as PIL refuses it, without allocating its pixels.
int64_t header_pixels(const std::string& b) {
    auto u8 = [&](size_t i) { return (int64_t)(unsigned char)b[i]; };
    auto be32 = [&](size_t i) { return u8(i) << 24 | u8(i + 1) << 16 | u8(i + 2) << 8 | u8(i + 3); };
    auto le32 = [&](size_t i) { return (int64_t)(int32_t)(uint32_t)(u8(i) | u8(i + 1) << 8 | u8(i + 2) << 16 | u8(i + 3) << 24); };
    if (b.size() >= 24 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) return be32(16) * be32(20);
    if (b.size() >= 26 && b[0] == 'B' && b[1] == 'M') return std::abs(le32(18)) * std::abs(le32(22));
    if (b.size() >= 4 && u8(0) == 0xFF && u8(1) == 0xD8) {  // markers up to the first SOFn (height, width at +5)
        for (size_t i = 2; i + 9 < b.size();) {
            if (u8(i) != 0xFF) return -1;
            const int64_t m = u8(i + 1), len = u8(i + 2) << 8 | u8(i + 3);
            if (m == 0xFF) { ++i; continue; }
            if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)
                return (u8(i + 5) << 8 | u8(i + 6)) * (u8(i + 7) << 8 | u8(i + 8));
            i += 2 + (size_t)len;
        }
    }
    return -1;
}

// Whether a JPEG's every scanline decodes from the bytes the file has, as PIL loads it: PIL feeds libjpeg through
// a suspending source and, at the end of the file, calls the image truncated if the decoder still wants data
// before its last scanline (it ignores what jpeg_finish_decompress wants, so a missing FFD9 alone may pass). The
// same source here: fill_input_buffer suspends. A file cut inside its scan, or one whose last Huffman codes need
// look-ahead bytes past the end, is incomplete. Agrees with YOLOv5's verify_image_label on 768 cut and padded
// COCO128 files (1–6 bytes cut, FFD9 + garbage appended), 144 kept. false on any libjpeg error too.
struct JpegError {
    jpeg_error_mgr pub;
    std::jmp_buf jump;
};
static void jpeg_on_error(j_common_ptr c) { std::longjmp(((JpegError*)c->err)->jump, 1); }
static void jpeg_quiet(j_common_ptr, int) {}
static void jpeg_src_init(j_decompress_ptr) {}
static boolean jpeg_src_suspend(j_decompress_ptr) { return FALSE; }
static void jpeg_src_skip(j_decompress_ptr c, long n) {
    const size_t k = n <= 0 ? 0 : std::min((size_t)n, c->src->bytes_in_buffer);
    c->src->next_input_byte += k;
    c->src->bytes_in_buffer -= k;
}
static void jpeg_src_term(j_decompress_ptr) {}

bool jpeg_scan_complete(const std::string& bytes) {
    jpeg_decompress_struct c;
    JpegError err;
    jpeg_source_mgr src{};
    std::vector<JSAMPLE> row;
    c.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_quiet;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&c);
        return false;
    }
    jpeg_create_decompress(&c);
    src.init_source = jpeg_src_init;
    src.fill_input_buffer = jpeg_src_suspend;
    src.skip_input_data = jpeg_src_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = jpeg_src_term;
    src.next_input_byte = (const JOCTET*)bytes.data();
    src.bytes_in_buffer = bytes.size();
    c.src = &src;
    bool done = false;
    if (jpeg_read_header(&c, TRUE) == JPEG_HEADER_OK && jpeg_start_decompress(&c)) {
        row.resize((size_t)c.output_width * (size_t)c.output_components);
        JSAMPROW p = row.data();
        while (c.output_scanline < c.output_height && jpeg_read_scanlines(&c, &p, 1) == 1) {}
        done = c.output_scanline == c.output_height;
    }
    jpeg_destroy_decompress(&c);
    return done;
}

// YOLOv5's restore: the decoded image (EXIF orientation applied; OpenCV's imread does that) saved as JPEG at
// quality 100 with 4:4:4 sampling (PIL's subsampling=0), written to a temporary file and renamed over the image.
// The empty string, or what failed.
std::string jpeg_restore(const std::string& path, const cv::Mat& bgr) {
    const std::string tmp = path + ".y5tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return std::string("cannot write ") + tmp + ": " + std::strerror(errno);
    jpeg_compress_struct c;
    JpegError err;
    std::vector<JSAMPLE> row((size_t)bgr.cols * 3);
    c.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_on_error;
    err.pub.emit_message = jpeg_quiet;
    if (setjmp(err.jump)) {
        jpeg_destroy_compress(&c);
        std::fclose(f);
        std::remove(tmp.c_str());
        return "libjpeg could not encode it";
    }
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)bgr.cols;
    c.image_height = (JDIMENSION)bgr.rows;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 100, TRUE);
    for (int i = 0; i < c.num_components; ++i) c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        const unsigned char* s = bgr.ptr<unsigned char>((int)c.next_scanline);
        for (int x = 0; x < bgr.cols; ++x) row[3 * x] = s[3 * x + 2], row[3 * x + 1] = s[3 * x + 1], row[3 * x + 2] = s[3 * x];
        JSAMPROW p = row.data();
        jpeg_write_scanlines(&c, &p, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    const bool ok = std::fflush(f) == 0 && !std::ferror(f);
    std::fclose(f);
    std::error_code ec;
    if (ok) fs::rename(tmp, path, ec);
    if (!ok || ec) {
        std::remove(tmp.c_str());
        return "cannot write " + path + (ec ? ": " + ec.message() : "");
    }
    return "";
}

// Python's str.isspace / str.splitlines characters (a label file is read as UTF-8 text and split with them).
bool py_space(char32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}
bool py_line_break(char32_t c) {
    return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 || c == 0x2028 ||
           c == 0x2029;
}

// Strict UTF-8 as Python's decoder: false, with the offending byte and its offset, on any invalid sequence.
bool utf8_decode(const std::string& in, std::u32string& out, size_t& bad_at) {
    for (size_t i = 0; i < in.size();) {
        const unsigned char c = (unsigned char)in[i];
        int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
        char32_t cp = n == 0 ? c : n == 1 ? c & 0x1f : n == 2 ? c & 0x0f : c & 0x07;
        bool ok = n >= 0 && i + n < in.size() + (n == 0);
        for (int k = 1; ok && k <= n; ++k) {
            const unsigned char d = (unsigned char)in[i + k];
            ok = (d & 0xc0) == 0x80;
            cp = cp << 6 | (d & 0x3f);
        }
        ok = ok && !(n == 1 && cp < 0x80) && !(n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) &&
             !(n == 3 && (cp < 0x10000 || cp > 0x10ffff));
        if (!ok) {
            bad_at = i;
            return false;
        }
        out += cp;
        i += (size_t)n + 1;
    }
    return true;
}

// Python's float(): [sign] digits with single '_' between them, an optional fraction and exponent, or
// inf/infinity/nan in any case; hexadecimal, 'nan(...)' and other forms strtod takes are not numbers. ASCII
// digits only (Python also takes other scripts' decimal digits).
bool py_float(const std::u32string& t, float& out) {
    std::string s;
    for (char32_t c : t) {
        if (c > 127) return false;
        s += (char)c;
    }
    size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
    std::string word = s.substr(i);
    std::transform(word.begin(), word.end(), word.begin(), [](unsigned char c) { return (char)std::tolower(c); });
    if (word == "inf" || word == "infinity" || word == "nan") {
        out = word == "nan" ? NAN : (s[0] == '-' ? -INFINITY : INFINITY);
        return true;
    }
    std::string clean = s.substr(0, i);
    auto digits = [&](bool required) {  // digit (_? digit)*
        size_t n = 0;
        while (i < s.size()) {
            if (std::isdigit((unsigned char)s[i])) clean += s[i++], ++n;
            else if (s[i] == '_' && n && i + 1 < s.size() && std::isdigit((unsigned char)s[i + 1])) ++i;
            else break;
        }
        return n > 0 || !required;
    };
    const bool whole = digits(false);
    bool frac = false;
    if (i < s.size() && s[i] == '.') {
        clean += s[i++];
        const size_t at = clean.size();
        digits(false);
        frac = clean.size() > at;
    }
    if (!whole && !frac) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        clean += s[i++];
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
        if (!digits(true)) return false;
    }
    if (i != s.size()) return false;
    out = (float)std::strtod(clean.c_str(), nullptr);  // Python's double, then numpy's float32
    return true;
}

Verified verify(ImageRecord& r) {
    Verified v;
    auto bad = [&](const std::string& why) {
        v.warning = "WARNING: " + r.image + ": ignoring corrupt image/label: " + why;
        return v;
    };
    std::error_code ec;
    const auto size = fs::file_size(r.image, ec);
    if (ec) return bad("cannot read the file: " + ec.message());
    if (size == 0) return bad("empty file (0 bytes)");
    if (!std::ifstream(r.image, std::ios::binary)) return bad(std::string("cannot open the file: ") + std::strerror(errno));
    const std::string head = head_bytes(r.image, 1 << 16);
    const int64_t pixels = header_pixels(head);
    if (pixels > kBombPixels)
        return bad("Image size (" + std::to_string(pixels) + " pixels) exceeds limit of " + std::to_string(kBombPixels) +
                   " pixels, could be decompression bomb DOS attack.");
    cv::Mat im;
    try {
        im = cv::imread(r.image, cv::IMREAD_COLOR);
    } catch (const cv::Exception& e) {  // OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) on formats not read above
        std::string what;
        for (char c : std::string(e.what())) what += (c == '\n' || c == '\r') ? ' ' : c;
        return bad("OpenCV cannot read it: " + what);
    }
    if (im.empty()) return bad("cannot decode the image (not an image, or an unsupported format)");
    if (im.cols < 10 || im.rows < 10) return bad("image size " + std::to_string(im.cols) + "x" + std::to_string(im.rows) + " <10 pixels");
    r.width = im.cols;
    r.height = im.rows;
    if (head.size() >= 2 && (unsigned char)head[0] == 0xFF && (unsigned char)head[1] == 0xD8) {  // PIL: im.format, not the name
        std::ifstream f(r.image, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(f)), {});
        const size_t n = bytes.size();
        if (n < 2 || (unsigned char)bytes[n - 2] != 0xFF || (unsigned char)bytes[n - 1] != 0xD9) {  // YOLOv5's check
            if (!jpeg_scan_complete(bytes))
                return bad("truncated JPEG (the data stops before its last scanline decodes; PIL: image file is truncated)");
            const std::string failed = jpeg_restore(r.image, im);  // YOLOv5 re-saves it and keeps it
            if (!failed.empty()) return bad("corrupt JPEG (no end-of-image marker at its end) and " + failed);
            v.warning = "WARNING: " + r.image + ": corrupt JPEG restored and saved";
        }
    }

    // The label file as YOLOv5 reads it: UTF-8 text, split into lines (universal newlines, str.splitlines) and
    // each line into fields (str.split); blank lines skipped; a missing file (or a folder) is a background.
    if (!fs::is_regular_file(r.label, ec)) {
        v.ok = v.background = true;
        return v;
    }
    std::ifstream lf(r.label, std::ios::binary);
    if (!lf) return bad(r.label + ": cannot read the label file: " + std::strerror(errno));
    const std::string bytes((std::istreambuf_iterator<char>(lf)), {});
    std::u32string text;
    size_t bad_at = 0;
    if (!utf8_decode(bytes, text, bad_at)) {
        char b[96];
        snprintf(b, sizeof b, ": 'utf-8' codec can't decode byte 0x%02x in position %zu", (unsigned char)bytes[bad_at], bad_at);
        return bad(r.label + b);
    }
    std::vector<std::vector<std::u32string>> tok_rows;
    std::vector<int> lines;
    {
        std::vector<std::u32string> all_lines;
        for (size_t i = 0, start = 0; i <= text.size(); ++i) {
            if (i == text.size() || py_line_break(text[i])) {
                all_lines.push_back(text.substr(start, i - start));
                if (i + 1 < text.size() && text[i] == '\r' && text[i + 1] == '\n') ++i;
                start = i + 1;
            }
        }
        std::vector<std::vector<std::u32string>> split(all_lines.size());
        int first = -1, last = -1;  // str.strip() drops whitespace-only lines at both ends
        for (size_t l = 0; l < all_lines.size(); ++l) {
            std::u32string cur;
            for (char32_t c : all_lines[l] + U" ") {
                if (!py_space(c)) cur += c;
                else if (!cur.empty()) split[l].push_back(cur), cur.clear();
            }
            if (!split[l].empty()) last = (int)l, first = first < 0 ? (int)l : first;
        }
        for (int l = first; first >= 0 && l <= last; ++l) {
            if (all_lines[l].empty()) continue;
            if (split[l].empty())
                return bad(r.label + ":" + std::to_string(l + 1) + ": a line of only whitespace between labels (YOLOv5 "
                           "cannot read this file: inhomogeneous shape)");
            tok_rows.push_back(split[l]);
            lines.push_back(l + 1);
        }
    }
    std::vector<std::vector<std::string>> rows;  // the fields as printable text, for messages
    for (const auto& t : tok_rows) {
        std::vector<std::string> row;
        for (const std::u32string& x : t) {
            std::string s;
            for (char32_t c : x) s += c >= 32 && c < 127 ? (char)c : '?';
            row.push_back(s);
        }
        rows.push_back(row);
    }
    bool segments = false;
    for (const auto& t : rows) segments = segments || t.size() > 6;
    std::vector<std::array<float, 5>> lb;
    for (size_t i = 0; i < rows.size(); ++i) {
        const std::string where = r.label + ":" + std::to_string(lines[i]) + ": ";
        std::vector<float> f;
        for (size_t k = 0; k < rows[i].size(); ++k) {
            float x = 0;
            if (!py_float(tok_rows[i][k], x)) return bad(where + "'" + rows[i][k] + "' is not a number (Python's float rejects it)");
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
// Cache: magic, version, dataset hash, checksum, body size (32 bytes); the body: the records, then the counts.

constexpr uint32_t kCacheMagic = 0x43354C59;  // "YL5C"
constexpr uint32_t kCacheVersion = 2;

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

// A cache is trusted only whole: its size, checksum and every count in it are checked against the bytes that are
// there before anything is allocated, and its values against verify's rules. `why` says what was wrong with a
// corrupt one (empty when it is merely absent or stale: another dataset hash or format version).
bool read_cache(const std::string& path, uint64_t hash, Dataset& d, std::string& why) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return false;
    if (!fs::is_regular_file(path, ec)) return why = "not a file", false;
    std::ifstream in(path, std::ios::binary);
    if (!in) return why = std::string("cannot open it: ") + std::strerror(errno), false;
    const std::string all((std::istreambuf_iterator<char>(in)), {});
    std::istringstream head(all.substr(0, 32));
    uint32_t magic = 0, version = 0;
    uint64_t h = 0, sum = 0;
    if (!get(head, magic) || magic != kCacheMagic) return why = "not a y5 label cache", false;
    if (!get(head, version) || version != kCacheVersion || !get(head, h) || h != hash) return false;
    if (!get(head, sum) || all.size() < 32) return why = "shorter than its header", false;
    const std::string body = all.substr(32);
    uint64_t body_size = 0;
    std::memcpy(&body_size, all.data() + 24, sizeof body_size);
    if (body_size != body.size()) return why = "its size does not match its header (a truncated or appended file)", false;
    if (fnv1a(1469598103934665603ull, body.data(), body.size()) != (sum ^ body_size))
        return why = "its checksum does not match (the file was changed)", false;
    std::istringstream i(body);
    auto left = [&]() { return (uint64_t)(body.size() - (size_t)i.tellg()); };
    constexpr uint64_t kMinRecord = 4 + 4 + 4 + 4 + 4, kRow = sizeof(LabelRow) + sizeof(int);
    uint64_t n = 0;
    if (!get(i, n) || n > left() / kMinRecord) return why = "its record count exceeds the file", false;
    d.records.resize(n);
    for (ImageRecord& r : d.records) {
        uint32_t nl = 0;
        if (!get_str(i, r.image) || !get_str(i, r.label) || !get(i, r.width) || !get(i, r.height) || !get(i, nl) ||
            nl > left() / kRow)
            return why = "a record or its label count exceeds the file", false;
        if (r.width < 10 || r.height < 10) return why = "an image size below 10 pixels", false;
        r.labels.resize(nl);
        r.label_lines.resize(nl);
        for (uint32_t k = 0; k < nl; ++k) {
            const LabelRow& l = r.labels[k];
            if (!get(i, r.labels[k]) || !get(i, r.label_lines[k])) return why = "a label row exceeds the file", false;
            const float v[5] = {l.cls, l.x, l.y, l.w, l.h};
            for (int c = 0; c < 5; ++c)
                if (!std::isfinite(v[c]) || v[c] < 0 || (c > 0 && v[c] > 1)) return why = "a label value out of range", false;
            if (l.cls != std::floor(l.cls) || r.label_lines[k] < 1) return why = "a label value out of range", false;
        }
    }
    uint32_t nw = 0;
    ScanStats& s = d.stats;
    if (!get(i, s.images) || !get(i, s.backgrounds) || !get(i, s.corrupt) || !get(i, s.duplicates_removed) ||
        !get(i, s.instances) || !get(i, nw) || nw > left() / 4)
        return why = "its counts exceed the file", false;
    if (s.images != (int)n || s.backgrounds < 0 || s.corrupt < 0 || s.duplicates_removed < 0 || s.instances < 0)
        return why = "its counts do not match its records", false;
    s.warnings.resize(nw);
    for (std::string& w : s.warnings)
        if (!get_str(i, w)) return why = "a warning exceeds the file", false;
    if (left() != 0) return why = "bytes after its last record", false;
    s.from_cache = true;
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
    std::ostringstream o;
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
    const std::string body = o.str();
    const uint64_t body_size = body.size(), sum = fnv1a(1469598103934665603ull, body.data(), body.size()) ^ body_size;
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        if (!f) {
            s.warnings.push_back("WARNING: cache directory " + fs::path(path).parent_path().string() +
                                 " is not writeable; the labels will be rescanned next time");
            return;
        }
        put(f, kCacheMagic);
        put(f, kCacheVersion);
        put(f, hash);
        put(f, sum);
        put(f, body_size);
        f.write(body.data(), (std::streamsize)body.size());
        if (!f) {
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
    std::string why;
    if (use_cache && read_cache(d.cache_path, hash, d, why)) return d;
    d = Dataset{};
    d.cache_path = fs::path(first_label).parent_path().string() + ".y5cache";

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
    if (!why.empty())  // YOLOv5 rescans when its cache cannot be loaded; y5 says why (not kept in the new cache)
        s.warnings.insert(s.warnings.begin(), "WARNING: " + d.cache_path + ": ignoring the label cache, " + why +
                                                  "; rescanned and rewritten");
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

std::vector<float> labels_to_class_weights(const Dataset& d, int nc) {
    std::vector<double> w(nc, 0.0);
    for (const ImageRecord& r : d.records)
        for (const LabelRow& l : r.labels) {
            const int c = (int)l.cls;
            Y5_CHECK(c >= 0 && c < nc, "%s: class %d is not below nc=%d", r.label.c_str(), c, nc);
            w[c] += 1;
        }
    double sum = 0;
    for (double& x : w) sum += x = 1.0 / (x == 0 ? 1.0 : x);
    std::vector<float> out(nc);
    for (int c = 0; c < nc; ++c) out[c] = (float)(w[c] / sum);
    return out;
}

std::vector<double> labels_to_image_weights(const Dataset& d, int nc, const std::vector<double>& class_weights) {
    Y5_CHECK((int)class_weights.size() == nc, "labels_to_image_weights: %zu class weights for nc=%d", class_weights.size(), nc);
    std::vector<double> out;
    std::vector<int64_t> count(nc);
    for (const ImageRecord& r : d.records) {
        std::fill(count.begin(), count.end(), 0);
        for (const LabelRow& l : r.labels) count[(int)l.cls]++;
        double s = 0;
        for (int c = 0; c < nc; ++c) s += class_weights[c] * (double)count[c];
        out.push_back(s);
    }
    return out;
}

std::vector<double> epoch_class_weights(const std::vector<float>& class_weights, const std::vector<double>& maps, int nc) {
    Y5_CHECK((int)class_weights.size() == nc && (int)maps.size() == nc, "epoch_class_weights: sizes %zu, %zu for nc=%d",
             class_weights.size(), maps.size(), nc);
    std::vector<double> cw(nc);
    for (int c = 0; c < nc; ++c) cw[c] = (double)class_weights[c] * ((1 - maps[c]) * (1 - maps[c])) / nc;
    return cw;
}

}  // namespace y5
