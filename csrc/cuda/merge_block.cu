// merge_block / merge_block_ on CUDA: the fused skip connection. One pass writes every output
// row: relu(shortcut[n] + y[i]) where n = rows[i] ran the block, shortcut[n] where it was dropped;
// with downsample=True the option-A shortcut (every second pixel, channels zero-padded on both
// sides) is computed on the fly, so a dropped downsampling block costs one read and one write.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "common.cuh"

namespace blockdrop {
namespace cuda {

namespace {

template <typename T>
__device__ __forceinline__ T maybe_relu(T v, bool relu) {
  return (relu && v < T(0)) ? T(0) : v;  // NaN propagates, as in torch.relu
}

// inv[rows[i]] = i (inv pre-filled with -1); out-of-range rows are ignored.
__global__ void inverse_rows_kernel(const int64_t* __restrict__ rows, int64_t* __restrict__ inv, int64_t M,
                                    int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = rows[i];
    if (r >= 0 && r < N) inv[r] = i;
  }
}

// Same-shape merge, P elements per pack.
template <typename scalar_t, int P>
__global__ void merge_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ y,
                             const int64_t* __restrict__ inv, scalar_t* __restrict__ out, int64_t N, int64_t packs,
                             bool relu) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = Pack<scalar_t, P>;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int64_t i = inv[n];
    const V* srow = reinterpret_cast<const V*>(s) + n * packs;
    V* orow = reinterpret_cast<V*>(out) + n * packs;
    const V* yrow = reinterpret_cast<const V*>(y) + (i < 0 ? 0 : i) * packs;
    for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < packs; j += int64_t(gridDim.x) * blockDim.x) {
      V a = srow[j];
      if (i >= 0) {
        const V b = yrow[j];
#pragma unroll
        for (int e = 0; e < P; ++e) {
          a.v[e] = static_cast<scalar_t>(
              maybe_relu<opmath_t>(static_cast<opmath_t>(a.v[e]) + static_cast<opmath_t>(b.v[e]), relu));
        }
      }
      orow[j] = a;
    }
  }
}

// Downsampling merge: out[n, c, h, w] = optA(x)[n, c, h, w] (+ y[i, c, h, w], relu), x read by strides.
template <typename scalar_t>
__global__ void merge_downsample_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                        const int64_t* __restrict__ inv, scalar_t* __restrict__ out, int64_t N,
                                        int64_t C, int64_t H, int64_t W, int64_t Cin, int64_t pad, int64_t xs0,
                                        int64_t xs1, int64_t xs2, int64_t xs3, bool channels_last, bool relu) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t R = C * H * W;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int64_t i = inv[n];
    for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < R; j += int64_t(gridDim.x) * blockDim.x) {
      int64_t c, h, w;
      if (channels_last) {
        c = j % C;
        w = (j / C) % W;
        h = j / (C * W);
      } else {
        w = j % W;
        h = (j / W) % H;
        c = j / (H * W);
      }
      const int64_t ci = c - pad;
      opmath_t v = (ci >= 0 && ci < Cin) ? static_cast<opmath_t>(x[n * xs0 + ci * xs1 + 2 * h * xs2 + 2 * w * xs3])
                                         : opmath_t(0);
      if (i >= 0) v = maybe_relu<opmath_t>(v + static_cast<opmath_t>(y[i * R + j]), relu);
      out[n * R + j] = static_cast<scalar_t>(v);
    }
  }
}

// In place: x[rows[i]] = relu(x[rows[i]] + y[i]).
template <typename scalar_t, int P>
__global__ void merge_inplace_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                     const int64_t* __restrict__ rows, int64_t M, int64_t N, int64_t packs,
                                     bool relu) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = Pack<scalar_t, P>;
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int64_t r = rows[i];
    if (r < 0 || r >= N) continue;  // never written out of bounds
    V* xrow = reinterpret_cast<V*>(x) + r * packs;
    const V* yrow = reinterpret_cast<const V*>(y) + i * packs;
    for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < packs; j += int64_t(gridDim.x) * blockDim.x) {
      V a = xrow[j];
      const V b = yrow[j];
#pragma unroll
      for (int e = 0; e < P; ++e) {
        a.v[e] = static_cast<scalar_t>(
            maybe_relu<opmath_t>(static_cast<opmath_t>(a.v[e]) + static_cast<opmath_t>(b.v[e]), relu));
      }
      xrow[j] = a;
    }
  }
}

at::Tensor inverse_rows(const at::Tensor& rows, int64_t N, cudaStream_t stream) {
  at::Tensor inv = at::full({N}, -1, rows.options());
  const int64_t M = rows.size(0);
  if (M > 0 && N > 0) {
    const int blocks = static_cast<int>(std::min<int64_t>((M + kThreads - 1) / kThreads, 1024));
    inverse_rows_kernel<<<blocks, kThreads, 0, stream>>>(rows.const_data_ptr<int64_t>(), inv.data_ptr<int64_t>(), M,
                                                         N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return inv;
}

}  // namespace

at::Tensor merge_block(const at::Tensor& shortcut, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu,
                       bool downsample) {
  const int64_t pad = check_merge(shortcut, y_in, rows_in, downsample);
  const c10::cuda::CUDAGuard guard(shortcut.device());
  const auto fmt = row_format(shortcut);
  const int64_t N = shortcut.size(0);
  const int64_t C = y_in.size(1), H = y_in.size(2), W = y_in.size(3);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  at::Tensor out = at::empty({N, C, H, W}, shortcut.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor inv = inverse_rows(rows, N, stream);
  const int64_t R = C * H * W;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, shortcut.scalar_type(), "merge_block_cuda", [&] {
    if (downsample) {
      merge_downsample_kernel<scalar_t><<<row_grid(N, R), kThreads, 0, stream>>>(
          shortcut.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), inv.const_data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), N, C, H, W, shortcut.size(1), pad, shortcut.stride(0), shortcut.stride(1),
          shortcut.stride(2), shortcut.stride(3), fmt == at::MemoryFormat::ChannelsLast, relu);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const at::Tensor s = shortcut.contiguous(fmt);
    constexpr int P = 16 / sizeof(scalar_t);
    const int width = pack_width(R, sizeof(scalar_t), {s.const_data_ptr(), y.const_data_ptr(), out.data_ptr()});
    if (width == P) {
      merge_kernel<scalar_t, P><<<row_grid(N, R / P), kThreads, 0, stream>>>(
          s.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), inv.const_data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), N, R / P, relu);
    } else {
      merge_kernel<scalar_t, 1><<<row_grid(N, R), kThreads, 0, stream>>>(
          s.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), inv.const_data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), N, R, relu);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void merge_block_(const at::Tensor& x, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu) {
  check_merge(x, y_in, rows_in, /*downsample=*/false);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = row_format(x);
  TORCH_CHECK(x.is_contiguous(fmt), "merge_block_: x must be contiguous (NCHW or channels_last) to be updated in place");
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  if (M == 0 || x.numel() == 0) return;
  const int64_t R = x.numel() / N;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "merge_block__cuda", [&] {
    constexpr int P = 16 / sizeof(scalar_t);
    const int width = pack_width(R, sizeof(scalar_t), {x.const_data_ptr(), y.const_data_ptr()});
    if (width == P) {
      merge_inplace_kernel<scalar_t, P><<<row_grid(M, R / P), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), rows.const_data_ptr<int64_t>(), M, N, R / P, relu);
    } else {
      merge_inplace_kernel<scalar_t, 1><<<row_grid(M, R), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), rows.const_data_ptr<int64_t>(), M, N, R, relu);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CUDA, m) {
  m.impl("merge_block", &blockdrop::cuda::merge_block);
  m.impl("merge_block_", &blockdrop::cuda::merge_block_);
}
