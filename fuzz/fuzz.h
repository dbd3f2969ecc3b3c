/*
 * Shared by the libFuzzer harnesses (one per parser, fuzz/fuzz_*.cpp; built with -DY5_FUZZ=ON, run by
 * tools/fuzz.sh). Each harness feeds the bytes to y5's real parsing function. An input the parser rejects with an
 * exception is a pass: the binaries' error boundary (engine/app/main.h) turns any exception into one line. A
 * crash, a sanitizer report, a hang or an allocation over libFuzzer's limit is a finding; so is a broken
 * invariant the harness checks after a successful parse (y5_fuzz_require aborts with the reason).
 */
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

// This process's scratch folder, created once and removed at exit (left behind after a crash, for a look). Held
// by a pointer that is never freed: the exit handler runs after the static destructors.
inline const std::string& y5_fuzz_dir() {
    static const std::string* dir = [] {
        const auto d = std::filesystem::temp_directory_path() / ("y5fuzz." + std::to_string(getpid()));
        std::filesystem::create_directories(d);
        std::atexit([] {
            std::error_code ec;
            std::filesystem::remove_all(y5_fuzz_dir(), ec);
        });
        return new std::string(d.string());
    }();
    return *dir;
}

// Writes the bytes to path (for parsers that take a path).
inline void y5_fuzz_write(const std::string& path, const void* data, size_t size) {
    std::ofstream o(path, std::ios::binary | std::ios::trunc);
    o.write(static_cast<const char*>(data), (std::streamsize)size);
    if (!o) {
        std::fprintf(stderr, "y5 fuzz: cannot write %s\n", path.c_str());
        std::abort();
    }
}

#define y5_fuzz_require(cond, why)                                                        \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "y5 fuzz: invariant broken at %s:%d: %s\n", __FILE__, __LINE__, why); \
            std::abort();                                                                 \
        }                                                                                 \
    } while (0)
