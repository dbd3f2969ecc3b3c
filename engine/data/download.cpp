#include "engine/data/download.h"

#include <curl/curl.h>
#include <unistd.h>
#include <zip.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "kernels/check.h"

namespace y5 {

namespace fs = std::filesystem;

namespace {

struct Progress {
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now(), last;
};

// A terminal's progress line: bytes, percent of the announced size, rate.
int on_progress(void* p, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
    Progress& pr = *static_cast<Progress*>(p);
    const auto t = std::chrono::steady_clock::now();
    if (t - pr.last < std::chrono::milliseconds(200)) return 0;
    pr.last = t;
    const double s = std::chrono::duration<double>(t - pr.t0).count(), mb = now / 1e6;
    if (total > 0) std::printf("\r  %5.1f%% %.1f/%.1f MB %.1f MB/s", 100.0 * now / total, mb, total / 1e6, mb / s);
    else std::printf("\r  %.1f MB %.1f MB/s", mb, mb / s);
    std::fflush(stdout);
    return 0;
}

size_t on_data(char* p, size_t size, size_t n, void* f) { return std::fwrite(p, size, n, static_cast<FILE*>(f)); }

}  // namespace

void download_file(const std::string& url, const std::string& dest) {
    const std::string part = dest + ".part";
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(part.c_str(), "wb"), std::fclose);
    Y5_CHECK(f, "cannot write %s (downloading %s)", part.c_str(), url.c_str());
    std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
    Y5_CHECK(h, "libcurl could not start (downloading %s)", url.c_str());
    char err[CURL_ERROR_SIZE] = "";
    Progress pr;
    const bool tty = isatty(fileno(stdout));
    curl_easy_setopt(h.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(h.get(), CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h.get(), CURLOPT_FAILONERROR, 1L);  // an HTTP status ≥ 400 is an error, not a saved page
    curl_easy_setopt(h.get(), CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, f.get());
    curl_easy_setopt(h.get(), CURLOPT_NOPROGRESS, tty ? 0L : 1L);
    curl_easy_setopt(h.get(), CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h.get(), CURLOPT_XFERINFODATA, &pr);
    const CURLcode rc = curl_easy_perform(h.get());
    if (tty) std::printf("\r\033[K");
    const bool closed = std::fclose(f.release()) == 0;
    if (rc != CURLE_OK || !closed) {
        std::error_code ec;
        fs::remove(part, ec);
        Y5_FAIL("download of %s failed: %s", url.c_str(), rc != CURLE_OK ? (*err ? err : curl_easy_strerror(rc))
                                                                          : "cannot finish writing the file");
    }
    fs::rename(part, dest);
}

void unzip_file(const std::string& zip, const std::string& dir) {
    int code = 0;
    std::unique_ptr<zip_t, void (*)(zip_t*)> z(zip_open(zip.c_str(), ZIP_RDONLY, &code), zip_discard);
    if (!z) {
        zip_error_t e;
        zip_error_init_with_code(&e, code);
        const std::string what = zip_error_strerror(&e);
        zip_error_fini(&e);
        Y5_FAIL("%s: not a readable zip: %s", zip.c_str(), what.c_str());
    }
    const zip_int64_t n = zip_get_num_entries(z.get(), 0);
    std::vector<std::string> names((size_t)n);
    for (zip_int64_t i = 0; i < n; ++i) {  // every name checked before anything is written
        const char* name = zip_get_name(z.get(), (zip_uint64_t)i, 0);
        Y5_CHECK(name && *name, "%s: entry %lld has no name", zip.c_str(), (long long)i);
        const fs::path p = fs::path(name).lexically_normal();
        Y5_CHECK(!p.is_absolute() && !p.empty() && *p.begin() != "..", "%s: entry '%s' would be written outside %s",
                 zip.c_str(), name, dir.c_str());
        names[(size_t)i] = name;
    }
    std::vector<char> buf(1 << 20);
    for (zip_int64_t i = 0; i < n; ++i) {
        const fs::path out = fs::path(dir) / names[(size_t)i];
        if (names[(size_t)i].back() == '/') {
            fs::create_directories(out);
            continue;
        }
        fs::create_directories(out.parent_path());
        std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> zf(zip_fopen_index(z.get(), (zip_uint64_t)i, 0), zip_fclose);
        Y5_CHECK(zf, "%s: cannot read entry '%s': %s", zip.c_str(), names[(size_t)i].c_str(), zip_strerror(z.get()));
        std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(out.c_str(), "wb"), std::fclose);
        Y5_CHECK(f, "cannot write %s (unzipping %s)", out.c_str(), zip.c_str());
        for (zip_int64_t r; (r = zip_fread(zf.get(), buf.data(), buf.size())) != 0;) {
            Y5_CHECK(r > 0, "%s: entry '%s' is corrupt: %s", zip.c_str(), names[(size_t)i].c_str(),
                     zip_file_strerror(zf.get()));
            Y5_CHECK(std::fwrite(buf.data(), 1, (size_t)r, f.get()) == (size_t)r, "cannot write %s (unzipping %s)",
                     out.c_str(), zip.c_str());
        }
    }
}

void download_dataset(const std::string& yaml, const std::string& url, const std::string& datasets_dir) {
    const bool is_url = url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0 || url.rfind("file://", 0) == 0;
    Y5_CHECK(is_url && url.size() > 4 && url.compare(url.size() - 4, 4, ".zip") == 0,
             "%s: download '%s' is not a .zip URL; y5 runs no download scripts: fetch the dataset yourself and point "
             "path: at it", yaml.c_str(), url.c_str());
    const auto t0 = std::chrono::steady_clock::now();
    fs::create_directories(datasets_dir);
    const std::string zip = (fs::path(datasets_dir) / fs::path(url).filename()).string();
    std::printf("Downloading %s to %s...\n", url.c_str(), zip.c_str());
    std::fflush(stdout);
    download_file(url, zip);
    try {
        unzip_file(zip, datasets_dir);
    } catch (...) {
        std::error_code ec;
        fs::remove(zip, ec);
        throw;
    }
    fs::remove(zip);
    std::printf("Dataset download success ✅ (%.1fs), saved to %s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                fs::weakly_canonical(datasets_dir).c_str());
}

}  // namespace y5
