// Host entries of the CUDA ops (compiled by the host compiler): argument checks with messages →
// CUDAGuard → current stream → early return on empty → allocation → kernel launcher (launch.h) →
// C10_CUDA_CHECK. Every exception is raised here, never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops.h"
#include "launch.h"

namespace blockdrop {
namespace cuda {

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
  C10_CUDA_CHECK(launch_plan_count(p, N, K, m, m + K + N + 1, stream));
  at::Tensor offsets = at::cat({at::zeros({1}, opts), meta.narrow(0, 0, K).cumsum(0)});
  C10_CUDA_CHECK(launch_plan_fill(p, N, K, offsets.const_data_ptr<int64_t>(), rows.data_ptr<int64_t>(), stream));

  at::Tensor words = at::empty({N, W}, opts);
  C10_CUDA_CHECK(launch_plan_pack(p, N, K, W, words.data_ptr<int64_t>(), stream));
  // Stable sort by the least significant word first, then by each more significant one (LSD).
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

at::Tensor gather_rows(const at::Tensor& x_in, const at::Tensor& rows_in) {
  check_gather(x_in, rows_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = row_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  auto sizes = x.sizes().vec();
  sizes[0] = M;
  at::Tensor out = at::empty(sizes, x.options().memory_format(fmt));
  if (M == 0 || x.numel() == 0) return out;
  const int64_t row_bytes = (x.numel() / N) * x.element_size();
  C10_CUDA_CHECK(launch_gather_rows(x.const_data_ptr(), out.data_ptr(), rows.const_data_ptr<int64_t>(), M, N, row_bytes,
                                    c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor scatter_add_rows(const at::Tensor& src_in, const at::Tensor& rows_in, int64_t n) {
  check_scatter(src_in, rows_in, n);
  const c10::cuda::CUDAGuard guard(src_in.device());
  const auto fmt = row_format(src_in);
  const at::Tensor src = src_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  auto sizes = src.sizes().vec();
  sizes[0] = n;
  at::Tensor out = at::empty(sizes, src.options().memory_format(fmt)).zero_();
  const int64_t M = rows.size(0);
  if (M == 0 || out.numel() == 0) return out;
  C10_CUDA_CHECK(launch_scatter_add_rows(src.scalar_type(), src.const_data_ptr(), out.data_ptr(),
                                         rows.const_data_ptr<int64_t>(), M, n, src.numel() / M,
                                         c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor merge_block(const at::Tensor& shortcut, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu,
                       bool downsample) {
  const int64_t pad = check_merge("merge_block", "shortcut", shortcut, y_in, rows_in, downsample);
  const c10::cuda::CUDAGuard guard(shortcut.device());
  const auto fmt = row_format(shortcut);
  const int64_t N = shortcut.size(0);
  const int64_t C = y_in.size(1), H = y_in.size(2), W = y_in.size(3);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  at::Tensor out = at::empty({N, C, H, W}, shortcut.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor inv = at::full({N}, -1, rows.options());
  C10_CUDA_CHECK(launch_inverse_rows(rows.const_data_ptr<int64_t>(), inv.data_ptr<int64_t>(), rows.size(0), N, stream));
  if (downsample) {
    const DownsampleGeometry g{C,
                               H,
                               W,
                               shortcut.size(1),
                               pad,
                               shortcut.stride(0),
                               shortcut.stride(1),
                               shortcut.stride(2),
                               shortcut.stride(3),
                               fmt == at::MemoryFormat::ChannelsLast};
    C10_CUDA_CHECK(launch_merge_downsample(shortcut.scalar_type(), shortcut.const_data_ptr(), y.const_data_ptr(),
                                           inv.const_data_ptr<int64_t>(), out.data_ptr(), N, g, relu, stream));
    return out;
  }
  const at::Tensor s = shortcut.contiguous(fmt);
  C10_CUDA_CHECK(launch_merge(s.scalar_type(), s.const_data_ptr(), y.const_data_ptr(), inv.const_data_ptr<int64_t>(),
                              out.data_ptr(), N, C * H * W, relu, stream));
  return out;
}

void merge_block_(const at::Tensor& x, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu) {
  check_merge("merge_block_", "x", x, y_in, rows_in, /*downsample=*/false);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = row_format(x);
  TORCH_CHECK(x.is_contiguous(fmt), "merge_block_: x must be contiguous (NCHW or channels_last) to be updated in place");
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  if (M == 0 || x.numel() == 0) return;
  C10_CUDA_CHECK(launch_merge_inplace(x.scalar_type(), x.data_ptr(), y.const_data_ptr(), rows.const_data_ptr<int64_t>(),
                                      M, N, x.numel() / N, relu, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace cuda
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CUDA, m) {
  m.impl("plan", &blockdrop::cuda::plan);
  m.impl("gather_rows", &blockdrop::cuda::gather_rows);
  m.impl("scatter_add_rows", &blockdrop::cuda::scatter_add_rows);
  m.impl("merge_block", &blockdrop::cuda::merge_block);
  m.impl("merge_block_", &blockdrop::cuda::merge_block_);
}
