// gather_rows / scatter_add_rows on the CPU. Each leading-dimension row of an NCHW or channels_last
// tensor is one contiguous chunk of C*H*W elements, so a gather is one memcpy per row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../ops.h"

namespace blockdrop {
namespace cpu {

at::Tensor gather_rows(const at::Tensor& x_in, const at::Tensor& rows_in) {
  check_gather(x_in, rows_in);
  const auto fmt = row_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  check_rows_in_range(rows, N, "gather_rows");
  auto sizes = x.sizes().vec();
  sizes[0] = M;
  at::Tensor out = at::empty(sizes, x.options().memory_format(fmt));
  if (M == 0 || x.numel() == 0) return out;
  const int64_t row_bytes = (x.numel() / N) * x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* r = rows.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(dst + i * row_bytes, src + r[i] * row_bytes, row_bytes);
  });
  return out;
}

at::Tensor scatter_add_rows(const at::Tensor& src_in, const at::Tensor& rows_in, int64_t n) {
  check_scatter(src_in, rows_in, n);
  const auto fmt = row_format(src_in);
  const at::Tensor src = src_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  check_rows_in_range(rows, n, "scatter_add_rows");
  auto sizes = src.sizes().vec();
  sizes[0] = n;
  at::Tensor out = at::empty(sizes, src.options().memory_format(fmt)).zero_();
  const int64_t M = rows.size(0);
  if (M == 0 || out.numel() == 0) return out;
  const int64_t row_numel = src.numel() / M;
  const int64_t* r = rows.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "scatter_add_rows_cpu", [&] {
    const scalar_t* s = src.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // Rows may repeat, so parallelise over the elements of a row, never over rows.
    at::parallel_for(0, row_numel, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = 0; i < M; ++i) {
        scalar_t* orow = o + r[i] * row_numel;
        const scalar_t* srow = s + i * row_numel;
        for (int64_t j = b; j < e; ++j) orow[j] += srow[j];
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CPU, m) {
  m.impl("gather_rows", &blockdrop::cpu::gather_rows);
  m.impl("scatter_add_rows", &blockdrop::cpu::scatter_add_rows);
}
