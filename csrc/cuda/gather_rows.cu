// gather_rows / scatter_add_rows kernels. A row (image) of an NCHW or channels_last tensor is one
// contiguous chunk, so gather is a row-indexed copy in packs of up to 16 bytes; scatter-add uses
// atomics so that repeated rows accumulate (it is gather's gradient, and gather is its gradient).
// Host entries (checks, allocation): entry.cpp.
#include <ATen/cuda/Atomic.cuh>

#include "common.cuh"
#include "launch.h"

namespace blockdrop {
namespace cuda {

namespace {

// dst[i] = src[rows[i]] for rows in range; an out-of-range row is never read (its output row is zeroed;
// the Python wrapper reports bad rows before launching). Each thread moves kUnroll packs, all loads
// issued before the stores, to keep more bytes in flight.
template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ src, V* __restrict__ dst, const int64_t* __restrict__ rows,
                                   int64_t M, int64_t N, int64_t packs) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int64_t r = rows[i];
    V* d = dst + i * packs;
    const bool ok = r >= 0 && r < N;
    const V* s = src + (ok ? r : 0) * packs;
    for (int64_t j0 = blockIdx.x * blockDim.x + threadIdx.x; j0 < packs; j0 += stride * kUnroll) {
      V tmp[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + u * stride;
        tmp[u] = (ok && j < packs) ? s[j] : V{};
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + u * stride;
        if (j < packs) d[j] = tmp[u];
      }
    }
  }
}

template <typename T>
__global__ void scatter_add_rows_kernel(const T* __restrict__ src, T* __restrict__ dst,
                                        const int64_t* __restrict__ rows, int64_t M, int64_t n, int64_t row_numel) {
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int64_t r = rows[i];
    if (r < 0 || r >= n) continue;  // never written out of bounds
    for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < row_numel; j += int64_t(gridDim.x) * blockDim.x) {
      gpuAtomicAdd(dst + r * row_numel + j, src[i * row_numel + j]);
    }
  }
}

template <typename V>
cudaError_t gather_as(const void* src, void* dst, const int64_t* rows, int64_t M, int64_t N, int64_t row_bytes,
                      cudaStream_t stream) {
  const int64_t packs = row_bytes / static_cast<int64_t>(sizeof(V));
  gather_rows_kernel<V><<<row_grid(M, (packs + kUnroll - 1) / kUnroll), kThreads, 0, stream>>>(static_cast<const V*>(src), static_cast<V*>(dst),
                                                                      rows, M, N, packs);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gather_rows(const void* src, void* dst, const int64_t* rows, int64_t M, int64_t N,
                               int64_t row_bytes, cudaStream_t stream) {
  switch (pack_width(row_bytes, 1, {src, dst})) {  // bytes per pack
    case 16:
      return gather_as<uint4>(src, dst, rows, M, N, row_bytes, stream);
    case 8:
      return gather_as<uint2>(src, dst, rows, M, N, row_bytes, stream);
    case 4:
      return gather_as<uint32_t>(src, dst, rows, M, N, row_bytes, stream);
    case 2:
      return gather_as<uint16_t>(src, dst, rows, M, N, row_bytes, stream);
    default:
      return gather_as<uint8_t>(src, dst, rows, M, N, row_bytes, stream);
  }
}

cudaError_t launch_scatter_add_rows(c10::ScalarType dtype, const void* src, void* dst, const int64_t* rows, int64_t M,
                                    int64_t n, int64_t row_numel, cudaStream_t stream) {
  return dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    scatter_add_rows_kernel<T><<<row_grid(M, row_numel), kThreads, 0, stream>>>(
        static_cast<const T*>(src), static_cast<T*>(dst), rows, M, n, row_numel);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace blockdrop
