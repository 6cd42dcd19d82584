// Element-wise helpers shared by the CPU kernels and the CUDA kernels (host and device).
#pragma once

#include <c10/macros/Macros.h>

namespace blockdrop {

// relu(v) when `relu`, else v; NaN propagates, as in torch.relu. T is the op-math type.
template <typename T>
C10_HOST_DEVICE inline T maybe_relu(T v, bool relu) {
  return (relu && v < T(0)) ? T(0) : v;
}

}  // namespace blockdrop
