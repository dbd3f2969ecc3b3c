/*
 * torch.save zip files: libzip for the archive, a data-only unpickler for data.pkl. See torch_pt.h.
 */
#include "engine/core/torch_pt.h"

#include <zip.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <unordered_map>

#include "kernels/check.h"
#include "kernels/common.h"

namespace y5 {

// ----------------------------------------------------------------------------------------------------
// PyObj

const PyObj* PyObj::get(const std::string& k) const {
    if (kind == Object) return state ? state->get(k) : nullptr;
    if (kind != Dict) return nullptr;
    for (const auto& kv : dict)
        if (kv.first->kind == Str && kv.first->s == k) return kv.second.get();
    return nullptr;
}

int64_t PyObj::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string PyObj::describe() const {
    switch (kind) {
        case None: return "None";
        case Bool: return "a bool";
        case Int: return "an int";
        case Float: return "a float";
        case Str: return "a string";
        case Bytes: return "bytes";
        case Tuple: return "a tuple";
        case List: return "a list";
        case Set: return "a set";
        case Dict: return "a dict";
        case Global: return "the global " + s;
        case Object: return "an object " + s;
        case Storage: return "a storage";
        case Tensor: return "a tensor";
    }
    return "?";
}

// ----------------------------------------------------------------------------------------------------
// The unpickler

namespace {

constexpr int kMaxDepth = 1000;

// torch.<X>Storage → y5's dtype names (as safetensors').
const char* storage_dtype(const std::string& cls) {
    static const std::pair<const char*, const char*> table[] = {
        {"torch.HalfStorage", "F16"},   {"torch.BFloat16Storage", "BF16"}, {"torch.FloatStorage", "F32"},
        {"torch.DoubleStorage", "F64"}, {"torch.LongStorage", "I64"},      {"torch.IntStorage", "I32"},
        {"torch.ShortStorage", "I16"},  {"torch.CharStorage", "I8"},       {"torch.ByteStorage", "U8"},
        {"torch.BoolStorage", "BOOL"}};
    for (const auto& t : table)
        if (cls == t.first) return t.second;
    return nullptr;
}

size_t dtype_size(const std::string& dt) {
    if (dt == "F64" || dt == "I64") return 8;
    if (dt == "F32" || dt == "I32") return 4;
    if (dt == "F16" || dt == "BF16" || dt == "I16") return 2;
    return 1;
}

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// The globals a YOLOv5 checkpoint needs. Each only names a class or a rebuild function: nothing is called.
bool allowed_global(const std::string& g) {
    static const std::set<std::string> exact = {
        "collections.OrderedDict", "builtins.set", "__builtin__.set", "builtins.frozenset", "__builtin__.frozenset",
        "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "_codecs.encode", "argparse.Namespace", "pathlib.Path",
        "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype"};
    if (exact.count(g) || storage_dtype(g)) return true;
    // torch.nn's module classes and YOLOv5's (models.yolo, models.common, ...; "yolov5.models." when trained with
    // the pip package).
    for (const char* p : {"torch.nn.modules.", "models.", "yolov5.models."})
        if (starts_with(g, p) && g.find('.', std::strlen(p)) != std::string::npos) return true;
    return false;
}

class Unpickler {
public:
    Unpickler(const std::string& file, const uint8_t* p, size_t n) : file_(file), p_(p), n_(n) {}
    // On failure the containers made so far may form reference cycles (never freed) or chains deeper than the
    // stack (freed recursively): every container is emptied while all are held, then released flat.
    ~Unpickler() {
        if (done_) return;
        std::vector<PyRef> all;
        for (const auto& w : made_)
            if (PyRef o = w.lock()) all.push_back(std::move(o));
        for (const PyRef& o : all) {
            o->items.clear();
            o->dict.clear();
            o->state.reset();
        }
        stack_.clear();
        memo_.clear();
    }

    PyRef run() {
        for (;;) {
            const size_t at = pos_;
            const uint8_t op = u8();
            switch (op) {
                case 0x80: {  // PROTO
                    const int v = u8();
                    if (v > 5) fail(at, "pickle protocol " + std::to_string(v) + " is not supported");
                    break;
                }
                case '.': {  // STOP
                    if (stack_.size() != 1 || !marks_.empty()) fail(at, "malformed pickle: STOP with a stack of " +
                                                                         std::to_string(stack_.size()));
                    check_graph(at, stack_.back());
                    done_ = true;
                    return stack_.back();
                }
                case '(': marks_.push_back(stack_.size()); break;  // MARK
                case '}': push(make(PyObj::Dict)); break;         // EMPTY_DICT
                case ']': push(make(PyObj::List)); break;         // EMPTY_LIST
                case ')': push(make(PyObj::Tuple)); break;        // EMPTY_TUPLE
                case 't': case 'l': case 'd': {                   // TUPLE, LIST, DICT: the items since the mark
                    std::vector<PyRef> v = pop_mark(at);
                    PyRef o = make(op == 't' ? PyObj::Tuple : op == 'l' ? PyObj::List : PyObj::Dict);
                    if (op == 'd') set_items(at, *o, v);
                    else for (auto& x : v) append(at, *o, x);
                    push(o);
                    break;
                }
                case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
                    const size_t k = op - 0x84;
                    need(at, k);
                    PyRef o = make(PyObj::Tuple);
                    for (size_t j = stack_.size() - k; j < stack_.size(); ++j) append(at, *o, stack_[j]);
                    stack_.resize(stack_.size() - k);
                    push(o);
                    break;
                }
                case 'q': memo_[u8()] = top(at); break;    // BINPUT
                case 'r': memo_[u32()] = top(at); break;   // LONG_BINPUT
                case 'h': push(memo(at, u8())); break;     // BINGET
                case 'j': push(memo(at, u32())); break;    // LONG_BINGET
                case 'c': {                                // GLOBAL "module\nname\n"
                    const std::string mod = line(at), name = line(at);
                    PyRef g = make(PyObj::Global);
                    g->s = mod + "." + name;
                    if (!allowed_global(g->s)) fail_plain("pickle global " + g->s + " is not allowed");
                    push(g);
                    break;
                }
                case 0x81: {  // NEWOBJ cls args
                    need(at, 2);
                    PyRef args = pop(), cls = pop();
                    if (!cls->is(PyObj::Global) || !args->is(PyObj::Tuple))
                        fail(at, "NEWOBJ needs a class and a tuple, got " + cls->describe() + " and " + args->describe());
                    push(object(at, cls->s, args->items));
                    break;
                }
                case 'R': {  // REDUCE callable args
                    need(at, 2);
                    PyRef args = pop(), fn = pop();
                    if (!fn->is(PyObj::Global) || !args->is(PyObj::Tuple))
                        fail(at, "REDUCE needs a global and a tuple, got " + fn->describe() + " and " + args->describe());
                    push(reduce(at, fn->s, args->items));
                    break;
                }
                case 'b': {  // BUILD obj state: an object's __dict__ (other BUILDs carry nothing y5 reads)
                    need(at, 2);
                    PyRef state = pop();
                    PyObj& o = *top(at);
                    if (o.is(PyObj::Object)) {
                        no_self(at, o, state);
                        o.state = state;
                        o.depth = std::max(o.depth, state->depth + 1);
                        check_depth(at, o);
                    }
                    break;
                }
                case 's': {  // SETITEM
                    need(at, 3);
                    std::vector<PyRef> kv(stack_.end() - 2, stack_.end());
                    stack_.resize(stack_.size() - 2);
                    set_items(at, *top(at), kv);
                    break;
                }
                case 'u': {  // SETITEMS
                    std::vector<PyRef> kv = pop_mark(at);
                    set_items(at, *top(at), kv);
                    break;
                }
                case 'a': {  // APPEND
                    need(at, 2);
                    PyRef x = pop();
                    append(at, *top(at), x);
                    break;
                }
                case 'e': {  // APPENDS
                    std::vector<PyRef> v = pop_mark(at);
                    PyObj& l = *top(at);
                    for (auto& x : v) append(at, l, x);
                    break;
                }
                case 'J': push(integer((int32_t)u32())); break;  // BININT
                case 'K': push(integer(u8())); break;            // BININT1
                case 'M': {                                      // BININT2
                    const int lo = u8();
                    push(integer(lo | u8() << 8));
                    break;
                }
                case 0x8a: {  // LONG1: n little-endian two's-complement bytes
                    const int n = u8();
                    if (n > 8) fail(at, "integer of " + std::to_string(n) + " bytes does not fit 64 bits");
                    uint64_t v = 0;
                    const uint8_t* b = bytes(at, n);
                    for (int j = 0; j < n; ++j) v |= (uint64_t)b[j] << (8 * j);
                    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~0ull << (8 * n);
                    push(integer((int64_t)v));
                    break;
                }
                case 'G': {  // BINFLOAT: big-endian double
                    const uint8_t* b = bytes(at, 8);
                    uint64_t u = 0;
                    for (int j = 0; j < 8; ++j) u = u << 8 | b[j];
                    PyRef o = make(PyObj::Float);
                    std::memcpy(&o->f, &u, 8);
                    push(o);
                    break;
                }
                case 'X': case 'T': case 'B': {  // BINUNICODE, BINSTRING, BINBYTES: 4-byte length
                    const uint32_t len = u32();
                    push(text(at, op == 'B' ? PyObj::Bytes : PyObj::Str, len));
                    break;
                }
                case 'U': case 'C': {  // SHORT_BINSTRING, SHORT_BINBYTES: 1-byte length
                    const uint32_t len = u8();
                    push(text(at, op == 'C' ? PyObj::Bytes : PyObj::Str, len));
                    break;
                }
                case 'N': push(make(PyObj::None)); break;  // NONE
                case 0x88: case 0x89: {                    // NEWTRUE, NEWFALSE
                    PyRef o = make(PyObj::Bool);
                    o->i = op == 0x88;
                    push(o);
                    break;
                }
                case 'Q': {  // BINPERSID: torch's ('storage', <X>Storage, key, location, numel)
                    need(at, 1);
                    push(storage(at, *pop()));
                    break;
                }
                case '0': need(at, 1), pop(); break;      // POP
                case '1': pop_mark(at); break;            // POP_MARK
                case '2': push(top(at)); break;           // DUP
                default: {
                    char b[64];
                    snprintf(b, sizeof b, "unsupported pickle opcode 0x%02x", op);
                    fail(at, b);
                }
            }
        }
    }

private:
    [[noreturn]] void fail_plain(const std::string& msg) const { Y5_FAIL("%s: %s", file_.c_str(), msg.c_str()); }
    [[noreturn]] void fail(size_t at, const std::string& msg) const {
        Y5_FAIL("%s: %s (data.pkl byte %zu)", file_.c_str(), msg.c_str(), at);
    }
    const uint8_t* bytes(size_t at, size_t k) {
        if (k > n_ - pos_) fail(at, "the pickle ends in the middle of an opcode (truncated)");
        const uint8_t* b = p_ + pos_;
        pos_ += k;
        return b;
    }
    uint8_t u8() {
        if (pos_ >= n_) fail(pos_, "the pickle ends before STOP (truncated)");
        return p_[pos_++];
    }
    uint32_t u32() {
        const uint8_t* b = bytes(pos_, 4);
        return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    }
    std::string line(size_t at) {
        std::string s;
        for (uint8_t c; (c = u8()) != '\n';) {
            if (s.size() > 200) fail(at, "GLOBAL name longer than 200 bytes");
            s += (char)c;
        }
        return s;
    }
    PyRef text(size_t at, PyObj::Kind k, uint32_t len) {
        PyRef o = make(k);
        const uint8_t* b = bytes(at, len);
        o->s.assign((const char*)b, len);
        return o;
    }
    PyRef make(PyObj::Kind k) {
        PyRef o = std::make_shared<PyObj>();
        o->kind = k;
        if (k == PyObj::Tuple || k == PyObj::List || k == PyObj::Set || k == PyObj::Dict || k == PyObj::Object)
            made_.push_back(o);
        return o;
    }
    // The finished graph, walked once without recursion: no reference cycle (a container reached again while it
    // is open), and the true nesting within kMaxDepth. The per-insertion checks above see only the depth of what
    // is inserted at that moment; a container filled after it was put into another (through the memo) escapes
    // them, and so does a cycle through two or more containers. Sets each object's depth to its true nesting.
    void check_graph(size_t at, const PyRef& root) {
        std::unordered_map<const PyObj*, int> state;  // 1 open, 2 done
        struct Frame {
            PyObj* o;
            size_t next;
        };
        auto children = [](const PyObj& o) {
            std::vector<PyObj*> c;
            for (const auto& x : o.items) c.push_back(x.get());
            for (const auto& [k, v] : o.dict) c.push_back(k.get()), c.push_back(v.get());
            if (o.state) c.push_back(o.state.get());
            return c;
        };
        std::vector<Frame> path{{root.get(), 0}};
        std::vector<std::vector<PyObj*>> kids{children(*root)};
        state[root.get()] = 1;
        root->depth = 1;
        while (!path.empty()) {
            Frame& f = path.back();
            if (f.next == kids.back().size()) {
                state[f.o] = 2;
                int d = 1;
                for (PyObj* c : kids.back()) d = std::max(d, c->depth + 1);
                f.o->depth = d;
                if (d > kMaxDepth) fail(at, "the pickle nests deeper than " + std::to_string(kMaxDepth) + " levels");
                path.pop_back();
                kids.pop_back();
                continue;
            }
            PyObj* c = kids.back()[f.next++];
            const int st = state[c];
            if (st == 1) fail(at, c->describe() + " contains itself through other containers (a reference cycle)");
            if (st == 2) continue;
            if (path.size() >= (size_t)kMaxDepth)
                fail(at, "the pickle nests deeper than " + std::to_string(kMaxDepth) + " levels");
            state[c] = 1;
            path.push_back({c, 0});
            kids.push_back(children(*c));
        }
    }
    PyRef integer(int64_t v) {
        PyRef o = make(PyObj::Int);
        o->i = v;
        return o;
    }
    void push(PyRef o) { stack_.push_back(std::move(o)); }
    PyRef pop() {
        PyRef o = std::move(stack_.back());
        stack_.pop_back();
        return o;
    }
    // k items above the innermost mark (or the stack bottom when there is no mark).
    void need(size_t at, size_t k) {
        const size_t base = marks_.empty() ? 0 : marks_.back();
        if (stack_.size() < base + k) fail(at, "malformed pickle: stack underflow");
    }
    const PyRef& top(size_t at) {
        need(at, 1);
        return stack_.back();
    }
    std::vector<PyRef> pop_mark(size_t at) {
        if (marks_.empty()) fail(at, "malformed pickle: no MARK");
        const size_t m = marks_.back();
        marks_.pop_back();
        std::vector<PyRef> v(stack_.begin() + m, stack_.end());
        stack_.resize(m);
        return v;
    }
    PyRef memo(size_t at, uint32_t k) {
        auto it = memo_.find(k);
        if (it == memo_.end()) fail(at, "malformed pickle: memo " + std::to_string(k) + " was never stored");
        return it->second;
    }
    void check_depth(size_t at, const PyObj& o) const {
        if (o.depth > kMaxDepth) fail(at, "the pickle nests deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    // A container put inside itself would be a shared_ptr cycle, never freed (fuzz_torch_pt: "N)2a"); longer
    // cycles are found by check_graph at STOP.
    void no_self(size_t at, const PyObj& c, const PyRef& x) const {
        if (x.get() == &c) fail(at, c.describe() + " put inside itself (a reference cycle)");
    }
    void append(size_t at, PyObj& c, const PyRef& x) {
        if (!c.is(PyObj::List) && !c.is(PyObj::Tuple) && !c.is(PyObj::Set))
            fail(at, "APPEND to " + c.describe());
        no_self(at, c, x);
        c.items.push_back(x);
        c.depth = std::max(c.depth, x->depth + 1);
        check_depth(at, c);
    }
    void set_items(size_t at, PyObj& d, const std::vector<PyRef>& kv) {
        if (!d.is(PyObj::Dict)) fail(at, "SETITEM on " + d.describe());
        if (kv.size() % 2) fail(at, "malformed pickle: SETITEMS with an odd number of items");
        for (size_t j = 0; j < kv.size(); j += 2) {
            no_self(at, d, kv[j]);
            no_self(at, d, kv[j + 1]);
            d.dict.emplace_back(kv[j], kv[j + 1]);
            d.depth = std::max({d.depth, kv[j]->depth + 1, kv[j + 1]->depth + 1});
        }
        check_depth(at, d);
    }
    PyRef object(size_t at, const std::string& cls, const std::vector<PyRef>& args) {
        PyRef o = make(PyObj::Object);
        o->s = cls;
        for (const auto& a : args) append_arg(at, *o, a);
        return o;
    }
    void append_arg(size_t at, PyObj& o, const PyRef& a) {
        no_self(at, o, a);
        o.items.push_back(a);
        o.depth = std::max(o.depth, a->depth + 1);
        check_depth(at, o);
    }
    static std::vector<int64_t> ints(const PyObj& t) {
        std::vector<int64_t> v;
        for (const auto& x : t.items) v.push_back(x->i);
        return v;
    }
    static bool all_ints(const PyObj& t) {
        if (!t.is(PyObj::Tuple)) return false;
        for (const auto& x : t.items)
            if (!x->is(PyObj::Int)) return false;
        return true;
    }
    PyRef storage(size_t at, const PyObj& pid) {
        const auto& v = pid.items;
        if (!pid.is(PyObj::Tuple) || v.size() != 5 || !v[0]->is(PyObj::Str) || v[0]->s != "storage" ||
            !v[1]->is(PyObj::Global) || !storage_dtype(v[1]->s) || !v[2]->is(PyObj::Str) || !v[4]->is(PyObj::Int))
            fail(at, "persistent id is not torch's ('storage', type, key, location, numel)");
        PyRef o = make(PyObj::Storage);
        o->dtype = storage_dtype(v[1]->s);
        o->key = v[2]->s;
        o->storage_numel = v[4]->i;
        if (o->key.empty() || o->key.find_first_of("/\\") != std::string::npos || o->storage_numel < 0)
            fail(at, "storage key '" + o->key + "' or size is invalid");
        return o;
    }
    // A REDUCE: the data-building functions are interpreted here; a class becomes an Object of its arguments.
    PyRef reduce(size_t at, const std::string& fn, const std::vector<PyRef>& a) {
        if (fn == "collections.OrderedDict") {
            PyRef d = make(PyObj::Dict);
            if (!a.empty()) {
                if (!a[0]->is(PyObj::List)) fail(at, "OrderedDict from " + a[0]->describe());
                for (const auto& kv : a[0]->items) {
                    if (!kv->is(PyObj::Tuple) && !kv->is(PyObj::List)) fail(at, "OrderedDict item is " + kv->describe());
                    if (kv->items.size() != 2) fail(at, "OrderedDict item is not a pair");
                    set_items(at, *d, kv->items);
                }
            }
            return d;
        }
        if (fn == "builtins.set" || fn == "__builtin__.set" || fn == "builtins.frozenset" || fn == "__builtin__.frozenset") {
            PyRef s = make(PyObj::Set);
            if (!a.empty()) {
                if (!a[0]->is(PyObj::List) && !a[0]->is(PyObj::Tuple)) fail(at, "set from " + a[0]->describe());
                for (const auto& x : a[0]->items) append(at, *s, x);
            }
            return s;
        }
        if (fn == "torch._utils._rebuild_tensor" || fn == "torch._utils._rebuild_tensor_v2") {
            // (storage, storage_offset, size, stride, ...): requires_grad, hooks and metadata are not needed.
            if (a.size() < 4 || !a[0]->is(PyObj::Storage) || !a[1]->is(PyObj::Int) || !all_ints(*a[2]) ||
                !all_ints(*a[3]) || a[2]->items.size() != a[3]->items.size())
                fail(at, fn + " needs (storage, offset, size, stride)");
            PyRef t = make(PyObj::Tensor);
            t->key = a[0]->key, t->dtype = a[0]->dtype, t->storage_numel = a[0]->storage_numel;
            t->offset = a[1]->i, t->shape = ints(*a[2]), t->stride = ints(*a[3]);
            // Every element inside the storage, and no more elements than it holds (a checkpoint has no
            // broadcast, stride-0 views); overflow-checked, as the numbers come from the file.
            int64_t last = t->offset, n = 1, span;
            bool bad = t->offset < 0;
            for (size_t d = 0; d < t->shape.size(); ++d) {
                if (t->shape[d] < 0 || t->stride[d] < 0) fail(at, "tensor with a negative size or stride");
                if (t->shape[d] == 0) n = 0;
                else bad = bad || __builtin_mul_overflow(t->shape[d] - 1, t->stride[d], &span) ||
                           __builtin_add_overflow(last, span, &last) || __builtin_mul_overflow(n, t->shape[d], &n);
            }
            if (bad || (n > 0 && (last >= t->storage_numel || n > t->storage_numel)))
                fail(at, "tensor reaches past its storage " + t->key);
            return t;
        }
        if (fn == "torch._utils._rebuild_parameter" || fn == "torch._utils._rebuild_parameter_with_state") {
            if (a.empty() || !a[0]->is(PyObj::Tensor)) fail(at, fn + " needs a tensor");
            return a[0];  // a Parameter is its data; requires_grad and hooks do not matter here
        }
        if (fn == "_codecs.encode") {  // bytes under protocol 2: encode(str, 'latin1')
            if (a.size() != 2 || !a[0]->is(PyObj::Str) || !a[1]->is(PyObj::Str) || a[1]->s != "latin1")
                fail(at, "_codecs.encode other than (str, 'latin1')");
            PyRef b = make(PyObj::Bytes);
            const std::string& u = a[0]->s;  // UTF-8 of code points < 256
            for (size_t j = 0; j < u.size(); ++j) {
                const uint8_t c = u[j];
                if (c < 0x80) b->s += (char)c;
                else if ((c & 0xfe) == 0xc2 && j + 1 < u.size()) b->s += (char)(((c & 1) << 6) | (u[++j] & 0x3f));
                else fail(at, "_codecs.encode of a non-latin1 string");
            }
            return b;
        }
        if (storage_dtype(fn)) fail(at, "a storage type called as a function");
        return object(at, fn, a);
    }

    const std::string& file_;
    const uint8_t* p_;
    size_t n_, pos_ = 0;
    std::vector<PyRef> stack_;
    std::vector<size_t> marks_;
    std::vector<std::weak_ptr<PyObj>> made_;  // every container, to break cycles if the pickle fails
    bool done_ = false;
    std::unordered_map<uint32_t, PyRef> memo_;
};

std::string zip_message(zip_error_t* e) { return zip_error_strerror(e); }

}  // namespace

// ----------------------------------------------------------------------------------------------------
// The zip

TorchPtFile::TorchPtFile(const std::string& path) : path_(path) {
    int code = 0;
    zip_ = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
    if (!zip_) {
        zip_error_t e;
        zip_error_init_with_code(&e, code);
        const std::string why = zip_message(&e);
        zip_error_fini(&e);
        Y5_FAIL("%s: not a readable PyTorch zip checkpoint (%s; a truncated or damaged file, or torch.save's "
                "pre-1.6 format)", path.c_str(), why.c_str());
    }
    try {
        // torch.save writes every entry under one folder, "<archive>/data.pkl" first.
        const zip_int64_t n = zip_get_num_entries(zip_, 0);
        for (zip_int64_t i = 0; i < n && prefix_.empty(); ++i) {
            const char* name = zip_get_name(zip_, (zip_uint64_t)i, 0);
            const std::string s = name ? name : "";
            const size_t slash = s.find('/');
            if (slash != std::string::npos && s.substr(slash) == "/data.pkl") prefix_ = s.substr(0, slash + 1);
        }
        Y5_CHECK(!prefix_.empty(), "%s: a zip without <archive>/data.pkl: not a PyTorch checkpoint", path.c_str());
        if (zip_name_locate(zip_, (prefix_ + "byteorder").c_str(), 0) >= 0) {
            const std::vector<uint8_t> b = entry(prefix_ + "byteorder");
            Y5_CHECK(std::string(b.begin(), b.end()) == "little", "%s: big-endian tensors are not supported",
                     path.c_str());
        }
        const std::vector<uint8_t> pkl = entry(prefix_ + "data.pkl");
        root_ = Unpickler(path_, pkl.data(), pkl.size()).run();
    } catch (...) {
        zip_discard(zip_);
        throw;
    }
}

TorchPtFile::~TorchPtFile() {
    if (zip_) zip_discard(zip_);  // read-only: nothing to write back
}

std::vector<uint8_t> TorchPtFile::entry(const std::string& name) const {
    zip_stat_t st;
    zip_stat_init(&st);
    Y5_CHECK(zip_stat(zip_, name.c_str(), 0, &st) == 0 && (st.valid & ZIP_STAT_SIZE), "%s: no entry %s in the zip",
             path_.c_str(), name.c_str());
    // The sizes come from the file: a stored entry (torch.save's) holds as many bytes as it takes, a deflated one
    // at most 1032 times as many, so a lying header cannot ask for any amount of memory.
    Y5_CHECK((st.valid & ZIP_STAT_COMP_SIZE) && (st.valid & ZIP_STAT_COMP_METHOD) &&
                 (st.comp_method == ZIP_CM_STORE ? st.size == st.comp_size : st.size / 1032 <= st.comp_size),
             "%s: entry %s claims %llu bytes from %llu stored (a damaged zip)", path_.c_str(), name.c_str(),
             (unsigned long long)st.size, (unsigned long long)st.comp_size);
    zip_file_t* f = zip_fopen(zip_, name.c_str(), 0);
    Y5_CHECK(f, "%s: cannot open %s: %s", path_.c_str(), name.c_str(), zip_strerror(zip_));
    std::vector<uint8_t> buf(st.size);
    const zip_int64_t got = st.size ? zip_fread(f, buf.data(), st.size) : 0;
    uint8_t extra;
    const zip_int64_t more = got == (zip_int64_t)st.size ? zip_fread(f, &extra, 1) : 0;  // EOF: the CRC is checked
    const std::string why = got < 0 || more < 0 ? zip_file_strerror(f) : "";
    zip_fclose(f);
    Y5_CHECK(got == (zip_int64_t)st.size && more == 0, "%s: cannot read %s (%s)", path_.c_str(), name.c_str(),
             why.empty() ? "short read" : why.c_str());
    return buf;
}

template <class T> static std::vector<T> convert(const std::string& path, const PyObj& t, const std::vector<uint8_t>& b) {
    Y5_CHECK(t.is(PyObj::Tensor), "%s: expected a tensor, got %s", path.c_str(), t.describe().c_str());
    const size_t es = dtype_size(t.dtype);
    Y5_CHECK((uint64_t)t.storage_numel <= b.size() / es, "%s: storage %s holds %zu bytes, too few for its %lld %s "
             "elements", path.c_str(), t.key.c_str(), b.size(), (long long)t.storage_numel, t.dtype.c_str());
    const int kind = t.dtype == "F16" ? 0 : t.dtype == "BF16" ? 1 : t.dtype == "F32" ? 2 : t.dtype == "F64" ? 3 : -1;
    Y5_CHECK(kind >= 0, "%s: storage %s holds %s, not floats", path.c_str(), t.key.c_str(), t.dtype.c_str());
    auto value = [&](int64_t k) -> T {
        const uint8_t* p = b.data() + k * es;
        uint16_t h;
        float f;
        double d;
        switch (kind) {
            case 0: std::memcpy(&h, p, 2); return (T)f16_to_f32(f16{h});
            case 1: std::memcpy(&h, p, 2); return (T)f32_from_bits((uint32_t)h << 16);
            case 2: std::memcpy(&f, p, 4); return (T)f;
            default: std::memcpy(&d, p, 8); return (T)d;
        }
    };
    // Row-major walk over the shape with the tensor's strides (checked inside the storage when unpickled).
    const int64_t n = t.numel();
    std::vector<T> out((size_t)n);
    std::vector<int64_t> idx(t.shape.size(), 0);
    for (int64_t k = 0; k < n; ++k) {
        int64_t off = t.offset;
        for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.stride[d];
        out[(size_t)k] = value(off);
        for (size_t d = idx.size(); d-- > 0;) {
            if (++idx[d] < t.shape[d]) break;
            idx[d] = 0;
        }
    }
    return out;
}

std::vector<float> TorchPtFile::read_f32(const PyObj& t) const {
    return convert<float>(path_, t, t.is(PyObj::Tensor) ? entry(prefix_ + "data/" + t.key) : std::vector<uint8_t>{});
}

std::vector<double> TorchPtFile::read_f64(const PyObj& t) const {
    return convert<double>(path_, t, t.is(PyObj::Tensor) ? entry(prefix_ + "data/" + t.key) : std::vector<uint8_t>{});
}

}  // namespace y5
