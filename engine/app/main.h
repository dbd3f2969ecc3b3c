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
#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <stdexcept>
#include <string>

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

}  // namespace y5
