/*
 * Ops on Vars: the layer between layers/ (which own parameters) and kernels/ (raw pointers). Each op
 * checks shapes, allocates its output from the activation arena, runs the CPU reference or the CUDA
 * launcher for the tensors' device, and, when the tape is recording, records its backward next to it.
 * CPU ops run in f32, or in f64 for gradient checks; CUDA ops run in f32.
 * A bad request (rank or shape mismatch, mixed devices or dtypes, an op with no kernel on the device)
 * is a y5::Error that names the op and the shapes.
 *
 * Shapes: images are (N,C,H,W); pooled vectors (N,C).
 */
#pragma once
#include <vector>

#include "engine/core/arena.h"
#include "engine/core/threadpool.h"
#include "engine/autograd/tape.h"
#include "kernels/activation.h"

namespace y5 {

struct LossFixed;  // kernels/loss.h

struct CudaContext;

// Everything an op needs besides its inputs. One per device, created once by the program.
struct Ctx {
    Arena* act = nullptr;   // outputs and saved statistics; rewound after each step
    Arena* work = nullptr;  // scratch that lives for one op call (im2col columns)
    Tape* tape = nullptr;
    CudaContext* cuda = nullptr;  // required for CUDA tensors
    // cuDNN's workspace when set, else `work`: measure_one_image (engine/app/memory.h) keeps it apart, since it is
    // capped by the workspace limit whatever the batch while the other scratch grows with it. CUDA ops that stage
    // their batch in chunks of images (Detect's maps before the transpose, f16 concat parts' float sums) take the
    // staging from the same arena, as many images as fit beside cuDNN's workspace, and record one image's bytes in
    // *staged when set (the largest; measuring: the plan adds them once, not per image).
    Arena* conv_work = nullptr;
    size_t* staged = nullptr;
    // Mixed precision (torch.autocast(dtype=float16) on YOLOv5's model): the modules cast each convolution's input,
    // weight and bias to f16, so activations and their gradients are f16 from the first conv on; BatchNorm and ECA
    // keep f32 parameters, and the loss and Detect's decode read the f16 maps in f32 (layers/).
    bool autocast = false;
    // Recomputation (y5train's --recompute, llm.c-style): a training batchnorm2d's output is rebuilt in the backward
    // from the conv output and the batch statistics it keeps anyway, so the layers drop it from the (tracking)
    // activation arena once the forward is done with it (Tape::drop); ops read saved inputs through Tape::value.
    bool recompute = false;
    // The training step's pipelined mode on CUDA (engine/app/step.h): yolo_loss copies its device-computed sums
    // here (page-locked, kLossItemsDoubles) without waiting, and they are read later (loss_items_arrived).
    double* loss_items_pinned = nullptr;
    // A captured step (--cuda-graph, engine/app/step.h): yolo_loss reads its packed targets from here (uploaded
    // before the graph runs) and leaves its items there (kernels/loss.h).
    const LossFixed* loss_fixed = nullptr;
};

// ---- tensor utilities (no tape)
void fill(Ctx& c, Tensor t, double v);
void copy(Ctx& c, Tensor dst, const Tensor& src);  // any pair of devices, same shape and dtype
// y += a·x (f32, f64, f16). y_fresh: y is a gradient from Tape::grad_lazy that said *fresh (not zeroed): y = a·x,
// y unread, with the bits of an axpy into a zeroed y.
void axpy(Ctx& c, Tensor y, double a, const Tensor& x, bool y_fresh = false);
// Mixed precision's conversions, same element count, f32 ↔ f16 (round to nearest even): dst = src, dst += src.
void convert(Ctx& c, Tensor dst, const Tensor& src);
void convert_add(Ctx& c, Tensor dst, const Tensor& src);

// ---- differentiable ops
// Ops marked [f16] also take f16 tensors (mixed precision): f16 storage, float arithmetic.
// x as dtype `to` (f32 ↔ f16); x itself when it has that dtype. The backward adds the gradient converted back.
Var cast(Ctx& c, const Var& x, DType to);  // [f16]
// x (N,C,H,W), w (K,C,R,S), b (K) or null → (N,K,Ho,Wo); f16: x, w, b all f16 (the model casts w and b)
Var conv2d(Ctx& c, const Var& x, const Var& w, const Var* b, int stride, int pad);  // [f16]
// A 1×1 convolution (stride 1, no padding) of the channel concatenation of xs without building it: xs[i]
// (N,C_i,H,W), w (K,ΣC_i,1,1), b (K) or null → (N,K,H,W), the same as conv2d(concat(xs), w, b, 1, 0) up to float
// reassociation. C3's cv3 and the head's C3 after a Concat read their inputs this way (at most 8 parts).
constexpr int kMaxConvParts = 8;
Var conv2d_parts(Ctx& c, const std::vector<Var>& xs, const Var& w, const Var* b);  // [f16]
// Inference: act(conv2d(x, w, b)) and act(conv2d_parts(xs, w, b)) as one op, no intermediate. On the CPU each
// thread applies the activation to its part of the output right after its convolution (f32 with oneDNN: inside the
// primitive, its eltwise post-op, for the kinds conv_dnnl_act_fusable takes, exact; SiLU is y5's, the same bits);
// CUDA tensors, or a recording tape, run the two ops (the convolution's output released to a tracking arena). [f16]
Var conv2d_act(Ctx& c, const Var& x, const Var& w, const Var* b, int stride, int pad, Act act);
Var conv2d_parts_act(Ctx& c, const std::vector<Var>& xs, const Var& w, const Var* b, Act act);
// x (N,C,H,W); gamma, beta, running_mean, running_var (C). Training normalises with batch statistics and
// updates the running ones (PyTorch semantics); eval uses the running ones. `act` is fused: the result is
// act(bn(x)) and bn(x) is never stored (the backward recomputes it), which is what a Conv's BN+SiLU needs.
// [f16]: x (so out, dx) f16 with f32 gamma, beta and running statistics (dgamma, dbeta f32), as under autocast.
Var batchnorm2d(Ctx& c, const Var& x, const Var& gamma, const Var& beta, Tensor running_mean, Tensor running_var,
                bool training, float eps, float momentum, Act act = kNoAct);  // [f16]
Var activation(Ctx& c, const Var& x, Act a);  // any shape [f16]
Var sigmoid(Ctx& c, const Var& x);            // any shape [f16]
Var maxpool2d(Ctx& c, const Var& x, int k, int stride, int pad);  // [f16]
// SPPF's pools fused: x (N,C,H,W) → (N,4C,H,W) = cat(x, m(x), m(m(x)), m(m(m(x)))), m = maxpool2d(k, 1, k/2)
// (k odd); the same values and gradients as those four ops and the concat, without their intermediates (in f16
// the cascade's gradients stay float and dx is rounded once).
Var sppf_pool(Ctx& c, const Var& x, int k);  // [f16]
Var upsample_nearest(Ctx& c, const Var& x, int scale);  // [f16]
Var concat(Ctx& c, const std::vector<Var>& xs);  // along channels (dim 1) of (N,Ci,H,W) [f16]
Var add(Ctx& c, const Var& a, const Var& b);      // same shape [f16]
Var global_avgpool(Ctx& c, const Var& x);         // (N,C,H,W) → (N,C) [f16]
Var conv1d_channels(Ctx& c, const Var& x, const Var& w);  // x (N,C), w (k), k odd → (N,C) [f16]
Var scale_channels(Ctx& c, const Var& x, const Var& s);   // x (N,C,H,W) · s (N,C) → (N,C,H,W) [f16]
// ECA fused: x·σ(conv1d_channels(global_avgpool(x), w)), w (k) with k odd; the four ops above in two passes over x
// (forward) and two plus a small one (backward), keeping only the (N,C) means and gates. Mixed precision: f16 x
// (out, dx) with w, its gradient and the saved means and gates in f32.
Var eca(Ctx& c, const Var& x, const Var& w);  // [f16]
Var transpose12(Ctx& c, const Var& x, Shape out_shape);   // x viewed (B,M,N) → (B,N,M), returned as out_shape [f16]
// YOLOv5 Detect's head conv and view/permute in one: x (N,C,H,W), w (na·no,C,1,1), b (na·no) or null → (N,na,H,W,no),
// the convolution's (N,na·no,H,W) output kept only in scratch (per image on the CPU: conv2d then transpose12's bits;
// per chunk of images staged in the work arena on CUDA). [f16]
Var conv1x1_maps(Ctx& c, const Var& x, const Var& w, const Var* b, int na);
Var space_to_depth2(Ctx& c, const Var& x);                // Focus: (N,C,H,W) → (N,4C,H/2,W/2) [f16]


}  // namespace y5
