/*
 * cudaemu_rewrite IN OUT: turns a .cu or .cuh file into C++ for the emulated device, keeping every line
 * where it was (the output starts with #line 1 "IN", so compiler errors, AddressSanitizer reports and
 * emulator faults name the original file and line). Only code is rewritten, never comments or strings:
 *   k<<<grid, block, smem, stream>>>(args)   → ::cudaemu::launch(::cudaemu::Site{"k", __FILE__, __LINE__},
 *                                               ::cudaemu::Config(grid, block, smem, stream), k, args)
 *   extern __shared__ T name[];               → T* name = ::cudaemu::shared_dynamic<T>();
 *   __shared__ T a[N], b[M];                  → one per-block buffer per declarator:
 *       static ::cudaemu::SharedKey cudaemu_key_a; auto& a = ::cudaemu::shared_static<T[N]>(&cudaemu_key_a); ...
 * Anything it cannot parse is an error naming the line.
 */
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string src, path;
std::vector<bool> code;  // code[i]: src[i] is code (not in a comment, string or character literal)

void mark_code() {
    code.assign(src.size(), true);
    size_t i = 0;
    while (i < src.size()) {
        if (src.compare(i, 2, "//") == 0) {
            while (i < src.size() && src[i] != '\n') code[i++] = false;
        } else if (src.compare(i, 2, "/*") == 0) {
            size_t e = src.find("*/", i + 2);
            e = e == std::string::npos ? src.size() : e + 2;
            while (i < e) code[i++] = false;
        } else if (src[i] == '"' || src[i] == '\'') {
            const char q = src[i];
            code[i++] = false;
            while (i < src.size() && src[i] != q) {
                if (src[i] == '\\') code[i++] = false;
                if (i < src.size()) code[i++] = false;
            }
            if (i < src.size()) code[i++] = false;
        } else {
            ++i;
        }
    }
}

int line_of(size_t i) {
    int l = 1;
    for (size_t k = 0; k < i && k < src.size(); ++k) l += src[k] == '\n';
    return l;
}

[[noreturn]] void fail(size_t i, const std::string& what) {
    std::fprintf(stderr, "%s:%d: cudaemu_rewrite: %s\n", path.c_str(), line_of(i), what.c_str());
    std::exit(1);
}

bool ident(char c) { return std::isalnum((unsigned char)c) || c == '_'; }

std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::string newlines_in(const std::string& s) {
    std::string n;
    for (char c : s)
        if (c == '\n') n += '\n';
    return n;
}

std::string one_line(std::string s) {
    for (char& c : s)
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    return s;
}

bool word_at(size_t i, const char* w) {
    const size_t n = std::strlen(w);
    return src.compare(i, n, w) == 0 && code[i] && (i == 0 || !ident(src[i - 1])) &&
           (i + n >= src.size() || !ident(src[i + n]));
}

// Start of the kernel expression that ends just before `<<<` at i: a name, maybe qualified, maybe with
// template arguments (k<float, 3><<<...).
size_t kernel_start(size_t i) {
    size_t j = i;
    while (j > 0 && std::isspace((unsigned char)src[j - 1])) --j;
    if (j > 0 && src[j - 1] == '>') {
        int depth = 0;
        do {
            --j;
            if (src[j] == '>') ++depth;
            else if (src[j] == '<') --depth;
        } while (j > 0 && depth > 0);
        if (depth != 0) fail(i, "unbalanced template arguments before <<<");
    }
    while (j > 0 && (ident(src[j - 1]) || src[j - 1] == ':')) --j;
    if (j == i) fail(i, "no kernel name before <<<");
    return j;
}

// Index of the `>>>` closing the launch configuration that starts at i (outside brackets).
size_t config_end(size_t i) {
    int depth = 0;
    for (size_t k = i; k + 2 < src.size(); ++k) {
        if (!code[k]) continue;
        const char c = src[k];
        if (c == '(' || c == '[' || c == '{') ++depth;
        else if (c == ')' || c == ']' || c == '}') --depth;
        else if (depth == 0 && src.compare(k, 3, ">>>") == 0) return k;
    }
    fail(i, "no >>> closes the launch configuration");
}

// One declarator of a __shared__ declaration: "name[dims]".
struct Decl {
    std::string name, dims;
};
Decl parse_declarator(const std::string& d, size_t at) {
    std::string s = trim(d);
    size_t k = 0;
    while (k < s.size() && ident(s[k])) ++k;
    if (k == 0) fail(at, "cannot read the __shared__ declarator '" + s + "'");
    return Decl{s.substr(0, k), trim(s.substr(k))};
}

std::vector<std::string> split_top(const std::string& s) {
    std::vector<std::string> parts;
    int depth = 0;
    size_t from = 0;
    for (size_t k = 0; k < s.size(); ++k) {
        const char c = s[k];
        if (c == '(' || c == '[' || c == '<' || c == '{') ++depth;
        else if (c == ')' || c == ']' || c == '>' || c == '}') --depth;
        else if (c == ',' && depth == 0) {
            parts.push_back(s.substr(from, k - from));
            from = k + 1;
        }
    }
    parts.push_back(s.substr(from));
    return parts;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: cudaemu_rewrite IN.cu OUT.cpp\n");
        return 2;
    }
    path = argv[1];
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "cudaemu_rewrite: cannot read %s\n", path.c_str());
        return 1;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    src = ss.str();
    mark_code();

    std::string out = "#line 1 \"" + path + "\"\n";
    size_t last = 0;
    for (size_t i = 0; i < src.size(); ++i) {
        if (!code[i]) continue;
        if (src.compare(i, 3, "<<<") == 0) {
            const size_t ks = kernel_start(i);
            if (ks < last) fail(i, "a launch inside another launch's arguments");
            const std::string kexpr = src.substr(ks, i - ks);
            const size_t ce = config_end(i + 3);
            const std::string cfg = src.substr(i + 3, ce - (i + 3));
            size_t p = ce + 3;
            std::string gap;
            while (p < src.size() && std::isspace((unsigned char)src[p])) gap += src[p++];
            if (p >= src.size() || src[p] != '(') fail(i, "no argument list after >>>");
            size_t q = p + 1;
            while (q < src.size() && std::isspace((unsigned char)src[q])) ++q;
            const bool no_args = q < src.size() && src[q] == ')';
            out += src.substr(last, ks - last);
            out += "::cudaemu::launch(::cudaemu::Site{\"" + one_line(trim(kexpr)) + "\", __FILE__, __LINE__}, ::cudaemu::Config(" +
                   cfg + "), " + kexpr + newlines_in(gap) + (no_args ? "" : ", ");
            last = i = p + 1;
            --i;
            continue;
        }
        if (word_at(i, "__shared__")) {
            // Is it `extern __shared__`?
            size_t b = i;
            while (b > 0 && std::isspace((unsigned char)src[b - 1])) --b;
            const bool ext = b >= 6 && src.compare(b - 6, 6, "extern") == 0 && (b == 6 || !ident(src[b - 7]));
            const size_t start = ext ? b - 6 : i;
            if (start < last) fail(i, "overlapping rewrites");
            const size_t semi = src.find(';', i);
            if (semi == std::string::npos) fail(i, "no ; after __shared__");
            const std::string body = src.substr(i + 10, semi - (i + 10));
            std::string repl;
            if (ext) {
                // T name[] : the type is everything before the last identifier.
                std::string s = trim(body);
                const size_t lb = s.rfind('[');
                if (lb == std::string::npos || trim(s.substr(lb)) != "[]")
                    fail(i, "extern __shared__ must declare an unsized array");
                s = trim(s.substr(0, lb));
                size_t k = s.size();
                while (k > 0 && ident(s[k - 1])) --k;
                const std::string name = s.substr(k), type = trim(s.substr(0, k));
                if (name.empty() || type.empty()) fail(i, "cannot read the extern __shared__ declaration");
                repl = type + "* " + name + " = ::cudaemu::shared_dynamic<" + one_line(type) + ">()";
            } else {
                std::vector<std::string> parts = split_top(body);
                // The first part holds the type and the first declarator: the type ends before the last
                // identifier that precedes any '['.
                std::string first = trim(parts[0]);
                size_t br = first.find('[');
                std::string head = trim(br == std::string::npos ? first : first.substr(0, br));
                size_t k = head.size();
                while (k > 0 && ident(head[k - 1])) --k;
                const std::string type = one_line(trim(head.substr(0, k)));
                if (type.empty()) fail(i, "cannot read the __shared__ type");
                parts[0] = first.substr(k);
                for (size_t n = 0; n < parts.size(); ++n) {
                    Decl d = parse_declarator(parts[n], i);
                    const std::string key = "cudaemu_key_" + d.name;
                    repl += (n ? "; " : "") + std::string("static ::cudaemu::SharedKey ") + key + "; auto& " + d.name +
                            " = ::cudaemu::shared_static<" + type + one_line(d.dims) + ">(&" + key + ")";
                }
            }
            out += src.substr(last, start - last);
            out += repl + newlines_in(src.substr(start, semi - start));
            last = semi;  // the ';' is copied with what follows
            i = semi;
            continue;
        }
    }
    out += src.substr(last);
    std::ofstream o(argv[2], std::ios::binary);
    o << out;
    if (!o) {
        std::fprintf(stderr, "cudaemu_rewrite: cannot write %s\n", argv[2]);
        return 1;
    }
    return 0;
}
