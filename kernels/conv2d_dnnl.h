/*
 * conv2d on the CPU through oneDNN (Debian's libdnnl-dev, OpenMP runtime): the f32 passes y5's ops run when built
 * with Y5_DNNL and not switched off (env Y5_CONV=ref, or conv_dnnl_set(false); the emulated CUDA build defaults to
 * ref, Y5_CONV=dnnl turns it on there, because its cuDNN stand-in is the reference); the im2col + BLAS references in
 * kernels/conv2d.h stay the definition the tests compare against, and f64 always runs them.
 * Semantics as the references: inp (N,C,H,W), weight (K,C,R,S), bias (K) or null, out (N,K,Ho,Wo), NCHW;
 * fprop writes out, dgrad and wgrad ACCUMULATE (+=) into dinp / dweight (the bias gradient stays in conv2d.h).
 * One image per primitive call (mb = 1), so a call's result does not depend on how the ops group the batch.
 * Layouts: oneDNN chooses (format any); y5's NCHW tensors are reordered into its choice and back per image, the
 * weights once per call. Plans (primitives and reorders) are cached per geometry and pass, like the cuDNN plans.
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

#include "kernels/activation.h"

namespace y5 {

bool conv_dnnl_built();              // compiled with oneDNN (CMake option Y5_DNNL)
bool conv_dnnl_on();                 // built in and not switched off (env Y5_CONV=ref)
void conv_dnnl_set(bool on);         // override the environment (tests, benches); on needs conv_dnnl_built()
void conv_dnnl_set_threads(int n);   // OpenMP threads for this thread's fprop/dgrad calls (default 1)
// Work bytes for any pass and any N, at 1 to max_threads threads (oneDNN's scratchpad grows with them).
size_t conv2d_dnnl_work_bytes(int C, int H, int W, int K, int R, int S, int stride, int pad, int max_threads);
bool conv_dnnl_act_fusable(Act a);  // Identity, SiLU, ReLU, LeakyReLU
void conv2d_dnnl_fprop(float* out, const float* inp, const float* weight, const float* bias, void* work, int N, int C,
                       int H, int W, int K, int R, int S, int stride, int pad, Act act = kNoAct);
// dinp and dweight may be null (skipped); weight is read for dgrad, inp for wgrad.
void conv2d_dnnl_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                          void* work, int N, int C, int H, int W, int K, int R, int S, int stride, int pad);
void conv_dnnl_clear_cache();

}  // namespace y5
