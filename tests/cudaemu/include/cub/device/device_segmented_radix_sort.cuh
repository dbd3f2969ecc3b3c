/*
 * cudaemu's stand-in for CUB's segmented radix sort, the one CUB algorithm y5 uses (kernels/nms.cu):
 * cub::DoubleBuffer and cub::DeviceSegmentedRadixSort::SortKeys / SortKeysDescending over a DoubleBuffer,
 * with CUB's signatures, for integer keys. Header-only, on the emulated runtime (tests/cudaemu/emu.h).
 *   - Size query (null temp storage): a fixed small size, 256 + 8·num_segments bytes.
 *   - Sort: the temp storage, both key buffers (num_items keys each) and pointer offsets are checked against
 *     the allocation table; the selector flips at the call (CUB flips it after an odd number of passes, so
 *     a caller must read Current() afterwards); the sort is queued on the stream. When it runs it reads the
 *     segment offsets from device memory, stable-sorts each segment [begin, end) (end ≤ begin: empty)
 *     comparing bits [begin_bit, end_bit) of the keys (signed keys with the sign bit flipped, as CUB orders
 *     them), and writes it into the buffer that is now Current(). Then, as CUB's contract allows, the
 *     positions of that buffer no segment covers, the whole other buffer and the temp storage are filled with
 *     0xFF bytes, so a caller that reads them sees poison.
 *   - Segments outside [0, num_items) or overlapping are faults (sticky, as on a GPU); bad sizes, bit ranges
 *     or too little temp storage return cudaErrorInvalidValue with one line on stderr.
 */
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../../../emu.h"

namespace cub {

// Two device buffers of the same size; the sort reads Current() and leaves its result in the (new) Current().
template <typename T> struct DoubleBuffer {
    T* d_buffers[2];
    int selector;
    DoubleBuffer() : d_buffers{nullptr, nullptr}, selector(0) {}
    DoubleBuffer(T* d_current, T* d_alternate) : d_buffers{d_current, d_alternate}, selector(0) {}
    T* Current() { return d_buffers[selector]; }
    T* Alternate() { return d_buffers[selector ^ 1]; }
};

namespace cudaemu_detail {

inline size_t segmented_sort_temp_bytes(int num_segments) {
    return 256 + 8 * (size_t)(num_segments > 0 ? num_segments : 0);
}

inline cudaError_t invalid(const char* name, const char* file, int line, const std::string& why) {
    fprintf(stderr, "cudaemu: %s at %s:%d: %s (cudaErrorInvalidValue)\n", name, file, line, why.c_str());
    return cudaErrorInvalidValue;
}

template <class It> bool check_offsets(It d, int num_segments, const char* what, const char* file, int line,
                                       std::vector<cudaemu::Range>& ranges) {
    if constexpr (std::is_pointer<It>::value) {
        const size_t bytes = (size_t)num_segments * sizeof(*d);
        if (!cudaemu::check_device_range(d, bytes, what, file, line)) return false;
        ranges.push_back({d, bytes, false});
    }
    return true;
}

template <class KeyT, class BeginIt, class EndIt>
cudaError_t segmented_sort(const char* name, bool descending, void* d_temp, size_t& temp_bytes,
                           DoubleBuffer<KeyT>& keys, int num_items, int num_segments, BeginIt d_begin, EndIt d_end,
                           int begin_bit, int end_bit, cudaStream_t stream, const char* file, int line) {
    static_assert(std::is_integral<KeyT>::value, "the CUB stand-in sorts integer keys only");
    using U = typename std::make_unsigned<KeyT>::type;
    constexpr int kBits = (int)sizeof(KeyT) * 8;
    const size_t need = segmented_sort_temp_bytes(num_segments);
    if (!d_temp) {
        temp_bytes = need;
        return cudaSuccess;
    }
    char why[192];
    if (num_items < 0 || num_segments < 0 || begin_bit < 0 || end_bit > kBits || begin_bit >= end_bit) {
        snprintf(why, sizeof why, "num_items %d, num_segments %d, bits [%d, %d) of %d-bit keys", num_items,
                 num_segments, begin_bit, end_bit, kBits);
        return invalid(name, file, line, why);
    }
    if (temp_bytes < need) {
        snprintf(why, sizeof why, "%zu bytes of temp storage, %zu needed (ask with a null pointer first)", temp_bytes,
                 need);
        return invalid(name, file, line, why);
    }
    if (num_items == 0 || num_segments == 0) return cudaSuccess;
    KeyT* src = keys.Current();
    KeyT* dst = keys.Alternate();
    const size_t key_bytes = (size_t)num_items * sizeof(KeyT);
    const char *ps = reinterpret_cast<const char*>(src), *pd = reinterpret_cast<const char*>(dst);
    if (ps < pd + key_bytes && pd < ps + key_bytes) {
        snprintf(why, sizeof why, "the DoubleBuffer's buffers %p and %p overlap (%zu bytes each)", (void*)src,
                 (void*)dst, key_bytes);
        return invalid(name, file, line, why);
    }
    std::vector<cudaemu::Range> ranges;
    std::string what = std::string(name) + ": ";
    bool ok = cudaemu::check_device_range(d_temp, need, (what + "temp storage").c_str(), file, line);
    ok = cudaemu::check_device_range(src, key_bytes, (what + "keys (Current)").c_str(), file, line) && ok;
    ok = cudaemu::check_device_range(dst, key_bytes, (what + "keys (Alternate)").c_str(), file, line) && ok;
    ok = check_offsets(d_begin, num_segments, (what + "begin offsets").c_str(), file, line, ranges) && ok;
    ok = check_offsets(d_end, num_segments, (what + "end offsets").c_str(), file, line, ranges) && ok;
    if (!ok) return cudaErrorIllegalAddress;
    ranges.push_back({d_temp, need, true});
    ranges.push_back({src, key_bytes, true});
    ranges.push_back({dst, key_bytes, true});
    keys.selector ^= 1;

    const U mask = end_bit - begin_bit == kBits ? U(~U(0)) : U((U(1) << (end_bit - begin_bit)) - 1);
    auto digits = [=](KeyT k) {  // the compared bits, in CUB's order (signed: the sign bit flipped)
        U u = (U)k;
        if (std::is_signed<KeyT>::value) u ^= U(U(1) << (kBits - 1));
        return U((u >> begin_bit) & mask);
    };
    cudaemu::enqueue(
        stream, name,
        [=]() {
            const std::vector<KeyT> in(src, src + num_items);
            std::vector<char> covered((size_t)num_items, 0);
            for (int s = 0; s < num_segments; ++s) {
                const long long b = (long long)d_begin[s], e = (long long)d_end[s];
                if (e <= b) continue;
                if (b < 0 || e > num_items) {
                    cudaemu::fault(cudaErrorIllegalAddress, "%s: segment %d is [%lld, %lld), outside the %d keys", name,
                                   s, b, e, num_items);
                    return;
                }
                for (long long i = b; i < e; ++i) {
                    if (covered[i]) {
                        cudaemu::fault(cudaErrorIllegalAddress,
                                       "%s: segment %d [%lld, %lld) overlaps an earlier one at %lld", name, s, b, e, i);
                        return;
                    }
                    covered[i] = 1;
                }
                std::vector<KeyT> seg(in.begin() + b, in.begin() + e);
                if (descending)
                    std::stable_sort(seg.begin(), seg.end(), [&](KeyT x, KeyT y) { return digits(x) > digits(y); });
                else
                    std::stable_sort(seg.begin(), seg.end(), [&](KeyT x, KeyT y) { return digits(x) < digits(y); });
                std::copy(seg.begin(), seg.end(), dst + b);
            }
            for (int i = 0; i < num_items; ++i)
                if (!covered[i]) std::memset(dst + i, 0xFF, sizeof(KeyT));
            std::memset(src, 0xFF, key_bytes);
            std::memset(d_temp, 0xFF, need);
        },
        std::move(ranges), file, line);
    return cudaSuccess;
}

}  // namespace cudaemu_detail

struct DeviceSegmentedRadixSort {
    template <typename KeyT, typename BeginOffsetIteratorT, typename EndOffsetIteratorT>
    static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, DoubleBuffer<KeyT>& d_keys,
                                int num_items, int num_segments, BeginOffsetIteratorT d_begin_offsets,
                                EndOffsetIteratorT d_end_offsets, int begin_bit = 0, int end_bit = sizeof(KeyT) * 8,
                                cudaStream_t stream = 0, CUDAEMU_SITE) {
        return cudaemu_detail::segmented_sort("cub::DeviceSegmentedRadixSort::SortKeys", false, d_temp_storage,
                                              temp_storage_bytes, d_keys, num_items, num_segments, d_begin_offsets,
                                              d_end_offsets, begin_bit, end_bit, stream, cudaemu_file, cudaemu_line);
    }

    template <typename KeyT, typename BeginOffsetIteratorT, typename EndOffsetIteratorT>
    static cudaError_t SortKeysDescending(void* d_temp_storage, size_t& temp_storage_bytes, DoubleBuffer<KeyT>& d_keys,
                                          int num_items, int num_segments, BeginOffsetIteratorT d_begin_offsets,
                                          EndOffsetIteratorT d_end_offsets, int begin_bit = 0,
                                          int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0, CUDAEMU_SITE) {
        return cudaemu_detail::segmented_sort("cub::DeviceSegmentedRadixSort::SortKeysDescending", true,
                                              d_temp_storage, temp_storage_bytes, d_keys, num_items, num_segments,
                                              d_begin_offsets, d_end_offsets, begin_bit, end_bit, stream, cudaemu_file,
                                              cudaemu_line);
    }
};

}  // namespace cub
