/*
 * Errors. Every failure in y5 is a y5::Error carrying "file:line: message"; the binaries catch it in
 * main, print one line and exit 1, and the tests assert on its text. Never assert() for these: it
 * vanishes under NDEBUG.
 *   Y5_CHECK(cond, fmt, ...)   throws with a printf-style message when cond is false
 *   Y5_FAIL(fmt, ...)          throws unconditionally
 * The CUDA/cuBLAS/cuDNN macros (CUDA_CHECK, CUBLAS_CHECK, CUDNN_CHECK) live in engine/cuda.h.
 */
#pragma once
#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace y5 {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail_at(const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
[[noreturn]] inline void fail_at(const char* file, int line, const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::string f(file);  // keep "engine/arena.cpp", drop the absolute prefix
    size_t cut = f.rfind('/');
    if (cut != std::string::npos && cut > 0) {
        size_t cut2 = f.rfind('/', cut - 1);
        if (cut2 != std::string::npos) f = f.substr(cut2 + 1);
    }
    throw Error(f + ":" + std::to_string(line) + ": " + msg);
}

}  // namespace y5

#define Y5_FAIL(...) ::y5::fail_at(__FILE__, __LINE__, __VA_ARGS__)
#define Y5_CHECK(cond, ...)                                  \
    do {                                                     \
        if (!(cond)) ::y5::fail_at(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
