"""``capacity_forward``: dynamic execution with static shapes -- block ``k`` runs on exactly ``C_k``
images of the batch.

Semantics: for every block ``k`` the ``C_k`` images with the highest ``scores[:, k]`` (e.g. the
policy network's keep-probabilities) execute it, ``h = relu(shortcut(h) + F(h))``; all others take
the shortcut, ``h = shortcut(h)``. Ties go to the lower batch index (a stable descending sort), so
the choice is deterministic. The result equals ``dynamic_forward(model, x, P, "masked")`` where
``P[n, k] = 1`` for the chosen images (:func:`capacity_policy` returns that ``P``).

* **An image's path depends on its batch**: whether image ``n`` runs block ``k`` depends on how
  its score ranks among the other images' scores for that block. The same image can take another
  path in another batch (threshold mode, ``scores >= t``, does not have this property).
* **Compute per batch is constant**: block ``k`` always runs on ``C_k`` rows, whatever the images.
  With capacities as shares, ``C_k`` follows the batch size (:func:`counts_from_shares`).

Capacity: per-block *counts* (a length-``K`` sequence of ints, or an integer CPU tensor), each in
``[0, N]``, or per-block *shares* of the batch (floats in ``[0, 1]``; a sequence holding any float,
or a floating-point CPU tensor), turned into counts by :func:`counts_from_shares`: the total
``round(sum(shares) * N)`` is split over the blocks by largest remainder, so the mean blocks per
image stays as close to ``sum(shares)`` as the batch allows. **Small batches**: counts are always
computed for the batch's own size, so a batch smaller than the one a capacity was calibrated for
keeps the same shares (rounded), and **batch 1 runs a static sub-network**: the
``round(sum(shares))`` blocks with the largest shares, for every image (per-image adaptivity needs
other images to rank against). Counts larger than the batch are an error.

When to prefer which mode: capacity mode when the cost of a batch must be fixed (latency budgets,
serving at a fixed batch size), and wherever a host synchronisation or a data-dependent shape
hurts: ``torch.compile(fullgraph=True)``, ``torch.export``, CUDA graphs
(:func:`blockdrop.cuda_graphed`); threshold mode (:func:`blockdrop.dynamic_forward` with the
thresholded policy) when each image must get its own policy whatever its batch, at batch 1, and for
small batches (< ~16), where shares round coarsely.

Under ``torch.compile`` and ``torch.export`` the counts are constants of the graph: one graph per
batch size (the 20-batch no-recompile test holds the batch size fixed; an exported program runs
at its example's batch size).

Synchronisation: none. The rows of every block come from one stable ``argsort`` of ``scores`` on
their device; the counts are host integers derived from the capacity and ``N`` alone, so every
shape is known before the data. (Validation reads values only for CPU tensors outside compilation:
NaN scores raise there; on CUDA and inside a compiled or exported graph a NaN score ranks lowest.)

Memory (inference): as the engine's ``gather`` strategy -- a block holds ``h`` and ``F``'s
intermediates on its ``C_k`` rows (the gathered rows are freed after ``F``'s first layer), merged
in place when nothing else reads ``h``; never above the full network's peak by more than the
``[K, N]`` int64 ranking. Under ``torch.compile``/``torch.export`` a mixed block is written in
plain ATen ops (``index_select`` -> block -> ``index_copy``) so that Inductor fuses the shortcut
add and ReLU into the block's last convolution as it does in the plain network, and the gathered
rows stay alive through the block (``C_k`` rows more); an exported program then needs no custom op.

Autograd: gradients flow to ``x`` and the parameters (``gather_rows``/``merge_block`` are
differentiable) and equal those of ``"masked"`` under ``P`` up to float rounding; the choice of
rows is discrete, so ``scores`` get no gradient. BatchNorm in train mode sees only the executing
rows, as in ``"gather"``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .engine import gather_block, validate_model_input
from .models.base import ResNetBackbone

__all__ = ["capacity_forward", "capacity_policy", "counts_from_shares", "resolve_capacity"]

Capacity = Sequence[int] | Sequence[float] | Tensor


# --------------------------------------------------------------------------------------------------
# capacity -> counts (host integers: they define the shapes)


def counts_from_shares(shares: Sequence[float], n: int) -> tuple[int, ...]:
    """Per-block counts for a batch of ``n`` from per-block shares in ``[0, 1]``.

    Block ``k`` gets ``floor(shares[k] * n)``, and the blocks with the largest remainders (ties: the
    lower block index) one more each, until the total is ``round(sum(shares) * n)`` (half up; the
    sum rounded to 1e-9 first, so that ``0.145 * 100`` counts as 14.5). A product that floats put
    just below an integer (``0.29 * 100``) has the largest remainder and gets its unit back. Pure
    Python: under ``torch.compile`` the counts are constants of the graph for each batch size.

    ``shares``: ``K`` floats in ``[0, 1]`` (not checked here: :func:`resolve_capacity` does).
    Returns ``K`` ints in ``[0, n]``.
    """
    exact = [float(s) * n for s in shares]
    base = [math.floor(e) for e in exact]
    extra = math.floor(round(sum(exact), 9) + 0.5) - sum(base)
    by_remainder = sorted(range(len(exact)), key=lambda k: (-(exact[k] - base[k]), k))
    for k in by_remainder[: max(0, extra)]:
        base[k] += 1
    return tuple(min(c, n) for c in base)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def resolve_capacity(capacity: Capacity, n: int, k: int) -> tuple[int, ...]:
    """``capacity`` (see the module docstring) as ``K`` counts in ``[0, n]`` for a batch of ``n``.

    Raises ValueError naming ``capacity`` for a CUDA tensor (counts define shapes and must be known
    on the host), a wrong length, a non-number, a count outside ``[0, n]`` or a share outside
    ``[0, 1]`` (NaN included).
    """
    if isinstance(capacity, Tensor):
        if capacity.device.type != "cpu":
            raise ValueError(
                f"capacity: expected a CPU tensor or a sequence (counts define the "
                f"shapes, so they must be on the host), got a tensor on {capacity.device}"
            )
        if capacity.dtype == torch.bool or capacity.is_complex():
            raise ValueError(f"capacity: expected integer counts or float shares, got {capacity.dtype}")
        if capacity.dim() != 1:
            raise ValueError(
                f"capacity: expected a 1-D tensor of length K = {k}, got shape {list(capacity.shape)}"
            )
        values: list[Any] = capacity.tolist()
    elif isinstance(capacity, (str, bytes)) or not isinstance(capacity, Sequence):
        raise ValueError(
            f"capacity: expected K = {k} counts or shares (a sequence or a CPU "
            f"tensor), got {type(capacity).__name__}"
        )
    else:
        values = list(capacity)
    if len(values) != k:
        raise ValueError(f"capacity: expected K = {k} values (one per block), got {len(values)}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        bad = next(v for v in values if not isinstance(v, numbers.Real) or isinstance(v, bool))
        raise ValueError(f"capacity: expected ints (counts) or floats (shares), got {bad!r}")
    if all(_is_int(v) for v in values):
        for i, c in enumerate(values):
            if not 0 <= c <= n:
                raise ValueError(f"capacity: expected counts in [0, N] = [0, {n}], got {c} at block {i}")
        return tuple(int(c) for c in values)
    for i, s in enumerate(values):
        if not 0.0 <= float(s) <= 1.0:  # False for NaN
            raise ValueError(f"capacity: expected shares in [0, 1], got {s!r} at block {i}")
    return counts_from_shares(values, n)


# --------------------------------------------------------------------------------------------------
# validation and ranking


def _check_scores(model: ResNetBackbone, x: Tensor, scores: Tensor) -> None:
    """Shape, dtype, device of ``scores [N, K]``; NaN only for a CPU tensor outside compilation
    (anywhere else that check would be a host synchronisation)."""
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores: expected a torch.Tensor [N, K], got {type(scores).__name__}")
    expected = [x.shape[0], model.num_blocks]
    if scores.dim() != 2 or list(scores.shape) != expected:
        raise ValueError(
            f"scores: expected shape [N, K] = {expected} (N = x.shape[0], K = "
            f"model.num_blocks), got {list(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise ValueError(f"scores: expected a floating-point tensor, got {scores.dtype}")
    if scores.device != x.device:
        raise ValueError(f"scores: expected device {x.device} (that of x), got {scores.device}")
    if scores.device.type == "cpu" and not torch.compiler.is_compiling():
        nan = torch.isnan(scores.detach())
        if bool(nan.any()):
            n, k = (int(i) for i in nan.nonzero()[0])
            raise ValueError(f"scores: expected no NaN, got NaN at [{n}, {k}]")


def _ranking(scores: Tensor) -> Tensor:
    """int64 ``[K, N]``: row ``k`` lists the images by descending ``scores[:, k]``, ties in index
    order (a stable sort), NaN last. ``ranking[k, :C_k]`` are block ``k``'s rows."""
    s = scores.detach().t()
    s = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
    return torch.argsort(s, dim=1, descending=True, stable=True)


@functools.lru_cache(maxsize=64)
def _device_counts(counts: tuple[int, ...], device: torch.device) -> Tensor:
    """``counts`` as an int64 tensor on ``device``, made once: a host->device copy inside a CUDA
    graph capture is not allowed, and the warm-up before a capture makes it."""
    with torch.inference_mode(False):
        return torch.tensor(counts, dtype=torch.long, device=device)


def _policy_from_ranking(ranking: Tensor, counts: Sequence[int]) -> Tensor:
    """bool ``[N, K]``: image ``n`` executes block ``k`` iff it is among ``ranking[k, :counts[k]]``."""
    k, n = ranking.shape
    if torch.compiler.is_compiling() or ranking.device.type == "cpu":  # a graph constant / no copy
        cap = torch.tensor(counts, dtype=torch.long, device=ranking.device).view(k, 1)
    else:
        cap = _device_counts(tuple(counts), ranking.device).view(k, 1)
    chosen = torch.arange(n, device=ranking.device).view(1, n) < cap  # [K, N] in rank order
    return torch.zeros_like(chosen).scatter_(1, ranking, chosen).t()


def capacity_policy(scores: Tensor, capacity: Capacity) -> Tensor:
    """The policy capacity mode executes: bool ``[N, K]``, ``True`` for the ``C_k`` images with the
    highest ``scores[:, k]`` (ties: the lower index; NaN ranks lowest), where ``C`` is
    ``capacity`` resolved for ``N`` (:func:`resolve_capacity`). No synchronisation.

    ``scores``: float ``[N, K]`` on any device; ``capacity``: see the module docstring.
    Raises ValueError naming ``scores`` or ``capacity``.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores: expected a floating-point tensor [N, K], got {got}")
    counts = resolve_capacity(capacity, scores.shape[0], scores.shape[1])
    return _policy_from_ranking(_ranking(scores), counts)


# --------------------------------------------------------------------------------------------------
# the forward


def _traced_block(block: Any, h: Tensor, rows: Tensor) -> Tensor:
    """One mixed block in plain ATen ops, for ``torch.compile``/``torch.export``: ``g = h[rows]``,
    ``y = relu(shortcut(h)[rows] + F(g))``, written into ``shortcut(h)`` at ``rows``. Inductor
    folds the shortcut add and ReLU into ``F``'s last convolution, as in the plain network, and
    fuses the row copies (the eager kernels, ``gather_block``, are opaque to it).
    ``h: [N, C_in, H, W]``, ``rows: [C]`` -> ``[N, C_out, H', W']``."""
    g = h.index_select(0, rows)
    kind = block.shortcut_kind
    s = h if kind == "identity" else block.shortcut(h)
    s_rows = (
        g if kind == "identity" else (block.shortcut(g) if kind == "option_a" else s.index_select(0, rows))
    )
    y = torch.relu(s_rows + block.residual(g))
    return s.to(y.dtype).index_copy(0, rows, y)


def _run(model: ResNetBackbone, x: Tensor, ranking: Tensor, counts: Sequence[int]) -> Tensor:
    """Stem, then per block: shortcut (``C = 0``), the full block (``C = N``) or ``F`` on the rows
    ``ranking[k, :C]`` merged into the shortcut (eager: :func:`~blockdrop.engine.gather_block`'s
    fused kernels; compiling or exporting: :func:`_traced_block`); then the head. Every shape is
    fixed by ``counts`` and ``N``."""
    n = x.shape[0]
    traced = torch.compiler.is_compiling()
    h = model.stem(x)
    for k, (block, c) in enumerate(zip(model.blocks, counts)):
        if c == 0:
            h = block.shortcut(h)
        elif c == n:
            h = block.full(h)
        elif traced:
            h = _traced_block(block, h, ranking[k, :c])
        else:
            h = gather_block(block, h, ranking[k, :c], x)
    return model.head(h)


@overload
def capacity_forward(
    model: Any, x: Tensor, scores: Tensor, capacity: Capacity, *, return_policy: Literal[False] = ...
) -> Tensor: ...
@overload
def capacity_forward(
    model: Any, x: Tensor, scores: Tensor, capacity: Capacity, *, return_policy: Literal[True]
) -> tuple[Tensor, Tensor]: ...
@overload
def capacity_forward(
    model: Any, x: Tensor, scores: Tensor, capacity: Capacity, *, return_policy: bool
) -> Tensor | tuple[Tensor, Tensor]: ...
def capacity_forward(
    model: Any, x: Tensor, scores: Tensor, capacity: Capacity, *, return_policy: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Run ``model`` on ``x``, block ``k`` on exactly ``C_k`` images: those with the highest
    ``scores[:, k]`` (module docstring: semantics, synchronisation, memory, small batches).

    Args:
        model: a :class:`~blockdrop.models.ResNetBackbone` (or a torchvision/timm ResNet, wrapped
            on the fly) with ``K = model.num_blocks`` blocks.
        x: ``Tensor[N, C, H, W]`` on the model's device (NCHW or channels_last; the model's dtype,
            or any under autocast).
        scores: ``Tensor[N, K]``, floating point, on ``x``'s device (e.g. keep-probabilities).
        capacity: per-block counts (``K`` ints in ``[0, N]``, a sequence or an integer CPU
            tensor) or shares (``K`` floats in ``[0, 1]``).
        return_policy: also return the executed policy.

    Returns:
        logits ``Tensor[N, num_classes]``; with ``return_policy``, ``(logits, policy)`` where
        ``policy`` is bool ``[N, K]`` (:func:`capacity_policy`), and the logits equal
        ``dynamic_forward(model, x, policy, "masked")`` up to float rounding.

    Raises:
        ValueError: naming the argument: an unsupported model, wrong input channels/rank/device/
            dtype, ``scores`` of the wrong shape/dtype/device or with NaN (CPU), ``capacity`` of
            the wrong length or kind, a count outside ``[0, N]``, a share outside ``[0, 1]``.
    """
    model = validate_model_input(model, x)
    _check_scores(model, x, scores)
    counts = resolve_capacity(capacity, x.shape[0], model.num_blocks)
    if torch.compiler.is_compiling() or torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return _forward(model, x, scores, counts, return_policy)
    with torch.inference_mode():  # no_grad: no autograd layer per op inside; ordinary tensors out
        result = _forward(model, x, scores, counts, return_policy)
    if isinstance(result, tuple):
        return result[0].clone(), result[1].clone()
    return result.clone()


def _forward(
    model: ResNetBackbone, x: Tensor, scores: Tensor, counts: Sequence[int], return_policy: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`capacity_forward` on validated inputs and resolved counts."""
    ranking = _ranking(scores)
    out = _run(model, x, ranking, counts)
    return (out, _policy_from_ranking(ranking, counts)) if return_policy else out
