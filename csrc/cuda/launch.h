// Kernel launchers of the CUDA ops (defined in the .cu files, compiled by nvcc). They never throw:
// each returns the launch's cudaError_t, and the host entries in entry.cpp (compiled by the host
// compiler) do every argument check, allocation and ATen call, and turn errors into exceptions.
// Keeping all throwing code out of nvcc-compiled frames also means a C++ exception never has to
// unwind through them (on the lent H200 that unwind crashed the process instead of raising).
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace blockdrop {
namespace cuda {

// plan: counts[k] / *bad; CSR fill; policy packing into sortable 64-bit words.
cudaError_t launch_plan_count(const uint8_t* policy, int64_t N, int64_t K, int64_t* counts, int64_t* bad,
                              cudaStream_t stream);
cudaError_t launch_plan_fill(const uint8_t* policy, int64_t N, int64_t K, const int64_t* offsets, int64_t* rows,
                             cudaStream_t stream);
cudaError_t launch_plan_pack(const uint8_t* policy, int64_t N, int64_t K, int64_t W, int64_t* words,
                             cudaStream_t stream);

// gather_rows: row-indexed copy of row_bytes-byte rows; scatter_add_rows: atomics over row_numel elements.
cudaError_t launch_gather_rows(const void* src, void* dst, const int64_t* rows, int64_t M, int64_t N,
                               int64_t row_bytes, cudaStream_t stream);
cudaError_t launch_scatter_add_rows(c10::ScalarType dtype, const void* src, void* dst, const int64_t* rows, int64_t M,
                                    int64_t n, int64_t row_numel, cudaStream_t stream);

// merge_block: inverse row map, then one pass over all N output rows of R elements.
cudaError_t launch_inverse_rows(const int64_t* rows, int64_t* inv, int64_t M, int64_t N, cudaStream_t stream);
cudaError_t launch_merge(c10::ScalarType dtype, const void* s, const void* y, const int64_t* inv, void* out, int64_t N,
                         int64_t R, bool relu, cudaStream_t stream);
struct DownsampleGeometry {
  int64_t C, H, W;          // output channels and spatial size
  int64_t Cin, pad;         // input channels, zero channels on each side
  int64_t xs0, xs1, xs2, xs3;  // input strides, in elements
  bool channels_last;       // layout of y and out
};
cudaError_t launch_merge_downsample(c10::ScalarType dtype, const void* x, const void* y, const int64_t* inv, void* out,
                                    int64_t N, const DownsampleGeometry& g, bool relu, cudaStream_t stream);
cudaError_t launch_merge_inplace(c10::ScalarType dtype, void* x, const void* y, const int64_t* rows, int64_t M,
                                 int64_t N, int64_t R, bool relu, cudaStream_t stream);

}  // namespace cuda
}  // namespace blockdrop
