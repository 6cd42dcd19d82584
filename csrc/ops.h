// Declarations shared by the CPU (cpu/*.cpp) and CUDA (cuda/entry.cpp) implementations of the
// blockdrop ops. The schemas live in ops.cpp, in one place; each kernel is registered in its own
// file (TORCH_LIBRARY_IMPL), which checks its signature against the schema when the library loads.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace blockdrop {

// plan(policy[N,K]) -> (meta[K+N+2], offsets[K+1], rows[N*K], perm[N], group_offsets[N+1],
//                       group_policy[N,K]); see csrc/ops.cpp for the full contract.
using PlanResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Argument checks shared by both backends (messages name the argument and what was expected).
void check_policy(const at::Tensor& policy);
void check_rows(const at::Tensor& rows, const char* name);
// Every rows[i] in [0, n) (reads rows on the host: CPU only).
void check_rows_in_range(const at::Tensor& rows, int64_t n, const char* op);
// The memory format a 4-D tensor is laid out in (NCHW or channels_last); other ranks: Contiguous.
at::MemoryFormat row_format(const at::Tensor& t);
void check_float_dtype(const at::Tensor& t, const char* name);
// Checks for gather_rows(x, rows) and scatter_add_rows(src, rows, n), shared by both backends.
void check_gather(const at::Tensor& x, const at::Tensor& rows);
void check_scatter(const at::Tensor& src, const at::Tensor& rows, int64_t n);
// Checks for merge_block (op "merge_block", name "shortcut") and merge_block_ ("merge_block_", "x");
// returns the channel padding of the option-A shortcut.
int64_t check_merge(const char* op, const char* name, const at::Tensor& shortcut, const at::Tensor& y,
                    const at::Tensor& rows, bool downsample);

}  // namespace blockdrop
