// plan kernels: per-block CSR of the executing rows (one thread block per policy column: count,
// then an ordered compaction by block-wide scan) and the packing of each policy into 64-bit words
// for the grouping sort. Host entry (checks, the sort, group boundaries): entry.cpp.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "common.cuh"
#include "launch.h"

namespace blockdrop {
namespace cuda {

namespace {

// counts[k] = #{n : policy[n, k] != 0}; *bad = 1 if any value is not 0/1.
__global__ void count_kernel(const uint8_t* __restrict__ p, int64_t N, int64_t K, int64_t* __restrict__ counts,
                             int64_t* __restrict__ bad) {
  using Reduce = cub::BlockReduce<int64_t, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t k = blockIdx.x;
  int64_t c = 0;
  bool b = false;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {
    const uint8_t v = p[n * K + k];
    c += v != 0;
    b |= v > 1;
  }
  if (b) *bad = 1;
  const int64_t total = Reduce(tmp).Sum(c);
  if (threadIdx.x == 0) counts[k] = total;
}

// rows[offsets[k] + rank] = n for every n executing block k, ascending.
__global__ void fill_rows_kernel(const uint8_t* __restrict__ p, int64_t N, int64_t K,
                                 const int64_t* __restrict__ offsets, int64_t* __restrict__ rows) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t k = blockIdx.x;
  int64_t base = offsets[k];
  for (int64_t start = 0; start < N; start += kThreads) {
    const int64_t n = start + threadIdx.x;
    const int64_t v = (n < N && p[n * K + k] != 0) ? 1 : 0;
    int64_t rank, total;
    Scan(tmp).ExclusiveSum(v, rank, total);
    if (v) rows[base + rank] = n;
    base += total;
    __syncthreads();  // tmp is reused by the next chunk
  }
}

// words[n, w] = bits of policy[n, 64w : 64w+64] (block k at bit 63 - k%64), sign bit flipped so that
// a signed int64 sort orders the policies lexicographically.
__global__ void pack_kernel(const uint8_t* __restrict__ p, int64_t N, int64_t K, int64_t W,
                            int64_t* __restrict__ words) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * W; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / W, w = t % W;
    uint64_t bits = 0;
    const int64_t end = min(K, 64 * w + 64);
    for (int64_t k = 64 * w; k < end; ++k) bits |= static_cast<uint64_t>(p[n * K + k] != 0) << (63 - k % 64);
    words[t] = static_cast<int64_t>(bits ^ (uint64_t(1) << 63));
  }
}

}  // namespace

cudaError_t launch_plan_count(const uint8_t* policy, int64_t N, int64_t K, int64_t* counts, int64_t* bad,
                              cudaStream_t stream) {
  count_kernel<<<static_cast<unsigned>(K), kThreads, 0, stream>>>(policy, N, K, counts, bad);
  return cudaGetLastError();
}

cudaError_t launch_plan_fill(const uint8_t* policy, int64_t N, int64_t K, const int64_t* offsets, int64_t* rows,
                             cudaStream_t stream) {
  fill_rows_kernel<<<static_cast<unsigned>(K), kThreads, 0, stream>>>(policy, N, K, offsets, rows);
  return cudaGetLastError();
}

cudaError_t launch_plan_pack(const uint8_t* policy, int64_t N, int64_t K, int64_t W, int64_t* words,
                             cudaStream_t stream) {
  const int blocks = static_cast<int>(std::min<int64_t>((N * W + kThreads - 1) / kThreads, 4096));
  pack_kernel<<<blocks, kThreads, 0, stream>>>(policy, N, K, W, words);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace blockdrop
