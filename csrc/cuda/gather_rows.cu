// gather_rows / scatter_add_rows on CUDA. A row (image) of an NCHW or channels_last tensor is one
// contiguous chunk, so gather is a row-indexed copy in 16-byte packs; scatter-add uses atomics so
// that repeated rows accumulate (it is gather's gradient, and gather is its gradient).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "common.cuh"

namespace blockdrop {
namespace cuda {

namespace {

// dst[i] = src[rows[i]] for rows in range; an out-of-range row is never read (its output is zeroed;
// the Python wrapper reports it).
template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ src, V* __restrict__ dst, const int64_t* __restrict__ rows,
                                   int64_t M, int64_t N, int64_t packs) {
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int64_t r = rows[i];
    V* d = dst + i * packs;
    const bool ok = r >= 0 && r < N;
    const V* s = src + (ok ? r : 0) * packs;
    for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < packs; j += int64_t(gridDim.x) * blockDim.x) {
      d[j] = ok ? s[j] : V{};
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
void launch_gather(const at::Tensor& x, at::Tensor& out, const at::Tensor& rows, int64_t packs, cudaStream_t stream) {
  const int64_t M = rows.size(0);
  gather_rows_kernel<V><<<row_grid(M, packs), kThreads, 0, stream>>>(
      static_cast<const V*>(x.const_data_ptr()), static_cast<V*>(out.data_ptr()), rows.const_data_ptr<int64_t>(), M,
      x.size(0), packs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor gather_rows(const at::Tensor& x_in, const at::Tensor& rows_in) {
  TORCH_CHECK(x_in.dim() >= 1, "gather_rows: x must have at least one dimension");
  check_rows(rows_in, "gather_rows: rows");
  check_float_dtype(x_in, "gather_rows: x");
  TORCH_CHECK(rows_in.device() == x_in.device(), "gather_rows: rows must be on the device of x (", x_in.device(),
              "), got ", rows_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = row_format(x_in);
  const at::Tensor x = rows_contiguous(x_in, fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  auto sizes = x.sizes().vec();
  sizes[0] = M;
  at::Tensor out = at::empty(sizes, x.options().memory_format(fmt));
  if (M == 0 || x.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t bytes = (x.numel() / N) * x.element_size();
  const int width = pack_width(bytes, 1, {x.const_data_ptr(), out.data_ptr()});  // bytes per pack
  if (width == 16) {
    launch_gather<uint4>(x, out, rows, bytes / 16, stream);
  } else if (width == 8) {
    launch_gather<uint2>(x, out, rows, bytes / 8, stream);
  } else if (width == 4) {
    launch_gather<uint32_t>(x, out, rows, bytes / 4, stream);
  } else if (width == 2) {
    launch_gather<uint16_t>(x, out, rows, bytes / 2, stream);
  } else {
    launch_gather<uint8_t>(x, out, rows, bytes, stream);
  }
  return out;
}

at::Tensor scatter_add_rows(const at::Tensor& src_in, const at::Tensor& rows_in, int64_t n) {
  TORCH_CHECK(src_in.dim() >= 1, "scatter_add_rows: src must have at least one dimension");
  check_rows(rows_in, "scatter_add_rows: rows");
  check_float_dtype(src_in, "scatter_add_rows: src");
  TORCH_CHECK(n >= 0, "scatter_add_rows: n must be >= 0, got ", n);
  TORCH_CHECK(rows_in.device() == src_in.device(), "scatter_add_rows: rows must be on the device of src (",
              src_in.device(), "), got ", rows_in.device());
  TORCH_CHECK(src_in.size(0) == rows_in.size(0), "scatter_add_rows: src must have one row per entry of rows (",
              rows_in.size(0), "), got ", src_in.size(0));
  const c10::cuda::CUDAGuard guard(src_in.device());
  const auto fmt = row_format(src_in);
  const at::Tensor src = rows_contiguous(src_in, fmt);
  const at::Tensor rows = rows_in.contiguous();
  auto sizes = src.sizes().vec();
  sizes[0] = n;
  at::Tensor out = at::empty(sizes, src.options().memory_format(fmt)).zero_();
  const int64_t M = rows.size(0);
  if (M == 0 || out.numel() == 0) return out;
  const int64_t row_numel = src.numel() / M;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_add_rows_cuda", [&] {
    scatter_add_rows_kernel<scalar_t><<<row_grid(M, row_numel), kThreads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows.const_data_ptr<int64_t>(), M, n, row_numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CUDA, m) {
  m.impl("gather_rows", &blockdrop::cuda::gather_rows);
  m.impl("scatter_add_rows", &blockdrop::cuda::scatter_add_rows);
}
