"""Choices made on the validation split: each trained model at several keep thresholds, and the
operating point reported as *the* result."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from blockdrop.blockdrop_net import BlockDropNet
from blockdrop.evaluation.evaluate import EvalResult
from blockdrop.recipes import stages
from blockdrop.recipes.config import SelectionConfig
from blockdrop.recipes.run import Run

__all__ = ["Point", "val_points", "select", "describe", "point_name"]


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
    draw: int = 0  # which of the preset's policy draws (seeds) trained it


def val_points(
    run: Run,
    gamma: float,
    net: BlockDropNet,
    full_val: EvalResult | None,
    stage: str = "finetune",
    checkpoint: Path | None = None,
    draw: int = 0,
) -> list[Point]:
    """The model at every threshold of ``run.preset.selection`` on the validation split, then
    its ``refine`` bisections (a larger threshold keeps fewer blocks) where :func:`select` decides. Rule
    "tolerance": between the last threshold it could choose by its tolerance (within ``tolerance``
    of the full network, cheaper than it, inside the block budget ``max_blocks``) and the next;
    when no threshold is within the tolerance inside the budget, between the last one over the
    budget and the next. Rule "budget": between the last threshold that cannot compete (over the
    budget, or dearer than the full network) and the next. Only inside the preset's grid: when
    every threshold competes, or none does, nothing is refined."""
    cfg = run.preset.selection
    rule, tolerance, max_blocks = cfg.rule, cfg.tolerance, cfg.max_blocks

    def at(t: float) -> Point:
        q = copy.copy(net)
        q.threshold = t
        return Point(gamma, t, q, stages.evaluate_on(run, q, run.val), stage, checkpoint, draw)

    points = [at(t) for t in sorted(cfg.thresholds)]
    fits = lambda q: _saves_flops(q.val) and _in_budget(q, max_blocks)  # noqa: E731
    ok = lambda q: fits(q) and _within(q, full_val, tolerance)  # noqa: E731
    over = lambda q: not _in_budget(q, max_blocks)  # noqa: E731
    for _ in range(cfg.refine):
        srt = sorted(points, key=lambda q: q.threshold)
        if rule == "budget":
            pairs = [(a, b) for a, b in zip(srt, srt[1:]) if not fits(a) and fits(b)]
        else:
            pairs = [(a, b) for a, b in zip(srt, srt[1:]) if ok(a) and not ok(b)]
            if not pairs and not any(ok(q) for q in srt):
                pairs = [(a, b) for a, b in zip(srt, srt[1:]) if over(a) and not over(b)]
        if not pairs:
            break
        a, b = pairs[-1]
        points.append(at(round((a.threshold + b.threshold) / 2, 4)))
    return points


def select(points: list[Point], full_val: EvalResult | None, cfg: SelectionConfig) -> Point:
    """Rule "tolerance": the point with the fewest validation blocks whose validation accuracy is
    within ``tolerance`` of the full network's; when none is, the most accurate one. Rule
    "budget" (needs ``max_blocks``): of each trained model (gamma, stage, draw) the point with the
    most validation blocks inside the budget, then the most accurate of those (ties: more
    blocks). Only points that cost fewer FLOPs per image than the full network (policy network
    included) compete: one that costs more is beaten by the full network itself (when no point
    saves FLOPs, all compete). With a block budget ``max_blocks`` (a share of the K blocks, on
    validation) only the points inside it compete; when none is, the one with the fewest blocks
    is returned."""
    rule, tolerance, max_blocks = cfg.rule, cfg.tolerance, cfg.max_blocks
    cheaper = [p for p in points if _saves_flops(p.val)] or points
    fits = [p for p in cheaper if _in_budget(p, max_blocks)]
    if not fits:
        return min(cheaper, key=lambda p: (p.val.blocks_mean, -p.val.accuracy))
    if rule == "budget":
        edge: dict[tuple[float, str, int], Point] = {}  # per trained model
        for p in fits:
            key = (p.gamma, p.stage, p.draw)
            if key not in edge or _blocks_first(p) > _blocks_first(edge[key]):
                edge[key] = p
        return max(edge.values(), key=lambda p: (p.val.accuracy, p.val.blocks_mean))
    ok = [p for p in fits if _within(p, full_val, tolerance)]
    if ok:
        return min(ok, key=lambda p: (p.val.blocks_mean, -p.val.accuracy))
    return max(fits, key=lambda p: p.val.accuracy)


def describe(cfg: SelectionConfig) -> str:
    """The rule :func:`select` applies, in words (for reports)."""
    rule, tolerance, max_blocks = cfg.rule, cfg.tolerance, cfg.max_blocks
    budget = f", at most {100 * max_blocks:g}% of the blocks" if max_blocks is not None else ""
    if rule == "budget":
        return (
            "each trained model at the most blocks inside the budget, then the most accurate "
            f"of those, among the points that cost fewer FLOPs than the full network{budget}"
        )
    return (
        f"fewest blocks within {100 * tolerance:g} points of the full network (else the most "
        f"accurate), among the points that cost fewer FLOPs than it{budget}"
    )


def _blocks_first(p: Point) -> tuple[float, float]:
    """Rank of a point within one trained model under rule "budget": blocks, then accuracy."""
    return p.val.blocks_mean, p.val.accuracy


def _in_budget(p: Point, max_blocks: float | None) -> bool:
    return max_blocks is None or p.val.blocks_mean <= max_blocks * p.val.num_blocks


def _within(p: Point, full_val: EvalResult | None, tolerance: float) -> bool:
    """Validation accuracy at most ``tolerance`` under the full network's."""
    assert full_val is not None  # None only under rule "budget", which never asks
    return p.val.accuracy >= full_val.accuracy - tolerance


def _saves_flops(r: EvalResult) -> bool:
    """FLOPs per image (policy network included) below the full backbone's; unknown counts as
    saving, so results evaluated without FLOP counts are judged by accuracy alone."""
    if r.flops_mean is None or r.full_flops is None:
        return True
    return r.flops_mean < r.full_flops


def point_name(q: Point) -> str:
    """A BlockDrop point's name in the report and the timing."""
    return (
        f"blockdrop gamma={q.gamma:g} t={q.threshold:g}"
        + ("" if q.stage == "finetune" else f" {q.stage}")
        + (f" draw={q.draw}" if q.draw else "")
    )
