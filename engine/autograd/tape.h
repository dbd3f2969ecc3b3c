/*
 * Autograd tape. Ops (engine/ops/ops.h) return Vars: a tensor plus the id of its node on the tape. When an
 * op has an input that needs a gradient and the tape is recording, it registers its output as a node
 * and records a backward closure next to its forward code. backward() seeds the root's gradient and
 * runs the closures in reverse order of recording, which is a valid topological order because every op
 * recorded after its inputs existed.
 * Gradients accumulate (+=): a tensor used by two ops (a C3 split, a Concat skip, SPPF's cascade) receives both
 * contributions with no special case. A node's gradient is allocated from the gradient arena on first touch and
 * zeroed by the tape (grad), or left for its first producer to write (grad_lazy, grad_from: a convolution's dgrad
 * with cuDNN's beta 0, BatchNorm over its output's gradient; on the CPU the op's pieces zero their own parts); a
 * parameter's points into the parameter-gradient block instead.
 * NoGrad (RAII) turns recording off for inference: ops then record nothing and allocate no gradients.
 * The tape stores no data, only closures over arena views; clear() forgets them and rewinds the arena.
 * Recomputation (Ctx::recompute, llm.c-style): an op whose output is cheap to rebuild from what the backward keeps
 * anyway (BatchNorm + activation from the conv output and the batch statistics) registers a recompute function.
 * drop() then gives the output's memory back to the activation arena (tracking) once the forward is done with
 * it; a backward closure reads its inputs through value(), which rebuilds a dropped one the first time and keeps
 * it until the node's own backward has run. A dropped value nothing reads in backward may have no function
 * (drop(v, arena, true): Detect's conv output, which its transpose replaced); value() of it is an error. A constant
 * may be rebuildable too (rebuildable(): the training step's image, from its uint8 pixels): no gradient flows into
 * it, and once dropped, value() rebuilds it and keeps it until clear().
 * Values freed in the backward (with recomputation: a tape that dropped values into an arena): a forward value is
 * read last by its own op's backward too (its readers were recorded later and ran earlier), so once that closure
 * ran, the value's block goes back to the arena — when no other value still waiting for its backward lies in the
 * same block (views: a C3's split, a reshape). The backward's late rebuilt values then reuse the memory of the
 * deep rows, and the caller may not read forward values after backward().
 * Gradient release: an op's output gradient is read last by that op's own backward (every other reader was
 * recorded later and so ran earlier), so backward() returns it to the arena right after (a tracking arena:
 * first fit, neighbours coalesced), and later gradients of any shape reuse the memory, as PyTorch frees
 * intermediate gradients during backward.
 * The arena's peak is then the largest set of gradients alive at once, not all of them. Parameters' and
 * leaves' gradients are kept; asking for a released one is an error.
 */
#pragma once
#include <functional>
#include <unordered_map>
#include <vector>

#include "engine/core/arena.h"

namespace y5 {

struct CudaContext;

// The label of the tape's gradient blocks in its arena (Arena::set_label): a measure tells them from values.
extern const char kGradLabel[];

struct Var {
    Tensor t;
    int id = -1;  // node on the tape; −1: no gradient flows into or through this value; ≤ −2: neither, but the
                  // backward may rebuild it (Tape::rebuildable)
    bool requires_grad() const { return id >= 0; }
    const Shape& shape() const { return t.shape; }
};

class Tape {
public:
    // The gradient arena is put in tracking mode (engine/core/arena.h) when it is empty, so released gradients'
    // memory is reused whatever their shapes.
    explicit Tape(Arena* grad_arena, CudaContext* cuda = nullptr) : arena_(grad_arena), cuda_(cuda) {
        if (arena_ && arena_->used() == 0) arena_->set_tracking(true);
    }

    bool recording() const { return recording_; }
    void set_recording(bool on) { recording_ = on; }

    // A parameter: its gradient accumulates into `grad` (a view of the parameter-gradient block).
    Var param(Tensor value, Tensor grad);
    // A leaf that wants a gradient, allocated on first use (inputs of gradient checks).
    Var leaf(Tensor value);
    static Var constant(Tensor value) { return Var{value, -1}; }
    // A constant (no gradient) that recomputation may drop and the backward rebuild, fn(dst) writing its value: the
    // training step's image, from its uint8 pixels. A plain constant when not recording.
    Var rebuildable(Tensor value, std::function<void(Tensor)> fn);

    // The output of an op: a node when recording and any input requires a gradient, else a constant. The op's
    // next record() is its backward, after which the output's gradient is released.
    Var output(Tensor value, std::initializer_list<const Var*> inputs);
    Var output(Tensor value, bool any_input_requires_grad);
    void record(std::function<void()> backward_fn);

    bool has_grad(const Var& v) const { return v.id >= 0 && nodes_[v.id].grad_ready; }

    // Recomputation: fn(dst) writes v's value into dst (v's shape and dtype).
    void set_recompute(const Var& v, std::function<void(Tensor)> fn);
    bool recomputable(const Var& v) const {
        return v.id >= 0 ? (bool)nodes_[v.id].recompute : v.id <= -2 && (bool)consts_[-2 - v.id].recompute;
    }
    // v's memory back to `values` (a tracking arena, the one v was allocated from); a no-op if already dropped.
    // dead: nothing reads v in backward, so it needs no recompute function.
    void drop(const Var& v, Arena* values, bool dead = false);
    // v's value for a backward closure: v.t, or, dropped, rebuilt into the arena it was dropped to (a rebuildable
    // constant's stays there until clear()).
    Tensor value(const Var& v);
    // In a backward closure: nothing that runs later in this backward reads v's value (the loss on Detect's maps:
    // their own op's backward reads only their gradients), so its memory goes back now, not after that op's
    // backward. A no-op outside backward, or for a value not freed in the backward.
    void value_read(const Var& v);
    Tensor grad(const Var& v);  // allocates and zeroes on first call
    // grad(v) for a backward that writes the gradient where it is the first producer: on v's first request it is
    // allocated and not zeroed, and *fresh is set (the op writes every element: CUDA's beta 0, or the CPU's pieces
    // zero their own parts before adding, each while it is in cache); otherwise *fresh is false.
    Tensor grad_lazy(const Var& v, bool* fresh);
    // In-place gradient (an elementwise op's backward, BatchNorm + activation): x's gradient, for its first
    // producer to overwrite, not add to. x must have none yet. When y (the op's output, same layout) holds its
    // gradient in the tracking arena, that memory is handed to x: the caller reads dy before writing dx at each
    // element, and y's gradient is released (asking for it is an error), so the two never occupy memory at once.
    // Otherwise x's gradient is allocated (not zeroed). Read y's gradient first.
    Tensor grad_from(const Var& x, const Var& y);
    // In backward, for the last reader of v's value (the loss on Detect's maps, whose own op's backward reads only
    // their gradients): v's gradient over v's value, which the caller reads before it writes each element. When the
    // value is a whole block of the arena freed in backward, that block becomes the gradient (the value is gone);
    // otherwise the gradient is allocated. Not zeroed either way: the caller writes every element.
    Tensor grad_over_value(const Var& v);

    // Runs the closures in reverse. With no seed the root must hold one element and gets gradient `scale` (1, or
    // mixed precision's loss scale); otherwise its gradient is `seed` (same shape), the gradient of Σ seed ⊙ root.
    void backward(const Var& root, const Tensor* seed = nullptr, double scale = 1.0);
    // Several roots at once (Detect's three maps): the gradient of Σ_i Σ seeds[i] ⊙ roots[i].
    void backward(const std::vector<Var>& roots, const std::vector<Tensor>& seeds);
    void clear();

    size_t size() const { return closures_.size(); }
    const Arena* arena() const { return arena_; }
    // Since the tape was made: bytes of gradient the tape zeroed (grad's first calls), and bytes handed out for their
    // first producers to write (grad_lazy's fresh ones, grad_from's and grad_over_value's).
    size_t zeroed_bytes() const { return zeroed_; }
    size_t written_bytes() const { return written_; }
    // Tests: every gradient handed out unzeroed (grad_lazy's fresh, a new one from grad_from or grad_over_value) is
    // filled with 0xFF bytes first (NaN in f16, f32 and f64), so an element its producer failed to write shows.
    void set_poison(bool on) { poison_ = on; }

private:
    Tensor new_grad(const Tensor& like);
    Tensor grad_node(const Var& v, bool* fresh);  // v's gradient, allocated unzeroed (*fresh) on the first call
    void zero(Tensor t);
    void seed(const Var& root, const Tensor* seed, double scale = 1.0);
    void run_backward();
    void release_value(int id);
    struct Node {
        Tensor value, grad;
        bool grad_ready = false;
        bool released = false;
        std::function<void(Tensor)> recompute;  // recomputation: rebuilds value
        Arena* values = nullptr;                // dropped: value's memory went back here
        Tensor rebuilt;                         // dropped and rebuilt by value(), until the node's backward ran
    };
    Arena* arena_;
    CudaContext* cuda_;
    bool recording_ = true, poison_ = false;
    size_t zeroed_ = 0, written_ = 0;
    std::vector<Node> nodes_;
    std::vector<Node> consts_;  // rebuildable constants (Var::id ≤ −2)
    Node& node_of(const Var& v, const char* what);  // nodes_ or consts_, checked
    std::vector<std::function<void()>> closures_;
    std::vector<int> output_of_;  // per closure: the node whose gradient it reads last (−1: none)
    Arena* dropped_to_ = nullptr; // the arena drop() gave values to: backward frees the others there too
    // In backward: the arena values are freed to (dropped_to_, tracking), each node's value block in it (offset, or
    // −1: not freed there, or freed already) and per block the values in it not yet freed.
    Arena* va_ = nullptr;
    std::vector<int64_t> block_;
    std::unordered_map<size_t, int> users_;
    int pending_ = -1;            // the latest op output, waiting for its op's record()
};

// Recording off for a scope: NoGrad ng(tape); model.forward(...)
class NoGrad {
public:
    explicit NoGrad(Tape& t) : tape_(t), was_(t.recording()) { t.set_recording(false); }
    ~NoGrad() { tape_.set_recording(was_); }

private:
    Tape& tape_;
    bool was_;
};

}  // namespace y5
