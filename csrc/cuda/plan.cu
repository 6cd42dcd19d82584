// plan on CUDA, with no host synchronisation: per-block CSR of the executing rows (one block of
// threads per policy column: count, then an ordered compaction by block-wide scan), and the grouping
// of identical policies (policies packed into 64-bit words, stable LSD sort by word, run boundaries).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <torch/library.h>

#include "../ops.h"
#include "common.cuh"

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

PlanResult plan(const at::Tensor& policy_in) {
  check_policy(policy_in);
  const c10::cuda::CUDAGuard guard(policy_in.device());
  const at::Tensor policy = policy_in.to(at::kByte).contiguous();
  const int64_t N = policy.size(0), K = policy.size(1);
  const int64_t W = (K + 63) / 64;
  const auto opts = policy.options().dtype(at::kLong);
  at::Tensor meta = at::zeros({K + N + 2}, opts);
  at::Tensor rows = at::full({N * K}, -1, opts);
  at::Tensor group_policy = at::zeros({N, K}, policy.options());
  if (N == 0) {
    return {meta, at::zeros({K + 1}, opts), rows, at::empty({0}, opts), at::zeros({1}, opts), group_policy};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* p = policy.const_data_ptr<uint8_t>();
  int64_t* m = meta.data_ptr<int64_t>();

  count_kernel<<<K, kThreads, 0, stream>>>(p, N, K, m, m + K + N + 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor offsets = at::cat({at::zeros({1}, opts), meta.narrow(0, 0, K).cumsum(0)});
  fill_rows_kernel<<<K, kThreads, 0, stream>>>(p, N, K, offsets.const_data_ptr<int64_t>(), rows.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor words = at::empty({N, W}, opts);
  const int blocks = static_cast<int>(std::min<int64_t>((N * W + kThreads - 1) / kThreads, 4096));
  pack_kernel<<<blocks, kThreads, 0, stream>>>(p, N, K, W, words.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Stable sort by the least significant word first, then by each more significant one.
  at::Tensor perm = std::get<1>(at::sort(words.select(1, W - 1), /*stable=*/true, /*dim=*/0, /*descending=*/false));
  for (int64_t w = W - 2; w >= 0; --w) {
    const at::Tensor keys = words.select(1, w).index_select(0, perm);
    perm = perm.index_select(0, std::get<1>(at::sort(keys, true, 0, false)));
  }
  const at::Tensor sorted = words.index_select(0, perm);
  at::Tensor starts = at::ones({N}, opts);
  if (N > 1) starts.narrow(0, 1, N - 1).copy_(sorted.narrow(0, 1, N - 1).ne(sorted.narrow(0, 0, N - 1)).any(1));
  const at::Tensor gid = starts.cumsum(0).sub_(1);
  at::Tensor gsize = meta.narrow(0, K, N);
  gsize.index_add_(0, gid, at::ones({N}, opts));
  meta.narrow(0, K + N, 1).copy_(gid.narrow(0, N - 1, 1)).add_(1);
  at::Tensor group_offsets = at::cat({at::zeros({1}, opts), gsize.cumsum(0)});
  // Every member of a group writes the same policy row, so the order of the writes does not matter.
  group_policy.index_copy_(0, gid, policy.index_select(0, perm));
  return {meta, offsets, rows, perm, group_offsets, group_policy};
}

}  // namespace cuda
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CUDA, m) { m.impl("plan", &blockdrop::cuda::plan); }
