// Helpers shared by the CUDA kernels: vector packs for 16-byte accesses, launch geometry and a
// non-throwing dtype switch (launchers must not throw; see launch.h).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace blockdrop {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // packs per thread in the streaming kernels

// A pack of N elements loaded and stored as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Largest pack width (in elements, at most 16 bytes) that divides `row_elems` and keeps every pointer aligned.
inline int pack_width(int64_t row_elems, int64_t elem_size, std::initializer_list<const void*> ptrs) {
  int width = static_cast<int>(16 / elem_size);
  while (width > 1) {
    bool ok = row_elems % width == 0;
    for (const void* p : ptrs) ok = ok && (reinterpret_cast<uintptr_t>(p) % (width * elem_size) == 0);
    if (ok) break;
    width /= 2;
  }
  return std::max(width, 1);
}

// Grid over (packs within a row) x (rows): blockIdx.y walks rows, blockIdx.x walks a row's packs.
inline dim3 row_grid(int64_t rows, int64_t packs_per_row) {
  const int64_t gx = std::min<int64_t>((packs_per_row + kThreads - 1) / kThreads, 1024);
  const int64_t gy = std::min<int64_t>(rows, 65535);
  return dim3(static_cast<unsigned>(std::max<int64_t>(gx, 1)), static_cast<unsigned>(std::max<int64_t>(gy, 1)));
}

// Calls f(T{}) with T the C++ type of `dtype`; cudaErrorInvalidValue for any other dtype.
template <typename F>
cudaError_t dispatch_float(c10::ScalarType dtype, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return f(float{});
    case c10::ScalarType::Double:
      return f(double{});
    case c10::ScalarType::Half:
      return f(c10::Half{});
    case c10::ScalarType::BFloat16:
      return f(c10::BFloat16{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace blockdrop
