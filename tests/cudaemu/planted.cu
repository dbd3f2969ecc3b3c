/*
 * planted.cu: the kernels, launchers and host snippets of cudaemu's self-test (selftest.cpp), written as
 * ordinary CUDA and rewritten by cudaemu_rewrite like y5's own .cu files. The correct kernels check the
 * emulated semantics; everything named planted_* carries a deliberate bug that the emulator must report.
 * A comment "mark:NAME" labels a line that a fault message (or AddressSanitizer's report) must name;
 * selftest.cpp finds the line by reading this file, so code here may move freely.
 */
#include <cuda_runtime.h>

#include <vector>

// ---------------------------------------------------------------------------------------------------- reductions
// The sum of each block's 256 inputs: the textbook shared-memory tree.
__global__ void reduce_sum(const float* in, float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = in[blockIdx.x * 256 + t];
    __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Planted: the barrier inside the loop is missing, so a thread may add a partial sum before its writer is done.
__global__ void planted_reduce_no_barrier(const float* in, float* out) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = in[blockIdx.x * 256 + t];
    __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

void launch_reduce(const float* in, float* out, int blocks, bool planted) {
    if (planted) planted_reduce_no_barrier<<<blocks, 256>>>(in, out);
    else reduce_sum<<<blocks, 256>>>(in, out);
}

// ---------------------------------------------------------------------------------------------------- barriers
// Planted: threads at or past n return before the barrier that the others wait at.
__global__ void planted_early_return(const float* in, float* out, int n) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    if (t >= n) return;
    s[t] = in[t];
    __syncthreads();  // mark:divergent-barrier
    out[t] = s[n - 1 - t];
}

void launch_early_return(const float* in, float* out, int n) {
    planted_early_return<<<2, 64>>>(in, out, n);  // mark:early-return-launch
}

// 1024 threads pass values around a ring through shared memory, with a barrier pair per step.
__global__ void ring_1024(int* out, int steps) {
    __shared__ int s[1024];
    const int t = threadIdx.x;
    s[t] = t;
    __syncthreads();
    for (int k = 0; k < steps; ++k) {
        const int v = s[(t + 1) & 1023];
        __syncthreads();
        s[t] = v + 1;
        __syncthreads();
    }
    out[t] = s[t];
}

void launch_ring_1024(int* out, int steps) { ring_1024<<<1, 1024>>>(out, steps); }

// ---------------------------------------------------------------------------------------------------- warps
// One warp; lane l holds in[l]; out[k * 32 + l] is lane l's result of the k-th shuffle below.
__global__ void shuffles(const float* in, float* out, int width) {
    const int lane = threadIdx.x;
    const float v = in[lane];
    out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, 3, width);
    out[1 * 32 + lane] = __shfl_sync(0xffffffffu, v, 11, width);
    out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 2, width);
    out[3 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3, width);
    out[4 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5, width);
    out[5 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 8, width);
}

void launch_shuffles(const float* in, float* out, int width) { shuffles<<<1, 32>>>(in, out, width); }

// Votes over pred[t], n threads (whole warps): out[k * n + t] for k = full-warp ballot, any, all; then, in the
// lower half-warp only (mask 0x0000ffff; the upper half does not take part), ballot, any, all and a
// half-width shuffle down; the warp meets again at __syncwarp.
__global__ void votes(const int* pred, unsigned* out) {
    const int t = threadIdx.x, lane = t & 31, n = blockDim.x;
    const int p = pred[t];
    out[0 * n + t] = __ballot_sync(0xffffffffu, p);
    out[1 * n + t] = __any_sync(0xffffffffu, p);
    out[2 * n + t] = __all_sync(0xffffffffu, p);
    if (lane < 16) {
        out[3 * n + t] = __ballot_sync(0x0000ffffu, p);
        out[4 * n + t] = __any_sync(0x0000ffffu, p);
        out[5 * n + t] = __all_sync(0x0000ffffu, p);
        out[6 * n + t] = __shfl_down_sync(0x0000ffffu, (unsigned)lane, 1, 16);
    }
    __syncwarp();
}

void launch_votes(const int* pred, unsigned* out, int threads) { votes<<<1, threads>>>(pred, out); }

// Each lane writes its slot, then reads its neighbour's after __syncwarp (without a real rendezvous the first
// lane to run would read a slot not yet written).
__global__ void syncwarp_rotate(float* out) {
    __shared__ float s[32];
    const int lane = threadIdx.x;
    s[lane] = 2.0f * lane;
    __syncwarp();
    out[lane] = s[(lane + 1) & 31];
}

void launch_syncwarp_rotate(float* out) { syncwarp_rotate<<<1, 32>>>(out); }

// Threads that never reach a sync point before and after ones that do: warp 0 and warp 1's lower half write and
// exit; warp 1's upper half rotates its values by a shuffle among its 16 lanes. In forward order 48 threads have
// exited before one reaches a sync point (the emulator's runner hands over to fibers there), in reverse none.
__global__ void late_shuffle(int* out) {
    const int t = threadIdx.x, lane = t & 31;
    if (t < 48) {
        out[t] = 3 * t;
        return;
    }
    out[t] = __shfl_sync(0xffff0000u, 3 * t, 16 + (lane + 1) % 16);
}

void launch_late_shuffle(int* out) { late_shuffle<<<2, 64>>>(out); }

// Planted: the upper half-warp has exited, yet the shuffle's full mask names it.
__global__ void planted_shfl_exited_lane(float* out) {
    const int lane = threadIdx.x & 31;
    if (lane >= 16) return;
    out[lane] = __shfl_sync(0xffffffffu, (float)lane, 0);  // mark:exited-lane
}

void launch_shfl_exited_lane(float* out) { planted_shfl_exited_lane<<<1, 32>>>(out); }

// Planted warp misuse, one kind per `which`: 0, the half-warps are in different intrinsics with the full mask;
// 1, a shuffle with a half-warp mask reads a lane outside it; 2, half the warp waits in __syncwarp while the
// other half waits at __syncthreads (a deadlock).
__global__ void planted_warp_misuse(int* out, int which) {
    const int lane = threadIdx.x & 31;
    int r = 0;
    if (which == 0) {
        if (lane < 16) r = __shfl_sync(0xffffffffu, lane, 0);  // mark:mixed-shfl
        else r = (int)__ballot_sync(0xffffffffu, 1);           // mark:mixed-ballot
    } else if (which == 1) {
        if (lane < 16) r = __shfl_down_sync(0x0000ffffu, lane, 1);  // mark:outside-mask
    } else {
        if (lane < 16) __syncwarp();  // mark:deadlock-warp
        else __syncthreads();         // mark:deadlock-barrier
    }
    out[threadIdx.x] = r;
}

void launch_warp_misuse(int* out, int which) { planted_warp_misuse<<<1, 32>>>(out, which); }

// ---------------------------------------------------------------------------------------------------- indexing
// Every thread writes its linear index in the grid (x fastest, then y, z; blocks in that order, then threads),
// and its thread and block coordinates, a byte each.
__global__ void where_am_i(int* lin, int* tpack, int* bpack) {
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int g = b * threads + t;
    lin[g] = g;
    tpack[g] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16;
    bpack[g] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
}

void launch_where_am_i(int* lin, int* tpack, int* bpack, dim3 grid, dim3 block) {
    where_am_i<<<grid, block>>>(lin, tpack, bpack);
}

// Counts the threads that ran (one atomicAdd each): the probe for launch configurations.
__global__ void count_threads(int* count) { atomicAdd(count, 1); }

void launch_count_threads(int* count, dim3 grid, dim3 block, size_t smem) {
    count_threads<<<grid, block, smem>>>(count);  // mark:count-launch
}

// Integer and float atomicAdd from every thread of every block; each thread keeps the old value it got.
__global__ void atomics(int* isum, float* fsum, int* olds) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    olds[i] = atomicAdd(isum, 1);
    atomicAdd(fsum, 0.25f);
}

void launch_atomics(int* isum, float* fsum, int* olds, int blocks, int threads) {
    atomics<<<blocks, threads>>>(isum, fsum, olds);
}

// ---------------------------------------------------------------------------------------------------- shared memory
// Reverses each block's slice through dynamic shared memory (blockDim.x floats of it).
__global__ void reverse_dynamic(const float* in, float* out) {
    extern __shared__ float s[];
    const int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
    s[t] = in[base + t];
    __syncthreads();
    out[base + t] = s[n - 1 - t];
}

void launch_reverse_dynamic(const float* in, float* out, int blocks, int threads) {
    reverse_dynamic<<<blocks, threads, threads * sizeof(float)>>>(in, out);
}

// Several declarators in one __shared__ declaration: each must be a buffer of its own. 32 threads; out holds
// a reversed, b, count and flags (or -1), 32 floats each.
__global__ void shared_declarators(float* out) {
    __shared__ float a[32], b[32];
    __shared__ int count, flags[4];
    const int t = threadIdx.x;
    a[t] = (float)t;
    b[t] = 100.0f + t;
    if (t == 0) count = 7;
    if (t < 4) flags[t] = 3 * t;
    __syncthreads();
    out[t] = a[31 - t];
    out[32 + t] = b[t];
    out[64 + t] = (float)count;
    out[96 + t] = t < 4 ? (float)flags[t] : -1.0f;
}

void launch_shared_declarators(float* out) { shared_declarators<<<1, 32>>>(out); }

// Planted: block 0 fills all of s, later blocks only its lower half, and every block reads all of it: the upper
// half of later blocks was never written (static shared memory is per block).
__global__ void planted_uninit_shared(float* out) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    if (blockIdx.x == 0 || t < 32) s[t] = (float)t;
    __syncthreads();
    out[blockIdx.x * 64 + t] = s[t];
}

void launch_uninit_shared(float* out, int blocks) { planted_uninit_shared<<<blocks, 64>>>(out); }

// Planted: dynamic shared memory read before anything was written to it.
__global__ void planted_uninit_dynamic_shared(float* out) {
    extern __shared__ float d[];
    out[threadIdx.x] = d[threadIdx.x];
}

void launch_uninit_dynamic_shared(float* out, int threads) {
    planted_uninit_dynamic_shared<<<1, threads, threads * sizeof(float)>>>(out);
}

// ---------------------------------------------------------------------------------------------------- templates
template <class T> __global__ void scale(const T* in, T* out, T k, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = k * in[i];
}

void launch_scale(const float* in, float* out, float k, int n) { scale<float><<<(n + 63) / 64, 64>>>(in, out, k, n); }
void launch_scale(const int* in, int* out, int k, int n) { scale<int><<<(n + 63) / 64, 64>>>(in, out, k, n); }

// ---------------------------------------------------------------------------------------------------- streams
__global__ void fill(int* out, int n, int value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = value;
}

void launch_fill(int* out, int n, int value, cudaStream_t s) {
    fill<<<4, 64, 0, s>>>(out, n, value);  // mark:fill-launch
}

__global__ void twice(const int* in, int* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = 2 * in[i];
}

void launch_twice(const int* in, int* out, int n, cudaStream_t s) {
    twice<<<4, 64, 0, s>>>(in, out, n);  // mark:twice-launch
}

// ---------------------------------------------------------------------------------------------------- host snippets
// These run in a forked child of the self-test, because the emulator (or AddressSanitizer) ends the process.

// Planted: an off-by-one read: thread i reads in[i + 1], one element past the end for the last thread.
__global__ void planted_read_past_end(const float* in, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + 1];  // mark:off-by-one
}

void planted_out_of_bounds_read() {
    const int n = 64;
    std::vector<float> h(n, 1.0f);
    float *in = nullptr, *out = nullptr;
    cudaMalloc(&in, n * sizeof(float));
    cudaMalloc(&out, n * sizeof(float));
    cudaMemcpy(in, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    planted_read_past_end<<<2, 32>>>(in, out, n);
    cudaDeviceSynchronize();
}

// Copies n ints into a pinned buffer on a stream and returns the host's read of its first element: before the
// stream is synchronised (planted) or after.
int planted_pinned_read(bool synchronise) {
    const int n = 256;
    int *d = nullptr, *h = nullptr;
    cudaMalloc(&d, n * sizeof(int));
    cudaMallocHost(&h, n * sizeof(int));  // mark:pinned-alloc
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    fill<<<4, 64, 0, s>>>(d, n, 42);
    cudaMemcpyAsync(h, d, n * sizeof(int), cudaMemcpyDeviceToHost, s);
    if (synchronise) cudaStreamSynchronize(s);
    const int first = *(volatile int*)h;  // mark:pinned-read
    cudaStreamDestroy(s);
    cudaFreeHost(h);
    cudaFree(d);
    return first;
}
