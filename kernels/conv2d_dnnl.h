/*
 * conv2d on the CPU through oneDNN (Debian's libdnnl-dev, OpenMP runtime): the f32 passes y5's ops run when built
 * with Y5_DNNL and not switched off (env Y5_CONV=ref, or conv_dnnl_set(false); the emulated CUDA build defaults to
 * ref, Y5_CONV=dnnl turns it on there, because its cuDNN stand-in is the reference); the im2col + BLAS references in
 * kernels/conv2d.h stay the definition the tests compare against, and f64 always runs them. (Most pointwise
 * convolutions' passes run as GEMMs instead, conv_dnnl_sgemm among them: kernels/conv2d.h, conv_gemm_data.)
 * Semantics as the references: inp (N,C,H,W), weight (K,C,R,S), bias (K) or null, out (N,K,Ho,Wo), NCHW;
 * fprop writes out, dgrad and wgrad ACCUMULATE (+=) into dinp / dweight (the bias gradient stays in conv2d.h).
 * One image per primitive call (mb = 1), so fprop's and dgrad's results do not depend on how the ops group the
 * batch (weight gradients are sums over images in the order the caller fixes: conv2d_dnnl_wgrad_blocked below).
 * Layouts: oneDNN chooses (format any); y5's NCHW tensors are reordered into its choice and back per image, the
 * weights once per call, or once per op when the caller prepares them (conv2d_dnnl_weights). Plans (primitives and
 * reorders) are cached per geometry and pass, like the cuDNN plans.
 * Scratch: none of its own. Every call takes `work`, conv2d_dnnl_work_bytes(...) bytes from the caller (the Ctx's
 * work arena): the reordered weights, one image's reordered tensors, the primitive's scratchpad (user mode).
 * Threads: fprop and dgrad use conv_dnnl_set_threads(n) OpenMP threads (the calling thread's own setting, 1 unless
 * set, at most the max_threads given to conv2d_dnnl_work_bytes; oneDNN splits them over output channels and
 * pixels, not over the reduction, which tests/test_conv_dnnl.cpp checks bit for bit); wgrad runs on the calling
 * thread alone (oneDNN would split its reduction over pixels between threads). The thread count is part of a plan:
 * oneDNN fixes a primitive's split when it creates it.
 * Inference: fprop with `act` applies the activation to each output (after the bias) in the primitive, as oneDNN's
 * eltwise post-op, while the output is in cache: ReLU and LeakyReLU as eltwise_relu (α the slope, exact).
 * conv_dnnl_act_fusable(a) says which; others are an error. Not SiLU: eltwise_swish's own exp changes the bits, and
 * a box near a threshold then differs from the GPU's (tests/emu_e2e.sh compares y5val's tables); the caller applies
 * y5's SiLU to the slice right after the primitive instead.
 */
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

#include "kernels/activation.h"

namespace y5 {

bool conv_dnnl_built();              // compiled with oneDNN (CMake option Y5_DNNL)
bool conv_dnnl_on();                 // built in and not switched off (env Y5_CONV=ref)
void conv_dnnl_set(bool on);         // override the environment (tests, benches); on needs conv_dnnl_built()
void conv_dnnl_set_threads(int n);   // OpenMP threads for this thread's fprop/dgrad calls (default 1)
// Winograd F(4×4, 3×3) for the training passes (no bias, no post-op) of 3×3 stride-1 convolutions whose output is
// 16×16 or more, where oneDNN has it (AVX-512 cores): on unless env Y5_WINOGRAD=0; conv_dnnl_set_winograd overrides
// it (and drops the cached plans) and returns the previous setting; conv2d_dnnl_winograd says whether a geometry's
// training fprop takes it.
bool conv_dnnl_set_winograd(bool on);
bool conv2d_dnnl_winograd(int C, int H, int W, int K, int R, int S, int stride, int pad);
// Work bytes for any pass and any N, at 1 to max_threads threads (oneDNN's scratchpad grows with them).
size_t conv2d_dnnl_work_bytes(int C, int H, int W, int K, int R, int S, int stride, int pad, int max_threads);
bool conv_dnnl_act_fusable(Act a);  // Identity, SiLU, ReLU, LeakyReLU
// wre: the weights already in the plan's layout (conv2d_dnnl_weights below), or null: `weight` reordered per call.
void conv2d_dnnl_fprop(float* out, const float* inp, const float* weight, const float* bias, void* work, int N, int C,
                       int H, int W, int K, int R, int S, int stride, int pad, Act act = kNoAct,
                       const float* wre = nullptr);
// dinp and dweight may be null (skipped); weight is read for dgrad (or wre, as fprop's), inp for wgrad.
void conv2d_dnnl_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                          void* work, int N, int C, int H, int W, int K, int R, int S, int stride, int pad,
                          const float* wre = nullptr);
// Weights reordered once for many calls of one pass (an op's image groups; conv2d_parts' and Detect's calls per
// image): at 96 px, batch 16 the per-call weight reorders were about a sixth of oneDNN's time in a training step.
// conv2d_dnnl_weights_floats: floats of the fprop (dgrad false; bias and act as the calls', act fusable) or dgrad
// plan's weights, 0 when that plan reads (K,C,R,S) as it is (nothing to prepare, wre then unused);
// conv2d_dnnl_weights writes them into dst. The plan is the calling thread's (its thread count), as the calls'.
size_t conv2d_dnnl_weights_floats(bool dgrad, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                                  int stride, int pad);
// Split over output channels for the caller's threads (a serial reorder of the larger weights held the other thread
// idle, ~3 % of a 2-thread step's samples at 96 px): conv2d_dnnl_weights_parts says into how many parts (≤ want; 1
// where the layout pads K or C, whose padding only the whole reorder zeroes); part j of parts writes its channels'
// share of dst. Every part runs the preparing thread's plan: run them on threads with the same oneDNN thread count.
int conv2d_dnnl_weights_parts(bool dgrad, bool with_bias, Act act, int C, int H, int W, int K, int R, int S,
                              int stride, int pad, int want);
void conv2d_dnnl_weights(float* dst, bool dgrad, bool with_bias, Act act, const float* weight, int C, int H, int W,
                         int K, int R, int S, int stride, int pad, int part = 0, int parts = 1);
// Weight gradients summed in oneDNN's own diff-weights layout (blocked, e.g. OIhw16i16o), so that a batch's images
// cost one reorder into (K,C,R,S) in all rather than one each (at 96 px those reorders were a fifth of oneDNN's
// time in a training step): conv2d_dnnl_wgrad_floats floats per partial; conv2d_dnnl_wgrad_blocked sums the N images'
// gradients into dwb, image by image (image 0's written over dwb unless add); conv2d_dnnl_wgrad_sum adds G such
// partials (consecutive, `floats` apart) in order into the first, over the elements [i0, i1) (the callers split it
// over threads: each element's order is fixed, so any split gives the same bits); conv2d_dnnl_wgrad_finish adds dwb
// into dweight (K,C,R,S). wgrad's work is conv2d_dnnl_work_bytes's; dwb must not lie in it.
size_t conv2d_dnnl_wgrad_floats(int C, int H, int W, int K, int R, int S, int stride, int pad);
void conv2d_dnnl_wgrad_blocked(float* dwb, bool add, const float* dout, const float* inp, void* work, int N, int C,
                               int H, int W, int K, int R, int S, int stride, int pad);
// dinp += dgrad and dwb = the N images' blocked weight gradients (as the two calls above, the same bits), image by
// image, with dy reordered once for both passes where their plans take it in one layout (otherwise the two calls).
// wre: the dgrad weights prepared (conv2d_dnnl_weights), or null. Work: conv2d_dnnl_work_bytes. _dy_shared: whether
// the geometry's passes share dy on this thread (prepared: wre given).
bool conv2d_dnnl_dy_shared(bool prepared, int C, int H, int W, int K, int R, int S, int stride, int pad);
void conv2d_dnnl_backward_blocked(float* dinp, float* dwb, const float* dout, const float* inp, const float* weight,
                                  const float* wre, void* work, int N, int C, int H, int W, int K, int R, int S,
                                  int stride, int pad);
// The same for N images in one call (mb = N, one plan per N), written over dwb: on small maps a call's fixed cost
// (its diff-weights written, then summed, per image) outweighs one image's arithmetic (engine/ops/op.h,
// wgrad_groups). _ok: whether the N-image plan's diff-weights layout is the one-image plan's (the partials of both
// are summed and finished alike); _bytes: the call's work.
bool conv2d_dnnl_wgrad_group_ok(int N, int C, int H, int W, int K, int R, int S, int stride, int pad);
size_t conv2d_dnnl_wgrad_group_bytes(int N, int C, int H, int W, int K, int R, int S, int stride, int pad);
void conv2d_dnnl_wgrad_group(float* dwb, const float* dout, const float* inp, void* work, int N, int C, int H, int W,
                             int K, int R, int S, int stride, int pad);
void conv2d_dnnl_wgrad_sum(float* dwb, int G, int64_t floats, int64_t i0, int64_t i1);
// conv2d_dnnl_wgrad_finish split as conv2d_dnnl_weights: part j of parts adds its output channels' share.
int conv2d_dnnl_wgrad_parts(int C, int H, int W, int K, int R, int S, int stride, int pad, int want);
void conv2d_dnnl_wgrad_finish(float* dweight, const float* dwb, int C, int H, int W, int K, int R, int S, int stride,
                              int pad, int part = 0, int parts = 1);
void conv_dnnl_clear_cache();
// Row-major C (M,N) = alpha·op(A)·op(B) + beta·C through oneDNN's sgemm on one OpenMP thread (the pointwise
// convolutions' large GEMMs, kernels/conv2d.h: faster there than OpenBLAS's on this library's AVX-512 kernels).
void conv_dnnl_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                     int ldb, float beta, float* C, int ldc);

// ---- Blocked inference (a fused model's CPU forward, layers/model.cpp): one image's activations stay in oneDNN's
// channel-blocked layout nChw{B}c, (⌈C/B⌉, H, W, B) floats with the last block's lanes past C padding, between the
// layers, so no reorder runs around the convolutions. B = dnnl_block(): the block oneDNN's direct convolutions
// take on this CPU (16 with AVX-512, 8 with AVX2), 0 where they take neither (or oneDNN is off): no blocked path.
// Every activation is the convolution's eltwise post-op (SiLU as eltwise_swish, whose own exp is within 2e-7 of
// y5's, not its bits: dnnl_post_op says which); `add` adds another tensor (act(conv + b) + addend, a Bottleneck's
// shortcut, as a binary post-op). The input is blocked, or NCHW when nchw_in (the model's 3-channel image).
// Weights are reordered once (dnnl_bconv_weights) into the layout the primitive takes. Threads: `threads` of oneDNN's
// OpenMP team per call (part of the plan, as above), 1 when the caller runs images on its own threads; the small
// ops between the convolutions then run on the same team through dnnl_omp_for, whose threads are still spinning
// from the last convolution, rather than on y5's pool, which would fight them for the cores. Scratchpad: the
// calling thread's own buffer.
struct BConv {
    int C, H, W, K, R, S, stride, pad;
    bool nchw_in;
    int threads;
};
int dnnl_block();
bool dnnl_post_op(Act a);
size_t dnnl_bconv_weights_bytes(const BConv& g, Act act, bool add);
// Which layout the plan's weights take (a hash of their blocking): plans for other input sizes that give the same
// value can share one reordered copy of the weights.
uint64_t dnnl_bconv_weights_layout(const BConv& g, Act act, bool add);
void dnnl_bconv_weights(void* dst, const float* weight, const BConv& g, Act act, bool add);  // weight (K,C,R,S)
// add: `addend` (blocked, out's shape, not out itself: the convolution may store partial sums in out first).
void dnnl_bconv(float* out, const float* in, const void* weights, const float* bias, const BConv& g, Act act,
                const float* addend = nullptr);
// The model's image convolution through stem_conv (kernels/conv_stem.h) where it fits (the default), or through
// oneDNN like the others (false: bench_detect --ab's comparison).
void dnnl_stem_set(bool on);
// fn over [0, n) in `threads` static chunks (fn(begin, end) once per thread) on the OpenMP team; threads 1: fn(0, n).
void dnnl_omp_for(int threads, int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace y5
