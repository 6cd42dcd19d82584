"""blockdrop_ext: the compiled ops of blockdrop (`torch.ops.blockdrop.*`) as typed Python functions.

import blockdrop_ext
blockdrop_ext.build_info()          # which backends were built
p = blockdrop_ext.plan(policy)      # policy [N, K] 0/1 -> Plan (CSR rows per block, groups)
xs = blockdrop_ext.gather_rows(x, p.block_rows(k))
x = blockdrop_ext.merge_block(x, block(xs), p.block_rows(k))
"""

from __future__ import annotations

import warnings

from ._loader import build_info
from .ops import Plan, downsample_a, gather_rows, kernel, merge_block, merge_block_, plan, scatter_add_rows

if not build_info()["extension"]:
    warnings.warn(
        f"blockdrop_ext: compiled extension not found ({build_info()['error']}); using the plain-PyTorch "
        "reference ops (correct, not fast). Build with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "Plan",
    "build_info",
    "downsample_a",
    "gather_rows",
    "kernel",
    "merge_block",
    "merge_block_",
    "plan",
    "scatter_add_rows",
]
