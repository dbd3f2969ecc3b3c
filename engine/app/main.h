/*
 * The binaries' error boundary. Every main ends with
 *     } catch (...) { return y5::error_exit("y5train"); }
 * which prints the exception as one line, "y5train: error: <what>", on stderr after flushing stdout (so the
 * progress printed before it is kept) and returns 1. A y5::Error's text already names the file and line;
 * any other exception (OpenCV, yaml-cpp, JSON, the filesystem, a number std::sto* could not read, memory
 * exhausted) would otherwise reach std::terminate and abort: it is named by its kind, its message folded onto
 * one line.
 */
#pragma once
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "kernels/check.h"

namespace y5 {

// what, on one line: newlines and tabs become spaces, runs of spaces one, no trailing space.
inline std::string one_line(const char* what) {
    std::string s;
    for (const char* p = what; *p; ++p) {
        const char ch = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
        if (ch == ' ' && (s.empty() || s.back() == ' ')) continue;
        s += ch;
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

// Call only inside a catch block: classifies the exception being handled.
inline int error_exit(const char* prog) {
    std::fflush(stdout);
    std::string msg;
    try {
        throw;
    } catch (const Error& e) {
        msg = e.what();
    } catch (const std::bad_alloc&) {
        msg = "out of host memory (std::bad_alloc): lower --batch-size, --imgsz or --workers, or drop --cache";
    } catch (const std::filesystem::filesystem_error& e) {
        msg = one_line(e.what());
    } catch (const std::invalid_argument& e) {
        msg = "not a number where one was expected (" + one_line(e.what()) + ")";
    } catch (const std::out_of_range& e) {
        msg = "a number out of range (" + one_line(e.what()) + ")";
    } catch (const std::exception& e) {
        msg = one_line(e.what());
    } catch (...) {
        msg = "an unknown exception";
    }
    std::fprintf(stderr, "%s: error: %s\n", prog, msg.c_str());
    return 1;
}

// Parses the flags (CLI11): --help prints and returns 0; a bad flag or value prints "prog: error: <what>" and returns 2
// (CLI11's own codes are 100 to 127); −1 means go on.
template <class App> int parse_flags(App& app, int argc, char** argv, const char* prog) {
    try {
        app.parse(argc, argv);
        return -1;
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);
        std::fflush(stdout);
        std::fprintf(stderr, "%s: error: %s (see --help)\n", prog, one_line(e.what()).c_str());
        return 2;
    }
}

// general.py's check_img_size: an image size not a multiple of the stride s is rounded up to one (at least
// `floor`), with YOLOv5's warning. Sizes past 2^16 are refused before anything is allocated for them.
inline int check_img_size(int imgsz, int s, int floor) {
    Y5_CHECK(imgsz >= 1 && imgsz <= 65536, "--imgsz %d: the image size must be from 1 to 65536 pixels", imgsz);
    const int n = std::max((imgsz + s - 1) / s * s, floor);
    if (n != imgsz)
        std::printf("WARNING: --img-size %d must be multiple of max stride %d, updating to %d\n", imgsz, s, n);
    return n;
}

// Loader threads as create_dataloader caps them: no more than the cores, nor the batch (0 for a batch of 1:
// y5 then loads on one thread), nor the request.
inline int cap_workers(int workers, int batch_size) {
    Y5_CHECK(workers >= 0, "--workers %d: must be 0 or more", workers);
    const int cores = std::max(1, (int)std::thread::hardware_concurrency());
    return std::min({cores, batch_size > 1 ? batch_size : 0, workers});
}

}  // namespace y5
