"""``dynamic_forward``: run a residual backbone under a per-image block policy with real skipping.

Semantics, for every strategy: block ``k`` of image ``n`` is dropped when ``policy[n, k] == 0``
(``h = shortcut(h)``) and executed when ``policy[n, k] == 1`` (``h = relu(shortcut(h) + F(h))``; for
torchvision blocks exactly the block's own forward). Strategies differ only in how the batch is
scheduled:

``"masked"``
    The official BlockDrop implementation: every block runs on every image and the result is
    blended, ``h = relu(s + F(h)) * m + s * (1 - m)`` (computed as the bit-identical
    ``torch.where(m, relu(s + F(h)), s)`` so that a non-finite ``F`` of a dropped image cannot leak
    in). The reference for correctness and the baseline to beat; it saves no time.
``"loop"``
    Each image alone (batch 1), running only its own blocks: the paper's batch-1 setting.
``"gather"``
    Per block ``k``: ``rows = plan.block_rows(k)``; ``y = F(gather_rows(h, rows))``; then
    ``merge_block`` writes ``relu(s + y)`` into those rows and ``s`` everywhere else (in place with
    ``merge_block_`` for identity/projection shortcuts when no gradient is needed). Fast paths: a
    block nobody executes costs only its shortcut, a block everybody executes is the plain block.
``"group"``
    One permutation in (``gather_rows(x, plan.perm)``): images with identical policies become
    contiguous, each group is a slice of the input (a view, no copy) that runs the stem and its own
    path with plain full-batch blocks, and one inverse permutation (``scatter_add_rows``) puts the
    logits back.
``"auto"``
    One image (``N == 1``): ``"loop"`` (the policy row is the path; no plan kernel). Otherwise
    chooses per call from the plan (see :func:`choose_strategy`): ``"group"`` when the batch has few
    distinct policies relative to its size (mean group size ``N / G >= AUTO_MIN_GROUP_SIZE``), else
    ``"gather"``.

Synchronisation: ``gather``, ``group`` and ``auto`` make exactly one device->host copy, the plan's
(sizes and distinct policies together; row indices stay on the device and the raw ops,
``blockdrop_ext.kernel``, are called without the wrappers' checks since the plan's rows are valid by
construction). ``loop`` copies the policy to the host once; ``masked`` syncs once, only to validate
the values of a non-bool CUDA policy.

Host overhead (what a launch-bound GPU run pays): under ``torch.no_grad`` the call runs in
``torch.inference_mode`` (skipping every op's autograd layer; the result is returned as an ordinary
tensor), the raw ops are looked up once per call, and the rows of all blocks are split off the plan
in one call, so a mixed block costs about as many microseconds of Python/dispatch as a masked one.

Memory (inference): no strategy's peak exceeds the full network's at the same batch by more than
~1% (a limit of 10% is tested). ``gather``
frees each block's gathered rows after the block's first layer (the model's residuals are
:class:`~blockdrop.models.Chain` objects, run with ``residual_consume``) and merges in place, so a mixed
block holds ``h`` plus ``F``'s intermediates on the executed rows only; ``group`` runs the stem per
group, so one group's activations are alive at a time. ``tests/test_engine.py`` checks
``peak <= 1.10 x full`` with :func:`blockdrop.evaluation.memory.peak_memory`.

``torch.compile``: compiling ``dynamic_forward`` or a :class:`~blockdrop.BlockDropNet` traces the
masked path (and, for a BlockDropNet, the policy network) into graphs; the data-dependent
strategies (``loop``/``gather``/``group``/``auto``) run eagerly behind one graph break
(``torch.compiler.disable``), so batches with new policies reuse the compiled graphs instead of
recompiling per policy. ``torch.export`` captures the masked path only. For one graph with no
break, an export of the skipping path, or CUDA graphs, use capacity mode
(:func:`blockdrop.capacity_forward`: static shapes, a fixed cost per batch).

Autograd: gradients flow through every strategy (``gather_rows``/``merge_block``/
``scatter_add_rows`` are differentiable). With BatchNorm in eval mode they equal those of
``"masked"`` up to float rounding. **In train mode BatchNorm differs**: ``"masked"`` computes batch
statistics over the whole batch (including images that then discard the block's output, as the
official code does), ``"gather"`` over the executing rows only, ``"group"`` over each group's rows
and ``"loop"`` over one image; running statistics are updated accordingly (once per call of each
BN layer, i.e. once per group for ``"group"``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import blockdrop_ext

from .models.base import ResNetBackbone
from .models.wrap import as_backbone

__all__ = [
    "STRATEGIES",
    "AUTO_MIN_GROUP_SIZE",
    "check_policy_values",
    "choose_strategy",
    "dynamic_forward",
    "gather_block",
    "validate_inputs",
    "validate_model_input",
]

STRATEGIES = ("auto", "masked", "loop", "gather", "group")

#: ``auto`` picks ``group`` when ``N >= AUTO_MIN_GROUP_SIZE * G`` (few distinct policies, so every
#: group runs at an efficient batch size with no per-block copies), else ``gather``. On CPU a conv
#: costs about the same per image from batch 16-32 upwards (measured: 1.06-1.34x the per-image cost at 16,
#: ~1.0-1.15x at 64), while gather pays its copies (~7%) at every block.
AUTO_MIN_GROUP_SIZE = 32


# --------------------------------------------------------------------------------------------------
# validation


def check_policy_values(policy: Tensor) -> None:
    """Raise ValueError naming ``policy`` if a CPU policy ``[N, K]`` holds anything but 0 and 1
    (NaN included); bool policies pass without a scan."""
    if policy.dtype == torch.bool:
        return
    bad = ~((policy == 0) | (policy == 1))
    if bool(bad.any()):
        n, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"policy: expected only 0/1 values, got {policy[n, k].item()!r} at [{n}, {k}]")


def validate_model_input(model: Any, x: Tensor) -> ResNetBackbone:
    """Check ``model`` and ``x: [N, C, H, W]`` (rank, channels, dtype, device; no values read) and
    return the backbone. Raises ValueError naming the argument."""
    model = as_backbone(model)
    if not isinstance(x, Tensor):
        raise ValueError(f"x: expected a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(
            f"x: expected {model.in_channels} input channels (x.shape[1]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
    param = next(model.parameters(), None)
    if param is not None:
        if x.device != param.device:
            raise ValueError(f"x: expected device {param.device} (the model's), got {x.device}")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"x: expected dtype {param.dtype} (the model's parameters; or enable autocast), got {x.dtype}"
            )
    return model


def validate_inputs(model: Any, x: Tensor, policy: Tensor) -> ResNetBackbone:
    """Check ``model``, ``x: [N, C, H, W]`` and ``policy: [N, K]`` (shape, dtype, device) and return
    the backbone. Values of a CPU policy are checked here; those of a CUDA policy in the plan (one
    sync) so as not to add a device->host synchronisation. Raises ValueError naming the argument.
    """
    model = validate_model_input(model, x)
    if not isinstance(policy, Tensor):
        raise ValueError(f"policy: expected a torch.Tensor [N, K], got {type(policy).__name__}")
    expected = (x.shape[0], model.num_blocks)
    if policy.dim() != 2 or tuple(policy.shape) != expected:
        raise ValueError(
            f"policy: expected shape [N, K] = {list(expected)} (N = x.shape[0], K = "
            f"model.num_blocks), got {list(policy.shape)}"
        )
    if policy.is_complex():
        raise ValueError(f"policy: expected a bool, integer or float tensor of 0/1, got {policy.dtype}")
    if policy.device != x.device:
        raise ValueError(f"policy: expected device {x.device} (that of x), got {policy.device}")
    if policy.device.type == "cpu":
        check_policy_values(policy)
    return model


# --------------------------------------------------------------------------------------------------
# strategies


def _same_dtype(s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Promote ``s`` and ``y`` to a common dtype (they differ under autocast), as ``s + y`` would."""
    if s.dtype == y.dtype:
        return s, y
    dt = torch.promote_types(s.dtype, y.dtype)
    return s.to(dt), y.to(dt)


def _may_write_in_place(target: Tensor, read: Tensor, *keep: Tensor) -> bool:
    """True when ``target`` may be overwritten by an inference-only in-place op that also reads
    ``read``: autograd tracks neither, and ``target`` shares no storage with ``read`` or with the
    tensors in ``keep`` (the caller's input, a shortcut still needed). Never while compiling or
    exporting: a traced graph must stay functional (and storage pointers are not data there)."""
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (target.requires_grad or read.requires_grad):
        return False
    ptr = target.untyped_storage().data_ptr()
    return all(ptr != t.untyped_storage().data_ptr() for t in (read, *keep))


def _masked(model: ResNetBackbone, x: Tensor, policy: Tensor) -> Tensor:
    if policy.device.type != "cpu" and policy.dtype != torch.bool:
        bad = ~((policy == 0) | (policy == 1))
        if bool(bad.any()):  # the one sync of this strategy
            check_policy_values(policy.cpu())
    mask = (policy.detach() != 0).view(policy.shape[0], policy.shape[1], 1, 1)
    h = model.stem(x)
    for k, block in enumerate(model.blocks):
        y = block.residual(h)
        s = block.shortcut(h)  # after F, as torchvision's own forward: not both alive with F's temporaries
        if y.dtype == s.dtype and _may_write_in_place(y, s, h, x):
            y = y.add_(s).relu_()  # relu(s + y) in y's own storage: bit-identical, two activations less
        else:
            y = torch.relu(s + y)
        h = torch.where(mask[:, k : k + 1], y, s)
        del y, s
    return model.head(h)


def _loop(model: ResNetBackbone, x: Tensor, policy: Tensor) -> Tensor:
    host = policy.detach().cpu()  # the one sync of this strategy
    check_policy_values(host)
    keep = (host != 0).tolist()
    outs = []
    for n in range(x.shape[0]):
        h = model.stem(x[n : n + 1])
        for k, block in enumerate(model.blocks):
            h = block.full(h) if keep[n][k] else block.shortcut(h)
        outs.append(model.head(h))
    return torch.cat(outs)


@dataclass(frozen=True)
class _Kernels:
    """The raw ops for one device, looked up once per forward. The engine calls them without the
    typed wrappers' Python checks (a few microseconds per call, on every block, which is what a
    launch-bound GPU run pays in): its rows come from ``plan()`` and its tensors are consistent by
    construction (``_same_dtype``)."""

    gather_rows: Callable[..., Tensor]
    scatter_add_rows: Callable[..., Tensor]
    merge_block: Callable[..., Tensor]
    merge_block_: Callable[..., None]

    @staticmethod
    def on(device: torch.device) -> _Kernels:
        if torch.compiler.is_compiling():  # looked up once per trace; dynamo warns on lru_cache
            return _Kernels._make(device)
        return _Kernels._cached(device)

    @staticmethod
    def _make(device: torch.device) -> _Kernels:
        names = ("gather_rows", "scatter_add_rows", "merge_block", "merge_block_")
        return _Kernels(*(blockdrop_ext.kernel(name, device) for name in names))

    @staticmethod
    @functools.cache
    def _cached(device: torch.device) -> _Kernels:
        return _Kernels._make(device)


def _gather(model: ResNetBackbone, x: Tensor, plan: Any) -> Tensor:
    n, ops = x.shape[0], _Kernels.on(x.device)
    counts: Sequence[int] = plan.counts
    per_block = plan.rows[: plan.offsets[-1]].split(counts)  # K views in one call
    h = model.stem(x)
    for block, c, rows in zip(model.blocks, counts, per_block):
        if c == 0:
            h = block.shortcut(h)
            continue
        if c == n:
            h = block.full(h)
            continue
        h = gather_block(block, h, rows, x, ops)
    return model.head(h)


def gather_block(block: Any, h: Tensor, rows: Tensor, x: Tensor, ops: _Kernels | None = None) -> Tensor:
    """One mixed block: ``F`` on ``h[rows]`` only, merged into ``shortcut(h)`` -- the step of the
    ``gather`` strategy and of capacity mode (:mod:`blockdrop.capacity`).

    ``block``: a :class:`~blockdrop.models.BlockView`; ``h: [N, C_in, H, W]``; ``rows``: int64
    ``[M]``, distinct, in ``[0, N)``, on ``h``'s device (not checked: the callers make them);
    ``x``: the forward's input (never written). Returns ``[N, C_out, H', W']``: ``relu(s + F)`` in
    ``rows``, ``s = shortcut(h)`` elsewhere. ``h`` may be overwritten (in place, inference only,
    never while compiling), so the caller must not use it afterwards.

    Memory: the gathered rows are freed after ``F``'s first layer (``residual_consume``) and ``y``
    when this returns, so the peak is ``h + F's largest two intermediates on len(rows) rows`` (+ the
    projection), never more than the full block's.
    """
    ops = ops or _Kernels.on(h.device)
    y = block.residual_consume([ops.gather_rows(h, rows)])
    kind = block.shortcut_kind
    if kind == "option_a":
        s, y = _same_dtype(h, y)
        return ops.merge_block(s, y, rows, True, True)
    s = h if kind == "identity" else block.shortcut(h)
    s, y = _same_dtype(s, y)
    if _may_write_in_place(s, y, x):  # s is ours alone (h or a fresh projection/cast)
        ops.merge_block_(s, y, rows, True)
        return s
    return ops.merge_block(s, y, rows, True, False)


def _group(model: ResNetBackbone, x: Tensor, plan: Any) -> Tensor:
    n, g_count = x.shape[0], plan.num_groups
    policies = plan.group_policy_host.tolist()  # [G][K], brought over in the plan's one copy
    offsets: Sequence[int] = plan.group_offsets
    ops = _Kernels.on(x.device)
    xs = x if g_count == 1 else ops.gather_rows(x, plan.perm)
    outs = []
    for g in range(g_count):
        # The stem runs per group too, so that only this group's activations are alive (a stem
        # output shared by all groups would stay allocated through every group's blocks).
        hg = model.stem(xs if g_count == 1 else xs[offsets[g] : offsets[g + 1]])
        for keep, block in zip(policies[g], model.blocks):
            hg = block.full(hg) if keep else block.shortcut(hg)
        outs.append(model.head(hg))
    if g_count == 1:
        return outs[0]
    return ops.scatter_add_rows(torch.cat(outs), plan.perm, n)


def choose_strategy(plan: Any, n: int) -> str:
    """The ``"auto"`` rule: ``"loop"`` for one image (``n == 1``; ``plan`` may then be None: none is
    needed), else ``"group"`` if ``n >= AUTO_MIN_GROUP_SIZE * plan.num_groups`` (or a single
    group), else ``"gather"``. Uses only host fields of the plan (no synchronisation)."""
    if n == 1:
        return "loop"
    g = plan.num_groups
    if g <= 1 or n >= AUTO_MIN_GROUP_SIZE * g:
        return "group"
    return "gather"


def dynamic_forward(model: Any, x: Tensor, policy: Tensor, strategy: str = "auto") -> Tensor:
    """Run ``model`` on ``x`` executing block ``k`` of image ``n`` only where ``policy[n, k] == 1``.

    Args:
        model: a :class:`~blockdrop.models.ResNetBackbone` (or a torchvision ResNet, wrapped on the
            fly), with ``K = model.num_blocks`` blocks.
        x: ``Tensor[N, C, H, W]`` on the model's device (NCHW or channels_last; float32, float16,
            bfloat16, or any dtype under autocast).
        policy: ``Tensor[N, K]`` of 0/1 (bool, integer or float) on ``x``'s device.
        strategy: ``"auto"``, ``"masked"``, ``"loop"``, ``"gather"`` or ``"group"`` (module
            docstring; ``"auto"`` follows :func:`choose_strategy`).

    Returns:
        logits ``Tensor[N, num_classes]``, the same (up to float rounding) for every strategy.

    Raises:
        ValueError: naming the argument, for an unsupported model, wrong input channels/rank/device/
            dtype, a policy of the wrong shape/K/device or with values other than 0/1 (NaN too).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    model = validate_inputs(model, x, policy)
    if x.shape[0] == 0:
        return model(x)
    if torch.is_grad_enabled() or torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
        return _run(model, x, policy, strategy)
    # Gradients are off (torch.no_grad): run under inference mode, which skips the autograd layer
    # of every op (the Python one of the blockdrop ops costs ~10 us per call, per block), and hand
    # back an ordinary tensor (a clone made outside inference mode), as no_grad would.
    with torch.inference_mode():
        out = _run(model, x, policy, strategy)
    return out.clone()


def _run(model: ResNetBackbone, x: Tensor, policy: Tensor, strategy: str) -> Tensor:
    """``strategy`` on validated, non-empty inputs (see :func:`dynamic_forward`)."""
    if strategy == "auto" and x.shape[0] == 1:
        strategy = choose_strategy(None, 1)  # one image: its policy row is its path, no plan needed
    if strategy == "masked":
        return _masked(model, x, policy)
    return _run_dynamic(model, x, policy, strategy)


@torch.compiler.disable
def _run_dynamic(model: ResNetBackbone, x: Tensor, policy: Tensor, strategy: str) -> Tensor:
    """``loop``, ``gather``, ``group`` and ``auto``: their sub-batch sizes are data (the plan's),
    so under ``torch.compile`` this part runs eagerly -- one graph break -- and a new policy never
    triggers a recompilation (tracing it would specialise on every block's row count)."""
    if strategy == "loop":
        return _loop(model, x, policy)
    # The one device->host synchronisation. plan() also rejects non-0/1 values (NaN included) of
    # a CUDA policy from that same copy (ValueError "plan: policy must contain only 0 and 1").
    plan = blockdrop_ext.plan(policy.detach())
    if strategy == "auto":
        strategy = choose_strategy(plan, x.shape[0])
    if strategy == "group":
        return _group(model, x, plan)
    return _gather(model, x, plan)
