/*
 * Errors. Every failure in y5 is a y5::Error carrying "file:line: message"; the binaries catch it in
 * main, print one line and exit 1, and the tests assert on its text. Never assert() for these: it
 * vanishes under NDEBUG.
 *   Y5_CHECK(cond, fmt, ...)   throws with a printf-style message when cond is false
 *   Y5_FAIL(fmt, ...)          throws unconditionally
 * The CUDA/cuBLAS/cuDNN macros (CUDA_CHECK, CUBLAS_CHECK, CUDNN_CHECK) live in kernels/cuda.h. Used by every
 * floor, so it sits in the lowest, kernels/.
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
    // The repository-relative path ("engine/core/arena.cpp"): from the last top-level folder in the path,
    // which also undoes the build's include roots (build/include/app/engine/app/val.h).
    std::string f(file);
    size_t cut = std::string::npos;
    for (const char* top : {"/kernels/", "/engine/", "/layers/", "/tools/", "/bench/", "/tests/"}) {
        const size_t at = f.rfind(top);
        if (at != std::string::npos && (cut == std::string::npos || at > cut)) cut = at;
    }
    if (cut != std::string::npos) f = f.substr(cut + 1);
    throw Error(f + ":" + std::to_string(line) + ": " + msg);
}

}  // namespace y5

#define Y5_FAIL(...) ::y5::fail_at(__FILE__, __LINE__, __VA_ARGS__)
#define Y5_CHECK(cond, ...)                                  \
    do {                                                     \
        if (!(cond)) ::y5::fail_at(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
