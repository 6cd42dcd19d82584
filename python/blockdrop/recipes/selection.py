"""Choices made on the validation split: each trained model at several keep thresholds, and the
operating point reported as *the* result."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.evaluate import EvalResult
from blockdrop.recipes import stages
from blockdrop.recipes.stages import Run

__all__ = ["Point", "val_points", "select"]


@dataclass
class Point:
    """One operating point: a trained model at one threshold, with its validation result.
    ``stage`` is the training stage the model comes from ("curriculum" or "finetune"), saved at
    ``checkpoint``."""
    gamma: float
    threshold: float
    net: BlockDropNet
    val: EvalResult
    stage: str = "finetune"
    checkpoint: Path | None = None


def val_points(run: Run, gamma: float, net: BlockDropNet, full_val: EvalResult,
                tolerance: float, stage: str = "finetune", checkpoint: Path | None = None) -> list[Point]:
    """The model at every preset threshold on the validation split, then ``threshold_refine``
    bisections between the last threshold that :func:`select` could choose by its tolerance
    (within ``tolerance`` of the full network and cheaper than it) and the next (a larger
    threshold keeps fewer blocks)."""
    def at(t: float) -> Point:
        q = copy.copy(net)
        q.threshold = t
        return Point(gamma, t, q, stages.evaluate_on(run, q, run.val), stage, checkpoint)

    points = [at(t) for t in sorted(run.preset.thresholds)]
    ok = lambda q: _saves_flops(q.val) and _within(q, full_val, tolerance)   # noqa: E731
    for _ in range(run.preset.threshold_refine):
        srt = sorted(points, key=lambda q: q.threshold)
        pairs = [(a, b) for a, b in zip(srt, srt[1:]) if ok(a) and not ok(b)]
        if not pairs:
            break
        a, b = pairs[-1]
        points.append(at(round((a.threshold + b.threshold) / 2, 4)))
    return points


def select(points: list[Point], full_val: EvalResult, tolerance: float) -> Point:
    """The point with the fewest validation blocks whose validation accuracy is within
    ``tolerance`` of the full network's; when none is, the most accurate one. Only points that
    cost fewer FLOPs per image than the full network (policy network included) compete: one that
    costs more is beaten by the full network itself. When no point saves FLOPs, all compete."""
    cheaper = [p for p in points if _saves_flops(p.val)] or points
    ok = [p for p in cheaper if _within(p, full_val, tolerance)]
    if ok:
        return min(ok, key=lambda p: (p.val.blocks_mean, -p.val.accuracy))
    return max(cheaper, key=lambda p: p.val.accuracy)


def _within(p: Point, full_val: EvalResult, tolerance: float) -> bool:
    """Validation accuracy at most ``tolerance`` under the full network's."""
    return p.val.accuracy >= full_val.accuracy - tolerance


def _saves_flops(r: EvalResult) -> bool:
    """FLOPs per image (policy network included) below the full backbone's; unknown counts as
    saving, so results evaluated without FLOP counts are judged by accuracy alone."""
    if r.flops_mean is None or r.full_flops is None:
        return True
    return r.flops_mean < r.full_flops
