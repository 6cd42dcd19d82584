// merge_block / merge_block_ on the CPU: the fused skip connection of a block that ran for some
// rows only, with the CIFAR option-A downsampling shortcut fused in when the block downsamples.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../elementwise.h"
#include "../ops.h"

namespace blockdrop {
namespace cpu {

namespace {
// inverse[n] = i where rows[i] == n, else -1. Checks range and uniqueness.
std::vector<int64_t> inverse_rows(const at::Tensor& rows, int64_t n, const char* op) {
  check_rows_in_range(rows, n, op);
  std::vector<int64_t> inv(static_cast<size_t>(n), -1);
  const int64_t* r = rows.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    TORCH_CHECK(inv[r[i]] < 0, op, ": rows must not repeat, row ", r[i], " appears twice");
    inv[r[i]] = i;
  }
  return inv;
}
}  // namespace

at::Tensor merge_block(const at::Tensor& shortcut, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu,
                       bool downsample) {
  const int64_t pad = check_merge("merge_block", "shortcut", shortcut, y_in, rows_in, downsample);
  const auto fmt = row_format(shortcut);
  const int64_t N = shortcut.size(0);
  const int64_t C = y_in.size(1), H = y_in.size(2), Wd = y_in.size(3);
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const auto inv = inverse_rows(rows, N, "merge_block");
  at::Tensor out = at::empty({N, C, H, Wd}, shortcut.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const int64_t R = C * H * Wd;  // elements per output row
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, shortcut.scalar_type(), "merge_block_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (!downsample) {
      const at::Tensor s = shortcut.contiguous(fmt);
      const scalar_t* sp = s.const_data_ptr<scalar_t>();
      at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) {
          const scalar_t* srow = sp + n * R;
          scalar_t* orow = op + n * R;
          const int64_t i = inv[n];
          if (i < 0) {
            std::copy(srow, srow + R, orow);
            continue;
          }
          const scalar_t* yrow = yp + i * R;
          for (int64_t j = 0; j < R; ++j) {
            orow[j] = static_cast<scalar_t>(
                maybe_relu<opmath_t>(static_cast<opmath_t>(srow[j]) + static_cast<opmath_t>(yrow[j]), relu));
          }
        }
      });
      return;
    }
    // Option A, read through the shortcut's own strides: s[n, c, h, w] = x[n, c - pad, 2h, 2w].
    // Loops in the output's memory order with no per-element division.
    const scalar_t* xp = shortcut.const_data_ptr<scalar_t>();
    const int64_t Cin = shortcut.size(1);
    const int64_t xs0 = shortcut.stride(0), xs1 = shortcut.stride(1), xs2 = shortcut.stride(2),
                  xs3 = shortcut.stride(3);
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        scalar_t* orow = op + n * R;
        const int64_t i = inv[n];
        const scalar_t* yrow = i < 0 ? nullptr : yp + i * R;
        const scalar_t* xn = xp + n * xs0;
        // A run of `len` output elements at offset j: from src[k * step] (null: zero padding), plus
        // y and relu where the block ran. Branches hoisted out of the inner loops.
        auto run = [&](int64_t j, const scalar_t* src, int64_t step, int64_t len) {
          scalar_t* o = orow + j;
          if (!yrow) {
            if (!src) {
              std::fill(o, o + len, scalar_t(0));
            } else {
              for (int64_t k = 0; k < len; ++k) o[k] = src[k * step];
            }
            return;
          }
          const scalar_t* yv = yrow + j;
          if (!src) {
            for (int64_t k = 0; k < len; ++k) {
              o[k] = static_cast<scalar_t>(maybe_relu<opmath_t>(static_cast<opmath_t>(yv[k]), relu));
            }
          } else {
            for (int64_t k = 0; k < len; ++k) {
              o[k] = static_cast<scalar_t>(maybe_relu<opmath_t>(
                  static_cast<opmath_t>(src[k * step]) + static_cast<opmath_t>(yv[k]), relu));
            }
          }
        };
        if (cl) {  // per pixel: pad zero channels, Cin copied channels, the rest zero
          for (int64_t h = 0; h < H; ++h) {
            for (int64_t w = 0; w < Wd; ++w) {
              const int64_t base = (h * Wd + w) * C;
              run(base, nullptr, 0, pad);
              run(base + pad, xn + 2 * h * xs2 + 2 * w * xs3, xs1, Cin);
              run(base + pad + Cin, nullptr, 0, C - pad - Cin);
            }
          }
        } else {  // per (channel, output row): every second input pixel, or zeros
          for (int64_t c = 0; c < C; ++c) {
            const int64_t ci = c - pad;
            const bool in = ci >= 0 && ci < Cin;
            for (int64_t h = 0; h < H; ++h) {
              run((c * H + h) * Wd, in ? xn + ci * xs1 + 2 * h * xs2 : nullptr, 2 * xs3, Wd);
            }
          }
        }
      }
    });
  });
  return out;
}

void merge_block_(const at::Tensor& x, const at::Tensor& y_in, const at::Tensor& rows_in, bool relu) {
  check_merge("merge_block_", "x", x, y_in, rows_in, /*downsample=*/false);
  const auto fmt = row_format(x);
  TORCH_CHECK(x.is_contiguous(fmt), "merge_block_: x must be contiguous (NCHW or channels_last) to be updated in place");
  const at::Tensor y = y_in.contiguous(fmt);
  const at::Tensor rows = rows_in.contiguous();
  const int64_t N = x.size(0), M = rows.size(0);
  inverse_rows(rows, N, "merge_block_");
  if (M == 0 || x.numel() == 0) return;
  const int64_t R = x.numel() / N;
  const int64_t* r = rows.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "merge_block__cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, M, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        scalar_t* xrow = xp + r[i] * R;
        const scalar_t* yrow = yp + i * R;
        for (int64_t j = 0; j < R; ++j) {
          xrow[j] = static_cast<scalar_t>(
              maybe_relu<opmath_t>(static_cast<opmath_t>(xrow[j]) + static_cast<opmath_t>(yrow[j]), relu));
        }
      }
    });
  });
}

}  // namespace cpu
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CPU, m) {
  m.impl("merge_block", &blockdrop::cpu::merge_block);
  m.impl("merge_block_", &blockdrop::cpu::merge_block_);
}
