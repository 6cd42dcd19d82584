// plan on the CPU: per-block CSR of executing rows and grouping of identical policies, one pass.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../ops.h"

namespace blockdrop {
namespace cpu {

PlanResult plan(const at::Tensor& policy_in) {
  check_policy(policy_in);
  const at::Tensor policy = policy_in.to(at::kByte).contiguous();
  const int64_t N = policy.size(0), K = policy.size(1);
  const int64_t W = (K + 63) / 64;  // 64-bit words per packed policy
  const auto opts = policy.options().dtype(at::kLong);

  at::Tensor meta = at::zeros({K + N + 2}, opts);
  at::Tensor offsets = at::zeros({K + 1}, opts);
  at::Tensor rows = at::full({N * K}, -1, opts);
  at::Tensor perm = at::empty({N}, opts);
  at::Tensor group_offsets = at::full({N + 1}, N, opts);
  at::Tensor group_policy = at::zeros({N, K}, policy.options());

  const uint8_t* p = policy.data_ptr<uint8_t>();
  int64_t* counts = meta.data_ptr<int64_t>();
  // Pass 1: validate, count per block, pack each policy into W words (block k = bit 63 - k%64 of
  // word k/64, so that comparing words as unsigned integers is lexicographic order on the policy).
  std::vector<uint64_t> words(static_cast<size_t>(N * W), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const uint8_t v = p[n * K + k];
      TORCH_CHECK(v <= 1, "plan: policy must contain only 0 and 1, got ", static_cast<int>(v), " at [", n, ", ", k,
                  "]");
      counts[k] += v;
      words[n * W + k / 64] |= static_cast<uint64_t>(v) << (63 - k % 64);
    }
  }
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) off[k + 1] = off[k] + counts[k];
  // Pass 2: CSR rows, ascending within each block.
  std::vector<int64_t> cursor(off, off + K);
  int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      if (p[n * K + k]) r[cursor[k]++] = n;
    }
  }
  // Grouping: stable sort of the images by packed policy.
  int64_t* pm = perm.data_ptr<int64_t>();
  std::iota(pm, pm + N, 0);
  std::stable_sort(pm, pm + N, [&](int64_t a, int64_t b) {
    return std::lexicographical_compare(&words[a * W], &words[a * W + W], &words[b * W], &words[b * W + W]);
  });
  int64_t* gsize = counts + K;
  int64_t* goff = group_offsets.data_ptr<int64_t>();
  uint8_t* gp = group_policy.data_ptr<uint8_t>();
  int64_t G = 0;
  goff[0] = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t n = pm[i];
    if (i == 0 || !std::equal(&words[n * W], &words[n * W + W], &words[pm[i - 1] * W])) {
      std::copy(p + n * K, p + n * K + K, gp + G * K);
      ++G;
    }
    ++gsize[G - 1];
    goff[G] = i + 1;
  }
  counts[K + N] = G;
  return {meta, offsets, rows, perm, group_offsets, group_policy};
}

}  // namespace cpu
}  // namespace blockdrop

TORCH_LIBRARY_IMPL(blockdrop, CPU, m) { m.impl("plan", &blockdrop::cpu::plan); }
