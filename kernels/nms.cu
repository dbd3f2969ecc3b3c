/*
 * CUDA side of kernels/nms.h: nms_image for a whole batch of decoded predictions on the device. Per group
 * of images (as many as the candidate buffer holds):
 *   1. nms_candidates_kernel, one thread per prediction row: the rows nms_image keeps (obj > conf, class
 *      scores over conf in multi-label mode or the best class, the classes filter), each written as one
 *      64-bit key  [~ordered(score) : 32 | row·nc + class : idx_bits]  at a slot reserved with one atomic
 *      per row in its image's segment. The keys are unique, so the slot order (which the atomics make
 *      random) does not matter: ascending keys are score descending, then row, then class, the order of
 *      nms_image's stable_sort over its (row, class) push order;
 *   2. cub::DeviceSegmentedRadixSort sorts each image's keys; the first max_nms count;
 *   3. nms_boxes_kernel decodes the kept keys into class-offset boxes (float4);
 *   4. the candidate counts come to the host (the one sync of the group), then per image with candidates:
 *      nms_mask_kernel, torchvision's layout: block (row block, column block) of 64 boxes each, bit j of
 *      mask[i][column block] set when IoU(box i, box j) > iou_thres for j > i; nms_reduce_kernel, one block,
 *      the greedy pass over the mask in score order, writing at most max_det detections and their count.
 * At the end the detections (bs × max_det rows of 6 floats) and counts come to the host.
 * All float math goes through the Y5_HD helpers of nms.h (no FMA contraction), so results are bitwise
 * nms_image's. Tested against it in tests/test_gpu_ops.cpp.
 */
#include <cub/device/device_segmented_radix_sort.cuh>

#include <climits>

#include "kernels/cuda_utils.cuh"
#include "kernels/nms.h"

namespace y5 {

namespace {

constexpr size_t kSortTemp = size_t(1) << 20;           // CUB's temp storage (DoubleBuffer: small; checked per call)
constexpr int kMaskBlock = 64;                          // boxes per mask block: one bit each in a uint64
constexpr int kReduceThreads = 256;

size_t align_up(size_t b) { return (b + 255) / 256 * 256; }

// Sizes and the scratch layout for (bs, N, no, p); every term grows with N (nms.h promises it).
struct NmsPlan {
    int nc = 0, per_row = 0, G = 0, maxn = 0, maxdet = 0, idx_bits = 0, col_blocks = 0;
    int64_t cap = 0;  // candidate slots per image
    size_t allowed = 0, counts = 0, begins = 0, ends = 0, keys0 = 0, keys1 = 0, temp = 0, boxes = 0, mask = 0,
           out_count = 0, out = 0, total = 0;
};

// budget: bytes of candidate keys (both sort buffers) per group of images (nms.h).
NmsPlan make_plan(int bs, int N, int no, const NmsParams& p, size_t budget) {
    NmsPlan P;
    P.nc = no - 5;
    Y5_CHECK(P.nc >= 1 && N >= 0 && bs >= 0, "nms_batch_cuda: bad shape (%d, %d, %d)", bs, N, no);
    P.per_row = p.multi_label && P.nc > 1 ? P.nc : 1;
    P.cap = (int64_t)N * P.per_row;
    const int64_t idx_range = (int64_t)N * P.nc;  // key index field: row·nc + class
    while (P.idx_bits < 1 || ((int64_t)1 << P.idx_bits) < idx_range) ++P.idx_bits;
    Y5_CHECK(P.idx_bits <= 32, "nms_batch_cuda: %lld rows × classes do not fit a 32-bit key index", (long long)idx_range);
    P.maxn = (int)std::max<int64_t>(0, std::min<int64_t>(p.max_nms, P.cap));
    P.maxdet = std::max(0, std::min(p.max_det, P.maxn));
    P.col_blocks = CEIL_DIV(P.maxn, kMaskBlock);
    const size_t cand = 16 * (size_t)std::max<int64_t>(P.cap, 1);
    P.G = (int)std::max<size_t>(1, std::min<size_t>((size_t)std::max(bs, 1), budget / cand));
    Y5_CHECK((int64_t)P.G * P.cap < INT_MAX, "nms_batch_cuda: %lld candidate slots per image overflow the sort's offsets",
             (long long)P.cap);
    // Region sizes bounded by terms monotone in N (see nms.h): G·cap·16 ≤ min(bs·cap·16, max(budget, 16·cap)),
    // and G·maxn·16 likewise with maxn for cap.
    const size_t b = (size_t)std::max(bs, 1);
    const size_t keys = std::min(b * cand, std::max(budget, cand)) / 2;
    const size_t nboxes = 16 * (size_t)std::max(P.maxn, 1);
    size_t off = 0;
    auto take = [&](size_t bytes) {
        const size_t at = off;
        off += align_up(bytes);
        return at;
    };
    P.allowed = take((size_t)P.nc);
    P.counts = take(b * sizeof(int));
    P.begins = take(b * sizeof(int));
    P.ends = take(b * sizeof(int));
    P.keys0 = take(keys);
    P.keys1 = take(keys);
    P.temp = take(kSortTemp);
    P.boxes = take(std::min(b * nboxes, std::max(budget, nboxes)));
    P.mask = take((size_t)P.maxn * P.col_blocks * sizeof(uint64_t));
    P.out_count = take(b * sizeof(int));
    P.out = take(b * P.maxdet * 6 * sizeof(float));
    P.total = off;
    return P;
}

// Float → uint32 whose unsigned order is the float order (NaN never reaches here: it fails score > conf).
__device__ __forceinline__ uint32_t ordered_bits(float f) {
    if (f == 0.0f) f = 0.0f;  // −0 ties +0 in nms_image's sort: one key for both
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t make_key(float score, int64_t idx, int idx_bits) {
    return ((uint64_t)(~ordered_bits(score)) << idx_bits) | (uint64_t)idx;
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// CUDA kernels

// dec (g, N, no) of this group's images → keys[b·cap + slot] for their candidates, counts[b] of each.
// allowed: nc flags of the classes filter, or null for all classes.
__global__ static void nms_candidates_kernel(const float* __restrict__ dec, int g, int N, int no, int nc, bool multi,
                                             float conf, const unsigned char* __restrict__ allowed, int idx_bits,
                                             int64_t cap, uint64_t* __restrict__ keys, int* __restrict__ counts) {
    const int64_t rows = (int64_t)g * N;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < rows; t += (int64_t)gridDim.x * blockDim.x) {
        const float* r = dec + t * no;
        if (!(r[4] > conf)) continue;
        const int b = (int)(t / N);
        const int64_t i = t - (int64_t)b * N;
        uint64_t* seg = keys + b * cap;
        if (multi) {
            int k = 0;
            for (int c = 0; c < nc; ++c) k += nms_score(r, c) > conf && (!allowed || allowed[c]);
            if (k == 0) continue;
            int slot = atomicAdd(&counts[b], k);
            for (int c = 0; c < nc; ++c) {
                const float s = nms_score(r, c);
                if (s > conf && (!allowed || allowed[c])) seg[slot++] = make_key(s, i * nc + c, idx_bits);
            }
        } else {
            const int c = nms_best_class(r, nc);
            const float s = nms_score(r, c);
            if (s > conf && (!allowed || allowed[c])) seg[atomicAdd(&counts[b], 1)] = make_key(s, i * nc + c, idx_bits);
        }
    }
}

// Segment b of the sort: [b·cap, b·cap + counts[b]), for all G segments (unused ones have count 0).
__global__ static void nms_offsets_kernel(const int* __restrict__ counts, int G, int64_t cap, int* __restrict__ begins,
                                          int* __restrict__ ends) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= G) return;
    begins[b] = (int)(b * cap);
    ends[b] = (int)(b * cap + counts[b]);
}

// Sorted keys → boxes[b·maxn + k] (class-offset xyxy) for the first min(counts[b], maxn) of image b.
__global__ static void nms_boxes_kernel(const float* __restrict__ dec, const uint64_t* __restrict__ keys,
                                        const int* __restrict__ counts, int G, int N, int no, int nc, int64_t cap,
                                        int maxn, int idx_bits, bool agnostic, float4* __restrict__ boxes) {
    const int64_t total = (int64_t)G * maxn;
    const uint64_t idx_mask = ((uint64_t)1 << idx_bits) - 1;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        const int b = (int)(t / maxn), k = (int)(t - (int64_t)b * maxn);
        if (k >= counts[b]) continue;
        const int64_t idx = (int64_t)(keys[b * cap + k] & idx_mask);
        const int64_t i = idx / nc;
        const int c = (int)(idx - i * nc);
        float xyxy[4], o[4];
        nms_xyxy(dec + ((int64_t)b * N + i) * no, xyxy);
        nms_offset_box(xyxy, c, agnostic, o);
        boxes[t] = make_float4(o[0], o[1], o[2], o[3]);
    }
}

// One image's n boxes (score order): mask[i·col_blocks + cb] bit j ⇔ IoU(i, cb·64 + j) > thres, j > i.
// Grid (col_blocks, col_blocks), 64 threads: thread = row i of row block y against column block x.
// Words with cb < i/64 are never written and never read (nms_reduce_kernel reads from i/64 on).
__global__ static void nms_mask_kernel(const float4* __restrict__ boxes, int n, int col_blocks, float iou_thres,
                                       uint64_t* __restrict__ mask) {
    const int rb = blockIdx.y, cb = blockIdx.x;
    if (cb < rb) return;  // whole block: no barrier follows for it
    const int rows = min(n - rb * kMaskBlock, kMaskBlock), cols = min(n - cb * kMaskBlock, kMaskBlock);
    __shared__ float4 col[kMaskBlock];
    if ((int)threadIdx.x < cols) col[threadIdx.x] = boxes[cb * kMaskBlock + threadIdx.x];
    __syncthreads();
    if ((int)threadIdx.x >= rows) return;
    const int i = rb * kMaskBlock + threadIdx.x;
    const float4 a4 = boxes[i];
    const float a[4] = {a4.x, a4.y, a4.z, a4.w};
    uint64_t bits = 0;
    for (int j = rb == cb ? (int)threadIdx.x + 1 : 0; j < cols; ++j) {
        const float bb[4] = {col[j].x, col[j].y, col[j].z, col[j].w};
        if (nms_iou(a, bb) > iou_thres) bits |= (uint64_t)1 << j;
    }
    mask[(int64_t)i * col_blocks + cb] = bits;
}

// The greedy pass for one image, one block: in score order, a box not yet removed is kept (its detection
// row written from the prediction row, as nms_image writes it) and removes the boxes its mask row marks;
// stops at max_det. removed: col_blocks words of dynamic shared memory. Every branch around a barrier
// depends only on shared state all threads read alike, so the barriers are reached by the whole block.
__global__ static void nms_reduce_kernel(const uint64_t* __restrict__ mask, int n, int col_blocks,
                                         const uint64_t* __restrict__ keys, int idx_bits, const float* __restrict__ dec,
                                         int no, int nc, int max_det, float* __restrict__ out, int* __restrict__ out_count) {
    extern __shared__ uint64_t removed[];
    for (int w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
    __syncthreads();
    const uint64_t idx_mask = ((uint64_t)1 << idx_bits) - 1;
    int kept = 0;
    for (int i = 0; i < n && kept < max_det; ++i) {
        if ((removed[i / 64] >> (i % 64)) & 1) continue;
        __syncthreads();  // every thread has read removed[i / 64] before any updates it
        if (threadIdx.x == 0) {
            const int64_t idx = (int64_t)(keys[i] & idx_mask);
            const int64_t row = idx / nc;
            const int c = (int)(idx - row * nc);
            const float* r = dec + row * no;
            float* d = out + (int64_t)kept * 6;
            nms_xyxy(r, d);
            d[4] = nms_score(r, c);
            d[5] = (float)c;
        }
        const uint64_t* m = mask + (int64_t)i * col_blocks;
        for (int w = i / 64 + threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] |= m[w];
        __syncthreads();
        ++kept;
    }
    if (threadIdx.x == 0) *out_count = kept;
}

// ----------------------------------------------------------------------------------------------------
// Host entry points

size_t nms_cuda_scratch_bytes(int bs, int N, int no, const NmsParams& p, size_t budget) {
    return make_plan(bs, N, no, p, budget).total;
}

std::vector<std::vector<Detection>> nms_batch_cuda(const float* dec, int bs, int N, int no, const NmsParams& p,
                                                   void* scratch, size_t scratch_bytes, cudaStream_t stream) {
    size_t budget = kNmsCandidateBudget;  // halved to what scratch_bytes holds, down to one image per group
    while (budget > 0 && make_plan(bs, N, no, p, budget).total > scratch_bytes)
        budget = budget > ((size_t)1 << 20) ? budget / 2 : 0;
    const NmsPlan P = make_plan(bs, N, no, p, budget);
    std::vector<std::vector<Detection>> result((size_t)std::max(bs, 0));
    if (bs <= 0 || P.maxdet == 0) return result;
    Y5_CHECK(scratch && scratch_bytes >= P.total, "nms_batch_cuda: %zu bytes of scratch for %zu needed", scratch_bytes,
             P.total);
    char* base = static_cast<char*>(scratch);
    unsigned char* allowed = nullptr;
    if (!p.classes.empty()) {
        std::vector<unsigned char> flags((size_t)P.nc, 0);
        for (int c : p.classes)
            if (c >= 0 && c < P.nc) flags[c] = 1;
        allowed = reinterpret_cast<unsigned char*>(base + P.allowed);
        CUDA_CHECK(cudaMemcpyAsync(allowed, flags.data(), flags.size(), cudaMemcpyHostToDevice, stream));
    }
    int* counts = reinterpret_cast<int*>(base + P.counts);
    int* begins = reinterpret_cast<int*>(base + P.begins);
    int* ends = reinterpret_cast<int*>(base + P.ends);
    uint64_t* keys0 = reinterpret_cast<uint64_t*>(base + P.keys0);
    uint64_t* keys1 = reinterpret_cast<uint64_t*>(base + P.keys1);
    float4* boxes = reinterpret_cast<float4*>(base + P.boxes);
    uint64_t* mask = reinterpret_cast<uint64_t*>(base + P.mask);
    int* out_count = reinterpret_cast<int*>(base + P.out_count);
    float* out = reinterpret_cast<float*>(base + P.out);
    const bool multi = P.per_row > 1;
    const int end_bit = 32 + P.idx_bits;
    const int seg_items = (int)(P.G * P.cap);
    const size_t reduce_shmem = (size_t)P.col_blocks * sizeof(uint64_t);
    Y5_CHECK(reduce_shmem <= 48 * 1024, "nms_batch_cuda: max_nms %d is over the 393216 boxes the greedy pass holds",
             p.max_nms);
    Y5_CHECK(P.col_blocks <= 65535, "nms_batch_cuda: %d mask blocks exceed the grid", P.col_blocks);

    CUDA_CHECK(cudaMemsetAsync(out_count, 0, (size_t)bs * sizeof(int), stream));
    std::vector<int> host_counts((size_t)P.G);
    for (int b0 = 0; b0 < bs; b0 += P.G) {
        const int g = std::min(P.G, bs - b0);
        const float* dg = dec + (int64_t)b0 * N * no;
        CUDA_CHECK(cudaMemsetAsync(counts, 0, (size_t)P.G * sizeof(int), stream));
        const int64_t rows = (int64_t)g * N;
        if (rows > 0) {
            nms_candidates_kernel<<<grid_1d(rows), kBlock, 0, stream>>>(dg, g, N, no, P.nc, multi, p.conf_thres, allowed,
                                                                        P.idx_bits, P.cap, keys0, counts);
            Y5_LAUNCH_CHECK();
        }
        nms_offsets_kernel<<<CEIL_DIV(P.G, kBlock), kBlock, 0, stream>>>(counts, P.G, P.cap, begins, ends);
        Y5_LAUNCH_CHECK();
        // All G segments every time (the unused ones empty), so the temp storage asked for never changes.
        cub::DoubleBuffer<uint64_t> kb(keys0, keys1);
        size_t temp_bytes = 0;
        CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, temp_bytes, kb, seg_items, P.G, begins, ends, 0,
                                                           end_bit, stream));
        Y5_CHECK(temp_bytes <= kSortTemp, "nms_batch_cuda: CUB asks %zu bytes of sort storage, %zu reserved", temp_bytes,
                 kSortTemp);
        CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(base + P.temp, temp_bytes, kb, seg_items, P.G, begins, ends,
                                                           0, end_bit, stream));
        const uint64_t* sorted = kb.Current();
        const int64_t slots = (int64_t)P.G * P.maxn;
        nms_boxes_kernel<<<grid_1d(slots), kBlock, 0, stream>>>(dg, sorted, counts, P.G, N, no, P.nc, P.cap, P.maxn,
                                                                P.idx_bits, p.agnostic, boxes);
        Y5_LAUNCH_CHECK();
        CUDA_CHECK(cudaMemcpyAsync(host_counts.data(), counts, (size_t)P.G * sizeof(int), cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        // The mask buffer holds one image: the images go one after another on the stream.
        for (int b = 0; b < g; ++b) {
            const int n = std::min(host_counts[b], P.maxn);
            if (n == 0) continue;
            const int cbn = CEIL_DIV(n, kMaskBlock);
            nms_mask_kernel<<<dim3(cbn, cbn), kMaskBlock, 0, stream>>>(boxes + (int64_t)b * P.maxn, n, cbn, p.iou_thres,
                                                                        mask);
            Y5_LAUNCH_CHECK();
            nms_reduce_kernel<<<1, kReduceThreads, (size_t)cbn * sizeof(uint64_t), stream>>>(
                mask, n, cbn, sorted + b * P.cap, P.idx_bits, dg + (int64_t)b * N * no, no, P.nc, P.maxdet,
                out + (int64_t)(b0 + b) * P.maxdet * 6, out_count + b0 + b);
            Y5_LAUNCH_CHECK();
        }
    }
    std::vector<int> n_out((size_t)bs);
    std::vector<float> rows((size_t)bs * P.maxdet * 6);
    CUDA_CHECK(cudaMemcpyAsync(n_out.data(), out_count, n_out.size() * sizeof(int), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaMemcpyAsync(rows.data(), out, rows.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int b = 0; b < bs; ++b) {
        result[b].resize((size_t)n_out[b]);
        for (int k = 0; k < n_out[b]; ++k)
            for (int q = 0; q < 6; ++q) result[b][k][q] = rows[((size_t)b * P.maxdet + k) * 6 + q];
    }
    return result;
}

}  // namespace y5
