// Every blockdrop op's schema, in one place, plus the argument checks both backends share and
// the Python module init of blockdrop_ext._C. Kernels and their TORCH_LIBRARY_IMPL registrations:
// cpu/<op>.cpp (CPU), cuda/<op>.cu (CUDA kernels) with cuda/entry.cpp (their checked host entries).
//
// Contracts (N images, K blocks, M executed rows):
//   plan(policy[N,K] uint8|bool, values 0/1) -> (meta, offsets, rows, perm, group_offsets, group_policy)
//     meta          int64 [K + N + 2]: counts per block (K) | group sizes (N, zero past G) | G | bad
//                   (bad != 0 when a policy value was neither 0 nor 1; CUDA reports it here rather
//                   than synchronising, the CPU kernel raises). The one tensor a caller copies to host.
//     offsets       int64 [K + 1]: CSR offsets into rows
//     rows          int64 [N * K]: rows[offsets[k]:offsets[k+1]] = ascending images executing block k;
//                   the tail past offsets[K] is -1
//     perm          int64 [N]: images ordered by policy (lexicographic, ascending), stable
//     group_offsets int64 [N + 1]: group g = perm[group_offsets[g]:group_offsets[g+1]]; tail = N
//     group_policy  uint8 [N, K]: row g < G is the policy of group g; zero past G
//   gather_rows(x[N,...], rows[M]) -> x[rows]   (keeps channels_last)
//   scatter_add_rows(src[M,...], rows[M], n) -> zeros[n,...] with out[rows[i]] += src[i]
//   merge_block(shortcut[N,C,H,W], y[M,C',H',W'], rows[M], relu, downsample) -> out[N,C',H',W']
//     s = downsample ? option_a(shortcut, C') : shortcut; out[n] = relu(s[n] + y[i]) if n == rows[i]
//     else s[n] (relu optional). option_a = x[:, :, ::2, ::2] zero-padded by (C'-C)/2 channels
//     on both sides.
//   merge_block_(x[N,C,H,W], y[M,C,H,W], rows[M], relu): x[rows[i]] = relu(x[rows[i]] + y[i]).
//   rows must lie in [0, N) (and be distinct for the merges): the CPU kernels check this, the CUDA
//   kernels do not (that would cost a synchronisation) and skip out-of-range rows; the Python
//   wrappers in blockdrop_ext/ops.py check it before either runs.
#include <Python.h>

#include <torch/library.h>

#include <string>

#include "ops.h"

extern "C" {
// `import blockdrop_ext._C` loads this shared library, which registers the ops below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace blockdrop {

void check_policy(const at::Tensor& policy) {
  TORCH_CHECK(policy.dim() == 2, "plan: policy must be 2-D [N, K], got ", policy.dim(), "-D tensor of shape ",
              policy.sizes());
  TORCH_CHECK(policy.scalar_type() == at::kByte || policy.scalar_type() == at::kBool,
              "plan: policy must be uint8 or bool with values 0/1, got ", policy.scalar_type());
  TORCH_CHECK(policy.size(1) >= 1, "plan: policy must have at least one block (K >= 1), got shape ",
              policy.sizes());
}

void check_rows(const at::Tensor& rows, const char* name) {
  TORCH_CHECK(rows.dim() == 1, name, " must be a 1-D index tensor, got shape ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kLong, name, " must be int64 (torch.long), got ", rows.scalar_type());
}

at::MemoryFormat row_format(const at::Tensor& t) {
  // channels_last only when the tensor is laid out that way and not also plainly contiguous
  // (the Python fakes in blockdrop_ext/_fake.py apply the same rule).
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

void check_rows_in_range(const at::Tensor& rows, int64_t n, const char* op) {
  const int64_t* r = rows.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    TORCH_CHECK(r[i] >= 0 && r[i] < n, op, ": rows[", i, "] = ", r[i], " is out of range for ", n, " rows");
  }
}

void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, name,
              " must be float32, float16, bfloat16 or float64, got ", st);
}

void check_gather(const at::Tensor& x, const at::Tensor& rows) {
  TORCH_CHECK(x.dim() >= 1, "gather_rows: x must have at least one dimension");
  check_rows(rows, "gather_rows: rows");
  check_float_dtype(x, "gather_rows: x");
  TORCH_CHECK(rows.device() == x.device(), "gather_rows: rows must be on the device of x (", x.device(), "), got ",
              rows.device());
}

void check_scatter(const at::Tensor& src, const at::Tensor& rows, int64_t n) {
  TORCH_CHECK(src.dim() >= 1, "scatter_add_rows: src must have at least one dimension");
  check_rows(rows, "scatter_add_rows: rows");
  check_float_dtype(src, "scatter_add_rows: src");
  TORCH_CHECK(n >= 0, "scatter_add_rows: n must be >= 0, got ", n);
  TORCH_CHECK(rows.device() == src.device(), "scatter_add_rows: rows must be on the device of src (", src.device(),
              "), got ", rows.device());
  TORCH_CHECK(src.size(0) == rows.size(0), "scatter_add_rows: src must have one row per entry of rows (",
              rows.size(0), "), got ", src.size(0));
}

int64_t check_merge(const char* op, const char* name, const at::Tensor& shortcut, const at::Tensor& y,
                    const at::Tensor& rows, bool downsample) {
  TORCH_CHECK(shortcut.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got shape ", shortcut.sizes());
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D [M, C, H, W], got shape ", y.sizes());
  check_rows(rows, (std::string(op) + ": rows").c_str());
  check_float_dtype(shortcut, (std::string(op) + ": " + name).c_str());
  TORCH_CHECK(y.scalar_type() == shortcut.scalar_type(), op, ": y must have the dtype of ", name, " (",
              shortcut.scalar_type(), "), got ", y.scalar_type());
  TORCH_CHECK(y.device() == shortcut.device(), op, ": y must be on the device of ", name, " (", shortcut.device(),
              "), got ", y.device());
  TORCH_CHECK(rows.device() == shortcut.device(), op, ": rows must be on the device of ", name, " (",
              shortcut.device(), "), got ", rows.device());
  TORCH_CHECK(y.size(0) == rows.size(0), op, ": y must have one row per entry of rows (", rows.size(0), "), got ",
              y.size(0));
  if (!downsample) {
    TORCH_CHECK(y.size(1) == shortcut.size(1) && y.size(2) == shortcut.size(2) && y.size(3) == shortcut.size(3),
                op, ": y must have the C, H, W of ", name, " ", shortcut.sizes().slice(1), ", got ",
                y.sizes().slice(1));
    return 0;
  }
  const int64_t cin = shortcut.size(1), cout = y.size(1);
  TORCH_CHECK(cout >= cin && (cout - cin) % 2 == 0,
              "merge_block(downsample=True): y's channels (", cout, ") must be >= shortcut's (", cin,
              ") and differ by an even number (option-A zero padding on both sides)");
  TORCH_CHECK(y.size(2) == (shortcut.size(2) + 1) / 2 && y.size(3) == (shortcut.size(3) + 1) / 2,
              "merge_block(downsample=True): y's H, W must be ceil(H/2), ceil(W/2) of shortcut = (",
              (shortcut.size(2) + 1) / 2, ", ", (shortcut.size(3) + 1) / 2, "), got (", y.size(2), ", ", y.size(3),
              ")");
  return (cout - cin) / 2;
}

}  // namespace blockdrop

TORCH_LIBRARY(blockdrop, m) {
  m.def("plan(Tensor policy) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gather_rows(Tensor x, Tensor rows) -> Tensor");
  m.def("scatter_add_rows(Tensor src, Tensor rows, SymInt n) -> Tensor");
  m.def("merge_block(Tensor shortcut, Tensor y, Tensor rows, bool relu=True, bool downsample=False) -> Tensor");
  m.def("merge_block_(Tensor(a!) x, Tensor y, Tensor rows, bool relu=True) -> ()");
}
