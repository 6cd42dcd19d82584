// merge_block / merge_block_ kernels: the fused skip connection. One pass writes every output row:
// relu(shortcut[n] + y[i]) where n = rows[i] ran the block, shortcut[n] where it was dropped; the
// downsampling variant computes the option-A shortcut (every second pixel, channels zero-padded on
// both sides) on the fly, so a dropped downsampling block costs one read and one write.
// Host entries (checks, allocation): entry.cpp.
#include <ATen/OpMathType.h>

#include "../elementwise.h"
#include "common.cuh"
#include "launch.h"

namespace blockdrop {
namespace cuda {

namespace {

// inv[rows[i]] = i (inv pre-filled with -1); out-of-range rows are ignored.
__global__ void inverse_rows_kernel(const int64_t* __restrict__ rows, int64_t* __restrict__ inv, int64_t M,
                                    int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = rows[i];
    if (r >= 0 && r < N) inv[r] = i;
  }
}

// Same-shape merge, P elements per pack.
template <typename T, int P>
__global__ void merge_kernel(const T* __restrict__ s, const T* __restrict__ y, const int64_t* __restrict__ inv,
                             T* __restrict__ out, int64_t N, int64_t packs, bool relu) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, P>;
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
          a.v[e] = static_cast<T>(maybe_relu<acc_t>(static_cast<acc_t>(a.v[e]) + static_cast<acc_t>(b.v[e]), relu));
        }
      }
      orow[j] = a;
    }
  }
}

// Downsampling merge: out[n, c, h, w] = optA(x)[n, c, h, w] (+ y[i, c, h, w], relu), x read by strides.
// Index math within a row in I (int32 when a row fits: 64-bit division is several times slower).
template <typename T, typename I>
__global__ void merge_downsample_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                        const int64_t* __restrict__ inv, T* __restrict__ out, int64_t N,
                                        DownsampleGeometry g, bool relu) {
  using acc_t = at::opmath_type<T>;
  const I C = static_cast<I>(g.C), H = static_cast<I>(g.H), W = static_cast<I>(g.W);
  const I R = C * H * W;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int64_t i = inv[n];
    const T* xn = x + n * g.xs0;
    for (I j = blockIdx.x * blockDim.x + threadIdx.x; j < R; j += static_cast<I>(gridDim.x * blockDim.x)) {
      I c, h, w;
      if (g.channels_last) {
        c = j % C;
        const I hw = j / C;
        w = hw % W;
        h = hw / W;
      } else {
        w = j % W;
        const I ch = j / W;
        h = ch % H;
        c = ch / H;
      }
      const I ci = c - static_cast<I>(g.pad);
      acc_t v = (ci >= 0 && ci < static_cast<I>(g.Cin))
                    ? static_cast<acc_t>(xn[ci * g.xs1 + 2 * int64_t(h) * g.xs2 + 2 * int64_t(w) * g.xs3])
                    : acc_t(0);
      if (i >= 0) v = maybe_relu<acc_t>(v + static_cast<acc_t>(y[i * int64_t(R) + j]), relu);
      out[n * int64_t(R) + j] = static_cast<T>(v);
    }
  }
}

// In place: x[rows[i]] = relu(x[rows[i]] + y[i]).
template <typename T, int P>
__global__ void merge_inplace_kernel(T* __restrict__ x, const T* __restrict__ y, const int64_t* __restrict__ rows,
                                     int64_t M, int64_t N, int64_t packs, bool relu) {
  using acc_t = at::opmath_type<T>;
  using V = Pack<T, P>;
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
        a.v[e] = static_cast<T>(maybe_relu<acc_t>(static_cast<acc_t>(a.v[e]) + static_cast<acc_t>(b.v[e]), relu));
      }
      xrow[j] = a;
    }
  }
}

}  // namespace

cudaError_t launch_inverse_rows(const int64_t* rows, int64_t* inv, int64_t M, int64_t N, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>((M + kThreads - 1) / kThreads, 1024));
  inverse_rows_kernel<<<blocks, kThreads, 0, stream>>>(rows, inv, M, N);
  return cudaGetLastError();
}

cudaError_t launch_merge(c10::ScalarType dtype, const void* s, const void* y, const int64_t* inv, void* out, int64_t N,
                         int64_t R, bool relu, cudaStream_t stream) {
  return dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int P = 16 / sizeof(T);
    if (pack_width(R, sizeof(T), {s, y, out}) == P) {
      merge_kernel<T, P><<<row_grid(N, R / P), kThreads, 0, stream>>>(
          static_cast<const T*>(s), static_cast<const T*>(y), inv, static_cast<T*>(out), N, R / P, relu);
    } else {
      merge_kernel<T, 1><<<row_grid(N, R), kThreads, 0, stream>>>(static_cast<const T*>(s), static_cast<const T*>(y),
                                                                   inv, static_cast<T*>(out), N, R, relu);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_merge_downsample(c10::ScalarType dtype, const void* x, const void* y, const int64_t* inv, void* out,
                                    int64_t N, const DownsampleGeometry& g, bool relu, cudaStream_t stream) {
  return dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t R = g.C * g.H * g.W;
    if (R < (int64_t(1) << 30)) {
      merge_downsample_kernel<T, int32_t><<<row_grid(N, R), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(y), inv, static_cast<T*>(out), N, g, relu);
    } else {
      merge_downsample_kernel<T, int64_t><<<row_grid(N, R), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(y), inv, static_cast<T*>(out), N, g, relu);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_merge_inplace(c10::ScalarType dtype, void* x, const void* y, const int64_t* rows, int64_t M,
                                 int64_t N, int64_t R, bool relu, cudaStream_t stream) {
  return dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int P = 16 / sizeof(T);
    if (pack_width(R, sizeof(T), {x, y}) == P) {
      merge_inplace_kernel<T, P><<<row_grid(M, R / P), kThreads, 0, stream>>>(
          static_cast<T*>(x), static_cast<const T*>(y), rows, M, N, R / P, relu);
    } else {
      merge_inplace_kernel<T, 1><<<row_grid(M, R), kThreads, 0, stream>>>(static_cast<T*>(x),
                                                                           static_cast<const T*>(y), rows, M, N, R, relu);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace blockdrop
